//! The typed layer's only unsafe code: turning a checked offset into a reference,
//! moving a value into a fresh block, and copying values out with byte-wise atomic
//! loads (the checked copy path, sound against concurrent writers).

use std::mem::{align_of, size_of};
use std::ptr::NonNull;
use std::sync::atomic::{fence, Ordering};

use crate::alloc::{Offset, ShmAllocator};
use crate::error::AccessError;
use crate::typed::ShmSafe;

/// Decides (or checks) that `alloc`'s segment is in typed mode: what every handle
/// that gives non-atomic references (`ShmBox`, `ShmVec`, archives, arenas) needs,
/// so that the raw API never writes or frees its blocks (see
/// [`SegmentMode`](crate::segment::SegmentMode)).
#[inline]
pub(crate) fn require_typed<A: ShmAllocator + ?Sized>(alloc: &A) -> Result<(), AccessError> {
    alloc
        .segment()
        .claim_mode(crate::segment::SegmentMode::Typed)
}

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

/// [`slice_at`] for a raw view ([`RelPtr::get_checked`](crate::RelPtr::get_checked),
/// [`RelPtr::get_slice`](crate::RelPtr::get_slice)): also refuses a named root's
/// block ([`AccessError::Root`]), as the raw `write` does.
pub(crate) fn view_at<T: ShmSafe, A: ShmAllocator + ?Sized>(
    alloc: &A,
    offset: Offset,
    count: usize,
) -> Result<&[T], AccessError> {
    let len = (size_of::<T>() as u64).saturating_mul(count as u64);
    alloc.check_raw_range(offset, len)?;
    slice_at(alloc, offset, count)
}

/// Resolves `count` values of `T` at `offset` to a slice, after checking that the
/// range lies inside one live block of `alloc` and is aligned for `T`.
pub(crate) fn slice_at<T: ShmSafe, A: ShmAllocator + ?Sized>(
    alloc: &A,
    offset: Offset,
    count: usize,
) -> Result<&[T], AccessError> {
    let p = checked_ptr::<T, A>(alloc, offset, count)?;
    // SAFETY: `checked_ptr` checked bounds (inside one live block of the mapping) and
    // alignment for `count` Ts at `p`.
    Ok(unsafe { slice_from(alloc, p, count) })
}

/// Resolves `count` values of `T` at `offset` after checking only that the range is
/// inside the data region and aligned for `T` (not that it is one live block): the
/// fast path of [`RelPtr::get`](crate::RelPtr::get).
#[inline]
pub(crate) fn slice_in_data<T: ShmSafe, A: ShmAllocator + ?Sized>(
    alloc: &A,
    offset: Offset,
    count: usize,
) -> Result<&[T], AccessError> {
    let len = (size_of::<T>() as u64)
        .checked_mul(count as u64)
        .ok_or_else(|| alloc.out_of_bounds(offset, u64::MAX))?;
    if offset.get() % align_of::<T>() as u64 != 0 {
        return Err(AccessError::Misaligned {
            offset: offset.get(),
            align: align_of::<T>(),
        });
    }
    crate::alloc::data_relative(alloc.segment(), offset, len)?;
    let p = alloc
        .segment()
        .ptr_at(offset.get(), len, align_of::<T>())
        .ok_or_else(|| alloc.out_of_bounds(offset, len))?;
    // SAFETY: `ptr_at` checked that `len = count * size_of::<T>()` bytes at `p` are
    // inside the mapping and that `p` is aligned for T.
    Ok(unsafe { slice_from(alloc, p.cast::<T>(), count) })
}

/// The slice behind a validated pointer, borrowing the allocator that owns the mapping.
///
/// # Safety
/// `p` must point to `count` consecutive `T`s inside `owner`'s mapping, aligned for
/// `T` (as `Segment::ptr_at` checks).
#[inline]
unsafe fn slice_from<T: ShmSafe, A: ShmAllocator + ?Sized>(
    _owner: &A,
    p: std::ptr::NonNull<T>,
    count: usize,
) -> &[T] {
    // SAFETY:
    // - the caller guarantees `count * size_of::<T>()` bytes at `p` lie inside the
    //   mapping and that `p` is aligned for T;
    // - T: ShmSafe, so every bit pattern of those bytes is a valid T, whatever another
    //   process wrote; T has no padding, so the bytes are initialised memory;
    // - the slice borrows `_owner`, which owns the mapping, so it cannot outlive it;
    // - that nothing writes the bytes while the slice lives, or only through atomics
    //   (`T: ShmSync`), is each caller's part: the block is exclusively owned by
    //   the caller's handle, shared and immutable, or `T: ShmSync` (module docs of
    //   `crate::typed`).
    unsafe { std::slice::from_raw_parts(p.as_ptr() as *const T, count) }
}

/// Resolves the header `T` at `offset`, which the caller checked with
/// `check_block_start` is the start of a live block at least `size_of::<T>()`
/// long: only the data region, the mapping bounds and alignment are checked here.
#[inline]
pub(crate) fn header_at<T: ShmSafe + crate::typed::ShmSync, A: ShmAllocator + ?Sized>(
    alloc: &A,
    offset: Offset,
) -> Result<&T, AccessError> {
    slice_in_data::<T, A>(alloc, offset, 1).map(|s| &s[0])
}

/// Resolves one `T` at `offset`; see [`slice_at`].
pub(crate) fn value_at<T: ShmSafe, A: ShmAllocator + ?Sized>(
    alloc: &A,
    offset: Offset,
) -> Result<&T, AccessError> {
    slice_at::<T, A>(alloc, offset, 1).map(|s| &s[0])
}

/// Moves `values` into the block at `offset`, which this process just allocated
/// (so it is live and nobody else has its offset yet): only the mapping bounds and
/// alignment are checked, not the allocator's metadata. Returns the written values.
#[inline]
pub(crate) fn write_fresh<T: ShmSafe, A: ShmAllocator + ?Sized>(
    alloc: &A,
    offset: Offset,
    values: impl ExactSizeIterator<Item = T>,
) -> Result<&[T], AccessError> {
    let count = values.len();
    let len = (size_of::<T>() as u64)
        .checked_mul(count as u64)
        .ok_or_else(|| alloc.out_of_bounds(offset, u64::MAX))?;
    // The allocator produced `offset`, but its metadata may have been scribbled on:
    // never write outside the data region.
    crate::alloc::data_relative(alloc.segment(), offset, len)?;
    let dst = alloc
        .segment()
        .ptr_at(offset.get(), len, align_of::<T>())
        .ok_or_else(|| alloc.out_of_bounds(offset, len))?
        .cast::<T>()
        .as_ptr();
    // SAFETY: `ptr_at` proved `count` Ts at `dst` are inside the mapping and aligned
    // for T; the block was just allocated by this process and not yet published.
    Ok(unsafe { write_values(alloc, dst, count, values) })
}

/// Moves at most `count` of `values` into the Ts at `dst`; returns the written values.
///
/// # Safety
/// `dst` must point to `count` Ts inside `owner`'s mapping, aligned for T, in a
/// block this process just allocated and whose offset it has not published yet.
#[inline]
pub(crate) unsafe fn write_values<T: ShmSafe, A: ShmAllocator + ?Sized>(
    _owner: &A,
    dst: *mut T,
    count: usize,
    values: impl Iterator<Item = T>,
) -> &[T] {
    let mut written = 0;
    for v in values.take(count) {
        // SAFETY:
        // - the caller guarantees `count` Ts at `dst` are inside the mapping and
        //   aligned for T; `written < count` because `take(count)` yields at most
        //   `count` items;
        // - the block was just allocated by this process and its offset not yet
        //   published, so no reference handed out by this crate covers these bytes;
        // - a reader in another process (or thread) may still be copying these bytes
        //   out of the block's previous life (a seqlock reader that will retry, or a
        //   stale arena handle that will see the new epoch): the byte-wise atomic
        //   store keeps that overlap free of data races with its atomic loads;
        // - it does not drop the old bytes, which is right: they are not a T.
        unsafe { atomic_memcpy::atomic_store(dst.wrapping_add(written), v, Ordering::Relaxed) };
        written += 1;
    }
    // SAFETY:
    // - `written` Ts were initialised just above at `dst`, in bounds and aligned;
    // - T: ShmSafe is valid for any bytes later writers (atomics, hostile peers) put
    //   there, and the slice borrows `_owner`, which owns the mapping.
    unsafe { std::slice::from_raw_parts(dst, written) }
}

/// Copies one `T` out of shared memory with a byte-wise atomic load (Relaxed per
/// byte group; callers that need ordering put a fence after it).
///
/// # Safety
/// `p` points to one `T` inside a mapping that stays mapped for the call, aligned
/// for `T`.
#[inline]
pub(crate) unsafe fn atomic_read_relaxed<T: ShmSafe>(p: NonNull<T>) -> T {
    // SAFETY:
    // - the caller guarantees `p` is valid for reads of one T and aligned;
    // - the memory is a shared mapping reached through a raw pointer, never through
    //   a Rust reference this load could invalidate; every load is atomic, so
    //   concurrent writers in other processes are not a data race on this side.
    let v = unsafe { atomic_memcpy::atomic_load(p.as_ptr(), Ordering::Relaxed) };
    // SAFETY: every byte of `v` was copied from the mapping (initialised memory: the
    // segment is zero-filled at creation), T has no padding, and T: ShmSafe is valid
    // for every bit pattern, including a mix of two writes.
    unsafe { v.assume_init() }
}

/// [`atomic_read_relaxed`] followed by an Acquire fence.
///
/// # Safety
/// As [`atomic_read_relaxed`].
#[inline]
pub(crate) unsafe fn atomic_read<T: ShmSafe>(p: NonNull<T>) -> T {
    // SAFETY: the caller's guarantee is the callee's precondition.
    let v = unsafe { atomic_read_relaxed(p) };
    fence(Ordering::Acquire);
    v
}

/// Copies `count` values out of a block with byte-wise atomic loads (for readers
/// that must not keep references to memory another process may write or reuse).
/// The range is checked (inside one live block) before `out` grows, so a hostile
/// `count` is an error, never a huge local allocation.
pub(crate) fn copy_out<T: ShmSafe + Copy, A: ShmAllocator + ?Sized>(
    alloc: &A,
    offset: Offset,
    count: usize,
    out: &mut Vec<T>,
) -> Result<(), AccessError> {
    let p = checked_ptr::<T, A>(alloc, offset, count)?;
    out.reserve(count);
    for i in 0..count {
        // `checked_ptr` proved `count` Ts at `p`, so `p + i` is in bounds.
        let at = NonNull::new(p.as_ptr().wrapping_add(i)).unwrap_or(p);
        // SAFETY: `at` is the i-th of `count` aligned Ts inside one live block of the
        // mapping `alloc` owns, which is borrowed for this call.
        out.push(unsafe { atomic_read_relaxed(at) });
    }
    Ok(())
}

/// Copies `out.len()` bytes at `offset` out of one live block with byte-wise atomic
/// loads (the checked copy path for byte ranges another process may be writing).
#[cfg_attr(not(feature = "rkyv"), allow(dead_code))] // (archives)
pub(crate) fn copy_bytes_out<A: ShmAllocator + ?Sized>(
    alloc: &A,
    offset: Offset,
    out: &mut [u8],
) -> Result<(), AccessError> {
    const CHUNK: usize = 256;
    let p = checked_ptr::<u8, A>(alloc, offset, out.len())?;
    let mut done = 0;
    while done < out.len() {
        let n = CHUNK.min(out.len() - done);
        let src = p.as_ptr().wrapping_add(done);
        if n == CHUNK {
            // SAFETY:
            // - `checked_ptr` proved `out.len()` bytes at `p` inside one live block of
            //   the mapping `alloc` owns (borrowed for this call); `done + CHUNK <=
            //   out.len()`, so the chunk is inside them; `[u8; N]` needs alignment 1;
            // - the loads are atomic, so concurrent writers are not a data race here.
            let chunk =
                unsafe { atomic_memcpy::atomic_load(src as *const [u8; CHUNK], Ordering::Relaxed) };
            // SAFETY: every byte was copied from initialised shared memory, and any
            // byte is a valid u8.
            out[done..done + CHUNK].copy_from_slice(&unsafe { chunk.assume_init() });
        } else {
            for (i, b) in out[done..].iter_mut().enumerate() {
                let at = NonNull::new(src.wrapping_add(i)).unwrap_or(p);
                // SAFETY: `at` is one of the `out.len()` checked bytes (alignment 1).
                *b = unsafe { atomic_read_relaxed(at) };
            }
        }
        done += n;
    }
    fence(Ordering::Acquire);
    Ok(())
}
