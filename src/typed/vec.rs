//! `ShmVec<T>`: a growable vector whose header lives in shared memory, with one
//! writer (the owner) and any number of readers in other processes.

use std::marker::PhantomData;
use std::mem::{align_of, size_of, ManuallyDrop};
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicU64, Ordering};

use crate::alloc::{Offset, ShmAllocator, ShmFree};
use crate::error::{AccessError, Error, TokenError};
use crate::typed::token::{OwnedHeader, VecToken};
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
    len: AtomicU64,
    cap: AtomicU64,
    data: AtomicU64,
    seq: AtomicU64,
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

/// A growable vector in a shared segment. The owner (this handle) is the only writer
/// (the block is exclusively owned); other processes read it with [`ShmVecReader`],
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
pub struct ShmVec<'a, T: ShmSafe, A: ShmFree> {
    alloc: &'a A,
    header: RelPtr<ShmVecHeader<T>>,
    hdr: &'a ShmVecHeader<T>,
    /// The element buffer: its offset (null before the first allocation) and pointer
    /// (dangling, never dereferenced, while `cap == 0`).
    buf_off: Offset,
    buf: NonNull<T>,
    len: usize,
    cap: usize,
}

impl<'a, T: ShmSafe, A: ShmFree> ShmVec<'a, T, A> {
    const ELEM: usize = {
        assert!(
            size_of::<T>() > 0,
            "ShmVec does not support zero-sized types"
        );
        size_of::<T>()
    };

    /// Creates an empty vector (its header is allocated in `alloc`).
    ///
    /// # Errors
    /// [`Error::Alloc`] if the header cannot be allocated.
    pub fn new_in(alloc: &'a A) -> Result<Self, Error> {
        Self::with_capacity_in(alloc, 0)
    }

    /// Creates an empty vector with room for `cap` elements.
    ///
    /// # Errors
    /// [`Error::Alloc`] if the header or buffer cannot be allocated.
    pub fn with_capacity_in(alloc: &'a A, cap: usize) -> Result<Self, Error> {
        let _ = Self::ELEM;
        let fp = vec_fingerprint::<T>();
        let off = alloc.allocate_aligned(size_of::<ShmVecHeader<T>>(), 8)?;
        let header = RelPtr::from_offset(off);
        let init: ShmVecHeader<T> = ShmVecHeader {
            owner: OwnedHeader::new(fp),
            len: AtomicU64::new(0),
            cap: AtomicU64::new(0),
            data: AtomicU64::new(0),
            seq: AtomicU64::new(0),
            _type: PhantomData,
        };
        let hdr = raw::write_fresh(alloc, off, std::iter::once(init))
            .map(|s| &s[0])
            .inspect_err(|_| {
                let _ = alloc.free(off);
            })?;
        let mut v = ShmVec {
            alloc,
            header,
            hdr,
            buf_off: Offset::NULL,
            buf: NonNull::dangling(),
            len: 0,
            cap: 0,
        };
        if cap > 0 {
            v.grow_to(cap)?;
        }
        Ok(v)
    }

    /// The pointer to the header, for readers in other processes.
    pub fn rel_ptr(&self) -> RelPtr<ShmVecHeader<T>> {
        self.header
    }

    /// Gives up ownership without freeing anything, for another process (or a later
    /// one) to take with [`from_token`](ShmVec::from_token), once. Readers keep
    /// reading meanwhile.
    pub fn into_token(self) -> VecToken<T> {
        let me = ManuallyDrop::new(self);
        let nonce = me.hdr.owner.issue(me.alloc);
        VecToken::new(me.header.offset(), nonce)
    }

    /// Takes ownership of a vector given away with [`into_token`](ShmVec::into_token),
    /// after checking its header: element type (fingerprint), `len <= cap`, and that
    /// the buffer is one live block of `cap` elements. A refused token changes nothing.
    ///
    /// # Errors
    /// [`TokenError::AlreadyClaimed`], [`TokenError::TypeMismatch`],
    /// [`TokenError::Access`] (also for an inconsistent header).
    pub fn from_token(alloc: &'a A, token: VecToken<T>) -> Result<Self, TokenError> {
        let _ = Self::ELEM;
        let fp = vec_fingerprint::<T>();
        let header = RelPtr::<ShmVecHeader<T>>::from_offset(token.offset());
        let hdr = raw::value_at::<ShmVecHeader<T>, A>(alloc, token.offset())?;
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
        let buf = if cap == 0 {
            NonNull::dangling()
        } else {
            raw::checked_ptr::<T, A>(alloc, data, cap)?
        };
        hdr.owner.redeem(
            token.offset(),
            token.nonce(),
            std::any::type_name::<Self>(),
            fp,
        )?;
        Ok(ShmVec {
            alloc,
            header,
            hdr,
            buf_off: data,
            buf,
            len,
            cap,
        })
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
        let bytes = new_cap
            .checked_mul(Self::ELEM)
            .ok_or(crate::AllocError::TooLarge {
                requested: u64::MAX,
                max: self.alloc.segment().layout().data_len,
            })?;
        // Extend in place when the allocator can: no copy, and readers see only
        // `cap` grow (the data offset stays).
        if !self.buf_off.is_null() && self.alloc.grow_in_place(self.buf_off, bytes) {
            if let Ok(p) = raw::checked_ptr::<T, A>(self.alloc, self.buf_off, new_cap) {
                self.buf = p;
                self.hdr.cap.store(new_cap as u64, Ordering::Release);
                self.cap = new_cap;
                return Ok(());
            }
        }
        let off = self.alloc.allocate_aligned(bytes, align_of::<T>())?;
        let ptr = match raw::checked_ptr::<T, A>(self.alloc, off, new_cap) {
            Ok(p) => p,
            Err(e) => {
                let _ = self.alloc.free(off);
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
        self.hdr.seq.fetch_add(1, Ordering::AcqRel);
        // Readers that see the changes below also see `seq` odd (seqlock writer).
        fence(Ordering::Release);
        self.hdr.data.store(off.get(), Ordering::Release);
        self.hdr.cap.store(new_cap as u64, Ordering::Release);
        self.hdr.seq.fetch_add(1, Ordering::AcqRel);
        let old = std::mem::replace(&mut self.buf_off, off);
        self.buf = ptr;
        if !old.is_null() {
            let _ = self.alloc.free(old);
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
        self.hdr.len.store(self.len as u64, Ordering::Release);
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
        self.hdr.len.store(self.len as u64, Ordering::Release);
        Ok(())
    }

    fn shrink_len(&mut self, new_len: usize) {
        // Readers copying the elements being retired must notice: bump the sequence.
        self.hdr.seq.fetch_add(1, Ordering::AcqRel);
        fence(Ordering::Release);
        self.hdr.len.store(new_len as u64, Ordering::Release);
        self.hdr.seq.fetch_add(1, Ordering::AcqRel);
        self.len = new_len;
    }

    /// Removes and returns the last element.
    pub fn pop(&mut self) -> Option<T>
    where
        T: Copy,
    {
        let last = *self.as_slice().last()?;
        self.shrink_len(self.len - 1);
        Some(last)
    }

    /// Removes every element (the buffer is kept).
    pub fn clear(&mut self) {
        if self.len > 0 {
            self.shrink_len(0);
        }
    }

    /// The elements, in this (the writer's) process.
    pub fn as_slice(&self) -> &[T] {
        // SAFETY:
        // - `buf` is our buffer, checked in-bounds and aligned for `cap >= len` elements,
        //   or dangling (non-null, aligned) with `len == 0`;
        // - the first `len` elements were initialised by push/extend;
        // - `&self` prevents this handle from writing while the slice lives; other
        //   processes only read (single-writer contract; a hostile peer can only
        //   change bytes, and every bit pattern is a valid T: ShmSafe).
        unsafe { std::slice::from_raw_parts(self.buf.as_ptr(), self.len) }
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

impl<T: ShmSafe, A: ShmFree> Drop for ShmVec<'_, T, A> {
    fn drop(&mut self) {
        self.hdr.owner.release();
        if !self.buf_off.is_null() {
            let _ = self.alloc.free(self.buf_off);
        }
        let _ = self.alloc.free(self.header.offset());
    }
}

impl<'s, T: ShmSafe, A: ShmFree> IntoIterator for &'s ShmVec<'_, T, A> {
    type Item = &'s T;
    type IntoIter = std::slice::Iter<'s, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// Reads a [`ShmVec`] owned by another process. Every read is validated (bounds,
/// alignment, live block) and consistent: it copies out a prefix the writer had
/// published, with byte-wise atomic loads between two reads of the sequence word
/// (a seqlock), retrying if the writer moved or shrank the buffer meanwhile. This is
/// a checked copy path: a hostile header gives errors, never undefined behaviour or
/// an allocation sized by it.
pub struct ShmVecReader<'a, T: ShmSafe, A: ShmAllocator> {
    alloc: &'a A,
    hdr: &'a ShmVecHeader<T>,
}

/// How often a read retries while the writer keeps moving the buffer.
const READ_RETRIES: u32 = 10_000;

impl<'a, T: ShmSafe + Copy, A: ShmAllocator> ShmVecReader<'a, T, A> {
    /// Opens the vector whose header `ptr` points at.
    ///
    /// # Errors
    /// As [`RelPtr::get_checked`].
    pub fn open(alloc: &'a A, ptr: RelPtr<ShmVecHeader<T>>) -> Result<Self, AccessError> {
        let _ = layout_checked::<T>();
        Ok(ShmVecReader {
            alloc,
            hdr: ptr.get_checked(alloc)?,
        })
    }

    /// The published length now (a number from shared memory: a hint, not a bound).
    pub fn len(&self) -> usize {
        usize::try_from(self.hdr.len.load(Ordering::Acquire)).unwrap_or(usize::MAX)
    }

    /// Whether the published length is 0.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One consistent snapshot of `(data, len)` copied in `[from, len)`; `None` if
    /// the writer changed `seq` meanwhile (the caller retries).
    fn try_read(&self, from: usize, out: &mut Vec<T>) -> Option<Result<usize, AccessError>> {
        let keep = out.len();
        let s1 = self.hdr.seq.load(Ordering::Acquire);
        if s1 % 2 == 1 {
            return None;
        }
        let data = self.hdr.data.load(Ordering::Acquire);
        let len = self.hdr.len.load(Ordering::Acquire);
        let cap = self.hdr.cap.load(Ordering::Acquire);
        let result = if len > cap {
            Err(AccessError::Corrupted {
                what: "vector length exceeds its capacity",
            })
        } else {
            let n = len.saturating_sub(from as u64);
            let start = (from as u64)
                .checked_mul(size_of::<T>() as u64)
                .and_then(|b| b.checked_add(data));
            match (n, start) {
                (0, _) => Ok(0),
                (_, None) => Err(AccessError::Corrupted {
                    what: "vector data offset out of range",
                }),
                // `copy_out` checks the whole range against one live block before
                // `out` grows: a hostile `len` is an error here, never an allocation.
                (n, Some(start)) => usize::try_from(n)
                    .map_err(|_| AccessError::Corrupted {
                        what: "vector length out of range",
                    })
                    .and_then(|n| {
                        raw::copy_out(self.alloc, Offset::new(start), n, out).map(|()| n)
                    }),
            }
        };
        // Seqlock reader: the copies above happen-before this fence, which orders
        // them before the re-read of `seq`.
        fence(Ordering::Acquire);
        if self.hdr.seq.load(Ordering::Relaxed) != s1 {
            out.truncate(keep);
            return None;
        }
        Some(result)
    }

    /// Appends the published elements from index `from` on to `out`; returns how many.
    /// Use it to follow a growing vector incrementally.
    ///
    /// # Errors
    /// [`AccessError`] if the header points outside live memory or is inconsistent
    /// (a corrupt or freed vector), or the writer kept moving the buffer for too long.
    pub fn read_from(&self, from: usize, out: &mut Vec<T>) -> Result<usize, AccessError> {
        for _ in 0..READ_RETRIES {
            match self.try_read(from, out) {
                Some(r) => return r,
                None => std::hint::spin_loop(),
            }
        }
        Err(AccessError::Corrupted {
            what: "vector kept changing while being read",
        })
    }

    /// Copies every published element. The local vector grows only after the range
    /// was checked against the live block, so a hostile length is an error.
    ///
    /// # Errors
    /// As [`read_from`](Self::read_from).
    pub fn to_vec(&self) -> Result<Vec<T>, AccessError> {
        let mut out = Vec::new();
        self.read_from(0, &mut out)?;
        Ok(out)
    }

    /// A copy of the element at `index`, if published.
    ///
    /// # Errors
    /// As [`read_from`](Self::read_from).
    pub fn get(&self, index: usize) -> Result<Option<T>, AccessError> {
        for _ in 0..READ_RETRIES {
            let s1 = self.hdr.seq.load(Ordering::Acquire);
            if s1 % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let data = self.hdr.data.load(Ordering::Acquire);
            let len = self.hdr.len.load(Ordering::Acquire);
            let v = if (index as u64) >= len {
                Ok(None)
            } else {
                let at = (index as u64)
                    .checked_mul(size_of::<T>() as u64)
                    .and_then(|b| b.checked_add(data))
                    .ok_or(AccessError::Corrupted {
                        what: "vector data offset out of range",
                    });
                at.and_then(|at| {
                    let p = raw::checked_ptr::<T, A>(self.alloc, Offset::new(at), 1)?;
                    // SAFETY: `checked_ptr` proved one aligned T inside one live block
                    // of the mapping `self.alloc` owns (borrowed for this call).
                    Ok(Some(unsafe { raw::atomic_read_relaxed(p) }))
                })
            };
            fence(Ordering::Acquire);
            if self.hdr.seq.load(Ordering::Relaxed) != s1 {
                continue;
            }
            return v;
        }
        Err(AccessError::Corrupted {
            what: "vector kept changing while being read",
        })
    }
}

/// A loom model of the vector's seqlock: the writer's retire step (`seq` odd,
/// Release fence, rewrite, `seq` even) against a reader's copy (`seq` Acquire,
/// relaxed atomic copy, Acquire fence, `seq` again), with the orderings of
/// [`ShmVec::shrink_len`]/[`ShmVec::push`] and [`ShmVecReader::read_from`]. Elements
/// are loom atomics with Relaxed accesses, as the byte-wise atomic copies are.
/// Run: `RUSTFLAGS="--cfg loom" cargo test --release --lib loom_`.
#[cfg(all(test, loom))]
mod loom_tests {
    use loom::sync::atomic::{fence, AtomicU64};
    use loom::sync::Arc;
    use std::sync::atomic::Ordering;

    struct Model {
        seq: AtomicU64,
        len: AtomicU64,
        /// Two elements that the writer always keeps equal in a published state.
        elems: [AtomicU64; 2],
    }

    /// The reader: `Some` only for a consistent snapshot.
    fn read(m: &Model) -> Option<(u64, [u64; 2])> {
        let s1 = m.seq.load(Ordering::Acquire);
        if s1 % 2 == 1 {
            return None;
        }
        let len = m.len.load(Ordering::Acquire);
        let copy = [0, 1].map(|i| m.elems[i].load(Ordering::Relaxed));
        fence(Ordering::Acquire);
        (m.seq.load(Ordering::Relaxed) == s1).then_some((len, copy))
    }

    #[test]
    fn loom_seqlock_reader_never_accepts_a_torn_copy() {
        loom::model(|| {
            let m = Arc::new(Model {
                seq: AtomicU64::new(0),
                len: AtomicU64::new(2),
                elems: [AtomicU64::new(1), AtomicU64::new(1)],
            });
            let writer = {
                let m = m.clone();
                loom::thread::spawn(move || {
                    // Retire both elements and write new ones in their place
                    // (`pop`/`clear` then `push`), inside one odd section.
                    m.seq.fetch_add(1, Ordering::AcqRel);
                    fence(Ordering::Release);
                    m.len.store(0, Ordering::Release);
                    m.elems[0].store(2, Ordering::Relaxed);
                    m.elems[1].store(2, Ordering::Relaxed);
                    m.len.store(2, Ordering::Release);
                    m.seq.fetch_add(1, Ordering::AcqRel);
                })
            };
            if let Some((len, [a, b])) = read(&m) {
                if len == 2 {
                    assert_eq!(a, b, "accepted a copy mixing two generations");
                }
            }
            writer.join().unwrap();
            assert_eq!(read(&m), Some((2, [2, 2])));
        });
    }
}
