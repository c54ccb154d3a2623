//! The `ShmSafe` trait: types that may live in memory another process writes.

use std::marker::PhantomData;
use std::num::Wrapping;
use std::sync::atomic::{
    AtomicI16, AtomicI32, AtomicI64, AtomicI8, AtomicIsize, AtomicU16, AtomicU32, AtomicU64,
    AtomicU8, AtomicUsize,
};

/// Types that may be placed in shared memory and read by another process.
///
/// A `ShmSafe` value may be written by one process and read by another (possibly
/// buggy or hostile) one, so its type must make sense as plain bytes. Implementing the
/// trait guarantees that the type:
///
/// 1. **is valid for every bit pattern**: any bytes another process wrote are a valid
///    value. No `bool` (only 0 and 1 are valid), no `char` (no surrogates, nothing
///    above `0x10FFFF`), no enums (only listed discriminants), no references or
///    `NonNull`/`NonZero*` (never null);
/// 2. **has no padding bytes**: writing a value never copies uninitialised memory out
///    of this process, and reading one never reads uninitialised bytes;
/// 3. **holds no pointers or references**: an address is meaningless in another
///    process, which maps the segment elsewhere (and `Box`, `Vec`, `String` point into
///    this process's heap). Links between shared objects are offsets (`RelPtr<T>`);
/// 4. **has a fixed layout**: a primitive, an array, or a `#[repr(C)]` /
///    `#[repr(transparent)]` struct (never `repr(packed)`, whose fields may be
///    unaligned), so every process compiled from the same definition puts every field
///    at the same offset;
/// 5. **needs no `Drop`**: a value in shared memory may be freed, overwritten or simply
///    abandoned by a process that dies, without its destructor running;
/// 6. is `Send + Sync + 'static` (supertraits): other processes are, in effect, other
///    threads that may touch it at any time and for as long as the segment lives.
///    Shared mutation must go through atomics (which are `ShmSafe`) or a lock type that
///    lives in the segment.
///
/// [`FINGERPRINT`](ShmSafe::FINGERPRINT) hashes the layout, so a process can check that
/// the type it expects is the type another process stored.
///
/// Implemented for the integers (including `usize`/`isize`, which are 8 bytes on the
/// 64-bit Linux targets this crate supports; their fingerprint includes the size, so a
/// peer with a different width would not match), `f32`/`f64`, the integer atomics,
/// `[T; N]`, [`PhantomData<T>`], [`Wrapping<T>`] and anything deriving it. Not
/// implemented for `()`: zero-sized values need no shared memory, and the allocators
/// reject zero-sized requests.
///
/// # Deriving
///
/// With the `derive` feature (on by default), `#[derive(ShmSafe)]` checks all of the
/// above at compile time for a struct and computes the fingerprint:
///
/// ```
/// use shared_allocator::ShmSafe;
/// use std::sync::atomic::AtomicU64;
///
/// #[derive(ShmSafe)]
/// #[repr(C)]
/// struct Stats {
///     requests: AtomicU64,
///     last_pid: u32,
///     _pad: [u8; 4], // implicit padding would be a compile error
/// }
///
/// #[derive(ShmSafe)]
/// #[repr(C)]
/// struct Pair<T> {
///     a: T,
///     b: T,
/// }
///
/// assert_ne!(Stats::FINGERPRINT, <Pair<u64>>::FINGERPRINT);
/// ```
///
/// A field that is not `ShmSafe` is a compile error that names it:
///
/// ```compile_fail,E0277
/// # use shared_allocator::ShmSafe;
/// #[derive(ShmSafe)]
/// #[repr(C)]
/// struct Named {
///     name: String, // error: `String` cannot be placed in shared memory
/// }
/// ```
///
/// # Safety
///
/// A manual `unsafe impl` must uphold guarantees 1 to 5 above (6 is checked by the
/// compiler), and `FINGERPRINT` must change whenever the layout does (mix the name,
/// the fields and the size and alignment into it, as the derive does). Prefer the
/// derive, which checks all of this.
///
/// The derive accepts a generic struct only in a shape that has no padding for any
/// parameters (every field one type `X` or `[X; N]`, or `repr(transparent)`), so
/// `cargo check` reports a padded generic struct at its definition. Evaluating
/// `FINGERPRINT` also asserts "no padding" for the instantiation, and every path of
/// this crate that places a `T` in shared memory or resolves one there evaluates it
/// (a backstop for hand-written impls). Generic code outside this crate that places
/// a `T: ShmSafe` in shared memory by other means can do the same
/// (`let _ = const { T::FINGERPRINT };`).
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be placed in shared memory: it does not implement `ShmSafe`",
    label = "`{Self}` is not `ShmSafe`",
    note = "shared memory holds plain data only: integers, floats, integer atomics, arrays of \
            them, and `#[repr(C)]` structs with `#[derive(ShmSafe)]`",
    note = "`bool`, `char` and enums are rejected because another process may write an invalid \
            bit pattern; references, raw pointers, `Box`, `Vec` and `String` because their \
            addresses mean nothing in another process"
)]
pub unsafe trait ShmSafe: Sized + Send + Sync + 'static {
    /// A hash of the type's layout: its name, field names and types, size and
    /// alignment. Two processes agree on a type iff they agree on this.
    ///
    /// For derived generic structs, evaluating it also checks that the instantiation
    /// has no padding (a compile error otherwise).
    const FINGERPRINT: u64;
}

/// Proves, at compile time and for this very instantiation, that `T`'s layout is what
/// [`ShmSafe`] promises (for derived generic structs: no padding with these
/// parameters), and returns `T::FINGERPRINT`.
///
/// The check is a `const` block: it is evaluated when the calling function is
/// compiled for a concrete `T` (`cargo build`; `cargo check` does not instantiate
/// generic functions), and a failure is a compile error naming the struct.
#[inline(always)]
pub(crate) const fn layout_checked<T: ShmSafe>() -> u64 {
    const { T::FINGERPRINT }
}

/// [`ShmSafe`] types whose every byte sits inside an [`UnsafeCell`](std::cell::UnsafeCell)
/// that is sound to share across processes: the integer atomics, arrays of them, and
/// structs built only from them (`#[derive(ShmSafe)]` with `#[shm(sync)]`).
///
/// Only for such types may several handles, in any number of processes, hold a `&T`
/// to the same bytes while others write them: writes go through the atomics' shared
/// references, which Rust allows. A plain `u64` is not `ShmSync`: a `&u64` promises that
/// the value does not change while borrowed, and the optimizer relies on it. Shared
/// views ([`RelPtr::get`](crate::RelPtr::get), [`Roots::root`](crate::Roots::root))
/// therefore require `ShmSync`; every other type is read by copy
/// ([`RelPtr::read`](crate::RelPtr::read)) or through its one owning handle.
///
/// ```
/// use shared_allocator::ShmSafe;
/// use shared_allocator::typed::ShmSync;
/// use std::sync::atomic::{AtomicU32, AtomicU64};
///
/// #[derive(ShmSafe)]
/// #[shm(sync)]
/// #[repr(C)]
/// struct Counters {
///     hits: AtomicU64,
///     misses: [AtomicU32; 2],
/// }
/// fn shared<T: ShmSync>() {}
/// shared::<Counters>();
/// ```
///
/// A plain field makes `#[shm(sync)]` a compile error:
///
/// ```compile_fail,E0277
/// # use shared_allocator::ShmSafe;
/// # use std::sync::atomic::AtomicU64;
/// #[derive(ShmSafe)]
/// #[shm(sync)]
/// #[repr(C)]
/// struct Mixed {
///     hits: AtomicU64,
///     last: u64, // not behind an UnsafeCell
/// }
/// ```
///
/// # Safety
/// Implement it only for a `ShmSafe` type every byte of which is inside an
/// `UnsafeCell` and **only ever accessed atomically**, by the type's own API and by
/// anyone else: the raw API (byte-wise atomic `write`, `RelPtr::get` views of freed
/// and reused blocks) may write any byte of it at any time, and that must stay a
/// race-free change to a valid value. Atomics and arrays or `#[shm(sync)]` structs
/// of them qualify; a lock that hands out `&mut` to plain data under it
/// ([`ShmMutex`](crate::ShmMutex)) or a channel's slots do not (they are
/// [`ShmShared`] only). Prefer `#[shm(sync)]`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be shared mutably across processes: it is not `ShmSync`",
    label = "`{Self}` is not `ShmSync`",
    note = "a `&T` into shared memory that other handles may write needs interior mutability \
            (atomics); read plain data by copy (`read`) or through its owning handle"
)]
pub unsafe trait ShmSync: ShmSafe {}

/// Types that any number of processes may hold as a shared `&T` (named roots give
/// them out), provided nothing but the type's own API ever touches their bytes:
/// every [`ShmSync`] type, and the coordination types ([`ShmMutex`](crate::ShmMutex),
/// [`ShmChannel`](crate::ShmChannel), [`ShmEvent`](crate::ShmEvent),
/// [`ShmCondvar`](crate::ShmCondvar)), whose shared API hands out non-atomic access
/// under a lock or a slot protocol. Since the raw API could break that protocol, no
/// raw write, free or view reaches a root's block, in either segment mode
/// ([`ShmAllocator::check_raw_range`](crate::ShmAllocator::check_raw_range)), and
/// roots are never freed.
///
/// # Safety
/// Implement it only for a `ShmSafe` type whose shared API is sound when threads in
/// several processes call it at once on the same bytes, as long as no other code
/// writes them. Set [`ATOMIC_ONLY`](Self::ATOMIC_ONLY) to `true` only if the type
/// is also [`ShmSync`] (the blanket impl does that).
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be shared across processes: it is neither `ShmSync` nor `ShmShared`",
    label = "`{Self}` is not `ShmShared`",
    note = "a `&T` that every process may hold needs interior mutability (atomics, or a lock \
            type such as `ShmMutex`); read plain data by copy (`read`) or through its owning handle"
)]
pub unsafe trait ShmShared: ShmSafe {
    /// Whether every byte is only ever accessed atomically ([`ShmSync`]): then the
    /// raw API may share the segment.
    const ATOMIC_ONLY: bool;
}

// SAFETY: a ShmSync type's every byte is accessed only atomically, by anyone, which
// is more than ShmShared asks.
unsafe impl<T: ShmSync> ShmShared for T {
    const ATOMIC_ONLY: bool = true;
}

macro_rules! sync_atomics {
    ($($t:ty),*) => {$(
        // SAFETY: an atomic integer is one `UnsafeCell` whose every access is atomic,
        // so shared references in several threads or processes are sound.
        unsafe impl ShmSync for $t {}
    )*};
}
sync_atomics!(
    AtomicU8,
    AtomicU16,
    AtomicU32,
    AtomicU64,
    AtomicUsize,
    AtomicI8,
    AtomicI16,
    AtomicI32,
    AtomicI64,
    AtomicIsize
);

// SAFETY: an array of `ShmSync` elements has no bytes outside its elements (no
// padding between them), so every byte is inside one of their `UnsafeCell`s.
unsafe impl<T: ShmSync, const N: usize> ShmSync for [T; N] {}

// SAFETY: `PhantomData<T>` has no bytes at all, so "every byte is behind an
// `UnsafeCell`" holds vacuously, and it is `ShmSafe` for `T: ShmSafe`.
unsafe impl<T: ShmSafe> ShmSync for PhantomData<T> {}

/// Layout fingerprint helpers (a const FNV-1a hash), used by the derive.
pub(crate) mod fingerprint {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    /// Starting value of a fingerprint.
    pub const START: u64 = OFFSET;

    /// Mixes the bytes of `s` into `h`.
    pub const fn str(mut h: u64, s: &str) -> u64 {
        let b = s.as_bytes();
        let mut i = 0;
        while i < b.len() {
            h ^= b[i] as u64;
            h = h.wrapping_mul(PRIME);
            i += 1;
        }
        h
    }

    /// Mixes the 8 bytes of `v` into `h`.
    pub const fn u64(mut h: u64, v: u64) -> u64 {
        let mut i = 0;
        while i < 8 {
            h ^= (v >> (i * 8)) & 0xff;
            h = h.wrapping_mul(PRIME);
            i += 1;
        }
        h
    }

    /// Mixes a name into `h`: its length, then its bytes, so that consecutive names
    /// cannot run into each other (`"ab", "c"` differs from `"a", "bc"`).
    pub const fn name(h: u64, s: &str) -> u64 {
        str(u64(h, s.len() as u64), s)
    }

    /// Mixes one struct field into `h`: its name, its type's `FINGERPRINT`, its size
    /// and its alignment. The derive calls it once per field, in declaration order.
    pub const fn field(h: u64, name: &str, fingerprint: u64, size: usize, align: usize) -> u64 {
        u64(
            u64(u64(self::name(h, name), fingerprint), size as u64),
            align as u64,
        )
    }

    /// Fingerprint of a primitive from its name, size and alignment.
    pub const fn primitive(name: &str, size: usize, align: usize) -> u64 {
        u64(u64(str(START, name), size as u64), align as u64)
    }
}

macro_rules! primitives {
    ($($t:ty),*) => {$(
        // SAFETY: a primitive integer, float or atomic integer: every bit pattern is
        // valid, no padding, no pointers, fixed layout, no Drop.
        unsafe impl ShmSafe for $t {
            const FINGERPRINT: u64 = fingerprint::primitive(
                stringify!($t), std::mem::size_of::<$t>(), std::mem::align_of::<$t>());
        }
    )*};
}

// `usize`/`isize` are 8 bytes on the (64-bit) targets this crate supports; the size is
// part of the fingerprint, so a peer with another width would not match.
primitives!(
    u8,
    u16,
    u32,
    u64,
    u128,
    usize,
    i8,
    i16,
    i32,
    i64,
    i128,
    isize,
    f32,
    f64,
    AtomicU8,
    AtomicU16,
    AtomicU32,
    AtomicU64,
    AtomicUsize,
    AtomicI8,
    AtomicI16,
    AtomicI32,
    AtomicI64,
    AtomicIsize
);

// SAFETY: an array of ShmSafe elements has no padding between elements (size is a
// multiple of align), every bit pattern of each element is valid, fixed layout.
unsafe impl<T: ShmSafe, const N: usize> ShmSafe for [T; N] {
    const FINGERPRINT: u64 = fingerprint::u64(fingerprint::str(T::FINGERPRINT, "[;]"), N as u64);
}

// SAFETY: `PhantomData<T>` is zero-sized with alignment 1:
// - no bytes, so every bit pattern (the empty one) is valid and there is no padding;
// - holds no pointer and has no Drop;
// - its layout is fixed by the language (a ZST);
// - `Send + Sync + 'static` because `T: ShmSafe` is.
unsafe impl<T: ShmSafe> ShmSafe for PhantomData<T> {
    const FINGERPRINT: u64 = fingerprint::str(T::FINGERPRINT, "PhantomData");
}

// SAFETY: `Wrapping<T>` is `#[repr(transparent)]` over its single field `T`:
// - same size, alignment, bit validity and padding (none) as `T`, which is `ShmSafe`;
// - holds nothing else, so no pointer and no Drop beyond `T`'s (none);
// - `Send + Sync + 'static` because `T` is.
unsafe impl<T: ShmSafe> ShmSafe for Wrapping<T> {
    const FINGERPRINT: u64 = fingerprint::str(T::FINGERPRINT, "Wrapping");
}
