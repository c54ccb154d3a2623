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

mod failpoint;
pub(crate) use failpoint::fail_point;
mod mode;

supported! {
pub mod alloc;
#[cfg(feature = "rkyv")]
pub mod archive;
#[doc = include_str!("../docs/safety.md")]
pub mod safety_model {}
pub mod channel;
pub mod collections;
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
    /// Slots of the process registry (handles attached at once).
    pub const SLOTS: usize = crate::process::SLOTS;
    /// Intent records of one registry slot.
    pub const INTENTS: usize = crate::process::INTENTS;
    /// Bytes of the segment header region.
    pub const HEADER_REGION: u64 = crate::segment::HEADER_REGION;
    /// The segment layout version this build writes and accepts.
    pub const LAYOUT_VERSION: u32 = crate::segment::LAYOUT_VERSION;
    /// The segment's magic number (its first word).
    pub const MAGIC: u64 = crate::segment::MAGIC;
    /// Root-directory entries in the segment header (the rest overflow).
    pub const FIXED_ROOTS: usize = crate::segment::roots_table::FIXED_ROOTS;
    /// Bytes before an archive's data in its block.
    #[cfg(feature = "rkyv")]
    pub const HEADER_LEN: u64 = crate::archive::HEADER_LEN;

    /// Decides the segment's mode as raw if unset, else `WrongMode` in a typed
    /// segment: what bindings that hand out views of raw bytes (the Python
    /// package's `view()`) check first.
    ///
    /// # Errors
    /// [`AccessError::WrongMode`](crate::AccessError::WrongMode) in a typed segment.
    pub fn require_raw(seg: &crate::segment::Segment) -> Result<(), crate::AccessError> {
        seg.require_raw()
    }

    /// The metadata region of a segment: `(offset, length)`.
    pub fn meta_region(l: &crate::segment::Layout) -> (u64, u64) {
        (l.meta_offset, l.meta_len)
    }

    /// A segment's allocator-specific parameters (slot size, slot count, ...).
    pub fn params(l: &crate::segment::Layout) -> [u64; 4] {
        l.params
    }

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

    /// Layout fingerprint helpers (a const FNV-1a hash), for the derive and for
    /// hand-written `ShmSafe` impls.
    pub mod fingerprint {
        pub use crate::typed::fingerprint::*;
    }
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
pub use coord::{OwnerDied, ShmCondvar, ShmEvent, ShmMutex};
pub use error::{
    AccessError, AllocError, ArenaError, ChannelError, CollectionError, Error, FreeError, WrongMode,
    LockError, SegmentError,
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
    pub use crate::collections::{InlineStr, ShmHashMap};
    pub use crate::coord::{ShmCondvar, ShmEvent, ShmMutex};
    pub use crate::error::Error;
    pub use crate::typed::{
        Arena, ArenaBox, ArenaPtr, BoxToken, ChannelElement, MutexPayload, RelPtr, Root, Roots,
        ShmBox, ShmSafe, ShmSync, ShmVec, ShmVecReader, TokenSlot, VecToken,
    };
}
}
