//! The in-segment forms of values ([`ShmValue`], [`ShmKey`]) and the plain-data
//! form of a vector ([`RawVec`]).

use std::borrow::Borrow;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;
use std::mem::{align_of, size_of};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::alloc::{Offset, ShmAllocator, ShmFree};
use crate::error::{CollectionError, Error};
use crate::typed::token::{OwnedHeader, PINNED};
use crate::typed::{fingerprint, raw, ShmSafe};

/// Bytes of the [`PINNED`] header in front of the elements of a [`RawVec`] block.
pub(crate) const VEC_HEADER: u64 = 16;

/// The elements' offset of the vector block at `off` (read from shared memory,
/// so never trusted not to overflow).
fn elems(off: u64) -> Result<Offset, Error> {
    off.checked_add(VEC_HEADER).map(Offset::new).ok_or_else(|| {
        CollectionError::Corrupted {
            what: "vector offset",
            found: off,
        }
        .into()
    })
}

/// A value that a shared collection can hold: its plain-data in-segment form
/// ([`Raw`](Self::Raw), offsets and lengths, no process pointers), how to build it
/// from a borrowed value ([`store`](Self::store)), how to copy it back out
/// ([`load`](Self::load)) and how to free the blocks it owns
/// ([`release`](Self::release)).
///
/// Implemented for every `ShmSafe + Copy` type (its own raw form, owning nothing),
/// for `String` ([`RawStr`]), and for `Vec<T>` of any `ShmValue` ([`RawVec`]), so
/// values nest by construction: a struct of strings in a vector in a map. A struct
/// of such fields implements it by delegating to its fields (see the
/// `collections_nested` test for a complete one).
///
/// # Safety
/// Collections trust an implementation with their blocks:
/// - `store` returns a raw value whose blocks (if any) were freshly allocated from
///   `alloc` (each starting with a header this crate wrote) and are referenced by
///   nothing else;
/// - `load` reads only through the checked copy paths (never forms a reference to
///   bytes another process may write), so a scribbled raw value gives an error or a
///   wrong copy, never undefined behaviour;
/// - `release` frees exactly the blocks that `store` made for the raw value at
///   `raw`, each at most once **even if it is run again on the same bytes after
///   being interrupted at any instant** (a crash repair reruns it): it clears each
///   reference in shared memory (an atomic swap) before it frees what it named.
pub unsafe trait ShmValue {
    /// The plain-data form inside the segment.
    type Raw: ShmSafe + Copy;
    /// The borrowed form values are stored from (`str` for `String`).
    type Query: ?Sized;
    /// What reads give back (an owned copy).
    type Out;

    /// Identifies this value type in a collection's type check (a map opened with
    /// other key or value types is [`Error::TypeMismatch`]). Two value types with
    /// the same raw form but other meanings (`String` and `Vec<u8>` are both a
    /// [`RawStr`]) must differ here. The default is the raw form's fingerprint;
    /// override it when another implementation shares this raw form.
    const VALUE_FINGERPRINT: u64 = <Self::Raw as ShmSafe>::FINGERPRINT;

    /// Builds the raw form of `value`, allocating what it needs from `alloc`.
    ///
    /// # Errors
    /// [`Error::Alloc`] if the allocator refuses (nothing stays allocated).
    fn store<A: ShmFree + ?Sized>(value: &Self::Query, alloc: &A) -> Result<Self::Raw, Error>;

    /// Copies the value out of its raw form (read through the checked copy paths).
    ///
    /// # Errors
    /// [`Error::Access`] or [`Error::Collection`] if the raw value or what it names
    /// is not what `store` wrote (a scribbler, or a block freed under a racing
    /// reader, which the collections retry).
    fn load<A: ShmAllocator + ?Sized>(raw: &Self::Raw, alloc: &A) -> Result<Self::Out, Error>;

    /// Frees the blocks owned by the raw value at `raw`, clearing each reference
    /// before freeing what it names (so a rerun after a crash frees nothing twice).
    ///
    /// # Safety
    /// `raw` points to a `Self::Raw` inside `alloc`'s mapping, aligned, that the
    /// caller owns exclusively (removed from every collection; readers in other
    /// processes only copy it out with atomics and validate afterwards), written by
    /// [`store`](Self::store) (or cleared by an earlier `release`).
    unsafe fn release<A: ShmFree + ?Sized>(raw: NonNull<Self::Raw>, alloc: &A);
}

/// A [`ShmValue`] that can key a [`ShmHashMap`](crate::collections::ShmHashMap):
/// hashed and compared through its borrowed form ([`ShmValue::Query`]).
pub trait ShmKey: ShmValue {
    /// The hash of a key (stable across processes running the same build).
    fn hash_query(key: &Self::Query) -> u64;

    /// Whether the stored raw key equals `key` (reading through checked copies).
    ///
    /// # Errors
    /// As [`ShmValue::load`].
    fn matches<A: ShmAllocator + ?Sized>(
        raw: &Self::Raw,
        key: &Self::Query,
        alloc: &A,
    ) -> Result<bool, Error>;
}

// SAFETY: a `ShmSafe + Copy` value is its own raw form and owns no block: `store`
// allocates nothing, `load` returns the copy the caller made with atomic loads, and
// `release` frees nothing.
unsafe impl<T: ShmSafe + Copy> ShmValue for T {
    type Raw = T;
    type Query = T;
    type Out = T;
    // A plain value: a `RawStr` stored this way owns nothing (unlike a `String`).
    const VALUE_FINGERPRINT: u64 = fingerprint::str(T::FINGERPRINT, "ShmValue plain");

    #[inline]
    fn store<A: ShmFree + ?Sized>(value: &T, _alloc: &A) -> Result<T, Error> {
        Ok(*value)
    }

    #[inline]
    fn load<A: ShmAllocator + ?Sized>(raw: &T, _alloc: &A) -> Result<T, Error> {
        Ok(*raw)
    }

    #[inline]
    unsafe fn release<A: ShmFree + ?Sized>(_raw: NonNull<T>, _alloc: &A) {}
}

impl<T: ShmSafe + Copy + Eq + Hash> ShmKey for T {
    #[inline]
    fn hash_query(key: &T) -> u64 {
        let mut h = MapHasher::default();
        key.hash(&mut h);
        h.finish()
    }

    #[inline]
    fn matches<A: ShmAllocator + ?Sized>(raw: &T, key: &T, _alloc: &A) -> Result<bool, Error> {
        Ok(raw == key)
    }
}

/// The hasher of the shared map: an Fx-style multiply-rotate over 8-byte words
/// with a final avalanche (murmur3's), deterministic across processes.
#[derive(Default, Clone, Copy)]
pub struct MapHasher(u64);

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl Hasher for MapHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.write_u64(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.write_u64(u64::from_le_bytes(w) ^ ((rest.len() as u64) << 59));
        }
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(SEED);
    }

    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.write_u64(u64::from(i));
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.write_u64(u64::from(i));
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

/// The plain-data form of a vector of `R` (and, as [`RawStr`], of a string): the
/// offset of a block holding a *pinned* header (no token can name it) and `len` elements, or offset 0
/// for an empty one. Put it in a `#[derive(ShmSafe)]` struct to nest vectors.
#[repr(C)]
pub struct RawVec<R> {
    off: u64,
    len: u64,
    _elems: PhantomData<R>,
}

/// The plain-data form of a string: a [`RawVec`] of its UTF-8 bytes.
pub type RawStr = RawVec<u8>;

impl<R> Clone for RawVec<R> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<R> Copy for RawVec<R> {}

impl<R> std::fmt::Debug for RawVec<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawVec")
            .field("off", &self.off)
            .field("len", &self.len)
            .finish()
    }
}

impl<R> RawVec<R> {
    /// Number of elements (bytes for a string).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

// SAFETY: repr(C) of two u64 and a zero-sized PhantomData: 16 bytes, no padding,
// every bit pattern valid (offsets are checked on every use), no pointers, no Drop;
// `R: ShmSafe` keeps Send + Sync + 'static.
unsafe impl<R: ShmSafe> ShmSafe for RawVec<R> {
    const FINGERPRINT: u64 = fingerprint::str(R::FINGERPRINT, "RawVec");
}

/// The fingerprint in the [`PINNED`] header of a vector block of `R`.
fn vec_block_fp<R: ShmSafe>() -> u64 {
    fingerprint::str(R::FINGERPRINT, "RawVecBlock")
}

/// A pointer to one `R` at `offset` of `alloc`'s mapping (bounds and alignment
/// checked), for the atomic accesses of `release`.
pub(crate) fn ptr_to<R, A: ShmAllocator + ?Sized>(alloc: &A, offset: u64) -> Option<NonNull<R>> {
    crate::alloc::data_relative(alloc.segment(), Offset::new(offset), size_of::<R>() as u64)
        .ok()?;
    alloc
        .segment()
        .ptr_at(offset, size_of::<R>() as u64, align_of::<R>())
        .map(NonNull::cast)
}

/// Allocates a vector block for `len` elements of `R` and writes its header.
fn alloc_vec_block<R: ShmSafe, A: ShmFree + ?Sized>(alloc: &A, len: usize) -> Result<u64, Error> {
    raw::require_typed(alloc)?;
    const {
        assert!(align_of::<R>() <= 16, "raw elements need alignment <= 16");
    }
    let bytes = size_of::<R>()
        .checked_mul(len)
        .and_then(|b| b.checked_add(VEC_HEADER as usize))
        .ok_or(crate::error::AllocError::TooLarge {
            requested: u64::MAX,
            max: alloc.segment().layout().data_end(),
        })?;
    let block = alloc.allocate_block(crate::alloc::INTERNAL, bytes, 16)?;
    if let Err(e) = OwnedHeader::init_pinned(alloc, block, vec_block_fp::<R>()) {
        // SAFETY: just allocated by this call, never published.
        let _ = unsafe { alloc.free_owned(block) };
        return Err(e.into());
    }
    Ok(block.get())
}

/// Checks that `off` is the start of a live vector block of `len` `R`s: allocator
/// metadata says block start, the crate-written header is [`PINNED`] with the
/// vector fingerprint of `R`, and the elements lie inside the block.
fn check_vec_block<R: ShmSafe, A: ShmAllocator + ?Sized>(
    alloc: &A,
    off: u64,
    len: u64,
) -> Result<(), Error> {
    let h = OwnedHeader::at(alloc, Offset::new(off))?;
    if h.claim_word(Ordering::Acquire) != PINNED || h.fingerprint() != vec_block_fp::<R>() {
        return Err(CollectionError::Corrupted {
            what: "vector block header",
            found: off,
        }
        .into());
    }
    let bytes = (size_of::<R>() as u64)
        .checked_mul(len)
        .ok_or(CollectionError::Corrupted {
            what: "vector length",
            found: len,
        })?;
    if bytes > 0 {
        alloc.check_range(elems(off)?, bytes)?;
    }
    Ok(())
}

/// The raw elements of a vector, copied out through the checked path.
fn load_raw_elems<R: ShmSafe + Copy, A: ShmAllocator + ?Sized>(
    alloc: &A,
    v: &RawVec<R>,
) -> Result<Vec<R>, Error> {
    let mut out = Vec::new();
    if v.off == 0 {
        if v.len != 0 {
            return Err(CollectionError::Corrupted {
                what: "vector length without a block",
                found: v.len,
            }
            .into());
        }
        return Ok(out);
    }
    let count = usize::try_from(v.len).map_err(|_| CollectionError::Corrupted {
        what: "vector length",
        found: v.len,
    })?;
    raw::copy_out::<R, A>(alloc, elems(v.off)?, count, &mut out)?;
    Ok(out)
}

/// Frees the vector block named at `p` after releasing its elements with `elem`
/// (each cleared before what it names is freed), clearing the reference first.
///
/// # Safety
/// As [`ShmValue::release`] for `p`; `elem` is sound to call on each element slot
/// of the block (the element type's `release`).
unsafe fn release_vec<R: ShmSafe, A: ShmFree + ?Sized>(
    p: NonNull<RawVec<R>>,
    alloc: &A,
    elem: impl Fn(NonNull<R>),
) {
    // SAFETY: `p` is an aligned RawVec (8-aligned u64s) inside the mapping (the
    // caller's duty); its first word is only accessed atomically by collections.
    let off_word = unsafe { &*p.as_ptr().cast::<AtomicU64>() };
    // SAFETY: as above, the second word (`len`) at byte 8.
    let len_word = unsafe { &*p.as_ptr().cast::<AtomicU64>().wrapping_add(1) };
    let off = off_word.load(Ordering::Acquire);
    if off == 0 {
        return;
    }
    let len = len_word.load(Ordering::Relaxed);
    if check_vec_block::<R, A>(alloc, off, len).is_err() {
        // Not a block this crate made for this value (scribbled): freeing it could
        // free another owner's block. Leave it (a leak, never a wrong free).
        return;
    }
    if size_of::<R>() > 0 {
        for i in 0..len {
            // In range: `check_vec_block` checked all `len` elements inside the block.
            let at = (off + VEC_HEADER).wrapping_add(i.wrapping_mul(size_of::<R>() as u64));
            if let Some(e) = ptr_to::<R, A>(alloc, at) {
                elem(e);
            }
        }
    }
    // Clear, then free: a rerun after a crash between the two finds 0 (the block
    // leaks, it is never freed twice).
    if off_word
        .compare_exchange(off, 0, Ordering::AcqRel, Ordering::Relaxed)
        .is_ok()
    {
        len_word.store(0, Ordering::Relaxed);
        crate::fail_point!("coll.release.cleared");
        // SAFETY: the caller owns the value exclusively, so this block (checked to
        // be a live vector block start) is owned by it; the reference to it was
        // just cleared, so no later release frees it again.
        let _ = unsafe { alloc.free_owned(Offset::new(off)) };
    }
}

// SAFETY: `store` allocates one fresh vector block (header written by this crate)
// and stores each element's raw form (fresh blocks of its own); `load` copies out
// through `raw::copy_out`; `release` releases each element (each idempotent), then
// clears the offset with a compare-exchange before freeing the block.
unsafe impl<T: ShmValue + Borrow<T::Query>> ShmValue for Vec<T> {
    type Raw = RawVec<T::Raw>;
    type Query = [T];
    type Out = Vec<T::Out>;
    const VALUE_FINGERPRINT: u64 = fingerprint::str(T::VALUE_FINGERPRINT, "ShmValue Vec");

    fn store<A: ShmFree + ?Sized>(value: &[T], alloc: &A) -> Result<Self::Raw, Error> {
        if size_of::<T::Raw>() == 0 && !value.is_empty() {
            // Its block would hold no bytes, which no checked read accepts.
            return Err(CollectionError::ZeroSized.into());
        }
        if value.is_empty() {
            return Ok(RawVec {
                off: 0,
                len: 0,
                _elems: PhantomData,
            });
        }
        let mut raws = Vec::with_capacity(value.len());
        let block = alloc_vec_block::<T::Raw, A>(alloc, value.len())?;
        let stored = (|| {
            for v in value {
                raws.push(T::store(v.borrow(), alloc)?);
            }
            raw::write_fresh(alloc, Offset::new(block + VEC_HEADER), raws.iter().copied())?;
            Ok(())
        })();
        match stored {
            Ok(()) => Ok(RawVec {
                off: block,
                len: value.len() as u64,
                _elems: PhantomData,
            }),
            Err(e) => {
                for r in &mut raws {
                    // SAFETY: `r` is a raw value `T::store` just made, in this
                    // process's memory (a local copy), owned by nobody else.
                    unsafe { T::release(NonNull::from(r), alloc) };
                }
                // SAFETY: allocated above, never published.
                let _ = unsafe { alloc.free_owned(Offset::new(block)) };
                Err(e)
            }
        }
    }

    fn load<A: ShmAllocator + ?Sized>(raw: &Self::Raw, alloc: &A) -> Result<Vec<T::Out>, Error> {
        load_raw_elems(alloc, raw)?
            .iter()
            .map(|r| T::load(r, alloc))
            .collect()
    }

    unsafe fn release<A: ShmFree + ?Sized>(raw: NonNull<Self::Raw>, alloc: &A) {
        let elem = |e| {
            // SAFETY: each element slot of the checked vector block is a `T::Raw`
            // written by `T::store` and owned with the vector, which the caller owns.
            unsafe { T::release(e, alloc) }
        };
        // SAFETY: the caller's duties for `raw`; `elem` is the element release.
        unsafe { release_vec::<T::Raw, A>(raw, alloc, elem) }
    }
}

/// Stores `bytes` as a vector block of `u8` (one chunked atomic copy).
pub(crate) fn store_bytes<A: ShmFree + ?Sized>(bytes: &[u8], alloc: &A) -> Result<RawStr, Error> {
    if bytes.is_empty() {
        return Ok(RawVec {
            off: 0,
            len: 0,
            _elems: PhantomData,
        });
    }
    let block = alloc_vec_block::<u8, A>(alloc, bytes.len())?;
    if !alloc.segment().write_bytes(block + VEC_HEADER, bytes) {
        // SAFETY: allocated above, never published.
        let _ = unsafe { alloc.free_owned(Offset::new(block)) };
        return Err(alloc
            .out_of_bounds(Offset::new(block), bytes.len() as u64)
            .into());
    }
    Ok(RawVec {
        off: block,
        len: bytes.len() as u64,
        _elems: PhantomData,
    })
}

/// Copies the bytes of a byte vector out (checked copy path).
pub(crate) fn load_bytes<A: ShmAllocator + ?Sized>(
    raw: &RawStr,
    alloc: &A,
) -> Result<Vec<u8>, Error> {
    if raw.off == 0 {
        return if raw.len == 0 {
            Ok(Vec::new())
        } else {
            Err(CollectionError::Corrupted {
                what: "string length without a block",
                found: raw.len,
            }
            .into())
        };
    }
    let len = usize::try_from(raw.len).map_err(|_| CollectionError::Corrupted {
        what: "string length",
        found: raw.len,
    })?;
    // The range is checked (inside one live block) before the buffer grows.
    alloc.check_range(elems(raw.off)?, raw.len)?;
    let mut out = vec![0u8; len];
    raw::copy_bytes_out(alloc, elems(raw.off)?, &mut out)?;
    Ok(out)
}

/// Whether the stored bytes equal `key` (length first, then a checked copy).
pub(crate) fn bytes_match<A: ShmAllocator + ?Sized>(
    raw: &RawStr,
    key: &[u8],
    alloc: &A,
) -> Result<bool, Error> {
    if raw.len != key.len() as u64 {
        return Ok(false);
    }
    if key.is_empty() {
        return Ok(raw.off == 0);
    }
    let mut buf = [0u8; 64];
    if key.len() <= buf.len() {
        let b = &mut buf[..key.len()];
        raw::copy_bytes_out(alloc, elems(raw.off)?, b)?;
        return Ok(b == key);
    }
    Ok(load_bytes(raw, alloc)? == key)
}

/// Releases a byte vector (no elements own anything).
///
/// # Safety
/// As [`ShmValue::release`].
pub(crate) unsafe fn release_bytes<A: ShmFree + ?Sized>(raw: NonNull<RawStr>, alloc: &A) {
    // SAFETY: the caller's duties; bytes own nothing.
    unsafe { release_vec::<u8, A>(raw, alloc, |_| {}) }
}

/// Byte vectors key maps too (`Vec<u8>`, looked up by `&[u8]`).
impl ShmKey for Vec<u8> {
    fn hash_query(key: &[u8]) -> u64 {
        let mut h = MapHasher::default();
        h.write(key);
        h.write_u8(0xfe);
        h.finish()
    }

    fn matches<A: ShmAllocator + ?Sized>(
        raw: &RawStr,
        key: &[u8],
        alloc: &A,
    ) -> Result<bool, Error> {
        bytes_match(raw, key, alloc)
    }
}
