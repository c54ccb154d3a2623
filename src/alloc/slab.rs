//! The slab allocator: fixed-size slots tracked by an atomic bitmap with a
//! summary level.
//!
//! Bit `i` of the slot bitmap is set while slot `i` is allocated. Bit `w` of the
//! summary is a hint that bitmap word `w` is full, so allocation skips full words
//! 64 at a time instead of scanning slot by slot. The summary is only a hint: the
//! slot bitmap's `fetch_or` decides ownership, and when the hinted search finds
//! nothing, a full scan runs before reporting out-of-memory, so a stale hint (say,
//! from a process killed between the two updates) never loses a slot.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use super::cache::{self, cache_key, Gate, Mag, BATCH};
use super::in_flight::InFlight;
use super::{check_request, data_relative, ClassStats, Offset, ShmAllocator, ShmFree, Stats};
use crate::error::{AccessError, AllocError, FreeError, SegmentError};
use crate::process::{self, Membership, ProcessInfo};
use crate::segment::{
    AllocatorKind, CreateOptions, Layout, OpenOptions, Segment, ALLOC_REGION_START,
};
use crate::sync::bitmap;

mod inspect;

const PAGE: u64 = 4096;
/// Largest data region of a slab (1 TiB): keeps every slot offset computation far
/// from overflow.
const MAX_DATA: u64 = 1 << 40;

/// Fixed-size slots with an atomic bitmap: allocation and free are a few atomic
/// operations, double free is detected.
///
/// ```
/// use shared_allocator::prelude::*;
/// # let name = format!("doc-slab-{}", std::process::id());
/// # let _cleanup = shared_allocator::segment::UnlinkGuard::new(&name);
/// let slab = SlabAllocator::create(&name, 64, 1000)?;
/// let slot = slab.allocate(64)?;
/// slab.free(slot)?;
/// assert!(slab.free(slot).is_err()); // double free
/// slab.unlink()?;
/// # Ok::<(), shared_allocator::Error>(())
/// ```
#[derive(Debug)]
pub struct SlabAllocator {
    member: Membership,
    seg: Segment,
    /// Slots this handle's cache holds at most (0: no cache); see
    /// [`FreeListAllocator`](super::FreeListAllocator) for how caches work.
    depth: usize,
    /// The segment's cache-mark key: a cached slot's first word holds `key ^ offset`.
    key: u64,
    /// The thread that uses this handle's cache; 0 = none yet.
    cache_owner: cache::CacheOwner,
    /// Word index (in the metadata region) of slot 0's cache, and of the bitmap.
    cache_base0: usize,
    bits_start: usize,
    /// The data region's address in this mapping (validated at open).
    data_addr: usize,
    /// `ceil(2^64 / stride)` when `stride < 2^24` (then `x * recip >> 64 == x / stride`
    /// for every offset in the region), else 0 (divide).
    recip: u64,
    /// The segment object's inode (names it across this process's handles).
    ino: u64,
    /// Double frees found when a cache was flushed.
    late_double_frees: AtomicU64,
    /// Blocks this handle took from idle handles' caches (see `stolen_blocks`).
    stolen: AtomicU64,
    /// The metadata region, resolved once at open (address and length in words).
    meta_addr: usize,
    meta_words: usize,
    slot_size: u64,
    stride: u64,
    slots: u64,
    words: u64,
    /// Where this process starts looking (spreads processes over the bitmap).
    hint: AtomicUsize,
}

/// Slots each handle's slab cache holds at most, by default.
pub const SLAB_CACHE_DEPTH: u64 = 15;
const CACHE_LINE: u64 = 8;

/// Metadata words: a spare line, the summary, the bitmap, then per registry slot a
/// cache of `[gate control, owner mark, spare x 6, count, slot offsets x depth]`
/// (see `cache::Gate`).
fn cache_start(slots: u64) -> u64 {
    let words = words_for(slots);
    8 + summary_words(words).next_multiple_of(8) + words.next_multiple_of(8)
}
fn cache_words(depth: u64) -> u64 {
    CACHE_LINE + 1 + depth
}
fn meta_words_for(slots: u64, depth: u64) -> u64 {
    cache_start(slots) + process::SLOTS as u64 * cache_words(depth)
}

fn words_for(slots: u64) -> u64 {
    slots.div_ceil(64)
}
fn summary_words(words: u64) -> u64 {
    words.div_ceil(64)
}
/// Word index of the slot bitmap in the metadata region.
fn bits_start(words: u64) -> usize {
    8 + summary_words(words).next_multiple_of(8) as usize
}

impl SlabAllocator {
    /// Creates a segment `name` with `slot_count` slots of `slot_size` bytes each.
    ///
    /// Slots are laid out `slot_size` rounded up to 8 bytes apart, so a slot is
    /// aligned to the largest power of two dividing that stride (at most 4096).
    ///
    /// # Errors
    /// [`SegmentError::InvalidParameter`] for a zero size or count, or one too large;
    /// [`SegmentError::AlreadyExists`], [`SegmentError::InvalidName`], OS errors.
    pub fn create(name: &str, slot_size: u64, slot_count: u64) -> Result<Self, SegmentError> {
        Self::create_with(name, slot_size, slot_count, &CreateOptions::default())
    }

    /// [`create`](Self::create) with options (permission mode).
    ///
    /// # Errors
    /// As [`create`](Self::create).
    pub fn create_with(
        name: &str,
        slot_size: u64,
        slot_count: u64,
        opts: &CreateOptions,
    ) -> Result<Self, SegmentError> {
        Self::create_with_cache(name, slot_size, slot_count, SLAB_CACHE_DEPTH, opts)
    }

    /// [`create_with`](Self::create_with), choosing how many free slots each
    /// handle's cache may hold (0 turns caches off; at most 63). Caches work as the
    /// free list's do (see [`FreeListAllocator::create_with_cache`](super::FreeListAllocator::create_with_cache)).
    ///
    /// # Errors
    /// As [`create`](Self::create); [`SegmentError::InvalidParameter`] for a depth
    /// over 63.
    pub fn create_with_cache(
        name: &str,
        slot_size: u64,
        slot_count: u64,
        depth: u64,
        opts: &CreateOptions,
    ) -> Result<Self, SegmentError> {
        if depth > 63 {
            return Err(SegmentError::InvalidParameter {
                what: "slab cache depth",
                value: depth,
            });
        }
        if slot_size == 0 || slot_size > 1 << 32 {
            return Err(SegmentError::InvalidParameter {
                what: "slab slot size",
                value: slot_size,
            });
        }
        if slot_count == 0 || slot_count > 1 << 32 {
            return Err(SegmentError::InvalidParameter {
                what: "slab slot count",
                value: slot_count,
            });
        }
        let stride = slot_size.next_multiple_of(8);
        let words = words_for(slot_count);
        let meta_words = meta_words_for(slot_count, depth);
        let meta_len = (meta_words * 8).next_multiple_of(PAGE);
        let data_len = stride
            .checked_mul(slot_count)
            .filter(|&d| d <= MAX_DATA)
            .ok_or(SegmentError::InvalidParameter {
                what: "slab slot size x slot count (at most 2^40 bytes)",
                value: slot_count,
            })?;
        let layout = Layout {
            kind: AllocatorKind::Slab,
            total_size: ALLOC_REGION_START + meta_len + data_len.next_multiple_of(PAGE),
            meta_offset: ALLOC_REGION_START,
            meta_len,
            data_offset: ALLOC_REGION_START + meta_len,
            data_len,
            params: [slot_size, slot_count, depth, cache_key()],
        };
        let seg = Segment::create_attaching(name, layout, opts)?;
        // Slots are handed out anywhere in the region: commit all of it now, so a
        // file system that cannot back it fails `create`, never a later write.
        let mut this = seg
            .commit(layout.meta_offset, layout.total_size - layout.meta_offset)
            .and_then(|()| Self::from_segment(seg))
            .inspect_err(|_| {
                let _ = crate::segment::unlink(name);
            })?;
        // Bits past the last slot are permanently set, in the bitmap and the summary.
        let tail = slot_count % 64;
        if tail != 0 {
            this.bits()[(words - 1) as usize].store(!0 << tail, Ordering::Relaxed);
        }
        let summary = this.summary();
        let stail = words % 64;
        if stail != 0 {
            summary[summary.len() - 1].store(!0 << stail, Ordering::Relaxed);
        }
        this.seg.publish();
        this.seg.attach_end(this.member.current())?;
        Ok(this)
    }

    /// Opens the slab allocator `name`, or creates it with `slot_count` slots of `slot_size` bytes if no segment of that name
    /// exists: the common "whoever comes first" start. Returns the handle and
    /// whether this call created the segment. Race-free: of any number of
    /// processes calling it at once, exactly one creates and all end up on the one
    /// segment. A crashed creator's half-initialised object under the name is
    /// removed and created anew (see [`crate::segment::remove_if_stale`]); an
    /// existing segment is opened as it is (its parameters win over these).
    ///
    /// # Errors
    /// As [`create`](Self::create) and [`open`](Self::open) (not `AlreadyExists`).
    pub fn open_or_create(
        name: &str,
        slot_size: u64,
        slot_count: u64,
    ) -> Result<(Self, bool), SegmentError> {
        Self::open_or_create_with(
            name,
            slot_size,
            slot_count,
            &CreateOptions::default(),
            &OpenOptions::default(),
        )
    }

    /// [`open_or_create`](Self::open_or_create) with options.
    ///
    /// # Errors
    /// As [`open_or_create`](Self::open_or_create).
    pub fn open_or_create_with(
        name: &str,
        slot_size: u64,
        slot_count: u64,
        create: &CreateOptions,
        open: &OpenOptions,
    ) -> Result<(Self, bool), SegmentError> {
        crate::segment::open_or_create(
            name,
            open,
            || Self::create_with(name, slot_size, slot_count, create),
            || Self::open_with(name, open),
        )
    }

    /// Opens the slab allocator `name` created by any process.
    ///
    /// # Errors
    /// [`SegmentError::NotFound`], [`SegmentError::WrongKind`],
    /// [`SegmentError::VersionMismatch`], [`SegmentError::InitTimeout`],
    /// [`SegmentError::CorruptHeader`], ...
    pub fn open(name: &str) -> Result<Self, SegmentError> {
        Self::open_with(name, &OpenOptions::default())
    }

    /// [`open`](Self::open) with options (init timeout).
    ///
    /// # Errors
    /// As [`open`](Self::open).
    pub fn open_with(name: &str, opts: &OpenOptions) -> Result<Self, SegmentError> {
        let this = Self::from_segment(Segment::open_attaching(name, AllocatorKind::Slab, opts)?)?;
        this.seg.attach_end(this.member.current())?;
        Ok(this)
    }

    fn from_segment(seg: Segment) -> Result<Self, SegmentError> {
        let l = *seg.layout();
        let [slot_size, slots, depth, key] = l.params;
        let corrupt = |reason| Err(SegmentError::CorruptHeader { reason });
        if slot_size == 0 || slot_size > 1 << 32 || slots == 0 || slots > 1 << 32 {
            return corrupt("slab parameters out of range");
        }
        if depth > 63 {
            return corrupt("slab cache depth out of range");
        }
        let stride = slot_size.next_multiple_of(8);
        let words = words_for(slots);
        if stride.checked_mul(slots) != Some(l.data_len)
            || l.data_len > MAX_DATA
            || l.data_offset % PAGE != 0
        {
            return corrupt("slab slots disagree with the data region");
        }
        if meta_words_for(slots, depth) * 8 > l.meta_len {
            return corrupt("slab metadata region too small");
        }
        let data_addr = seg
            .ptr_at(l.data_offset, l.data_len, 8)
            .ok_or(SegmentError::CorruptHeader {
                reason: "slab data region outside the mapping",
            })?
            .as_ptr() as usize;
        let ino = std::os::unix::fs::MetadataExt::ino(&seg.file().metadata().map_err(|_| {
            SegmentError::CorruptHeader {
                reason: "cannot fstat the segment",
            }
        })?);
        let meta = seg
            .words(l.meta_offset, l.meta_len / 8)
            .ok_or(SegmentError::CorruptHeader {
                reason: "slab metadata outside the mapping",
            })?;
        let (meta_addr, meta_words) = (meta.as_ptr() as usize, meta.len());
        let hint = (std::process::id() as usize).wrapping_mul(0x9E37_79B9) % words as usize;
        let joined = Membership::join(&seg)?;
        let this = SlabAllocator {
            meta_addr,
            meta_words,
            member: joined.membership,
            seg,
            depth: depth as usize,
            key,
            // Slot 0's cache words: `meta_words_for` (checked above against the
            // metadata region) covers the caches of all registry slots.
            cache_owner: cache::CacheOwner::new(
                meta_addr + cache_start(slots) as usize * 8,
                cache_words(depth) as usize * 8,
            ),
            cache_base0: cache_start(slots) as usize,
            bits_start: bits_start(words),
            data_addr,
            recip: if stride < 1 << 24 {
                ((1u128 << 64).div_ceil(u128::from(stride))) as u64
            } else {
                0
            },
            ino,
            late_double_frees: AtomicU64::new(0),
            stolen: AtomicU64::new(0),
            slot_size,
            stride,
            slots,
            words,
            hint: AtomicUsize::new(hint),
        };
        if joined.found_dead {
            if let Some(slot) = this.member.current() {
                // The dead holder's cache.
                cache::flush_dead(&this, slot, std::time::Instant::now() + cache::CLAIM_WAIT);
            }
        }
        Ok(this)
    }

    /// Removes the segment's name; see [`crate::segment::unlink`].
    ///
    /// # Errors
    /// [`SegmentError::NotFound`] if already removed.
    pub fn unlink(&self) -> Result<(), SegmentError> {
        self.seg.unlink()
    }

    /// The handles attached to this segment, from the process registry.
    pub fn processes(&self) -> Vec<ProcessInfo> {
        process::processes(&self.seg, self.member.current())
    }

    /// Size of one slot in bytes, as given at create.
    pub fn slot_size(&self) -> u64 {
        self.slot_size
    }

    /// Number of slots.
    pub fn slot_count(&self) -> u64 {
        self.slots
    }

    #[inline]
    fn meta(&self) -> &[AtomicU64] {
        // SAFETY:
        // - `meta_addr`/`meta_words` are the pointer and length of the slice that
        //   `Segment::words` returned for the metadata region at open: in bounds of
        //   the mapping, 8-aligned AtomicU64s, valid for any bit pattern;
        // - that mapping is owned by `self.seg`, which never remaps and lives as long
        //   as `self`, and the returned slice borrows `self`.
        unsafe { std::slice::from_raw_parts(self.meta_addr as *const AtomicU64, self.meta_words) }
    }

    fn summary(&self) -> &[AtomicU64] {
        &self.meta()[8..8 + summary_words(self.words) as usize]
    }

    fn bits(&self) -> &[AtomicU64] {
        &self.meta()[self.bits_start..self.bits_start + self.words as usize]
    }

    /// Tries to take a bit of word `w`; marks the word full in the summary when it
    /// takes the last one.
    #[inline]
    fn claim_in_word(&self, bits: &[AtomicU64], w: usize) -> Option<usize> {
        let word = &bits[w];
        let mut v = word.load(Ordering::Relaxed);
        // Each failed claim means a peer set that bit; bounded so that a peer that
        // keeps clearing bits cannot keep us here.
        for _ in 0..128 {
            if v == !0 {
                break;
            }
            let b = (!v).trailing_zeros();
            let prev = word.fetch_or(1 << b, Ordering::AcqRel);
            if prev & (1 << b) == 0 {
                crate::fail_point!("slab.alloc.claimed");
                if prev | (1 << b) == !0 {
                    self.note_full(w);
                }
                return Some(w * 64 + b as usize);
            }
            v = prev | (1 << b);
        }
        None
    }

    /// Marks bitmap word `w` full in the summary if it is. A free may clear a bit
    /// between the look and the summary update: the word is looked at again after,
    /// and the hint undone, rather than hide that slot.
    fn note_full(&self, w: usize) {
        let (word, summary) = (&self.bits()[w], &self.summary()[w / 64]);
        let sbit = 1u64 << (w % 64);
        if word.load(Ordering::Acquire) == !0 {
            summary.fetch_or(sbit, Ordering::AcqRel);
            if word.load(Ordering::Acquire) != !0 {
                summary.fetch_and(!sbit, Ordering::AcqRel);
            }
        }
    }

    fn offset_of(&self, slot: usize) -> Offset {
        Offset::new(self.seg.layout().data_offset + slot as u64 * self.stride)
    }

    fn slot_of(&self, offset: Offset) -> Result<(usize, u64), FreeError> {
        if offset.is_null() {
            return Err(FreeError::Null);
        }
        let rel = data_relative(&self.seg, offset, 0).map_err(|_| FreeError::OutOfRange {
            offset: offset.get(),
        })?;
        let slot = self.slot_index(rel);
        if slot >= self.slots {
            return Err(FreeError::OutOfRange {
                offset: offset.get(),
            });
        }
        Ok((slot as usize, rel - slot * self.stride))
    }

    /// `rel / stride`, by a multiplication when the stride allows it.
    #[inline]
    fn slot_index(&self, rel: u64) -> u64 {
        if self.recip != 0 {
            ((u128::from(rel) * u128::from(self.recip)) >> 64) as u64
        } else {
            rel / self.stride
        }
    }

    // ---------------------------------------------------------------- the cache

    /// Runs a repair pass: takes over the registry slots of dead handles and
    /// returns what their caches held. Allocation runs this by itself before
    /// reporting out-of-memory. Returns the slots returned from dead caches.
    pub fn reclaim(&self) -> usize {
        let mut returned = 0;
        let me = self.member.current();
        let deadline = std::time::Instant::now() + cache::CLAIM_WAIT;
        process::reclaim_dead(&self.seg, me, &mut |slot| {
            let (done, n) = cache::flush_dead(self, slot, deadline);
            returned += n;
            done
        });
        returned
    }

    /// Double frees that a cache flush found (after the second `free` returned `Ok`).
    pub fn late_double_frees(&self) -> u64 {
        self.late_double_frees.load(Ordering::Relaxed)
    }

    /// Slots this handle took back from other handles' caches when it ran out
    /// of memory, while their owners were idle (see the module docs, "Caches").
    pub fn stolen_blocks(&self) -> u64 {
        self.stolen.load(Ordering::Relaxed)
    }

    /// This handle's slot, if the calling thread owns the handle's cache.
    #[inline(always)]
    fn my_cache(&self) -> Option<usize> {
        if self.depth == 0 {
            return None;
        }
        self.cache_owner.slot(&self.member, &self.seg, self.ino)
    }

    /// Registry slot `slot`'s cache: `[count, slot offsets ...]`.
    #[inline(always)]
    fn mag(&self, slot: usize) -> Mag<'_> {
        let start =
            self.cache_base0 + slot * cache_words(self.depth as u64) as usize + CACHE_LINE as usize;
        Mag::new(&self.meta()[start..start + self.depth + 1])
    }

    /// Registry slot `slot`'s cache gate (see [`Gate`]).
    #[inline]
    fn gate(&self, slot: usize) -> Gate<'_> {
        Gate::new(&self.meta()[self.cache_base0 + slot * cache_words(self.depth as u64) as usize..])
    }

    /// The first word of the slot at offset `off` (a slot start in the data region).
    #[inline]
    fn mark(&self, off: u64) -> Option<&AtomicU64> {
        let l = self.seg.layout();
        let rel = off.checked_sub(l.data_offset)?;
        if rel >= l.data_len || self.slot_index(rel) * self.stride != rel {
            return None;
        }
        let addr = self.data_addr + rel as usize;
        // SAFETY:
        // - `data_addr` is the data region's start in this mapping (checked at open),
        //   `rel` a slot start inside it, and slots are at least 8 bytes, 8-aligned
        //   (the stride is a multiple of 8 and the region page-aligned);
        // - any bit pattern is a valid AtomicU64; marks are only accessed atomically
        //   by this allocator, on slots that are free to their users;
        // - the mapping is owned by `self.seg` and the reference borrows `self`.
        Some(unsafe { &*(addr as *const AtomicU64) })
    }

    /// The allocation fast path: pops a slot off this thread's cache with plain
    /// loads and stores. `None` (not the owner thread, empty cache, an entry that is
    /// no slot start) sends the caller to the full path, which handles every case.
    #[inline(always)]
    fn pop_cached(&self) -> Option<Offset> {
        let base = self.cache_owner.base()?;
        // SAFETY: `base` is the address of our slot's cache words (see `fast_mag`).
        let (gate, m) = unsafe { self.fast_mag(base) };
        if !gate.enter_fast(self.cache_owner.open()) {
            return None;
        }
        // An entry is only trusted once it is a slot start in the data region
        // (what `mark` checks).
        let off = m.pop(
            |off| self.mark(off),
            || {
                crate::fail_point!("slab.cache.pop");
            },
        );
        gate.leave();
        off.map(Offset::new)
    }

    /// The free fast path: pushes a slot onto this thread's cache after the same
    /// checks as the full path (a slot start, its bit set, no cache mark). False
    /// (any check failed, not the owner thread, a full cache, a gate not open) sends
    /// the caller to `free_checked`, which repeats every check and reports the
    /// precise error.
    #[inline(always)]
    fn push_cached(&self, off: u64) -> bool {
        let Some(base) = self.cache_owner.base() else {
            return false;
        };
        // (Also refuses the null offset: the data region starts past the header.)
        let l = self.seg.layout();
        let rel = off.wrapping_sub(l.data_offset);
        if rel >= l.data_len {
            return false;
        }
        let s = self.slot_index(rel);
        if s * self.stride != rel {
            return false;
        }
        // `rel < data_len = stride * slots`, so `s < slots`: in the bitmap.
        let Some(word) = self.meta().get(self.bits_start + (s / 64) as usize) else {
            return false;
        };
        let bit = 1u64 << (s % 64);
        // SAFETY: `rel` is a slot start inside the data region (checked above).
        let mark = unsafe { self.mark_at(rel) };
        if word.load(Ordering::Relaxed) & bit == 0 || mark.load(Ordering::Relaxed) == self.key ^ off
        {
            return false;
        }
        // SAFETY: `base` is the address of our slot's cache words (see `fast_mag`).
        let (gate, m) = unsafe { self.fast_mag(base) };
        if !gate.enter_fast(self.cache_owner.open()) {
            return false;
        }
        let pushed = m.push(off, mark, self.key, || {
            crate::fail_point!("slab.cache.push");
        });
        gate.leave();
        pushed
    }

    /// The gate and the cache `[count, slot offsets ...]` of the registry slot whose
    /// cache words start at `base`.
    ///
    /// # Safety
    /// `base` must come from `self.cache_owner.base()`: the address of one registry
    /// slot's `cache_words(depth)` words inside our metadata mapping.
    #[inline(always)]
    unsafe fn fast_mag(&self, base: *const AtomicU64) -> (Gate<'_>, Mag<'_>) {
        // SAFETY: the slot's cache words lie in our mapping (caller's contract),
        // which lives as long as `self`, and open with the gate's two words.
        let gate = unsafe { Gate::at(base) };
        // SAFETY: the `depth + 1` words from `CACHE_LINE` end at `cache_words(depth)`,
        // inside the slot's cache words: valid AtomicU64s for any bit pattern,
        // borrowed no longer than `self`, which owns the mapping.
        let mag = unsafe {
            std::slice::from_raw_parts(base.wrapping_add(CACHE_LINE as usize), self.depth + 1)
        };
        (gate, Mag::new(mag))
    }

    /// The first word of the slot at data-relative offset `rel`, without the checks
    /// of `mark`.
    ///
    /// # Safety
    /// `rel` must be a slot start inside the data region.
    #[inline(always)]
    unsafe fn mark_at(&self, rel: u64) -> &AtomicU64 {
        // SAFETY: as in `mark`, whose checks the caller's contract replaces.
        unsafe { &*((self.data_addr + rel as usize) as *const AtomicU64) }
    }

    /// Empties registry slot `slot`'s cache; returns how many slots went back.
    fn flush_cache(&self, slot: usize) -> usize {
        self.mag(slot).len() - self.flush_to(slot, 0)
    }

    /// Returns the cached slots above the first `keep`, one `fetch_and` per bitmap
    /// word (see `Mag::flush` for the crash ordering). Returns the new count.
    fn flush_to(&self, slot: usize, keep: usize) -> usize {
        let data = self.seg.layout().data_offset;
        let slot_of = |o: u64| self.slot_index(o.wrapping_sub(data));
        self.mag(slot).flush(
            keep,
            0,
            self.in_flight(slot),
            |o| slot_of(o) / 64,
            |o| self.mark(o),
            |group, rec| {
                // Entries that are slot starts (a scribbled one is dropped).
                let slots = group
                    .iter()
                    .filter(|&&o| self.mark(o).is_some())
                    .map(|&o| slot_of(o))
                    .filter(|&s| s < self.slots);
                let (mut w, mut mask) = (usize::MAX, 0u64);
                for s in slots {
                    w = (s / 64) as usize;
                    mask |= 1 << (s % 64);
                }
                let Some(word) = self.bits().get(w) else {
                    return;
                };
                rec.arm();
                let prev = word.fetch_and(!mask, Ordering::AcqRel);
                let missing = (mask & !prev).count_ones();
                if missing != 0 {
                    self.late_double_frees
                        .fetch_add(u64::from(missing), Ordering::Relaxed);
                }
                if prev == !0 {
                    self.summary()[w / 64].fetch_and(!(1u64 << (w % 64)), Ordering::AcqRel);
                }
            },
            |given| {
                if given {
                    crate::fail_point!("slab.cache.flush.given");
                } else {
                    crate::fail_point!("slab.cache.flush");
                }
            },
        )
    }

    /// Registry slot `slot`'s batch record (see `crate::alloc::in_flight`).
    #[inline(always)]
    fn in_flight(&self, slot: usize) -> InFlight<'_> {
        let base = self.cache_base0 + slot * cache_words(self.depth as u64) as usize;
        InFlight::new(&self.meta()[base..base + CACHE_LINE as usize])
    }

    /// The slots of a `TAKEN` record: bits of bitmap word `w` still set.
    fn taken_blocks(&self, w: u64, mask: u64) -> Vec<u64> {
        let Some(word) = usize::try_from(w).ok().and_then(|w| self.bits().get(w)) else {
            return Vec::new();
        };
        let v = word.load(Ordering::Acquire);
        bitmap::bits_high_first(mask & v)
            .map(|b| w * 64 + u64::from(b))
            .filter(|&s| s < self.slots)
            .map(|s| self.offset_of(s as usize).get())
            .collect()
    }

    /// The cache was empty, and slot `first` was just taken through the shared
    /// path (inside the gate): takes up to [`BATCH`] more from the same bitmap
    /// word with one CAS into the cache.
    fn refill_inside(&self, slot: usize, first: Offset) {
        let m = self.mag(slot);
        let want = (self.depth / 2).saturating_sub(m.len()).min(BATCH as usize) as u32;
        let w = (self.slot_index(first.get() - self.seg.layout().data_offset) / 64) as usize;
        let Some(word) = self.bits().get(w) else {
            return;
        };
        if want == 0 {
            return;
        }
        // The batch is recorded before the CAS and right after it (see
        // `crate::alloc::in_flight`): a kill anywhere leaks none of it.
        let rec = self.in_flight(slot);
        let taken = bitmap::claim_lowest(
            word,
            want,
            |v| Some(!v),
            |mask| {
                rec.taking(0, w as u64, mask);
                crate::fail_point!("slab.cache.refill.recorded");
            },
        );
        let Some(mask) = taken else {
            rec.clear();
            return;
        };
        rec.taken(0);
        crate::fail_point!("slab.cache.refill");
        // Highest first, so that pops hand slots out in ascending order.
        let offs = bitmap::bits_high_first(mask).map(|b| self.offset_of(w * 64 + b as usize).get());
        m.append(offs, |o| self.mark(o), self.key);
        crate::fail_point!("slab.cache.refill.listed");
        rec.clear();
        self.note_full(w);
    }

    /// Out of memory: empties our cache, reclaims dead handles' caches, asks live
    /// ones to flush (or flushes those this thread owns), and takes the caches of
    /// idle owners; true if any cache held slots.
    fn relieve(&self, round: usize) -> bool {
        if self.depth == 0 {
            return false;
        }
        if let Some(slot) = self.my_cache() {
            cache::flush_own(self, slot);
        }
        self.reclaim();
        let me = self.member.current();
        let any = cache::request_flushes(self, me);
        if any && round % 8 == 0 {
            let n = cache::steal_idle(self, me);
            self.stolen.fetch_add(n as u64, Ordering::Relaxed);
        }
        any
    }

    fn live(&self) -> u64 {
        let tail_bits = self.words * 64 - self.slots;
        let set: u64 = self
            .bits()
            .iter()
            .map(|w| u64::from(w.load(Ordering::Relaxed).count_ones()))
            .sum();
        set.saturating_sub(tail_bits)
    }
}

impl cache::Caches for SlabAllocator {
    fn gate(&self, slot: usize) -> Gate<'_> {
        SlabAllocator::gate(self, slot)
    }
    fn cached_in(&self, slot: usize) -> u64 {
        self.mag(slot).len() as u64
    }
    fn flush_cache(&self, slot: usize) -> usize {
        SlabAllocator::flush_cache(self, slot)
    }
    fn cache_ino(&self) -> u64 {
        self.ino
    }
    fn mark(&self, off: u64) -> Option<&AtomicU64> {
        SlabAllocator::mark(self, off)
    }
    fn mark_key(&self) -> u64 {
        self.key
    }
    fn holds(&self, slot: usize) -> bool {
        self.member.holds(&self.seg, slot)
    }
    #[inline(always)]
    fn in_flight(&self, slot: usize) -> InFlight<'_> {
        SlabAllocator::in_flight(self, slot)
    }
    fn class_mag(&self, slot: usize, class: usize) -> Option<Mag<'_>> {
        (class == 0).then(|| self.mag(slot))
    }
    fn taken_blocks(&self, class: usize, word: u64, mask: u64) -> Vec<u64> {
        if class != 0 {
            return Vec::new();
        }
        SlabAllocator::taken_blocks(self, word, mask)
    }
}

impl Drop for SlabAllocator {
    fn drop(&mut self) {
        if self.depth != 0 {
            if let Some(slot) = self.member.current() {
                cache::drop_own(self, &self.cache_owner, slot);
            }
        }
        let (member, seg) = (&mut self.member, &self.seg);
        seg.close_with(member.current(), || member.leave(seg));
    }
}

// SAFETY: the slab hands out disjoint slots of its data region, claimed in an atomic
// bitmap (the multi-process suites check it); its checks read only that bitmap and
// the cache marks kept outside live blocks.
unsafe impl ShmAllocator for SlabAllocator {
    const KIND: AllocatorKind = AllocatorKind::Slab;

    fn liveness_token(&self) -> u32 {
        self.member.token(&self.seg)
    }

    fn token_alive(&self, token: u32) -> bool {
        self.member.is_alive(&self.seg, token)
    }

    fn segment(&self) -> &Segment {
        &self.seg
    }

    /// `size` must be at most the slot size and `align` at most the slot alignment.
    #[inline]
    fn allocate_block(
        &self,
        _: super::Internal,
        size: usize,
        align: usize,
    ) -> Result<Offset, AllocError> {
        check_request(size, align)?;
        if size as u64 > self.slot_size {
            return Err(AllocError::TooLarge {
                requested: size as u64,
                max: self.slot_size,
            });
        }
        let slot_align = 1u64 << self.stride.trailing_zeros().min(12);
        if align as u64 > slot_align {
            return Err(AllocError::BadAlignment {
                align,
                max: slot_align as usize,
            });
        }
        if let Some(off) = self.pop_cached() {
            return Ok(off);
        }
        match self.my_cache() {
            Some(slot) => cache::alloc_through(
                self,
                slot,
                || {
                    self.mag(slot).pop(
                        |off| self.mark(off),
                        || {
                            crate::fail_point!("slab.cache.pop");
                        },
                    )
                },
                || self.alloc_shared(size),
                |first| self.refill_inside(slot, first),
            ),
            None => self.alloc_shared(size),
        }
    }

    fn check_range(&self, offset: Offset, len: u64) -> Result<(), AccessError> {
        self.block_start_of(offset, len).map(|_| ())
    }

    fn block_start_of(&self, offset: Offset, len: u64) -> Result<Option<Offset>, AccessError> {
        data_relative(&self.seg, offset, len)?;
        let not_alloc = AccessError::NotAllocated {
            offset: offset.get(),
            len,
        };
        let (slot, within) = self.slot_of(offset).map_err(|_| not_alloc.clone())?;
        if within + len > self.slot_size || !bitmap::is_set(self.bits(), slot) {
            return Err(not_alloc);
        }
        // A slot in some handle's cache is free to its users.
        let start = offset.get() - within;
        if self.depth != 0 && cache::Caches::is_cached(self, start) {
            return Err(not_alloc);
        }
        Ok(Some(Offset::new(start)))
    }

    fn check_block_start(&self, offset: Offset) -> Result<(), AccessError> {
        data_relative(&self.seg, offset, 1)?;
        let not_start = AccessError::NotBlockStart {
            offset: offset.get(),
        };
        let (slot, within) = self.slot_of(offset).map_err(|_| not_start.clone())?;
        if within != 0 || !bitmap::is_set(self.bits(), slot) {
            return Err(not_start);
        }
        if self.depth != 0 && cache::Caches::is_cached(self, offset.get()) {
            return Err(not_start);
        }
        Ok(())
    }

    fn available_bytes(&self) -> u64 {
        (self.slots - self.live().min(self.slots)) * self.slot_size
    }

    fn used_bytes(&self) -> u64 {
        self.live().min(self.slots) * self.slot_size
    }

    fn stats(&self) -> Stats {
        let live = self.live().min(self.slots);
        let cached = self.cached().min(live);
        Stats {
            cached_bytes: cached * self.slot_size,
            capacity: self.slots * self.slot_size,
            committed_bytes: self.slots * self.slot_size,
            live_blocks: Some(live - cached),
            live_bytes: (live - cached) * self.slot_size,
            free_bytes: (self.slots - live + cached) * self.slot_size,
            classes: vec![ClassStats {
                block_size: self.slot_size,
                spans: 1,
                live_blocks: live - cached,
                free_blocks: self.slots - live + cached,
            }],
        }
    }
}

impl SlabAllocator {
    /// Slots held in every handle's cache (taken in the bitmap, free to users).
    fn cached(&self) -> u64 {
        if self.depth == 0 {
            return 0;
        }
        (0..process::SLOTS).map(|s| self.mag(s).len() as u64).sum()
    }

    /// Allocation without the cache: a bit of the bitmap, found through the summary.
    fn alloc_shared(&self, size: usize) -> Result<Offset, AllocError> {
        let r = self.alloc_bit(size);
        if !matches!(r, Err(AllocError::OutOfMemory { .. })) {
            return r;
        }
        // Bounded wait (20 ms) while other handles' caches may give slots back.
        let mut last = r;
        for round in 0..20 {
            if !self.relieve(round) {
                return self.alloc_bit(size);
            }
            if round % 8 != 0 {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            last = self.alloc_bit(size);
            if !matches!(last, Err(AllocError::OutOfMemory { .. })) {
                break;
            }
        }
        last
    }

    fn alloc_bit(&self, size: usize) -> Result<Offset, AllocError> {
        let (bits, summary) = (self.bits(), self.summary());
        let nw = bits.len();
        let start = self.hint.load(Ordering::Relaxed) % nw;
        // Hinted pass: only words the summary does not mark full.
        let (s0, ns) = (start / 64, summary.len());
        for k in 0..=ns {
            let sw = (s0 + k) % ns;
            let mut avail = !summary[sw].load(Ordering::Acquire);
            if k == 0 {
                // Start at this process's hint within its summary word.
                avail &= !0u64 << (start % 64);
            }
            if k == ns {
                avail = !summary[sw].load(Ordering::Acquire) & !(!0u64 << (start % 64));
            }
            while avail != 0 {
                let w = sw * 64 + avail.trailing_zeros() as usize;
                avail &= avail - 1;
                if w >= nw {
                    break;
                }
                if let Some(slot) = self.claim_in_word(bits, w) {
                    if slot as u64 >= self.slots {
                        // Only if a peer cleared the permanently-set tail bits.
                        return Err(AllocError::Corrupted {
                            what: "slab bitmap marks slots past the end as free",
                        });
                    }
                    self.hint.store(w, Ordering::Relaxed);
                    return Ok(self.offset_of(slot));
                }
            }
        }
        // Fallback: the summary may be stale; scan every word before giving up.
        if let Some(slot) = bitmap::claim_one(bits, start) {
            if (slot as u64) < self.slots {
                return Ok(self.offset_of(slot));
            }
            return Err(AllocError::Corrupted {
                what: "slab bitmap marks slots past the end as free",
            });
        }
        Err(AllocError::OutOfMemory {
            requested: size as u64,
            available: self.available_bytes(),
        })
    }
}

// SAFETY: `free_owned` clears exactly the one slot it is given, once (the bitmap bit).
unsafe impl ShmFree for SlabAllocator {
    #[inline]
    unsafe fn free_owned(&self, offset: Offset) -> Result<(), FreeError> {
        if self.push_cached(offset.get()) {
            return Ok(());
        }
        self.free_checked(offset)
    }
}

impl SlabAllocator {
    /// `free` past the cache fast path: every check again, with its precise error.
    #[inline(never)]
    fn free_checked(&self, offset: Offset) -> Result<(), FreeError> {
        let (slot, within) = self.slot_of(offset)?;
        if within != 0 {
            return Err(FreeError::NotBlockStart {
                offset: offset.get(),
            });
        }
        let w = slot / 64;
        let bit = 1u64 << (slot % 64);
        let off = offset.get();
        if let Some(cs) = self.my_cache() {
            // Cheap checks at free time: the slot is taken, and in no cache.
            let Some(mark) = self.mark(off) else {
                return Err(FreeError::NotBlockStart { offset: off });
            };
            if self.bits()[w].load(Ordering::Relaxed) & bit == 0
                || mark.load(Ordering::Relaxed) == self.key ^ off
            {
                return Err(FreeError::DoubleFree { offset: off });
            }
            let pushed = cache::inside(self, cs, || {
                let m = self.mag(cs);
                if m.len() == m.depth() {
                    self.flush_to(cs, self.depth / 2);
                }
                m.push(off, mark, self.key, || {
                    crate::fail_point!("slab.cache.push");
                })
            });
            if pushed == Some(true) {
                return Ok(());
            }
            // Another process is emptying our cache: the shared path below.
        }
        let prev = self.bits()[w].fetch_and(!bit, Ordering::AcqRel);
        if prev & bit == 0 {
            return Err(FreeError::DoubleFree {
                offset: offset.get(),
            });
        }
        crate::fail_point!("slab.free.cleared");
        if prev == !0 {
            self.summary()[w / 64].fetch_and(!(1u64 << (w % 64)), Ordering::AcqRel);
        }
        Ok(())
    }
}
