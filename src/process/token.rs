//! Liveness tokens and the list of attached processes.

use std::sync::atomic::Ordering;

use super::*;
use crate::segment::Segment;

/// Who is attached to `seg` right now.
pub(crate) fn processes(seg: &Segment, me: Option<usize>) -> Vec<ProcessInfo> {
    (0..SLOTS)
        .filter_map(|i| {
            let w = slot_words(seg, i);
            let st = w[W_STATUS].load(Ordering::Acquire);
            if st & 0xFFFF_FFFF == STATUS_FREE {
                return None;
            }
            let is_self = Some(i) == me;
            Some(ProcessInfo {
                slot: i,
                generation: (st >> 32) as u32,
                pid: w[W_PID].load(Ordering::Relaxed) as u32,
                start_time_ns: w[W_START].load(Ordering::Relaxed),
                alive: is_self || locked_by_other(seg.lock_fd(), i),
                is_self,
            })
        })
        .collect()
}

// ------------------------------------------------------------------ liveness tokens

/// A nonzero 29-bit name for "this handle's registration": `[generation: 21 |
/// slot + 1: 8]`. Stored in shared words that record who holds a claim (a root
/// being created, a lock), and checked with [`token_alive`]: never a pid.
pub(crate) fn token(seg: &(impl Reg + ?Sized), slot: usize) -> u32 {
    let gen = (slot_words(seg, slot)[W_STATUS].load(Ordering::Acquire) >> 32) as u32;
    ((gen & TOKEN_GEN_MASK) << 8) | (slot as u32 + 1)
}

pub(super) const TOKEN_GEN_MASK: u32 = 0x1F_FFFF;

/// Whether the registration named by `token` is still alive: its slot holds the
/// same generation and is held by a live handle (this one, or one whose lock
/// another open file description holds).
pub(crate) fn token_alive(seg: &(impl Reg + ?Sized), me: Option<usize>, token: u32) -> bool {
    let Some(slot) = ((token & 0xFF) as usize)
        .checked_sub(1)
        .filter(|&s| s < SLOTS)
    else {
        return false;
    };
    let st = slot_words(seg, slot)[W_STATUS].load(Ordering::Acquire);
    if st & 0xFFFF_FFFF != STATUS_LIVE || ((st >> 32) as u32 & TOKEN_GEN_MASK) != token >> 8 {
        return false; // left, or died and the slot was taken by someone else
    }
    Some(slot) == me || locked_by_other(seg.lock_fd(), slot)
}

/// Whether slot `slot` is marked live (cheap: no lock probe; a dead holder not yet
/// reclaimed also reads as live).
pub(crate) fn listed_live(seg: &Segment, slot: usize) -> bool {
    slot < SLOTS
        && slot_words(seg, slot)[W_STATUS].load(Ordering::Acquire) & 0xFFFF_FFFF == STATUS_LIVE
}

/// The registry generation of slot `slot` as it reads now (0 past the end).
pub(crate) fn slot_generation(seg: &Segment, slot: usize) -> u32 {
    if slot >= SLOTS {
        return 0;
    }
    (slot_words(seg, slot)[W_STATUS].load(Ordering::Acquire) >> 32) as u32
}
