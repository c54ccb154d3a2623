//! A handle's membership: joining, leaving, re-joining after fork, intents.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use super::*;
use crate::error::SegmentError;
use crate::segment::Segment;

/// A handle's place in a segment's registry. Owned by each allocator value.
#[derive(Debug)]
pub(crate) struct Membership {
    /// The slot state, shared with this process's attachment table (so that an
    /// owner token asked for in a fork child re-joins this very membership).
    shared: Arc<MemberState>,
    /// This handle's entry in the attachment table.
    attach_id: u64,
    /// Whether it left already (its atfork entry is forgotten).
    left: bool,
}

#[derive(Debug)]
pub(super) struct MemberState {
    /// `[fork epoch: 24 | generation: 32 | slot: 8]`.
    packed: AtomicU64,
    /// Serialises re-joining after a fork.
    rejoin: ForkLock<()>,
    /// This handle's entry in the atfork descriptor table.
    entry: usize,
    /// A second open file description of the segment object, holding no lock: its
    /// `F_OFD_GETLK` on this handle's byte shows whether the lock is still held.
    spare: OwnedFd,
    /// Set once this handle found it lost its lock: it refuses from then on.
    lost: AtomicBool,
    /// The intent records of the slot that threads of this process claimed (bit
    /// `k`: record `k`), in this fork epoch. A record in use that no thread here
    /// claimed was written by someone else: it is overwritten at once.
    claimed: AtomicU32,
    /// The segment object's device and inode (what the lock descriptor must name).
    object: (u64, u64),
}

/// How long a thread waits for one of the [`INTENTS`] records when the handle's
/// other threads hold them all.
const INTENT_WAIT: std::time::Duration = std::time::Duration::from_millis(20);

impl MemberState {
    #[inline]
    pub(super) fn slot(&self, seg: &(impl Reg + ?Sized)) -> Result<usize, SegmentError> {
        let p = self.packed.load(Ordering::Relaxed);
        if p >> 40 == FORK_EPOCH.load(Ordering::Relaxed) & 0xFF_FFFF
            && !self.lost.load(Ordering::Relaxed)
        {
            return Ok((p & 0xFF) as usize);
        }
        self.rejoin_after_fork(seg)
    }

    #[cold]
    pub(super) fn rejoin_after_fork(
        &self,
        seg: &(impl Reg + ?Sized),
    ) -> Result<usize, SegmentError> {
        if self.lost.load(Ordering::Relaxed) {
            return Err(self.lost_error());
        }
        let _g = self.rejoin.lock();
        let epoch = FORK_EPOCH.load(Ordering::Relaxed) & 0xFF_FFFF;
        let p = self.packed.load(Ordering::Relaxed);
        if p >> 40 == epoch {
            return Ok((p & 0xFF) as usize);
        }
        if entry_lost(self.entry) {
            self.lost.store(true, Ordering::Relaxed);
            return Err(self.lost_error());
        }
        crate::fail_point!("registry.fork_rejoin");
        // Only a free slot: a dead one's leftovers (its caches) need the
        // allocator's reclaim, which runs through `reclaim_dead`.
        let (slot, gen, _) = take_slot(seg, false)?;
        // The parent's threads' intent claims are not ours: a fresh slot.
        self.claimed.store(0, Ordering::Relaxed);
        self.packed.store(pack(epoch, gen, slot), Ordering::Relaxed);
        Ok(slot)
    }

    fn lost_error(&self) -> SegmentError {
        SegmentError::LockLost {
            reason: if entry_lost(self.entry) {
                "a fork child could not open a lock description of its own (no /proc, \
                 the re-open refused, or its descriptor was closed before the fork)"
            } else {
                "its lock descriptor was closed (close_range, closefrom, dup2 over it)"
            },
        }
    }

    /// The slot index if it was joined in this very process (no re-join).
    pub(super) fn own_slot(&self) -> Option<usize> {
        let p = self.packed.load(Ordering::Relaxed);
        (p >> 40 == FORK_EPOCH.load(Ordering::Relaxed) & 0xFF_FFFF
            && !self.lost.load(Ordering::Relaxed))
        .then_some((p & 0xFF) as usize)
    }

    /// Whether this handle still holds slot `slot`'s lock: its lock descriptor still
    /// names the segment object, some description holds the slot's byte (asked from
    /// the spare, which holds none), and the slot still carries this handle's
    /// generation (a new holder would have bumped it). A closed or reused number
    /// reads as not held. Marks the state lost if not.
    fn still_held(&self, seg: &(impl Reg + ?Sized), slot: usize) -> bool {
        if self.lost.load(Ordering::Relaxed) {
            return false;
        }
        let gen = (self.packed.load(Ordering::Relaxed) >> 8) as u32;
        let st = slot_words(seg, slot)[W_STATUS].load(Ordering::Acquire);
        if object_id(seg.lock_fd()).ok() == Some(self.object)
            && st == (u64::from(gen) << 32) | STATUS_LIVE
            && locked_by_some_description(self.spare.as_fd(), slot)
        {
            return true;
        }
        self.lost.store(true, Ordering::Relaxed);
        false
    }
}

// The re-join lock guards no data (only the order of re-joins), and the other
// fields are atomics or a descriptor: a panic anywhere leaves the state consistent.
impl std::panic::RefUnwindSafe for MemberState {}

pub(super) fn pack(epoch: u64, gen: u32, slot: usize) -> u64 {
    ((epoch & 0xFF_FFFF) << 40) | (u64::from(gen) << 8) | slot as u64
}
/// The result of joining: the slot, and whether a dead holder's leftovers were found
/// (then the allocator must run its repair before relying on its metadata).
pub(crate) struct Joined {
    pub membership: Membership,
    pub found_dead: bool,
}

/// The device and inode of the object behind `fd`.
fn object_id(fd: BorrowedFd<'_>) -> Result<(u64, u64), SegmentError> {
    let st = nix::sys::stat::fstat(fd).map_err(|errno| SegmentError::Os {
        op: "fstat(lock descriptor)",
        errno,
    })?;
    Ok((st.st_dev, st.st_ino))
}

impl Membership {
    /// Takes a free (or dead) slot of `seg`'s registry.
    ///
    /// # Errors
    /// [`SegmentError::RegistryFull`] when every slot is held by a live handle,
    /// [`SegmentError::HandleLimit`] when this process holds
    /// [`MAX_HANDLES`](super::MAX_HANDLES) handles, or an OS error (`fcntl`, or
    /// opening the spare description through `/proc/self/fd`).
    pub fn join(seg: &Segment) -> Result<Joined, SegmentError> {
        let fd = seg.lock_fd().as_raw_fd();
        let (dev, ino) = object_id(seg.lock_fd())?;
        let spare = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(format!("/proc/self/fd/{fd}"))
            .map_err(|e| SegmentError::Os {
                op: "open(/proc/self/fd) for the spare lock description",
                errno: nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0)),
            })?;
        let spare = OwnedFd::from(spare);
        let entry = register_fd(fd, spare.as_raw_fd(), dev, ino)?;
        let (slot, gen, found_dead) = match take_slot(seg, true) {
            Ok(t) => t,
            Err(e) => {
                unregister_fd(entry);
                return Err(e);
            }
        };
        let shared = Arc::new(MemberState {
            packed: AtomicU64::new(pack(FORK_EPOCH.load(Ordering::Relaxed), gen, slot)),
            rejoin: ForkLock::new(()),
            entry,
            spare,
            lost: AtomicBool::new(false),
            claimed: AtomicU32::new(0),
            object: (dev, ino),
        });
        let attach_id = attach(seg, &shared);
        Ok(Joined {
            membership: Membership {
                shared,
                attach_id,
                left: false,
            },
            found_dead,
        })
    }

    /// This handle's slot, joining a new one first if this is a forked child of the
    /// process that joined.
    ///
    /// # Errors
    /// As [`Membership::join`], when a fork child must join and cannot;
    /// [`SegmentError::LockLost`] once the handle found its lock gone.
    #[inline]
    pub fn slot(&self, seg: &Segment) -> Result<usize, SegmentError> {
        self.shared.slot(seg)
    }

    /// [`slot`](Self::slot), after checking (one `fcntl`) that this handle still
    /// holds the slot's lock: for the slow paths, before a step that relies on
    /// owning the slot (a refill, a flush, an intent).
    ///
    /// # Errors
    /// As [`slot`](Self::slot); [`SegmentError::LockLost`] if the lock is gone (from
    /// then on, every call refuses).
    pub fn verified_slot(&self, seg: &Segment) -> Result<usize, SegmentError> {
        let slot = self.slot(seg)?;
        if self.shared.still_held(seg, slot) {
            Ok(slot)
        } else {
            Err(self.shared.lost_error())
        }
    }

    /// The slot index if this handle joined it in this very process (no re-join).
    pub(super) fn own_slot(&self) -> Option<usize> {
        self.shared.own_slot()
    }

    /// False if this handle lost its lock, or if `slot` is this handle's slot but
    /// no longer carries its generation, live (one load, no system call): a
    /// reclaimer freed it (the lock was lost) or another handle took it over. True
    /// for another handle's slot (a sibling's cache this thread owns). The cache
    /// paths ask this before they touch a slot's cache words.
    #[inline]
    pub fn holds(&self, seg: &Segment, slot: usize) -> bool {
        if self.shared.lost.load(Ordering::Relaxed) {
            return false;
        }
        let p = self.shared.packed.load(Ordering::Relaxed);
        if self.own_slot() != Some(slot) || (p & 0xFF) as usize != slot {
            return true;
        }
        slot_words(seg, slot)[W_STATUS].load(Ordering::Acquire)
            == ((p >> 8) & 0xFFFF_FFFF) << 32 | STATUS_LIVE
    }

    /// Leaves the slot (the handle is being dropped): clears it and unlocks it. A
    /// handle in a forked child that never re-joined owns no slot and leaves nothing;
    /// nor does one that lost its lock (the slot may be someone else's by now).
    pub fn leave(&mut self, seg: &Segment) {
        if !std::mem::replace(&mut self.left, true) {
            detach(self.attach_id);
            unregister_fd(self.shared.entry);
        }
        let Some(i) = self.own_slot() else { return };
        if !self.shared.still_held(seg, i) {
            return;
        }
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
    /// A record in use that no thread of this process claimed (a scribble, or a
    /// leftover) is overwritten at once, never waited for. When the handle's own
    /// threads hold all [`INTENTS`] records, it waits a little (20 ms at most).
    ///
    /// # Errors
    /// As [`slot`](Self::slot); [`SegmentError::LockLost`] if the slot no longer
    /// carries this handle's generation (see [`holds`](Self::holds));
    /// [`SegmentError::IntentsBusy`] when the wait ends with every record in use
    /// by this process's threads.
    pub fn intend<'s>(
        &'s self,
        seg: &'s Segment,
        intent: Intent,
    ) -> Result<IntentGuard<'s>, SegmentError> {
        // The cheap check (no system call): the slot still carries this handle's
        // generation, live. `verified_slot` also asks the kernel; `leave` does.
        let slot = self.slot(seg)?;
        if !self.holds(seg, slot) {
            self.shared.lost.store(true, Ordering::Relaxed);
            return Err(self.shared.lost_error());
        }
        let w = slot_words(seg, slot);
        let claimed = &self.shared.claimed;
        let mut deadline = None;
        loop {
            for k in 0..INTENTS {
                let bit = 1u32 << k;
                if claimed.load(Ordering::Relaxed) & bit != 0
                    || claimed.fetch_or(bit, Ordering::Acquire) & bit != 0
                {
                    continue;
                }
                // Record k is ours in this process; whatever it holds was not
                // written by a thread here (each clears its record before its bit),
                // so it is overwritten. The expected word first, then the record.
                // SeqCst: a repair pass that sees the pages this operation changes
                // must see this record (it loads intents after loading those pages).
                let desc = &w[W_INTENT + 2 * k];
                w[W_INTENT + 2 * k + 1].store(intent.expected, Ordering::SeqCst);
                desc.store(intent.encode(), Ordering::SeqCst);
                return Ok(IntentGuard { desc, claimed, bit });
            }
            let now = std::time::Instant::now();
            match deadline {
                None => deadline = Some(now + INTENT_WAIT),
                Some(d) if now >= d => return Err(SegmentError::IntentsBusy { records: INTENTS }),
                Some(_) => {}
            }
            std::thread::yield_now();
        }
    }
}

impl Drop for Membership {
    /// A membership dropped without [`leave`](Membership::leave) (its allocator
    /// failed to open after joining) still leaves this process's tables: the
    /// slot itself reads dead once the segment's descriptors close.
    fn drop(&mut self) {
        if !std::mem::replace(&mut self.left, true) {
            detach(self.attach_id);
            unregister_fd(self.shared.entry);
        }
    }
}

/// Clears its intent record when dropped (after the operation's last step), then
/// gives the record back to this process's threads.
pub(crate) struct IntentGuard<'s> {
    desc: &'s AtomicU64,
    claimed: &'s AtomicU32,
    bit: u32,
}

impl Drop for IntentGuard<'_> {
    fn drop(&mut self) {
        self.desc.store(0, Ordering::SeqCst);
        self.claimed.fetch_and(!self.bit, Ordering::Release);
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
