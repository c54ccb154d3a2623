//! [`Inspect`] for the free-list allocator: the consistency walk over the page
//! lines, the caches and the registry, the largest free block, block sizes.

use std::collections::HashSet;

use super::*;
use crate::alloc::inspect::{dead_slot, registry_problems, Consistency, Inspect};
use crate::process::RegistryInfo;

impl FreeListAllocator {
    /// Where page `p`'s state word lies in the segment (bytes from its start): for
    /// tools and tests that damage the metadata on purpose, without copying the
    /// layout arithmetic.
    #[doc(hidden)]
    pub fn page_state_offset(&self, p: usize) -> u64 {
        self.seg.layout().meta_offset + ((self.lines_base + p * LINE as usize) * 8) as u64
    }

    /// Pages covered by an intent record of any slot, live or dead, or parked.
    fn pages_in_flight(&self) -> HashSet<usize> {
        let reg = process::registry_info(&self.seg, self.member.current());
        reg.slots
            .iter()
            .flat_map(|s| s.intents.iter())
            .chain(reg.orphan_intents.iter())
            .flat_map(|i| i.page as usize..(i.page as usize).saturating_add(i.pages as usize))
            .collect()
    }

    fn check_page(&self, p: usize, out: &mut Consistency, heads: &mut Vec<(usize, u64)>) {
        let line = self.line(p);
        let st = line[PM_STATE].load(Ordering::Acquire);
        let mut bad = |what: String| out.problems.push(format!("page {p}: {what}"));
        match kind(st) {
            KIND_FREE => {}
            KIND_SMALL => {
                let c = class(st);
                if c >= NCLASS {
                    return bad(format!("span of unknown class {c}"));
                }
                let tag = tag_of(st);
                for w in 0..SPAN_WORDS {
                    let v = line[PM_WORDS + w].load(Ordering::Acquire);
                    if v == CLOSED {
                        continue;
                    }
                    if w >= words_of(c) {
                        bad(format!("block word {w} is open past the class's blocks"));
                    } else if v >> BITS != tag {
                        bad(format!(
                            "block word {w} has tag {:#x}, its span has {tag:#x}",
                            v >> BITS
                        ));
                    } else {
                        let pad = open_empty(w, c, tag) & BITS_MASK;
                        if v & pad != pad {
                            bad(format!("block word {w} has a bit past the last block free"));
                        }
                    }
                }
            }
            KIND_LARGE => {
                let n = run_len(st);
                if n == 0 || p as u64 + n > self.pages as u64 {
                    return bad(format!(
                        "large block of {n} pages runs past the data region"
                    ));
                }
                heads.push((p, st));
            }
            KIND_INTERIOR => {} // checked from its head
            k => bad(format!("unknown page kind {k}")),
        }
    }

    fn check_caches(&self, out: &mut Consistency) {
        if self.depth == 0 {
            return;
        }
        let mut seen = HashSet::new();
        for slot in 0..process::SLOTS {
            if dead_slot(&self.seg, slot, self.member.current()) {
                // Its reclaimer returns it; a handle killed inside a flush leaves
                // entries whose bits are already clear (see the module docs of the
                // free list, "Crash safety"): not an inconsistency.
                out.in_flight += self.cached_in(slot);
                continue;
            }
            for (c, &size) in SIZE_CLASSES.iter().enumerate() {
                for off in self.mag(slot, c).entries() {
                    out.cached_blocks += 1;
                    let mut bad = |what: &str| {
                        out.problems.push(format!(
                            "cache of slot {slot}, class {c}: block {off:#x} {what}"
                        ))
                    };
                    if !self.in_data(off) {
                        bad("is outside the data region");
                        continue;
                    }
                    if !seen.insert(off) {
                        bad("is cached twice");
                        continue;
                    }
                    let (p, within) = self.locate(off - self.data_off);
                    let st = self.state(p).load(Ordering::Acquire);
                    if kind(st) != KIND_SMALL || class(st) != c {
                        bad("is not in a span of its class");
                        continue;
                    }
                    if within % u64::from(size) != 0 {
                        bad("is not the start of a block");
                        continue;
                    }
                    let i = block_index(within, c);
                    let v = self.line(p)[PM_WORDS + (i / BITS) as usize].load(Ordering::Acquire);
                    if v >> BITS != tag_of(st) || v & (1 << (i % BITS)) == 0 {
                        bad("is free in its span's bitmap");
                    }
                    // (Its cache mark is not checked: a push writes it after the
                    // count, so a handle killed in between leaves a cached block
                    // without one, which is harmless.)
                }
            }
        }
    }
}

impl Inspect for FreeListAllocator {
    fn registry(&self) -> RegistryInfo {
        process::registry_info(&self.seg, self.member.current())
    }

    /// The longest run of free pages: set in the free-page summary bitmap (what a
    /// large allocation searches), or not committed yet (growth commits them on
    /// demand). A repair pass, which runs before an allocation reports
    /// out-of-memory, may find more (stale hints, empty spans). Reads one bit per
    /// page, so it stays fast at 16 GiB. With no free page: the largest size class
    /// with a free block.
    fn largest_free_block(&self) -> u64 {
        let (mut best, mut run) = (0u64, 0u64);
        let committed = self.committed().min(self.pages) as u64;
        let leaf = self.free_pages().leaf();
        let mut left = committed;
        for w in leaf.iter().take(committed.div_ceil(64) as usize) {
            let bits = left.min(64);
            left -= bits;
            // Set bit = free; bits past the committed pages count as not free here.
            let v = w.load(Ordering::Acquire) & if bits == 64 { !0 } else { (1u64 << bits) - 1 };
            if v == !0 {
                run += 64;
            } else if v == 0 {
                best = best.max(run);
                run = 0;
            } else {
                for b in 0..bits {
                    if v & (1 << b) != 0 {
                        run += 1;
                        best = best.max(run);
                    } else {
                        run = 0;
                    }
                }
            }
            best = best.max(run);
        }
        // Pages not committed yet continue the run that ends at the committed edge.
        best = best.max(run + (self.pages as u64 - committed));
        if best > 0 {
            return best * PAGE;
        }
        self.stats()
            .classes
            .iter()
            .filter(|c| c.free_blocks > 0)
            .map(|c| c.block_size)
            .max()
            .unwrap_or(0)
    }

    fn block_size(&self, offset: Offset) -> Option<u64> {
        let rel = data_relative(&self.seg, offset, 0).ok()?;
        let (p, within) = self.locate(rel);
        let st = self.state(p).load(Ordering::Acquire);
        match kind(st) {
            KIND_LARGE if within == 0 => Some(run_len(st) * PAGE),
            KIND_SMALL if class(st) < NCLASS => {
                let c = class(st);
                let size = u64::from(SIZE_CLASSES[c]);
                if within % size != 0 || within / size >= cap_of(c) {
                    return None;
                }
                let i = block_index(within, c);
                let v = self.line(p)[PM_WORDS + (i / BITS) as usize].load(Ordering::Acquire);
                (v >> BITS == tag_of(st) && v & (1 << (i % BITS)) != 0).then_some(size)
            }
            _ => None,
        }
    }

    fn check(&self) -> Consistency {
        let mut out = Consistency::default();
        let in_flight = self.pages_in_flight();
        let mut heads = Vec::new();
        // Pages past the committed ones have no metadata line yet (growth writes it).
        let pages = self.committed().min(self.pages);
        for p in 0..pages {
            out.checked += 1;
            if in_flight.contains(&p) {
                out.in_flight += 1;
                continue;
            }
            self.check_page(p, &mut out, &mut heads);
        }
        // Every interior page belongs to exactly one large block's head.
        let mut owned = vec![false; pages];
        for (h, st) in heads {
            let end = h + run_len(st) as usize;
            if end > pages {
                out.problems
                    .push(format!("page {h}: a large block that runs past the committed pages"));
            }
            for (q, owned) in owned.iter_mut().enumerate().take(end).skip(h + 1) {
                if in_flight.contains(&q) {
                    continue;
                }
                let s = self.state(q).load(Ordering::Acquire);
                if kind(s) != KIND_INTERIOR || aux(s) != interior_aux(st, (q - h) as u64) {
                    out.problems.push(format!(
                        "page {q}: inside the large block at page {h}, but not its interior page"
                    ));
                }
                if std::mem::replace(owned, true) {
                    out.problems
                        .push(format!("page {q}: inside two large blocks"));
                }
            }
        }
        for (q, owned) in owned.iter().enumerate() {
            if !owned
                && !in_flight.contains(&q)
                && kind(self.state(q).load(Ordering::Acquire)) == KIND_INTERIOR
            {
                // A free of a large block that died half-way leaves these; the
                // repair's global rules return them (see the free list's docs).
                out.in_flight += 1;
            }
        }
        // Free-page summary: no bit past the last page is set.
        let tail = self.pages % 64;
        if tail != 0 {
            if let Some(w) = self.free_pages().leaf().get(self.pages / 64) {
                if w.load(Ordering::Acquire) & !((1u64 << tail) - 1) != 0 {
                    out.problems
                        .push("free-page summary: a bit past the last page is set".to_owned());
                }
            }
        }
        self.check_caches(&mut out);
        registry_problems(&self.seg, &mut out);
        // The numbers `stats()` reports against a count from the metadata (when
        // nothing is in flight: otherwise they may differ by what is moving).
        if out.in_flight == 0 && self.registry().dead() == 0 {
            let st = self.stats();
            let exact = self.audit();
            let (blocks, bytes, cached) = (
                exact.live_blocks.unwrap_or(0),
                exact.live_bytes,
                exact.cached_bytes,
            );
            let found = (st.live_blocks.unwrap_or(0), st.live_bytes, st.cached_bytes);
            if found != (blocks, bytes, cached) {
                out.counter_drift = Some(format!(
                    "stats() says {found:?} (live blocks, live bytes, cached bytes), \
                     the metadata {:?}",
                    (blocks, bytes, cached)
                ));
            }
        }
        out
    }

    fn remove_if_unattached(&self) -> Result<bool, SegmentError> {
        self.seg.remove_if_unattached(self.member.current())
    }
}
