//! `ShmPtr<T>`: a pointer to a [`ShmBox`](crate::ShmBox)'s value that knows the
//! block's generation, so a stale one is an error instead of a read of whatever
//! was allocated there next.

use std::marker::PhantomData;
use std::mem::align_of;
use std::ptr::NonNull;
use std::sync::atomic::{fence, Ordering};

use crate::alloc::{Offset, ShmAllocator};
use crate::error::AccessError;
use crate::typed::token::{box_payload_offset, BoxHeader};
use crate::typed::{fingerprint, layout_checked, raw, ShmSafe};

/// A generation-checked pointer to the value of a [`ShmBox`](crate::ShmBox):
/// 16 bytes (block offset and generation), [`ShmSafe`], the same in every process.
///
/// Made by [`ShmBox::shm_ptr`](crate::ShmBox::shm_ptr). Every [`read`](ShmPtr::read)
/// checks, from the allocator's metadata, that the block is live and starts where
/// the pointer says, and that the block's generation (kept in the header the
/// allocator's typed layer places in front of the value, which no safe API writes)
/// still equals the pointer's: once the box is dropped, the read is
/// [`AccessError::StaleGeneration`] (or [`AccessError::NotBlockStart`]), also after
/// the bytes were reused for another object. A [`RelPtr`](crate::RelPtr) is a bare
/// offset and cannot tell.
///
/// Generations are drawn from a segment-wide counter that never repeats, and the
/// generation survives hand-over by token (the block is the same object).
///
/// ```
/// use shared_allocator::prelude::*;
/// use shared_allocator::typed::ShmPtr;
/// # let name = format!("doc-shmptr-{}", std::process::id());
/// # let _cleanup = shared_allocator::segment::UnlinkGuard::new(&name);
/// let alloc = FreeListAllocator::create(&name, 1 << 20)?;
/// let msg = ShmBox::new_in(&alloc, 7u64)?;
/// let p: ShmPtr<u64> = msg.shm_ptr();
/// let raw = p.to_raw(); // send these 16 bytes to another process
/// assert_eq!(ShmPtr::<u64>::from_raw(raw).read(&alloc)?, 7);
/// drop(msg);
/// let next = ShmBox::new_in(&alloc, 8u64)?; // likely the same block
/// assert!(ShmPtr::<u64>::from_raw(raw).read(&alloc).is_err()); // stale, not 8
/// # drop(next);
/// # alloc.unlink()?;
/// # Ok::<(), shared_allocator::Error>(())
/// ```
#[repr(C)]
pub struct ShmPtr<T> {
    block: u64,
    generation: u64,
    _type: PhantomData<fn() -> T>,
}

impl<T> ShmPtr<T> {
    pub(crate) fn new(block: Offset, generation: u64) -> Self {
        ShmPtr {
            block: block.get(),
            generation,
            _type: PhantomData,
        }
    }

    /// Rebuilds a pointer from the two numbers another process sent. Any numbers
    /// are safe: every read checks them.
    pub const fn from_raw(raw: [u64; 2]) -> Self {
        ShmPtr {
            block: raw[0],
            generation: raw[1],
            _type: PhantomData,
        }
    }

    /// The two numbers to send: `[block offset, generation]`.
    pub const fn to_raw(self) -> [u64; 2] {
        [self.block, self.generation]
    }

    /// The offset of the box's block (its header; the value follows it).
    pub const fn block(self) -> Offset {
        Offset::new(self.block)
    }

    /// The generation this pointer names.
    pub const fn generation(self) -> u64 {
        self.generation
    }
}

impl<T: ShmSafe> ShmPtr<T> {
    /// Copies the value out (byte-wise atomic, like [`RelPtr::read`](crate::RelPtr::read)),
    /// after checking that the block is live, starts at [`block`](Self::block), holds
    /// a `T` (fingerprint) and is still in this pointer's generation; the
    /// generation is read again after the copy (a seqlock), so a copy that raced
    /// with the drop is refused too. The copy may overlap the owner's
    /// [`set`](crate::ShmBox::set) / [`update`](crate::ShmBox::update) (a mix of
    /// two values, never a data race: both sides are byte-wise atomic).
    ///
    /// # Errors
    /// [`AccessError::StaleGeneration`] once the box was dropped (or for a
    /// generation it never had), [`AccessError::NotBlockStart`] when no live block
    /// starts there, [`AccessError::Corrupted`] if the block holds another type;
    /// bounds errors.
    pub fn read<A: ShmAllocator>(self, alloc: &A) -> Result<T, AccessError>
    where
        T: Copy,
    {
        let fp = layout_checked::<T>();
        let block = self.block();
        // A live block start (allocator metadata): its first 24 bytes are its
        // header (every box block is longer), so only mapping bounds remain.
        alloc.check_block_start(block)?;
        let h = raw::header_at::<BoxHeader, A>(alloc, block)?;
        let stale = |found| AccessError::StaleGeneration {
            offset: self.block,
            pointer: self.generation,
            block: found,
        };
        let g0 = h.generation.load(Ordering::Acquire);
        if g0 != self.generation || g0 == 0 {
            return Err(stale(g0));
        }
        if h.owner.fingerprint() != fp {
            return Err(AccessError::Corrupted {
                what: "ShmPtr names a block of another type",
            });
        }
        // The header vouches for a T at the payload (a typed segment's headers are
        // written only by this crate); the mapping bounds are still checked, and
        // the copy is atomic, so even a forged header in a raw segment is sound.
        let at = block.get() + box_payload_offset(align_of::<T>());
        let len = std::mem::size_of::<T>() as u64;
        crate::alloc::data_relative(alloc.segment(), Offset::new(at), len)?;
        let p: NonNull<T> = alloc
            .segment()
            .ptr_at(at, len, align_of::<T>())
            .ok_or_else(|| alloc.out_of_bounds(Offset::new(at), len))?
            .cast();
        // SAFETY: `ptr_at` checked one T at `p` inside the mapping `alloc` owns
        // (borrowed for this call), aligned for T.
        let v = unsafe { raw::atomic_read(p) };
        fence(Ordering::Acquire);
        let g1 = h.generation.load(Ordering::Relaxed);
        if g1 != g0 {
            return Err(stale(g1));
        }
        Ok(v)
    }
}

impl<T> Clone for ShmPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for ShmPtr<T> {}
impl<T> PartialEq for ShmPtr<T> {
    fn eq(&self, o: &Self) -> bool {
        (self.block, self.generation) == (o.block, o.generation)
    }
}
impl<T> Eq for ShmPtr<T> {}
impl<T> std::fmt::Debug for ShmPtr<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ShmPtr<{}>({:#x}, generation {:#x})",
            std::any::type_name::<T>(),
            self.block,
            self.generation
        )
    }
}

// SAFETY: repr(C) of two u64 and a zero-sized PhantomData: no padding, every bit
// pattern valid (every read checks the numbers), no pointers, fixed layout, no Drop.
unsafe impl<T: 'static> ShmSafe for ShmPtr<T> {
    const FINGERPRINT: u64 = fingerprint::primitive("ShmPtr", 16, 8);
}
