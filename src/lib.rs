#![doc = include_str!("../README.md")]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]
#![warn(clippy::missing_safety_doc)]
#![warn(clippy::multiple_unsafe_ops_per_block)]

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

pub mod alloc;
#[cfg(feature = "rkyv")]
pub mod archive;
pub mod channel;
pub mod collections;
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
pub use collections::{InlineStr, ShmHashMap};
pub use error::{
    AccessError, AllocError, ArenaError, CollectionError, Error, FreeError, SegmentError,
    TokenError,
};
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
    pub use crate::collections::{InlineStr, ShmHashMap};
    pub use crate::error::Error;
    pub use crate::sync::{ShmCondvar, ShmEvent, ShmMutex};
    pub use crate::typed::{
        Arena, ArenaBox, ArenaPtr, BoxToken, RelPtr, Roots, ShmBox, ShmSafe, ShmSync, ShmVec,
        ShmVecReader, TokenSlot, VecToken,
    };
}
