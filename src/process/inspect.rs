//! Read-only views of the registry for tools (`shm-alloc ps`, `gc`, `check`):
//! every slot with its liveness, intents and pins, and the questions the
//! lifecycle asks ("is any live handle attached?"). Nothing here writes to the
//! segment.

use std::os::fd::BorrowedFd;
use std::sync::atomic::Ordering;

use nix::libc;

use super::Reg;
use super::{
    lock_cmd, locked_by_other, orphan_intents, slot_words, Intent, LockCmd, INTENTS, SLOTS,
    STATUS_FREE, STATUS_LIVE, W_INTENT, W_PID, W_PINS, W_START, W_STATUS,
};

/// A spare slot word: `generation << 1 | 1` while the slot's holder (in that
/// generation) is an observer (a tool looking: see
/// [`set_observer_mode`](crate::segment::set_observer_mode)). A later holder of the
/// slot has another generation, so a mark never outlives its holder.
const W_OBSERVER: usize = 7;
const _: () = assert!(W_OBSERVER > W_PINS && W_OBSERVER < W_INTENT);

/// Marks slot `slot` (held by the caller) as an observer's.
pub(crate) fn mark_observer(seg: &Segment, slot: usize) {
    let w = slot_words(seg, slot);
    let gen = w[W_STATUS].load(Ordering::Acquire) >> 32;
    w[W_OBSERVER].store((gen << 1) | 1, Ordering::Release);
}

/// Whether slot `slot` is taken (not free) by a handle whose lock is gone: dead,
/// waiting for its reclaimer.
pub(crate) fn dead_slot(seg: &Segment, slot: usize) -> bool {
    slot < SLOTS
        && slot_words(seg, slot)[W_STATUS].load(Ordering::Acquire) & 0xFFFF_FFFF != STATUS_FREE
        && !locked_by_other(seg.lock_fd(), slot)
}

/// The registry slots that handles of *this process* hold in the segment whose
/// object has inode `ino` (from the process's attachment table).
pub(crate) fn own_slots(ino: u64) -> Vec<usize> {
    let t = super::ATTACHED.lock();
    t.iter()
        .filter(|a| {
            // SAFETY: `fd` is the handle's lock descriptor, open while its entry is
            // in the table (the handle detaches before it closes it); we hold the
            // table lock.
            let fd = unsafe { BorrowedFd::borrow_raw(a.fd) };
            nix::sys::stat::fstat(fd).is_ok_and(|st| st.st_ino == ino)
        })
        .filter_map(|a| a.state.own_slot())
        .collect()
}

/// Whether slot `slot`'s current holder is an observer.
pub(crate) fn is_observer(seg: &Segment, slot: usize) -> bool {
    if slot >= SLOTS {
        return false;
    }
    let w = slot_words(seg, slot);
    let gen = w[W_STATUS].load(Ordering::Acquire) >> 32;
    w[W_OBSERVER].load(Ordering::Acquire) == (gen << 1) | 1
}
use crate::segment::Segment;

/// One multi-step operation a handle has in flight (or had, when it died): the
/// pages it works on. See the [module docs](super).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntentInfo {
    /// The allocator's operation code (free list: 1 new span, 2 release a span,
    /// 3 claim a large run, 4 grow a large block).
    pub kind: u8,
    /// First page (of the allocator's data region) the operation works on.
    pub page: u32,
    /// Pages from `page` on.
    pub pages: u32,
}

impl From<Intent> for IntentInfo {
    fn from(i: Intent) -> Self {
        IntentInfo {
            kind: i.kind,
            page: i.page,
            pages: i.pages,
        }
    }
}

/// One taken registry slot, as `shm-alloc ps` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotInfo {
    /// Slot index in the registry.
    pub slot: usize,
    /// Incremented each time the slot is taken.
    pub generation: u32,
    /// The holder's pid in the holder's own pid namespace (for people only).
    pub pid: u32,
    /// When the holder joined, in nanoseconds since the Unix epoch.
    pub start_time_ns: u64,
    /// Whether the holder is alive (its lock is held); false: dead, not yet reclaimed.
    pub alive: bool,
    /// Whether this is the calling handle's own slot.
    pub is_self: bool,
    /// Whether the holder is an observer (a tool looking: see
    /// [`set_observer_mode`](crate::segment::set_observer_mode)).
    pub observer: bool,
    /// The operations in flight recorded in the slot.
    pub intents: Vec<IntentInfo>,
    /// Reader pins (views of shared-immutable memory) the holder counts.
    pub pins: u64,
}

/// The registry of a segment: every taken slot, and the intent records of dead
/// handles parked for the next repair pass.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RegistryInfo {
    /// Slots that are taken (by a live handle, or by a dead one not yet reclaimed).
    pub slots: Vec<SlotInfo>,
    /// Parked intent records of dead handles, waiting for a repair pass.
    pub orphan_intents: Vec<IntentInfo>,
}

impl RegistryInfo {
    /// Slots held by live handles other than the caller's own and observers.
    pub fn live_others(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| s.alive && !s.is_self && !s.observer)
            .count()
    }

    /// Slots of dead handles not yet reclaimed.
    pub fn dead(&self) -> usize {
        self.slots.iter().filter(|s| !s.alive).count()
    }
}

/// The registry of `seg` as seen by the handle in slot `me`.
pub(crate) fn registry_info(seg: &Segment, me: Option<usize>) -> RegistryInfo {
    let slots = (0..SLOTS)
        .filter_map(|i| {
            let w = slot_words(seg, i);
            let st = w[W_STATUS].load(Ordering::Acquire);
            if st & 0xFFFF_FFFF == STATUS_FREE {
                return None;
            }
            let is_self = Some(i) == me;
            let intents = (0..INTENTS)
                .filter_map(|k| {
                    Intent::decode(
                        w[W_INTENT + 2 * k].load(Ordering::Acquire),
                        w[W_INTENT + 2 * k + 1].load(Ordering::Acquire),
                    )
                })
                .map(IntentInfo::from)
                .collect();
            Some(SlotInfo {
                slot: i,
                generation: (st >> 32) as u32,
                pid: w[W_PID].load(Ordering::Relaxed) as u32,
                start_time_ns: w[W_START].load(Ordering::Relaxed),
                alive: is_self || locked_by_other(seg.lock_fd(), i),
                is_self,
                observer: is_observer(seg, i),
                intents,
                pins: w[W_PINS].load(Ordering::Relaxed),
            })
        })
        .collect();
    let orphan_intents = orphan_intents(seg)
        .chunks_exact(2)
        .filter_map(|p| Intent::decode(p[0].load(Ordering::Acquire), p[1].load(Ordering::Acquire)))
        .map(IntentInfo::from)
        .collect();
    RegistryInfo {
        slots,
        orphan_intents,
    }
}

/// Whether a live handle other than slot `me` and the slots `skip` names is
/// attached to `seg`. Every slot's lock is probed, whatever its status says: a
/// handle that is joining holds its lock before it marks the slot live.
pub(crate) fn any_live(seg: &Segment, me: Option<usize>, skip: &dyn Fn(usize) -> bool) -> bool {
    (0..SLOTS).any(|i| Some(i) != me && locked_by_other(seg.lock_fd(), i) && !skip(i))
}

/// Whether any registry slot lock of the object behind `fd` is held by another
/// open file description (for objects whose header cannot be trusted yet).
pub(crate) fn any_slot_locked(fd: BorrowedFd<'_>) -> bool {
    (0..SLOTS).any(|i| {
        lock_cmd(fd, i, libc::F_WRLCK as i16, LockCmd::Get)
            .map_or(true, |fl| fl.l_type != libc::F_UNLCK as i16)
    })
}

/// What is structurally wrong in `seg`'s registry (empty: consistent): every slot
/// status is free or live, and a free slot records no intent.
pub(crate) fn check_registry(seg: &Segment) -> Vec<String> {
    let mut problems = Vec::new();
    for i in 0..SLOTS {
        let w = slot_words(seg, i);
        let st = w[W_STATUS].load(Ordering::Acquire) & 0xFFFF_FFFF;
        if st != STATUS_FREE && st != STATUS_LIVE {
            problems.push(format!("registry slot {i}: unknown status {st:#x}"));
        }
        if st == STATUS_FREE {
            for k in 0..INTENTS {
                if w[W_INTENT + 2 * k].load(Ordering::Acquire) >> 63 == 1 {
                    problems.push(format!(
                        "registry slot {i}: free slot holds intent record {k}"
                    ));
                }
            }
        }
    }
    problems
}
