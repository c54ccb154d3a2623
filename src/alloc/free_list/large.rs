//! Large runs: blocks of whole pages (requests over 2 KiB or with large alignment).
//!
//! Invariants:
//! - A large block is a head page (`KIND_LARGE`, its length in `aux`) followed by
//!   interior pages (`KIND_INTERIOR`) that name their distance to the head and the
//!   low generation bits of the head's state, so a free still walking an old
//!   block's pages never frees a newer block's interior pages.
//! - Claiming a run writes an `INTENT_LARGE` record first, then the head, then the
//!   interiors; growing in place writes `INTENT_GROW`. A dead claimer's run is
//!   rolled back by repair; interior pages whose head is gone are freed by the
//!   repair sweep.
//! - Freeing is one CAS on the head (one of two racing frees wins); interior pages
//!   are then freed page by page, by the freer or by any repair pass.

use super::*;

impl FreeListAllocator {
    pub(super) fn alloc_large(&self, size: usize) -> Result<Offset, AllocError> {
        let n = (size as u64).div_ceil(PAGE);
        // A run's length must fit its 24-bit field.
        let max = (self.pages as u64).min(MAX_PAGES - 1);
        if n > max {
            return Err(AllocError::TooLarge {
                requested: size as u64,
                max: max * PAGE,
            });
        }
        let n = n as usize;
        let me = self.my_slot()?;
        match self.try_alloc_large(size, n, me) {
            Err(AllocError::OutOfMemory { .. }) => {
                self.out_of_memory(|| self.try_alloc_large(size, n, me))
            }
            r => r,
        }
    }

    /// The highest run of `n` free pages below page `limit` (a snapshot of the
    /// free-page bits): large blocks are placed from the top of the committed pages
    /// down, small spans from the bottom up, so the free pages stay in one run in
    /// between. Visits at most 1024 free runs, each in O(1) through the summary
    /// levels plus O(n / 64) to measure it.
    fn find_run(&self, n: usize, limit: usize) -> Option<usize> {
        let free = self.free_pages();
        let mut limit = limit;
        for _ in 0..1024 {
            let e = free.last_below(limit)? + 1;
            let run = free.run_down(e, n);
            if run >= n {
                return Some(e - n);
            }
            limit = e - run;
        }
        None
    }

    pub(super) fn try_alloc_large(
        &self,
        size: usize,
        n: usize,
        me: usize,
    ) -> Result<Offset, AllocError> {
        let mut grows = GROW_ROUNDS;
        for _ in 0..256 {
            // Fetched each round: its leaf level ends at the pages committed now.
            let free = self.free_pages();
            let Some(s) = self.find_run(n, self.refresh()) else {
                // Commit more: what the free run at the top lacks (a few times at
                // most: other processes may commit and take pages meanwhile).
                let top = self.committed();
                let t = free.run_down(top, n);
                grows = grows.saturating_sub(1);
                if grows == 0 || !self.grow(n - t) {
                    break;
                }
                if grows < GROW_ROUNDS - 1 {
                    // Lost a race: let the process that grew list its pages.
                    std::thread::yield_now();
                }
                continue;
            };
            if !free.claim_run(s, n) {
                continue;
            }
            let head = self.state(s).load(Ordering::Acquire);
            if kind(head) != KIND_FREE {
                self.unhint_free_pages(s, n);
                continue;
            }
            let new_head = next(head, KIND_LARGE, 0, run_aux(me, n as u64));
            let guard = match self.intend(Intent {
                kind: INTENT_LARGE,
                page: s as u32,
                pages: n as u32,
                expected: new_head,
            }) {
                Ok(g) => g,
                Err(e) => {
                    // No record, no step taken: the run goes back to the free hints.
                    self.unhint_free_pages(s, n);
                    return Err(e);
                }
            };
            crate::fail_point!("fl.large.intent");
            if self
                .state(s)
                .compare_exchange(head, new_head, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
            {
                self.unhint_free_pages(s, n);
                continue;
            }
            crate::fail_point!("fl.large.head");
            if self.claim_interiors(s, 1, n, new_head) {
                drop(guard);
                self.count_large(n as i64, 1);
                return Ok(Offset::new(self.page_offset(s)));
            }
            self.undo_large(s, n, new_head);
            drop(guard);
        }
        Err(AllocError::OutOfMemory {
            requested: size as u64,
            available: 0, // filled in once, by the caller that gives up
        })
    }

    /// Marks pages `s + from .. s + to` interior pages of the block whose head (at
    /// `s`) has state `head`; on a page that is not free, undoes its own marks and
    /// returns false.
    pub(super) fn claim_interiors(&self, s: usize, from: usize, to: usize, head: u64) -> bool {
        for d in from..to {
            let ps = self.state(s + d);
            let st = ps.load(Ordering::Acquire);
            if kind(st) != KIND_FREE
                || ps
                    .compare_exchange(
                        st,
                        next(st, KIND_INTERIOR, 0, interior_aux(head, d as u64)),
                        Ordering::AcqRel,
                        Ordering::Relaxed,
                    )
                    .is_err()
            {
                self.free_interiors(s, from, d, head);
                return false;
            }
            crate::fail_point!("fl.large.interior");
        }
        true
    }

    /// Frees the interior pages `s + from .. s + to` of the block whose head had
    /// state `head` (they point at `s` with that head's generation); clears their
    /// page hints.
    pub(super) fn free_interiors(&self, s: usize, from: usize, to: usize, head: u64) -> usize {
        let mut n = 0;
        for d in from..to.min(self.committed().saturating_sub(s)) {
            let ps = self.state(s + d);
            let st = ps.load(Ordering::Acquire);
            if kind(st) != KIND_INTERIOR || aux(st) != interior_aux(head, d as u64) {
                continue;
            }
            if ps
                .compare_exchange(
                    st,
                    next(st, KIND_FREE, 0, 0),
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok()
            {
                self.free_pages().set(s + d);
                n += 1;
            }
        }
        n
    }

    /// Rolls back a large claim whose head state is `head` (as installed): frees its
    /// interior pages, then the head.
    pub(super) fn undo_large(&self, s: usize, n: usize, head: u64) -> usize {
        let mut released = self.free_interiors(s, 1, n, head);
        if self
            .state(s)
            .compare_exchange(
                head,
                next(head, KIND_FREE, 0, 0),
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .is_ok()
        {
            self.free_pages().set(s);
            released += 1;
        }
        released
    }

    /// Gives the free pages among `s..s+n` their free bits back (after a failed
    /// claim cleared them).
    pub(super) fn unhint_free_pages(&self, s: usize, n: usize) {
        for p in s..(s + n).min(self.committed()) {
            if kind(self.state(p).load(Ordering::Acquire)) == KIND_FREE {
                self.free_pages().set(p);
            }
        }
    }

    /// Extends the large block at page `s` over the free pages right after it.
    pub(super) fn grow_large_in_place(&self, s: usize, new_size: usize) -> bool {
        let head = self.state(s);
        let st = head.load(Ordering::Acquire);
        let n = run_len(st) as usize;
        if kind(st) != KIND_LARGE || n == 0 || !self.within(s + n) {
            return false;
        }
        let want = (new_size as u64).div_ceil(PAGE) as usize;
        if want <= n {
            return true;
        }
        // A block at the top of the committed pages grows into new ones.
        let top = self.committed();
        if s + want > top && s + n >= top && s + want <= self.pages {
            self.grow(s + want - top);
        }
        if !self.within(s + want) || !self.free_pages().claim_run(s + n, want - n) {
            return false;
        }
        let grown = (st & !0xFF_FFFF) | want as u64;
        let Ok(guard) = self.intend(Intent {
            kind: INTENT_GROW,
            page: (s + n) as u32,
            pages: (want - n) as u32,
            expected: grown,
        }) else {
            self.unhint_free_pages(s + n, want - n);
            return false;
        };
        crate::fail_point!("fl.grow.intent");
        if !self.claim_interiors(s, n, want, st) {
            self.unhint_free_pages(s + n, want - n);
            return false;
        }
        crate::fail_point!("fl.grow.interiors");
        // The head keeps its generation: handles to the block stay valid.
        if head
            .compare_exchange(st, grown, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            self.free_interiors(s, n, want, st);
            return false;
        }
        self.count_large((want - n) as i64, 0);
        drop(guard);
        true
    }

    pub(super) fn free_large(&self, s: usize, st: u64, offset: u64) -> Result<(), FreeError> {
        let n = run_len(st) as usize;
        if n == 0 || !self.within(s + n) {
            return Err(FreeError::Corrupted {
                what: "large block length out of range",
            });
        }
        // Repair keeps its hands off the interior pages until they are freed here
        // (see `INTENT_LARGE_FREE`): however long this free stalls after the head
        // CAS, the interior pages it frees are still this block's.
        let _guard = self
            .member
            .intend(
                &self.seg,
                Intent {
                    kind: INTENT_LARGE_FREE,
                    page: s as u32,
                    pages: n as u32,
                    expected: next(st, KIND_FREE, 0, 0),
                },
            )
            .map_err(|e| FreeError::Registry(Box::new(e)))?;
        // Only one of two racing frees wins this CAS: the other sees a double free.
        if self
            .state(s)
            .compare_exchange(
                st,
                next(st, KIND_FREE, 0, 0),
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .is_err()
        {
            return Err(FreeError::DoubleFree { offset });
        }
        crate::fail_point!("fl.large_free.head");
        self.count_large(-(n as i64), -1);
        // Interior pages now point at a free head: any repair pass may free them
        // too (each page's CAS decides who), so a crash here loses nothing.
        self.free_interiors(s, 1, n, st);
        self.free_pages().set(s);
        Ok(())
    }
}
