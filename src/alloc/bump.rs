//! The bump allocator: one atomic word holds `[epoch: 28 | cursor: 36]`.
//!
//! Allocation is one compare-and-swap that advances the cursor; `reset` is one
//! compare-and-swap that rewinds it and increments the epoch. Because epoch and
//! cursor share a word, every allocation is tied to exactly one epoch: an
//! allocation racing a reset either lands before it or retries after it.

use std::sync::atomic::{AtomicU64, Ordering};

use super::{check_request, data_relative, Offset, ShmAllocator, Stats};
use crate::error::{AccessError, AllocError, SegmentError};
use crate::process::{self, Membership, ProcessInfo};
use crate::segment::{
    AllocatorKind, CreateOptions, Layout, OpenOptions, Segment, ALLOC_REGION_START,
};

/// One page of metadata: the state word.
const META_LEN: u64 = 4096;
const CURSOR_BITS: u32 = 36;
/// Give up on a CAS retry loop after this many rounds: real contention makes
/// progress long before; only a peer rewriting the word forever gets here.
const RETRY_LIMIT: u32 = 1 << 20;
const CURSOR_MASK: u64 = (1 << CURSOR_BITS) - 1;
/// Largest data region a bump allocator can have (64 GiB - 1).
pub const BUMP_MAX_CAPACITY: u64 = CURSOR_MASK;
/// Epochs wrap after this many resets.
pub const BUMP_EPOCH_MODULUS: u64 = 1 << (64 - CURSOR_BITS);

/// A bump allocator in shared memory: allocation is one atomic compare-and-swap,
/// there is no individual free, and [`reset`](BumpAllocator::reset) releases
/// everything at once and advances the epoch.
///
/// ```
/// use shared_allocator::prelude::*;
/// # let name = format!("doc-bump-{}", std::process::id());
/// # let _cleanup = shared_allocator::segment::UnlinkGuard::new(&name);
/// let mut bump = BumpAllocator::create(&name, 1 << 20)?;
/// let a = bump.allocate(128)?;
/// bump.write(a, b"temporary")?;
/// assert_eq!(bump.read(a, 9)?, b"temporary");
/// bump.reset();
/// assert_eq!(bump.available_bytes(), 1 << 20);
/// bump.unlink()?;
/// # Ok::<(), shared_allocator::Error>(())
/// ```
#[derive(Debug)]
pub struct BumpAllocator {
    member: Membership,
    seg: Segment,
}

impl Drop for BumpAllocator {
    fn drop(&mut self) {
        self.member.leave(&self.seg);
    }
}

impl BumpAllocator {
    /// Creates a segment `name` with `capacity` bytes of data region.
    ///
    /// # Errors
    /// [`SegmentError::AlreadyExists`], [`SegmentError::InvalidName`],
    /// [`SegmentError::InvalidParameter`] (capacity 0 or over 64 GiB), or an OS error.
    pub fn create(name: &str, capacity: u64) -> Result<Self, SegmentError> {
        Self::create_with(name, capacity, &CreateOptions::default())
    }

    /// [`create`](Self::create) with options (permission mode).
    ///
    /// # Errors
    /// As [`create`](Self::create).
    pub fn create_with(
        name: &str,
        capacity: u64,
        opts: &CreateOptions,
    ) -> Result<Self, SegmentError> {
        if capacity == 0 || capacity > BUMP_MAX_CAPACITY {
            return Err(SegmentError::InvalidParameter {
                what: "bump capacity",
                value: capacity,
            });
        }
        let layout = Layout {
            kind: AllocatorKind::Bump,
            total_size: ALLOC_REGION_START + META_LEN + capacity,
            meta_offset: ALLOC_REGION_START,
            meta_len: META_LEN,
            data_offset: ALLOC_REGION_START + META_LEN,
            data_len: capacity,
            params: [0; 4],
        };
        let seg = Segment::create(name, layout, opts)?;
        // The metadata region is zero (fresh ftruncate): epoch 0, cursor 0.
        seg.publish();
        Self::from_segment(seg)
    }

    /// Opens the bump allocator `name` created by any process.
    ///
    /// # Errors
    /// [`SegmentError::NotFound`], [`SegmentError::WrongKind`],
    /// [`SegmentError::VersionMismatch`], [`SegmentError::InitTimeout`], ...
    pub fn open(name: &str) -> Result<Self, SegmentError> {
        Self::open_with(name, &OpenOptions::default())
    }

    /// [`open`](Self::open) with options (init timeout).
    ///
    /// # Errors
    /// As [`open`](Self::open).
    pub fn open_with(name: &str, opts: &OpenOptions) -> Result<Self, SegmentError> {
        let seg = Segment::open(name, AllocatorKind::Bump, opts)?;
        let l = *seg.layout();
        if l.meta_len < 8 || l.data_len > BUMP_MAX_CAPACITY {
            return Err(SegmentError::CorruptHeader {
                reason: "bump layout out of range",
            });
        }
        Self::from_segment(seg)
    }

    fn from_segment(seg: Segment) -> Result<Self, SegmentError> {
        let member = Membership::join(&seg)?.membership;
        Ok(BumpAllocator { member, seg })
    }

    /// The handles attached to this segment, from the process registry.
    pub fn processes(&self) -> Vec<ProcessInfo> {
        process::processes(&self.seg, self.member.current())
    }

    /// Removes the segment's name; see [`crate::segment::unlink`].
    ///
    /// # Errors
    /// [`SegmentError::NotFound`] if already removed.
    pub fn unlink(&self) -> Result<(), SegmentError> {
        self.seg.unlink()
    }

    fn state(&self) -> &AtomicU64 {
        // Validated at create/open: meta_len >= 8 and inside the mapping.
        &self
            .seg
            .words(self.seg.layout().meta_offset, 1)
            .expect("validated layout")[0]
    }

    /// Releases every allocation at once and advances the epoch. O(1).
    ///
    /// Handles that carry the epoch (arena handles) taken before this call resolve
    /// to [`AccessError::Stale`] afterwards, in every process. Raw offsets carry
    /// no epoch: reading one after a reset reads whatever was allocated there since.
    ///
    /// Takes `&mut self`: no reference into this allocator obtained in this process
    /// (typed values, validated archives) can be alive across a reset here. Other
    /// processes can still reset at any time; epoch checks cover them.
    ///
    /// Returns the new epoch.
    pub fn reset(&mut self) -> u64 {
        let state = self.state();
        let mut cur = state.load(Ordering::Relaxed);
        for _ in 0..RETRY_LIMIT {
            let epoch = ((cur >> CURSOR_BITS) + 1) % BUMP_EPOCH_MODULUS;
            match state.compare_exchange_weak(
                cur,
                epoch << CURSOR_BITS,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return epoch,
                Err(now) => cur = now,
            }
        }
        // A peer rewrites the word forever (hostile): reset by force, never hang.
        let epoch = ((cur >> CURSOR_BITS) + 1) % BUMP_EPOCH_MODULUS;
        state.store(epoch << CURSOR_BITS, Ordering::Release);
        epoch
    }

    /// Allocates and returns the offset together with the epoch it belongs to.
    ///
    /// # Errors
    /// As [`ShmAllocator::allocate_aligned`].
    #[inline]
    pub fn allocate_with_epoch(
        &self,
        size: usize,
        align: usize,
    ) -> Result<(Offset, u64), AllocError> {
        check_request(size, align)?;
        let l = self.seg.layout();
        let (base, cap) = (l.data_offset, l.data_len);
        let state = self.state();
        let mask = align as u64 - 1;
        let mut cur = state.load(Ordering::Relaxed);
        for _ in 0..RETRY_LIMIT {
            let used = cur & CURSOR_MASK;
            // data_offset is page-aligned, so aligning the relative cursor aligns the offset.
            let start = (used + mask) & !mask;
            let end = start.checked_add(size as u64).filter(|&e| e <= cap);
            let Some(end) = end else {
                if size as u64 > cap {
                    return Err(AllocError::TooLarge {
                        requested: size as u64,
                        max: cap,
                    });
                }
                return Err(AllocError::OutOfMemory {
                    requested: size as u64,
                    available: cap.saturating_sub(used),
                });
            };
            let next = (cur & !CURSOR_MASK) | end;
            match state.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return Ok((Offset::new(base + start), cur >> CURSOR_BITS)),
                Err(now) => cur = now,
            }
        }
        Err(AllocError::Corrupted {
            what: "bump cursor retried too often",
        })
    }

    fn used(&self) -> u64 {
        (self.state().load(Ordering::Acquire) & CURSOR_MASK).min(self.seg.layout().data_len)
    }
}

impl ShmAllocator for BumpAllocator {
    const KIND: AllocatorKind = AllocatorKind::Bump;

    fn segment(&self) -> &Segment {
        &self.seg
    }

    #[inline]
    fn allocate_aligned(&self, size: usize, align: usize) -> Result<Offset, AllocError> {
        self.allocate_with_epoch(size, align).map(|(o, _)| o)
    }

    /// The range must be inside the part handed out since the last reset.
    fn check_range(&self, offset: Offset, len: u64) -> Result<(), AccessError> {
        let rel = data_relative(&self.seg, offset, len)?;
        if rel + len > self.used() {
            return Err(AccessError::NotAllocated {
                offset: offset.get(),
                len,
            });
        }
        Ok(())
    }

    fn available_bytes(&self) -> u64 {
        self.seg.layout().data_len - self.used()
    }

    fn used_bytes(&self) -> u64 {
        self.used()
    }

    fn stats(&self) -> Stats {
        let used = self.used();
        Stats {
            cached_bytes: 0,
            capacity: self.seg.layout().data_len,
            live_blocks: None,
            live_bytes: used,
            free_bytes: self.seg.layout().data_len - used,
            classes: Vec::new(),
        }
    }

    fn epoch(&self) -> u64 {
        self.state().load(Ordering::Acquire) >> CURSOR_BITS
    }
}
