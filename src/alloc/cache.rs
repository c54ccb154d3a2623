//! What the per-handle caches of the free list and the slab share: the owner
//! thread's identity, the marks written into cached blocks, and the table of caches
//! that this process's threads own (so a thread that runs out of memory can empty
//! its own caches in its other handles, which cannot honour a flush request while
//! it waits).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::process::{self, Membership};
use crate::segment::Segment;

/// Blocks taken or returned by one read-modify-write of a block word, at most.
pub(crate) const BATCH: u32 = 8;

/// A per-segment random key for the marks written into cached blocks.
pub(crate) fn cache_key() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    (t ^ (u64::from(std::process::id()) << 32)).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1
}

/// Caches owned by threads of this process, by segment object (inode), slot and
/// owner thread: a thread that runs out of memory empties the caches it owns in
/// its other handles itself (they cannot honour a flush request while it waits).
pub(crate) struct LocalCache {
    ino: u64,
    slot: usize,
    tid: u64,
    fork_epoch: u64,
}
static LOCAL_CACHES: parking_lot::Mutex<Vec<LocalCache>> = parking_lot::Mutex::new(Vec::new());

/// A number unique among this process's live threads (never 0): the address of a
/// thread-local. A thread that starts after another ended may get the same number,
/// which is fine here: the ended thread no longer uses the cache it owned.
#[inline]
pub(crate) fn thread_id() -> u64 {
    thread_local!(static ANCHOR: u8 = const { 0 });
    ANCHOR.with(|a| a as *const u8 as u64)
}

/// Records that thread `tid` owns slot `slot`'s cache of the segment object `ino`.
pub(crate) fn register_local(ino: u64, slot: usize, tid: u64) {
    LOCAL_CACHES.lock().push(LocalCache {
        ino,
        slot,
        tid,
        fork_epoch: process::fork_epoch(),
    });
}

/// Forgets that record (the handle is dropped).
pub(crate) fn unregister_local(ino: u64, slot: usize, tid: u64) {
    LOCAL_CACHES
        .lock()
        .retain(|l| !(l.ino == ino && l.slot == slot && l.tid == tid));
}

/// Whether the calling thread owns slot `slot`'s cache of object `ino` (through
/// any handle of this process, since the last fork).
pub(crate) fn owned_here(ino: u64, slot: usize) -> bool {
    let tid = thread_id();
    LOCAL_CACHES.lock().iter().any(|l| {
        l.ino == ino && l.slot == slot && l.tid == tid && l.fork_epoch == process::fork_epoch()
    })
}

/// Which thread of this process uses a handle's cache: the first one that
/// allocates or frees through the handle. Other threads take the shared path.
#[derive(Debug)]
pub(crate) struct CacheOwner {
    owner: AtomicU64,
    /// The owner's slot as `[fork epoch + 1: 56 | slot: 8]` (0: not known yet): the
    /// fast path's copy of the membership's slot, valid in this fork epoch only.
    slot: AtomicU64,
    /// The address of that slot's cache words (`cache0 + slot * stride`), written
    /// with `slot` by the owner thread, read only by it.
    base: AtomicUsize,
    /// Address of registry slot 0's cache words in this mapping, and bytes per
    /// slot: the allocator checked at open that all [`process::SLOTS`] fit in its
    /// metadata region.
    cache0: usize,
    stride: usize,
}

impl CacheOwner {
    /// An owner record for caches laid out from address `cache0`, `stride` bytes
    /// per registry slot (all [`process::SLOTS`] of them inside the mapping).
    pub fn new(cache0: usize, stride: usize) -> CacheOwner {
        CacheOwner {
            owner: AtomicU64::new(0),
            slot: AtomicU64::new(0),
            base: AtomicUsize::new(0),
            cache0,
            stride,
        }
    }

    /// The handle's registry slot, if the calling thread owns its cache (claiming
    /// the cache if nobody does yet).
    #[inline(always)]
    pub fn slot(&self, member: &Membership, seg: &Segment, ino: u64) -> Option<usize> {
        if self.owner.load(Ordering::Relaxed) == thread_id() {
            let s = self.slot.load(Ordering::Relaxed);
            if s >> 8 == process::fork_epoch() + 1 {
                return Some((s & 0xFF) as usize);
            }
            return self.refresh(member, seg);
        }
        self.claim(member, seg, ino)
    }

    /// The fast paths' question: if the calling thread owns the cache and its slot
    /// is known in this fork epoch, the address of the slot's cache words (the
    /// `stride` bytes from `cache0 + slot * stride`, inside the mapping). `None`
    /// sends the caller to the full path, which claims or refreshes.
    #[inline(always)]
    pub fn base(&self) -> Option<*const AtomicU64> {
        if self.owner.load(Ordering::Relaxed) != thread_id()
            || self.slot.load(Ordering::Relaxed) >> 8 != process::fork_epoch() + 1
        {
            return None;
        }
        Some(self.base.load(Ordering::Relaxed) as *const AtomicU64)
    }

    /// The slot after a fork (the membership re-joins), remembered for the fast path.
    #[cold]
    fn refresh(&self, member: &Membership, seg: &Segment) -> Option<usize> {
        let slot = member.slot(seg).ok()?;
        if slot >= process::SLOTS {
            return None;
        }
        self.base
            .store(self.cache0 + slot * self.stride, Ordering::Relaxed);
        self.slot.store(
            ((process::fork_epoch() + 1) << 8) | slot as u64,
            Ordering::Relaxed,
        );
        Some(slot)
    }

    #[cold]
    fn claim(&self, member: &Membership, seg: &Segment, ino: u64) -> Option<usize> {
        let me = thread_id();
        if self
            .owner
            .compare_exchange(0, me, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return None;
        }
        let slot = self.refresh(member, seg)?;
        register_local(ino, slot, me);
        Some(slot)
    }

    /// Forgets the owner record of `slot` (the handle is being dropped).
    pub fn release(&self, ino: u64, slot: usize) {
        unregister_local(ino, slot, self.owner.load(Ordering::Relaxed));
    }
}
