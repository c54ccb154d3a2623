//! Read-only introspection of an allocator, for tools (`shm-alloc info`, `ps`,
//! `check`) and for people debugging a pipeline: the registry (who is attached,
//! alive or dead, what each holds), the largest free block, the size of a block,
//! and a full consistency walk of the metadata.
//!
//! ```
//! use shared_allocator::prelude::*;
//! use shared_allocator::alloc::Inspect;
//! # let name = format!("doc-inspect-{}", std::process::id());
//! # let _cleanup = shared_allocator::segment::UnlinkGuard::new(&name);
//! let alloc = FreeListAllocator::create(&name, 1 << 20)?;
//! let off = alloc.allocate(100)?;
//! assert_eq!(alloc.block_size(off), Some(112)); // its size class
//! assert!(alloc.largest_free_block() >= 512 << 10);
//! assert!(alloc.check().is_consistent());
//! assert_eq!(alloc.registry().live_others(), 0); // only this handle is attached
//! # Ok::<(), shared_allocator::Error>(())
//! ```

use super::{Offset, ShmAllocator};
use crate::error::SegmentError;
use crate::process::RegistryInfo;

/// What a consistency walk ([`Inspect::check`]) found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Consistency {
    /// Every structural violation found, one line each (empty: consistent).
    pub problems: Vec<String>,
    /// Metadata units (pages, slots) walked.
    pub checked: u64,
    /// Units in a transitional state, not checked: pages an operation in flight
    /// covers (a live handle's intent, or a dead handle's not yet repaired),
    /// interior pages a dead free left behind, blocks in dead handles' caches.
    /// A repair pass (`reclaim`) returns what the dead left: then this is 0 when
    /// no other process is working on the segment.
    pub in_flight: u64,
    /// Blocks found in per-handle caches (each checked: inside the data region, a
    /// block of the right class, taken in the bitmaps, listed once).
    pub cached_blocks: u64,
    /// Where the O(1) counters behind `stats()` disagree with the exact count from
    /// the metadata (`FreeListAllocator::audit`), when nothing is in flight. Not a
    /// structural problem: a process killed between an operation's shared step and
    /// its counter update leaves the counters off by what that operation moved (at
    /// most one batch or one large block per kill); the blocks and pages
    /// themselves are consistent and `audit()` is exact.
    pub counter_drift: Option<String>,
}

impl Consistency {
    /// Whether no problem was found.
    pub fn is_consistent(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Read-only introspection, implemented by every allocator. Import it to call
/// these methods.
pub trait Inspect: ShmAllocator {
    /// The process registry as this handle sees it: every taken slot (pid, start
    /// time, alive or dead, generation, intents and pins) and the parked intents of
    /// dead handles.
    fn registry(&self) -> RegistryInfo;

    /// The largest block one allocation could get now, in bytes (free-list: the
    /// longest run of free pages, or the largest size class with a free block;
    /// slab: the slot size if a slot is free; bump: what is left). O(metadata).
    fn largest_free_block(&self) -> u64;

    /// The size of the live block starting at `offset` as the allocator rounded it
    /// (size class, whole pages, slot size), or `None` if no block starts there.
    /// For bump allocators, which keep no block boundaries: `None`.
    fn block_size(&self, offset: Offset) -> Option<u64>;

    /// A full walk of the allocator metadata and the registry against the
    /// invariants (read-only). Exact when no other process is working on the
    /// segment; an operation in flight is skipped, never reported.
    fn check(&self) -> Consistency;

    /// Removes the segment's name if no live handle other than this one is
    /// attached, decided under the lifecycle lock (no `open` can attach between the
    /// check and the removal). Returns whether it removed the name. For tools
    /// (`shm-alloc rm`, `gc`).
    ///
    /// # Errors
    /// As [`Segment::remove_if_unattached`](crate::segment::Segment::remove_if_unattached).
    fn remove_if_unattached(&self) -> Result<bool, SegmentError>;
}

/// Whether registry slot `slot` of `seg` is taken by a handle that died (not yet
/// reclaimed): its leftovers are its reclaimer's, not inconsistencies.
pub(crate) fn dead_slot(seg: &crate::segment::Segment, slot: usize, me: Option<usize>) -> bool {
    Some(slot) != me && crate::process::dead_slot(seg, slot)
}

/// Checks every registry-side invariant and adds `problems` for a segment.
pub(crate) fn registry_problems(seg: &crate::segment::Segment, out: &mut Consistency) {
    out.problems.extend(crate::process::check_registry(seg));
}
