//! Cache glue: the per-handle caches (see `crate::alloc::cache`) wired to the free list.
//!
//! Invariants:
//! - Blocks in a cache count as allocated in the shared bitmaps; `stats()` reports
//!   them as cached (free, not live).
//! - Only the owner thread pops and pushes, between `Gate::enter_fast` and
//!   `Gate::leave`; every cache entry is re-checked as a 16-aligned offset inside
//!   the data region before it is used.
//! - A cached block carries the mark `key ^ offset` in its first word, so a double
//!   free of a cached block is refused at once.
//! - Flushing returns one block word's blocks with one CAS; a bit already clear is
//!   a late double free, counted, never a second release.

use super::*;

impl FreeListAllocator {
    /// This handle's slot, if the calling thread owns the handle's cache.
    #[inline(always)]
    pub(super) fn my_cache(&self) -> Option<usize> {
        if self.depth == 0 {
            return None;
        }
        self.cache_owner.slot(&self.member, &self.seg, self.ino)
    }

    #[inline]
    pub(super) fn cache_base(&self, slot: usize) -> usize {
        self.cache_base0 + slot * self.cache_stride
    }

    /// Slot `slot`'s cache of class `c`: `[count, offsets ...]`.
    #[inline(always)]
    pub(super) fn mag(&self, slot: usize, c: usize) -> Mag<'_> {
        let start = self.cache_base(slot) + LINE as usize + c * (self.depth + 1);
        Mag::new(&self.meta()[start..start + self.depth + 1])
    }

    /// Slot `slot`'s cache gate (see [`Gate`]).
    #[inline]
    pub(super) fn gate(&self, slot: usize) -> Gate<'_> {
        Gate::new(&self.meta()[self.cache_base(slot)..])
    }

    /// The first word of the block at `off` (any 16-aligned offset in the data region).
    #[inline(always)]
    pub(super) fn mark(&self, off: u64) -> Option<&AtomicU64> {
        // Only committed pages may be touched (a scribbled cache entry could name
        // any offset of the mapping).
        if !self.in_data(off)
            || off % 16 != 0
            || ((off - self.data_off) >> PAGE_SHIFT) as usize >= self.committed()
        {
            return None;
        }
        let addr = self.data_addr + (off - self.data_off) as usize;
        // SAFETY:
        // - `data_addr` is the start of the data region in this mapping (`ptr_at`
        //   checked the whole region at open) and `off` lies inside it, in a
        //   page this process committed (so touching it cannot fault), 16 bytes
        //   before its end at least (the region is whole pages, `off` 16-aligned), so
        //   the 8 bytes at `addr` are in bounds and 8-aligned;
        // - any bit pattern is a valid AtomicU64; marks are only accessed atomically
        //   by this allocator, and a block's owner never holds a reference to a
        //   cached (free) block;
        // - the mapping is owned by `self.seg` and the reference borrows `self`.
        Some(unsafe { &*(addr as *const AtomicU64) })
    }

    /// [`mark`](Self::mark) for a flush, which may hold blocks of another
    /// handle's cache on pages another process committed since this handle last
    /// looked: those are committed here first, so that a reclaimer or thief that
    /// has not seen the growth still clears the mark of every block it gives back
    /// (`tests/cache_edges.rs`; before, such blocks went back marked as cached).
    fn mark_for_flush(&self, off: u64) -> Option<&AtomicU64> {
        self.mark(off).or_else(|| {
            self.refresh();
            self.mark(off)
        })
    }

    /// The allocation fast path: pops a block of class `c` off this thread's cache
    /// with plain loads and stores. `None` (not the owner thread, empty cache, a
    /// gate that is not open, an entry that is no block offset) sends the caller to
    /// `alloc_small`, which handles every case.
    #[inline(always)]
    pub(super) fn pop_cached(&self, c: usize) -> Option<Offset> {
        let base = self.cache_owner.base()?;
        // SAFETY: `base` is the address of our slot's cache words (see `fast_mag`).
        let (gate, m) = unsafe { self.fast_mag(base, c) };
        if !gate.enter_fast(self.cache_owner.open()) {
            return None;
        }
        // An entry is only trusted as a 16-aligned offset inside the data region
        // (what `mark` checks).
        let off = m.pop(
            |off| self.mark(off),
            || {
                crate::fail_point!("fl.cache.pop");
            },
        );
        gate.leave();
        let off = off?;
        // A block of an out-of-place span goes back to it (see `span.rs`).
        if !self.in_place(((off - self.data_off) >> PAGE_SHIFT) as usize) {
            crate::alloc::in_flight::unrecorded(|rec| self.return_blocks(c, &[off], rec));
            return None;
        }
        Some(Offset::new(off))
    }

    /// The free fast path: pushes a small block onto this thread's cache after the
    /// same checks as `free_small` (the span's state, the block start, its bit set
    /// under the span's tag, no cache mark). False (any check failed, not the owner
    /// thread, a full cache, a gate that is not open) sends the caller to `free_checked`,
    /// which repeats every check and reports the precise error.
    #[inline(always)]
    pub(super) fn push_cached(&self, off: u64) -> bool {
        let Some(base) = self.cache_owner.base() else {
            return false;
        };
        // (Also refuses the null offset: the data region starts past the header.)
        if !self.in_data(off) {
            return false;
        }
        let (p, within) = self.locate(off - self.data_off);
        if p >= self.committed() {
            return false; // `free_checked` looks again (the count may have grown)
        }
        // SAFETY: `p < committed()`, checked just above.
        let line = unsafe { self.line_unchecked(p) };
        let st = line[PM_STATE].load(Ordering::Acquire);
        let c = class(st);
        if kind(st) != KIND_SMALL || c >= NCLASS {
            return false;
        }
        let i = block_index(within, c);
        if within != i * u64::from(SIZE_CLASSES[c]) || i >= CAP[c] {
            return false;
        }
        let (w, bit) = ((i / BITS) as usize, 1u64 << (i % BITS));
        let Some(word) = line.get(PM_WORDS + w) else {
            return false;
        };
        let v = word.load(Ordering::Relaxed);
        if v >> BITS != tag_of(st) || v & bit == 0 {
            return false;
        }
        // SAFETY: `off` is in the data region and a block start of a class whose
        // size is a multiple of 16, in a page-aligned region: 16-aligned.
        let mark = unsafe { self.mark_at(off) };
        if mark.load(Ordering::Relaxed) == self.key ^ off {
            return false;
        }
        // SAFETY: `base` is the address of our slot's cache words (see `fast_mag`).
        let (gate, m) = unsafe { self.fast_mag(base, c) };
        if !gate.enter_fast(self.cache_owner.open()) {
            return false;
        }
        let pushed = m.push(off, mark, self.key, || {
            crate::fail_point!("fl.cache.push");
        });
        gate.leave();
        pushed
    }

    /// The gate and class `c`'s cache `[count, offsets ...]` of the slot whose
    /// cache words start at `base`.
    ///
    /// # Safety
    /// `base` must come from `self.cache_owner.base()` (the address of one registry
    /// slot's `cache_stride(depth)` cache words inside our metadata mapping), and
    /// `c < NCLASS`.
    #[inline(always)]
    pub(super) unsafe fn fast_mag(&self, base: *const AtomicU64, c: usize) -> (Gate<'_>, Mag<'_>) {
        // SAFETY: the slot's cache words lie in our mapping (caller's contract),
        // which lives as long as `self`, and open with the gate's two words.
        let gate = unsafe { Gate::at(base) };
        // SAFETY: class `c`'s `depth + 1` words start at `LINE + c * (depth + 1)`
        // and end at most at `cache_stride(depth)` since `c < NCLASS`: inside the
        // slot's cache words, valid AtomicU64s for any bit pattern, borrowed no
        // longer than `self`, which owns the mapping.
        let mag = unsafe {
            std::slice::from_raw_parts(
                base.wrapping_add(LINE as usize + c * (self.depth + 1)),
                self.depth + 1,
            )
        };
        (gate, Mag::new(mag))
    }

    /// The first word of the block at `off`, without the checks of `mark`.
    ///
    /// # Safety
    /// `off` must be 16-aligned and inside the data region (`in_data`).
    #[inline(always)]
    pub(super) unsafe fn mark_at(&self, off: u64) -> &AtomicU64 {
        debug_assert!(self.in_data(off) && off % 16 == 0);
        let addr = self.data_addr + (off - self.data_off) as usize;
        // SAFETY: as in `mark`, whose checks the caller's contract replaces: the 8
        // bytes at `addr` lie in the data region of this mapping, 8-aligned; any bit
        // pattern is a valid AtomicU64, marks are only accessed atomically, and the
        // mapping, owned by `self.seg`, outlives the borrow of `self`.
        unsafe { &*(addr as *const AtomicU64) }
    }

    /// Blocks held in slot `slot`'s cache (as its counts say).
    pub(super) fn cached_in(&self, slot: usize) -> u64 {
        (0..NCLASS).map(|c| self.mag(slot, c).len() as u64).sum()
    }

    /// Empties slot `slot`'s cache of every class (ours, or a dead handle's whose
    /// slot lock we hold). Returns how many blocks went back.
    pub(super) fn flush_cache(&self, slot: usize) -> usize {
        (0..NCLASS)
            .map(|c| self.mag(slot, c).len() - self.flush_class(slot, c, 0))
            .sum()
    }

    /// Slot `slot`'s batch record (see `crate::alloc::in_flight`).
    #[inline(always)]
    pub(super) fn in_flight(&self, slot: usize) -> InFlight<'_> {
        InFlight::new(&self.meta()[self.cache_base(slot)..self.cache_base(slot) + LINE as usize])
    }

    /// Returns the cached blocks of class `c` above the first `keep` to the shared
    /// bitmaps, one read-modify-write per block word (see `Mag::flush` for the
    /// crash ordering). Returns the new count.
    pub(super) fn flush_class(&self, slot: usize, c: usize, keep: usize) -> usize {
        let size = u64::from(SIZE_CLASSES[c]);
        self.mag(slot, c).flush(
            keep,
            c,
            self.in_flight(slot),
            |o| (o >> PAGE_SHIFT, (o & (PAGE - 1)) / size / BITS),
            |o| self.mark_for_flush(o),
            |group, rec| self.return_blocks(c, group, rec),
            |given| {
                if given {
                    crate::fail_point!("fl.cache.flush.given");
                } else {
                    crate::fail_point!("fl.cache.flush");
                }
            },
        )
    }

    /// Clears the bits of `offs` (blocks of class `c` in one block word) with one
    /// CAS, arming `rec` right before it; bits already clear are double frees
    /// found late.
    pub(super) fn return_blocks(&self, c: usize, offs: &[u64], rec: InFlight<'_>) {
        let l = *self.seg.layout();
        let Some(&first) = offs.first() else { return };
        if !self.in_data(first) {
            return; // a scribbled entry: drop it
        }
        let (p, _) = self.locate(first - l.data_offset);
        let Some(line) = self.page_line(p) else {
            return; // a scribbled entry past the committed pages: drop it
        };
        let st = line[PM_STATE].load(Ordering::Acquire);
        if kind(st) != KIND_SMALL || class(st) != c {
            self.late_double_frees
                .fetch_add(offs.len() as u64, Ordering::Relaxed);
            return;
        }
        let size = u64::from(SIZE_CLASSES[c]);
        let mut mask = 0u64;
        let mut w = usize::MAX;
        for &off in offs {
            let within = off.wrapping_sub(self.page_offset(p));
            let i = within / size;
            if within >= PAGE || within % size != 0 || i >= cap_of(c) {
                continue;
            }
            if w == usize::MAX {
                w = (i / BITS) as usize;
            }
            if (i / BITS) as usize == w {
                mask |= 1 << (i % BITS);
            }
        }
        if mask == 0 {
            return;
        }
        let tag = tag_of(st);
        let word = &self.line(p)[PM_WORDS + w];
        let mut v = word.load(Ordering::Relaxed);
        // From here the CAS may run at any instruction: the record says "maybe".
        rec.arm();
        for _ in 0..RETRY_LIMIT {
            if v >> BITS != tag {
                self.late_double_frees
                    .fetch_add(u64::from(mask.count_ones()), Ordering::Relaxed);
                return;
            }
            match word.compare_exchange_weak(v, v & !mask, Ordering::SeqCst, Ordering::Relaxed) {
                Ok(_) => {
                    let missing = (mask & !v).count_ones();
                    self.count_blocks(c, -i64::from((mask & v).count_ones()));
                    if missing != 0 {
                        self.late_double_frees
                            .fetch_add(u64::from(missing), Ordering::Relaxed);
                    }
                    self.after_small_free(p, st, w, v & !mask);
                    return;
                }
                Err(now) => v = now,
            }
        }
    }

    /// The cache of class `c` is empty (inside the gate): takes the caller's block
    /// and up to [`BATCH`] more for the cache from the current span's block words
    /// with one CAS (the lowest block is the caller's). `None` (no current span,
    /// none free in it, a word of another span) sends the caller to the shared
    /// path. One CAS and one gate entry per refill instead of two of each: the
    /// sequential-allocation path.
    pub(super) fn take_batch_inside(&self, slot: usize, c: usize) -> Option<u64> {
        let m = self.mag(slot, c);
        let want = (self.depth / 2).saturating_sub(m.len()).min(BATCH as usize) as u32 + 1;
        let cur = self.cur[c].load(Ordering::Relaxed);
        if cur == 0 {
            return None;
        }
        let (p, tag) = ((cur & BITS_MASK) as usize - 1, cur >> BITS);
        let line = self.page_line(p)?;
        // A current span above a free page is let go (see "Placement" in `span.rs`).
        if p > PLACE_SLACK
            && self.free_pages().any_below(p - PLACE_SLACK)
            && self.let_go_if_out_of_place(c, p, cur)
        {
            return None;
        }
        let rec = self.in_flight(slot);
        for w in 0..words_of(c) {
            let taken = self.take_recorded(rec, c, &line[PM_WORDS + w], p, w, tag, want);
            if let Some(mask) = taken {
                // Killed here: the record says `TAKEN`, and whoever settles it
                // lists the caller's block and those for the cache in the cache.
                crate::fail_point!("fl.cache.refill");
                let (base, size) = (self.page_offset(p), u64::from(SIZE_CLASSES[c]));
                let at = |b: u32| base + (w as u64 * BITS + u64::from(b)) * size;
                let rest = mask & (mask - 1);
                // Highest first, so that pops hand blocks out in ascending order.
                m.append(
                    bitmap::bits_high_first(rest).map(at),
                    |o| self.mark(o),
                    self.key,
                );
                crate::fail_point!("fl.cache.refill.listed");
                // From here the caller's block is the allocation in flight.
                rec.clear();
                return Some(at(mask.trailing_zeros()));
            }
            if line[PM_WORDS + w].load(Ordering::Relaxed) >> BITS != tag {
                return None; // released, closing, or another span now
            }
        }
        None
    }

    /// Takes up to `want` free blocks of block word `w` of span `p` (tag `tag`,
    /// class `c`) with one CAS, recording the batch in `rec` before the CAS
    /// (`TAKING`) and right after it (`TAKEN`); see `crate::alloc::in_flight`.
    /// Counts the blocks. The caller lists them and clears the record.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn take_recorded(
        &self,
        rec: InFlight<'_>,
        c: usize,
        word: &AtomicU64,
        p: usize,
        w: usize,
        tag: u64,
        want: u32,
    ) -> Option<u64> {
        let id = p as u64 | (w as u64) << 32 | tag << 40;
        let taken = bitmap::claim_lowest(
            word,
            want,
            |v| (v >> BITS == tag).then_some(!v & BITS_MASK),
            |mask| {
                rec.taking(c, id, mask);
                crate::fail_point!("fl.cache.refill.recorded");
            },
        );
        match taken {
            Some(mask) => {
                rec.taken(c);
                self.count_blocks(c, i64::from(mask.count_ones()));
                Some(mask)
            }
            None => {
                rec.clear();
                None
            }
        }
    }

    /// The blocks of a `TAKEN` record of class `c` (see `Caches::taken_blocks`).
    pub(super) fn taken_blocks(&self, c: usize, id: u64, mask: u64) -> Vec<u64> {
        let (p, w, tag) = ((id & 0xFFFF_FFFF) as usize, ((id >> 32) & 0xFF) as usize, id >> 40);
        if c >= NCLASS || w >= words_of(c) {
            return Vec::new();
        }
        let Some(line) = self.page_line(p) else {
            return Vec::new();
        };
        let st = line[PM_STATE].load(Ordering::Acquire);
        let v = line[PM_WORDS + w].load(Ordering::Acquire);
        if kind(st) != KIND_SMALL || class(st) != c || tag_of(st) != tag || v >> BITS != tag {
            return Vec::new();
        }
        let (base, size) = (self.page_offset(p), u64::from(SIZE_CLASSES[c]));
        bitmap::bits_high_first(mask & v & BITS_MASK)
            .map(|b| w as u64 * BITS + u64::from(b))
            .filter(|&i| i < cap_of(c))
            .map(|i| base + i * size)
            .collect()
    }

    /// The cache of class `c` was empty, and one block was just taken through the
    /// shared path (inside the gate): takes up to [`BATCH`] more from the current
    /// span's block words with one CAS into the cache.
    pub(super) fn refill_inside(&self, slot: usize, c: usize) {
        let m = self.mag(slot, c);
        let want = (self.depth / 2).saturating_sub(m.len()).min(BATCH as usize) as u32;
        let cur = self.cur[c].load(Ordering::Relaxed);
        if want == 0 || cur == 0 {
            return;
        }
        let (p, tag) = ((cur & BITS_MASK) as usize - 1, cur >> BITS);
        let Some(line) = self.page_line(p) else {
            return;
        };
        let rec = self.in_flight(slot);
        for w in 0..words_of(c) {
            let taken = self.take_recorded(rec, c, &line[PM_WORDS + w], p, w, tag, want);
            if let Some(mask) = taken {
                crate::fail_point!("fl.cache.refill");
                // Highest first, so that pops hand blocks out in ascending order.
                let (base, size) = (self.page_offset(p), u64::from(SIZE_CLASSES[c]));
                let offs = bitmap::bits_high_first(mask)
                    .map(|b| base + (w as u64 * BITS + u64::from(b)) * size);
                m.append(offs, |o| self.mark(o), self.key);
                crate::fail_point!("fl.cache.refill.listed");
                rec.clear();
                return;
            }
        }
    }

    /// Out of memory: what can still be recovered, each step once and bounded, then
    /// the error.
    ///
    /// 1. The registry part of a repair (our cache, dead handles): O(slots).
    /// 2. Our own current spans, if empty; the sweep over all pages only if the
    ///    registry part finished a dead handle's operations.
    /// 3. Other handles' caches, only if any holds blocks: one attempt to take the
    ///    idle ones, then flush requests honoured for at most 20 ms.
    ///
    /// With nothing to recover the error comes within microseconds.
    pub(super) fn out_of_memory<T>(
        &self,
        mut f: impl FnMut() -> Result<T, AllocError>,
    ) -> Result<T, AllocError> {
        let oom = |r: &Result<T, AllocError>| matches!(r, Err(AllocError::OutOfMemory { .. }));
        let mut r = self.repair_registry();
        self.release_own_spans();
        let mut last = f();
        // A dead handle's operations were finished: what they left behind (pages
        // without their free bits, orphaned interior pages) only a sweep finds.
        if oom(&last) && r.dead_slots + r.intents > 0 {
            self.sweep(&mut r);
            last = f();
        }
        let me = self.member.current();
        for round in 0..20 {
            if !oom(&last) || !cache::request_flushes(self, me) {
                break;
            }
            // Idle owners never come to honour a request: take their caches, once.
            if round == 0 {
                let n = cache::steal_idle(self, me);
                self.stolen.fetch_add(n as u64, Ordering::Relaxed);
            } else {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            // Flushed blocks emptied spans are released by the flush itself (or
            // are our own current spans).
            self.release_own_spans();
            last = f();
        }
        match last {
            Err(AllocError::OutOfMemory { requested, .. }) => Err(AllocError::OutOfMemory {
                requested,
                available: self.available_bytes(),
            }),
            r => r,
        }
    }

    /// Releases this handle's current spans that are empty (they stay on hold only
    /// while memory lasts).
    pub(super) fn release_own_spans(&self) {
        for c in 0..NCLASS {
            let cur = self.cur[c].swap(0, Ordering::Relaxed);
            if cur == 0 {
                continue;
            }
            let p = (cur & BITS_MASK) as usize - 1;
            let Some(line) = self.page_line(p) else {
                continue;
            };
            let st = line[PM_STATE].load(Ordering::Acquire);
            if kind(st) == KIND_SMALL
                && class(st) == c
                && tag_of(st) == cur >> BITS
                && self.is_empty_span(p, c, tag_of(st))
            {
                self.release_span(p, st);
            }
        }
    }

    /// Double frees that a cache flush found (after the second `free` had returned
    /// `Ok`): see the module docs for what is detected when.
    pub fn late_double_frees(&self) -> u64 {
        self.late_double_frees.load(Ordering::Relaxed)
    }

    /// Blocks this handle took back from other handles' caches when it ran out
    /// of memory, while their owners were idle (see the module docs, "Caches").
    pub fn stolen_blocks(&self) -> u64 {
        self.stolen.load(Ordering::Relaxed)
    }
}

impl cache::Caches for FreeListAllocator {
    fn gate(&self, slot: usize) -> Gate<'_> {
        FreeListAllocator::gate(self, slot)
    }
    fn cached_in(&self, slot: usize) -> u64 {
        FreeListAllocator::cached_in(self, slot)
    }
    fn flush_cache(&self, slot: usize) -> usize {
        FreeListAllocator::flush_cache(self, slot)
    }
    fn cache_ino(&self) -> u64 {
        self.ino
    }
    fn mark(&self, off: u64) -> Option<&AtomicU64> {
        FreeListAllocator::mark(self, off)
    }
    fn mark_key(&self) -> u64 {
        self.key
    }
    fn holds(&self, slot: usize) -> bool {
        self.member.holds(&self.seg, slot)
    }
    #[inline(always)]
    fn in_flight(&self, slot: usize) -> InFlight<'_> {
        FreeListAllocator::in_flight(self, slot)
    }
    fn class_mag(&self, slot: usize, class: usize) -> Option<Mag<'_>> {
        (class < NCLASS).then(|| self.mag(slot, class))
    }
    fn taken_blocks(&self, class: usize, word: u64, mask: u64) -> Vec<u64> {
        FreeListAllocator::taken_blocks(self, class, word, mask)
    }
}
