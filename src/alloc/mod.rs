//! The three allocators and the raw, offset-based interface they share.
//!
//! Every allocator lives entirely inside one [`Segment`]:
//! its metadata sits in the segment's metadata region, its blocks in the data
//! region, and all of it is addressed by [`Offset`]s from the segment base, so an
//! offset obtained in one process names the same bytes in every other process.

mod bump;
mod cache;
mod free_list;
mod handle;
mod in_flight;
mod inspect;
mod slab;

pub use bump::{BumpAllocator, BUMP_MAX_CAPACITY, DEFAULT_RESET_WAIT};
pub use handle::BumpHandle;
pub use free_list::{
    FreeListAllocator, FreeListOptions, Reclaimed, DEFAULT_CACHE_DEPTH, MAX_CACHE_DEPTH,
    SIZE_CLASSES,
};
pub use inspect::{Consistency, Inspect};
pub use slab::{SlabAllocator, SLAB_CACHE_DEPTH};

use crate::error::{AccessError, AllocError, FreeError};
use crate::segment::{AllocatorKind, Segment};

/// Largest alignment any allocator supports: one page. Mappings are page-aligned,
/// so an offset aligned to at most this is an address aligned the same way in
/// every process.
pub const MAX_ALIGN: usize = 4096;

/// Alignment used by [`ShmAllocator::allocate`].
pub const DEFAULT_ALIGN: usize = 8;

/// A position in a segment, in bytes from its start. The same offset names the same
/// bytes in every process that maps the segment. Offset 0 is the header, never a
/// block: it is the null offset.
///
/// Offsets are plain numbers: send them through a pipe, a command line or a shared
/// struct. Every use is checked against the allocator's metadata, so a forged or stale
/// offset gives an error, never a wild access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct Offset(u64);

impl Offset {
    /// The null offset (0).
    pub const NULL: Offset = Offset(0);

    /// Wraps a raw offset, e.g. one received from another process.
    pub const fn new(raw: u64) -> Offset {
        Offset(raw)
    }

    /// The raw number, to send to another process.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// Whether this is the null offset.
    pub const fn is_null(self) -> bool {
        self.0 == 0
    }
}

impl std::fmt::Display for Offset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// Per-size-class numbers in [`Stats`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClassStats {
    /// Size of the blocks of this class in bytes.
    pub block_size: u64,
    /// Pages currently given to this class.
    pub spans: u64,
    /// Blocks handed out.
    pub live_blocks: u64,
    /// Blocks free inside this class's pages.
    pub free_blocks: u64,
}

/// A snapshot of an allocator's use. Exact when no other process is allocating;
/// otherwise each number is a recent value.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Stats {
    /// Bytes of the data region (for a growing segment, its maximum).
    pub capacity: u64,
    /// Bytes of the data region committed in the shared-memory file so far
    /// (`fallocate`d: backed by the file system, never a `SIGBUS`). Grows toward
    /// `capacity` as the allocator needs pages.
    pub committed_bytes: u64,
    /// Blocks handed out and not freed. `None` for the bump allocator, which does
    /// not count blocks (that would cost a second atomic per allocation).
    pub live_blocks: Option<u64>,
    /// Bytes handed out, as rounded by the allocator (size classes, pages, slots,
    /// alignment padding).
    pub live_bytes: u64,
    /// Bytes that later allocations can use (including `cached_bytes`).
    pub free_bytes: u64,
    /// Bytes of free blocks held in the per-handle caches (free-list allocator):
    /// free for their handle's next allocations, counted in neither `live_bytes`
    /// nor `live_blocks`.
    pub cached_bytes: u64,
    /// Per size class (free-list allocator) or the single slot class (slab).
    pub classes: Vec<ClassStats>,
}

/// Not public API: the proof that a call comes from this crate. The allocator
/// traits' internal methods (a typed handle's allocation and growth, in a segment
/// of either mode) take it, so code outside the crate cannot call them.
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct Internal(());

/// The one [`Internal`] value.
pub(crate) const INTERNAL: Internal = Internal(());

mod sealed {
    /// Implemented only here: other crates cannot implement the allocator traits.
    pub trait Sealed {}
    impl Sealed for super::FreeListAllocator {}
    impl Sealed for super::SlabAllocator {}
    impl Sealed for super::BumpAllocator {}
    impl<A: super::ShmAllocator + ?Sized> Sealed for &A {}
    impl<A: super::ShmAllocator + ?Sized> Sealed for std::sync::Arc<A> {}
}

/// The raw interface of every allocator: bytes at offsets, checked.
///
/// Import it (or [`crate::prelude`]) to call these methods.
///
/// **Sealed**: implemented by [`FreeListAllocator`], [`SlabAllocator`] and
/// [`BumpAllocator`], and by `&A` and `Arc<A>` of them (handles that borrow or
/// share an allocator); other crates cannot implement it.
///
/// # Safety
/// The typed layer's unsafe code turns what this trait answers into references, so
/// an implementation promises, for every handle in every process of the segment:
/// - [`segment`](Self::segment) is the one segment the blocks live in, the same for
///   every call;
/// - [`allocate_aligned`](Self::allocate_aligned) returns the start of a block of at
///   least `size` bytes, aligned to `align`, inside the data region, that overlaps
///   no other live block (in any process) until it is freed;
/// - [`check_range`](Self::check_range) is `Ok` only for a range inside one live
///   block, and [`check_block_start`](Self::check_block_start) only for the start
///   of one, both decided from allocator metadata that no safe API of this crate
///   writes (never from bytes inside the data region's blocks);
/// - a block stays live (is not handed out again) until it is freed.
///
/// The allocators of this crate are the only implementations (the trait is
/// sealed); each proves every point (the multi-process conformance tests are the
/// check).
pub unsafe trait ShmAllocator: sealed::Sealed + Send + Sync {
    /// The kind stored in the segment header.
    #[doc(hidden)]
    const KIND: AllocatorKind;

    /// The segment this allocator lives in.
    fn segment(&self) -> &Segment;

    /// Allocates a raw block of `size` bytes aligned to `align` (a power of two,
    /// at most [`MAX_ALIGN`]). Decides the segment's mode as
    /// [`Raw`](crate::segment::SegmentMode::Raw) if unset: a raw block is written
    /// and freed by the raw API, which a segment of typed handles refuses.
    ///
    /// # Errors
    /// [`AllocError::ZeroSize`], [`AllocError::BadAlignment`], [`AllocError::TooLarge`],
    /// [`AllocError::OutOfMemory`] (with requested and available bytes),
    /// [`AllocError::Corrupted`] if a peer damaged the metadata;
    /// [`AllocError::WrongMode`] in a segment of typed handles (the block could
    /// never be written or freed there).
    #[inline]
    fn allocate_aligned(&self, size: usize, align: usize) -> Result<Offset, AllocError> {
        claim_raw(self.segment())?;
        self.allocate_block(INTERNAL, size, align)
    }

    /// Allocates `size` bytes aligned to [`DEFAULT_ALIGN`].
    ///
    /// # Errors
    /// As [`ShmAllocator::allocate_aligned`].
    #[inline]
    fn allocate(&self, size: usize) -> Result<Offset, AllocError> {
        self.allocate_aligned(size, DEFAULT_ALIGN)
    }

    /// The allocation itself, in a segment of either mode: what typed handles
    /// call (they own and free their blocks), and what an implementation provides.
    /// Only this crate can call it ([`Internal`]).
    ///
    /// # Errors
    /// As [`allocate_aligned`](ShmAllocator::allocate_aligned), without `WrongMode`.
    #[doc(hidden)]
    fn allocate_block(&self, _: Internal, size: usize, align: usize)
        -> Result<Offset, AllocError>;

    /// Checks that `len` bytes at `offset` lie inside one live block.
    ///
    /// # Errors
    /// [`AccessError::Null`], [`AccessError::OutOfBounds`], [`AccessError::NotAllocated`].
    fn check_range(&self, offset: Offset, len: u64) -> Result<(), AccessError>;

    /// [`check_range`](ShmAllocator::check_range), returning the start of the
    /// block the range lies in, where the allocator knows it (`None`: it keeps no
    /// block starts, as the bump allocator, whose segments have no roots).
    ///
    /// # Errors
    /// As [`check_range`](ShmAllocator::check_range).
    #[doc(hidden)]
    fn block_start_of(&self, offset: Offset, len: u64) -> Result<Option<Offset>, AccessError> {
        self.check_range(offset, len).map(|()| None)
    }

    /// What a raw write and a raw view (the Python package's `view()`) check:
    /// the range lies inside one live block, and that block is not a named root's
    /// (roots are reached only through `root`: a lock's or channel's bytes only
    /// through its own API, in either segment mode).
    ///
    /// # Errors
    /// As [`check_range`](ShmAllocator::check_range); [`AccessError::Root`].
    #[doc(hidden)]
    fn check_raw_range(&self, offset: Offset, len: u64) -> Result<(), AccessError> {
        if let Some(start) = self.block_start_of(offset, len)? {
            if is_root_block(self.segment(), start) {
                return Err(AccessError::Root {
                    offset: offset.get(),
                });
            }
        }
        Ok(())
    }

    /// Checks, from allocator metadata only, that `offset` is the start of a live
    /// block (not inside one, not free, not in a handle's cache). What tokens and
    /// other handles built from numbers are checked against: in a segment of typed
    /// handles every block start holds a header only this crate writes.
    ///
    /// # Errors
    /// [`AccessError::NotBlockStart`] (the default: allocators without individual
    /// blocks), [`AccessError::Null`], [`AccessError::OutOfBounds`],
    /// [`AccessError::Corrupted`].
    #[doc(hidden)]
    fn check_block_start(&self, offset: Offset) -> Result<(), AccessError> {
        Err(AccessError::NotBlockStart {
            offset: offset.get(),
        })
    }

    /// Copies `data` into the block at `offset` (which may point inside a block),
    /// with byte-wise atomic stores. Decides the segment's mode as
    /// [`Raw`](crate::segment::SegmentMode::Raw) if unset.
    ///
    /// # Errors
    /// As [`ShmAllocator::check_range`]: the whole range must be inside one live
    /// block; [`AccessError::WrongMode`] in a segment of typed handles (whose
    /// blocks a raw write would change under their references);
    /// [`AccessError::Root`] inside a named root's block (see
    /// [`check_raw_range`](ShmAllocator::check_raw_range)).
    fn write(&self, offset: Offset, data: &[u8]) -> Result<(), AccessError> {
        self.segment()
            .claim_mode(crate::segment::SegmentMode::Raw)?;
        self.check_raw_range(offset, data.len() as u64)?;
        if self.segment().write_bytes(offset.get(), data) {
            Ok(())
        } else {
            Err(self.out_of_bounds(offset, data.len() as u64))
        }
    }

    /// Fills `buf` from the block at `offset`, with byte-wise atomic loads (the
    /// checked copy path: sound whatever other processes write meanwhile). Allowed
    /// in both segment modes: a copy out of a typed block is a snapshot, never a
    /// reference (raw `allocate`, `write`, `free` and `grow_in_place` are the calls
    /// a typed segment refuses).
    ///
    /// # Errors
    /// As [`ShmAllocator::check_range`].
    fn read_into(&self, offset: Offset, buf: &mut [u8]) -> Result<(), AccessError> {
        self.check_range(offset, buf.len() as u64)?;
        if self.segment().read_bytes(offset.get(), buf) {
            Ok(())
        } else {
            Err(self.out_of_bounds(offset, buf.len() as u64))
        }
    }

    /// Reads `len` bytes at `offset` into a new vector: a checked copy, in both
    /// segment modes (as [`read_into`](ShmAllocator::read_into)).
    ///
    /// # Errors
    /// As [`ShmAllocator::check_range`].
    fn read(&self, offset: Offset, len: usize) -> Result<Vec<u8>, AccessError> {
        // The range first: a length that is not inside one live block is an error,
        // never a local allocation of that size.
        self.check_range(offset, len as u64)?;
        let mut buf = vec![0; len];
        self.read_into(offset, &mut buf)?;
        Ok(buf)
    }

    /// Bytes still available for allocation (possibly fragmented).
    fn available_bytes(&self) -> u64;

    /// Bytes handed out (as rounded by the allocator).
    fn used_bytes(&self) -> u64;

    /// A snapshot of use; see [`Stats`].
    fn stats(&self) -> Stats;

    /// The reset epoch: 0 for allocators that never reset (the bump allocator's
    /// is [`BumpAllocator::epoch`]).
    #[doc(hidden)]
    fn epoch(&self) -> u64 {
        0
    }

    /// This handle's liveness token in the segment's process registry (nonzero;
    /// 0 if it holds no slot): what claims in shared memory record instead of a pid.
    #[doc(hidden)]
    fn liveness_token(&self) -> u32;

    /// Whether the handle that took `token` (in any process) is still alive.
    #[doc(hidden)]
    fn token_alive(&self, token: u32) -> bool;

    /// The error for a range outside the data region.
    #[doc(hidden)]
    fn out_of_bounds(&self, offset: Offset, len: u64) -> AccessError {
        let l = self.segment().layout();
        AccessError::OutOfBounds {
            offset: offset.get(),
            len,
            start: l.data_offset,
            end: l.data_end(),
        }
    }
}

/// Allocators that free blocks one at a time.
///
/// # Safety
/// Beyond [`ShmAllocator`]'s promises: [`free_owned`](Self::free_owned) frees at most
/// the one block that starts at its offset (never a block it was not given, never
/// a block twice), and [`grow_in_place`](Self::grow_in_place) returns `true` only if
/// the block now spans `new_size` bytes that overlap no other live block.
pub unsafe trait ShmFree: ShmAllocator {
    /// Frees the raw block starting at `offset`. Decides the segment's mode as
    /// [`Raw`](crate::segment::SegmentMode::Raw) if unset.
    ///
    /// # Errors
    /// [`FreeError::Null`], [`FreeError::OutOfRange`], [`FreeError::NotBlockStart`],
    /// [`FreeError::DoubleFree`], [`FreeError::Corrupted`];
    /// [`FreeError::WrongMode`] in a segment of typed handles (they free their own
    /// blocks). On error nothing changed.
    #[inline]
    fn free(&self, offset: Offset) -> Result<(), FreeError> {
        match self.segment().claim_mode(crate::segment::SegmentMode::Raw) {
            Ok(()) => {}
            Err(AccessError::WrongMode(w)) => return Err(FreeError::WrongMode(w)),
            Err(_) => {
                return Err(FreeError::Corrupted {
                    what: "segment mode word",
                })
            }
        }
        // Roots are never freed: other processes hold `&T` from `root` (no pin).
        if is_root_block(self.segment(), offset) {
            return Err(FreeError::Root {
                offset: offset.get(),
            });
        }
        // SAFETY: the segment is in raw mode, so no typed handle (in any process)
        // owns a block of it or holds a non-atomic reference into one; raw readers
        // and writers copy with atomics, so freeing under them is no data race.
        unsafe { self.free_owned(offset) }
    }

    /// Frees the block starting at `offset`, in a segment of either mode: what
    /// typed handles call when they drop their block.
    ///
    /// # Safety
    /// The caller owns the block exclusively (a typed handle that allocated or
    /// redeemed it, or raw code in a raw-mode segment), and no reference into it
    /// (in any process) outlives this call.
    ///
    /// # Errors
    /// As [`free`](ShmFree::free), without `WrongMode`.
    #[doc(hidden)]
    unsafe fn free_owned(&self, offset: Offset) -> Result<(), FreeError>;

    /// Tries to grow the raw block at `offset` to at least `new_size` bytes without
    /// moving it (like `realloc` extending in place). Returns whether it did; on
    /// `false` nothing changed and the caller allocates, copies and frees instead.
    /// The block must be owned by the caller. Decides the segment's mode as
    /// [`Raw`](crate::segment::SegmentMode::Raw) if unset.
    ///
    /// # Errors
    /// [`AllocError::WrongMode`] in a segment of typed handles (their blocks grow
    /// only through their handles).
    #[inline]
    fn grow_in_place(&self, offset: Offset, new_size: usize) -> Result<bool, AllocError> {
        claim_raw(self.segment())?;
        Ok(self.grow_block(INTERNAL, offset, new_size))
    }

    /// The growth itself, in a segment of either mode (a typed vector's buffer);
    /// only this crate can call it ([`Internal`]). The default never grows.
    #[doc(hidden)]
    fn grow_block(&self, _: Internal, offset: Offset, new_size: usize) -> bool {
        let _ = (offset, new_size);
        false
    }
}

/// Decides the segment's mode as raw if unset (what raw `allocate`, `write` and
/// `free` need).
#[inline]
fn claim_raw(seg: &Segment) -> Result<(), AllocError> {
    seg.claim_mode(crate::segment::SegmentMode::Raw)
        .map_err(|e| match e {
            AccessError::WrongMode(w) => AllocError::WrongMode(w),
            _ => AllocError::Corrupted {
                what: "segment mode word",
            },
        })
}

/// Checks a size and alignment request common to all allocators.
pub(crate) fn check_request(size: usize, align: usize) -> Result<(), AllocError> {
    if size == 0 {
        return Err(AllocError::ZeroSize);
    }
    if !align.is_power_of_two() || align > MAX_ALIGN {
        return Err(AllocError::BadAlignment {
            align,
            max: MAX_ALIGN,
        });
    }
    Ok(())
}

/// Checks that `[offset, offset+len)` lies inside the data region; returns the
/// offset relative to the data region start.
#[inline]
pub(crate) fn data_relative(seg: &Segment, offset: Offset, len: u64) -> Result<u64, AccessError> {
    if offset.is_null() {
        return Err(AccessError::Null);
    }
    let l = seg.layout();
    let end = offset.get().checked_add(len);
    // `offset < data_end` also for empty ranges: data_end itself is in no block.
    // Pages of a growing segment that were never committed are out of bounds too.
    if offset.get() < l.data_offset
        || offset.get() >= l.data_end()
        || end.is_none_or(|e| e > l.data_end() || !seg.data_usable(e - l.data_offset))
    {
        return Err(AccessError::OutOfBounds {
            offset: offset.get(),
            len,
            start: l.data_offset,
            end: l.data_end(),
        });
    }
    Ok(offset.get() - l.data_offset)
}

/// Whether the block that starts at `block` is a named root's object or the root
/// directory's overflow block: what a raw `free` refuses (roots are never freed:
/// other processes hold `&T` from `root`, with no pin). Read from the segment's
/// root directory (`segment::roots_table`), so this layer needs nothing from the
/// typed one. Cheap for every other block: one atomic load of its first word,
/// which only a root's [`PINNED`](crate::segment::roots_table::PINNED) header (or
/// raw bytes that equal it) holds.
fn is_root_block(seg: &Segment, block: Offset) -> bool {
    use crate::segment::roots_table::{
        CONTROL_BYTES, EMPTY, ENTRY_WORDS, FIXED_ROOTS, MAX_ROOTS, OVERFLOW_HEADER, OVERFLOW_ROOTS,
        PINNED, W_CTRL_OVERFLOW, W_FP, W_OFF, W_STATE,
    };
    use crate::segment::ROOTS_OFFSET;
    use std::sync::atomic::Ordering;
    if seg.layout().kind == AllocatorKind::Bump {
        return false; // no roots in bump segments
    }
    let Some(h) = seg.words(block.get(), 2) else {
        return false;
    };
    if h[0].load(Ordering::Acquire) != PINNED {
        return false;
    }
    // A directory we cannot read protects nothing; refuse rather than guess wrong.
    let (Some(ctrl), Some(fixed)) = (
        seg.words(ROOTS_OFFSET, CONTROL_BYTES / 8),
        seg.words(
            ROOTS_OFFSET + CONTROL_BYTES,
            (FIXED_ROOTS * ENTRY_WORDS) as u64,
        ),
    ) else {
        return true;
    };
    let overflow_at = ctrl[W_CTRL_OVERFLOW].load(Ordering::Acquire);
    if overflow_at == block.get() + OVERFLOW_HEADER {
        return true;
    }
    let overflow = if overflow_at != 0 && overflow_at & 1 == 0 {
        match seg.words(overflow_at, (OVERFLOW_ROOTS * ENTRY_WORDS) as u64) {
            Some(w) => Some(w),
            None => return true,
        }
    } else {
        None
    };
    let fp = h[1].load(Ordering::Relaxed);
    let entries = fixed
        .chunks_exact(ENTRY_WORDS)
        .chain(
            overflow
                .into_iter()
                .flat_map(|o| o.chunks_exact(ENTRY_WORDS)),
        )
        .take(MAX_ROOTS);
    // A root's object starts 16 bytes (its PINNED header) or its alignment (a
    // power of two up to MAX_ALIGN) after its block's start.
    entries.into_iter().any(|e| {
        let d = e[W_OFF].load(Ordering::Relaxed).wrapping_sub(block.get());
        e[W_STATE].load(Ordering::Acquire) != EMPTY
            && e[W_FP].load(Ordering::Relaxed) == fp
            && (16..=MAX_ALIGN as u64).contains(&d)
            && d.is_power_of_two()
    })
}
