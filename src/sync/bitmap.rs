//! Atomic bitmaps: one bit per item, 1 = taken. Claiming is `fetch_or`, releasing
//! `fetch_and`; a run of bits spanning several words is claimed word by word and
//! rolled back if any part was already taken.

use std::sync::atomic::Ordering;

use super::Word;

/// Mask with bits `lo..hi` (within one word) set; `hi <= 64`.
#[inline]
pub fn mask(lo: u32, hi: u32) -> u64 {
    debug_assert!(lo <= hi && hi <= 64);
    if hi - lo == 64 {
        !0
    } else {
        ((1u64 << (hi - lo)) - 1) << lo
    }
}

/// Claims one clear bit, scanning words from `start_word` on and wrapping around.
/// Returns the bit index, or `None` if every bit was set during the scan.
pub fn claim_one<W: Word>(words: &[W], start_word: usize) -> Option<usize> {
    let n = words.len();
    for k in 0..n {
        let w = (start_word + k) % n;
        let word = &words[w];
        let mut v = word.load(Ordering::Relaxed);
        // Each failed claim means another claimer set a bit of this word; bounded so
        // that a peer that keeps clearing bits cannot keep us here.
        for _ in 0..128 {
            if v == !0 {
                break;
            }
            let b = (!v).trailing_zeros();
            let prev = word.fetch_or(1 << b, Ordering::AcqRel);
            if prev & (1 << b) == 0 {
                return Some(w * 64 + b as usize);
            }
            v = prev | (1 << b);
        }
    }
    None
}

/// Sets up to `want` clear bits of `word`, the lowest first, with one
/// compare-and-swap. `usable(v)` gives the clear bits of the current value `v`
/// that may be taken (`None`: none may, e.g. the word changed owner). Returns the
/// bits set, or `None` if there were none to take; bounded, so a peer that keeps
/// changing the word cannot keep us here.
#[inline]
pub fn claim_lowest<W: Word>(
    word: &W,
    want: u32,
    usable: impl Fn(u64) -> Option<u64>,
) -> Option<u64> {
    let mut v = word.load(Ordering::Relaxed);
    for _ in 0..64 {
        let mut free = usable(v)?;
        let mut mask = 0u64;
        for _ in 0..want {
            if free == 0 {
                break;
            }
            mask |= free & free.wrapping_neg();
            free &= free - 1;
        }
        if mask == 0 {
            return None;
        }
        match word.compare_exchange_weak(v, v | mask, Ordering::SeqCst, Ordering::Relaxed) {
            Ok(_) => return Some(mask),
            Err(now) => v = now,
        }
    }
    None
}

/// The set bits of `mask`, highest first.
pub fn bits_high_first(mut mask: u64) -> impl Iterator<Item = u32> {
    std::iter::from_fn(move || {
        let top = 63u32.checked_sub(mask.leading_zeros())?;
        mask &= !(1u64 << top);
        Some(top)
    })
}

/// Finds the first run of `n` clear bits (a snapshot: the bits may change).
// Kept for its unit tests and loom model (the free list now searches runs in a
// summary bitmap, `sync::summary`).
#[cfg_attr(not(any(test, loom)), allow(dead_code))]
pub fn find_clear_run<W: Word>(words: &[W], n: usize) -> Option<usize> {
    let mut run_start = 0usize;
    let mut run_len = 0usize;
    for (w, word) in words.iter().enumerate() {
        let v = word.load(Ordering::Relaxed);
        if v == 0 {
            if run_len == 0 {
                run_start = w * 64;
            }
            run_len += 64;
            if run_len >= n {
                return Some(run_start);
            }
            continue;
        }
        let mut bit = 0u32;
        while bit < 64 {
            let rest = v >> bit;
            if rest & 1 == 0 {
                let zeros = if rest == 0 {
                    64 - bit
                } else {
                    rest.trailing_zeros()
                };
                if run_len == 0 {
                    run_start = w * 64 + bit as usize;
                }
                run_len += zeros as usize;
                if run_len >= n {
                    return Some(run_start);
                }
                bit += zeros;
            } else {
                run_len = 0;
                bit += (!rest).trailing_zeros();
            }
        }
    }
    None
}

/// Calls `f(word_index, mask)` for each word that bits `start..start+n` touch.
fn for_each_word(start: usize, n: usize, mut f: impl FnMut(usize, u64) -> bool) -> bool {
    let end = start + n;
    let mut bit = start;
    while bit < end {
        let w = bit / 64;
        let lo = (bit % 64) as u32;
        let hi = ((end - w * 64).min(64)) as u32;
        if !f(w, mask(lo, hi)) {
            return false;
        }
        bit = (w + 1) * 64;
    }
    true
}

/// Atomically (per word) sets bits `start..start+n`. If any of them was already set,
/// undoes what it set and returns false. Bits must be inside `words`.
#[cfg_attr(not(any(test, loom)), allow(dead_code))]
pub fn claim_run<W: Word>(words: &[W], start: usize, n: usize) -> bool {
    let mut done: Vec<(usize, u64)> = Vec::new();
    let ok = for_each_word(start, n, |w, m| {
        let prev = words[w].fetch_or(m, Ordering::AcqRel);
        if prev & m != 0 {
            // Undo only the bits this call set in this word.
            words[w].fetch_and(!(m & !prev), Ordering::Release);
            return false;
        }
        done.push((w, m));
        true
    });
    if !ok {
        for (w, m) in done {
            words[w].fetch_and(!m, Ordering::Release);
        }
    }
    ok
}

/// Clears bits `start..start+n`. Bits must be inside `words`.
#[cfg_attr(not(test), allow(dead_code))] // the unit and loom tests release runs
pub fn release_run<W: Word>(words: &[W], start: usize, n: usize) {
    for_each_word(start, n, |w, m| {
        words[w].fetch_and(!m, Ordering::Release);
        true
    });
}

/// Whether bit `i` is set (false if out of range).
pub fn is_set<W: Word>(words: &[W], i: usize) -> bool {
    words
        .get(i / 64)
        .is_some_and(|w| w.load(Ordering::Acquire) & (1 << (i % 64)) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    fn bm(v: &[u64]) -> Vec<AtomicU64> {
        v.iter().map(|&x| AtomicU64::new(x)).collect()
    }

    #[test]
    fn runs_across_words() {
        let w = bm(&[!0 >> 4, 0, !0]);
        assert_eq!(find_clear_run(&w, 4), Some(60));
        assert_eq!(find_clear_run(&w, 68), Some(60));
        assert_eq!(find_clear_run(&w, 69), None);
        assert!(claim_run(&w, 60, 68));
        assert!(!claim_run(&w, 60, 1));
        assert_eq!(w[0].load(Ordering::Relaxed), !0);
        release_run(&w, 62, 10);
        assert_eq!(find_clear_run(&w, 10), Some(62));
    }

    #[test]
    fn failed_claim_rolls_back() {
        let w = bm(&[0, 1 << 5]);
        assert!(!claim_run(&w, 10, 80));
        assert_eq!(w[0].load(Ordering::Relaxed), 0);
        assert_eq!(w[1].load(Ordering::Relaxed), 1 << 5);
    }

    #[test]
    fn claim_one_wraps() {
        let w = bm(&[0b1011, !0]);
        assert_eq!(claim_one(&w, 1), Some(2));
        assert!(is_set(&w, 2));
        assert_eq!(claim_one(&w, 0), Some(4));
        let full = bm(&[!0]);
        assert_eq!(claim_one(&full, 0), None);
    }
}

/// Model-checked with loom: `RUSTFLAGS="--cfg loom" cargo test --release --lib loom_`.
#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::atomic::AtomicU64;
    use loom::sync::Arc;

    /// Two threads claim single bits while a third claims a run across the word
    /// boundary: no bit is ever given to two claimers, and a failed run claim
    /// leaves nothing behind.
    #[test]
    fn loom_claims_never_overlap() {
        loom::model(|| {
            // Bits 62, 63 and 64, 65 are free; everything else is taken.
            let words = Arc::new(vec![AtomicU64::new(!(0b11 << 62)), AtomicU64::new(!0b11)]);
            let singles: Vec<_> = (0..2)
                .map(|k| {
                    let words = words.clone();
                    loom::thread::spawn(move || claim_one(&words[..], k))
                })
                .collect();
            let run = claim_run(&words[..], 63, 2);
            let mut got: Vec<usize> = singles
                .into_iter()
                .filter_map(|t| t.join().unwrap())
                .collect();
            if run {
                got.extend([63, 64]);
            }
            let n = got.len();
            got.sort_unstable();
            got.dedup();
            assert_eq!(got.len(), n, "a bit was claimed twice");
            // Every claimed bit is set, every other free bit is clear again.
            for bit in [62usize, 63, 64, 65] {
                assert_eq!(is_set(&words[..], bit), got.contains(&bit), "bit {bit}");
            }
        });
    }
}
