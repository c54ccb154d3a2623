//! `ShmBox<T>`: owns one `T` in a segment, exclusively, and frees it on drop.

use std::mem::{align_of, size_of, ManuallyDrop};
use std::ops::Deref;
use std::sync::atomic::Ordering;
use std::ptr::NonNull;

use crate::alloc::{Offset, ShmFree};
use crate::error::{AccessError, Error, TokenError};
use crate::process::fork_epoch;
use crate::typed::token::{box_payload_offset, BoxHeader, BoxToken, OwnedHeader};
use crate::typed::{layout_checked, raw, RelPtr, ShmPtr, ShmSafe};

/// Owns one `T` in a shared segment, **exclusively**: it gives `&T` like `Box`,
/// writes the value with [`set`](ShmBox::set) / [`update`](ShmBox::update) (plain
/// data, `T: Copy`; no `&mut T`, see below), and frees the block when dropped.
///
/// The block is in the *exclusively owned* state of the crate's safety model: no
/// other handle, in any process, reads it as `&T` or writes it through the safe API.
/// Other processes may copy the value out with [`RelPtr::read`] or [`ShmPtr::read`]
/// (a byte-wise atomic copy that may see a half-written value, never undefined
/// behaviour: the owner's writes are byte-wise atomic stores too); a shared
/// `&T` through [`RelPtr::get`] exists only for [`ShmSync`](crate::typed::ShmSync)
/// types (atomics), whose shared API is what other processes use.
///
/// Ownership moves to another process with [`into_token`](ShmBox::into_token) and
/// [`from_token`](ShmBox::from_token): exactly once, and type-checked on arrival.
///
/// # Panics
/// A box copied into a `fork` child is no owner ([`is_owner`](ShmBox::is_owner) is
/// false; its drop frees nothing). `Deref`, [`set`](ShmBox::set),
/// [`update`](ShmBox::update) and [`into_token`](ShmBox::into_token) panic on such a
/// copy; [`try_get`](ShmBox::try_get), [`try_update`](ShmBox::try_update) and
/// [`try_into_token`](ShmBox::try_into_token)
/// return [`AccessError::Forked`] instead.
///
/// ```
/// use shared_allocator::prelude::*;
/// # let name = format!("doc-shmbox-{}", std::process::id());
/// # let _cleanup = shared_allocator::segment::UnlinkGuard::new(&name);
/// let alloc = FreeListAllocator::create(&name, 1 << 20)?;
/// let mut b = ShmBox::new_in(&alloc, [1u64, 2, 3])?;
/// b.update(|v| v[0] = 10); // the owner writes (byte-wise atomic stores)
/// let p = b.rel_ptr();
/// assert_eq!(p.read(&alloc)?, [10, 2, 3]); // others copy it out
///
/// // Hand it to another process (here: through a second mapping).
/// let token = b.into_token();
/// let other = FreeListAllocator::open(&name)?;
/// let b2 = ShmBox::<[u64; 3], _>::from_token(&other, token)?;
/// assert_eq!(*b2, [10, 2, 3]);
/// assert!(ShmBox::<[u64; 3], _>::from_token(&other, token).is_err()); // only once
/// drop(b2); // frees the block
/// # alloc.unlink()?;
/// # Ok::<(), shared_allocator::Error>(())
/// ```
pub struct ShmBox<T: ShmSafe, A: ShmFree> {
    alloc: A,
    /// The payload, resolved once: the block is ours for as long as this box lives.
    /// The block (and its [`OwnedHeader`]) starts `PAYLOAD` bytes before it.
    value: NonNull<T>,
    /// The fork epoch of the process that owns the block: a `fork` child's copy
    /// of the box is not an owner (it neither frees nor gives out references).
    fork: u64,
}

// SAFETY: a ShmBox is an owning pointer to a `T` (like `Box<T>`), plus a shared
// reference to an allocator (`A: Sync` through `ShmAllocator: Send + Sync`) and to an
// all-atomic header; `T: ShmSafe` is `Send + Sync`.
unsafe impl<T: ShmSafe, A: ShmFree> Send for ShmBox<T, A> {}
// SAFETY: `&ShmBox` gives only `&T` (`T: Sync`) and shared access to the allocator.
unsafe impl<T: ShmSafe, A: ShmFree> Sync for ShmBox<T, A> {}

impl<T: ShmSafe, A: ShmFree> ShmBox<T, A> {
    const PAYLOAD: u64 = box_payload_offset(align_of::<T>());

    /// Allocates room for a `T` in `alloc` and moves `value` there.
    ///
    /// # Errors
    /// [`Error::Alloc`] if the allocator refuses.
    #[inline]
    pub fn new_in(alloc: A, value: T) -> Result<Self, Error> {
        raw::require_typed(&alloc)?;
        let fp = layout_checked::<T>();
        let size = Self::PAYLOAD as usize + size_of::<T>();
        let align = align_of::<T>().max(8);
        let block = alloc.allocate_block(crate::alloc::INTERNAL, size, align)?;
        // The allocator produced `block`, but its metadata may have been scribbled
        // on: one check that the whole block lies in the data region of the mapping,
        // aligned, before writing header and value (else the path that checks each).
        let seg = alloc.segment();
        let checked = crate::alloc::data_relative(seg, block, size as u64)
            .ok()
            .and_then(|_| seg.ptr_at(block.get(), size as u64, align));
        let Some(p) = checked else {
            return Self::new_in_checked(alloc, block, value);
        };
        // SAFETY: `ptr_at` checked that the `size` bytes at `p` lie in the mapping,
        // aligned to `align` (at least 8, BoxHeader's alignment); the 24-byte header
        // is at the block start (`PAYLOAD >= 24`); the block was just allocated and
        // is not published.
        unsafe {
            raw::write_values(
                &alloc,
                p.as_ptr().cast::<BoxHeader>(),
                1,
                std::iter::once(BoxHeader::new(fp)),
            )
        };
        let value_ptr = p.as_ptr().wrapping_add(Self::PAYLOAD as usize).cast::<T>();
        // SAFETY: the payload's `size_of::<T>()` bytes at `PAYLOAD` end at `size`,
        // inside the checked block; `PAYLOAD` is a multiple of `align_of::<T>()` and
        // the block aligned to it; unpublished, as above.
        let v = unsafe { raw::write_values(&alloc, value_ptr, 1, std::iter::once(value)) };
        let value = NonNull::from(&v[0]);
        Ok(ShmBox {
            alloc,
            value,
            fork: fork_epoch(),
        })
    }

    /// `new_in` for a block that failed the one-piece check: header and value are
    /// written by the checked path each, and the block is freed if either fails.
    #[cold]
    #[inline(never)]
    fn new_in_checked(alloc: A, block: Offset, value: T) -> Result<Self, Error> {
        let fp = layout_checked::<T>();
        let made = (|| {
            let header = raw::write_fresh(&alloc, block, std::iter::once(BoxHeader::new(fp)))?;
            let v = raw::write_fresh(&alloc, Self::payload(block), std::iter::once(value))?;
            Ok::<_, Error>((header, NonNull::from(&v[0])))
        })();
        match made {
            Ok((_header, value)) => Ok(ShmBox {
                alloc,
                value,
                fork: fork_epoch(),
            }),
            Err(e) => {
                // SAFETY: `new_in` allocated the block just before this call; no
                // reference into it was handed out.
                let _ = unsafe { alloc.free_owned(block) };
                Err(e)
            }
        }
    }

    fn payload(block: Offset) -> Offset {
        Offset::new(block.get() + Self::PAYLOAD)
    }

    /// Takes ownership of the box another process gave away with
    /// [`into_token`](ShmBox::into_token).
    ///
    /// # Errors
    /// [`TokenError::AlreadyClaimed`] if the token was redeemed already (or the block
    /// freed since), [`TokenError::TypeMismatch`] if the block holds another type,
    /// [`TokenError::Access`] if the token does not resolve to a live block.
    pub fn from_token(alloc: A, token: BoxToken<T>) -> Result<Self, TokenError> {
        raw::require_typed(&alloc)?;
        let fp = layout_checked::<T>();
        let block = token.offset();
        let header = OwnedHeader::at(&alloc, block)?;
        // Check the payload's bounds before claiming: a refused token changes nothing.
        let value = raw::checked_ptr::<T, A>(&alloc, Self::payload(block), 1)?;
        header.redeem(&alloc, block, token.nonce(), std::any::type_name::<T>(), fp)?;
        Ok(ShmBox {
            alloc,
            value,
            fork: fork_epoch(),
        })
    }

    /// The block's owner header: `PAYLOAD` bytes before the value.
    #[inline]
    fn header(&self) -> &OwnedHeader {
        &self.box_header().owner
    }

    /// The block's whole header (owner and generation).
    #[inline]
    pub(crate) fn box_header(&self) -> &BoxHeader {
        let p = self
            .value
            .as_ptr()
            .cast::<u8>()
            .wrapping_sub(Self::PAYLOAD as usize);
        // SAFETY: the block starts `PAYLOAD` bytes before the value (`new_in` wrote
        // the header there; `from_token` checked it there with `OwnedHeader::at`):
        // inside the mapping `alloc` keeps alive, which outlives `&self`, 8-aligned (blocks
        // are aligned to at least 8 and `PAYLOAD` is a multiple of 8); the header is
        // all atomics, shared with other processes only through them.
        unsafe { &*p.cast::<BoxHeader>() }
    }

    /// The block's offset: the header's address in the mapping, as an offset.
    #[inline]
    pub(crate) fn block(&self) -> Offset {
        let header = self.header() as *const OwnedHeader as usize;
        Offset::new((header - self.alloc.segment().base_addr()) as u64)
    }

    /// Whether this process owns the block: false for a `fork` child's copy of a
    /// box made (or redeemed) in its parent.
    #[inline]
    pub fn is_owner(&self) -> bool {
        self.fork == fork_epoch()
    }

    #[inline]
    fn assert_owner(&self) {
        if !self.is_owner() {
            forked_box();
        }
    }

    /// Gives up ownership without freeing, for another process (or a later one) to
    /// take with [`from_token`](ShmBox::from_token), once.
    ///
    /// # Panics
    /// In a `fork` child, for a box its parent owns (see [`is_owner`](Self::is_owner));
    /// [`try_into_token`](Self::try_into_token) returns the error instead.
    pub fn into_token(self) -> BoxToken<T> {
        match self.try_into_token() {
            Ok(t) => t,
            Err(_) => forked_box(),
        }
    }

    /// [`into_token`](Self::into_token), or [`AccessError::Forked`] in a `fork`
    /// child's copy of a box its parent owns (the copy is dropped: it frees nothing).
    pub fn try_into_token(self) -> Result<BoxToken<T>, AccessError> {
        crate::process::check_fork(self.fork)?;
        let me = ManuallyDrop::new(self);
        let nonce = me.header().issue(&me.alloc);
        let token = BoxToken::new(me.block(), nonce);
        // SAFETY: `me` is never used or dropped again; its allocator handle is
        // moved out once and dropped here (an `Arc` gives its count back).
        drop(unsafe { std::ptr::read(&me.alloc) });
        Ok(token)
    }

    /// The value, or [`AccessError::Forked`] in a `fork` child's copy of a box its
    /// parent owns (the fallible form of `Deref`, which panics there).
    #[inline]
    pub fn try_get(&self) -> Result<&T, AccessError> {
        crate::process::check_fork(self.fork)?;
        Ok(self)
    }

    /// The pointer to the value, for copies in other processes ([`RelPtr::read`]), or
    /// shared views of [`ShmSync`](crate::typed::ShmSync) values ([`RelPtr::get`]).
    pub fn rel_ptr(&self) -> RelPtr<T> {
        RelPtr::from_offset(Self::payload(self.block()))
    }

    /// A generation-checked pointer to the value, for other processes: unlike
    /// [`rel_ptr`](Self::rel_ptr), reading it after this box is dropped (and the
    /// block reused) is an error ([`ShmPtr::read`]).
    pub fn shm_ptr(&self) -> ShmPtr<T> {
        let h = self.box_header();
        let mut g = h.generation.load(std::sync::atomic::Ordering::Acquire);
        if g == 0 {
            let fresh = crate::typed::token::fresh_generation(&self.alloc);
            g = match h.generation.compare_exchange(
                0,
                fresh,
                std::sync::atomic::Ordering::AcqRel,
                std::sync::atomic::Ordering::Acquire,
            ) {
                Ok(_) => fresh,
                Err(now) => now,
            };
        }
        ShmPtr::new(self.block(), g)
    }

    /// The value's bytes, through zerocopy (for `T` that derives
    /// `zerocopy::IntoBytes` and `zerocopy::Immutable`, i.e. no atomics): e.g. to hash
    /// it or send it elsewhere.
    pub fn as_bytes(&self) -> &[u8]
    where
        T: zerocopy::IntoBytes + zerocopy::Immutable,
    {
        zerocopy::IntoBytes::as_bytes(&**self)
    }

    /// The allocator this box lives in.
    pub fn allocator(&self) -> &A {
        &self.alloc
    }
}

/// Writing the value: whole-value stores, each a byte-wise atomic copy.
///
/// There is no `DerefMut` (no `&mut T` into shared memory): any process may copy
/// the block out at any time ([`RelPtr::read`], [`ShmPtr::read`], the raw `read`),
/// and those copies are byte-wise atomic loads. A plain store through `&mut T`
/// racing such a load is a data race (undefined behaviour under Rust's memory model,
/// reported by ThreadSanitizer) even though every bit pattern is a valid `T`.
/// Storing with byte-wise atomic stores makes every overlap of a write and a copy a
/// race-free one: the copy may be a mix of the old and the new value (still a valid
/// `T`), never undefined behaviour. See "No plain stores" in [`crate::typed`].
impl<T: ShmSafe + Copy, A: ShmFree> ShmBox<T, A> {
    /// Replaces the value (a byte-wise atomic store).
    ///
    /// # Panics
    /// In a `fork` child's copy of a box its parent owns, like `Deref`;
    /// [`try_update`](Self::try_update) returns [`AccessError::Forked`] instead.
    #[inline]
    pub fn set(&mut self, value: T) {
        self.assert_owner();
        self.store(value);
    }

    /// Runs `f` on a copy of the value and stores the copy back (a byte-wise
    /// atomic store), returning what `f` returns: the form of `*b = ...` and
    /// `b.field = ...`. If `f` panics, the value is unchanged.
    ///
    /// ```
    /// use shared_allocator::prelude::*;
    /// # let name = format!("doc-shmbox-update-{}", std::process::id());
    /// # let _cleanup = shared_allocator::segment::UnlinkGuard::new(&name);
    /// let alloc = FreeListAllocator::create(&name, 1 << 20)?;
    /// let mut b = ShmBox::new_in(&alloc, [1u64, 2, 3])?;
    /// b.update(|v| v[0] = 10);
    /// let sum = b.update(|v| { v[2] += 1; v.iter().sum::<u64>() });
    /// assert_eq!((*b, sum), ([10, 2, 4], 16));
    /// # drop(b);
    /// # alloc.unlink()?;
    /// # Ok::<(), shared_allocator::Error>(())
    /// ```
    ///
    /// # Panics
    /// As [`set`](Self::set).
    #[inline]
    pub fn update<R>(&mut self, f: impl FnOnce(&mut T) -> R) -> R {
        self.assert_owner();
        let mut v = **self;
        let r = f(&mut v);
        self.store(v);
        r
    }

    /// [`update`](Self::update), or [`AccessError::Forked`] in a `fork` child's
    /// copy of a box its parent owns (which must not write).
    #[inline]
    pub fn try_update<R>(&mut self, f: impl FnOnce(&mut T) -> R) -> Result<R, AccessError> {
        crate::process::check_fork(self.fork)?;
        Ok(self.update(f))
    }

    #[inline]
    fn store(&mut self, value: T) {
        // SAFETY:
        // - `value` was checked in-bounds and aligned for T when the box was made,
        //   in the mapping `alloc` owns, which outlives the box;
        // - `&mut self`: no `&T` from this box lives now, and the block is
        //   exclusively owned (no other handle writes it or holds a reference);
        // - other threads and processes may be copying the bytes out with
        //   byte-wise atomic loads at this moment: the byte-wise atomic store makes
        //   that overlap free of data races (and T: ShmSafe is valid for any mix);
        // - T: Copy has no drop glue, so overwriting without dropping is right.
        unsafe { atomic_memcpy::atomic_store(self.value.as_ptr(), value, Ordering::Relaxed) };
    }
}

impl<T: ShmSafe, A: ShmFree> Deref for ShmBox<T, A> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        self.assert_owner();
        // SAFETY:
        // - `value` was checked in-bounds and aligned for T when the box was made, in
        //   the mapping `alloc` owns, which outlives the box;
        // - the bytes are an initialised T (written by `new_in`, or by the giver before
        //   `into_token`, whose Release store our Acquire claim synchronised with);
        // - the block is exclusively owned by this box (claim word OWNED): no other
        //   handle writes it through the safe API while this `&T` lives.
        unsafe { self.value.as_ref() }
    }
}

impl<T: ShmSafe, A: ShmFree> Drop for ShmBox<T, A> {
    fn drop(&mut self) {
        if !self.is_owner() {
            // A fork child's copy: the parent owns the block (and may have handed
            // it on); the copy goes without touching it.
            return;
        }
        // Generation first: a ShmPtr checks it after the claim, so it never sees a
        // released block with its old generation.
        self.box_header()
            .generation
            .store(0, std::sync::atomic::Ordering::Release);
        self.header().release();
        // A failure here means the block was freed behind our back: nothing to do.
        // SAFETY: the box owns its block exclusively (allocated or redeemed once);
        // dropping it ends every reference it handed out.
        let _ = unsafe { self.alloc.free_owned(self.block()) };
    }
}

impl<T: ShmSafe + std::fmt::Debug, A: ShmFree> std::fmt::Debug for ShmBox<T, A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ShmBox").field(&**self).finish()
    }
}

#[cold]
#[inline(never)]
fn forked_box() -> ! {
    panic!(
        "a ShmBox copied into a fork child is not an owner: its parent owns the block \
         (move boxes across fork with into_token / from_token)"
    )
}
