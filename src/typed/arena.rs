//! Arenas over a [`BumpAllocator`]: typed allocations tied to the bump epoch.
//!
//! Arena values are *shared and immutable*: written once when allocated, then only
//! read. In this process, the borrow checker keeps [`Arena::reset`] from running
//! while arena values are alive. Across processes it cannot, so every handle carries
//! the (64-bit) epoch it was allocated in, and resolving it after a reset (by any
//! process) is an [`AccessError::Stale`] instead of a read of reused bytes.
//!
//! What is not checked yet: a reset by another process (or through a second
//! `BumpAllocator` of the same segment in this process) *while* a reference from
//! [`ArenaPtr::get`] / [`ArenaBox::get`] is held. Making such a reset wait (or fail
//! with `Busy`) needs reader pins in the process registry (not built yet); until then, references
//! trust the coordination protocol (reset only between batches), and
//! [`ArenaPtr::read`] is the copy path that is sound regardless.

use std::cell::Cell;
use std::marker::PhantomData;
use std::mem::{align_of, size_of};
use std::sync::atomic::{fence, AtomicU64, Ordering};

use crate::alloc::{BumpAllocator, Offset, ShmAllocator, MAX_ALIGN};
use crate::error::{AccessError, Error};
use crate::typed::{fingerprint, layout_checked, raw, ShmSafe};

/// A typed allocation scope over a bump allocator. Created by
/// [`BumpAllocator::arena`]; holds the allocator mutably so that neither
/// `BumpAllocator::reset` nor [`Arena::reset`] can run while values from it live.
///
/// ```
/// use shared_allocator::prelude::*;
/// # let name = format!("doc-arena-{}", std::process::id());
/// # let _cleanup = shared_allocator::segment::UnlinkGuard::new(&name);
/// let mut bump = BumpAllocator::create(&name, 1 << 20)?;
/// let mut arena = bump.arena();
/// let x = arena.alloc(7u64)?;
/// let s = arena.alloc_slice(&[1u32, 2, 3])?;
/// let handle = s.handle();                 // 24 bytes: offset, epoch, length
/// assert_eq!(*x.get()?, 7);
/// assert_eq!(*handle.get_slice(arena.allocator())?, [1, 2, 3]);
/// arena.reset();                            // only compiles once x and s are gone
/// assert!(handle.get_slice(arena.allocator()).unwrap_err().is_stale());
/// # drop(arena);
/// # bump.unlink()?;
/// # Ok::<(), shared_allocator::Error>(())
/// ```
///
/// An arena reserves a chunk of the bump region (64 KiB or a 64th of the region,
/// whichever is smaller, or one object if larger)
/// with one atomic operation and then bumps inside it locally: allocating an
/// object costs a plain load of the allocator's epoch mirror (to notice a reset by
/// any process) and no shared atomic operation. Objects keep the epoch of their
/// chunk, so `Stale` keeps its meaning across processes. The unused tail of a
/// chunk is released at the next reset.
#[derive(Debug)]
pub struct Arena<'b> {
    bump: &'b mut BumpAllocator,
    /// The chunk's first free offset (a cell of its own: the only field an
    /// allocation writes).
    next: Cell<u64>,
    chunk: Cell<Chunk>,
    /// The address of `bump`'s epoch mirror (`BumpAllocator::epoch_mirror`), read
    /// once per object.
    mirror: usize,
}

/// The part of the bump region this arena reserved: `next..end` is free, in `epoch`
/// (`end == 0`: no chunk). The whole chunk was checked, when reserved, to lie in the
/// data region of the mapping: offset `o` of it is at address `o + delta`, and
/// `delta` is a multiple of [`MAX_ALIGN`] (so aligned offsets are aligned addresses).
#[derive(Debug, Clone, Copy, Default)]
struct Chunk {
    end: u64,
    epoch: u64,
    delta: usize,
}

/// Bytes an arena reserves at a time.
const CHUNK: u64 = 64 * 1024;

impl BumpAllocator {
    /// Opens a typed arena over this allocator; see [`Arena`].
    pub fn arena(&mut self) -> Arena<'_> {
        let mirror = self.epoch_mirror() as *const AtomicU64 as usize;
        Arena {
            mirror,
            bump: self,
            next: Cell::new(0),
            chunk: Cell::new(Chunk::default()),
        }
    }
}

impl<'b> Arena<'b> {
    /// The bump allocator underneath (to resolve handles, read stats).
    pub fn allocator(&self) -> &BumpAllocator {
        self.bump
    }

    /// The epoch allocations made now belong to.
    pub fn epoch(&self) -> u64 {
        self.bump.epoch()
    }

    /// The bump allocator's epoch mirror.
    #[inline(always)]
    fn mirror(&self) -> &AtomicU64 {
        // SAFETY: `mirror` is the address `epoch_mirror` returned for `*self.bump`,
        // a word of the mapping that `*self.bump` owns (it never remaps), which
        // outlives `self`; the word is only accessed atomically.
        unsafe { &*(self.mirror as *const AtomicU64) }
    }

    /// Places `size` bytes aligned to `align` in this arena's chunk (reserving a new
    /// chunk when it is used up or a reset happened); returns offset, epoch, and the
    /// bytes' address if they lie in a checked chunk (else 0: the caller checks).
    #[inline]
    fn place(&self, size: usize, align: usize) -> Result<(Offset, u64, usize), Error> {
        match self.take(size, align) {
            Some(placed) => Ok(placed),
            None => self.place_in_new_chunk(size, align),
        }
    }

    /// Bumps inside the current chunk, if it has room and is of the current epoch.
    #[inline(always)]
    fn take(&self, size: usize, align: usize) -> Option<(Offset, u64, usize)> {
        let (c, next) = (self.chunk.get(), self.next.get());
        let mask = align as u64 - 1;
        let start = next.wrapping_add(mask) & !mask;
        // (No chunk: `end == 0`, which no `start + size` with `size > 0` fits under.)
        if start >= next
            && start.checked_add(size as u64).is_some_and(|e| e <= c.end)
            && self.mirror().load(Ordering::Acquire) == c.epoch
        {
            self.next.set(start + size as u64);
            // `delta` is a multiple of MAX_ALIGN: `start` aligned, so is the address.
            let addr = if align <= MAX_ALIGN {
                (start as usize).wrapping_add(c.delta)
            } else {
                0
            };
            return Some((Offset::new(start), c.epoch, addr));
        }
        None
    }

    #[cold]
    fn place_in_new_chunk(&self, size: usize, align: usize) -> Result<(Offset, u64, usize), Error> {
        // A reset in flight can make a fresh chunk stale at once: a few rounds, then
        // allocate the object by itself.
        for _ in 0..3 {
            // Small regions get small chunks (a 64th), so one arena never takes all.
            let chunk = CHUNK.min(self.bump.segment().layout().data_len / 64);
            let want = (size as u64).max(chunk) + align as u64;
            let Ok(want) = usize::try_from(want) else {
                break;
            };
            match self.bump.allocate_with_epoch(want, 64) {
                Ok((off, epoch)) => {
                    // The allocator's metadata may have been scribbled on: the chunk
                    // is used only if it lies in the data region of the mapping.
                    let seg = self.bump.segment();
                    let checked = crate::alloc::data_relative(seg, off, want as u64)
                        .ok()
                        .and_then(|_| seg.ptr_at(off.get(), want as u64, 64));
                    let Some(p) = checked else { break };
                    let delta = (p.as_ptr() as usize).wrapping_sub(off.get() as usize);
                    if delta % MAX_ALIGN != 0 {
                        break;
                    }
                    self.next.set(off.get());
                    self.chunk.set(Chunk {
                        end: off.get() + want as u64,
                        epoch,
                        delta,
                    })
                }
                Err(crate::AllocError::OutOfMemory { .. } | crate::AllocError::TooLarge { .. }) => {
                    break
                }
                Err(e) => return Err(e.into()),
            }
            if let Some(placed) = self.take(size, align) {
                return Ok(placed);
            }
        }
        // Not a whole chunk left (or resets keep racing): just this object.
        self.chunk.set(Chunk::default());
        let (off, epoch) = self.bump.allocate_with_epoch(size, align)?;
        Ok((off, epoch, 0))
    }

    /// Moves `values` (exactly `count` of them) to the `size` bytes just placed at
    /// `off` (address `addr`, or 0: unchecked yet).
    #[inline(always)]
    fn write<T: ShmSafe>(
        &self,
        off: Offset,
        addr: usize,
        count: usize,
        values: impl ExactSizeIterator<Item = T>,
    ) -> Result<(), Error> {
        if addr != 0 {
            // SAFETY: `place` returned `addr` for `count * size_of::<T>()` bytes at
            // `off` inside a chunk that was checked, when reserved, to lie in the data
            // region of the mapping; `addr` is aligned for T (`off` is, and the chunk's
            // `delta` is a multiple of every alignment `take` serves); this arena
            // reserved the chunk and has not handed out these bytes yet.
            unsafe { raw::write_values(&*self.bump, addr as *mut T, count, values) };
        } else {
            self.write_checked(off, values)?;
        }
        Ok(())
    }

    /// The write of an object placed outside a checked chunk: `write_fresh` checks.
    #[cold]
    #[inline(never)]
    fn write_checked<T: ShmSafe>(
        &self,
        off: Offset,
        values: impl ExactSizeIterator<Item = T>,
    ) -> Result<(), Error> {
        raw::write_fresh(&*self.bump, off, values)?;
        Ok(())
    }

    /// Moves `value` into the arena.
    ///
    /// # Errors
    /// [`Error::Alloc`] when the bump allocator is full.
    #[inline]
    pub fn alloc<T: ShmSafe>(&self, value: T) -> Result<ArenaBox<'_, T>, Error> {
        let _ = layout_checked::<T>();
        let (off, epoch, addr) = self.place(size_of::<T>().max(1), align_of::<T>())?;
        self.write(off, addr, 1, std::iter::once(value))?;
        Ok(ArenaBox {
            bump: self.bump,
            ptr: ArenaPtr::new(off, epoch, 1),
        })
    }

    /// Copies `values` into the arena.
    ///
    /// # Errors
    /// [`Error::Alloc`] when the bump allocator is full.
    #[inline]
    pub fn alloc_slice<T: ShmSafe + Copy>(&self, values: &[T]) -> Result<ArenaBox<'_, T>, Error> {
        let _ = layout_checked::<T>();
        let bytes =
            size_of::<T>()
                .checked_mul(values.len())
                .ok_or(crate::AllocError::TooLarge {
                    requested: u64::MAX,
                    max: self.bump.segment().layout().data_len,
                })?;
        let (off, epoch, addr) = self.place(bytes.max(1), align_of::<T>())?;
        self.write(off, addr, values.len(), values.iter().copied())?;
        Ok(ArenaBox {
            bump: self.bump,
            ptr: ArenaPtr::new(off, epoch, values.len() as u64),
        })
    }

    /// Releases everything allocated since the last reset (in every process) and
    /// advances the epoch; returns the new epoch. Does not compile while values from
    /// this arena are alive.
    pub fn reset(&mut self) -> u64 {
        self.chunk.set(Chunk::default());
        self.bump.reset()
    }
}

/// A zero-copy view of arena data: what [`ArenaPtr::get`] and [`ArenaBox::get`]
/// return. It dereferences to the value (or slice) and borrows the allocator.
///
/// It is the *view guard* of the safety model: today it only carries the borrow.
/// Reader pins through the process registry (so that a reset in any process waits
/// for it, or returns `Busy`, instead of reusing bytes under it) are not built yet. Keep views short-lived; use [`ArenaPtr::read`] to keep data.
pub struct ArenaRef<'a, T: ?Sized> {
    value: &'a T,
}

impl<'a, T: ?Sized> ArenaRef<'a, T> {
    fn new(value: &'a T) -> Self {
        ArenaRef { value }
    }
}

impl<T: ?Sized> std::ops::Deref for ArenaRef<'_, T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        self.value
    }
}

impl<T: ?Sized + std::fmt::Debug> std::fmt::Debug for ArenaRef<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.value.fmt(f)
    }
}

impl<T: ?Sized + std::fmt::Display> std::fmt::Display for ArenaRef<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.value.fmt(f)
    }
}

/// A value (or slice) allocated in an [`Arena`], borrowing it.
#[derive(Debug)]
pub struct ArenaBox<'a, T> {
    bump: &'a BumpAllocator,
    ptr: ArenaPtr<T>,
}

impl<'a, T: ShmSafe> ArenaBox<'a, T> {
    /// The value. This process cannot have reset the arena (the borrow forbids it),
    /// but another process may have.
    ///
    /// # Errors
    /// [`AccessError::Stale`] if any process reset the bump allocator since.
    pub fn get(&self) -> Result<ArenaRef<'a, T>, AccessError> {
        self.ptr.get(self.bump)
    }

    /// The elements of a slice allocation.
    ///
    /// # Errors
    /// As [`get`](ArenaBox::get).
    pub fn get_slice(&self) -> Result<ArenaRef<'a, [T]>, AccessError> {
        self.ptr.get_slice(self.bump)
    }

    /// The handle to send to other processes.
    pub fn handle(&self) -> ArenaPtr<T> {
        self.ptr
    }
}

/// A cross-process handle to an arena allocation: offset, epoch and element count.
/// [`ShmSafe`], so it can itself be stored in shared memory.
///
/// Resolving it checks the epoch: after a reset it is [`AccessError::Stale`].
/// [`read`](ArenaPtr::read) re-checks the epoch after copying, so a copy it returns
/// was never mixed with bytes of a later epoch: the checked copy path. Views from
/// [`get`](ArenaPtr::get) ([`ArenaRef`]) are checked once and trust every writer:
/// a reset by another process while a view is held is, until reader pins exist,
/// the coordination protocol's job (reset only between batches).
#[derive(zerocopy::FromBytes, zerocopy::KnownLayout, zerocopy::Immutable)]
#[repr(C)]
pub struct ArenaPtr<T> {
    offset: u64,
    epoch: u64,
    len: u64,
    _type: PhantomData<fn() -> T>,
}

impl<T> ArenaPtr<T> {
    fn new(offset: Offset, epoch: u64, len: u64) -> Self {
        ArenaPtr {
            offset: offset.get(),
            epoch,
            len,
            _type: PhantomData,
        }
    }

    /// The epoch the allocation belongs to.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Number of elements (1 for a single value).
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether this handle covers no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The offset of the first element.
    pub fn offset(&self) -> Offset {
        Offset::new(self.offset)
    }

    /// Rebuilds a handle from its three numbers (as sent by another process).
    pub fn from_parts(offset: u64, epoch: u64, len: u64) -> Self {
        ArenaPtr::new(Offset::new(offset), epoch, len)
    }

    fn check_epoch(&self, bump: &BumpAllocator) -> Result<(), AccessError> {
        let now = bump.epoch();
        if now != self.epoch {
            return Err(AccessError::Stale {
                handle_epoch: self.epoch,
                current_epoch: now,
            });
        }
        Ok(())
    }
}

impl<T: ShmSafe> ArenaPtr<T> {
    /// Resolves a single value to a zero-copy view (see [`ArenaRef`]; the copy
    /// path beside it is [`read`](ArenaPtr::read)).
    ///
    /// # Errors
    /// [`AccessError::Stale`] after a reset; bounds and alignment errors otherwise.
    pub fn get<'a>(&self, bump: &'a BumpAllocator) -> Result<ArenaRef<'a, T>, AccessError> {
        let _ = layout_checked::<T>();
        self.check_epoch(bump)?;
        raw::value_at(bump, self.offset()).map(ArenaRef::new)
    }

    /// Resolves all elements.
    ///
    /// # Errors
    /// As [`get`](ArenaPtr::get).
    pub fn get_slice<'a>(&self, bump: &'a BumpAllocator) -> Result<ArenaRef<'a, [T]>, AccessError> {
        let _ = layout_checked::<T>();
        self.check_epoch(bump)?;
        raw::slice_at(bump, self.offset(), self.len as usize).map(ArenaRef::new)
    }

    /// Copies the elements out with byte-wise atomic loads, then re-checks the
    /// epoch (a seqlock over the epoch: Acquire load, copy, Acquire fence, load):
    /// the copy is entirely from this handle's epoch, or the result is
    /// [`AccessError::Stale`]. This is the checked copy path: sound whatever other
    /// processes do meanwhile (reset, reallocate, scribble), and the number of
    /// elements is checked against the allocated range before the local vector grows.
    ///
    /// # Errors
    /// As [`get`](ArenaPtr::get).
    pub fn read(&self, bump: &BumpAllocator) -> Result<Vec<T>, AccessError>
    where
        T: Copy,
    {
        let _ = layout_checked::<T>();
        self.check_epoch(bump)?;
        let len = usize::try_from(self.len).map_err(|_| AccessError::NotAllocated {
            offset: self.offset,
            len: self.len,
        })?;
        let mut v = Vec::new();
        raw::copy_out(bump, self.offset(), len, &mut v)?;
        fence(Ordering::Acquire);
        self.check_epoch(bump)?;
        Ok(v)
    }
}

impl<T> Clone for ArenaPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for ArenaPtr<T> {}
impl<T> PartialEq for ArenaPtr<T> {
    fn eq(&self, o: &Self) -> bool {
        (self.offset, self.epoch, self.len) == (o.offset, o.epoch, o.len)
    }
}
impl<T> Eq for ArenaPtr<T> {}
impl<T> std::fmt::Debug for ArenaPtr<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ArenaPtr<{}>({:#x}, epoch {}, len {})",
            std::any::type_name::<T>(),
            self.offset,
            self.epoch,
            self.len
        )
    }
}

// SAFETY: repr(C) of three u64 and a zero-sized PhantomData: all-zero is valid.
unsafe impl<T: 'static> bytemuck::Zeroable for ArenaPtr<T> {}
// SAFETY: repr(C) of three u64 and a ZST: no padding, every bit pattern valid,
// Copy + 'static. (zerocopy's IntoBytes derive cannot see through the generic.)
unsafe impl<T: 'static> bytemuck::Pod for ArenaPtr<T> {}

// SAFETY: repr(C) of three u64 and a zero-sized PhantomData: no padding, every bit
// pattern valid, no pointers (offsets), fixed layout.
unsafe impl<T: 'static> ShmSafe for ArenaPtr<T> {
    const FINGERPRINT: u64 = fingerprint::primitive("ArenaPtr", 24, 8);
}
