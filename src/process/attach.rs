//! This process's attachment table.

use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::*;
use crate::segment::Segment;

/// One handle of this process: where its segment is mapped, the descriptor it
/// locks on, and its slot state. Lets code that only has an address inside a
/// segment (a lock word in a struct) name this process's registration there.
pub(super) struct Attached {
    id: u64,
    base: usize,
    len: usize,
    pub(super) fd: RawFd,
    pub(super) state: Arc<MemberState>,
}

/// This process's handles (a [`ForkLock`]: a fork never strands it locked).
pub(super) static ATTACHED: ForkLock<Vec<Attached>> = ForkLock::new(Vec::new());

/// A cache that a thread of this process owns: segment object (inode), registry
/// slot, owner thread, and the fork epoch it was recorded in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OwnedCache {
    /// The segment object's inode.
    pub ino: u64,
    /// The registry slot whose cache it is.
    pub slot: usize,
    /// The owner thread (see `alloc::cache::thread_id`).
    pub tid: u64,
    /// The fork epoch the record was made in (stale in a child).
    pub fork_epoch: u64,
}

/// The caches this process's threads own (kept here, beside the attachment table,
/// so that the atfork handlers can hold both across a fork).
pub(crate) static LOCAL_CACHES: ForkLock<Vec<OwnedCache>> = ForkLock::new(Vec::new());
/// Bumped on every attach and detach: per-thread caches of a lookup compare it.
pub(super) static ATTACHED_GEN: AtomicU64 = AtomicU64::new(1);
pub(super) static NEXT_ATTACH: AtomicU64 = AtomicU64::new(1);

pub(super) fn attach(seg: &Segment, state: &Arc<MemberState>) -> u64 {
    let id = NEXT_ATTACH.fetch_add(1, Ordering::Relaxed);
    let mut t = ATTACHED.lock();
    t.push(Attached {
        id,
        base: seg.base_addr(),
        len: seg.len() as usize,
        fd: seg.lock_fd().as_raw_fd(),
        state: Arc::clone(state),
    });
    ATTACHED_GEN.fetch_add(1, Ordering::Release);
    id
}

pub(super) fn detach(id: u64) {
    let mut t = ATTACHED.lock();
    t.retain(|a| a.id != id);
    ATTACHED_GEN.fetch_add(1, Ordering::Release);
}

/// A registry view through an attachment (valid while the table lock is held).
pub(super) struct View<'a> {
    words: &'a [AtomicU64],
    fd: BorrowedFd<'a>,
}

impl Reg for View<'_> {
    fn registry_words(&self) -> &[AtomicU64] {
        self.words
    }
    fn lock_fd(&self) -> BorrowedFd<'_> {
        self.fd
    }
}

impl Attached {
    fn view(&self) -> View<'_> {
        // SAFETY:
        // - `base..base + len` is the live mapping of the handle that attached this
        //   entry: the handle detaches (under the table lock, which the caller
        //   holds) before it unmaps, and its layout was validated at open, so the
        //   registry region `HEADER_REGION..+REGISTRY_REGION` lies inside it, 8-aligned;
        // - the words are AtomicU64s, valid for any bit pattern, only accessed
        //   atomically, and the slice is tied to `&self` (the table guard).
        let words = unsafe {
            std::slice::from_raw_parts(
                (self.base + crate::segment::HEADER_REGION as usize) as *const AtomicU64,
                (crate::segment::REGISTRY_REGION / 8) as usize,
            )
        };
        // SAFETY: `fd` is the handle's lock descriptor, open until the handle drops,
        // which detaches first (under the table lock the caller holds).
        let fd = unsafe { BorrowedFd::borrow_raw(self.fd) };
        View { words, fd }
    }
}

/// This process's registry token in the segment whose mapping contains `addr`
/// (re-joining first in a fork child), with that mapping's base and length; `None`
/// if no handle of this process maps `addr`.
pub(crate) fn token_at(addr: usize) -> Option<(u32, usize, usize)> {
    let t = ATTACHED.lock();
    let a = t
        .iter()
        .find(|a| (a.base..a.base + a.len).contains(&addr))?;
    let v = a.view();
    let slot = a.state.slot(&v).ok()?;
    Some((token(&v, slot), a.base, a.len))
}

/// Whether the registration named by `token`, in the segment whose mapping
/// contains `addr`, is alive. `true` when no handle of this process maps `addr`
/// (never call a holder dead without evidence).
pub(crate) fn token_alive_at(addr: usize, tok: u32) -> bool {
    let t = ATTACHED.lock();
    let Some(a) = t.iter().find(|a| (a.base..a.base + a.len).contains(&addr)) else {
        return true;
    };
    let v = a.view();
    token_alive(&v, a.state.own_slot(), tok)
}

/// The attachment table's generation and this process's fork epoch: a cached
/// [`token_at`] answer stays right while both are unchanged.
pub(crate) fn attachment_epoch() -> (u64, u64) {
    (
        ATTACHED_GEN.load(Ordering::Acquire),
        FORK_EPOCH.load(Ordering::Relaxed),
    )
}
