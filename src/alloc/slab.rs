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

use super::{check_request, data_relative, ClassStats, Offset, ShmAllocator, ShmFree, Stats};
use crate::error::{AccessError, AllocError, FreeError, SegmentError};
use crate::process::{self, Membership, ProcessInfo};
use crate::segment::{
    AllocatorKind, CreateOptions, Layout, OpenOptions, Segment, ALLOC_REGION_START,
};
use crate::sync::bitmap;

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
    slot_size: u64,
    stride: u64,
    slots: u64,
    words: u64,
    /// Where this process starts looking (spreads processes over the bitmap).
    hint: AtomicUsize,
}

fn words_for(slots: u64) -> u64 {
    slots.div_ceil(64)
}
fn summary_words(words: u64) -> u64 {
    words.div_ceil(64)
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
        let meta_words = 8 + summary_words(words).next_multiple_of(8) + words;
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
            params: [slot_size, slot_count, 0, 0],
        };
        let seg = Segment::create(name, layout, opts)?;
        let this = Self::from_segment(seg).inspect_err(|_| {
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
        Ok(this)
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
        Self::from_segment(Segment::open(name, AllocatorKind::Slab, opts)?)
    }

    fn from_segment(seg: Segment) -> Result<Self, SegmentError> {
        let l = *seg.layout();
        let [slot_size, slots, ..] = l.params;
        let corrupt = |reason| Err(SegmentError::CorruptHeader { reason });
        if slot_size == 0 || slot_size > 1 << 32 || slots == 0 || slots > 1 << 32 {
            return corrupt("slab parameters out of range");
        }
        let stride = slot_size.next_multiple_of(8);
        let words = words_for(slots);
        if stride.checked_mul(slots) != Some(l.data_len)
            || l.data_len > MAX_DATA
            || l.data_offset % PAGE != 0
        {
            return corrupt("slab slots disagree with the data region");
        }
        if (8 + summary_words(words).next_multiple_of(8) + words) * 8 > l.meta_len {
            return corrupt("slab metadata region too small");
        }
        let hint = (std::process::id() as usize).wrapping_mul(0x9E37_79B9) % words as usize;
        let member = Membership::join(&seg)?.membership;
        Ok(SlabAllocator {
            member,
            seg,
            slot_size,
            stride,
            slots,
            words,
            hint: AtomicUsize::new(hint),
        })
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

    fn meta(&self) -> &[AtomicU64] {
        let l = self.seg.layout();
        self.seg.words(l.meta_offset, l.meta_len / 8).unwrap_or(&[])
    }

    fn summary(&self) -> &[AtomicU64] {
        &self.meta()[8..8 + summary_words(self.words) as usize]
    }

    fn bits(&self) -> &[AtomicU64] {
        let start = 8 + summary_words(self.words).next_multiple_of(8) as usize;
        &self.meta()[start..start + self.words as usize]
    }

    /// Tries to take a bit of word `w`; marks the word full in the summary when it
    /// takes the last one.
    #[inline]
    fn claim_in_word(&self, bits: &[AtomicU64], summary: &[AtomicU64], w: usize) -> Option<usize> {
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
                    let sbit = 1u64 << (w % 64);
                    summary[w / 64].fetch_or(sbit, Ordering::AcqRel);
                    // A free may have cleared a bit between our claim and the summary
                    // update: undo the hint rather than hide that slot.
                    if word.load(Ordering::Acquire) != !0 {
                        summary[w / 64].fetch_and(!sbit, Ordering::AcqRel);
                    }
                }
                return Some(w * 64 + b as usize);
            }
            v = prev | (1 << b);
        }
        None
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
        let slot = rel / self.stride;
        if slot >= self.slots {
            return Err(FreeError::OutOfRange {
                offset: offset.get(),
            });
        }
        Ok((slot as usize, rel % self.stride))
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

impl Drop for SlabAllocator {
    fn drop(&mut self) {
        self.member.leave(&self.seg);
    }
}

impl ShmAllocator for SlabAllocator {
    const KIND: AllocatorKind = AllocatorKind::Slab;

    fn liveness_token(&self) -> u32 {
        self.member
            .slot(&self.seg)
            .map_or(0, |slot| process::token(&self.seg, slot))
    }

    fn token_alive(&self, token: u32) -> bool {
        process::token_alive(&self.seg, self.member.current(), token)
    }

    fn segment(&self) -> &Segment {
        &self.seg
    }

    /// `size` must be at most the slot size and `align` at most the slot alignment.
    fn allocate_aligned(&self, size: usize, align: usize) -> Result<Offset, AllocError> {
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
                if let Some(slot) = self.claim_in_word(bits, summary, w) {
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

    fn check_range(&self, offset: Offset, len: u64) -> Result<(), AccessError> {
        data_relative(&self.seg, offset, len)?;
        let not_alloc = AccessError::NotAllocated {
            offset: offset.get(),
            len,
        };
        let (slot, within) = self.slot_of(offset).map_err(|_| not_alloc.clone())?;
        if within + len > self.slot_size || !bitmap::is_set(self.bits(), slot) {
            return Err(not_alloc);
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
        Stats {
            cached_bytes: 0,
            capacity: self.slots * self.slot_size,
            live_blocks: Some(live),
            live_bytes: live * self.slot_size,
            free_bytes: (self.slots - live) * self.slot_size,
            classes: vec![ClassStats {
                block_size: self.slot_size,
                spans: 1,
                live_blocks: live,
                free_blocks: self.slots - live,
            }],
        }
    }
}

impl ShmFree for SlabAllocator {
    fn free(&self, offset: Offset) -> Result<(), FreeError> {
        let (slot, within) = self.slot_of(offset)?;
        if within != 0 {
            return Err(FreeError::NotBlockStart {
                offset: offset.get(),
            });
        }
        let w = slot / 64;
        let bit = 1u64 << (slot % 64);
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
