//! Layout requirements as trait bounds, so that a wrong element or payload type
//! is a `cargo check` error at the user's line, naming the user's type:
//!
//! - [`ChannelElement`]: a [`ShmChannel`](crate::ShmChannel) element is whole
//!   8-byte words (size a multiple of 8, alignment at most 8);
//! - [`MutexPayload`]: a [`ShmMutex`](crate::ShmMutex) payload is whole 4-byte
//!   words (size a multiple of 4, alignment at most 8), so that it follows the
//!   8-byte lock header with no padding.
//!
//! Both are implemented for the primitives and arrays that fit, for this crate's
//! 8- and 16-byte handles (offsets, pointers, tokens), and by
//! `#[derive(ShmSafe)]` for every struct whose fields all fit (a `repr(C)` struct
//! whose fields are whole words, aligned to at most 8, is whole words itself; see
//! the derive's comment), unless it has `#[repr(align(N))]`. Fields of
//! `u8`/`u16` fit as arrays of a whole number of words (`[u8; 8]`, `[u16; 2]`).
//!
//! The channel and mutex keep their `const` layout assertions as a second line.

use std::marker::PhantomData;
use std::num::Wrapping;
use std::sync::atomic::{AtomicI32, AtomicI64, AtomicIsize, AtomicU32, AtomicU64, AtomicUsize};

use super::ShmSafe;

/// A [`ShmSafe`] type made of whole 8-byte words: its size is a multiple of 8 and
/// its alignment at most 8, as a [`ShmChannel`](crate::ShmChannel) element must be.
///
/// # Safety
/// `size_of::<Self>() % 8 == 0` and `align_of::<Self>() <= 8`. (The derive proves
/// it from the fields: every field whole 8-byte words, no `repr(align)`.)
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a `ShmChannel` element: it is not whole 8-byte words",
    label = "`{Self}` is not `ChannelElement`",
    note = "a channel element's size must be a multiple of 8 bytes and its alignment at most 8: \
            use `u64`/`i64`/`f64`, 8-byte atomics, offsets, `RelPtr`s, tokens, arrays of them \
            (or `[u32; 2n]`, `[u8; 8n]`), or a `#[derive(ShmSafe)]` struct of such fields"
)]
pub unsafe trait ChannelElement: ShmSafe {}

/// A [`ShmSafe`] type made of whole 4-byte words: its size is a multiple of 4 and
/// its alignment at most 8, as a [`ShmMutex`](crate::ShmMutex) payload must be (it
/// follows the mutex's 8-byte lock header with no padding).
///
/// # Safety
/// `size_of::<Self>() % 4 == 0` and `align_of::<Self>() <= 8`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a `ShmMutex` payload: it is not whole 4-byte words",
    label = "`{Self}` is not `MutexPayload`",
    note = "a mutex payload's size must be a multiple of 4 bytes and its alignment at most 8 \
            (no padding after the 8-byte lock header): use 4- or 8-byte integers, floats or \
            atomics, arrays of them (or `[u8; 4n]`, `[u16; 2n]`), or a `#[derive(ShmSafe)]` \
            struct of such fields"
)]
pub unsafe trait MutexPayload: ShmSafe {}

macro_rules! words {
    ($tr:ident: $($t:ty),*) => {$(
        // SAFETY: the type's size and alignment meet the trait's requirement;
        // asserted at compile time just below.
        unsafe impl $tr for $t {}
    )*};
}

words!(ChannelElement: u64, i64, f64, AtomicU64, AtomicI64);
words!(MutexPayload: u64, i64, f64, AtomicU64, AtomicI64, u32, i32, f32, AtomicU32, AtomicI32);
#[cfg(target_pointer_width = "64")]
words!(ChannelElement: usize, isize, AtomicUsize, AtomicIsize);
#[cfg(target_pointer_width = "64")]
words!(MutexPayload: usize, isize, AtomicUsize, AtomicIsize);

const _: () = {
    use std::mem::{align_of, size_of};
    assert!(size_of::<AtomicU64>() == 8 && align_of::<AtomicU64>() <= 8);
    assert!(size_of::<f64>() == 8 && align_of::<f64>() <= 8);
    assert!(size_of::<AtomicU32>() == 4);
};

// SAFETY: an array of whole-word elements is whole words (size N times the
// element's, a multiple of 8; alignment the element's).
unsafe impl<T: ChannelElement, const N: usize> ChannelElement for [T; N] {}
// SAFETY: as above, for 4-byte words.
unsafe impl<T: MutexPayload, const N: usize> MutexPayload for [T; N] {}
// SAFETY: `Wrapping<T>` is `repr(transparent)` over `T`.
unsafe impl<T: ChannelElement> ChannelElement for Wrapping<T> {}
// SAFETY: as above.
unsafe impl<T: MutexPayload> MutexPayload for Wrapping<T> {}
// SAFETY: zero-sized, alignment 1.
unsafe impl<T: ShmSafe> ChannelElement for PhantomData<T> {}
// SAFETY: as above.
unsafe impl<T: ShmSafe> MutexPayload for PhantomData<T> {}

/// Arrays of small integers whose length makes whole words.
macro_rules! small_arrays {
    ($tr:ident, $t:ty: $($n:literal)*) => {$(
        // SAFETY: `$n` elements of `$t` are a whole number of words (the literal
        // is chosen so), alignment that of `$t` (at most 2).
        unsafe impl $tr for [$t; $n] {}
    )*};
}
small_arrays!(ChannelElement, u8: 8 16 24 32 40 48 56 64 72 80 88 96 104 112 120 128 256 512 1024);
small_arrays!(ChannelElement, i8: 8 16 24 32 40 48 56 64 72 80 88 96 104 112 120 128 256 512 1024);
small_arrays!(ChannelElement, u16: 4 8 12 16 20 24 28 32 36 40 44 48 52 56 60 64 128 256 512);
small_arrays!(ChannelElement, i16: 4 8 12 16 20 24 28 32 36 40 44 48 52 56 60 64 128 256 512);
small_arrays!(ChannelElement, u32: 2 4 6 8 10 12 14 16 18 20 22 24 26 28 30 32 64 128 256);
small_arrays!(ChannelElement, i32: 2 4 6 8 10 12 14 16 18 20 22 24 26 28 30 32 64 128 256);
small_arrays!(ChannelElement, f32: 2 4 6 8 10 12 14 16 18 20 22 24 26 28 30 32 64 128 256);
small_arrays!(MutexPayload, u8: 4 8 12 16 20 24 28 32 36 40 44 48 52 56 60 64 128 256 512 1024);
small_arrays!(MutexPayload, i8: 4 8 12 16 20 24 28 32 36 40 44 48 52 56 60 64 128 256 512 1024);
small_arrays!(MutexPayload, u16: 2 4 6 8 10 12 14 16 18 20 22 24 26 28 30 32 64 128 256 512);
small_arrays!(MutexPayload, i16: 2 4 6 8 10 12 14 16 18 20 22 24 26 28 30 32 64 128 256 512);

/// This crate's whole-word handles: offsets, pointers and tokens.
macro_rules! generic_words {
    ($($t:ident),*) => {$(
        // SAFETY: a `repr(C)` struct of `u64`s (and a zero-sized marker): size a
        // multiple of 8, alignment 8; asserted below for one instantiation (the
        // layout does not depend on `T`).
        unsafe impl<T: 'static> ChannelElement for super::$t<T> {}
        // SAFETY: as above (a multiple of 8 is a multiple of 4).
        unsafe impl<T: 'static> MutexPayload for super::$t<T> {}
        const _: () = assert!(
            std::mem::size_of::<super::$t<u64>>() % 8 == 0
                && std::mem::align_of::<super::$t<u64>>() <= 8
        );
    )*};
}
generic_words!(RelPtr, ShmPtr, BoxToken, VecToken, ShmVecHeader);
#[cfg(feature = "rkyv")]
mod archive_tokens {
    use super::{ChannelElement, MutexPayload};
    use crate::typed::token::ArchiveToken;
    // SAFETY: two `u64` words, as the other tokens (asserted below).
    unsafe impl<T: 'static> ChannelElement for ArchiveToken<T> {}
    // SAFETY: as above.
    unsafe impl<T: 'static> MutexPayload for ArchiveToken<T> {}
    const _: () = assert!(std::mem::size_of::<ArchiveToken<u64>>() == 16);
}

// SAFETY: two `u64` words (asserted below).
unsafe impl ChannelElement for super::TokenSlot {}
// SAFETY: as above.
unsafe impl MutexPayload for super::TokenSlot {}
const _: () = assert!(std::mem::size_of::<super::TokenSlot>() % 8 == 0);
const _: () = assert!(std::mem::align_of::<super::TokenSlot>() <= 8);
