//! Page states: the state word of each 4 KiB page and the page pool.
//!
//! Invariants:
//! - A page's **state word** `[gen: 24 | kind: 3 | class: 5 | aux: 32]` is the sole
//!   authority on what the page is: free, a span of small blocks, the head of a
//!   large block, or an interior page of one.
//! - Every change of a state word is a compare-and-swap that increments its
//!   generation ([`next`]), so a step that read an old state cannot act on a newer
//!   one. The one exception is `SPAN_REPAIRED` (see `repair.rs`), set in place.
//! - The page hints (one bit per page, set = probably in use) are hints only: a
//!   stale bit costs a retry, and repair rebuilds them from the state words.
//! - Page `p`'s metadata line is `LINE` words: the state word, then the span's
//!   block words; every index into the lines is checked against the pages this
//!   process has committed (`committed()`), never only against the maximum.
//! - The free-page bitmap: bit set = page (probably) free. Small spans take the
//!   lowest free page, large runs the highest that fits (see `large.rs`).
//! - Growth: the data pages and their lines are committed (`fallocate`) first, then
//!   the shared committed count moves (one CAS: one grower wins), then the new
//!   pages' free bits are set. A crash before the CAS commits nothing anyone uses; a
//!   crash after it leaves free pages without their bits, which the repair sweep
//!   sets. A page, its line and its words in the leaf levels of the summary bitmaps
//!   are never touched before this process committed them itself (`refresh`; the
//!   bitmaps' leaf levels are cut at `committed()`), so a scribbled count cannot
//!   make it fault. Only the fixed part of the metadata (head, the summary levels
//!   above the leaves, caches, counters) is committed at create: about 1.3 MiB at
//!   the 64 GiB maximum.

use super::*;

pub(super) const KIND_FREE: u64 = 0;
pub(super) const KIND_SMALL: u64 = 1;
pub(super) const KIND_LARGE: u64 = 2;
pub(super) const KIND_INTERIOR: u64 = 3;

#[inline]
pub(super) fn kind(st: u64) -> u64 {
    (st >> 37) & 7
}
#[inline]
pub(super) fn class(st: u64) -> usize {
    ((st >> 32) & 31) as usize
}
#[inline]
pub(super) fn aux(st: u64) -> u64 {
    st & 0xFFFF_FFFF
}
/// The state that follows `st`: next generation, the given contents.
#[inline]
pub(super) fn next(st: u64, kind: u64, class: usize, aux: u64) -> u64 {
    ((((st >> 40) + 1) & 0xFF_FFFF) << 40) | (kind << 37) | ((class as u64) << 32) | aux
}
/// Large-block `aux`: the installing slot and the length (head) or distance (interior).
#[inline]
pub(super) fn run_aux(slot: usize, n: u64) -> u64 {
    ((slot as u64) << 24) | (n & 0xFF_FFFF)
}
/// Interior-page `aux`: the low generation bits of its head's state and the
/// distance to the head. The generation tells this block's interior pages from
/// those of an earlier block at the same head page (a `free` still walking the
/// old block's pages must not free the new one's).
#[inline]
pub(super) fn interior_aux(head: u64, d: u64) -> u64 {
    (((head >> 40) & 0xFF) << 24) | (d & 0xFF_FFFF)
}
#[inline]
pub(super) fn run_len(st: u64) -> u64 {
    aux(st) & 0xFF_FFFF
}

/// Rounds an allocation may spend growing the pool (or waiting, yielding, for a
/// process that grew it to list the new pages) before it reports out of memory.
pub(super) const GROW_ROUNDS: u32 = 32;

pub(super) const LINE: u64 = 8; // words per page line: state, 6 block words, spare
pub(super) const PM_STATE: usize = 0;
pub(super) const PM_WORDS: usize = 1;

impl FreeListAllocator {
    /// The free-page summary bitmap: bit set = page (probably) free.
    #[inline]
    pub(super) fn free_pages(&self) -> Summary<'_> {
        self.summary_at(0)
    }

    /// Span hints of class `c`: bit set = page is (probably) a span of `c` with a free block.
    #[inline]
    pub(super) fn avail(&self, c: usize) -> Summary<'_> {
        self.summary_at(1 + c)
    }

    /// Summary bitmap `k`, its leaf level cut at the pages this process committed
    /// (the leaf words past them are committed with their pages, see `commit_pages`).
    #[inline]
    fn summary_at(&self, k: usize) -> Summary<'_> {
        let start = HEAD_WORDS as usize + k * self.shape.words;
        Summary::new(&self.meta()[start..], &self.shape)
            .expect("summary bitmaps sized at open")
            .leaf_upto(self.committed().div_ceil(64))
    }

    /// Pages committed as far as this process has checked (see `local`).
    #[inline(always)]
    pub(super) fn committed(&self) -> usize {
        self.local.load(Ordering::Acquire)
    }

    /// Page `p`'s metadata line (`None` past the committed pages).
    #[inline]
    pub(super) fn page_line(&self, p: usize) -> Option<&[AtomicU64]> {
        if p >= self.committed() && p >= self.refresh() {
            return None;
        }
        let start = self.lines_base + p * LINE as usize;
        self.meta().get(start..start + LINE as usize)
    }

    #[inline]
    pub(super) fn line(&self, p: usize) -> &[AtomicU64] {
        // Callers pass p < committed(); the region was sized for all pages at open.
        self.page_line(p).expect("page index checked by caller")
    }

    #[inline]
    pub(super) fn state(&self, p: usize) -> &AtomicU64 {
        &self.line(p)[PM_STATE]
    }

    #[inline]
    pub(super) fn page_offset(&self, p: usize) -> u64 {
        self.seg.layout().data_offset + ((p as u64) << PAGE_SHIFT)
    }

    /// Commits (fallocates) the data pages `from..to`, their page lines and their
    /// words in the leaf level of every summary bitmap.
    pub(super) fn commit_pages(&self, from: usize, to: usize) -> Result<(), SegmentError> {
        if from >= to {
            return Ok(());
        }
        let l = self.seg.layout();
        let (w0, w1) = (from / 64, to.div_ceil(64));
        for k in 0..=NCLASS {
            let leaf = HEAD_WORDS as usize + k * self.shape.words + self.shape.leaf_start();
            self.seg
                .commit(l.meta_offset + (leaf + w0) as u64 * 8, (w1 - w0) as u64 * 8)?;
        }
        let line0 = l.meta_offset + self.lines_base as u64 * 8;
        self.seg.commit(
            line0 + from as u64 * LINE * 8,
            (to - from) as u64 * LINE * 8,
        )?;
        self.seg
            .commit(self.page_offset(from), (to - from) as u64 * PAGE)
    }

    /// Reads the shared committed count and commits, in this process, what it has
    /// not checked yet (cheap where the pages are already backed). Returns the pages
    /// now usable here. A scribbled count is capped at the maximum; a count the file
    /// system cannot back leaves `local` where it was.
    #[cold]
    pub(super) fn refresh(&self) -> usize {
        let local = self.committed();
        let shared = (self.meta()[H_COMMITTED].load(Ordering::Acquire) as usize).min(self.pages);
        if shared <= local {
            return local;
        }
        if self.commit_pages(local, shared).is_err() {
            return local;
        }
        self.local.fetch_max(shared, Ordering::AcqRel);
        self.seg.note_committed(shared as u64 * PAGE);
        self.committed()
    }

    /// Commits at least `need` more pages (at least `GROW_CHUNK`, up to the
    /// maximum) and adds them to the page pool. Returns false at the maximum or when
    /// the file system cannot back them (the caller reports out-of-memory).
    pub(super) fn grow(&self, need: usize) -> bool {
        let head = &self.meta()[H_COMMITTED];
        for _ in 0..64 {
            let w = self.refresh();
            if (head.load(Ordering::Acquire) as usize).min(self.pages) > w {
                continue; // committed elsewhere but not backed here: retry refresh
            }
            // Chunks of 1 MiB (less in small segments, so they grow in steps too).
            let chunk = (self.pages / 16).clamp(64, GROW_CHUNK as usize);
            let want = need.max(chunk).next_multiple_of(64);
            let target = (w + want).min(self.pages);
            if target <= w || target < w + need {
                return false;
            }
            // A file system short of a whole chunk may still back what is needed.
            let target = if self.commit_pages(w, target).is_ok() {
                target
            } else if w + need < target && self.commit_pages(w, w + need).is_ok() {
                w + need
            } else {
                return false;
            };
            crate::fail_point!("fl.commit.done");
            match head.compare_exchange(
                w as u64,
                target as u64,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    self.local.fetch_max(target, Ordering::AcqRel);
                    self.seg.note_committed(target as u64 * PAGE);
                    crate::fail_point!("fl.commit.published");
                    // A crash before this leaves free pages without their bits:
                    // the repair sweep sets them again.
                    self.free_pages().set_range(w, target);
                    return true;
                }
                // Another process grew meanwhile: its pages are in the pool now.
                Err(_) => return true,
            }
        }
        false
    }

    /// Claims the lowest free page (small spans pack from the low end of the
    /// region); commits more pages when the pool is empty. Returns it with its
    /// (free) state.
    pub(super) fn claim_free_page(&self) -> Result<Option<(usize, u64)>, AllocError> {
        let mut grows = 0;
        for _ in 0..64 {
            // Fetched each round: its leaf level ends at the pages committed now.
            let Some(p) = self.free_pages().claim_first() else {
                // Another process may have committed pages and not listed them yet
                // (it sets their free bits after publishing the count, and may be
                // preempted in between): up to `GROW_ROUNDS` rounds, yielding to it,
                // then out of memory.
                if grows < GROW_ROUNDS && self.grow(1) {
                    grows += 1;
                    if grows > 1 {
                        std::thread::yield_now();
                    }
                    continue;
                }
                return Ok(None);
            };
            let Some(line) = self.page_line(p) else {
                return Err(AllocError::Corrupted {
                    what: "free-page bits mark uncommitted pages as free",
                });
            };
            let st = line[PM_STATE].load(Ordering::Acquire);
            if kind(st) == KIND_FREE {
                return Ok(Some((p, st)));
            }
            // A stale hint: the page is in use, and its bit is now right.
        }
        Ok(None)
    }

    /// Page `p`'s metadata line, without the bounds checks of `page_line`.
    ///
    /// # Safety
    /// `p < self.committed()`.
    #[inline(always)]
    pub(super) unsafe fn line_unchecked(&self, p: usize) -> &[AtomicU64] {
        debug_assert!(p < self.pages);
        let start = self.lines_base + p * LINE as usize;
        // SAFETY: the lines of all `pages` pages lie in the metadata region
        // (`meta_words_for`, checked at open, counts them), so for
        // `p < committed() <= pages` the `LINE` words at `lines_base + p * LINE` are
        // in bounds of `meta()`, and committed in this process.
        unsafe { self.meta().get_unchecked(start..start + LINE as usize) }
    }
}
