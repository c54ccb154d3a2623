//! The segment header at offset 0 and the process-local, validated copy of it.
//!
//! The header is written once by the creator and published with `state = READY`
//! (Release). Openers read it with Acquire, validate every field, and keep a
//! private [`Layout`] copy: after `open`, nothing in this process re-reads the
//! layout from shared memory, so a peer that scribbles on the header later cannot
//! move the regions this process uses.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::error::SegmentError;

/// `b"SHMALLOC"` as a little-endian u64.
pub const MAGIC: u64 = u64::from_le_bytes(*b"SHMALLOC");
/// Layout version of the segment format; bumped on any incompatible change.
pub const LAYOUT_VERSION: u32 = 4;
/// Bytes reserved at the start of every segment: header and named-roots table.
pub const HEADER_REGION: u64 = 4096;
/// Offset of the named-roots table inside the header region.
pub const ROOTS_OFFSET: u64 = 512;
/// Size of the named-roots table.
pub const ROOTS_LEN: u64 = HEADER_REGION - ROOTS_OFFSET;
/// Bytes reserved right after the header region for the process registry
/// (see `crate::process`).
pub const REGISTRY_REGION: u64 = 9 * 4096;
/// Where allocator metadata may start: after the header and the registry.
pub const ALLOC_REGION_START: u64 = HEADER_REGION + REGISTRY_REGION;

pub(crate) const STATE_INIT: u32 = 0;
pub(crate) const STATE_READY: u32 = 1;

/// Which allocator a segment holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum AllocatorKind {
    /// [`crate::BumpAllocator`].
    Bump = 1,
    /// [`crate::FreeListAllocator`].
    FreeList = 2,
    /// [`crate::SlabAllocator`].
    Slab = 3,
}

impl AllocatorKind {
    /// Human-readable name, used in errors.
    pub fn name(self) -> &'static str {
        match self {
            AllocatorKind::Bump => "bump",
            AllocatorKind::FreeList => "free-list",
            AllocatorKind::Slab => "slab",
        }
    }

    pub(crate) fn from_raw(raw: u32) -> Option<Self> {
        match raw {
            1 => Some(AllocatorKind::Bump),
            2 => Some(AllocatorKind::FreeList),
            3 => Some(AllocatorKind::Slab),
            _ => None,
        }
    }
}

/// The header as it lies in shared memory. Every field is atomic: other processes
/// may read it at any time, and a hostile one may write it.
#[repr(C, align(64))]
pub(crate) struct RawHeader {
    pub magic: AtomicU64,
    pub version: AtomicU32,
    pub kind: AtomicU32,
    pub state: AtomicU32,
    _reserved: AtomicU32,
    pub total_size: AtomicU64,
    pub creator_pid: AtomicU64,
    pub meta_offset: AtomicU64,
    pub meta_len: AtomicU64,
    pub data_offset: AtomicU64,
    pub data_len: AtomicU64,
    pub params: [AtomicU64; 4],
    /// The segment's secret key for arena archive checksums (see
    /// `crate::archive`), drawn by the creator before publishing. Outside every
    /// block: no API reads or writes it.
    pub archive_key: [AtomicU64; 2],
}

const _: () = assert!(std::mem::size_of::<RawHeader>() as u64 <= ROOTS_OFFSET);

/// Where the regions of a segment are, validated. Process-local and immutable.
/// Not public API (tools and bindings read it through `Segment::layout`).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Allocator kind.
    pub kind: AllocatorKind,
    /// Size of the whole object in bytes.
    pub total_size: u64,
    /// Start of the allocator metadata region.
    pub(crate) meta_offset: u64,
    /// Length of the allocator metadata region.
    pub(crate) meta_len: u64,
    /// Start of the data region (where blocks live).
    pub data_offset: u64,
    /// Length of the data region.
    pub data_len: u64,
    /// Allocator-specific parameters (slot size, slot count, ...).
    pub(crate) params: [u64; 4],
}

impl Layout {
    /// Checks that the regions are in order, aligned, and inside the object.
    pub(crate) fn validate(&self) -> Result<(), SegmentError> {
        let bad = |reason| Err(SegmentError::CorruptHeader { reason });
        if self.meta_offset < ALLOC_REGION_START || self.meta_offset % 64 != 0 {
            return bad("metadata region overlaps the header or registry, or is misaligned");
        }
        let Some(meta_end) = self.meta_offset.checked_add(self.meta_len) else {
            return bad("metadata region overflows");
        };
        if self.data_offset < meta_end || self.data_offset % 64 != 0 {
            return bad("data region overlaps the metadata or is misaligned");
        }
        match self.data_offset.checked_add(self.data_len) {
            Some(end) if end <= self.total_size => Ok(()),
            _ => bad("data region extends past the end of the segment"),
        }
    }

    /// One past the last byte of the data region.
    pub fn data_end(&self) -> u64 {
        self.data_offset + self.data_len
    }

    pub(crate) fn write_to(&self, h: &RawHeader) {
        h.version.store(LAYOUT_VERSION, Ordering::Relaxed);
        h.kind.store(self.kind as u32, Ordering::Relaxed);
        h.total_size.store(self.total_size, Ordering::Relaxed);
        h.creator_pid
            .store(u64::from(std::process::id()), Ordering::Relaxed);
        h.meta_offset.store(self.meta_offset, Ordering::Relaxed);
        h.meta_len.store(self.meta_len, Ordering::Relaxed);
        h.data_offset.store(self.data_offset, Ordering::Relaxed);
        h.data_len.store(self.data_len, Ordering::Relaxed);
        for (slot, v) in h.params.iter().zip(self.params) {
            slot.store(v, Ordering::Relaxed);
        }
        h.magic.store(MAGIC, Ordering::Relaxed);
        // Publish: everything above happens-before an opener's Acquire load of READY.
        h.state.store(STATE_READY, Ordering::Release);
    }

    /// Reads and validates a header that was published READY (caller did the Acquire).
    pub(crate) fn read_from(
        h: &RawHeader,
        expected: AllocatorKind,
        actual_size: u64,
    ) -> Result<Layout, SegmentError> {
        let version = h.version.load(Ordering::Relaxed);
        if version != LAYOUT_VERSION {
            return Err(SegmentError::VersionMismatch {
                expected: LAYOUT_VERSION,
                found: version,
            });
        }
        let raw_kind = h.kind.load(Ordering::Relaxed);
        let kind = AllocatorKind::from_raw(raw_kind);
        if kind != Some(expected) {
            return Err(SegmentError::WrongKind {
                expected: expected.name(),
                found: kind.map_or("unknown", AllocatorKind::name),
            });
        }
        let total_size = h.total_size.load(Ordering::Relaxed);
        if total_size != actual_size {
            return Err(SegmentError::SizeMismatch {
                header: total_size,
                actual: actual_size,
            });
        }
        let layout = Layout {
            kind: expected,
            total_size,
            meta_offset: h.meta_offset.load(Ordering::Relaxed),
            meta_len: h.meta_len.load(Ordering::Relaxed),
            data_offset: h.data_offset.load(Ordering::Relaxed),
            data_len: h.data_len.load(Ordering::Relaxed),
            params: std::array::from_fn(|i| h.params[i].load(Ordering::Relaxed)),
        };
        layout.validate()?;
        Ok(layout)
    }
}
