//! Copy-reads racing writes to the same bytes, in one process, so ThreadSanitizer
//! sees both sides (`scripts/sanitizers tsan` runs this file under it). The attacks
//! of the red-team report of issue 15 (a11 and its reuse variant): every copy path
//! (`RelPtr::read`, `ShmPtr::read`, the raw `read`) is a byte-wise atomic load, so
//! it is free of data races only if every safe write to a typed segment's bytes is
//! atomic too. Each test fails under TSan if one safe write is a plain store.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use common::ShmName;
use shared_allocator::prelude::*;
use shared_allocator::typed::ShmPtr;
use shared_allocator::ShmMutex;

#[derive(Clone, Copy, Debug, PartialEq, ShmSafe)]
#[repr(C)]
struct Pair {
    a: u64,
    b: u64,
}

const WRITES: u64 = 20_000;

/// Whether the writer goes on: at least `WRITES` writes, and until the reader made
/// 2000 copies (a Relaxed load: no happens-before edge that would hide a race from
/// ThreadSanitizer), so the two sides overlap however the threads are scheduled.
fn go_on(i: u64, copies: &AtomicU64) -> bool {
    i < WRITES || copies.load(Ordering::Relaxed) < 2_000
}

/// a11: the owner writes its box while another thread copies the same block.
#[test]
fn a11_box_owner_writes_while_others_copy() {
    let name = ShmName::new("race-a11");
    let alloc = FreeListAllocator::create(name.as_str(), 1 << 20).unwrap();
    let mut b = ShmBox::new_in(&alloc, Pair { a: 0, b: 0 }).unwrap();
    let (rel, ptr) = (b.rel_ptr(), b.shm_ptr());
    let (done, copies) = (AtomicBool::new(false), AtomicU64::new(0));
    let mut last = 0;
    std::thread::scope(|s| {
        let reader = s.spawn(|| {
            while !done.load(Ordering::Acquire) {
                let x = rel.read(&alloc).unwrap();
                let y = ptr.read(&alloc).unwrap();
                let raw = alloc.read(rel.offset(), 16).unwrap();
                assert_eq!(raw.len(), 16);
                // Torn copies are allowed (a mix of two values); a race is not.
                let _ = (x, y);
                copies.fetch_add(1, Ordering::Relaxed);
            }
        });
        let mut i = 0;
        while go_on(i, &copies) {
            i += 1;
            b.set(Pair { a: i, b: i });
            b.update(|p| p.b = i + 1);
        }
        last = i;
        done.store(true, Ordering::Release);
        reader.join().unwrap();
    });
    assert!(copies.load(Ordering::Relaxed) >= 2_000);
    assert_eq!(
        *b,
        Pair {
            a: last,
            b: last + 1
        }
    );
}

/// The reuse variant: one thread reads through pointers to a box that another
/// thread drops over and over, the bytes going to a new box that its new owner
/// writes. Every read is a copy of some box's value or an error, never a race.
#[test]
fn copies_of_a_freed_block_race_no_new_owner() {
    let name = ShmName::new("race-reuse");
    let alloc = FreeListAllocator::create(name.as_str(), 1 << 20).unwrap();
    let first = ShmBox::new_in(&alloc, Pair { a: 1, b: 1 }).unwrap();
    // Offset and generation of the box the writer holds now, published as words
    // (Relaxed: no happens-before edge that would hide a race from TSan; a torn
    // pair is a forged pointer, which must be an error or a copy, never a race).
    let rel = AtomicU64::new(first.rel_ptr().to_raw());
    let [blk, gen] = first.shm_ptr().to_raw();
    let (block, generation) = (AtomicU64::new(blk), AtomicU64::new(gen));
    let (done, copies) = (AtomicBool::new(false), AtomicU64::new(0));
    std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let (mut ok, mut refused) = (0u64, 0u64);
            while !done.load(Ordering::Acquire) {
                let r = RelPtr::<Pair>::from_raw(rel.load(Ordering::Relaxed));
                let p = ShmPtr::<Pair>::from_raw([
                    block.load(Ordering::Relaxed),
                    generation.load(Ordering::Relaxed),
                ]);
                for res in [r.read(&alloc), p.read(&alloc)] {
                    match res {
                        Ok(_) => ok += 1,
                        Err(_) => refused += 1,
                    }
                }
                let _ = alloc.read(r.offset(), 16);
                copies.fetch_add(1, Ordering::Relaxed);
            }
            (ok, refused)
        });
        let mut b = first;
        let mut i = 0;
        while go_on(i * 4, &copies) {
            i += 1;
            drop(b);
            b = ShmBox::new_in(&alloc, Pair { a: 0, b: 0 }).unwrap();
            b.set(Pair { a: i, b: i });
            b.update(|p| p.a = i);
            // A bigger box now and then, so the old header lands inside a payload.
            if i % 64 == 0 {
                let mut big = ShmBox::new_in(&alloc, [0u64; 8]).unwrap();
                big.update(|v| v.fill(i));
                drop(big);
            }
            rel.store(b.rel_ptr().to_raw(), Ordering::Relaxed);
            let [blk, gen] = b.shm_ptr().to_raw();
            block.store(blk, Ordering::Relaxed);
            generation.store(gen, Ordering::Relaxed);
        }
        done.store(true, Ordering::Release);
        let (ok, refused) = reader.join().unwrap();
        // Successful copies depend on scheduling (a pointer read just as its box
        // is dropped is refused); what matters is that reads overlapped the writes.
        assert!(ok + refused >= 2_000, "{ok} copies, {refused} refused");
        drop(b);
    });
}

/// A lock holder writes the mutex's value while another thread copies the bytes
/// of the box that holds the mutex.
#[test]
fn mutex_holder_writes_while_others_copy() {
    let name = ShmName::new("race-mutex");
    let alloc = FreeListAllocator::create(name.as_str(), 1 << 20).unwrap();
    let m = ShmBox::new_in(&alloc, ShmMutex::new([0u64; 4])).unwrap();
    // The payload follows the mutex's 8-byte lock header.
    let payload = RelPtr::<[u64; 4]>::from_raw(m.rel_ptr().to_raw() + 8);
    let (done, copies) = (AtomicBool::new(false), AtomicU64::new(0));
    let mut last = 0;
    std::thread::scope(|s| {
        let reader = s.spawn(|| {
            while !done.load(Ordering::Acquire) {
                let _torn_or_not = payload.read(&alloc).unwrap();
                copies.fetch_add(1, Ordering::Relaxed);
            }
        });
        let mut i = 0;
        while go_on(i, &copies) {
            i += 1;
            let mut g = m.lock().unwrap();
            g[0] = i;
            g[3] = i;
        }
        last = i;
        done.store(true, Ordering::Release);
        reader.join().unwrap();
    });
    assert_eq!(m.lock().unwrap()[3], last);
    assert_eq!(payload.read(&alloc).unwrap(), [last, 0, 0, last]);
}

/// A sender fills a channel's slots while another thread copies the bytes of the
/// channel's root block (found by offset, as any process can).
#[test]
fn channel_sends_while_others_copy() {
    use shared_allocator::channel::ShmChannel;
    let name = ShmName::new("race-chan");
    let alloc = FreeListAllocator::create(name.as_str(), 1 << 20).unwrap();
    let chan = alloc.root::<ShmChannel<u64, 4>>("c").unwrap();
    let at = alloc.roots().unwrap()[0].offset;
    let len = std::mem::size_of::<ShmChannel<u64, 4>>();
    let (tx, rx) = (chan.sender().unwrap(), chan.receiver().unwrap());
    let (done, copies) = (AtomicBool::new(false), AtomicU64::new(0));
    let mut sum = 0;
    std::thread::scope(|s| {
        let reader = s.spawn(|| {
            while !done.load(Ordering::Acquire) {
                assert_eq!(alloc.read(at, len).unwrap().len(), len);
                copies.fetch_add(1, Ordering::Relaxed);
            }
        });
        let mut i = 0;
        while go_on(i, &copies) {
            i += 1;
            tx.try_send(i).unwrap();
            sum += rx.try_recv().unwrap();
        }
        assert_eq!(sum, i * (i + 1) / 2);
        done.store(true, Ordering::Release);
        reader.join().unwrap();
    });
}

/// Red team s2, a15/a07/a19: in a raw segment, `RelPtr::<AtomicU64>` views over a
/// channel root's block. The checked views refuse a root's block (`Root`); the
/// fast `get` reaches it, and its atomic stores must not race the receiver's copy
/// of a slot (which is byte-wise atomic now).
#[test]
fn raw_views_over_a_channel_root_do_not_race_its_receiver() {
    use shared_allocator::channel::ShmChannel;
    use shared_allocator::{AccessError, CreateOptions};
    let name = ShmName::new("race-rawroot");
    let alloc =
        FreeListAllocator::create_with(name.as_str(), 1 << 20, &CreateOptions::raw()).unwrap();
    let chan = alloc.root::<ShmChannel<u64, 4>>("c").unwrap();
    let root = alloc.roots().unwrap()[0].offset.get();
    let words = (std::mem::size_of::<ShmChannel<u64, 4>>() / 8) as u64;
    for w in 0..words {
        let p = RelPtr::<AtomicU64>::from_raw(root + 8 * w);
        assert!(
            matches!(p.get_checked(&alloc), Err(AccessError::Root { .. })),
            "word {w}"
        );
        assert!(
            matches!(p.get_slice(&alloc, 1), Err(AccessError::Root { .. })),
            "word {w}"
        );
    }
    let (tx, rx) = (chan.sender().unwrap(), chan.receiver().unwrap());
    let (done, copies) = (AtomicBool::new(false), AtomicU64::new(0));
    std::thread::scope(|s| {
        let scribbler = s.spawn(|| {
            while !done.load(Ordering::Acquire) {
                // The last 8 words: the 4 slots (state and value). A `fetch_or(0)`
                // changes no value, but it is a write.
                for w in words - 8..words {
                    let v = RelPtr::<AtomicU64>::from_raw(root + 8 * w)
                        .get(&alloc)
                        .unwrap();
                    v.fetch_or(0, Ordering::Relaxed);
                }
                copies.fetch_add(1, Ordering::Relaxed);
            }
        });
        let mut i = 0;
        while go_on(i, &copies) {
            i += 1;
            tx.try_send(i).unwrap();
            assert_eq!(rx.try_recv().unwrap(), i);
        }
        done.store(true, Ordering::Release);
        scribbler.join().unwrap();
    });
}
