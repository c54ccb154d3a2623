//! Readers copying data that another thread writes at the same time, in one process
//! (so ThreadSanitizer sees both sides: `scripts/sanitizers` runs this file under it).
//! The multi-process versions of these scenarios are in `tests/typed.rs` and
//! `tests/archive.rs`; threads here stand in for processes with their own mappings.
//!
//! Handles move between the threads through atomic words, not a `Mutex` (std is not
//! instrumented, so TSan would not see a std lock's synchronisation). Each word is
//! stored on its own, so a reader may combine parts of two handles: a torn handle
//! is hostile input, which the copy paths must turn into an error too.

/// A handle's words, published one by one.
struct Board([AtomicU64; 3]);

impl Board {
    fn new(words: [u64; 3]) -> Board {
        Board(words.map(AtomicU64::new))
    }
    fn put(&self, words: [u64; 3]) {
        for (w, v) in self.0.iter().zip(words) {
            w.store(v, Ordering::Release);
        }
    }
    fn get(&self) -> [u64; 3] {
        [0, 1, 2].map(|i| self.0[i].load(Ordering::Acquire))
    }
}
mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use common::ShmName;
use shared_allocator::archive::ArenaArchiveToken;
use shared_allocator::prelude::*;

/// One writer pushes (growing, moving and shrinking the buffer); a reader with its
/// own mapping follows it with the seqlock copy and always sees a correct prefix.
#[test]
fn vec_reader_copies_while_writer_pushes_grows_and_shrinks() {
    let name = ShmName::new("conc-vec");
    let alloc = FreeListAllocator::create(name.as_str(), 16 << 20).unwrap();
    let reader_alloc = FreeListAllocator::open(name.as_str()).unwrap();
    let mut v = ShmVec::<u64, _>::new_in(&alloc).unwrap();
    let hdr = v.rel_ptr();
    let done = AtomicBool::new(false);
    let n = 100_000u64;
    std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let r = ShmVecReader::open(&reader_alloc, hdr).unwrap();
            let mut seen = Vec::new();
            let mut reads = 0u64;
            loop {
                let finished = done.load(Ordering::Acquire);
                let from = seen.len().min(r.len());
                seen.truncate(from);
                r.read_from(from, &mut seen).unwrap();
                reads += 1;
                for (i, x) in seen.iter().enumerate().skip(from) {
                    assert_eq!(*x, i as u64 * 3, "element {i}: a torn or stale copy");
                }
                if finished && seen.len() == r.len() {
                    return (seen.len(), reads);
                }
            }
        });
        for i in 0..n {
            v.push(i * 3).unwrap();
            if i % 5_000 == 0 {
                v.pop();
                v.push(i * 3).unwrap();
            }
        }
        done.store(true, Ordering::Release);
        let (len, reads) = reader.join().unwrap();
        assert_eq!(len as u64, n);
        assert!(reads > 0);
    });
}

/// A coordinator thread resets the arena and fills it again while another thread
/// copies an old handle out: every copy is the old values or `Stale`.
#[test]
fn arena_read_is_old_values_or_stale_while_another_mapping_resets() {
    let name = ShmName::new("conc-arena");
    let mut writer = BumpAllocator::create(name.as_str(), 1 << 20).unwrap();
    let reader = BumpAllocator::open(name.as_str()).unwrap();
    let parts = |h: ArenaPtr<u64>| [h.offset().get(), h.epoch(), h.len() as u64];
    let handle = Board::new(parts(
        writer.arena().alloc_slice(&[7u64; 64]).unwrap().arena_ptr(),
    ));
    let done = AtomicBool::new(false);
    let (ok, stale) = (AtomicU64::new(0), AtomicU64::new(0));
    std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::Acquire) {
                let [off, epoch, len] = handle.get();
                let h = ArenaPtr::<u64>::from_parts(off, epoch, len);
                match h.read(&reader) {
                    Ok(v) => {
                        assert!(v.iter().all(|&x| x == v[0]), "mixed epochs: {v:?}");
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    // Stale, or (a torn handle) out of the allocated range.
                    Err(_) => {
                        stale.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
        // At least 2,000 rounds, and on until the reader has copied a few times
        // (on a loaded machine its thread may start late), bounded by 20 s.
        let start = std::time::Instant::now();
        let mut round = 0u64;
        while round < 2_000
            || (ok.load(Ordering::Relaxed) + stale.load(Ordering::Relaxed) < 10
                && start.elapsed() < std::time::Duration::from_secs(20))
        {
            writer.reset().unwrap();
            let h = writer
                .arena()
                .alloc_slice(&[round; 64])
                .unwrap()
                .arena_ptr();
            if round % 16 == 0 {
                handle.put(parts(h));
            }
            round += 1;
        }
        done.store(true, Ordering::Release);
    });
    assert!(ok.load(Ordering::Relaxed) + stale.load(Ordering::Relaxed) > 0);
}

/// The archive copy path (`deserialize_copied`) while the arena is reset and
/// rewritten under it: a correct value, or an error (stale or invalid), never a
/// mix and never undefined behaviour.
#[test]
fn arena_archive_copy_path_while_another_mapping_resets() {
    let name = ShmName::new("conc-arc");
    let mut writer = BumpAllocator::create(name.as_str(), 1 << 20).unwrap();
    let reader = BumpAllocator::open(name.as_str()).unwrap();
    let batch: Vec<String> = (0..32).map(|i| format!("item-{i}")).collect();
    let parts = |t: ArenaArchiveToken<Vec<String>>| {
        let [o, e] = t.to_raw();
        [o, e, 0]
    };
    let token = Board::new(parts(writer.arena().archive(&batch).unwrap().into_token()));
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::Acquire) {
                let [o, e, _] = token.get();
                let t = ArenaArchiveToken::<Vec<String>>::from_raw([o, e]);
                if let Ok(v) = t.deserialize_copied(&reader) {
                    assert_eq!(v.len(), 32);
                    assert!(v[0].starts_with("item-") || v[0].starts_with("next-"));
                }
            }
        });
        for round in 0..500 {
            writer.reset().unwrap();
            let next: Vec<String> = (0..32).map(|i| format!("next-{round}-{i}")).collect();
            let t = writer.arena().archive(&next).unwrap().into_token();
            if round % 8 == 0 {
                token.put(parts(t));
            }
        }
        done.store(true, Ordering::Release);
    });
}

/// Handles opened and dropped by several threads at once: the process-local tables
/// behind them (attachments, cache owners) are shared by every thread, and their
/// locks must order every access, contended or not. With std's `Mutex` the
/// contended path is prebuilt code that ThreadSanitizer cannot see, and it reported
/// a race on the attachment table here.
#[test]
fn handles_opened_and_dropped_by_many_threads_at_once() {
    let name = ShmName::new("conc-open");
    let first = FreeListAllocator::create(name.as_str(), 1 << 20).unwrap();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..100 {
                    let h = FreeListAllocator::open(name.as_str()).unwrap();
                    let b = ShmBox::new_in(&h, 7u64).unwrap();
                    assert_eq!(*b, 7);
                    drop(b);
                    drop(h);
                }
            });
        }
    });
    assert_eq!(first.stats().live_blocks, Some(0));
}
