//! Reclaiming dead slots: parking their intents, draining the parked ones.

use std::sync::atomic::{AtomicU64, Ordering};

use super::*;
use crate::segment::Segment;

/// The parked intent records after the slots.
pub(super) fn orphan_intents(seg: &(impl Reg + ?Sized)) -> &[AtomicU64] {
    &registry(seg)[SLOTS * SLOT_WORDS..SLOTS * SLOT_WORDS + ORPHAN_WORDS]
}

/// Moves a dead slot's intent records to the registry-wide orphan list, so the slot
/// can be taken over at once and the allocator's repair pass still finds them.
/// Returns false if the list was full for some: those stay in the slot, which must
/// stay dead (not freed, not taken over) until a later pass parks them.
pub(super) fn reclaim_intents_into_orphans(seg: &(impl Reg + ?Sized), i: usize) -> bool {
    let w = slot_words(seg, i);
    let orphans = orphan_intents(seg);
    let mut all = true;
    for k in 0..INTENTS {
        let desc = w[W_INTENT + 2 * k].load(Ordering::Acquire);
        if desc >> 63 == 0 {
            // Empty, or a record the dead handle had claimed but not yet written
            // (the placeholder 1): nothing started, so nothing to park. Clear it, or
            // the record would stay taken for every later holder of the slot.
            if desc != 0 {
                w[W_INTENT + 2 * k].store(0, Ordering::Release);
            }
            continue;
        }
        let exp = w[W_INTENT + 2 * k + 1].load(Ordering::Acquire);
        // Park it in a free orphan record (pairs). If all are taken, it stays here:
        // dropping it would lose what only it names (a span whose words its
        // creator never opened, a claimed run), for good. The record is claimed
        // with a placeholder (not a valid record: bit 63 clear), its expected word
        // written, and only then published, so a drain never reads half of it.
        let parked = orphans.chunks_exact(2).any(|pair| {
            pair[0]
                .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
                && {
                    pair[1].store(exp, Ordering::Release);
                    pair[0].store(desc, Ordering::Release);
                    true
                }
        });
        if parked {
            w[W_INTENT + 2 * k].store(0, Ordering::Release);
        } else {
            all = false;
        }
    }
    all
}

/// Finds slots whose holders died, takes each one's lock (becoming its one
/// reclaimer), lets `on_dead` return what the allocator keeps in the slot (its
/// caches), parks its intents as orphans, and frees the slot. Returns how many,
/// and whether a dead slot is left for later: its records did not fit the orphan
/// list (drain the list, then call again), or `on_dead` returned false (its
/// caches were busy).
pub(crate) fn reclaim_dead(
    seg: &Segment,
    me: Option<usize>,
    on_dead: &mut dyn FnMut(usize) -> bool,
) -> (usize, bool) {
    let (mut n, mut pending) = (0, false);
    for i in 0..SLOTS {
        if Some(i) == me {
            continue;
        }
        let w = slot_words(seg, i);
        if w[W_STATUS].load(Ordering::Acquire) & 0xFFFF_FFFF == STATUS_FREE {
            continue;
        }
        if !matches!(try_lock(seg.lock_fd(), i), Ok(true)) {
            continue; // live
        }
        crate::fail_point!("registry.reclaim.locked");
        // Re-check under the lock: a joiner may have freed and re-taken it meanwhile.
        let st = w[W_STATUS].load(Ordering::Acquire);
        if st & 0xFFFF_FFFF != STATUS_FREE {
            if !on_dead(i) {
                // Its caches are busy (another process is emptying them): later.
                pending = true;
            } else if reclaim_intents_into_orphans(seg, i) {
                crate::fail_point!("registry.reclaim.before_free");
                w[W_STATUS].store(st & !0xFFFF_FFFF, Ordering::Release);
                n += 1;
            } else {
                pending = true;
            }
        }
        unlock(seg.lock_fd(), i);
    }
    (n, pending)
}

/// Every intent record of a live slot (including this handle's own).
pub(crate) fn live_intents(seg: &Segment, me: Option<usize>) -> Vec<Intent> {
    let mut out = Vec::new();
    for i in 0..SLOTS {
        let w = slot_words(seg, i);
        if w[W_STATUS].load(Ordering::SeqCst) & 0xFFFF_FFFF == STATUS_FREE {
            continue;
        }
        if Some(i) != me && !locked_by_other(seg.lock_fd(), i) {
            continue; // dead: its records are the reclaimer's
        }
        for k in 0..INTENTS {
            let desc = w[W_INTENT + 2 * k].load(Ordering::SeqCst);
            if let Some(it) = Intent::decode(desc, w[W_INTENT + 2 * k + 1].load(Ordering::SeqCst)) {
                out.push(it);
            }
        }
    }
    out
}

/// Takes the parked intents of dead handles, one at a time: `f` finishes or rolls
/// back each and says whether it is done; a done record is cleared after `f`
/// returns (a reclaimer that dies inside `f` leaves it for the next one).
pub(crate) fn drain_orphans(seg: &Segment, mut f: impl FnMut(Intent) -> bool) {
    for pair in orphan_intents(seg).chunks_exact(2) {
        let desc = pair[0].load(Ordering::Acquire);
        if let Some(it) = Intent::decode(desc, pair[1].load(Ordering::Acquire)) {
            if f(it) {
                let _ = pair[0].compare_exchange(desc, 0, Ordering::AcqRel, Ordering::Relaxed);
            }
        }
    }
}
