//! Handles that can live anywhere: every typed handle holds its allocator by
//! value (`&A` to borrow it, `Arc<A>` to share it), so with an `Arc` it is
//! `'static`: storable in a struct next to its allocator and movable into
//! `std::thread::spawn`, with no `Box::leak`.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::ShmName;
use shared_allocator::channel::{Receiver, Sender};
use shared_allocator::prelude::*;
use shared_allocator::ShmVecReader;

type Jobs = ShmChannel<u64, 64>;
type Shared = Arc<FreeListAllocator>;

/// A consumer that owns its allocator and its receiver side by side.
struct Consumer {
    alloc: Shared,
    rx: Receiver<u64, 64, Shared>,
    seen: Root<AtomicU64, Shared>,
}

impl Consumer {
    fn new(alloc: Shared) -> Result<Consumer, Error> {
        let jobs: Root<Jobs, Shared> = Root::new_in(alloc.clone(), "jobs")?;
        let rx = jobs.receiver()?;
        let seen = Root::new_in(alloc.clone(), "seen")?;
        Ok(Consumer { alloc, rx, seen })
    }

    /// Receives one number, counts it in the shared root.
    fn step(&self) -> Result<u64, Box<dyn std::error::Error>> {
        let n = self.rx.recv_timeout(Duration::from_secs(10))?;
        self.seen.fetch_add(1, Ordering::Relaxed);
        assert!(self.alloc.used_bytes() > 0);
        Ok(n)
    }
}

fn is_static_send<T: Send + 'static>(_: &T) {}

#[test]
fn struct_holds_allocator_and_its_receiver() {
    let name = ShmName::new("handles-struct");
    let alloc = Arc::new(FreeListAllocator::create(name.as_str(), 1 << 20).unwrap());
    let consumer = Consumer::new(alloc.clone()).unwrap();
    is_static_send(&consumer.rx);
    let jobs = alloc.root::<Jobs>("jobs").unwrap();
    let tx = jobs.sender().unwrap();
    tx.send(7).unwrap();
    assert_eq!(consumer.step().unwrap(), 7);
    assert_eq!(consumer.seen.load(Ordering::Relaxed), 1);
    // The struct can be dropped after the borrowed handles: it owns what it uses.
    drop(tx);
    drop(consumer);
    assert_eq!(
        Arc::strong_count(&alloc),
        1,
        "every handle gave its Arc back"
    );
}

#[test]
fn receiver_and_box_move_into_spawned_threads() {
    let name = ShmName::new("handles-thread");
    let alloc: Shared = Arc::new(FreeListAllocator::create(name.as_str(), 1 << 20).unwrap());
    let jobs: Root<Jobs, Shared> = Root::new_in(alloc.clone(), "jobs").unwrap();
    let rx: Receiver<u64, 64, Shared> = jobs.receiver().unwrap();
    let tx: Sender<u64, 64, Shared> = jobs.sender().unwrap();
    drop(jobs);

    let consumer = std::thread::spawn(move || {
        let mut sum = 0;
        for _ in 0..100 {
            sum += rx.recv_timeout(Duration::from_secs(10)).unwrap();
        }
        sum
    });
    let before = alloc.stats().live_blocks;
    let boxed = ShmBox::new_in(alloc.clone(), [1u64, 2, 3]).unwrap();
    let mut vec = ShmVec::new_in(alloc.clone()).unwrap();
    vec.extend_from_slice(&[4u32, 5, 6]).unwrap();
    let reader = ShmVecReader::<u32, _>::open(alloc.clone(), vec.rel_ptr()).unwrap();
    let owner = std::thread::spawn(move || {
        let total: u64 = boxed.iter().sum();
        let copied = reader.to_vec().unwrap();
        drop(boxed);
        (total, copied)
    });
    std::thread::spawn(move || {
        for i in 0..100 {
            tx.send_timeout(i, Duration::from_secs(10)).unwrap();
        }
    })
    .join()
    .unwrap();
    assert_eq!(consumer.join().unwrap(), (0..100).sum::<u64>());
    assert_eq!(owner.join().unwrap(), (6, vec![4, 5, 6]));
    drop(vec);
    assert_eq!(alloc.stats().live_blocks, before, "box and vector freed");
    assert_eq!(
        Arc::strong_count(&alloc),
        1,
        "every handle gave its Arc back"
    );
}

#[test]
fn tokens_give_the_allocator_back() {
    let name = ShmName::new("handles-token");
    let alloc: Shared = Arc::new(FreeListAllocator::create(name.as_str(), 1 << 20).unwrap());
    let b = ShmBox::new_in(alloc.clone(), 5u64).unwrap();
    let t = b.into_token();
    let mut v = ShmVec::new_in(alloc.clone()).unwrap();
    v.push(1u64).unwrap();
    let vt = v.into_token();
    assert_eq!(
        Arc::strong_count(&alloc),
        1,
        "into_token drops the handle's Arc"
    );
    let b = ShmBox::from_token(alloc.clone(), t).unwrap();
    let v = ShmVec::from_token(alloc.clone(), vt).unwrap();
    assert_eq!((*b, v.as_slice()), (5, &[1u64][..]));
    drop((b, v));
    assert_eq!(Arc::strong_count(&alloc), 1);
}

/// The segment mode is fixed at `create` (`CreateOptions::typed()` / `raw()`) and
/// checked at `open` (`OpenOptions::segment_mode`): mixing is refused from the first
/// call, and a mismatched open is a clear `SegmentError::WrongMode`.
#[test]
fn segment_mode_is_fixed_at_create_and_checked_at_open() {
    use shared_allocator::segment::{CreateOptions, OpenOptions, SegmentMode};
    use shared_allocator::{AccessError, SegmentError};
    let typed_name = ShmName::new("handles-mode-typed");
    let typed =
        FreeListAllocator::create_with(typed_name.as_str(), 1 << 20, &CreateOptions::typed())
            .unwrap();
    assert_eq!(typed.segment().mode(), SegmentMode::Typed);
    let raw_block = typed.allocate(64).unwrap();
    assert!(matches!(
        typed.write(raw_block, b"x"),
        Err(AccessError::WrongMode { .. })
    ));
    let b = ShmBox::new_in(&typed, 1u64).unwrap();
    assert_eq!(*b, 1);

    let raw_name = ShmName::new("handles-mode-raw");
    let raw =
        FreeListAllocator::create_with(raw_name.as_str(), 1 << 20, &CreateOptions::raw()).unwrap();
    assert_eq!(raw.segment().mode(), SegmentMode::Raw);
    assert!(
        ShmBox::new_in(&raw, 1u64).is_err(),
        "typed handle in a raw segment"
    );
    let o = raw.allocate(8).unwrap();
    raw.write(o, &[1; 8]).unwrap();

    let expect = |m| OpenOptions {
        segment_mode: Some(m),
        ..OpenOptions::default()
    };
    let err =
        FreeListAllocator::open_with(raw_name.as_str(), &expect(SegmentMode::Typed)).unwrap_err();
    assert!(
        matches!(
            err,
            SegmentError::WrongMode {
                expected: SegmentMode::Typed,
                found: SegmentMode::Raw,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("raw mode, not typed mode"),
        "{err}"
    );
    FreeListAllocator::open_with(typed_name.as_str(), &expect(SegmentMode::Typed)).unwrap();

    // An undecided segment is fixed by the opener's expectation.
    let unset_name = ShmName::new("handles-mode-unset");
    let unset = FreeListAllocator::create(unset_name.as_str(), 1 << 20).unwrap();
    assert_eq!(unset.segment().mode(), SegmentMode::Unset);
    let opened =
        FreeListAllocator::open_with(unset_name.as_str(), &expect(SegmentMode::Raw)).unwrap();
    assert_eq!(opened.segment().mode(), SegmentMode::Raw);
    assert!(ShmBox::new_in(&unset, 1u64).is_err());
}
