//! Allocator handles by reference or shared ownership: `&A` and `Arc<A>` are
//! allocators too, so a typed handle generic over `A: ShmFree` can borrow its
//! allocator (`ShmBox<T, &FreeListAllocator>`) or share it
//! (`ShmBox<T, Arc<FreeListAllocator>>`, `'static` and movable into a thread).
//!
//! Every method forwards to the allocator behind the reference, so every promise
//! of [`ShmAllocator`] and [`ShmFree`] is the promise of that allocator.

use std::sync::Arc;

use super::{BumpAllocator, Internal, Offset, ShmAllocator, ShmFree, Stats};
use crate::error::{AccessError, AllocError, FreeError};
use crate::segment::{AllocatorKind, Segment};

macro_rules! forward_allocator {
    ($($ty:ty),*) => {$(
        // SAFETY: every method forwards to `A`'s, so `A`'s proof of each promise
        // of `ShmAllocator` (one segment, disjoint live blocks, metadata-only
        // range and block-start checks) is this impl's proof.
        unsafe impl<A: ShmAllocator + ?Sized> ShmAllocator for $ty {
            const KIND: AllocatorKind = A::KIND;
            #[inline]
            fn segment(&self) -> &Segment {
                (**self).segment()
            }
            #[inline]
            fn allocate_block(
                &self,
                i: Internal,
                size: usize,
                align: usize,
            ) -> Result<Offset, AllocError> {
                (**self).allocate_block(i, size, align)
            }
            #[inline]
            fn check_range(&self, offset: Offset, len: u64) -> Result<(), AccessError> {
                (**self).check_range(offset, len)
            }
            #[inline]
            fn check_block_start(&self, offset: Offset) -> Result<(), AccessError> {
                (**self).check_block_start(offset)
            }
            #[inline]
            fn write(&self, offset: Offset, data: &[u8]) -> Result<(), AccessError> {
                (**self).write(offset, data)
            }
            #[inline]
            fn read_into(&self, offset: Offset, buf: &mut [u8]) -> Result<(), AccessError> {
                (**self).read_into(offset, buf)
            }
            #[inline]
            fn read(&self, offset: Offset, len: usize) -> Result<Vec<u8>, AccessError> {
                (**self).read(offset, len)
            }
            fn available_bytes(&self) -> u64 {
                (**self).available_bytes()
            }
            fn used_bytes(&self) -> u64 {
                (**self).used_bytes()
            }
            fn stats(&self) -> Stats {
                (**self).stats()
            }
            #[inline]
            fn epoch(&self) -> u64 {
                (**self).epoch()
            }
            #[inline]
            fn liveness_token(&self) -> u32 {
                (**self).liveness_token()
            }
            #[inline]
            fn token_alive(&self, token: u32) -> bool {
                (**self).token_alive(token)
            }
            fn out_of_bounds(&self, offset: Offset, len: u64) -> AccessError {
                (**self).out_of_bounds(offset, len)
            }
        }

        // SAFETY: forwards to `A`'s `free`, `free_owned` and `grow_in_place`, so
        // `A`'s proof of `ShmFree`'s promises is this impl's proof.
        unsafe impl<A: ShmFree + ?Sized> ShmFree for $ty {
            #[inline]
            fn free(&self, offset: Offset) -> Result<(), FreeError> {
                (**self).free(offset)
            }
            #[inline]
            unsafe fn free_owned(&self, offset: Offset) -> Result<(), FreeError> {
                // SAFETY: the caller's duties for `free_owned` are `A::free_owned`'s.
                unsafe { (**self).free_owned(offset) }
            }
            #[inline]
            fn grow_block(&self, i: Internal, offset: Offset, new_size: usize) -> bool {
                (**self).grow_block(i, offset, new_size)
            }
        }
    )*};
}

forward_allocator!(&A, Arc<A>);

mod sealed {
    pub trait Sealed {}
    impl Sealed for &super::BumpAllocator {}
    impl Sealed for &mut super::BumpAllocator {}
    impl Sealed for super::Arc<super::BumpAllocator> {}
}

/// How an [`Arena`](crate::Arena) or an
/// [`ArenaArchiveReader`](crate::archive::ArenaArchiveReader) holds its
/// [`BumpAllocator`]: `&BumpAllocator` or `&mut BumpAllocator` (borrowed), or
/// `Arc<BumpAllocator>` (shared: the arena or reader is `'static`, storable next
/// to its allocator and movable into `std::thread::spawn`).
///
/// Sealed: these three are the implementations, so every call names the same
/// allocator (the pin a reader holds is that allocator's).
pub trait BumpHandle: sealed::Sealed {
    /// The allocator behind the handle.
    fn bump(&self) -> &BumpAllocator;

    /// The allocator, exclusively, if this is the only way to reach it: a
    /// `&mut BumpAllocator`, or an `Arc` without other clones or weak references.
    /// `None` for `&BumpAllocator`. What [`Arena::reset`](crate::Arena::reset)
    /// needs: a reset through a handle does not wait for that handle's own views,
    /// so no other user of the handle may hold one.
    fn bump_mut(&mut self) -> Option<&mut BumpAllocator>;
}

impl BumpHandle for &BumpAllocator {
    #[inline]
    fn bump(&self) -> &BumpAllocator {
        self
    }
    fn bump_mut(&mut self) -> Option<&mut BumpAllocator> {
        None
    }
}

impl BumpHandle for &mut BumpAllocator {
    #[inline]
    fn bump(&self) -> &BumpAllocator {
        self
    }
    fn bump_mut(&mut self) -> Option<&mut BumpAllocator> {
        Some(self)
    }
}

impl BumpHandle for Arc<BumpAllocator> {
    #[inline]
    fn bump(&self) -> &BumpAllocator {
        self
    }
    fn bump_mut(&mut self) -> Option<&mut BumpAllocator> {
        Arc::get_mut(self)
    }
}
