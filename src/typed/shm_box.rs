//! `ShmBox<T>`: owns one `T` in a segment and frees it on drop.

use std::mem::{align_of, size_of, ManuallyDrop};
use std::ops::Deref;

use crate::alloc::ShmFree;
use crate::error::Error;
use crate::typed::{raw, RelPtr, ShmSafe};

/// Owns one `T` in a shared segment; frees it when dropped (exactly once).
///
/// Other processes reach the value through [`rel_ptr`](ShmBox::rel_ptr), an 8-byte
/// [`RelPtr`]. The value is immutable after construction except through interior
/// mutability that is safe across processes (atomic fields): other processes may
/// be reading it at any time, so no `&mut T` is ever handed out.
///
/// Ownership moves between processes explicitly: [`into_rel_ptr`](ShmBox::into_rel_ptr)
/// gives up ownership without freeing, [`from_rel_ptr`](ShmBox::from_rel_ptr) takes it.
///
/// ```
/// use shared_allocator::prelude::*;
/// use std::sync::atomic::{AtomicU64, Ordering};
/// # let name = format!("doc-shmbox-{}", std::process::id());
/// # let _cleanup = shared_allocator::segment::UnlinkGuard::new(&name);
/// let alloc = FreeListAllocator::create(&name, 1 << 20)?;
/// let counter = ShmBox::new_in(&alloc, AtomicU64::new(0))?;
/// counter.fetch_add(1, Ordering::Relaxed); // visible to every process
/// let p = counter.rel_ptr();
/// assert_eq!(p.get(&alloc)?.load(Ordering::Relaxed), 1);
/// drop(counter); // frees the block
/// assert!(p.get_checked(&alloc).is_err()); // dangling: detected
/// # alloc.unlink()?;
/// # Ok::<(), shared_allocator::Error>(())
/// ```
pub struct ShmBox<'a, T: ShmSafe, A: ShmFree> {
    alloc: &'a A,
    ptr: RelPtr<T>,
    /// Resolved once: the block is ours for as long as this box lives.
    value: &'a T,
}

impl<'a, T: ShmSafe, A: ShmFree> ShmBox<'a, T, A> {
    /// Allocates room for a `T` in `alloc` and moves `value` there.
    ///
    /// # Errors
    /// [`Error::Alloc`] if the allocator refuses.
    pub fn new_in(alloc: &'a A, value: T) -> Result<Self, Error> {
        let off = alloc.allocate_aligned(size_of::<T>().max(1), align_of::<T>())?;
        match raw::write_fresh(alloc, off, std::iter::once(value)) {
            Ok(v) => Ok(ShmBox {
                alloc,
                ptr: RelPtr::from_offset(off),
                value: &v[0],
            }),
            Err(e) => {
                let _ = alloc.free(off);
                Err(e.into())
            }
        }
    }

    /// Takes ownership of the `T` at `ptr` (for example one another process created and
    /// gave away with [`into_rel_ptr`](ShmBox::into_rel_ptr)). The pointer is validated.
    ///
    /// Two owners of the same block are not unsafe (the second free is reported as a
    /// [`FreeError::DoubleFree`](crate::FreeError::DoubleFree) and ignored), just a bug:
    /// hand ownership over explicitly.
    ///
    /// # Errors
    /// [`Error::Access`] if `ptr` does not resolve to a live, aligned `T`.
    pub fn from_rel_ptr(alloc: &'a A, ptr: RelPtr<T>) -> Result<Self, Error> {
        let value = ptr.get_checked(alloc)?;
        Ok(ShmBox { alloc, ptr, value })
    }

    /// The pointer another process can resolve.
    pub fn rel_ptr(&self) -> RelPtr<T> {
        self.ptr
    }

    /// Gives up ownership without freeing: the block lives on for whoever takes it
    /// with [`from_rel_ptr`](ShmBox::from_rel_ptr) (or leaks).
    pub fn into_rel_ptr(self) -> RelPtr<T> {
        ManuallyDrop::new(self).ptr
    }

    /// The value's bytes, through zerocopy (for `T` that derives
    /// `zerocopy::IntoBytes` and `zerocopy::Immutable`, i.e. no atomics): e.g. to hash
    /// it or send it elsewhere.
    pub fn as_bytes(&self) -> &[u8]
    where
        T: zerocopy::IntoBytes + zerocopy::Immutable,
    {
        zerocopy::IntoBytes::as_bytes(self.value)
    }

    /// The allocator this box lives in.
    pub fn allocator(&self) -> &'a A {
        self.alloc
    }

    /// The value, re-checked against the allocator: an error if another process freed
    /// the block (a broken ownership hand-over). `*box` does not re-check.
    ///
    /// # Errors
    /// As [`RelPtr::get`].
    pub fn try_get(&self) -> Result<&T, crate::AccessError> {
        self.ptr.get_checked(self.alloc)
    }
}

impl<T: ShmSafe, A: ShmFree> Deref for ShmBox<'_, T, A> {
    type Target = T;

    /// The value, resolved when the box was made. If another process broke the
    /// ownership contract and freed the block, this reads whatever is there now
    /// (still a valid `T`: every bit pattern is); [`ShmBox::try_get`] detects that.
    #[inline]
    fn deref(&self) -> &T {
        self.value
    }
}

impl<T: ShmSafe, A: ShmFree> Drop for ShmBox<'_, T, A> {
    fn drop(&mut self) {
        // A failure here means another process already freed it: nothing to do.
        let _ = self.alloc.free(self.ptr.offset());
    }
}

impl<T: ShmSafe + std::fmt::Debug, A: ShmFree> std::fmt::Debug for ShmBox<'_, T, A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.try_get() {
            Ok(v) => f.debug_tuple("ShmBox").field(v).finish(),
            Err(e) => write!(f, "ShmBox(<{e}>)"),
        }
    }
}
