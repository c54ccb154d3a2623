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
