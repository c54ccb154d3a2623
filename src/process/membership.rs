//! A handle's membership: joining, leaving, re-joining after fork, intents.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use super::*;
use crate::error::SegmentError;
use crate::segment::Segment;

/// A handle's place in a segment's registry. Owned by each allocator value.
#[derive(Debug)]
pub(crate) struct Membership {
    /// The slot state, shared with this process's attachment table (so that an
    /// owner token asked for in a fork child re-joins this very membership).
    shared: Arc<MemberState>,
    /// This handle's entry in the atfork descriptor table.
    fd_entry: Option<usize>,
    /// This handle's entry in the attachment table.
    attach_id: u64,
}

#[derive(Debug)]
pub(super) struct MemberState {
    /// `[fork epoch: 24 | generation: 32 | slot: 8]`.
    packed: AtomicU64,
    /// Serialises re-joining after a fork.
    rejoin: Mutex<()>,
}

// The lock guards no data (only the order of re-joins), and `packed` is one atomic
// word, old or new: a panic anywhere leaves the state consistent, as std's
// `Mutex<()>` (which this replaced) declared.
impl std::panic::RefUnwindSafe for MemberState {}

impl MemberState {
    #[inline]
    pub(super) fn slot(&self, seg: &(impl Reg + ?Sized)) -> Result<usize, SegmentError> {
        let p = self.packed.load(Ordering::Relaxed);
        if p >> 40 == FORK_EPOCH.load(Ordering::Relaxed) & 0xFF_FFFF {
            return Ok((p & 0xFF) as usize);
        }
        self.rejoin_after_fork(seg)
    }

    #[cold]
    pub(super) fn rejoin_after_fork(
        &self,
        seg: &(impl Reg + ?Sized),
    ) -> Result<usize, SegmentError> {
        let _g = self.rejoin.lock();
        let epoch = FORK_EPOCH.load(Ordering::Relaxed) & 0xFF_FFFF;
        let p = self.packed.load(Ordering::Relaxed);
        if p >> 40 == epoch {
            return Ok((p & 0xFF) as usize);
        }
        crate::fail_point!("registry.fork_rejoin");
        // Only a free slot: a dead one's leftovers (its caches) need the
        // allocator's reclaim, which runs through `reclaim_dead`.
        let (slot, gen, _) = take_slot(seg, false)?;
        self.packed.store(pack(epoch, gen, slot), Ordering::Relaxed);
        Ok(slot)
    }

    /// The slot index if it was joined in this very process (no re-join).
    pub(super) fn own_slot(&self) -> Option<usize> {
        let p = self.packed.load(Ordering::Relaxed);
        (p >> 40 == FORK_EPOCH.load(Ordering::Relaxed) & 0xFF_FFFF).then_some((p & 0xFF) as usize)
    }
}

pub(super) fn pack(epoch: u64, gen: u32, slot: usize) -> u64 {
    ((epoch & 0xFF_FFFF) << 40) | (u64::from(gen) << 8) | slot as u64
}
/// The result of joining: the slot, and whether a dead holder's leftovers were found
/// (then the allocator must run its repair before relying on its metadata).
pub(crate) struct Joined {
    pub membership: Membership,
    pub found_dead: bool,
}

impl Membership {
    /// Takes a free (or dead) slot of `seg`'s registry.
    ///
    /// # Errors
    /// [`SegmentError::RegistryFull`] when every slot is held by a live handle, or an
    /// OS error from `fcntl`.
    pub fn join(seg: &Segment) -> Result<Joined, SegmentError> {
        let (slot, gen, found_dead) = take_slot(seg, true)?;
        let shared = Arc::new(MemberState {
            packed: AtomicU64::new(pack(FORK_EPOCH.load(Ordering::Relaxed), gen, slot)),
            rejoin: Mutex::new(()),
        });
        let attach_id = attach(seg, &shared);
        Ok(Joined {
            membership: Membership {
                shared,
                fd_entry: register_fd(seg.lock_fd().as_raw_fd()),
                attach_id,
            },
            found_dead,
        })
    }

    /// This handle's slot, joining a new one first if this is a forked child of the
    /// process that joined.
    ///
    /// # Errors
    /// As [`Membership::join`], when a fork child must join and cannot.
    #[inline]
    pub fn slot(&self, seg: &Segment) -> Result<usize, SegmentError> {
        self.shared.slot(seg)
    }

    /// The slot index if this handle joined it in this very process (no re-join).
    pub(super) fn own_slot(&self) -> Option<usize> {
        self.shared.own_slot()
    }

    /// Leaves the slot (the handle is being dropped): clears it and unlocks it. A
    /// handle in a forked child that never re-joined owns no slot and leaves nothing.
    pub fn leave(&mut self, seg: &Segment) {
        detach(self.attach_id);
        if let Some(e) = self.fd_entry.take() {
            LOCK_FDS[e].store(0, Ordering::Release);
        }
        let Some(i) = self.own_slot() else { return };
        let w = slot_words(seg, i);
        crate::fail_point!("registry.leave.before_clear");
        for k in 0..INTENTS * 2 {
            w[W_INTENT + k].store(0, Ordering::Relaxed);
        }
        let st = w[W_STATUS].load(Ordering::Relaxed);
        w[W_STATUS].store((st & !0xFFFF_FFFF) | STATUS_FREE, Ordering::Release);
        crate::fail_point!("registry.leave.before_unlock");
        unlock(seg.lock_fd(), i);
    }

    /// Records an intent in this handle's slot; the guard clears it when dropped.
    ///
    /// # Errors
    /// As [`Membership::slot`].
    pub fn intend<'s>(
        &self,
        seg: &'s Segment,
        intent: Intent,
    ) -> Result<IntentGuard<'s>, SegmentError> {
        let w = slot_words(seg, self.slot(seg)?);
        // Threads of this process share the slot: each takes a free record.
        for _round in 0..1 << 16 {
            for k in 0..INTENTS {
                let desc = &w[W_INTENT + 2 * k];
                if desc.load(Ordering::Relaxed) != 0 {
                    continue;
                }
                // Claim the record with a placeholder, then write it in full. SeqCst:
                // a repair pass that sees the pages this operation changes must see
                // this record (it loads intents after loading those pages).
                if desc
                    .compare_exchange(0, 1, Ordering::SeqCst, Ordering::Relaxed)
                    .is_ok()
                {
                    w[W_INTENT + 2 * k + 1].store(intent.expected, Ordering::SeqCst);
                    desc.store(intent.encode(), Ordering::SeqCst);
                    return Ok(IntentGuard { desc });
                }
            }
            std::thread::yield_now();
        }
        Err(SegmentError::RegistryFull { slots: INTENTS })
    }
}

/// Clears its intent record when dropped (after the operation's last step).
pub(crate) struct IntentGuard<'s> {
    desc: &'s AtomicU64,
}

impl Drop for IntentGuard<'_> {
    fn drop(&mut self) {
        self.desc.store(0, Ordering::SeqCst);
    }
}

/// Takes a slot: the first whose lock this description wins. A slot still marked
/// live under a lock we won belonged to a dead handle.
pub(super) fn take_slot(
    seg: &(impl Reg + ?Sized),
    allow_dead: bool,
) -> Result<(usize, u32, bool), SegmentError> {
    let start = (std::process::id() as usize).wrapping_mul(0x9E37_79B9) % SLOTS;
    let mut found_dead = false;
    // Free slots first; a dead holder's slot only when no free one is left (its
    // leftovers are then reclaimed here, by us, its one reclaimer).
    let rounds = if allow_dead { 2 * SLOTS } else { SLOTS };
    for k in 0..rounds {
        let i = (start + k) % SLOTS;
        let w = slot_words(seg, i);
        if k < SLOTS && w[W_STATUS].load(Ordering::Acquire) & 0xFFFF_FFFF != STATUS_FREE {
            continue;
        }
        if !try_lock(seg.lock_fd(), i)? {
            continue;
        }
        crate::fail_point!("registry.join.locked");
        let st = w[W_STATUS].load(Ordering::Acquire);
        if st & 0xFFFF_FFFF != STATUS_FREE {
            // Its holder died: its intents stay readable for the repair pass the
            // caller runs (the repair does not need them to be in this slot: it
            // handles dead intents found in any slot it reclaims, and everything
            // else through the global rules). Reclaim it here, as its one reclaimer.
            found_dead = true;
            if !reclaim_intents_into_orphans(seg, i) {
                // The orphan list is full: the slot keeps its records (and stays
                // dead) until a repair has drained the list; take another.
                unlock(seg.lock_fd(), i);
                continue;
            }
        }
        let gen = ((st >> 32) as u32).wrapping_add(1);
        w[W_PID].store(u64::from(std::process::id()), Ordering::Relaxed);
        w[W_START].store(now_ns(), Ordering::Relaxed);
        // A dead holder's views died with it: its pins never hold memory.
        w[W_PINS].store(0, Ordering::Relaxed);
        crate::fail_point!("registry.join.before_live");
        w[W_STATUS].store((u64::from(gen) << 32) | STATUS_LIVE, Ordering::Release);
        return Ok((i, gen, found_dead));
    }
    Err(SegmentError::RegistryFull { slots: SLOTS })
}

impl Membership {
    /// This handle's slot if it holds one in this process (no re-join).
    pub fn current(&self) -> Option<usize> {
        self.own_slot()
    }

    /// This registration's [`token`] in `seg` (re-joining first in a fork child;
    /// 0 if it has no slot): what an allocator's `liveness_token` returns.
    pub fn token(&self, seg: &Segment) -> u32 {
        self.slot(seg).map_or(0, |slot| token(seg, slot))
    }

    /// Whether the registration named by `tok` is alive, as this one sees it
    /// ([`token_alive`]): what an allocator's `token_alive` returns.
    pub fn is_alive(&self, seg: &Segment, tok: u32) -> bool {
        token_alive(seg, self.current(), tok)
    }
}
