//! The `ShmSafe` trait: types that may live in memory another process writes.

use std::sync::atomic::{
    AtomicI16, AtomicI32, AtomicI64, AtomicI8, AtomicU16, AtomicU32, AtomicU64, AtomicU8,
};

/// Types that may be placed in shared memory and read by another process.
///
/// # Safety
/// Implementing this trait promises that the type:
/// - is valid for every bit pattern (no `bool`, `char`, enums, references, `NonNull`);
/// - has no padding bytes (so writing it never leaks uninitialised memory);
/// - holds no pointers or references (they mean nothing in another process);
/// - has a fixed layout (`repr(C)` or `repr(transparent)`, or a primitive);
/// - has no `Drop` glue that matters (it may be freed without running `drop`).
///
/// Use `#[derive(ShmSafe)]`, which checks all of this at compile time.
pub unsafe trait ShmSafe: Sized + Send + Sync + 'static {
    /// A hash of the type's layout: its name, field names and types, size and
    /// alignment. Two processes agree on a type iff they agree on this.
    const FINGERPRINT: u64;
}

/// Layout fingerprint helpers (a const FNV-1a hash), used by the derive.
pub mod fingerprint {
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

primitives!(
    u8, u16, u32, u64, u128, i8, i16, i32, i64, i128, f32, f64, AtomicU8, AtomicU16, AtomicU32,
    AtomicU64, AtomicI8, AtomicI16, AtomicI32, AtomicI64
);

// SAFETY: an array of ShmSafe elements has no padding between elements (size is a
// multiple of align), every bit pattern of each element is valid, fixed layout.
unsafe impl<T: ShmSafe, const N: usize> ShmSafe for [T; N] {
    const FINGERPRINT: u64 = fingerprint::u64(fingerprint::str(T::FINGERPRINT, "[;]"), N as u64);
}
