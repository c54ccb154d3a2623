//! The batch in flight between a per-handle cache and the shared block words
//! (issue 16, 3: a crash inside a refill or a flush leaks nothing).
//!
//! A refill takes up to [`BATCH`](super::cache::BATCH) + 1 blocks from one shared
//! block word with one read-modify-write, then lists them in the cache; a flush
//! unlists a run of blocks of one word, then gives them back with one
//! read-modify-write. Between the two steps the blocks are in nobody's hands. So
//! the gate holder writes the batch into its registry slot's cache line (three
//! words after the gate's two) *before* the shared step, and whoever next holds
//! the gate (the owner after a dead thief, a thief, the reclaimer of a dead owner)
//! settles it first ([`super::cache::settle`]):
//!
//! | record | meaning | settled by |
//! | --- | --- | --- |
//! | `TAKING word mask` | the take's RMW has not run | nothing: the blocks are not ours |
//! | `TAKEN word mask` | the RMW ran: the blocks are ours | listing those the cache does not list |
//! | `GIVING class lo hi` | entries `lo..=hi` unlisted, not given back | listing them again (the flush never rewrites entries) |
//! | `ARMED class lo hi` | the give-back RMW is the next instruction | nothing (see below) |
//!
//! The record changes phase right after (`TAKEN`) or right before (`ARMED`) the
//! RMW, so it says exactly whether the RMW ran at every instant but one: a kill
//! between the RMW instruction and the store next to it. There the record says
//! "maybe", and settling takes the side that can only leak (the batch, at most 9
//! blocks), never the side that could hand a block to two holders: the bits of a
//! block given back may already belong to someone else. No fail point lands in
//! that window; `tests/failpoints.rs` kills on both sides of each RMW and asserts
//! that nothing leaks and nothing is returned twice.

use std::sync::atomic::{AtomicU64, Ordering};

/// Where the record starts in a slot's cache line (after the gate's two words).
pub(crate) const REC_AT: usize = 2;
/// Words of the record: `[phase: 8 | class: 8 | lo: 24 | hi: 24]`, the shared
/// word's identity (allocator-specific), the mask taken.
pub(crate) const REC_WORDS: usize = 3;

const TAKING: u64 = 1;
const TAKEN: u64 = 2;
const GIVING: u64 = 3;
const ARMED: u64 = 4;
const PHASE: u64 = 0xFF;

/// A batch as its record says (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Batch {
    /// Blocks `mask` of shared word `word` were taken for class `class`'s cache.
    Taken { class: usize, word: u64, mask: u64 },
    /// Entries `lo..=hi` of class `class`'s cache were unlisted and are not given back.
    Giving { class: usize, lo: usize, hi: usize },
    /// Nothing to settle: no record, a take whose RMW did not run, or the
    /// one-instruction window around an RMW (which can only leak).
    Nothing,
}

/// Runs `f` with a record in process-local words that nobody settles: for a
/// single block this process popped from its own cache and gives straight back
/// (an out-of-place span's block, see `free_list/span.rs`). A kill in between
/// loses that one block, as a kill between an allocation and its caller would;
/// the slot's own record is not touched, so a thief's record stays intact.
pub(crate) fn unrecorded<R>(f: impl FnOnce(InFlight<'_>) -> R) -> R {
    let words: [AtomicU64; REC_AT + REC_WORDS] = std::array::from_fn(|_| AtomicU64::new(0));
    f(InFlight::new(&words))
}

/// A registry slot's batch record (only the slot's gate holder writes it).
#[derive(Clone, Copy)]
pub(crate) struct InFlight<'a>(&'a [AtomicU64]);

impl<'a> InFlight<'a> {
    /// The record in a slot's cache line (`words` starts at the gate).
    #[inline(always)]
    pub fn new(words: &'a [AtomicU64]) -> InFlight<'a> {
        InFlight(&words[REC_AT..REC_AT + REC_WORDS])
    }

    /// Before a take's RMW: it will set bits `mask` of word `word`.
    #[inline(always)]
    pub fn taking(&self, class: usize, word: u64, mask: u64) {
        self.0[1].store(word, Ordering::Relaxed);
        self.0[2].store(mask, Ordering::Relaxed);
        self.0[0].store(TAKING | (class as u64) << 8, Ordering::Relaxed);
    }

    /// Right after the take's RMW succeeded: the blocks are ours.
    #[inline(always)]
    pub fn taken(&self, class: usize) {
        self.0[0].store(TAKEN | (class as u64) << 8, Ordering::Relaxed);
    }

    /// Before a flush drops its count below entries `lo..=hi` (1-based).
    #[inline(always)]
    pub fn giving(&self, class: usize, lo: usize, hi: usize) {
        let w = (class as u64) << 8 | (lo as u64) << 16 | (hi as u64) << 40;
        self.0[0].store(GIVING | w, Ordering::Relaxed);
    }

    /// Right before the give-back RMW (the caller's next instruction).
    #[inline(always)]
    pub fn arm(&self) {
        let w = self.0[0].load(Ordering::Relaxed);
        if w & PHASE == GIVING {
            self.0[0].store(w & !PHASE | ARMED, Ordering::Relaxed);
        }
    }

    /// The batch is settled (listed, or given back).
    #[inline(always)]
    pub fn clear(&self) {
        self.0[0].store(0, Ordering::Relaxed);
    }

    /// Whether a record is there at all (one load: the gate holder's check).
    #[inline(always)]
    pub fn is_set(&self) -> bool {
        self.0[0].load(Ordering::Relaxed) != 0
    }

    /// What the record says is to be settled.
    pub fn read(&self) -> Batch {
        let w = self.0[0].load(Ordering::Relaxed);
        let class = ((w >> 8) & 0xFF) as usize;
        match w & PHASE {
            TAKEN => Batch::Taken {
                class,
                word: self.0[1].load(Ordering::Relaxed),
                mask: self.0[2].load(Ordering::Relaxed),
            },
            GIVING => Batch::Giving {
                class,
                lo: ((w >> 16) & 0xFF_FFFF) as usize,
                hi: (w >> 40) as usize,
            },
            _ => Batch::Nothing,
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn records_read_back_and_only_decisive_phases_settle() {
        let words: Vec<AtomicU64> = (0..8).map(|_| AtomicU64::new(0)).collect();
        let r = InFlight::new(&words);
        assert_eq!(r.read(), Batch::Nothing);
        r.taking(5, 77, 0b1011);
        assert_eq!(r.read(), Batch::Nothing, "the take's RMW has not run");
        r.taken(5);
        assert_eq!(
            r.read(),
            Batch::Taken {
                class: 5,
                word: 77,
                mask: 0b1011
            }
        );
        r.giving(3, 4, 11);
        assert_eq!(
            r.read(),
            Batch::Giving {
                class: 3,
                lo: 4,
                hi: 11
            }
        );
        r.arm();
        assert_eq!(r.read(), Batch::Nothing, "armed: only a leak is safe");
        r.clear();
        assert!(!r.is_set());
        assert!(words[..REC_AT].iter().all(|w| w.load(Ordering::Relaxed) == 0));
    }
}
