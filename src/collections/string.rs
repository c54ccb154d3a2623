//! Strings in shared memory: `String` values of collections (stored as a
//! [`RawStr`], growable by replacement) and [`InlineStr<N>`], a fixed-capacity
//! inline string that is itself plain data (`ShmSafe`), for keys and small fields.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::ptr::NonNull;

use super::value::{bytes_match, load_bytes, release_bytes, store_bytes, MapHasher};
use super::{RawStr, ShmKey, ShmValue};
use crate::alloc::{ShmAllocator, ShmFree};
use crate::error::{CollectionError, Error};
use crate::typed::{fingerprint, ShmSafe};

// SAFETY: `store` allocates one fresh vector block of the bytes (header written by
// this crate); `load` copies through the checked byte path and checks UTF-8;
// `release` is the vector release (clear, then free).
unsafe impl ShmValue for String {
    type Raw = RawStr;
    type Query = str;
    type Out = String;
    const VALUE_FINGERPRINT: u64 =
        fingerprint::str(<RawStr as ShmSafe>::FINGERPRINT, "ShmValue String");

    fn store<A: ShmFree + ?Sized>(value: &str, alloc: &A) -> Result<RawStr, Error> {
        store_bytes(value.as_bytes(), alloc)
    }

    fn load<A: ShmAllocator + ?Sized>(raw: &RawStr, alloc: &A) -> Result<String, Error> {
        String::from_utf8(load_bytes(raw, alloc)?).map_err(|_| CollectionError::NotUtf8.into())
    }

    unsafe fn release<A: ShmFree + ?Sized>(raw: NonNull<RawStr>, alloc: &A) {
        // SAFETY: the caller's duties are the byte release's.
        unsafe { release_bytes(raw, alloc) }
    }
}

impl ShmKey for String {
    fn hash_query(key: &str) -> u64 {
        let mut h = MapHasher::default();
        key.hash(&mut h);
        h.finish()
    }

    fn matches<A: ShmAllocator + ?Sized>(
        raw: &RawStr,
        key: &str,
        alloc: &A,
    ) -> Result<bool, Error> {
        bytes_match(raw, key.as_bytes(), alloc)
    }
}

/// A string of at most `N` bytes stored inline (no block of its own): plain data,
/// so it can be a field of any `#[derive(ShmSafe)]` struct, a map key or value, an
/// element of a `ShmVec`. `N` must be a positive multiple of 8 (a compile error
/// otherwise, when the type is used in shared memory).
///
/// Its bytes may come from another process, so [`as_str`](Self::as_str) checks
/// them (UTF-8, length within `N`) on every call.
///
/// ```
/// use shared_allocator::collections::InlineStr;
/// let s = InlineStr::<16>::new("hello")?;
/// assert_eq!(s.as_str()?, "hello");
/// assert!(InlineStr::<8>::new("far too long").is_err());
/// # Ok::<(), shared_allocator::Error>(())
/// ```
#[repr(C)]
#[derive(Clone, Copy)]
pub struct InlineStr<const N: usize> {
    len: u64,
    bytes: [u8; N],
}

// SAFETY: repr(C) of a u64 and `[u8; N]` with `N` a positive multiple of 8 (the
// const assertion below, evaluated wherever the type is placed in shared memory):
// no padding, every bit pattern valid (the length is clamped and the bytes checked
// on every read), no pointers, no Drop.
unsafe impl<const N: usize> ShmSafe for InlineStr<N> {
    const FINGERPRINT: u64 = {
        assert!(
            N > 0 && N % 8 == 0,
            "InlineStr<N> needs N a positive multiple of 8"
        );
        fingerprint::primitive("InlineStr", 8 + N, 8)
    };
}

impl<const N: usize> InlineStr<N> {
    /// The capacity in bytes.
    pub const CAPACITY: usize = N;

    /// Copies `s` in.
    ///
    /// # Errors
    /// [`CollectionError::TooLong`] if `s` has more than `N` bytes.
    pub fn new(s: &str) -> Result<Self, Error> {
        if s.len() > N {
            return Err(CollectionError::TooLong {
                len: s.len(),
                capacity: N,
            }
            .into());
        }
        let mut bytes = [0u8; N];
        bytes[..s.len()].copy_from_slice(s.as_bytes());
        Ok(InlineStr {
            len: s.len() as u64,
            bytes,
        })
    }

    /// The stored bytes (the length clamped to `N`).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..(self.len.min(N as u64) as usize)]
    }

    /// The string.
    ///
    /// # Errors
    /// [`CollectionError::NotUtf8`] if the bytes (written by another process) are
    /// not UTF-8, [`CollectionError::Corrupted`] if the length exceeds `N`.
    pub fn as_str(&self) -> Result<&str, Error> {
        if self.len > N as u64 {
            return Err(CollectionError::Corrupted {
                what: "inline string length",
                found: self.len,
            }
            .into());
        }
        std::str::from_utf8(self.as_bytes()).map_err(|_| CollectionError::NotUtf8.into())
    }
}

impl<const N: usize> PartialEq for InlineStr<N> {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}
impl<const N: usize> Eq for InlineStr<N> {}

impl<const N: usize> Hash for InlineStr<N> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl<const N: usize> fmt::Debug for InlineStr<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.as_str() {
            Ok(s) => fmt::Debug::fmt(s, f),
            Err(_) => write!(f, "InlineStr({:?})", self.as_bytes()),
        }
    }
}

impl<const N: usize> fmt::Display for InlineStr<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(self.as_bytes()))
    }
}

impl<const N: usize> TryFrom<&str> for InlineStr<N> {
    type Error = Error;
    fn try_from(s: &str) -> Result<Self, Error> {
        InlineStr::new(s)
    }
}

/// The hand-over token of a [`ShmString`] (see [`ShmString::into_token`]).
pub type StringToken = crate::typed::BoxToken<String>;

/// Bytes of a [`ShmString`] block before its bytes: the owner header and the length.
const STRING_HEADER: u64 = 24;

fn string_fp() -> u64 {
    fingerprint::str(fingerprint::START, "ShmString")
}

/// A growable UTF-8 string in shared memory, owned **exclusively** by one handle
/// (like [`ShmBox`](crate::ShmBox)): `&str` views for its owner, growth by
/// reallocation, hand-over to another process by token (exactly once,
/// type-checked), freed on drop. A `fork` child's copy is no owner.
///
/// The block holds an owner header this crate writes, the length, then the bytes.
///
/// ```
/// use shared_allocator::prelude::*;
/// use shared_allocator::collections::ShmString;
/// # let name = format!("doc-shmstring-{}", std::process::id());
/// # let _cleanup = shared_allocator::segment::UnlinkGuard::new(&name);
/// let alloc = FreeListAllocator::create(&name, 1 << 20)?;
/// let mut s = ShmString::new_in(&alloc, "hello")?;
/// s.push_str(", world")?;
/// assert_eq!(s.as_str(), "hello, world");
/// let token = s.into_token();
/// let other = FreeListAllocator::open(&name)?;
/// let s2 = ShmString::from_token(&other, token)?;
/// assert_eq!(&*s2, "hello, world");
/// # Ok::<(), shared_allocator::Error>(())
/// ```
pub struct ShmString<A: ShmFree> {
    alloc: A,
    block: u64,
    cap: u64,
    fork: u64,
}

impl<A: ShmFree> ShmString<A> {
    /// A new string holding `s` (with room to grow).
    ///
    /// # Errors
    /// [`Error::Alloc`] if the allocator refuses.
    pub fn new_in(alloc: A, s: &str) -> Result<Self, Error> {
        crate::typed::raw::require_typed(&alloc)?;
        let cap = (s.len() as u64).max(16);
        let block = Self::alloc_block(&alloc, cap)?;
        let mut me = ShmString {
            alloc,
            block,
            cap,
            fork: crate::process::fork_epoch(),
        };
        me.write_at(0, s.as_bytes())?;
        me.len_word()
            .store(s.len() as u64, std::sync::atomic::Ordering::Release);
        Ok(me)
    }

    fn alloc_block(alloc: &A, cap: u64) -> Result<u64, Error> {
        let bytes = usize::try_from(STRING_HEADER + cap).map_err(|_| CollectionError::TooLong {
            len: usize::MAX,
            capacity: usize::MAX,
        })?;
        let block = alloc.allocate_block(crate::alloc::INTERNAL, bytes, 8)?;
        let init = crate::typed::token::OwnedHeader::init(alloc, block, string_fp())
            .map(|_| ())
            .and_then(|()| {
                crate::typed::raw::write_fresh(
                    alloc,
                    crate::alloc::Offset::new(block.get() + 16),
                    std::iter::once(std::sync::atomic::AtomicU64::new(0)),
                )
                .map(|_| ())
            });
        if let Err(e) = init {
            // SAFETY: allocated just above, never published.
            let _ = unsafe { alloc.free_owned(block) };
            return Err(e.into());
        }
        Ok(block.get())
    }

    fn header(&self) -> &crate::typed::token::OwnedHeader {
        self.assert_owner();
        match crate::typed::raw::header_at(&self.alloc, crate::alloc::Offset::new(self.block)) {
            Ok(h) => h,
            Err(_) => unreachable!("checked when the handle was made"),
        }
    }

    fn len_word(&self) -> &std::sync::atomic::AtomicU64 {
        match crate::typed::raw::header_at(&self.alloc, crate::alloc::Offset::new(self.block + 16))
        {
            Ok(w) => w,
            Err(_) => unreachable!("checked when the handle was made"),
        }
    }

    fn write_at(&mut self, at: u64, bytes: &[u8]) -> Result<(), Error> {
        if !self
            .alloc
            .segment()
            .write_bytes(self.block + STRING_HEADER + at, bytes)
        {
            return Err(self
                .alloc
                .out_of_bounds(crate::alloc::Offset::new(self.block), bytes.len() as u64)
                .into());
        }
        Ok(())
    }

    /// Takes ownership of a string another process gave away with
    /// [`into_token`](Self::into_token).
    ///
    /// # Errors
    /// As [`ShmBox::from_token`](crate::ShmBox::from_token), and
    /// [`CollectionError::NotUtf8`] if the bytes are not UTF-8 (the token stays
    /// redeemable).
    pub fn from_token(alloc: A, token: StringToken) -> Result<Self, Error> {
        crate::typed::raw::require_typed(&alloc)?;
        let block = token.offset();
        let h = crate::typed::token::OwnedHeader::at(&alloc, block)
            .map_err(crate::error::TokenError::from)?;
        h.redeem(&alloc, block, token.nonce(), "ShmString", string_fp())?;
        let undo = |e: Error| {
            h.unredeem(token.nonce());
            e
        };
        let len_word = crate::typed::raw::value_at::<u64, A>(
            &alloc,
            crate::alloc::Offset::new(block.get() + 16),
        )
        .map_err(|e| undo(e.into()))?;
        let len = *len_word;
        // The block's extent: the longest range from the bytes' start inside it.
        let mut bytes = vec![0u8; 0];
        let start = crate::alloc::Offset::new(block.get() + STRING_HEADER);
        alloc.check_range(start, len).map_err(|e| undo(e.into()))?;
        bytes.resize(len as usize, 0);
        crate::typed::raw::copy_bytes_out(&alloc, start, &mut bytes).map_err(|e| undo(e.into()))?;
        if std::str::from_utf8(&bytes).is_err() {
            return Err(undo(CollectionError::NotUtf8.into()));
        }
        // The capacity: as much as lies inside the live block (at least `len`).
        let mut cap = len.max(1);
        while alloc.check_range(start, cap * 2).is_ok() {
            cap *= 2;
        }
        Ok(ShmString {
            alloc,
            block: block.get(),
            cap: cap.max(len),
            fork: crate::process::fork_epoch(),
        })
    }

    /// Gives up ownership, for another process to take once with
    /// [`from_token`](Self::from_token).
    ///
    /// # Panics
    /// In a `fork` child, for a string its parent owns.
    pub fn into_token(self) -> StringToken {
        let me = std::mem::ManuallyDrop::new(self);
        let nonce = me.header().issue(&me.alloc);
        crate::typed::BoxToken::new(crate::alloc::Offset::new(me.block), nonce)
    }

    /// Appends `s`, reallocating (twice the size) when it does not fit.
    ///
    /// # Errors
    /// [`Error::Alloc`] if the allocator refuses (the string is unchanged).
    pub fn push_str(&mut self, s: &str) -> Result<(), Error> {
        self.assert_owner();
        let len = self.len() as u64;
        let want = len + s.len() as u64;
        if want > self.cap {
            let cap = want.max(self.cap * 2);
            let new = Self::alloc_block(&self.alloc, cap)?;
            let mut old = vec![0u8; len as usize];
            crate::typed::raw::copy_bytes_out(
                &self.alloc,
                crate::alloc::Offset::new(self.block + STRING_HEADER),
                &mut old,
            )?;
            let old_block = self.block;
            self.header().release();
            // SAFETY: this handle owns the old block exclusively; no view into it
            // outlives `&mut self`.
            let _ = unsafe { self.alloc.free_owned(crate::alloc::Offset::new(old_block)) };
            self.block = new;
            self.cap = cap;
            self.write_at(0, &old)?;
        }
        self.write_at(len, s.as_bytes())?;
        self.len_word()
            .store(want, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// The length in bytes.
    pub fn len(&self) -> usize {
        self.len_word().load(std::sync::atomic::Ordering::Acquire) as usize
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The string.
    ///
    /// # Panics
    /// In a `fork` child, for a string its parent owns.
    pub fn as_str(&self) -> &str {
        self.assert_owner();
        let len = self.len().min(self.cap as usize);
        let p = self
            .alloc
            .segment()
            .ptr_at(self.block + STRING_HEADER, len as u64, 1);
        let Some(p) = p else { return "" };
        // SAFETY:
        // - `len` bytes at `p` lie in the mapping (`ptr_at`), inside this handle's
        //   block (len <= cap, the block's room), which it owns exclusively: no
        //   other handle writes them while this `&self` borrow lives;
        // - they are UTF-8: written by `push_str`/`new_in` from `&str`, or checked
        //   by `from_token`, and only this owner writes them since.
        let bytes = unsafe { std::slice::from_raw_parts(p.as_ptr(), len) };
        // SAFETY: as above: the bytes are UTF-8.
        unsafe { std::str::from_utf8_unchecked(bytes) }
    }

    /// Whether this process owns the string (false for a `fork` child's copy).
    pub fn is_owner(&self) -> bool {
        self.fork == crate::process::fork_epoch()
    }

    fn assert_owner(&self) {
        assert!(
            self.is_owner(),
            "a ShmString copied into a fork child is not an owner: hand it over with into_token / from_token"
        );
    }
}

impl<A: ShmFree> std::ops::Deref for ShmString<A> {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl<A: ShmFree> fmt::Debug for ShmString<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl<A: ShmFree> Drop for ShmString<A> {
    fn drop(&mut self) {
        if !self.is_owner() {
            return;
        }
        self.header().release();
        // SAFETY: this handle owns its block exclusively (allocated or redeemed
        // once); dropping it ends every view it gave out.
        let _ = unsafe { self.alloc.free_owned(crate::alloc::Offset::new(self.block)) };
    }
}
