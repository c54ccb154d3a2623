//! A three-level summary bitmap: 1 = "this item probably has the property" (a free
//! page, a span with a free block). Finding the lowest or highest set bit costs at
//! most a few word loads per level, whatever the number of bits (up to 2^24).
//!
//! Invariants:
//! - Every level is a **hint**. A bit of level `k + 1` should be set whenever word
//!   `i` of level `k` is not zero; a stale set bit costs a retry (and is cleared on
//!   the way), a stale clear bit can only come from a scribbling peer and is
//!   repaired by whoever sets a bit of that word again (or by the allocator's repair).
//! - Setting: the leaf bit first, then each summary bit (SeqCst). Clearing a summary
//!   bit: clear it, then re-read the child word and set the bit again if the child
//!   is not zero. With SeqCst on both sides, a concurrent setter and clearer never
//!   leave a non-zero child behind a clear summary bit.
//! - Every search is bounded (a step budget): a peer that rewrites words forever
//!   makes a search fail, never hang. Indices found are checked against `n`.

use std::sync::atomic::{AtomicU64, Ordering};

/// Words of each level for `n` bits: `(top, mid, leaf)`.
pub fn level_words(n: u64) -> (u64, u64, u64) {
    let leaf = n.div_ceil(64).max(1);
    let mid = leaf.div_ceil(64);
    let top = mid.div_ceil(64);
    (top, mid, leaf)
}

/// Words one summary bitmap of `n` bits takes (each level rounded up to `round` words).
pub fn total_words(n: u64, round: u64) -> u64 {
    let (t, m, l) = level_words(n);
    t.div_ceil(round) * round + m.div_ceil(round) * round + l.div_ceil(round) * round
}

/// Where the levels of a summary bitmap of `n` bits lie, computed once.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    n: usize,
    /// `(start, words)` of the top, middle and leaf levels.
    at: [(usize, usize); 3],
    /// Words of the whole bitmap ([`total_words`]).
    pub words: usize,
}

impl Shape {
    /// Where the leaf level starts, in words from the bitmap's start (the top and
    /// middle levels come first).
    pub fn leaf_start(&self) -> usize {
        self.at[2].0
    }

    /// The shape of a summary bitmap of `n` bits, each level rounded up to `round` words.
    pub fn new(n: usize, round: u64) -> Shape {
        let (t, m, l) = level_words(n as u64);
        let r = |x: u64| (x.div_ceil(round) * round) as usize;
        Shape {
            n,
            at: [
                (0, t as usize),
                (r(t), m as usize),
                (r(t) + r(m), l as usize),
            ],
            words: total_words(n as u64, round) as usize,
        }
    }
}

/// A summary bitmap over three slices of a shared metadata region.
#[derive(Clone, Copy)]
pub struct Summary<'a> {
    /// `levels[0]` is the leaf (one bit per item), `levels[2]` the top.
    levels: [&'a [AtomicU64]; 3],
    n: usize,
}

/// Steps a search may take (each step is one word load).
const BUDGET: u32 = 4096;

impl<'a> Summary<'a> {
    /// The summary bitmap of `shape` whose [`total_words`] words start `words`.
    /// `None` if `words` is too short.
    #[inline]
    pub fn new(words: &'a [AtomicU64], shape: &Shape) -> Option<Self> {
        let [t, m, l] = shape.at;
        Some(Summary {
            levels: [
                words.get(l.0..l.0 + l.1)?,
                words.get(m.0..m.0 + m.1)?,
                words.get(t.0..t.0 + t.1)?,
            ],
            n: shape.n,
        })
    }

    /// This bitmap with its leaf level cut to its first `words` words: the rest is
    /// never loaded nor stored (it may not be backed by the file system yet): the
    /// bitmap then has `words * 64` bits at most.
    #[inline]
    pub fn leaf_upto(mut self, words: usize) -> Self {
        let leaf = self.levels[0];
        self.levels[0] = &leaf[..words.min(leaf.len())];
        self.n = self.n.min(self.levels[0].len() * 64);
        self
    }

    /// The leaf level (one bit per item), for tools that walk it.
    #[inline]
    pub fn leaf(&self) -> &'a [AtomicU64] {
        self.levels[0]
    }

    fn set_at(&self, lvl: usize, i: usize) {
        let Some(word) = self.levels[lvl].get(i / 64) else {
            return;
        };
        let m = 1u64 << (i % 64);
        if word.load(Ordering::SeqCst) & m == 0 {
            word.fetch_or(m, Ordering::SeqCst);
        }
    }

    /// Sets bit `i` and its summary bits.
    #[inline]
    pub fn set(&self, i: usize) {
        if i >= self.n {
            return;
        }
        self.set_at(0, i);
        self.set_at(1, i / 64);
        self.set_at(2, i / 4096);
    }

    /// Sets bits `from..to` (word-wise) and their summary bits.
    pub fn set_range(&self, from: usize, to: usize) {
        let to = to.min(self.n);
        let mut i = from;
        while i < to {
            let w = i / 64;
            let hi = (to - w * 64).min(64) as u32;
            let m = super::bitmap::mask((i % 64) as u32, hi);
            if let Some(word) = self.levels[0].get(w) {
                word.fetch_or(m, Ordering::SeqCst);
            }
            self.set_at(1, w);
            self.set_at(2, w / 64);
            i = (w + 1) * 64;
        }
    }

    /// Clears summary bit `i` of level `lvl` (>= 1) if child word `i` of level
    /// `lvl - 1` is zero, then re-checks the child (see the module invariants).
    fn fix_up(&self, lvl: usize, i: usize) {
        if lvl > 2 {
            return;
        }
        let (Some(child), Some(word)) = (self.levels[lvl - 1].get(i), self.levels[lvl].get(i / 64))
        else {
            return;
        };
        let m = 1u64 << (i % 64);
        if child.load(Ordering::SeqCst) != 0 || word.load(Ordering::SeqCst) & m == 0 {
            return;
        }
        let now = word.fetch_and(!m, Ordering::SeqCst) & !m;
        if child.load(Ordering::SeqCst) != 0 {
            word.fetch_or(m, Ordering::SeqCst);
        } else if now == 0 {
            self.fix_up(lvl + 1, i / 64);
        }
    }

    /// Clears bit `i`; clears its summary bits if its word became zero.
    #[inline]
    pub fn clear(&self, i: usize) {
        let Some(word) = self.levels[0].get(i / 64) else {
            return;
        };
        let m = 1u64 << (i % 64);
        if word.load(Ordering::Relaxed) & m == 0 {
            return;
        }
        if word.fetch_and(!m, Ordering::SeqCst) & !m == 0 {
            self.fix_up(1, i / 64);
        }
    }

    /// Atomically clears bit `i`; true if this call cleared it (it was set).
    pub fn take(&self, i: usize) -> bool {
        let Some(word) = self.levels[0].get(i / 64) else {
            return false;
        };
        let m = 1u64 << (i % 64);
        let prev = word.fetch_and(!m, Ordering::SeqCst);
        if prev & !m == 0 {
            self.fix_up(1, i / 64);
        }
        prev & m != 0
    }

    /// Whether bit `i` is set.
    #[cfg(test)]
    pub fn is_set(&self, i: usize) -> bool {
        self.levels[0]
            .get(i / 64)
            .is_some_and(|w| w.load(Ordering::Acquire) & (1 << (i % 64)) != 0)
    }

    /// Lowest set bit at level `lvl` with index `>= from`.
    fn next_set(&self, lvl: usize, from: usize, budget: &mut u32) -> Option<usize> {
        let bits = self.levels[lvl];
        let end = bits.len() * 64;
        let mut from = from;
        loop {
            if from >= end || *budget == 0 {
                return None;
            }
            *budget -= 1;
            let w = from / 64;
            let v = bits[w].load(Ordering::Acquire) & (!0u64 << (from % 64));
            if v != 0 {
                return Some(w * 64 + v.trailing_zeros() as usize);
            }
            if lvl == 2 {
                from = (w + 1) * 64;
                continue;
            }
            // The next non-zero word after `w`, through the level above.
            let nw = self.next_set(lvl + 1, w + 1, budget)?;
            if bits.get(nw).is_some_and(|x| x.load(Ordering::Acquire) == 0) {
                self.fix_up(lvl + 1, nw); // a stale summary bit
            }
            from = nw * 64;
        }
    }

    /// Highest set bit at level `lvl` with index `< limit`.
    fn prev_set(&self, lvl: usize, limit: usize, budget: &mut u32) -> Option<usize> {
        let bits = self.levels[lvl];
        let mut limit = limit.min(bits.len() * 64);
        loop {
            if limit == 0 || *budget == 0 {
                return None;
            }
            *budget -= 1;
            let i = limit - 1;
            let w = i / 64;
            let v = bits[w].load(Ordering::Acquire) & super::bitmap::mask(0, (i % 64) as u32 + 1);
            if v != 0 {
                return Some(w * 64 + 63 - v.leading_zeros() as usize);
            }
            if lvl == 2 {
                limit = w * 64;
                continue;
            }
            let pw = self.prev_set(lvl + 1, w, budget)?;
            if bits.get(pw).is_some_and(|x| x.load(Ordering::Acquire) == 0) {
                self.fix_up(lvl + 1, pw);
            }
            limit = (pw + 1) * 64;
        }
    }

    /// The lowest set bit with index `>= from` (a snapshot).
    #[inline]
    pub fn first_from(&self, from: usize) -> Option<usize> {
        let mut budget = BUDGET;
        self.next_set(0, from, &mut budget).filter(|&i| i < self.n)
    }

    /// Whether any bit below `i` is set (a snapshot, as the summary levels say: a
    /// stale summary bit can make it true where `first_from(0)` finds none). Three
    /// loads that do not depend on one another (plus one per top word below `i`'s),
    /// so it is cheaper than a search.
    #[inline]
    pub fn any_below(&self, i: usize) -> bool {
        use super::bitmap::mask;
        let i = i.min(self.n);
        let (lw, mw, tw) = (i / 64, i / 4096, i / (4096 * 64));
        let below = |lvl: usize, w: usize, bit: usize| {
            self.levels[lvl]
                .get(w)
                .is_some_and(|x| x.load(Ordering::Acquire) & mask(0, bit as u32) != 0)
        };
        below(0, lw, i % 64)
            || below(1, mw, lw % 64)
            || below(2, tw, mw % 64)
            || self.levels[2]
                .iter()
                .take(tw)
                .any(|x| x.load(Ordering::Acquire) != 0)
    }

    /// The highest set bit with index `< limit` (a snapshot).
    pub fn last_below(&self, limit: usize) -> Option<usize> {
        let mut budget = BUDGET;
        self.prev_set(0, limit.min(self.n), &mut budget)
    }

    /// Claims (clears) the lowest set bit; returns its index.
    pub fn claim_first(&self) -> Option<usize> {
        for _ in 0..64 {
            let i = self.first_from(0)?;
            if self.take(i) {
                return Some(i);
            }
        }
        None
    }

    /// Number of consecutive set bits ending just below `end` (going down), at
    /// most `max`. Word-wise: O(max / 64).
    pub fn run_down(&self, end: usize, max: usize) -> usize {
        let leaf = self.levels[0];
        let mut run = 0;
        let mut e = end.min(self.n);
        while run < max && e > 0 {
            let i = e - 1;
            let Some(word) = leaf.get(i / 64) else {
                break;
            };
            let v = word.load(Ordering::Acquire) & super::bitmap::mask(0, (i % 64) as u32 + 1);
            // Set bits from bit i % 64 downward.
            let ones = (v << (63 - i % 64)).leading_ones() as usize;
            run += ones.min(i % 64 + 1);
            if ones < i % 64 + 1 {
                break;
            }
            e = i / 64 * 64;
        }
        run.min(max)
    }

    /// Claims (clears) bits `start..start + n` word by word; if any was clear,
    /// restores what it cleared and returns false.
    pub fn claim_run(&self, start: usize, n: usize) -> bool {
        if start.checked_add(n).is_none_or(|e| e > self.n) {
            return false;
        }
        let leaf = self.levels[0];
        let end = start + n;
        let mut i = start;
        let mut ok = true;
        while i < end {
            let w = i / 64;
            let hi = (end - w * 64).min(64) as u32;
            let m = super::bitmap::mask((i % 64) as u32, hi);
            let prev = leaf[w].fetch_and(!m, Ordering::SeqCst);
            if prev & m != m {
                leaf[w].fetch_or(prev & m, Ordering::SeqCst);
                ok = false;
                break;
            }
            i = (w + 1) * 64;
        }
        if !ok {
            // Restore the words before the failing one.
            let stop = i / 64 * 64;
            if stop > start {
                self.set_range(start, stop);
            }
            return false;
        }
        for (w, word) in leaf
            .iter()
            .enumerate()
            .take((end - 1) / 64 + 1)
            .skip(start / 64)
        {
            if word.load(Ordering::SeqCst) == 0 {
                self.fix_up(1, w);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn make(n: usize) -> Vec<AtomicU64> {
        (0..total_words(n as u64, 8))
            .map(|_| AtomicU64::new(0))
            .collect()
    }

    #[test]
    fn any_below_agrees_with_the_search() {
        let n = 1 << 20;
        let w = make(n);
        let s = Summary::new(&w, &Shape::new(n, 8)).unwrap();
        let probes = [0, 1, 63, 64, 65, 4095, 4096, 4097, 262_143, 262_144, 300_000, n];
        for set in [None, Some(0), Some(64), Some(4096), Some(262_144), Some(700_000)] {
            if let Some(b) = set {
                s.set(b);
            }
            for &i in &probes {
                let want = s.first_from(0).is_some_and(|f| f < i);
                assert_eq!(s.any_below(i), want, "set {set:?}, below {i}");
            }
            if let Some(b) = set {
                s.clear(b);
            }
        }
    }

    #[test]
    fn finds_lowest_and_highest_across_levels() {
        let n = 1 << 20;
        let w = make(n);
        let s = Summary::new(&w, &Shape::new(n, 8)).unwrap();
        assert_eq!(s.first_from(0), None);
        assert_eq!(s.last_below(n), None);
        for i in [5, 70_000, 999_999] {
            s.set(i);
        }
        assert_eq!(s.first_from(0), Some(5));
        assert_eq!(s.first_from(6), Some(70_000));
        assert_eq!(s.last_below(n), Some(999_999));
        assert_eq!(s.last_below(999_999), Some(70_000));
        assert_eq!(s.claim_first(), Some(5));
        assert_eq!(s.first_from(0), Some(70_000));
        s.clear(70_000);
        assert_eq!(s.first_from(0), Some(999_999));
        assert_eq!(s.last_below(999_999), None);
    }

    /// Threads set, clear and claim bits of the same words at once; at rest, every
    /// non-zero word has its summary bit set (no free item is ever hidden).
    #[test]
    fn concurrent_set_and_clear_never_hide_a_bit() {
        let n = 64 * 64 * 8;
        let w = make(n);
        let s = Summary::new(&w, &Shape::new(n, 8)).unwrap();
        std::thread::scope(|sc| {
            for t in 0..4u64 {
                sc.spawn(move || {
                    let mut x = t.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                    for _ in 0..200_000 {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        // Few words, so that setters and clearers meet.
                        let i = (x % 8) as usize * 64 * 64 + (x >> 32) as usize % 128;
                        match x % 3 {
                            0 => s.set(i),
                            1 => s.clear(i),
                            _ => {
                                let _ = s.claim_first();
                            }
                        }
                    }
                });
            }
        });
        for (i, word) in s.levels[0].iter().enumerate() {
            if word.load(Ordering::SeqCst) != 0 {
                assert!(s.levels[1][i / 64].load(Ordering::SeqCst) & (1 << (i % 64)) != 0);
                assert!(s.levels[2][i / 4096].load(Ordering::SeqCst) & (1 << (i / 64 % 64)) != 0);
            }
        }
        let first = (0..n).find(|&i| s.is_set(i));
        assert_eq!(s.first_from(0), first);
    }

    #[test]
    fn runs_claim_and_roll_back() {
        let n = 10_000;
        let w = make(n);
        let s = Summary::new(&w, &Shape::new(n, 8)).unwrap();
        s.set_range(100, 9_000);
        assert_eq!(s.run_down(9_000, usize::MAX), 8_900);
        assert_eq!(s.run_down(200, 50), 50);
        assert!(s.claim_run(8_000, 1_000));
        assert_eq!(s.last_below(n), Some(7_999));
        s.set(8_500);
        assert!(!s.claim_run(7_000, 2_000)); // 8_000.. is taken
        assert_eq!(s.run_down(8_000, usize::MAX), 7_900);
        assert!(s.is_set(7_000) && s.is_set(8_500) && !s.is_set(8_501));
    }
}
