//! `ShmVec<T>`: a growable vector whose header lives in shared memory, with one
//! writer (the owner) and any number of readers in other processes.

use std::marker::PhantomData;
use std::mem::{align_of, size_of, ManuallyDrop};
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicU64, Ordering};

use crate::alloc::{Offset, ShmFree};
use crate::error::{AccessError, Error, TokenError};
use crate::typed::token::{payload_offset, OwnedHeader, VecToken, PINNED};
use crate::typed::{fingerprint, layout_checked, raw, RelPtr, ShmSafe, ShmSync};

/// The part of a [`ShmVec`] that lives in shared memory, so other processes can find
/// the elements. Readers reach it through a `RelPtr<ShmVecHeader<T>>`.
///
/// `owner` is the hand-over claim word and the element type's fingerprint (see
/// [`VecToken`]). `seq` is a sequence lock over `data`/`cap` and over element reuse:
/// it is odd while the writer moves the buffer or shrinks the vector, and changes
/// each time; `len` only grows between changes of `seq` and is published with
/// Release after the element is written.
#[repr(C)]
pub struct ShmVecHeader<T> {
    owner: OwnedHeader,
    pub(super) len: AtomicU64,
    pub(super) cap: AtomicU64,
    pub(super) data: AtomicU64,
    pub(super) seq: AtomicU64,
    _type: PhantomData<fn() -> T>,
}

// SAFETY: repr(C) of an all-atomic 16-byte OwnedHeader, four AtomicU64 and a
// zero-sized PhantomData: no padding, every bit pattern valid, no pointers (data is
// an offset), fixed layout.
unsafe impl<T: 'static> ShmSafe for ShmVecHeader<T> {
    const FINGERPRINT: u64 = fingerprint::primitive("ShmVecHeader", 48, 8);
}
// SAFETY: every field is an atomic (or zero-sized): every byte is in an UnsafeCell.
unsafe impl<T: 'static> ShmSync for ShmVecHeader<T> {}

/// The fingerprint a vector of `T` records in its header, checked by `from_token`.
const fn vec_fingerprint<T: ShmSafe>() -> u64 {
    fingerprint::str(layout_checked::<T>(), "ShmVec")
}

/// The fingerprint in the [`PINNED`] header of a vector's element buffer.
const fn buffer_fingerprint<T: ShmSafe>() -> u64 {
    fingerprint::str(layout_checked::<T>(), "ShmVecBuffer")
}

/// A growable vector in a shared segment. The owner (this handle) is the only writer
/// (the block is exclusively owned); other processes read it with [`ShmVecReader`](super::ShmVecReader),
/// which copies out a consistent prefix (seqlock, byte-wise atomic copies).
///
/// Ownership moves with [`into_token`](ShmVec::into_token) /
/// [`from_token`](ShmVec::from_token), exactly once; a token can also be parked in
/// shared memory (a root) so that a restarted writer takes the vector back and
/// appends to it.
///
/// ```
/// use shared_allocator::prelude::*;
/// # let name = format!("doc-shmvec-{}", std::process::id());
/// # let _cleanup = shared_allocator::segment::UnlinkGuard::new(&name);
/// let alloc = FreeListAllocator::create(&name, 1 << 20)?;
/// let mut v = ShmVec::new_in(&alloc)?;
/// v.extend_from_slice(&[1u32, 2, 3])?;
/// v.push(4)?;
/// assert_eq!(v.as_slice(), &[1, 2, 3, 4]);
///
/// // In another process, with the 8-byte pointer:
/// let reader = ShmVecReader::open(&alloc, v.rel_ptr())?;
/// assert_eq!(reader.to_vec()?, vec![1, 2, 3, 4]);
/// # drop(v);
/// # alloc.unlink()?;
/// # Ok::<(), shared_allocator::Error>(())
/// ```
pub struct ShmVec<T: ShmSafe, A: ShmFree> {
    alloc: A,
    header: RelPtr<ShmVecHeader<T>>,
    /// The header, resolved once (all atomics; in the mapping `alloc` keeps alive).
    hdr: NonNull<ShmVecHeader<T>>,
    /// The element buffer: its block's offset (null before the first allocation;
    /// the elements start `BUF` bytes after it, past a [`PINNED`] header) and the
    /// pointer to the elements (dangling, never dereferenced, while `cap == 0`).
    buf_off: Offset,
    buf: NonNull<T>,
    len: usize,
    cap: usize,
    /// Fork epoch of the owning process: a `fork` child's copy owns nothing.
    fork: u64,
}

// SAFETY: a ShmVec owns its buffer like `Vec<T>` (writes need `&mut self`), and
// shares an all-atomic header and an allocator (`A: Send + Sync` through
// `ShmAllocator`); `T: ShmSafe` is `Send + Sync`.
unsafe impl<T: ShmSafe, A: ShmFree> Send for ShmVec<T, A> {}
// SAFETY: `&ShmVec` gives only `&[T]` (`T: Sync`), atomic header loads and shared
// access to the allocator.
unsafe impl<T: ShmSafe, A: ShmFree> Sync for ShmVec<T, A> {}

impl<T: ShmSafe, A: ShmFree> ShmVec<T, A> {
    const ELEM: usize = {
        assert!(
            size_of::<T>() > 0,
            "ShmVec does not support zero-sized types"
        );
        size_of::<T>()
    };
    /// Bytes from a buffer block's start to its first element.
    const BUF: u64 = payload_offset(align_of::<T>());

    /// Creates an empty vector (its header is allocated in `alloc`).
    ///
    /// # Errors
    /// [`Error::Alloc`] if the header cannot be allocated.
    pub fn new_in(alloc: A) -> Result<Self, Error> {
        Self::with_capacity_in(alloc, 0)
    }

    /// Creates an empty vector with room for `cap` elements.
    ///
    /// # Errors
    /// [`Error::Alloc`] if the header or buffer cannot be allocated.
    pub fn with_capacity_in(alloc: A, cap: usize) -> Result<Self, Error> {
        raw::require_typed(&alloc)?;
        let _ = Self::ELEM;
        let fp = vec_fingerprint::<T>();
        let off = alloc.allocate_block(crate::alloc::INTERNAL, size_of::<ShmVecHeader<T>>(), 8)?;
        let header = RelPtr::from_offset(off);
        let init: ShmVecHeader<T> = ShmVecHeader {
            owner: OwnedHeader::new(fp),
            len: AtomicU64::new(0),
            cap: AtomicU64::new(0),
            data: AtomicU64::new(0),
            seq: AtomicU64::new(0),
            _type: PhantomData,
        };
        let hdr = raw::write_fresh(&alloc, off, std::iter::once(init))
            .map(|s| &s[0])
            .inspect_err(|_| {
                // SAFETY: allocated just above by this call; no reference into it
                // was handed out (its header write failed).
                let _ = unsafe { alloc.free_owned(off) };
            })?;
        let hdr = NonNull::from(hdr);
        let mut v = ShmVec {
            alloc,
            header,
            hdr,
            buf_off: Offset::NULL,
            buf: NonNull::dangling(),
            len: 0,
            cap: 0,
            fork: crate::process::fork_epoch(),
        };
        if cap > 0 {
            v.grow_to(cap)?;
        }
        Ok(v)
    }

    /// The header: all atomics, in the mapping `alloc` keeps alive.
    #[inline]
    fn hdr(&self) -> &ShmVecHeader<T> {
        // SAFETY: `hdr` was resolved (bounds, alignment, live block) when the vector
        // was made; the header block is this vector's until it is dropped or given
        // away, inside the mapping `self.alloc` keeps alive; all atomics, so shared
        // access with readers in other processes is sound.
        unsafe { self.hdr.as_ref() }
    }

    /// The pointer to the header, for readers in other processes.
    pub fn rel_ptr(&self) -> RelPtr<ShmVecHeader<T>> {
        self.header
    }

    /// Gives up ownership without freeing anything, for another process (or a later
    /// one) to take with [`from_token`](ShmVec::from_token), once. Readers keep
    /// reading meanwhile.
    ///
    /// # Panics
    /// In a `fork` child's copy of a vector its parent owns.
    /// [`try_into_token`](Self::try_into_token) returns the error instead.
    pub fn into_token(self) -> VecToken<T> {
        match self.try_into_token() {
            Ok(t) => t,
            Err(e) => panic!("{e}"),
        }
    }

    /// [`into_token`](Self::into_token), or [`AccessError::Forked`] in a `fork`
    /// child's copy of a vector its parent owns (the copy is dropped: it frees
    /// nothing).
    pub fn try_into_token(self) -> Result<VecToken<T>, AccessError> {
        self.check_owner()?;
        let me = ManuallyDrop::new(self);
        let nonce = me.hdr().owner.issue(&me.alloc);
        let token = VecToken::new(me.header.offset(), nonce);
        // SAFETY: `me` is never used or dropped again; its allocator handle is
        // moved out once and dropped here (an `Arc` gives its count back).
        drop(unsafe { std::ptr::read(&me.alloc) });
        Ok(token)
    }

    /// Takes ownership of a vector given away with [`into_token`](ShmVec::into_token),
    /// after checking its header: element type (fingerprint), `len <= cap`, and that
    /// the buffer is one live block of `cap` elements. A refused token changes nothing.
    ///
    /// # Errors
    /// [`TokenError::AlreadyClaimed`], [`TokenError::TypeMismatch`],
    /// [`TokenError::Access`] (also for an inconsistent header).
    pub fn from_token(alloc: A, token: VecToken<T>) -> Result<Self, TokenError> {
        raw::require_typed(&alloc)?;
        let _ = Self::ELEM;
        let fp = vec_fingerprint::<T>();
        let header = RelPtr::<ShmVecHeader<T>>::from_offset(token.offset());
        // A block start, so a header only this crate wrote (never a payload).
        alloc.check_block_start(token.offset())?;
        let hdr = raw::value_at::<ShmVecHeader<T>, A>(&alloc, token.offset())?;
        hdr.owner
            .check(token.offset(), std::any::type_name::<Self>(), fp)?;
        // Only the token's holder may change the header now, and the giver stored
        // the nonce with Release after its last change; this Acquire sees that state.
        let claim = hdr.owner.claim_word(Ordering::Acquire);
        if claim != token.nonce() {
            return Err(TokenError::AlreadyClaimed {
                offset: token.offset().get(),
                found: claim,
            });
        }
        let corrupt = |what| TokenError::Access(AccessError::Corrupted { what });
        let len = usize::try_from(hdr.len.load(Ordering::Relaxed))
            .map_err(|_| corrupt("vector length out of range"))?;
        let cap = usize::try_from(hdr.cap.load(Ordering::Relaxed))
            .map_err(|_| corrupt("vector capacity out of range"))?;
        let data = Offset::new(hdr.data.load(Ordering::Relaxed));
        if len > cap || (cap == 0) != data.is_null() || hdr.seq.load(Ordering::Relaxed) % 2 == 1 {
            return Err(corrupt("vector header is inconsistent"));
        }
        let (buf_off, buf) = if cap == 0 {
            (Offset::NULL, NonNull::dangling())
        } else {
            // The buffer must be a live block of this vector's kind: its start is a
            // [`PINNED`] buffer header of `T`, written by this crate.
            let block = data
                .get()
                .checked_sub(Self::BUF)
                .map(Offset::new)
                .ok_or_else(|| corrupt("vector buffer offset"))?;
            let h = OwnedHeader::at(&alloc, block)?;
            if h.claim_word(Ordering::Relaxed) != PINNED {
                return Err(corrupt("vector buffer is not a buffer block"));
            }
            h.check(
                block,
                std::any::type_name::<Self>(),
                buffer_fingerprint::<T>(),
            )?;
            (block, raw::checked_ptr::<T, A>(&alloc, data, cap)?)
        };
        hdr.owner.redeem(
            &alloc,
            token.offset(),
            token.nonce(),
            std::any::type_name::<Self>(),
            fp,
        )?;
        let hdr = NonNull::from(hdr);
        Ok(ShmVec {
            alloc,
            header,
            hdr,
            buf_off,
            buf,
            len,
            cap,
            fork: crate::process::fork_epoch(),
        })
    }

    /// Whether this process owns the vector: false for a `fork` child's copy of a
    /// vector its parent owns (which neither writes, frees nor gives references).
    #[inline]
    pub fn is_owner(&self) -> bool {
        self.fork == crate::process::fork_epoch()
    }

    #[inline]
    fn check_owner(&self) -> Result<(), AccessError> {
        crate::process::check_fork(self.fork)
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Elements the buffer holds before it must grow.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Makes room for at least `additional` more elements.
    ///
    /// # Errors
    /// [`Error::Alloc`] if the allocator cannot provide the new buffer; the vector is
    /// unchanged.
    pub fn reserve(&mut self, additional: usize) -> Result<(), Error> {
        self.check_owner()?;
        let need = self
            .len
            .checked_add(additional)
            .ok_or(crate::AllocError::TooLarge {
                requested: u64::MAX,
                max: self.alloc.segment().layout().data_len,
            })?;
        if need > self.cap {
            self.grow_to(need.max(self.cap * 2).max(4))?;
        }
        Ok(())
    }

    #[cold]
    #[inline(never)]
    fn grow_for_push(&mut self) -> Result<(), Error> {
        self.reserve(1)
    }

    fn grow_to(&mut self, new_cap: usize) -> Result<(), Error> {
        let too_large = crate::AllocError::TooLarge {
            requested: u64::MAX,
            max: self.alloc.segment().layout().data_len,
        };
        let bytes = new_cap
            .checked_mul(Self::ELEM)
            .and_then(|b| b.checked_add(Self::BUF as usize))
            .ok_or(too_large)?;
        let data_of = |block: Offset| Offset::new(block.get() + Self::BUF);
        // Extend in place when the allocator can: no copy, and readers see only
        // `cap` grow (the data offset stays).
        if !self.buf_off.is_null() && self
                .alloc
                .grow_block(crate::alloc::INTERNAL, self.buf_off, bytes) {
            if let Ok(p) = raw::checked_ptr::<T, A>(&self.alloc, data_of(self.buf_off), new_cap) {
                self.buf = p;
                self.hdr().cap.store(new_cap as u64, Ordering::Release);
                self.cap = new_cap;
                return Ok(());
            }
        }
        let off = self.alloc.allocate_block(crate::alloc::INTERNAL, bytes, align_of::<T>().max(8))?;
        let made = OwnedHeader::init_pinned(&self.alloc, off, buffer_fingerprint::<T>())
            .and_then(|()| raw::checked_ptr::<T, A>(&self.alloc, data_of(off), new_cap));
        let ptr = match made {
            Ok(p) => p,
            Err(e) => {
                // SAFETY: allocated just above by this vector; never published.
                let _ = unsafe { self.alloc.free_owned(off) };
                return Err(e.into());
            }
        };
        for i in 0..self.len {
            let (src, dst) = (
                self.buf.as_ptr().wrapping_add(i),
                ptr.as_ptr().wrapping_add(i),
            );
            // SAFETY:
            // - `src` is element `i < len` of our current buffer (checked in-bounds and
            //   aligned when allocated, initialised by `push`), in the mapping
            //   `self.alloc` owns; only this writer writes it, readers only read it;
            // - T: ShmSafe (no Drop, every bit pattern valid), so a bitwise copy is a
            //   valid value and the original needs no dropping.
            let v = unsafe { std::ptr::read(src) };
            // SAFETY:
            // - `dst` is element `i < len < new_cap` of the new block, checked in-bounds
            //   and aligned for T just above; distinct from the old buffer;
            // - the new block may be one a stale reader still copies from (its previous
            //   life): the byte-wise atomic store keeps that overlap race-free, as in
            //   `raw::write_fresh`.
            unsafe { atomic_memcpy::atomic_store(dst, v, Ordering::Relaxed) };
        }
        self.hdr().seq.fetch_add(1, Ordering::AcqRel);
        // Readers that see the changes below also see `seq` odd (seqlock writer).
        fence(Ordering::Release);
        self.hdr().data.store(data_of(off).get(), Ordering::Release);
        self.hdr().cap.store(new_cap as u64, Ordering::Release);
        self.hdr().seq.fetch_add(1, Ordering::AcqRel);
        let old = std::mem::replace(&mut self.buf_off, off);
        self.buf = ptr;
        if !old.is_null() {
            // SAFETY: the old buffer is this vector's (the one writer owns it);
            // `&mut self` ends every slice into it; readers copy with atomics.
            let _ = unsafe { self.alloc.free_owned(old) };
        }
        self.cap = new_cap;
        Ok(())
    }

    /// Appends `value`, growing through the allocator when full.
    ///
    /// # Errors
    /// [`Error::Alloc`] if the buffer must grow and cannot.
    #[inline]
    pub fn push(&mut self, value: T) -> Result<(), Error> {
        self.check_owner()?;
        if self.len == self.cap {
            self.grow_for_push()?;
        }
        let p = self.buf;
        // SAFETY:
        // - `p` is our buffer of `cap > len` elements (checked in-bounds and aligned for T
        //   when allocated), so slot `len` is inside it;
        // - slot `len` is not part of the published prefix, so no reader in any process
        //   is entitled to be reading it, and no reference from this handle covers it;
        // - the slot may be one a reader is still copying from before a `pop`/`clear`
        //   (it then retries: `seq` changed): the byte-wise atomic store keeps that
        //   overlap free of data races; it does not drop the old bytes (not a live T).
        unsafe {
            atomic_memcpy::atomic_store(p.as_ptr().wrapping_add(self.len), value, Ordering::Relaxed)
        };
        self.len += 1;
        self.hdr().len.store(self.len as u64, Ordering::Release);
        Ok(())
    }

    /// Appends copies of every element of `values`.
    ///
    /// # Errors
    /// [`Error::Alloc`] if the buffer must grow and cannot; nothing is appended then.
    pub fn extend_from_slice(&mut self, values: &[T]) -> Result<(), Error>
    where
        T: Copy,
    {
        self.reserve(values.len())?;
        if values.is_empty() {
            return Ok(());
        }
        let dst = self.buf.as_ptr().wrapping_add(self.len);
        for (i, v) in values.iter().enumerate() {
            // SAFETY:
            // - after `reserve`, slots `len..len + values.len()` are inside our buffer,
            //   aligned for T;
            // - they are not published; readers copying them from before a shrink
            //   retry, and the atomic store keeps that overlap race-free;
            // - T: Copy, so duplicating the value is fine.
            unsafe { atomic_memcpy::atomic_store(dst.wrapping_add(i), *v, Ordering::Relaxed) };
        }
        self.len += values.len();
        self.hdr().len.store(self.len as u64, Ordering::Release);
        Ok(())
    }

    fn shrink_len(&mut self, new_len: usize) {
        if let Err(e) = self.check_owner() {
            panic!("{e}");
        }
        // Readers copying the elements being retired must notice: bump the sequence.
        self.hdr().seq.fetch_add(1, Ordering::AcqRel);
        fence(Ordering::Release);
        self.hdr().len.store(new_len as u64, Ordering::Release);
        self.hdr().seq.fetch_add(1, Ordering::AcqRel);
        self.len = new_len;
    }

    /// Removes and returns the last element.
    ///
    /// # Panics
    /// In a `fork` child's copy of a vector its parent owns (as
    /// [`as_slice`](Self::as_slice); [`is_owner`](Self::is_owner) tells).
    pub fn pop(&mut self) -> Option<T>
    where
        T: Copy,
    {
        let last = *self.as_slice().last()?;
        self.shrink_len(self.len - 1);
        Some(last)
    }

    /// Removes every element (the buffer is kept).
    ///
    /// # Panics
    /// In a `fork` child's copy of a non-empty vector its parent owns.
    pub fn clear(&mut self) {
        if self.len > 0 {
            self.shrink_len(0);
        }
    }

    /// The elements, in this (the writer's) process.
    ///
    /// # Panics
    /// In a `fork` child's copy of a vector its parent owns (the parent may be
    /// writing it).
    /// [`try_as_slice`](Self::try_as_slice) returns the error instead; so do
    /// [`get`](Self::get), [`iter`](Self::iter), [`as_bytes`](Self::as_bytes),
    /// [`pop`](Self::pop) and [`clear`](Self::clear), which go through it.
    pub fn as_slice(&self) -> &[T] {
        match self.try_as_slice() {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        }
    }

    /// The elements, or [`AccessError::Forked`] in a `fork` child's copy of a
    /// vector its parent owns (the fallible form of [`as_slice`](Self::as_slice)).
    pub fn try_as_slice(&self) -> Result<&[T], AccessError> {
        self.check_owner()?;
        // SAFETY:
        // - `buf` is our buffer, checked in-bounds and aligned for `cap >= len` elements,
        //   or dangling (non-null, aligned) with `len == 0`;
        // - the first `len` elements were initialised by push/extend;
        // - `&self` prevents this handle from writing while the slice lives; other
        //   processes only read (single-writer contract; a hostile peer can only
        //   change bytes, and every bit pattern is a valid T: ShmSafe);
        // - `check_owner`: this is the owner's handle, not a fork child's copy.
        Ok(unsafe { std::slice::from_raw_parts(self.buf.as_ptr(), self.len) })
    }

    /// The elements' bytes, through zerocopy (for `T: zerocopy::IntoBytes +
    /// zerocopy::Immutable`), e.g. to write them to a file in one call.
    pub fn as_bytes(&self) -> &[u8]
    where
        T: zerocopy::IntoBytes + zerocopy::Immutable,
    {
        zerocopy::IntoBytes::as_bytes(self.as_slice())
    }

    /// The element at `index`.
    pub fn get(&self, index: usize) -> Option<&T> {
        self.as_slice().get(index)
    }

    /// Iterates over the elements.
    pub fn iter(&self) -> std::slice::Iter<'_, T> {
        self.as_slice().iter()
    }
}

impl<T: ShmSafe, A: ShmFree> Drop for ShmVec<T, A> {
    fn drop(&mut self) {
        if !self.is_owner() {
            return; // a fork child's copy: the parent owns the vector
        }
        self.hdr().owner.release();
        if !self.buf_off.is_null() {
            // SAFETY: the vector owns its buffer; dropping ends every borrow of it.
            let _ = unsafe { self.alloc.free_owned(self.buf_off) };
        }
        // SAFETY: the vector owns its header block; it is not used after this.
        let _ = unsafe { self.alloc.free_owned(self.header.offset()) };
    }
}

impl<'s, T: ShmSafe, A: ShmFree> IntoIterator for &'s ShmVec<T, A> {
    type Item = &'s T;
    type IntoIter = std::slice::Iter<'s, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}
