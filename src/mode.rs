//! [`SegmentMode`], at the bottom layer: the segment records it, and the errors
//! of every layer above name it.

/// What a segment's data is used for. Decided by the first use that needs it and
/// never changed, so that the raw offset API and typed references never meet on
/// one block (the raw API cannot see whose a block is, and a block it writes or
/// frees could become typed between a check and the write).
///
/// - [`SegmentMode::Raw`]: the raw offset API allocates, writes and frees
///   (`ShmAllocator::allocate`, `write`, `ShmFree::free`; the seed's API and the
///   Python package). Typed handles that give non-atomic references (`ShmBox`,
///   `ShmVec`, archives, arenas) are refused with
///   [`AccessError::WrongMode`](crate::AccessError::WrongMode).
/// - [`SegmentMode::Typed`]: those typed handles. Raw `allocate`, `write`,
///   `free` and `grow_in_place` are refused with [`WrongMode`](crate::WrongMode) (in
///   [`AllocError`](crate::AllocError), [`AccessError`](crate::AccessError),
///   [`FreeError`](crate::FreeError)): a raw block there could never be freed.
///
/// In both modes: raw `read` (a checked byte-wise atomic copy, never a reference)
/// and the other copy paths, roots and `RelPtr::get`
/// of [`ShmSync`](crate::ShmSync) types (atomics: every access is atomic, so no
/// write is ever a data race) work.
///
/// ```
/// use shared_allocator::prelude::*;
/// use shared_allocator::segment::SegmentMode;
/// # let name = format!("doc-mode-{}", std::process::id());
/// # let _cleanup = shared_allocator::segment::UnlinkGuard::new(&name);
/// let alloc = FreeListAllocator::create(&name, 1 << 20)?;
/// let b = ShmBox::new_in(&alloc, 7u64)?;               // decides Typed
/// assert_eq!(alloc.segment().mode(), SegmentMode::Typed);
/// assert!(alloc.write(b.rel_ptr().offset(), &[0; 8]).is_err()); // refused
/// assert!(alloc.allocate(64).is_err());                 // raw blocks too
/// assert_eq!(*b, 7);
/// # drop(b);
/// # alloc.unlink()?;
/// # Ok::<(), shared_allocator::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u64)]
pub enum SegmentMode {
    /// Not decided yet (nothing that needs a mode was done).
    Unset = 0,
    /// The raw offset API writes and frees.
    Raw = 1,
    /// Typed handles own the blocks; raw writes and frees are refused.
    Typed = 2,
    /// The mode word holds neither (a peer scribbled on it): both are refused.
    Corrupted = 3,
}

impl std::fmt::Display for SegmentMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SegmentMode::Unset => "unset",
            SegmentMode::Raw => "raw",
            SegmentMode::Typed => "typed",
            SegmentMode::Corrupted => "corrupted",
        })
    }
}
