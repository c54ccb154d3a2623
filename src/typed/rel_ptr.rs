//! `RelPtr<T>`: an offset into a segment that means the same `T` in every process.

use std::fmt;
use std::marker::PhantomData;

use crate::alloc::{Offset, ShmAllocator};
use crate::error::AccessError;
use crate::segment::SegmentMode;
use crate::typed::{fingerprint, layout_checked, raw, ShmSafe, ShmSync};

/// A typed offset from the segment base: 8 bytes, the same value in every process,
/// and itself [`ShmSafe`], so structs in shared memory can link to each other.
///
/// A `RelPtr` is just a number: holding one does not keep the object alive, and
/// every resolution checks that it points inside the data region (or a live block)
/// and is aligned for `T`. A forged, stale or corrupted `RelPtr` is never undefined
/// behaviour, and it is an [`AccessError`] when it points outside every live block.
///
/// **What a bare `RelPtr` cannot detect:** that the block it pointed to was freed
/// and its bytes reused. After the reuse, [`read`](RelPtr::read) copies whatever
/// object lives there now (a valid `T`, but another object's value). Across
/// processes, and wherever the pointee may be dropped while pointers to it are
/// around, use the generation-checked [`ShmPtr`](crate::ShmPtr)
/// ([`ShmBox::shm_ptr`](crate::ShmBox::shm_ptr)), whose read of a freed or reused
/// block is [`AccessError::StaleGeneration`].
///
/// Because anyone can forge a `RelPtr`, it never proves that nobody writes the bytes.
/// So it resolves to a shared `&T` ([`get`](RelPtr::get)) only for
/// [`ShmSync`] types (atomics, whose `&T` is made for concurrent writers), and
/// otherwise copies the value out ([`read`](RelPtr::read): byte-wise atomic, the
/// checked copy path that is sound whatever other processes do).
///
/// Shared views ([`get`](RelPtr::get)) are for segments of the raw API
/// ([`SegmentMode::Raw`], which `get` decides): there every write is atomic, so a
/// view of a block that is freed and reused stays free of data races. In a segment
/// of typed handles a forged or dangling pointer could land on a block behind a
/// `&mut T`, so `get` is refused there ([`AccessError::WrongMode`]); share atomics
/// through a root, and copy plain data out with [`read`](RelPtr::read), which works
/// in both modes.
///
/// ```
/// use shared_allocator::prelude::*;
/// use std::sync::atomic::{AtomicU64, Ordering};
/// # let name = format!("doc-relptr-{}", std::process::id());
/// # let _cleanup = shared_allocator::segment::UnlinkGuard::new(&name);
/// let alloc = FreeListAllocator::create(&name, 1 << 20)?;
/// let b = ShmBox::new_in(&alloc, 42u64)?; // a segment of typed handles
/// let p: RelPtr<u64> = b.rel_ptr();
/// // Send `p.to_raw()` to another process; there:
/// let q = RelPtr::<u64>::from_raw(p.to_raw());
/// assert_eq!(q.read(&alloc)?, 42);
/// assert!(b.rel_ptr().cast::<AtomicU64>().get(&alloc).is_err()); // no shared view
///
/// // In a raw segment, shared views of atomics:
/// # let raw_name = format!("doc-relptr-raw-{}", std::process::id());
/// # let _cleanup2 = shared_allocator::segment::UnlinkGuard::new(&raw_name);
/// let raw = FreeListAllocator::create(&raw_name, 1 << 20)?;
/// let off = raw.allocate(8)?;
/// raw.write(off, &1u64.to_ne_bytes())?;
/// let counter = RelPtr::<AtomicU64>::from_offset(off);
/// counter.get(&raw)?.fetch_add(1, Ordering::Relaxed);
/// assert_eq!(RelPtr::<u64>::from_offset(off).read(&raw)?, 2);
/// # drop(b);
/// # alloc.unlink()?;
/// # raw.unlink()?;
/// # Ok::<(), shared_allocator::Error>(())
/// ```
#[derive(zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::KnownLayout, zerocopy::Immutable)]
#[repr(transparent)]
pub struct RelPtr<T> {
    offset: u64,
    _type: PhantomData<fn() -> T>,
}

impl<T> RelPtr<T> {
    /// The null pointer (offset 0, which is never a block).
    pub const fn null() -> Self {
        RelPtr {
            offset: 0,
            _type: PhantomData,
        }
    }

    /// A pointer to the block at `offset`.
    pub const fn from_offset(offset: Offset) -> Self {
        Self::from_raw(offset.get())
    }

    /// A pointer from a raw offset received from another process.
    pub const fn from_raw(raw: u64) -> Self {
        RelPtr {
            offset: raw,
            _type: PhantomData,
        }
    }

    /// The offset this points at.
    pub const fn offset(self) -> Offset {
        Offset::new(self.offset)
    }

    /// The raw offset, to send to another process.
    pub const fn to_raw(self) -> u64 {
        self.offset
    }

    /// Whether this is the null pointer.
    pub const fn is_null(self) -> bool {
        self.offset == 0
    }

    /// The same offset, seen as a pointer to another type.
    pub const fn cast<U>(self) -> RelPtr<U> {
        RelPtr::from_raw(self.offset)
    }
}

impl<T: ShmSync> RelPtr<T> {
    /// Resolves the pointer to a shared view, for a [`ShmSync`] `T` (atomics): checks
    /// that `size_of::<T>()` bytes at the offset lie inside the data region and that
    /// the offset is aligned for `T`. That is all soundness needs (any bytes there are
    /// a valid `T`, and concurrent writers go through the same atomics) and costs a
    /// few comparisons. To also check that the pointer is a live allocation, use
    /// [`get_checked`](RelPtr::get_checked).
    ///
    /// The reference borrows `alloc`. If another process frees the block, the view
    /// reads whatever is put there next (still a valid `T`, through atomics): the
    /// segment is in raw mode, where every write is atomic.
    ///
    /// This fast path does not look up blocks, so it also reaches a named root's
    /// block (a lock's or a channel's bytes), which [`get_checked`](RelPtr::get_checked)
    /// refuses. That is sound (this crate accesses every byte of those blocks
    /// atomically: `typed` module docs, "No plain stores"), but a store through
    /// such a view is a scribble on that object: its calls then fail with errors.
    ///
    /// # Errors
    /// [`AccessError::Null`], [`AccessError::OutOfBounds`], [`AccessError::Misaligned`],
    /// [`AccessError::WrongMode`] in a segment of typed handles.
    #[inline]
    pub fn get<A: ShmAllocator>(self, alloc: &A) -> Result<&T, AccessError> {
        let _ = layout_checked::<T>();
        alloc.segment().claim_mode(SegmentMode::Raw)?;
        raw::slice_in_data(alloc, self.offset(), 1).map(|s| &s[0])
    }

    /// Like [`get`](RelPtr::get), and also checks with the allocator's metadata that
    /// the `T` lies inside one allocated block that is not a named root's: a
    /// dangling (freed) or forged pointer is [`AccessError::NotAllocated`], a root's
    /// block (a lock, a channel: reached only through [`Roots::root`](crate::Roots::root))
    /// is [`AccessError::Root`].
    ///
    /// # Errors
    /// As [`get`](RelPtr::get), plus [`AccessError::NotAllocated`], [`AccessError::Root`].
    pub fn get_checked<A: ShmAllocator>(self, alloc: &A) -> Result<&T, AccessError> {
        let _ = layout_checked::<T>();
        alloc.segment().claim_mode(SegmentMode::Raw)?;
        raw::view_at(alloc, self.offset(), 1).map(|s| &s[0])
    }

    /// Resolves `count` consecutive `T`s starting at the pointer, checked like
    /// [`get_checked`](RelPtr::get_checked) (inside one live block).
    ///
    /// # Errors
    /// As [`get_checked`](RelPtr::get_checked), for the whole range.
    pub fn get_slice<A: ShmAllocator>(self, alloc: &A, count: usize) -> Result<&[T], AccessError> {
        let _ = layout_checked::<T>();
        alloc.segment().claim_mode(SegmentMode::Raw)?;
        raw::view_at(alloc, self.offset(), count)
    }
}

impl<T: ShmSafe> RelPtr<T> {
    /// Copies the value out of a live block (for `Copy` types), with a byte-wise
    /// atomic copy: sound whatever other processes do to the block meanwhile (a
    /// concurrent writer can make it a mix of old and new bytes, still a valid `T`),
    /// and the copy stays valid whatever they do afterwards. This is the checked
    /// copy path of the safety model, for every `T`. It never races a writer:
    /// every store the safe API makes into a segment is atomic too, including a
    /// [`ShmBox`](crate::ShmBox) owner's ([`set`](crate::ShmBox::set) /
    /// [`update`](crate::ShmBox::update); `typed` module docs, "No plain stores").
    ///
    /// # Errors
    /// As [`get_checked`](RelPtr::get_checked).
    pub fn read<A: ShmAllocator>(self, alloc: &A) -> Result<T, AccessError>
    where
        T: Copy,
    {
        let _ = layout_checked::<T>();
        let p = raw::checked_ptr::<T, A>(alloc, self.offset(), 1)?;
        // SAFETY: `checked_ptr` proved one T at `p` inside one live block of the
        // mapping `alloc` owns (borrowed for this call), aligned for T.
        Ok(unsafe { raw::atomic_read(p) })
    }
}

impl<T> Clone for RelPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for RelPtr<T> {}
impl<T> PartialEq for RelPtr<T> {
    fn eq(&self, other: &Self) -> bool {
        self.offset == other.offset
    }
}
impl<T> Eq for RelPtr<T> {}
impl<T> std::hash::Hash for RelPtr<T> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.offset.hash(state);
    }
}
impl<T> Default for RelPtr<T> {
    fn default() -> Self {
        Self::null()
    }
}
impl<T> fmt::Debug for RelPtr<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "RelPtr<{}>({:#x})",
            std::any::type_name::<T>(),
            self.offset
        )
    }
}

// SAFETY: RelPtr<T> is repr(transparent) over u64 (PhantomData is zero-sized): every
// bit pattern is valid, no padding, no pointer (it is an offset), fixed layout.
// T need not be ShmSafe here (only to resolve it), which lets recursive structs hold
// a RelPtr to themselves; for the same reason the fingerprint does not include T's.
unsafe impl<T: 'static> ShmSafe for RelPtr<T> {
    const FINGERPRINT: u64 = fingerprint::primitive("RelPtr", 8, 8);
}

// SAFETY: same layout argument as the ShmSafe impl: a transparent u64.
unsafe impl<T: 'static> bytemuck::Zeroable for RelPtr<T> {}
// SAFETY: transparent u64, no padding, all bit patterns valid, Copy + 'static.
unsafe impl<T: 'static> bytemuck::Pod for RelPtr<T> {}
