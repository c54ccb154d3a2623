//! `RelPtr<T>`: an offset into a segment that means the same `T` in every process.

use std::fmt;
use std::marker::PhantomData;

use crate::alloc::{Offset, ShmAllocator};
use crate::error::AccessError;
use crate::typed::{fingerprint, raw, ShmSafe};

/// A typed offset from the segment base: 8 bytes, the same value in every process,
/// and itself [`ShmSafe`], so structs in shared memory can link to each other.
///
/// A `RelPtr` is just a number: holding one does not keep the object alive, and
/// [`get`](RelPtr::get) checks, every time, that it points inside a live block of
/// the allocator and is aligned for `T`. A forged, stale or corrupted `RelPtr` is an
/// [`AccessError`], never undefined behaviour.
///
/// ```
/// use shared_allocator::prelude::*;
/// # let name = format!("doc-relptr-{}", std::process::id());
/// # let _cleanup = shared_allocator::segment::UnlinkGuard::new(&name);
/// let alloc = FreeListAllocator::create(&name, 1 << 20)?;
/// let b = ShmBox::new_in(&alloc, 42u64)?;
/// let p: RelPtr<u64> = b.rel_ptr();
/// // Send `p.raw()` to another process; there:
/// let q = RelPtr::<u64>::from_raw(p.raw());
/// assert_eq!(*q.get(&alloc)?, 42);
/// # drop(b);
/// # alloc.unlink()?;
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
    pub const fn raw(self) -> u64 {
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

impl<T: ShmSafe> RelPtr<T> {
    /// Resolves the pointer in `alloc`'s segment: checks that `size_of::<T>()` bytes
    /// at the offset lie inside the data region and that the offset is aligned for
    /// `T`. That is all soundness needs (any bytes there are a valid `T`) and costs a
    /// few comparisons. To also check that the pointer is a live allocation, use
    /// [`get_checked`](RelPtr::get_checked).
    ///
    /// The reference borrows `alloc`. Other processes can still write the object
    /// (through atomic fields) or free it: see the crate's *Safety model*.
    ///
    /// # Errors
    /// [`AccessError::Null`], [`AccessError::OutOfBounds`], [`AccessError::Misaligned`].
    #[inline]
    pub fn get<A: ShmAllocator>(self, alloc: &A) -> Result<&T, AccessError> {
        raw::slice_in_data(alloc, self.offset(), 1).map(|s| &s[0])
    }

    /// Like [`get`](RelPtr::get), and also checks with the allocator's metadata that
    /// the `T` lies inside one allocated block: a dangling (freed) or forged pointer is
    /// [`AccessError::NotAllocated`].
    ///
    /// # Errors
    /// As [`get`](RelPtr::get), plus [`AccessError::NotAllocated`].
    pub fn get_checked<A: ShmAllocator>(self, alloc: &A) -> Result<&T, AccessError> {
        raw::value_at(alloc, self.offset())
    }

    /// Resolves `count` consecutive `T`s starting at the pointer, checked like
    /// [`get_checked`](RelPtr::get_checked) (inside one live block).
    ///
    /// # Errors
    /// As [`get_checked`](RelPtr::get_checked), for the whole range.
    pub fn get_slice<A: ShmAllocator>(self, alloc: &A, count: usize) -> Result<&[T], AccessError> {
        raw::slice_at(alloc, self.offset(), count)
    }

    /// Copies the value out of a live block (for `Copy` types): the copy stays valid
    /// whatever other processes do to the block afterwards.
    ///
    /// # Errors
    /// As [`get_checked`](RelPtr::get_checked).
    pub fn read<A: ShmAllocator>(self, alloc: &A) -> Result<T, AccessError>
    where
        T: Copy,
    {
        self.get_checked(alloc).copied()
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
