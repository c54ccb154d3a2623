//! Ownership hand-over between processes: the claim word in front of every owned
//! block, and the tokens that move ownership exactly once.
//!
//! Every block that an owning handle ([`ShmBox`](crate::ShmBox),
//! [`ShmVec`](crate::ShmVec), [`ShmArchive`](crate::ShmArchive)) manages starts with
//! a 16-byte `OwnedHeader`: a claim word and the payload type's fingerprint. The
//! claim word is
//!
//! - `OWNED` while exactly one handle, in one process, owns the block;
//! - a *nonce* (top bit set) while a token for it is in flight: `into_token` stores
//!   a fresh nonce drawn from a segment-wide counter, and the token carries it;
//! - `RELEASED` once the owner dropped it (just before the block is freed).
//!
//! `from_token` checks the fingerprint, then compare-and-swaps the token's nonce
//! back to `OWNED`: exactly one `from_token` of a token succeeds, in any number of
//! processes, and a second one (or one after the block was freed or reused) is
//! [`TokenError::AlreadyClaimed`]. Nonces are never reused within a segment (a
//! 63-bit counter), so a stale token cannot claim a later owner's block.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::alloc::{Offset, ShmAllocator};
use crate::error::{AccessError, TokenError};
use crate::segment::ROOTS_OFFSET;
use crate::typed::{fingerprint, raw, ShmSafe, ShmSync};

/// Claim word of a block that one live handle owns.
pub(crate) const OWNED: u64 = 1;
/// Claim word of a block whose owner dropped it.
pub(crate) const RELEASED: u64 = 0;
/// Claim word of a block that no token can ever name: a vector's element buffer, a
/// named root's object, the root directory's overflow block. Its header exists so
/// that no block start of a typed segment is ever bytes that safe code writes.
pub(crate) const PINNED: u64 = crate::segment::roots_table::PINNED;
const NONCE_BIT: u64 = 1 << 63;

/// Offset of the segment-wide nonce counter: the first word of the typed layer's
/// control words at the start of the roots area (see [`crate::typed::roots`]).
pub(crate) const NONCE_COUNTER: u64 = ROOTS_OFFSET;

/// The 16 bytes in front of the payload of every owned block.
#[repr(C)]
pub(crate) struct OwnedHeader {
    claim: AtomicU64,
    fingerprint: AtomicU64,
}

// SAFETY: repr(C) of two AtomicU64: 16 bytes, no padding, every bit pattern valid,
// no pointers, fixed layout, no Drop.
unsafe impl ShmSafe for OwnedHeader {
    const FINGERPRINT: u64 = fingerprint::primitive("OwnedHeader", 16, 8);
}
// SAFETY: both fields are atomics: every byte is inside an UnsafeCell.
unsafe impl ShmSync for OwnedHeader {}

/// Bytes from the block start to the payload of a `T`: the header, rounded up to
/// `T`'s alignment (so the payload is aligned when the block is).
pub(crate) const fn payload_offset(align: usize) -> u64 {
    if align > 16 {
        align as u64
    } else {
        16
    }
}

/// Bytes from a [`ShmBox`](crate::ShmBox) block's start to its payload: the
/// [`OwnedHeader`] and the generation word (24 bytes), rounded up to `T`'s alignment.
pub(crate) const fn box_payload_offset(align: usize) -> u64 {
    let a = if align > 8 { align as u64 } else { 8 };
    24u64.div_ceil(a) * a
}

/// The header of a [`ShmBox`](crate::ShmBox) block: the owner header and the
/// block's generation (0 until a [`ShmPtr`](crate::typed::ShmPtr) is made; a fresh
/// never-repeating value after; 0 again just before the block is freed).
#[repr(C)]
pub(crate) struct BoxHeader {
    pub(crate) owner: OwnedHeader,
    pub(crate) generation: AtomicU64,
}

// SAFETY: repr(C) of a 16-byte all-atomic OwnedHeader and an AtomicU64: 24 bytes,
// no padding, every bit pattern valid, no pointers, fixed layout, no Drop.
unsafe impl ShmSafe for BoxHeader {
    const FINGERPRINT: u64 = fingerprint::primitive("BoxHeader", 24, 8);
}
// SAFETY: every field is atomic: every byte is only ever accessed atomically.
unsafe impl ShmSync for BoxHeader {}

impl BoxHeader {
    pub(crate) fn new(fp: u64) -> BoxHeader {
        BoxHeader {
            owner: OwnedHeader::new(fp),
            generation: AtomicU64::new(0),
        }
    }
}

/// A fresh generation (never 0, never repeats within the segment): drawn from the
/// same counter as hand-over nonces, without the nonce bit.
pub(crate) fn fresh_generation<A: ShmAllocator + ?Sized>(alloc: &A) -> u64 {
    next_nonce(alloc) & !NONCE_BIT
}

impl OwnedHeader {
    /// A header for a block this process creates, owned by its creator.
    pub(crate) fn new(fp: u64) -> OwnedHeader {
        OwnedHeader {
            claim: AtomicU64::new(OWNED),
            fingerprint: AtomicU64::new(fp),
        }
    }

    /// The fingerprint word now.
    pub(crate) fn fingerprint(&self) -> u64 {
        self.fingerprint.load(Ordering::Relaxed)
    }

    /// The claim word now.
    pub(crate) fn claim_word(&self, order: Ordering) -> u64 {
        self.claim.load(order)
    }

    /// Checks the fingerprint only.
    pub(crate) fn check(
        &self,
        block: Offset,
        expected: &'static str,
        fp: u64,
    ) -> Result<(), TokenError> {
        let found = self.fingerprint.load(Ordering::Relaxed);
        if found != fp {
            return Err(TokenError::TypeMismatch {
                offset: block.get(),
                expected,
                expected_fingerprint: fp,
                found,
            });
        }
        Ok(())
    }

    /// Writes a fresh header into a block this process just allocated.
    #[inline]
    #[cfg_attr(not(feature = "rkyv"), allow(dead_code))] // (archive blocks)
    pub(crate) fn init<A: ShmAllocator + ?Sized>(
        alloc: &A,
        block: Offset,
        fp: u64,
    ) -> Result<&OwnedHeader, AccessError> {
        raw::write_fresh(alloc, block, std::iter::once(OwnedHeader::new(fp))).map(|s| &s[0])
    }

    /// The header of the block that starts at `block`: the allocator's metadata
    /// must say that `block` is the start of a live block (so, in a typed segment,
    /// these 16 bytes were written by this crate, never by a payload, a vector
    /// buffer or a root: they all start after a header), then bounds and alignment.
    pub(crate) fn at<A: ShmAllocator + ?Sized>(
        alloc: &A,
        block: Offset,
    ) -> Result<&OwnedHeader, AccessError> {
        alloc.check_block_start(block)?;
        raw::value_at::<OwnedHeader, A>(alloc, block)
    }

    /// Writes the header of a block no token may name ([`PINNED`]), with the
    /// fingerprint `fp` of what it holds.
    pub(crate) fn init_pinned<A: ShmAllocator + ?Sized>(
        alloc: &A,
        block: Offset,
        fp: u64,
    ) -> Result<(), AccessError> {
        let h = OwnedHeader {
            claim: AtomicU64::new(PINNED),
            fingerprint: AtomicU64::new(fp),
        };
        raw::write_fresh(alloc, block, std::iter::once(h)).map(|_| ())
    }

    /// Gives the block away: stores a fresh nonce (Release: everything this owner
    /// wrote happens-before the receiver's claim) and returns it for the token.
    pub(crate) fn issue<A: ShmAllocator + ?Sized>(&self, alloc: &A) -> u64 {
        let nonce = NONCE_BIT | next_nonce(alloc);
        self.claim.store(nonce, Ordering::Release);
        nonce
    }

    /// Takes the block: checks the fingerprint, then swaps the token's nonce for
    /// `OWNED` (Acquire: sees everything the giver wrote). Exactly one caller wins.
    /// Then the allocator's word again that `block` is a
    /// live block start: a block freed and reused between [`at`](Self::at) and the
    /// swap (its old header bytes now inside someone's payload) is refused, and the
    /// swap undone.
    pub(crate) fn redeem<A: ShmAllocator + ?Sized>(
        &self,
        alloc: &A,
        block: Offset,
        nonce: u64,
        expected: &'static str,
        fp: u64,
    ) -> Result<(), TokenError> {
        self.redeem_only(block, nonce, expected, fp)?;
        if let Err(e) = alloc.check_block_start(block) {
            self.unredeem(nonce);
            return Err(e.into());
        }
        Ok(())
    }

    fn redeem_only(
        &self,
        block: Offset,
        nonce: u64,
        expected: &'static str,
        fp: u64,
    ) -> Result<(), TokenError> {
        self.check(block, expected, fp)?;
        if nonce & NONCE_BIT == 0 {
            // OWNED and RELEASED are never token values.
            return Err(TokenError::AlreadyClaimed {
                offset: block.get(),
                found: self.claim.load(Ordering::Relaxed),
            });
        }
        self.claim
            .compare_exchange(nonce, OWNED, Ordering::AcqRel, Ordering::Relaxed)
            .map(|_| ())
            .map_err(|found| TokenError::AlreadyClaimed {
                offset: block.get(),
                found,
            })
    }

    /// Undoes a successful [`redeem`](Self::redeem) when the receiver then refuses
    /// the block (e.g. its archive fails validation): the token stays redeemable.
    #[cfg_attr(not(feature = "rkyv"), allow(dead_code))] // used by the archives only
    pub(crate) fn unredeem(&self, nonce: u64) {
        self.claim.store(nonce, Ordering::Release);
    }

    /// Marks the block released, just before its owner frees it: a token issued
    /// earlier and still around cannot claim it any more.
    #[inline]
    pub(crate) fn release(&self) {
        self.claim.store(RELEASED, Ordering::Release);
    }
}

/// A fresh value of the segment-wide nonce counter (never 0, never repeats within
/// 2^63 hand-overs).
fn next_nonce<A: ShmAllocator + ?Sized>(alloc: &A) -> u64 {
    match alloc.segment().words(NONCE_COUNTER, 1) {
        Some(w) => (w[0].fetch_add(1, Ordering::Relaxed) & !NONCE_BIT) + 1,
        // The header region is always mapped (validated at create/open); a nonce
        // from the clock still never equals OWNED or RELEASED.
        None => std::time::UNIX_EPOCH
            .elapsed()
            .map_or(2, |d| d.as_nanos() as u64 | 2),
    }
}

macro_rules! token_type {
    ($(#[$doc:meta])* $name:ident, $label:literal) => {
        $(#[$doc])*
        ///
        /// 16 bytes: the block offset and the hand-over nonce. Send
        /// [`to_raw`](Self::to_raw) through any channel (or store the token itself in
        /// shared memory: it is [`ShmSafe`]) and rebuild it with
        /// [`from_raw`](Self::from_raw). Redeeming it twice, or after the block was
        /// freed, is [`TokenError::AlreadyClaimed`]; a token of another type is
        /// [`TokenError::TypeMismatch`]. A forged token is an error, never a wild access.
        #[repr(C)]
        pub struct $name<T> {
            offset: u64,
            nonce: u64,
            _type: std::marker::PhantomData<fn() -> T>,
        }

        impl<T> $name<T> {
            pub(crate) fn new(offset: Offset, nonce: u64) -> Self {
                $name {
                    offset: offset.get(),
                    nonce,
                    _type: std::marker::PhantomData,
                }
            }

            /// Rebuilds a token from the two numbers another process sent.
            pub const fn from_raw(raw: [u64; 2]) -> Self {
                $name {
                    offset: raw[0],
                    nonce: raw[1],
                    _type: std::marker::PhantomData,
                }
            }

            /// The two numbers to send to another process: `[offset, nonce]`.
            pub const fn to_raw(self) -> [u64; 2] {
                [self.offset, self.nonce]
            }

            /// The block offset.
            pub const fn offset(self) -> Offset {
                Offset::new(self.offset)
            }

            /// The hand-over nonce.
            pub const fn nonce(self) -> u64 {
                self.nonce
            }
        }

        impl<T> Clone for $name<T> {
            fn clone(&self) -> Self {
                *self
            }
        }
        impl<T> Copy for $name<T> {}
        impl<T> PartialEq for $name<T> {
            fn eq(&self, o: &Self) -> bool {
                (self.offset, self.nonce) == (o.offset, o.nonce)
            }
        }
        impl<T> Eq for $name<T> {}
        impl<T> std::fmt::Debug for $name<T> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(
                    f,
                    "{}<{}>({:#x}, nonce {:#x})",
                    stringify!($name),
                    std::any::type_name::<T>(),
                    self.offset,
                    self.nonce
                )
            }
        }

        // SAFETY: repr(C) of two u64 and a zero-sized PhantomData: no padding, every
        // bit pattern valid, no pointers (an offset and a number), fixed layout, no Drop.
        unsafe impl<T: 'static> ShmSafe for $name<T> {
            const FINGERPRINT: u64 = fingerprint::primitive($label, 16, 8);
        }
    };
}

token_type!(
    /// The hand-over token of a [`ShmBox`](crate::ShmBox): see
    /// [`ShmBox::into_token`](crate::ShmBox::into_token).
    BoxToken,
    "BoxToken"
);
token_type!(
    /// The hand-over token of a [`ShmVec`](crate::ShmVec): see
    /// [`ShmVec::into_token`](crate::ShmVec::into_token).
    VecToken,
    "VecToken"
);
#[cfg(feature = "rkyv")]
token_type!(
    /// The hand-over token of a [`ShmArchive`](crate::ShmArchive): see
    /// [`ShmArchive::into_token`](crate::ShmArchive::into_token).
    ArchiveToken,
    "ArchiveToken"
);

/// Tokens of every owning handle: what a [`TokenSlot`] can hold. (Their numbers
/// are each token's `to_raw` / `from_raw`.)
pub trait HandOverToken: Copy {
    /// The two numbers of the token (the token's `to_raw`).
    #[doc(hidden)]
    fn to_words(self) -> [u64; 2];
    /// The token from its two numbers (the token's `from_raw`).
    #[doc(hidden)]
    fn from_words(words: [u64; 2]) -> Self;
}

macro_rules! hand_over_token {
    ($($name:ident),*) => {$(
        impl<T> HandOverToken for $name<T> {
            fn to_words(self) -> [u64; 2] {
                self.to_raw()
            }
            fn from_words(words: [u64; 2]) -> Self {
                Self::from_raw(words)
            }
        }
    )*};
}
hand_over_token!(BoxToken, VecToken);
#[cfg(feature = "rkyv")]
hand_over_token!(ArchiveToken);

/// A place in shared memory to park a hand-over token, e.g. in a named root, so
/// that another process, or this program after a restart, takes the handle back:
///
/// ```
/// use shared_allocator::prelude::*;
/// use shared_allocator::typed::{TokenSlot, VecToken};
/// # let name = format!("doc-token-slot-{}", std::process::id());
/// # let _cleanup = shared_allocator::segment::UnlinkGuard::new(&name);
/// let alloc = FreeListAllocator::create(&name, 1 << 20)?;
/// let mut log = ShmVec::<u64, _>::new_in(&alloc)?;
/// log.push(1)?;
/// alloc.root::<TokenSlot>("log")?.put(log.into_token());
///
/// // Later (another process, or the same program restarted):
/// let token: VecToken<u64> = alloc.root::<TokenSlot>("log")?.take().unwrap();
/// let mut log = ShmVec::<u64, _>::from_token(&alloc, token)?;
/// log.push(2)?;
/// assert_eq!(log.as_slice(), &[1, 2]);
/// # drop(log);
/// # alloc.unlink()?;
/// # Ok::<(), shared_allocator::Error>(())
/// ```
///
/// The slot is all atomics ([`ShmSync`]). A token taken twice (two processes racing
/// `take`) is still redeemed at most once: the second `from_token` is
/// [`TokenError::AlreadyClaimed`].
#[repr(C)]
pub struct TokenSlot {
    offset: AtomicU64,
    nonce: AtomicU64,
}

// SAFETY: repr(C) of two AtomicU64: no padding, every bit pattern valid, no pointers,
// fixed layout, no Drop.
unsafe impl ShmSafe for TokenSlot {
    const FINGERPRINT: u64 = fingerprint::primitive("TokenSlot", 16, 8);
}
// SAFETY: both fields are atomics: every byte is inside an UnsafeCell.
unsafe impl ShmSync for TokenSlot {}

impl TokenSlot {
    /// Parks `token` (replacing whatever was there).
    pub fn put<K: HandOverToken>(&self, token: K) {
        let [offset, nonce] = token.to_words();
        self.nonce.store(nonce, Ordering::Relaxed);
        self.offset.store(offset, Ordering::Release);
    }

    /// Takes the parked token out, if any.
    pub fn take<K: HandOverToken>(&self) -> Option<K> {
        let offset = self.offset.swap(0, Ordering::AcqRel);
        if offset == 0 {
            return None;
        }
        Some(K::from_words([offset, self.nonce.load(Ordering::Relaxed)]))
    }

    /// Whether a token is parked now.
    pub fn is_empty(&self) -> bool {
        self.offset.load(Ordering::Acquire) == 0
    }
}
