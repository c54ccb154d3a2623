//! Arenas over a [`BumpAllocator`]: typed allocations tied to the bump epoch.
//!
//! Arena values are *shared and immutable*: written once when allocated, then only
//! read. In this process, the borrow checker keeps [`Arena::reset`] from running
//! while arena values are alive. Across processes it cannot, so every handle carries
//! the (64-bit) epoch it was allocated in, and resolving it after a reset (by any
//! process) is an [`AccessError::Stale`] instead of a read of reused bytes.
//!
//! Views wait for nothing and nothing waits long for them: a view
//! ([`ArenaRef`], a live [`Arena`] and its values, an arena archive reader) pins the
//! region in this handle's registry slot, and a reset by any process (or through
//! another handle in this one) waits until no other handle holds a pin, or returns
//! [`AccessError::Busy`]. So a `&T` from an arena never sees its bytes reused.
//! A reader that dies pins nothing. [`ArenaPtr::read`] is the copy path, which
//! needs no pin beyond the copy.

use std::cell::{Cell, RefCell};
use std::marker::PhantomData;
use std::mem::{align_of, size_of};
use std::sync::atomic::{fence, Ordering};

use crate::alloc::{BumpAllocator, BumpHandle, Offset, ShmAllocator, MAX_ALIGN};
use crate::error::{AccessError, ArenaError};
use crate::process::{fork_epoch, Pin};
use crate::typed::{layout_checked, raw, ShmSafe};

/// A typed allocation scope over a bump allocator. Created by
/// [`BumpAllocator::arena`] (which holds the allocator mutably) or
/// [`Arena::new_in`] with any [`BumpHandle`]: `&BumpAllocator`, or
/// `Arc<BumpAllocator>` for an arena that is `'static` (stored next to its
/// allocator, moved into a thread). Values from it borrow the arena, so
/// [`Arena::reset`] cannot run while they live, and `BumpAllocator::reset` (which
/// takes `&mut`) cannot run while the arena holds the allocator.
///
/// ```
/// use shared_allocator::prelude::*;
/// # let name = format!("doc-arena-{}", std::process::id());
/// # let _cleanup = shared_allocator::segment::UnlinkGuard::new(&name);
/// let mut bump = BumpAllocator::create(&name, 1 << 20)?;
/// let mut arena = bump.arena();
/// let x = arena.alloc(7u64)?;
/// let s = arena.alloc_slice(&[1u32, 2, 3])?;
/// let handle = s.arena_ptr();            // offset, epoch, length
/// assert_eq!(*x.get()?, 7);
/// assert_eq!(*handle.get_slice(arena.allocator())?, [1, 2, 3]);
/// arena.reset()?;                           // only compiles once x and s are gone
/// assert!(handle.get_slice(arena.allocator()).unwrap_err().is_stale());
/// # drop(arena);
/// # bump.unlink()?;
/// # Ok::<(), shared_allocator::Error>(())
/// ```
///
/// The same with a shared allocator, in another thread:
///
/// ```
/// use std::sync::Arc;
/// use shared_allocator::prelude::*;
/// # let name = format!("doc-arena-arc-{}", std::process::id());
/// # let _cleanup = shared_allocator::segment::UnlinkGuard::new(&name);
/// let bump = Arc::new(BumpAllocator::create(&name, 1 << 20)?);
/// let arena = Arena::new_in(bump.clone());
/// let ptr = std::thread::spawn(move || arena.alloc(7u64).map(|b| b.arena_ptr()))
///     .join()
///     .unwrap()?;
/// assert_eq!(ptr.read(&bump)?, [7]);
/// # Ok::<(), shared_allocator::Error>(())
/// ```
///
/// An arena reserves a chunk of the bump region (64 KiB or a 64th of the region,
/// whichever is smaller, or one object if larger)
/// with one atomic operation and then bumps inside it locally, with no shared
/// atomic operation per object. Objects keep the epoch of their chunk, so `Stale`
/// keeps its meaning across processes. The unused tail of a chunk is released at
/// the next reset.
///
/// From its first allocation until it is dropped or reset, an arena pins the
/// region (its values are views): a reset by another handle waits for it, or
/// returns [`AccessError::Busy`]. Drop arenas (or call [`Arena::release`]) between
/// batches.
#[derive(Debug)]
pub struct Arena<A: BumpHandle> {
    /// The chunk's first free offset (a cell of its own: the only field an
    /// allocation writes).
    next: Cell<u64>,
    chunk: Cell<Chunk>,
    /// The pin held since the first allocation (its epoch is `chunk.epoch`).
    /// Declared before `bump`: dropped first, while the allocator (perhaps the
    /// last `Arc` of it) still maps the registry the pin counts in.
    pin: RefCell<Option<Pin>>,
    /// The segment's id, for the handles this arena makes.
    segment_id: u64,
    bump: A,
}

/// The part of the bump region this arena reserved: `next..end` is free, in
/// `epoch`, pinned in fork epoch `fork` (a fork child's copy must pin again);
/// `end == 0`: no chunk. The whole chunk was checked, when reserved, to lie in the
/// data region of the mapping: offset `o` of it is at address `o + delta`, and
/// `delta` is a multiple of [`MAX_ALIGN`] (so aligned offsets are aligned addresses).
#[derive(Debug, Clone, Copy, Default)]
struct Chunk {
    end: u64,
    epoch: u64,
    fork: u64,
    delta: usize,
}

/// Bytes an arena reserves at a time.
const CHUNK: u64 = 64 * 1024;

impl BumpAllocator {
    /// Opens a typed arena over this allocator, holding it mutably; see [`Arena`].
    pub fn arena(&mut self) -> Arena<&mut BumpAllocator> {
        Arena::new_in(self)
    }
}

impl<A: BumpHandle> Arena<A> {
    /// Opens a typed arena over the allocator `bump` holds; see [`Arena`].
    pub fn new_in(bump: A) -> Arena<A> {
        Arena {
            segment_id: bump.bump().segment().id(),
            next: Cell::new(0),
            chunk: Cell::new(Chunk::default()),
            pin: RefCell::new(None),
            bump,
        }
    }

    /// The bump allocator underneath (to resolve handles, read stats).
    #[inline]
    pub fn allocator(&self) -> &BumpAllocator {
        self.bump.bump()
    }

    /// The epoch allocations made now belong to.
    pub fn epoch(&self) -> u64 {
        self.allocator().epoch()
    }

    /// Places `size` bytes aligned to `align` in this arena's chunk (reserving a new
    /// chunk when it is used up or a reset happened); returns offset, epoch, and the
    /// bytes' address if they lie in a checked chunk (else 0: the caller checks).
    #[inline]
    fn place(&self, size: usize, align: usize) -> Result<(Offset, u64, usize), ArenaError> {
        let (c, next) = (self.chunk.get(), self.next.get());
        let mask = align as u64 - 1;
        let start = next.wrapping_add(mask) & !mask;
        // (No chunk: `end == 0`, which no `start + size` with `size > 0` fits under.)
        if start >= next
            && start.checked_add(size as u64).is_some_and(|e| e <= c.end)
            && c.fork == fork_epoch()
        {
            self.next.set(start + size as u64);
            // `delta` is a multiple of MAX_ALIGN: `start` aligned, so is the address.
            let addr = if align <= MAX_ALIGN {
                (start as usize).wrapping_add(c.delta)
            } else {
                0
            };
            return Ok((Offset::new(start), c.epoch, addr));
        }
        self.place_in_new_chunk(size, align)
    }

    /// The epoch this arena's pin protects, pinning first if needed (first use,
    /// or a fork child's copy of the arena). While the pin lives no reset by any
    /// handle can complete, so the epoch and every chunk of it stay valid.
    pub(crate) fn pinned_epoch(&self) -> Result<u64, AccessError> {
        let mut pin = self.pin.borrow_mut();
        if pin.as_ref().is_some_and(Pin::valid) {
            return Ok(self.allocator().epoch());
        }
        // None yet, or a fork child's copy of the parent's (which is dropped
        // without touching the parent's count): pin in this process's slot.
        raw::require_typed(self.allocator())?;
        let (p, epoch) = self.allocator().pin()?;
        *pin = Some(p);
        Ok(epoch)
    }

    #[cold]
    fn place_in_new_chunk(
        &self,
        size: usize,
        align: usize,
    ) -> Result<(Offset, u64, usize), ArenaError> {
        let epoch = self.pinned_epoch()?;
        // Small regions get small chunks (a 64th), so one arena never takes all.
        let chunk = CHUNK.min(self.allocator().segment().layout().data_len / 64);
        let want = (size as u64).max(chunk) + align as u64;
        if let Ok(want) = usize::try_from(want) {
            match self.allocator().allocate_with_epoch(want, 64) {
                Ok((off, e)) => {
                    debug_assert_eq!(e, epoch, "no reset completes while pinned");
                    // The allocator's metadata may have been scribbled on: the chunk
                    // is used only if it lies in the data region of the mapping.
                    let seg = self.allocator().segment();
                    let checked = crate::alloc::data_relative(seg, off, want as u64)
                        .ok()
                        .and_then(|_| seg.ptr_at(off.get(), want as u64, 64));
                    let delta = checked
                        .map(|p| (p.as_ptr() as usize).wrapping_sub(off.get() as usize))
                        .filter(|d| d % MAX_ALIGN == 0);
                    let mask = align as u64 - 1;
                    let start = (off.get() + mask) & !mask;
                    let Some(delta) = delta else {
                        // Unchecked: this object alone, written through the checks.
                        self.chunk.set(Chunk::default());
                        return Ok((Offset::new(start), e, 0));
                    };
                    self.next.set(start + size as u64);
                    self.chunk.set(Chunk {
                        end: off.get() + want as u64,
                        epoch: e,
                        fork: fork_epoch(),
                        delta,
                    });
                    let addr = if align <= MAX_ALIGN {
                        (start as usize).wrapping_add(delta)
                    } else {
                        0
                    };
                    return Ok((Offset::new(start), e, addr));
                }
                Err(crate::AllocError::OutOfMemory { .. } | crate::AllocError::TooLarge { .. }) => {
                }
                Err(e) => return Err(e.into()),
            }
        }
        // Not a whole chunk left: just this object (the old chunk's tail stays).
        let (off, e) = self.allocator().allocate_with_epoch(size, align)?;
        Ok((off, e, 0))
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
    ) -> Result<(), ArenaError> {
        if addr != 0 {
            // SAFETY: `place` returned `addr` for `count * size_of::<T>()` bytes at
            // `off` inside a chunk that was checked, when reserved, to lie in the data
            // region of the mapping; `addr` is aligned for T (`off` is, and the chunk's
            // `delta` is a multiple of every alignment `place` gives addresses for);
            // this arena reserved the chunk and has not handed out these bytes yet.
            unsafe { raw::write_values(self.allocator(), addr as *mut T, count, values) };
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
    ) -> Result<(), ArenaError> {
        raw::write_fresh(self.allocator(), off, values)?;
        Ok(())
    }

    /// Moves `value` into the arena.
    ///
    /// # Errors
    /// [`ArenaError::Alloc`] when the bump allocator is full; [`ArenaError::Access`]
    /// when the region cannot be pinned (see [`Arena`]).
    #[inline]
    pub fn alloc<T: ShmSafe>(&self, value: T) -> Result<ArenaBox<'_, T>, ArenaError> {
        let _ = layout_checked::<T>();
        let (off, epoch, addr) = self.place(size_of::<T>().max(1), align_of::<T>())?;
        self.write(off, addr, 1, std::iter::once(value))?;
        Ok(ArenaBox {
            bump: self.allocator(),
            ptr: ArenaPtr::new(off, epoch, 1, self.segment_id),
            fork: fork_epoch(),
        })
    }

    /// Copies `values` into the arena.
    ///
    /// # Errors
    /// [`ArenaError::Alloc`] when the bump allocator is full; [`ArenaError::Access`]
    /// when the region cannot be pinned (see [`Arena`]).
    #[inline]
    pub fn alloc_slice<T: ShmSafe + Copy>(
        &self,
        values: &[T],
    ) -> Result<ArenaBox<'_, T>, ArenaError> {
        let _ = layout_checked::<T>();
        let bytes =
            size_of::<T>()
                .checked_mul(values.len())
                .ok_or(crate::AllocError::TooLarge {
                    requested: u64::MAX,
                    max: self.allocator().segment().layout().data_len,
                })?;
        let (off, epoch, addr) = self.place(bytes.max(1), align_of::<T>())?;
        self.write(off, addr, values.len(), values.iter().copied())?;
        Ok(ArenaBox {
            bump: self.allocator(),
            ptr: ArenaPtr::new(off, epoch, values.len() as u64, self.segment_id),
            fork: fork_epoch(),
        })
    }

    /// Releases everything allocated since the last reset (in every process) and
    /// advances the epoch; returns the new epoch. Does not compile while values from
    /// this arena are alive. Waits for other handles' views like
    /// [`BumpAllocator::reset`].
    ///
    /// # Errors
    /// [`AccessError::Busy`] if other handles' views outlast the wait;
    /// [`AccessError::SharedHandle`] if the arena's handle is shared (a
    /// `&BumpAllocator`, or an `Arc` with other clones or weak references): a reset
    /// through a handle does not wait for its own views, so it needs the only one.
    pub fn reset(&mut self) -> Result<u64, AccessError> {
        self.release();
        match self.bump.bump_mut() {
            Some(bump) => bump.reset(),
            None => Err(AccessError::SharedHandle),
        }
    }

    /// Gives up this arena's chunk and its pin (no values from it can be alive:
    /// `&mut self`), so that resets by other handles need not wait for it. The
    /// next allocation pins and reserves again.
    pub fn release(&mut self) {
        self.chunk.set(Chunk::default());
        self.pin.get_mut().take();
    }
}

/// A zero-copy view of arena data: what [`ArenaPtr::get`] and [`ArenaBox::get`]
/// return. It dereferences to the value (or slice) and borrows the allocator.
///
/// It is the *view guard* of the safety model: it holds a reader pin in this
/// handle's registry slot (unless the arena that made the value already pins),
/// so a reset by any handle in any process waits for it to drop, or returns
/// [`AccessError::Busy`]. Keep views short-lived (a long-lived view holds resets
/// off); use [`ArenaPtr::read`] to keep data.
///
/// # Panics
/// A view copied into a `fork` child protects nothing there (its pin, or its
/// arena's, counts for the parent, which may drop it and reset): `Deref` panics
/// on such a copy; [`try_get`](ArenaRef::try_get) returns
/// [`AccessError::Forked`]. Take a fresh view in the child (`get` pins anew).
pub struct ArenaRef<'a, T: ?Sized> {
    value: &'a T,
    _pin: Option<Pin>,
    /// The fork epoch the view was taken in.
    fork: u64,
}

impl<'a, T: ?Sized> ArenaRef<'a, T> {
    fn new(value: &'a T, pin: Option<Pin>) -> Self {
        ArenaRef {
            value,
            _pin: pin,
            fork: fork_epoch(),
        }
    }

    /// The value, or [`AccessError::Forked`] on a fork child's copy of a parent's
    /// view (the fallible form of `Deref`).
    #[inline]
    pub fn try_get(&self) -> Result<&T, AccessError> {
        crate::process::check_fork(self.fork)?;
        Ok(self.value)
    }
}

impl<T: ?Sized> std::ops::Deref for ArenaRef<'_, T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        if self.fork != fork_epoch() {
            forked_view();
        }
        self.value
    }
}

#[cold]
#[inline(never)]
fn forked_view() -> ! {
    panic!(
        "an arena view copied into a fork child is not pinned there: take a new view \
         in the child"
    )
}

impl<T: ?Sized + std::fmt::Debug> std::fmt::Debug for ArenaRef<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

impl<T: ?Sized + std::fmt::Display> std::fmt::Display for ArenaRef<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

/// A value (or slice) allocated in an [`Arena`], borrowing it.
#[derive(Debug)]
pub struct ArenaBox<'a, T> {
    bump: &'a BumpAllocator,
    ptr: ArenaPtr<T>,
    /// The fork epoch the arena's pin protects: a fork child's copy pins anew.
    fork: u64,
}

impl<'a, T: ShmSafe> ArenaBox<'a, T> {
    /// The value. This process cannot have reset the arena (the borrow forbids it),
    /// but another process may have.
    ///
    /// # Errors
    /// [`AccessError::Stale`] if any process reset the bump allocator since.
    pub fn get(&self) -> Result<ArenaRef<'a, T>, AccessError> {
        let pin = self.own_pin()?;
        raw::value_at(self.bump, self.ptr.offset()).map(|v| ArenaRef::new(v, pin))
    }

    /// In the process that made the value, the arena it borrows pins the region:
    /// no second pin (just the epoch check). In a fork child, that pin is the
    /// parent's and protects nothing here: the view takes its own.
    #[inline]
    fn own_pin(&self) -> Result<Option<Pin>, AccessError> {
        if self.fork == fork_epoch() {
            self.ptr.check_epoch(self.bump)?;
            Ok(None)
        } else {
            self.ptr.pin(self.bump).map(Some)
        }
    }

    /// The elements of a slice allocation.
    ///
    /// # Errors
    /// As [`get`](ArenaBox::get).
    pub fn get_slice(&self) -> Result<ArenaRef<'a, [T]>, AccessError> {
        let pin = self.own_pin()?;
        raw::slice_at(self.bump, self.ptr.offset(), self.ptr.len()).map(|v| ArenaRef::new(v, pin))
    }

    /// The handle to send to other processes.
    pub fn arena_ptr(&self) -> ArenaPtr<T> {
        self.ptr
    }
}

/// The bit of `ArenaPtr::len` that marks a handle rebuilt from numbers.
const FROM_NUMBERS: u64 = 1 << 63;

/// A cross-process handle to an arena allocation: offset, epoch and element count.
/// [`ShmSafe`], so it can itself be stored in shared memory.
///
/// Resolving it checks the epoch: after a reset it is [`AccessError::Stale`].
/// [`read`](ArenaPtr::read) re-checks the epoch after copying, so a copy it returns
/// was never mixed with bytes of a later epoch: the checked copy path. Views from
/// [`get`](ArenaPtr::get) ([`ArenaRef`]) pin the region, so no reset by a
/// cooperating process reuses their bytes while they live; they trust untrusted
/// writers (a process scribbling on the segment) not to write there.
///
/// A view ([`get`](ArenaPtr::get)) is a claim that this crate wrote the bytes the
/// handle names: a view of bytes the arena has reserved but not written yet would
/// change under the `&T` when the arena later fills them. So a handle rebuilt from
/// numbers ([`from_parts`](ArenaPtr::from_parts)) gives copies only
/// ([`read`](ArenaPtr::read), sound for any numbers; `get` is
/// [`AccessError::Unverified`]), views need the `unsafe`
/// [`from_parts_unchecked`](ArenaPtr::from_parts_unchecked), and the type is
/// deliberately not `ShmSafe`, `bytemuck::Pod` or `zerocopy::FromBytes` (send its
/// three numbers instead, as `examples/arena_pipeline.rs` does).
///
/// A handle also records which segment it was made in (a process-local tag, not
/// one of its three numbers): viewing it through another segment's allocator is
/// [`AccessError::Unverified`], since there the same offset and epoch may name
/// bytes that segment's arena has not written yet.
#[derive(zerocopy::KnownLayout, zerocopy::Immutable)]
#[repr(C)]
pub struct ArenaPtr<T> {
    offset: u64,
    epoch: u64,
    len: u64,
    /// The id of the segment the handle was made in ([`ANY_SEGMENT`]: vouched
    /// for by an `unsafe` caller, or rebuilt from numbers).
    segment: u64,
    _type: PhantomData<fn() -> T>,
}

/// `ArenaPtr::segment` of a handle no segment check applies to (segment ids are
/// never 0).
const ANY_SEGMENT: u64 = 0;

impl<T> ArenaPtr<T> {
    fn new(offset: Offset, epoch: u64, len: u64, segment: u64) -> Self {
        ArenaPtr {
            offset: offset.get(),
            epoch,
            len,
            segment,
            _type: PhantomData,
        }
    }

    /// The epoch the allocation belongs to.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Number of elements (1 for a single value).
    pub fn len(&self) -> usize {
        (self.len & !FROM_NUMBERS) as usize
    }

    /// Whether this handle covers no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether this handle was rebuilt from numbers (copies only).
    pub fn is_from_numbers(&self) -> bool {
        self.len & FROM_NUMBERS != 0
    }

    /// The offset of the first element.
    pub fn offset(&self) -> Offset {
        Offset::new(self.offset)
    }

    /// Rebuilds a handle from its three numbers (as sent by another process), for
    /// copies: [`read`](Self::read) checks epoch, bounds and liveness and is sound
    /// for any numbers; views ([`get`](Self::get)) are refused with
    /// [`AccessError::Unverified`] (nothing proves the arena wrote those bytes).
    pub fn from_parts(offset: u64, epoch: u64, len: u64) -> Self {
        ArenaPtr::new(
            Offset::new(offset),
            epoch,
            (len & !FROM_NUMBERS) | FROM_NUMBERS,
            ANY_SEGMENT,
        )
    }

    /// Rebuilds a handle from its three numbers, for views too.
    ///
    /// # Safety
    /// The numbers are [`offset`](Self::offset), [`epoch`](Self::epoch) and
    /// [`len`](Self::len) of an `ArenaPtr<T>` (or [`ArenaBox::arena_ptr`]) that this
    /// crate made in the segment it is resolved in, unchanged: then every element lies in bytes
    /// the arena has written (and never writes again in that epoch). Numbers that
    /// name bytes an arena reserved but has not written yet would give a view that
    /// changes when the arena fills them. A stale epoch is still checked
    /// ([`AccessError::Stale`]), and bounds and alignment too.
    pub unsafe fn from_parts_unchecked(offset: u64, epoch: u64, len: u64) -> Self {
        ArenaPtr::new(Offset::new(offset), epoch, len & !FROM_NUMBERS, ANY_SEGMENT)
    }

    /// A view needs a handle this crate made in `bump`'s segment (or an `unsafe`
    /// caller vouched for).
    fn check_viewable(&self, bump: &BumpAllocator) -> Result<(), AccessError> {
        let other_segment = self.segment != ANY_SEGMENT && self.segment != bump.segment().id();
        if self.is_from_numbers() || other_segment {
            return Err(AccessError::Unverified {
                offset: self.offset,
            });
        }
        Ok(())
    }

    /// Pins the region for a view of this handle's epoch: `Stale` if a reset
    /// came since (no pin is kept then).
    pub(crate) fn pin(&self, bump: &BumpAllocator) -> Result<Pin, AccessError> {
        raw::require_typed(bump)?;
        let (pin, now) = bump.pin()?;
        if now != self.epoch {
            return Err(AccessError::Stale {
                handle_epoch: self.epoch,
                current_epoch: now,
            });
        }
        Ok(pin)
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
        self.check_viewable(bump)?;
        let pin = self.pin(bump)?;
        raw::value_at(bump, self.offset()).map(|v| ArenaRef::new(v, Some(pin)))
    }

    /// Resolves all elements.
    ///
    /// # Errors
    /// As [`get`](ArenaPtr::get).
    pub fn get_slice<'a>(&self, bump: &'a BumpAllocator) -> Result<ArenaRef<'a, [T]>, AccessError> {
        let _ = layout_checked::<T>();
        self.check_viewable(bump)?;
        let pin = self.pin(bump)?;
        raw::slice_at(bump, self.offset(), self.len()).map(|v| ArenaRef::new(v, Some(pin)))
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
        let len = self.len();
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
