//! Repair and intents: recovering what dead handles had in flight.
//!
//! Invariants:
//! - Every multi-step page operation (new span, release, large claim, grow) first
//!   writes an intent record in the handle's registry slot naming its pages and the
//!   state its first step installs.
//! - When a handle dies, whoever takes its slot parks its intents; a repair pass
//!   finishes or rolls back each one ([`FreeListAllocator::finish_intent`]) unless
//!   a live operation covers the same pages (then it stays parked).
//! - The sweep frees what the global rules can see: interior pages whose head is
//!   gone, empty spans; and it rebuilds both kinds of hints.
//! - Repair runs when a handle joins over a dead one, when memory runs out, and on
//!   [`FreeListAllocator::reclaim`].

use super::*;

/// Intent kinds recorded in the registry.
pub(super) const INTENT_NEW_SPAN: u8 = 1;
pub(super) const INTENT_RELEASE: u8 = 2;
pub(super) const INTENT_LARGE: u8 = 3;
pub(super) const INTENT_GROW: u8 = 4;
/// A large block being freed: while the record is live, repair leaves its interior
/// pages alone (the free itself frees them), so a free that stalls between its
/// head CAS and its interior pages never finds a newer block there. A dead one's
/// record needs nothing: the sweep frees interior pages whose head is gone.
pub(super) const INTENT_LARGE_FREE: u8 = 5;

/// In a span's state `aux`: a repair has finished (or is finishing) the creation of
/// this span, whose creator died (see `finish_intent`). Set without a new
/// generation, so the span's tag is kept.
pub(super) const SPAN_REPAIRED: u64 = 1 << 31;

impl FreeListAllocator {
    /// The repair pass; see [`FreeListAllocator::reclaim`]: the registry part, then
    /// the sweep over the committed pages.
    pub(super) fn repair(&self) -> Reclaimed {
        let mut r = self.repair_registry();
        self.sweep(&mut r);
        r
    }

    /// The registry part of a repair: our own cache, dead handles' slots, caches and
    /// parked intents. O(registry slots).
    pub(super) fn repair_registry(&self) -> Reclaimed {
        let me = self.member.current();
        let mut r = Reclaimed::default();
        // Our own cache first (only its owner thread may touch it).
        if let Some(slot) = self.my_cache() {
            cache::flush_own(self, slot);
        }
        // Dead slots whose records did not fit the orphan list keep them: park
        // more after each drain, while draining makes progress.
        let deadline = std::time::Instant::now() + cache::CLAIM_WAIT;
        for _round in 0..process::SLOTS {
            let mut cached = 0;
            let (freed, pending) = process::reclaim_dead(&self.seg, me, &mut |slot| {
                if self.depth == 0 {
                    return true;
                }
                let (done, n) = cache::flush_dead(self, slot, deadline);
                cached += n;
                done
            });
            r.cached_blocks += cached;
            r.dead_slots += freed;
            let before = r.intents;
            process::drain_orphans(&self.seg, |it| {
                crate::fail_point!("fl.repair.intent");
                let done = self.finish_intent(it, me);
                if let Some(pages) = done {
                    r.intents += 1;
                    r.pages += pages;
                }
                done.is_some()
            });
            if !pending || r.intents == before {
                break;
            }
        }
        r
    }

    /// The sweep: returns empty spans and orphaned interior pages to the pool and
    /// rebuilds the hints, over every committed page. O(committed pages).
    pub(super) fn sweep(&self, r: &mut Reclaimed) {
        let me = self.member.current();
        let live = process::live_intents(&self.seg, me);
        let covered = |p: usize, intents: &[Intent]| intents.iter().any(|i| i.covers(p));
        crate::fail_point!("fl.repair.sweep");
        // Every committed page, as far as any process got (`refresh`).
        for p in 0..self.refresh() {
            let st = self.state(p).load(Ordering::Acquire);
            match kind(st) {
                KIND_FREE if !covered(p, &live) => self.free_pages().set(p),
                KIND_SMALL if class(st) < NCLASS => {
                    self.free_pages().clear(p);
                    let (c, tag) = (class(st), tag_of(st));
                    if self.is_empty_span(p, c, tag) {
                        r.pages += usize::from(self.release_span(p, st));
                    } else if self.has_free(p, c, tag) {
                        self.avail(c).set(p);
                    }
                }
                KIND_LARGE => self.free_pages().clear(p),
                KIND_INTERIOR => {
                    let d = run_len(st) as usize;
                    let head_ok = || {
                        p.checked_sub(d).is_some_and(|h| {
                            let hs = self.state(h).load(Ordering::Acquire);
                            d > 0
                                && kind(hs) == KIND_LARGE
                                && run_len(hs) as usize > d
                                && aux(st) == interior_aux(hs, d as u64)
                        })
                    };
                    if head_ok() {
                        self.free_pages().clear(p);
                        continue;
                    }
                    // An orphan, unless a live operation is still building or
                    // tearing down its block (a fresh look: intents change).
                    if covered(p, &process::live_intents(&self.seg, me)) {
                        continue;
                    }
                    // ...or a grow that finished since the head was read above: it
                    // extends the head before it clears its intent, so a look at the
                    // head after the intents sees the new length.
                    if head_ok() {
                        self.free_pages().clear(p);
                        continue;
                    }
                    if self
                        .state(p)
                        .compare_exchange(
                            st,
                            next(st, KIND_FREE, 0, 0),
                            Ordering::AcqRel,
                            Ordering::Relaxed,
                        )
                        .is_ok()
                    {
                        self.free_pages().set(p);
                        r.pages += 1;
                    }
                }
                _ => {}
            }
        }
    }

    /// Finishes or rolls back one operation a dead handle had in flight. Returns the
    /// pages it returned, or `None` if a live operation is working on the same pages
    /// (the record stays parked for a later pass).
    pub(super) fn finish_intent(&self, it: Intent, me: Option<usize>) -> Option<usize> {
        let p = it.page as usize;
        if it.pages == 0 || !self.within(p + it.pages as usize) {
            return Some(0); // a scribbled record: nothing we can trust in it
        }
        let st = self.state(p).load(Ordering::Acquire);
        match it.kind {
            // `SPAN_REPAIRED` set: a repair already decided about block 0 (this
            // record is replayed: that repair died, or runs beside us).
            INTENT_NEW_SPAN if st == it.expected || st == it.expected | SPAN_REPAIRED => {
                let (c, tag) = (class(st), tag_of(st));
                let line = self.line(p);
                if c >= NCLASS {
                    return Some(0);
                }
                // Words it never initialised are still closed: open them (read
                // first, then check nobody live works here, then reopen only those).
                let closed: Vec<usize> = (0..words_of(c))
                    .filter(|&w| line[PM_WORDS + w].load(Ordering::SeqCst) == CLOSED)
                    .collect();
                let w0 = &line[PM_WORDS];
                let v0 = w0.load(Ordering::SeqCst);
                if process::live_intents(&self.seg, me)
                    .iter()
                    .any(|i| i.covers(p))
                {
                    return None;
                }
                // Block 0 is set for the dead caller, which never got it (the intent
                // is cleared before returning), iff the caller stored word 0. Nothing
                // changes that until a repair reopens words, so the first repair
                // decides, and marks the state (same generation: the tag, and so
                // every block, stays valid) before it reopens anything. A replay
                // (that repair died, or runs beside us) sees the mark and never
                // touches block 0, which may have a new holder by then.
                let give_back =
                    st == it.expected && !closed.contains(&0) && v0 >> BITS == tag && v0 & 1 == 1;
                if st == it.expected
                    && self
                        .state(p)
                        .compare_exchange(
                            st,
                            st | SPAN_REPAIRED,
                            Ordering::AcqRel,
                            Ordering::Relaxed,
                        )
                        .is_err()
                {
                    return None; // changed under us: look again in a later pass
                }
                for &w in &closed {
                    let _ = line[PM_WORDS + w].compare_exchange(
                        CLOSED,
                        open_empty(w, c, tag),
                        Ordering::SeqCst,
                        Ordering::Relaxed,
                    );
                }
                if give_back && w0.fetch_and(!1, Ordering::SeqCst) & 1 == 1 {
                    self.count_blocks(c, -1);
                }
                self.avail(c).set(p);
                let now = st | SPAN_REPAIRED;
                Some(usize::from(
                    self.is_empty_span(p, c, tag) && self.release_span(p, now),
                ))
            }
            INTENT_RELEASE
                if kind(st) == KIND_SMALL && next(st, KIND_FREE, 0, 0) == it.expected =>
            {
                let (c, tag) = (class(st), tag_of(st));
                if c >= NCLASS {
                    return Some(0);
                }
                let line = self.line(p);
                let closed: Vec<usize> = (0..words_of(c))
                    .filter(|&w| line[PM_WORDS + w].load(Ordering::SeqCst) == CLOSED)
                    .collect();
                if process::live_intents(&self.seg, me)
                    .iter()
                    .any(|i| i.covers(p))
                {
                    return None;
                }
                for &w in &closed {
                    let _ = line[PM_WORDS + w].compare_exchange(
                        CLOSED,
                        open_empty(w, c, tag),
                        Ordering::SeqCst,
                        Ordering::Relaxed,
                    );
                }
                Some(usize::from(
                    self.is_empty_span(p, c, tag) && self.release_span(p, st),
                ))
            }
            INTENT_RELEASE if st == it.expected => {
                // Released; only its hint may still say "in use".
                self.free_pages().set(p);
                Some(0)
            }
            INTENT_LARGE if st == it.expected => {
                Some(self.undo_large(p, it.pages as usize, it.expected))
            }
            // A grow's interior pages past the head's length are orphans that the
            // sweep frees; every other record names a step that never happened.
            _ => Some(0),
        }
    }
}
