#![doc = include_str!("../README.md")]
#![doc = r#"
# Layers

Each layer uses only the layers below it (doc links aside):

```text
 user API    channel (ShmChannel, Sender, Receiver)   coord (ShmEvent, ShmMutex, ShmCondvar)
                  \____________________  _____________________/
                                        \/
 handles     archive (ShmArchive, arena archives)  ->  typed (ShmBox, ShmVec, Root, tokens)
                                        |
 allocators  alloc (FreeListAllocator, SlabAllocator, BumpAllocator, ShmAllocator)
                                        |
 blocks      sync (bitmap claims, futex word, owner identities)
                                        |
 registry    process (which processes hold a segment, liveness)
                                        |
 memory      segment (mapping, header, names, root directory layout)
                                        |
 bottom      error (every error type)   mode (SegmentMode)   failpoint (fail_point!)
```

No arrow runs up: `segment` holds the root directory's layout that a raw `free`
in `alloc` checks (roots are never freed), and `process` (the registry) sits on
`segment`; `sync` uses the registry for owner liveness; the channel sleeps on
`coord`'s `ShmEvent` (one sideways arrow in the top layer).
"#]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]
#![warn(clippy::missing_safety_doc)]
#![warn(clippy::multiple_unsafe_ops_per_block)]

mod failpoint;
pub(crate) use failpoint::fail_point;
mod mode;

pub mod alloc;
#[cfg(feature = "rkyv")]
pub mod archive;
pub mod channel;
pub mod coord;
pub mod error;
pub mod process;
pub mod segment;
pub(crate) mod sync;
pub mod typed;

/// Not public API (no semver promise): the segment's on-memory layout, for the
/// crate's own attack tests and for tools that inspect segments.
#[doc(hidden)]
pub mod __layout {
    /// Words of one process-registry slot.
    pub const SLOT_WORDS: usize = crate::process::SLOT_WORDS;
    /// Bytes of the segment header region.
    pub const HEADER_REGION: u64 = crate::segment::HEADER_REGION;
    /// The segment layout version this build writes and accepts.
    pub const LAYOUT_VERSION: u32 = crate::segment::LAYOUT_VERSION;
    /// The segment's magic number (its first word).
    pub const MAGIC: u64 = crate::segment::MAGIC;
    /// Bytes before an archive's data in its block.
    #[cfg(feature = "rkyv")]
    pub const HEADER_LEN: u64 = crate::archive::HEADER_LEN;

    /// [`Segment::ptr_at`](crate::segment::Segment): a checked pointer into the
    /// mapping (`len` bytes at `offset`, aligned to `align`).
    pub fn ptr_at(
        seg: &crate::segment::Segment,
        offset: u64,
        len: u64,
        align: usize,
    ) -> Option<std::ptr::NonNull<u8>> {
        seg.ptr_at(offset, len, align)
    }
}

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
pub use coord::{OwnerDied, ShmCondvar, ShmEvent, ShmMutex};
pub use error::{
    AccessError, AllocError, ArenaError, ChannelError, Error, FreeError, LockError, SegmentError,
    TokenError,
};
pub use segment::{unlink, CreateOptions, OpenOptions, UnlinkGuard};
pub use typed::{
    Arena, ArenaBox, ArenaPtr, ArenaRef, BoxToken, RelPtr, Root, Roots, ShmBox, ShmPtr, ShmSafe,
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
    pub use crate::coord::{ShmCondvar, ShmEvent, ShmMutex};
    pub use crate::error::Error;
    pub use crate::typed::{
        Arena, ArenaBox, ArenaPtr, BoxToken, RelPtr, Root, Roots, ShmBox, ShmSafe, ShmSync, ShmVec,
        ShmVecReader, TokenSlot, VecToken,
    };
}
