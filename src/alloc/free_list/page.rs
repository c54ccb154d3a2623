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
//!   block words; every index into the lines is checked against `pages`.

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

pub(super) const LINE: u64 = 8; // words per page line: state, 6 block words, spare
pub(super) const PM_STATE: usize = 0;
pub(super) const PM_WORDS: usize = 1;

impl FreeListAllocator {
    /// Page `p`'s metadata line (`None` past the last page).
    #[inline]
    pub(super) fn page_line(&self, p: usize) -> Option<&[AtomicU64]> {
        if p >= self.pages {
            return None;
        }
        let start = self.lines_base + p * LINE as usize;
        self.meta().get(start..start + LINE as usize)
    }

    #[inline]
    pub(super) fn line(&self, p: usize) -> &[AtomicU64] {
        // Callers pass p < pages; the region was sized for all pages at open.
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

    pub(super) fn set_bit(bits: &[AtomicU64], p: usize) {
        let (w, m) = (p / 64, 1u64 << (p % 64));
        if bits[w].load(Ordering::SeqCst) & m == 0 {
            bits[w].fetch_or(m, Ordering::SeqCst);
        }
    }

    pub(super) fn clear_bit(bits: &[AtomicU64], p: usize) {
        let (w, m) = (p / 64, 1u64 << (p % 64));
        if bits[w].load(Ordering::Relaxed) & m != 0 {
            bits[w].fetch_and(!m, Ordering::SeqCst);
        }
    }

    /// Claims a page whose hint is clear; returns it with its (free) state.
    pub(super) fn claim_free_page(&self) -> Result<Option<(usize, u64)>, AllocError> {
        let hints = self.page_hints();
        for _ in 0..64 {
            let start = self.hint.load(Ordering::Relaxed) / 64 % hints.len();
            let Some(p) = bitmap::claim_one(hints, start) else {
                return Ok(None);
            };
            if p >= self.pages {
                return Err(AllocError::Corrupted {
                    what: "page hints mark pages past the end as free",
                });
            }
            self.hint.store(p, Ordering::Relaxed);
            let st = self.state(p).load(Ordering::Acquire);
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
    /// `p < self.pages`.
    #[inline(always)]
    pub(super) unsafe fn line_unchecked(&self, p: usize) -> &[AtomicU64] {
        debug_assert!(p < self.pages);
        let start = self.lines_base + p * LINE as usize;
        // SAFETY: the lines of all `pages` pages lie in the metadata region
        // (`meta_words_for`, checked at open, counts them), so for `p < pages` the
        // `LINE` words at `lines_base + p * LINE` are in bounds of `meta()`.
        unsafe { self.meta().get_unchecked(start..start + LINE as usize) }
    }
}
