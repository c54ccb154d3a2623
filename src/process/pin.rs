//! Reader pins.

use std::sync::atomic::{AtomicU64, Ordering};

use super::*;
use crate::error::SegmentError;
use crate::segment::Segment;

/// A reader pin: while it lives, the handle's slot counts one more view into the
/// segment's shared-immutable memory (arena data, arena archives), and a reclaimer
/// (a bump `reset`) waits for it or reports `Busy` (see [`pinned_by_others`]).
///
/// The count lives in the holder's registry slot, so a reader that dies pins
/// nothing: its slot reads as dead (the kernel dropped its lock) and is ignored.
/// Protocol (Dekker): a reader increments, fences SeqCst, then loads the
/// reclaimer's state word; a reclaimer publishes its intent in that word, fences
/// SeqCst, then loads the pin counts. One of the two sees the other (a loom model
/// is in `alloc::bump`).
#[derive(Debug)]
pub(crate) struct Pin {
    count: *const AtomicU64,
    /// The fork epoch the pin was taken in: a copy of the guard in a fork child
    /// does not touch the parent's count.
    fork: u64,
}

// SAFETY: `count` points at an atomic word in a mapping the guard's owner borrows
// for the guard's lifetime (`Pin` is only created by `pin`, whose callers keep
// the segment borrowed); atomics may be used from any thread.
unsafe impl Send for Pin {}
// SAFETY: as for Send; `Pin` has no `&self` methods that touch the word.
unsafe impl Sync for Pin {}

impl Pin {
    /// Whether the pin still protects this process (false in a fork child).
    #[inline]
    pub(crate) fn valid(&self) -> bool {
        self.fork == fork_epoch()
    }

    /// The fork epoch the pin was taken in.
    #[inline]
    #[cfg_attr(not(feature = "rkyv"), allow(dead_code))] // (arena archive readers)
    pub(crate) fn fork(&self) -> u64 {
        self.fork
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        if self.valid() {
            // SAFETY: see the Send impl: the word outlives the guard.
            // Release: this view's reads happen-before the reclaimer's reuse (it
            // loads the count with SeqCst, which includes Acquire).
            unsafe { &*self.count }.fetch_sub(1, Ordering::Release);
        }
    }
}

/// Pins a view for this handle (`membership`'s slot). The caller must keep `seg`
/// borrowed while the returned guard lives, and must check the reclaimer's state
/// word (with SeqCst) after this returns.
///
/// # Errors
/// As [`Membership::slot`] (a fork child that cannot re-join).
pub(crate) fn pin(seg: &Segment, membership: &Membership) -> Result<Pin, SegmentError> {
    let fork = fork_epoch();
    let w = &slot_words(seg, membership.slot(seg)?)[W_PINS];
    w.fetch_add(1, Ordering::SeqCst);
    std::sync::atomic::fence(Ordering::SeqCst);
    Ok(Pin {
        count: w as *const AtomicU64,
        fork,
    })
}

/// The live handles other than `me` that hold views now (their pin counts are
/// nonzero and their holders are alive). Fences SeqCst first: call it after
/// publishing the intent to reclaim (see [`Pin`]).
pub(crate) fn pinned_by_others(seg: &Segment, me: Option<usize>) -> u32 {
    std::sync::atomic::fence(Ordering::SeqCst);
    let mut n = 0;
    for slot in 0..SLOTS {
        if Some(slot) == me {
            continue;
        }
        let w = slot_words(seg, slot);
        if w[W_PINS].load(Ordering::SeqCst) == 0 {
            continue;
        }
        let st = w[W_STATUS].load(Ordering::Acquire);
        if st & 0xFFFF_FFFF == STATUS_LIVE && locked_by_other(seg.lock_fd(), slot) {
            n += 1;
        }
    }
    n
}
