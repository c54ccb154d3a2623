//! A Treiber stack of small indices whose head carries an ABA tag.
//!
//! The head word packs `[tag: 32 | index + 1: 32]` (0 in the low half = empty).
//! Every successful push or pop increments the tag, so a pop that read a stale
//! `next` cannot succeed against a head that was popped and pushed again in
//! between. Links live in caller-provided words indexed by item, which are always
//! mapped (type-stable metadata), so reading a stale link is harmless.

use std::sync::atomic::Ordering;

use super::Word;

/// A link word held an index outside the item range: the stack is corrupt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CorruptLink;

const LOW: u64 = 0xFFFF_FFFF;

/// Index on top of a head value, if any.
#[inline]
pub fn top(head: u64) -> Option<usize> {
    match head & LOW {
        0 => None,
        i => Some(i as usize - 1),
    }
}

#[inline]
fn next_head(head: u64, top: Option<usize>) -> u64 {
    let tag = (head >> 32).wrapping_add(1) & LOW;
    (tag << 32) | top.map_or(0, |i| i as u64 + 1)
}

/// Pushes `item`; `link` is the item's link word.
pub fn push<W: Word>(head: &W, item: usize, link: &W) {
    let mut h = head.load(Ordering::Relaxed);
    loop {
        link.store(h & LOW, Ordering::Relaxed);
        match head.compare_exchange_weak(
            h,
            next_head(h, Some(item)),
            Ordering::Release,
            Ordering::Relaxed,
        ) {
            Ok(_) => return,
            Err(now) => h = now,
        }
    }
}

/// Pops `expected_head`'s top item if `head` still equals `expected_head`.
/// `link_of(i)` gives item i's link word (None if i is out of range).
/// Returns `Ok(Some(i))` on success, `Ok(None)` if the head moved, `Err(())` if
/// the stored link is out of range (corrupt).
pub fn pop_if<'a, W: Word + 'a>(
    head: &W,
    expected_head: u64,
    link_of: impl Fn(usize) -> Option<&'a W>,
) -> Result<Option<usize>, CorruptLink> {
    let Some(i) = top(expected_head) else {
        return Ok(None);
    };
    let link = link_of(i).ok_or(CorruptLink)?.load(Ordering::Relaxed);
    let next = match link & LOW {
        0 => None,
        n if link >> 32 == 0 && link_of(n as usize - 1).is_some() => Some(n as usize - 1),
        _ => {
            // The item may have been popped and its link word reused meanwhile; only
            // a link that is bad while the head still shows the item is corruption.
            if head.load(Ordering::Acquire) != expected_head {
                return Ok(None);
            }
            return Err(CorruptLink);
        }
    };
    Ok(head
        .compare_exchange(
            expected_head,
            next_head(expected_head, next),
            Ordering::AcqRel,
            Ordering::Relaxed,
        )
        .ok()
        .map(|_| i))
}

/// Pops the top item (retrying on contention). `None` when empty.
pub fn pop<'a, W: Word + 'a>(
    head: &W,
    link_of: impl Fn(usize) -> Option<&'a W> + Copy,
) -> Result<Option<usize>, CorruptLink> {
    loop {
        let h = head.load(Ordering::Acquire);
        if top(h).is_none() {
            return Ok(None);
        }
        if let Some(i) = pop_if(head, h, link_of)? {
            return Ok(Some(i));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn lifo_and_tags() {
        let head = AtomicU64::new(0);
        let links: Vec<AtomicU64> = (0..4).map(|_| AtomicU64::new(0)).collect();
        let link_of = |i: usize| links.get(i);
        push(&head, 1, &links[1]);
        push(&head, 3, &links[3]);
        let stale = head.load(Ordering::Relaxed);
        assert_eq!(pop(&head, link_of), Ok(Some(3)));
        push(&head, 3, &links[3]);
        // Same top index, different tag: a stale pop must fail.
        assert_eq!(pop_if(&head, stale, link_of), Ok(None));
        assert_eq!(pop(&head, link_of), Ok(Some(3)));
        assert_eq!(pop(&head, link_of), Ok(Some(1)));
        assert_eq!(pop(&head, link_of), Ok(None));
    }

    #[test]
    fn corrupt_link_is_an_error() {
        let head = AtomicU64::new(0);
        let links: Vec<AtomicU64> = (0..2).map(|_| AtomicU64::new(0)).collect();
        push(&head, 0, &links[0]);
        links[0].store(99, Ordering::Relaxed);
        assert_eq!(pop(&head, |i| links.get(i)), Err(CorruptLink));
    }
}

/// Model-checked with loom: `RUSTFLAGS="--cfg loom" cargo test --release --lib loom_`.
#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::atomic::AtomicU64;
    use loom::sync::Arc;

    /// Items 0 and 1 start on the stack. One thread pops an item and pushes it back;
    /// the other pops both and pushes them back, first one first. Without the ABA
    /// tag, the first thread could read `top = 0, next = 1`, stall while the other
    /// pops 0 and 1 and pushes 0 back, then succeed and make 1 (held by the other
    /// thread) the head again: an item twice. In every interleaving both items must
    /// end up on the stack exactly once.
    #[test]
    fn loom_pop_push_keeps_every_item_once() {
        loom::model(|| {
            let head = Arc::new(AtomicU64::new(0));
            let links: Arc<Vec<AtomicU64>> = Arc::new((0..2).map(|_| AtomicU64::new(0)).collect());
            push(&*head, 1, &links[1]);
            push(&*head, 0, &links[0]);
            let threads: Vec<_> = [1usize, 2]
                .into_iter()
                .map(|n| {
                    let (head, links) = (head.clone(), links.clone());
                    loom::thread::spawn(move || {
                        let mut held = Vec::new();
                        for _ in 0..n {
                            if let Some(i) = pop(&*head, |i| links.get(i)).unwrap() {
                                held.push(i);
                            }
                        }
                        for i in held {
                            push(&*head, i, &links[i]);
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            let mut seen = Vec::new();
            while let Some(i) = pop(&*head, |i| links.get(i)).unwrap() {
                seen.push(i);
                assert!(seen.len() <= 2, "an item is on the stack twice: {seen:?}");
            }
            seen.sort_unstable();
            assert_eq!(seen, [0, 1]);
        });
    }
}
