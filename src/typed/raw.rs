//! The typed layer's only unsafe code: turning a checked offset into a reference,
//! and moving a value into a fresh block.

use std::mem::{align_of, size_of};

use crate::alloc::{Offset, ShmAllocator};
use crate::error::AccessError;
use crate::typed::ShmSafe;

/// Checks that `count` values of `T` at `offset` lie inside one live block of
/// `alloc` and are aligned for `T`, and returns the pointer to them.
pub(crate) fn checked_ptr<T: ShmSafe, A: ShmAllocator + ?Sized>(
    alloc: &A,
    offset: Offset,
    count: usize,
) -> Result<std::ptr::NonNull<T>, AccessError> {
    let len =
        (size_of::<T>() as u64)
            .checked_mul(count as u64)
            .ok_or(AccessError::NotAllocated {
                offset: offset.get(),
                len: u64::MAX,
            })?;
    if offset.get() % align_of::<T>() as u64 != 0 {
        return Err(AccessError::Misaligned {
            offset: offset.get(),
            align: align_of::<T>(),
        });
    }
    alloc.check_range(offset, len)?;
    alloc
        .segment()
        .ptr_at(offset.get(), len, align_of::<T>())
        .map(|p| p.cast::<T>())
        .ok_or_else(|| alloc.out_of_bounds(offset, len))
}

/// Resolves `count` values of `T` at `offset` to a slice, after checking that the
/// range lies inside one live block of `alloc` and is aligned for `T`.
pub(crate) fn slice_at<T: ShmSafe, A: ShmAllocator + ?Sized>(
    alloc: &A,
    offset: Offset,
    count: usize,
) -> Result<&[T], AccessError> {
    let p = checked_ptr::<T, A>(alloc, offset, count)?;
    // SAFETY:
    // - `checked_ptr` checked that `count * size_of::<T>()` bytes at `offset` lie
    //   inside the mapping and that the pointer is aligned for T (the mapping is
    //   page-aligned and `align_of::<T>()` divides `offset`);
    // - T: ShmSafe, so every bit pattern of those bytes is a valid T, whatever another
    //   process wrote; T has no padding, so the bytes are initialised memory;
    // - the slice borrows `alloc`, which owns the mapping, so it cannot outlive it.
    //   Concurrent writes by other processes are the caller's contract (see the crate's
    //   Safety model): shared mutation goes through atomics, whose UnsafeCell makes
    //   `&T` to them sound.
    Ok(unsafe { std::slice::from_raw_parts(p.as_ptr() as *const T, count) })
}

/// Resolves one `T` at `offset`; see [`slice_at`].
pub(crate) fn value_at<T: ShmSafe, A: ShmAllocator + ?Sized>(
    alloc: &A,
    offset: Offset,
) -> Result<&T, AccessError> {
    slice_at::<T, A>(alloc, offset, 1).map(|s| &s[0])
}

/// Moves `values` into the block at `offset` (which must have room for them; checked).
pub(crate) fn write_at<T: ShmSafe, A: ShmAllocator + ?Sized>(
    alloc: &A,
    offset: Offset,
    values: impl ExactSizeIterator<Item = T>,
) -> Result<(), AccessError> {
    let count = values.len();
    let dst = checked_ptr::<T, A>(alloc, offset, count)?.as_ptr();
    for (i, v) in values.take(count).enumerate() {
        // SAFETY:
        // - `checked_ptr` proved `count` Ts at `dst` are in bounds, aligned and inside a live
        //   block of this allocator; `i < count`;
        // - the block was just allocated by this process and not yet published, or is
        //   owned exclusively by the caller (the writer of a ShmVec), so no reference
        //   handed out by this crate points at these elements while they are written;
        // - `write` does not drop the old bytes, which is right: they are not a T owned
        //   by anyone.
        unsafe { dst.wrapping_add(i).write(v) };
    }
    Ok(())
}

/// Copies `count` values out of a block (for readers that must not keep references
/// to memory another process may reuse).
pub(crate) fn copy_out<T: ShmSafe + Copy, A: ShmAllocator + ?Sized>(
    alloc: &A,
    offset: Offset,
    count: usize,
    out: &mut Vec<T>,
) -> Result<(), AccessError> {
    let src = slice_at::<T, A>(alloc, offset, count)?;
    out.extend_from_slice(src);
    Ok(())
}
