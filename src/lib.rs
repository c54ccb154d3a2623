#![doc = include_str!("../README.md")]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]
#![warn(clippy::missing_safety_doc)]
#![warn(clippy::multiple_unsafe_ops_per_block)]

// A clear refusal on targets the design does not cover, instead of errors deep
// inside the OFD-lock, futex, membarrier and /proc code (the rest of the crate is
// compiled only on supported targets, so this is the only error).
#[cfg(not(target_os = "linux"))]
compile_error!(
    "shared_allocator supports Linux only: it is built on Linux's POSIX shared memory, futexes, open-file-description locks, membarrier and /proc."
);
#[cfg(all(target_os = "linux", not(target_pointer_width = "64")))]
compile_error!(
    "shared_allocator supports 64-bit targets only: its offsets, lock-free words and segment layout are 64 bits wide."
);

/// Emits each item only on supported targets (Linux, 64-bit); elsewhere the
/// `compile_error!` above is the crate's only output.
macro_rules! supported {
    ($($item:item)*) => {
        $(
            #[cfg(all(target_os = "linux", target_pointer_width = "64"))]
            $item
        )*
    };
}

/// `fail_point!(name)`: a named crash point (the `fail` crate) under the
/// `failpoints` feature; nothing otherwise.
#[cfg(feature = "failpoints")]
macro_rules! fail_point {
    ($name:expr) => {
        fail::fail_point!($name)
    };
}
#[cfg(not(feature = "failpoints"))]
macro_rules! fail_point {
    ($name:expr) => {};
}
pub(crate) use fail_point;

supported! {
pub mod alloc;
#[cfg(feature = "rkyv")]
pub mod archive;
#[doc = include_str!("../docs/safety.md")]
pub mod safety_model {}
pub mod channel;
pub mod error;
pub mod process;
pub mod segment;
pub mod sync;
pub mod typed;

/// Not public API: what `#[derive(ShmSafe)]` expands to refers to `core` only through
/// this re-export, so a crate that renames something else to `core` (for example
/// `extern crate self as core;`) cannot change what the generated layout proofs check.
#[doc(hidden)]
pub mod __private {
    pub use ::core;
}

// The derive macro; the trait of the same name is re-exported with the others below.
#[cfg(feature = "derive")]
pub use shared_allocator_derive::ShmSafe;

pub use alloc::{
    BumpAllocator, ClassStats, FreeListAllocator, Offset, ShmAllocator, ShmFree, SlabAllocator,
    Stats,
};
#[cfg(feature = "rkyv")]
pub use archive::{
    ArchiveError, ArchiveToken, ArenaArchive, ArenaArchiveReader, ArenaArchiveToken, ShmArchivable,
    ShmArchive,
};
pub use channel::ShmChannel;
pub use error::{AccessError, AllocError, ArenaError, Error, FreeError, SegmentError, TokenError};
pub use segment::{unlink, CreateOptions, OpenOptions, UnlinkGuard};
pub use sync::{OwnerDied, ShmCondvar, ShmEvent, ShmMutex};
pub use typed::{
    Arena, ArenaBox, ArenaPtr, ArenaRef, BoxToken, RelPtr, Roots, ShmBox, ShmPtr, ShmSafe,
    ShmShared, ShmSync, ShmVec, ShmVecHeader, ShmVecReader, TokenSlot, VecToken,
};

/// Everything a typical user needs: `use shared_allocator::prelude::*;`.
pub mod prelude {
    // The derive macro (the macro namespace only; the trait is imported separately).
    #[cfg(feature = "derive")]
    pub use shared_allocator_derive::ShmSafe;

    pub use crate::alloc::{
        BumpAllocator, FreeListAllocator, Offset, ShmAllocator, ShmFree, SlabAllocator,
    };
    #[cfg(feature = "rkyv")]
    pub use crate::archive::{
        ArchiveToken, ArenaArchive, ArenaArchiveReader, ArenaArchiveToken, ShmArchive,
    };
    pub use crate::channel::ShmChannel;
    pub use crate::error::Error;
    pub use crate::sync::{ShmCondvar, ShmEvent, ShmMutex};
    pub use crate::typed::{
        Arena, ArenaBox, ArenaPtr, BoxToken, RelPtr, Roots, ShmBox, ShmSafe, ShmSync, ShmVec,
        ShmVecReader, TokenSlot, VecToken,
    };
}
}
