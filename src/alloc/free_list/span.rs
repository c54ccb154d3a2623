//! Spans and size classes: small blocks carved out of one page.
//!
//! Invariants:
//! - A span is one page of one class; its block words `[tag: 16 | bits: 48]`
//!   carry the span's tag (low generation bits and class), so an allocation or
//!   free that raced the span's release and reuse fails its CAS.
//! - Allocating a block is one CAS that sets its bit; freeing is one CAS that
//!   clears it. Two frees of one block give one success and one `DoubleFree`.
//! - Releasing a span first closes every block word (CAS from "open and empty" to
//!   `CLOSED`), so no allocation can land in a span being released.
//! - The per-class span hints are only hints (a stale one costs a retry).
//! - Creating and releasing a span are guarded by an intent record (see
//!   `repair.rs`), so a handle dying in between is finished or rolled back.
//!
//! Placement (what keeps small spans packed at the low end, so that the free pages
//! stay in one run above them, also after processes churned at the same time):
//! - a new span takes the lowest free page; an allocation without a current span
//!   takes the lowest span of its class with a free block (partial spans before
//!   fresh ones);
//! - a span more than `PLACE_SLACK` pages (1 MiB) above the lowest free page (the
//!   handle's `frontier`, refreshed when it changes spans or releases a span, or
//!   meets a free page below its current span) is *out of place*: no allocation
//!   takes a block of it, so it drains and is released as soon as its last block
//!   is freed. A cached block of it is given back to it when popped (one compare
//!   on the pop path; frees still push to the cache, so freeing many blocks in a
//!   row stays cheap); an allocation without a current span takes a new span at
//!   the lowest free page rather than a partial span above it (an empty one it
//!   meets there is released); a current span out of place is let go at the next
//!   cache refill (released if empty). The blocks handed out after a churn
//!   therefore land low.

use super::*;

/// Block sizes of the small-object classes. Larger requests take whole pages.
pub const SIZE_CLASSES: [u32; 24] = [
    16, 32, 48, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 448, 512, 640, 768, 896, 1024,
    1280, 1536, 1792, 2048,
];
pub(super) const NCLASS: usize = SIZE_CLASSES.len();
pub(super) const SMALL_MAX: usize = 2048;

/// `CLASS_OF[(size + 15) / 16]` is the smallest class that fits `size`.
pub(super) const CLASS_OF: [u8; SMALL_MAX / 16 + 1] = {
    let mut t = [0u8; SMALL_MAX / 16 + 1];
    let mut i = 0;
    let mut c = 0;
    while i < t.len() {
        while (SIZE_CLASSES[c] as usize) < i * 16 {
            c += 1;
        }
        t[i] = c as u8;
        i += 1;
    }
    t
};

pub(super) const BITS: u64 = 48;
pub(super) const BITS_MASK: u64 = (1 << BITS) - 1;
/// A block word no allocation or free can use: its tag (0) matches no span, whose
/// tags all have bit 15 set. Zero, so the page lines of freshly committed pages
/// (zero-filled by the file system) need no initialisation.
pub(super) const CLOSED: u64 = 0;
pub(super) const SPAN_WORDS: usize = 6; // 6 x 48 >= 256 blocks of the smallest class
const _: () = assert!(PM_WORDS + SPAN_WORDS <= LINE as usize);

/// The tag of span state `st`: bit 15 set, low generation bits and the class.
/// Never 0, so it never matches `CLOSED`.
#[inline]
pub(super) fn tag_of(st: u64) -> u64 {
    0x8000 | (((st >> 40) & 0x3FF) << 5) | class(st) as u64
}
#[inline]
pub(super) fn cap_of(c: usize) -> u64 {
    CAP[c]
}
/// `CAP[c]`: blocks in a span of class `c` (a table: no division on the free path).
pub(super) const CAP: [u64; NCLASS] = {
    let mut t = [0u64; NCLASS];
    let mut c = 0;
    while c < NCLASS {
        t[c] = PAGE / SIZE_CLASSES[c] as u64;
        c += 1;
    }
    t
};
#[inline]
pub(super) fn words_of(c: usize) -> usize {
    cap_of(c).div_ceil(BITS) as usize
}
/// Block word `w` of an empty open span of class `c` with tag `tag`: bits past the
/// class's block count are set, so they are never handed out.
#[inline]
pub(super) fn open_empty(w: usize, c: usize, tag: u64) -> u64 {
    let first = w as u64 * BITS;
    let valid = cap_of(c).saturating_sub(first).min(BITS);
    let pad = if valid == BITS {
        0
    } else {
        BITS_MASK & !((1 << valid) - 1)
    };
    (tag << BITS) | pad
}

/// `RECIP[c] = ceil(2^32 / size)`: `(x * RECIP[c]) >> 32 == x / size` for every
/// in-page offset x < 4096 (the error, below 4096 / 2^32, never crosses an integer
/// because x / size has a fractional part of at most 1 - 1/2048). Avoids a hardware
/// division on the free and check paths.
pub(super) const RECIP: [u64; NCLASS] = {
    let mut r = [0u64; NCLASS];
    let mut c = 0;
    while c < NCLASS {
        r[c] = (1u64 << 32).div_ceil(SIZE_CLASSES[c] as u64);
        c += 1;
    }
    r
};

/// Block index of in-page offset `within` (< PAGE) in class `c`.
#[inline]
pub(super) fn block_index(within: u64, c: usize) -> u64 {
    (within * RECIP[c]) >> 32
}

/// Pages a span may lie above the lowest free page and still count as in place
/// (1 MiB): a few free pages just below the spans in use do not split the free
/// run above them, and without this margin processes that free and allocate
/// spans at the same time would keep moving their spans down past each other's
/// releases.
pub(super) const PLACE_SLACK: usize = 256;

impl FreeListAllocator {
    /// Looks up the lowest free page now and remembers it as this handle's
    /// `frontier` (see "Placement" above). `usize::MAX` when no committed page is free.
    #[inline]
    pub(super) fn see_frontier(&self) -> usize {
        let f = self.free_pages().first_from(0).unwrap_or(usize::MAX);
        self.frontier.store(f, Ordering::Relaxed);
        f
    }

    /// Whether a block of the span at page `p` may be handed out of a cache: the
    /// span is not above the lowest free page this handle saw last.
    #[inline(always)]
    pub(super) fn in_place(&self, p: usize) -> bool {
        p <= self.frontier.load(Ordering::Relaxed).saturating_add(PLACE_SLACK)
    }

    /// The span at page `p` is this handle's current span of class `c` (stored as
    /// `cur`), a cache is to be refilled from it, and the summary levels say a free
    /// page lies below it (`Summary::any_below`, the cheap question): if a search
    /// confirms it,
    /// forgets it as the current span and releases it if it is empty, so that the
    /// next blocks come from low in the region. Returns whether it let it go.
    #[cold]
    pub(super) fn let_go_if_out_of_place(&self, c: usize, p: usize, cur: u64) -> bool {
        if self.see_frontier().saturating_add(PLACE_SLACK) >= p
            || self.cur[c]
                .compare_exchange(cur, 0, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return false;
        }
        self.release_if_empty(c, p, cur >> BITS);
        true
    }

    /// Releases the span at page `p` if it still is the span of class `c` with tag
    /// `tag` and has no block handed out (anyone may: a handle that still names it
    /// as its current span finds its block words closed and moves on).
    pub(super) fn release_if_empty(&self, c: usize, p: usize, tag: u64) -> bool {
        let Some(line) = self.page_line(p) else {
            return false;
        };
        let st = line[PM_STATE].load(Ordering::Acquire);
        kind(st) == KIND_SMALL
            && class(st) == c
            && tag_of(st) == tag
            && self.is_empty_span(p, c, tag)
            && self.release_span(p, st)
    }

    /// Takes a free block of the span at page `p` (class `c`, tag `tag`), if it is
    /// still that span and has one.
    #[inline]
    pub(super) fn take_block(&self, p: usize, c: usize, tag: u64) -> Option<Offset> {
        let line = self.page_line(p)?;
        for w in 0..words_of(c) {
            let word = &line[PM_WORDS + w];
            let mut v = word.load(Ordering::Relaxed);
            for _ in 0..64 {
                if v >> BITS != tag {
                    return None; // released, closing, or another span now
                }
                let free = !v & BITS_MASK;
                if free == 0 {
                    break;
                }
                let b = free.trailing_zeros();
                match word.compare_exchange_weak(
                    v,
                    v | (1 << b),
                    Ordering::SeqCst,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        crate::fail_point!("fl.alloc.taken");
                        self.count_blocks(c, 1);
                        let i = w as u64 * BITS + u64::from(b);
                        return Some(Offset::new(
                            self.page_offset(p) + i * u64::from(SIZE_CLASSES[c]),
                        ));
                    }
                    Err(now) => v = now,
                }
            }
        }
        None
    }

    /// Whether span `p` (class `c`, tag `tag`) has a free block right now.
    pub(super) fn has_free(&self, p: usize, c: usize, tag: u64) -> bool {
        let line = self.line(p);
        (0..words_of(c)).any(|w| {
            let v = line[PM_WORDS + w].load(Ordering::SeqCst);
            v >> BITS == tag && !v & BITS_MASK != 0
        })
    }

    /// Whether span `p` (class `c`, tag `tag`) has no block handed out.
    pub(super) fn is_empty_span(&self, p: usize, c: usize, tag: u64) -> bool {
        let line = self.line(p);
        (0..words_of(c)).all(|w| line[PM_WORDS + w].load(Ordering::SeqCst) == open_empty(w, c, tag))
    }

    /// Clears span `p`'s hint in class `c`, then re-sets it if the span does have a
    /// free block (a free that raced the clear set its block free first: with SeqCst
    /// on both sides, one of the two sees the other).
    pub(super) fn drop_hint(&self, c: usize, p: usize) {
        let avail = self.avail(c);
        avail.clear(p);
        let Some(line) = self.page_line(p) else {
            return;
        };
        let st = line[PM_STATE].load(Ordering::SeqCst);
        if kind(st) == KIND_SMALL && class(st) == c && self.has_free(p, c, tag_of(st)) {
            avail.set(p);
        }
    }

    #[inline(never)]
    pub(super) fn alloc_small(&self, c: usize, requested: u64) -> Result<Offset, AllocError> {
        match self.my_cache() {
            Some(slot) => cache::alloc_through(
                self,
                slot,
                || self.pop_in_place(slot, c).or_else(|| self.take_batch_inside(slot, c)),
                || self.alloc_shared(c, requested),
                |_| self.refill_inside(slot, c),
            ),
            None => self.alloc_shared(c, requested),
        }
    }

    /// Pops a block of class `c` off slot `slot`'s cache (inside its gate), giving
    /// the blocks of out-of-place spans back to their spans on the way.
    #[inline]
    fn pop_in_place(&self, slot: usize, c: usize) -> Option<u64> {
        let m = self.mag(slot, c);
        for _ in 0..=m.depth() {
            let off = m.pop(
                |off| self.mark(off),
                || {
                    crate::fail_point!("fl.cache.pop");
                },
            )?;
            if self.in_place(((off - self.data_off) >> PAGE_SHIFT) as usize) {
                return Some(off);
            }
            crate::alloc::in_flight::unrecorded(|rec| self.return_blocks(c, &[off], rec));
        }
        None
    }

    /// Allocation without the cache: one CAS on the current span's block word.
    #[inline]
    pub(super) fn alloc_shared(&self, c: usize, requested: u64) -> Result<Offset, AllocError> {
        let cur = self.cur[c].load(Ordering::Relaxed);
        if cur != 0 {
            let p = (cur & BITS_MASK) as usize - 1;
            if let Some(off) = self.take_block(p, c, cur >> BITS) {
                return Ok(off);
            }
        }
        self.alloc_small_slow(c, requested)
    }

    #[cold]
    pub(super) fn alloc_small_slow(&self, c: usize, requested: u64) -> Result<Offset, AllocError> {
        let cur = self.cur[c].swap(0, Ordering::Relaxed);
        if cur != 0 {
            self.drop_hint(c, (cur & BITS_MASK) as usize - 1);
        }
        self.see_frontier();
        let attempt = || match self.alloc_from_hints(c) {
            Some(off) => Ok(off),
            None => self.new_span(c, requested),
        };
        match attempt() {
            Err(AllocError::OutOfMemory { .. }) => self.out_of_memory(attempt),
            r => r,
        }
    }

    /// Finds a span of class `c` with a free block through the span hints: the
    /// lowest such span (spans pack at the low end), found through the summary
    /// levels. Each round drops one stale hint or returns: at most 64 rounds.
    pub(super) fn alloc_from_hints(&self, c: usize) -> Option<Offset> {
        let avail = self.avail(c);
        let mut from = 0;
        for _ in 0..64 {
            let p = avail.first_from(from)?;
            from = p + 1;
            let Some(line) = self.page_line(p) else {
                avail.clear(p); // a scribbled hint past the committed pages
                continue;
            };
            let st = line[PM_STATE].load(Ordering::Acquire);
            if kind(st) == KIND_SMALL && class(st) == c {
                let tag = tag_of(st);
                // Spans are found lowest first: from here on they lie above a free
                // page. An empty one (another handle's current span kept empty,
                // say) goes back to the pool; a new span at the lowest free page
                // is taken rather than any of them.
                if !self.in_place(p) {
                    self.release_if_empty(c, p, tag);
                    return None;
                }
                if let Some(off) = self.take_block(p, c, tag) {
                    self.cur[c].store((tag << BITS) | (p as u64 + 1), Ordering::Relaxed);
                    return Some(off);
                }
            }
            self.drop_hint(c, p);
        }
        None
    }

    /// Takes a free page as a new span of class `c` and returns its first block.
    pub(super) fn new_span(&self, c: usize, requested: u64) -> Result<Offset, AllocError> {
        let me = self.my_slot()?;
        for _ in 0..64 {
            let Some((p, st)) = self.claim_free_page()? else {
                break;
            };
            let new = next(st, KIND_SMALL, c, me as u64);
            let guard = match self.intend(Intent {
                kind: INTENT_NEW_SPAN,
                page: p as u32,
                pages: 1,
                expected: new,
            }) {
                Ok(g) => g,
                Err(e) => {
                    // No record, no step taken: the page goes back to the free hints.
                    self.unhint_free_pages(p, 1);
                    return Err(e);
                }
            };
            crate::fail_point!("fl.new_span.intent");
            if self
                .state(p)
                .compare_exchange(st, new, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
            {
                continue;
            }
            self.count_span(c, 1);
            self.count_blocks(c, 1);
            crate::fail_point!("fl.new_span.claimed");
            let tag = tag_of(new);
            let line = self.line(p);
            for w in 0..words_of(c) {
                let first = u64::from(w == 0); // block 0 is the caller's
                line[PM_WORDS + w].store(open_empty(w, c, tag) | first, Ordering::SeqCst);
                crate::fail_point!("fl.new_span.word");
            }
            self.avail(c).set(p);
            self.cur[c].store((tag << BITS) | (p as u64 + 1), Ordering::Relaxed);
            crate::fail_point!("fl.new_span.listed");
            drop(guard);
            return Ok(Offset::new(self.page_offset(p)));
        }
        Err(AllocError::OutOfMemory {
            requested,
            available: 0, // filled in once, by the caller that gives up
        })
    }

    /// Releases the empty span at page `p` (state `st`) to the page pool: closes its
    /// block words (each CAS fails if a block was taken meanwhile, and then the span
    /// is reopened and kept), then frees the page. Returns whether it did.
    pub(super) fn release_span(&self, p: usize, st: u64) -> bool {
        let c = class(st);
        let tag = tag_of(st);
        let freed = next(st, KIND_FREE, 0, 0);
        let Ok(guard) = self.intend(Intent {
            kind: INTENT_RELEASE,
            page: p as u32,
            pages: 1,
            expected: freed,
        }) else {
            return false;
        };
        crate::fail_point!("fl.release.intent");
        let line = self.line(p);
        let nw = words_of(c);
        let mut closed = 0;
        while closed < nw {
            let w = &line[PM_WORDS + closed];
            if w.compare_exchange(
                open_empty(closed, c, tag),
                CLOSED,
                Ordering::SeqCst,
                Ordering::Relaxed,
            )
            .is_err()
            {
                break;
            }
            closed += 1;
            crate::fail_point!("fl.release.closed_word");
        }
        if closed < nw
            || self
                .state(p)
                .compare_exchange(st, freed, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            for w in 0..closed {
                let _ = line[PM_WORDS + w].compare_exchange(
                    CLOSED,
                    open_empty(w, c, tag),
                    Ordering::SeqCst,
                    Ordering::Relaxed,
                );
            }
            return false;
        }
        self.count_span(c, -1);
        crate::fail_point!("fl.release.freed");
        self.avail(c).clear(p);
        self.free_pages().set(p);
        self.frontier.fetch_min(p, Ordering::Relaxed);
        drop(guard);
        true
    }

    /// After a block of span `p` was freed (its word now `now`): keep the span's hint
    /// set, and release the span if it became empty and is not this handle's current
    /// span of its class.
    #[inline]
    pub(super) fn after_small_free(&self, p: usize, st: u64, w: usize, now: u64) {
        let c = class(st);
        self.avail(c).set(p);
        let tag = tag_of(st);
        if now != open_empty(w, c, tag) {
            return;
        }
        let cur = self.cur[c].load(Ordering::Relaxed);
        // Keep our current span for the next allocation, unless a free page lies
        // below it: then it goes back, so that small spans pack toward the low end
        // (an empty span kept anywhere would pin its page and attract the next
        // allocations of every process through the span hints).
        if cur == (tag << BITS) | (p as u64 + 1)
            && self.free_pages().first_from(0).is_none_or(|q| q > p)
        {
            return;
        }
        if self.is_empty_span(p, c, tag) {
            self.release_span(p, st);
        }
    }

    #[inline]
    pub(super) fn free_small(
        &self,
        p: usize,
        st: u64,
        within: u64,
        off: u64,
    ) -> Result<(), FreeError> {
        let c = class(st);
        if c >= NCLASS {
            return Err(FreeError::Corrupted {
                what: "span class out of range",
            });
        }
        let size = u64::from(SIZE_CLASSES[c]);
        let i = block_index(within, c);
        if within != i * size || i >= cap_of(c) {
            return Err(FreeError::NotBlockStart { offset: off });
        }
        let tag = tag_of(st);
        let (w, bit) = ((i / BITS) as usize, 1u64 << (i % BITS));
        let word = &self.line(p)[PM_WORDS + w];
        let mut v = word.load(Ordering::Relaxed);
        if let Some(slot) = self.my_cache() {
            // The cheap check at free time: the block must be allocated (its bit
            // set) and not already in this handle's cache.
            if v >> BITS != tag || v & bit == 0 {
                return Err(FreeError::DoubleFree { offset: off });
            }
            // A block in any handle's cache carries a mark in its first word.
            let Some(mark) = self.mark(off) else {
                return Err(FreeError::OutOfRange { offset: off });
            };
            if mark.load(Ordering::Relaxed) == self.key ^ off {
                return Err(FreeError::DoubleFree { offset: off });
            }
            let pushed = cache::inside(self, slot, || {
                let m = self.mag(slot, c);
                if m.len() == m.depth() {
                    self.flush_class(slot, c, self.depth / 2);
                }
                m.push(off, mark, self.key, || {
                    crate::fail_point!("fl.cache.push");
                })
            });
            if pushed == Some(true) {
                return Ok(());
            }
            // Another process is emptying our cache: the shared path below.
        }
        for _ in 0..RETRY_LIMIT {
            // A tag mismatch: the span was released (and maybe reused) since `st`
            // was read, so this block was not live in it.
            if v >> BITS != tag || v & bit == 0 {
                return Err(FreeError::DoubleFree { offset: off });
            }
            crate::fail_point!("fl.free.before_clear");
            match word.compare_exchange_weak(v, v & !bit, Ordering::SeqCst, Ordering::Relaxed) {
                Ok(_) => {
                    self.count_blocks(c, -1);
                    crate::fail_point!("fl.free.cleared");
                    self.after_small_free(p, st, w, v & !bit);
                    return Ok(());
                }
                Err(now) => v = now,
            }
        }
        Err(FreeError::Corrupted {
            what: "free retried too often",
        })
    }

    /// Class for a small request, honouring `align` (None: use whole pages).
    #[inline]
    pub(super) fn class_for(size: usize, align: usize) -> Option<usize> {
        let c = CLASS_OF[size.div_ceil(16)] as usize;
        if align <= 16 {
            return Some(c);
        }
        (c..NCLASS).find(|&c| SIZE_CLASSES[c] as usize % align == 0)
    }
}
