//! The slot protocol of the channel: Dmitry Vyukov's bounded MPMC queue, made
//! robust against processes that die in the middle of an operation.
//!
//! Positions `p = 0, 1, 2, ...` are handed out by two counters, `head` (next to
//! write) and `tail` (next to read); position `p` lives in slot `p % N` on lap
//! `p / N`. Each slot has one state word `lap << 2 | state`:
//!
//! ```text
//! EMPTY(lap) --producer claims--> WRITING(lap) --publishes--> FULL(lap)
//!     ^                                                          |
//!     +---- EMPTY(lap+1) <--consumer releases-- READING(lap) <---+ consumer claims
//! ```
//!
//! Zeroed memory is slot `i` in `EMPTY(0)`, position `i`: a valid empty ring.
//!
//! Unlike Vyukov's original, a thread claims the *slot* first (CAS on the slot word)
//! and only then advances `head`/`tail` (CAS from `p` to `p + 1`); anyone who finds
//! the slot of position `p` already claimed helps advance the counter. So a process
//! that dies between the two steps does not stop the counter.
//!
//! Before claiming, an endpoint writes `p + 1` into its own `inflight` word and
//! clears it after the release. A slot found `WRITING` or `READING` for a long time
//! is repaired only if no *live* endpoint of that role shows `inflight == p + 1`
//! (the claimant always shows it until it is done, so "no live one shows it" means
//! the claimant is dead): a dead writer's slot becomes `EMPTY(lap + 1)` (its message
//! is lost), a dead reader's slot too (the message it was reading is lost). Every
//! other process goes on.

use std::sync::atomic::Ordering;

use crate::sync::Word;

pub(crate) const EMPTY: u64 = 0;
pub(crate) const WRITING: u64 = 1;
pub(crate) const FULL: u64 = 2;
pub(crate) const READING: u64 = 3;

#[inline]
pub(crate) const fn pack(lap: u64, state: u64) -> u64 {
    (lap << 2) | state
}

/// Attempts per operation before the words are declared corrupt: every attempt
/// that fails saw another process make progress (or a stale counter).
const MAX_ATTEMPTS: u32 = 1 << 22;

/// Spins on a slot found `WRITING` at the tail, before a repairing pop asks
/// whether its writer is alive.
#[cfg(not(loom))]
const WRITER_GRACE: u32 = 64;
#[cfg(loom)]
const WRITER_GRACE: u32 = 1;

/// Which side an endpoint is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Sender,
    Receiver,
}

/// The ring as the protocol sees it: counters, slot words and values, and the
/// endpoint table's answer to "is the claimant of this position alive?".
pub(crate) trait Ring {
    type W: Word;
    type T: Copy;
    /// Number of slots (N >= 1).
    fn cap(&self) -> u64;
    /// The next position to write.
    fn head(&self) -> &Self::W;
    /// The next position to read.
    fn tail(&self) -> &Self::W;
    /// The state word of slot `i < cap`.
    fn slot(&self, i: usize) -> &Self::W;
    /// Stores the value of slot `i`.
    ///
    /// # Safety
    /// The caller claimed slot `i` (moved it to `WRITING`) and has not released it.
    unsafe fn write(&self, i: usize, value: Self::T);
    /// Loads the value of slot `i`.
    ///
    /// # Safety
    /// The caller claimed slot `i` (moved it from `FULL` to `READING`) and has not
    /// released it.
    unsafe fn read(&self, i: usize) -> Self::T;
    /// Whether some live endpoint of `role` shows `inflight == pos + 1`.
    fn claimant_alive(&self, role: Role, pos: u64) -> bool;
    /// A message was lost with a dead claimant of `role`.
    fn count_lost(&self, role: Role);
}

/// Why a push did not store its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PushFail {
    Full,
    Corrupted,
}

/// Why a pop returned nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PopFail {
    Empty,
    Corrupted,
}

#[inline]
fn help_advance<W: Word>(counter: &W, p: u64) {
    let _ = counter.compare_exchange(p, p.wrapping_add(1), Ordering::AcqRel, Ordering::Relaxed);
}

/// Stores `value` at the next free position. `inflight` is the caller's endpoint word.
/// With `repair`, a slot held by a dead reader is taken back (its message is lost)
/// instead of counting as full.
pub(crate) fn push<R: Ring>(
    ring: &R,
    inflight: &R::W,
    value: R::T,
    repair: bool,
) -> Result<(), PushFail> {
    let cap = ring.cap();
    for _ in 0..MAX_ATTEMPTS {
        let p = ring.head().load(Ordering::Acquire);
        let (lap, i) = (p / cap, (p % cap) as usize);
        let slot = ring.slot(i);
        let w = slot.load(Ordering::Acquire);
        let (wl, st) = (w >> 2, w & 3);
        if wl == lap && st == EMPTY {
            // Announce the claim before making it (the repair rule relies on it).
            inflight.store(p + 1, Ordering::Relaxed);
            if slot
                .compare_exchange(w, pack(lap, WRITING), Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                help_advance(ring.head(), p);
                // SAFETY: the CAS above moved slot i to WRITING(lap) for us; no one else
                // touches its value until we publish FULL(lap).
                unsafe { ring.write(i, value) };
                slot.store(pack(lap, FULL), Ordering::Release);
                inflight.store(0, Ordering::Release);
                return Ok(());
            }
            inflight.store(0, Ordering::Relaxed);
        } else if wl > lap || (wl == lap && st != EMPTY) {
            // Position p is taken (or long done): the counter is behind.
            help_advance(ring.head(), p);
        } else if wl + 1 == lap {
            // The slot still holds the previous lap.
            if ring.head().load(Ordering::Relaxed) != p {
                continue; // stale p
            }
            match st {
                // A reader holds it: with `repair`, one that died is replaced here.
                READING
                    if repair
                        && !ring.claimant_alive(Role::Receiver, p - cap)
                        && slot
                            .compare_exchange(
                                w,
                                pack(lap, EMPTY),
                                Ordering::AcqRel,
                                Ordering::Relaxed,
                            )
                            .is_ok() =>
                {
                    ring.count_lost(Role::Receiver);
                }
                EMPTY => {} // EMPTY of the previous lap: p was stale; look again
                // FULL: not consumed yet; WRITING: its writer is slow or dead, and the
                // consumers repair it; READING: a live reader is copying.
                _ => return Err(PushFail::Full),
            }
        }
        // else: p is stale (the slot is ahead); look again
    }
    Err(PushFail::Corrupted)
}

/// Takes the value at the next position. With `repair`, a slot whose writer died
/// is skipped (its message is lost) instead of waited for.
pub(crate) fn pop<R: Ring>(ring: &R, inflight: &R::W, repair: bool) -> Result<R::T, PopFail> {
    let cap = ring.cap();
    for _ in 0..MAX_ATTEMPTS {
        let p = ring.tail().load(Ordering::Acquire);
        let (lap, i) = (p / cap, (p % cap) as usize);
        let slot = ring.slot(i);
        let w = slot.load(Ordering::Acquire);
        let (wl, st) = (w >> 2, w & 3);
        if wl == lap {
            match st {
                FULL => {
                    inflight.store(p + 1, Ordering::Relaxed);
                    if slot
                        .compare_exchange(
                            w,
                            pack(lap, READING),
                            Ordering::AcqRel,
                            Ordering::Relaxed,
                        )
                        .is_ok()
                    {
                        help_advance(ring.tail(), p);
                        // SAFETY: the CAS above moved slot i from FULL(lap) to
                        // READING(lap) for us: the writer is done and no one else reads
                        // or writes the value until we release the slot.
                        let v = unsafe { ring.read(i) };
                        slot.store(pack(lap + 1, EMPTY), Ordering::Release);
                        inflight.store(0, Ordering::Release);
                        return Ok(v);
                    }
                    inflight.store(0, Ordering::Relaxed);
                }
                READING => help_advance(ring.tail(), p),
                WRITING => {
                    if ring.tail().load(Ordering::Relaxed) != p {
                        continue;
                    }
                    if !repair {
                        return Err(PopFail::Empty); // a live writer will publish it
                    }
                    // A live writer publishes within nanoseconds: give it a moment
                    // before asking whether it is alive (a system call).
                    if (0..WRITER_GRACE).any(|_| {
                        std::hint::spin_loop();
                        slot.load(Ordering::Acquire) != w
                    }) {
                        continue;
                    }
                    if ring.claimant_alive(Role::Sender, p) {
                        return Err(PopFail::Empty); // a live writer will publish it
                    }
                    if slot
                        .compare_exchange(
                            w,
                            pack(lap + 1, EMPTY),
                            Ordering::AcqRel,
                            Ordering::Relaxed,
                        )
                        .is_ok()
                    {
                        ring.count_lost(Role::Sender);
                        help_advance(ring.tail(), p);
                    }
                }
                _ => {
                    // EMPTY(lap): nothing written at p yet.
                    if ring.tail().load(Ordering::Relaxed) == p {
                        return Err(PopFail::Empty);
                    }
                }
            }
        } else if wl > lap {
            help_advance(ring.tail(), p); // position p is done
        } else if wl + 1 == lap {
            // The previous lap's reader is still releasing: nothing at p yet.
            if ring.tail().load(Ordering::Relaxed) == p {
                return Err(PopFail::Empty);
            }
        }
        // else: p is stale; look again
    }
    Err(PopFail::Corrupted)
}

/// Positions written and not yet taken (a snapshot).
pub(crate) fn len<R: Ring>(ring: &R) -> u64 {
    let tail = ring.tail().load(Ordering::Acquire);
    let head = ring.head().load(Ordering::Acquire);
    head.saturating_sub(tail).min(ring.cap())
}

#[cfg(all(test, loom))]
mod loom_tests {
    //! The slot protocol over loom atomics and cells: threads stand in for
    //! processes; a "dead" process is one that stops after its claim, and the
    //! liveness answer comes from a flag the model sets.
    use super::*;
    use loom::cell::UnsafeCell;
    use loom::sync::atomic::{AtomicBool, AtomicU64};
    use loom::sync::Arc;

    struct LoomRing {
        head: AtomicU64,
        tail: AtomicU64,
        slots: Vec<(AtomicU64, UnsafeCell<u64>)>,
        /// inflight words of endpoints 0..n (senders first, then receivers)
        inflight: Vec<AtomicU64>,
        senders: usize,
        dead: Vec<AtomicBool>,
        lost: AtomicU64,
    }

    impl LoomRing {
        fn new(cap: usize, senders: usize, receivers: usize) -> Arc<LoomRing> {
            Arc::new(LoomRing {
                head: AtomicU64::new(0),
                tail: AtomicU64::new(0),
                slots: (0..cap)
                    .map(|_| (AtomicU64::new(0), UnsafeCell::new(0)))
                    .collect(),
                inflight: (0..senders + receivers)
                    .map(|_| AtomicU64::new(0))
                    .collect(),
                senders,
                dead: (0..senders + receivers)
                    .map(|_| AtomicBool::new(false))
                    .collect(),
                lost: AtomicU64::new(0),
            })
        }
    }

    impl Ring for LoomRing {
        type W = AtomicU64;
        type T = u64;
        fn cap(&self) -> u64 {
            self.slots.len() as u64
        }
        fn head(&self) -> &AtomicU64 {
            &self.head
        }
        fn tail(&self) -> &AtomicU64 {
            &self.tail
        }
        fn slot(&self, i: usize) -> &AtomicU64 {
            &self.slots[i].0
        }
        unsafe fn write(&self, i: usize, value: u64) {
            // SAFETY: forwarded from the caller: slot i is claimed for writing; loom's
            // cell checks that no other access overlaps.
            self.slots[i].1.with_mut(|p| unsafe { *p = value });
        }
        unsafe fn read(&self, i: usize) -> u64 {
            // SAFETY: forwarded from the caller: slot i is claimed for reading.
            self.slots[i].1.with(|p| unsafe { *p })
        }
        fn claimant_alive(&self, role: Role, pos: u64) -> bool {
            let range = match role {
                Role::Sender => 0..self.senders,
                Role::Receiver => self.senders..self.inflight.len(),
            };
            range.into_iter().any(|e| {
                !self.dead[e].load(Ordering::Acquire)
                    && self.inflight[e].load(Ordering::Acquire) == pos + 1
            })
        }
        fn count_lost(&self, _role: Role) {
            self.lost.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn send_spin(r: &LoomRing, ep: usize, v: u64) {
        loop {
            match push(r, &r.inflight[ep], v, true) {
                Ok(()) => return,
                Err(PushFail::Full) => loom::thread::yield_now(),
                Err(PushFail::Corrupted) => panic!("corrupted"),
            }
        }
    }

    fn recv_spin(r: &LoomRing, ep: usize, repair: bool) -> Option<u64> {
        // Always returns Some: the Option keeps call sites uniform.
        loop {
            match pop(r, &r.inflight[ep], repair) {
                Ok(v) => return Some(v),
                Err(PopFail::Empty) => loom::thread::yield_now(),
                Err(PopFail::Corrupted) => panic!("corrupted"),
            }
        }
    }

    /// Runs a model with a preemption bound (the spin loops make unbounded
    /// exploration too slow for CI; 3 preemptions cover the interleavings here).
    fn model(f: impl Fn() + Sync + Send + 'static) {
        let mut b = loom::model::Builder::new();
        b.preemption_bound = Some(3);
        // Waiting on a full or empty ring is a yield loop: allow it room.
        b.max_branches = 100_000;
        b.check(f);
    }

    /// Pops until empty (everyone else has finished).
    fn drain(r: &LoomRing, ep: usize) -> Vec<u64> {
        let mut out = Vec::new();
        loop {
            match pop(r, &r.inflight[ep], false) {
                Ok(v) => out.push(v),
                Err(PopFail::Empty) => return out,
                Err(PopFail::Corrupted) => panic!("corrupted"),
            }
        }
    }

    /// Two producers and a consumer, one attempt each, all at once, on one slot (a
    /// value can go into the slot's next lap after the pop): every value pushed
    /// comes out exactly once, and nothing else does. No spin loops, so loom
    /// explores every interleaving quickly.
    #[test]
    fn loom_channel_two_producers_one_slot() {
        model(|| {
            let r = LoomRing::new(1, 2, 1);
            let r1 = r.clone();
            let p1 = loom::thread::spawn(move || push(&*r1, &r1.inflight[0], 1, false).is_ok());
            let r2 = r.clone();
            let c = loom::thread::spawn(move || pop(&*r2, &r2.inflight[2], false).ok());
            let pushed2 = push(&*r, &r.inflight[1], 2, false).is_ok();
            let pushed1 = p1.join().unwrap();
            let mut got: Vec<u64> = c.join().unwrap().into_iter().collect();
            got.extend(drain(&r, 2));
            got.sort();
            let mut want = Vec::new();
            want.extend(pushed1.then_some(1));
            want.extend(pushed2.then_some(2));
            assert_eq!(got, want);
            assert!(
                pushed1 || pushed2,
                "the first push into an empty slot cannot fail"
            );
        });
    }

    /// One producer pushing twice and two consumers popping once each, at once, on
    /// one slot: exactly once, and a consumer never sees 2 before 1 is gone.
    #[test]
    fn loom_channel_two_consumers_one_slot() {
        model(|| {
            let r = LoomRing::new(1, 1, 2);
            let r1 = r.clone();
            let p = loom::thread::spawn(move || {
                let a = push(&*r1, &r1.inflight[0], 1, false).is_ok();
                let b = push(&*r1, &r1.inflight[0], 2, false).is_ok();
                (a, b)
            });
            let r2 = r.clone();
            let c = loom::thread::spawn(move || pop(&*r2, &r2.inflight[1], false).ok());
            let mine = pop(&*r, &r.inflight[2], false).ok();
            let (a, b) = p.join().unwrap();
            let theirs = c.join().unwrap();
            assert!(a, "the first push into an empty slot cannot fail");
            let mut got: Vec<u64> = mine.into_iter().chain(theirs).collect();
            got.extend(drain(&r, 2));
            let mut sorted = got.clone();
            sorted.sort();
            let mut want = vec![1];
            want.extend(b.then_some(2));
            assert_eq!(sorted, want);
        });
    }

    /// A producer dies after claiming a slot (it announces and claims, then stops);
    /// the consumer repairs the slot and still gets the live producer's value.
    #[test]
    fn loom_channel_dead_writer_is_skipped() {
        model(|| {
            let r = LoomRing::new(2, 2, 1);
            let r2 = r.clone();
            let dead = loom::thread::spawn(move || {
                // The first half of push, then death.
                let p = r2.head.load(Ordering::Acquire);
                let slot = &r2.slots[p as usize % 2].0;
                r2.inflight[0].store(p + 1, Ordering::Relaxed);
                if slot
                    .compare_exchange(
                        pack(0, EMPTY),
                        pack(0, WRITING),
                        Ordering::AcqRel,
                        Ordering::Relaxed,
                    )
                    .is_ok()
                {
                    r2.dead[0].store(true, Ordering::Release);
                    true
                } else {
                    r2.inflight[0].store(0, Ordering::Relaxed);
                    false
                }
            });
            let r3 = r.clone();
            let live = loom::thread::spawn(move || send_spin(&r3, 1, 7));
            live.join().unwrap();
            let died_holding = dead.join().unwrap();
            // Everyone is done: the consumer must get 7, skipping a dead slot if any.
            let v = loop {
                match pop(&*r, &r.inflight[2], true) {
                    Ok(v) => break v,
                    Err(PopFail::Empty) => loom::thread::yield_now(),
                    Err(PopFail::Corrupted) => panic!("corrupted"),
                }
            };
            assert_eq!(v, 7);
            assert_eq!(pop(&*r, &r.inflight[2], true), Err(PopFail::Empty));
            assert_eq!(r.lost.load(Ordering::Relaxed), u64::from(died_holding));
        });
    }

    /// A consumer dies while reading; the producer that needs the slot repairs it.
    #[test]
    fn loom_channel_dead_reader_is_repaired() {
        model(|| {
            let r = LoomRing::new(1, 1, 2);
            send_spin(&r, 0, 1);
            let r2 = r.clone();
            let dead = loom::thread::spawn(move || {
                // Claim READING, then die.
                r2.inflight[1].store(1, Ordering::Relaxed);
                r2.slots[0]
                    .0
                    .compare_exchange(
                        pack(0, FULL),
                        pack(0, READING),
                        Ordering::AcqRel,
                        Ordering::Relaxed,
                    )
                    .unwrap();
                r2.dead[1].store(true, Ordering::Release);
            });
            let r3 = r.clone();
            let p = loom::thread::spawn(move || send_spin(&r3, 0, 2));
            dead.join().unwrap();
            p.join().unwrap();
            assert_eq!(recv_spin(&r, 2, false), Some(2));
            assert_eq!(r.lost.load(Ordering::Relaxed), 1);
        });
    }
}
