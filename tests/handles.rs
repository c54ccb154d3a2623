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
    use shared_allocator::{AccessError, SegmentError, WrongMode};
    let typed_name = ShmName::new("handles-mode-typed");
    let typed =
        FreeListAllocator::create_with(typed_name.as_str(), 1 << 20, &CreateOptions::typed())
            .unwrap();
    assert_eq!(typed.segment().mode(), SegmentMode::Typed);
    let b = ShmBox::new_in(&typed, 1u64).unwrap();
    assert_eq!(
        typed.write(b.rel_ptr().offset(), b"x"),
        Err(AccessError::WrongMode(WrongMode {
            expected: SegmentMode::Raw,
            found: SegmentMode::Typed
        }))
    );
    assert_eq!(*b, 1);

    let raw_name = ShmName::new("handles-mode-raw");
    let raw =
        FreeListAllocator::create_with(raw_name.as_str(), 1 << 20, &CreateOptions::raw()).unwrap();
    assert_eq!(raw.segment().mode(), SegmentMode::Raw);
    assert!(
        matches!(
            ShmBox::new_in(&raw, 1u64),
            Err(Error::Access(AccessError::WrongMode(WrongMode {
                expected: SegmentMode::Typed,
                found: SegmentMode::Raw
            })))
        ),
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
    let wrong = WrongMode {
        expected: SegmentMode::Typed,
        found: SegmentMode::Raw,
    };
    assert_eq!(err, SegmentError::WrongMode(wrong));
    // One shape, one message, wherever the mistake is reported.
    assert_eq!(err.to_string(), wrong.to_string());
    assert_eq!(
        AccessError::WrongMode(wrong).to_string(),
        "the segment is in raw mode; this needs typed mode (a segment's mode is fixed \
         when it is created or first used)"
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

/// A raw block in a segment of typed handles could never be written or freed
/// (both are refused there): raw `allocate` is refused too, with the same
/// `WrongMode` as raw `write` and `free`, in every allocator, and nothing leaks.
/// (The red team's 100 x `allocate(4096)` leaked 409,600 bytes.)
#[test]
fn raw_allocate_in_a_typed_segment_is_wrong_mode_and_leaks_nothing() {
    use shared_allocator::segment::{CreateOptions, SegmentMode};
    use shared_allocator::{AllocError, FreeError, WrongMode};
    let typed = CreateOptions::typed();
    let wrong = WrongMode {
        expected: SegmentMode::Raw,
        found: SegmentMode::Typed,
    };
    fn check(a: &impl ShmAllocator, wrong: WrongMode) {
        let used = a.used_bytes();
        for _ in 0..100 {
            assert_eq!(a.allocate(4096), Err(AllocError::WrongMode(wrong)));
            assert_eq!(
                a.allocate_aligned(64, 64),
                Err(AllocError::WrongMode(wrong))
            );
        }
        assert_eq!(a.used_bytes(), used, "nothing allocated");
        let e: Error = a.allocate(8).unwrap_err().into();
        assert_eq!(e.to_string(), wrong.to_string());
    }
    let n = ShmName::new("handles-alloc-fl");
    let fl = FreeListAllocator::create_with(n.as_str(), 1 << 20, &typed).unwrap();
    check(&fl, wrong);
    let b = ShmBox::new_in(&fl, 5u64).unwrap();
    assert_eq!(
        fl.free(b.rel_ptr().offset()),
        Err(FreeError::WrongMode(wrong))
    );
    // Nor does a raw call grow a typed block (the red team's second round: it
    // grew a typed vector's buffer from another handle).
    let mut v = ShmVec::new_in(&fl).unwrap();
    v.extend_from_slice(&[1u64; 600]).unwrap();
    let used = fl.used_bytes();
    let other = FreeListAllocator::open(n.as_str()).unwrap();
    for at in [b.rel_ptr().offset(), v.rel_ptr().offset()] {
        assert_eq!(
            other.grow_in_place(at, 64 << 10),
            Err(AllocError::WrongMode(wrong))
        );
    }
    assert_eq!(fl.used_bytes(), used);
    drop((v, other));
    drop(b);
    check(&Arc::new(fl), wrong);
    let n = ShmName::new("handles-alloc-slab");
    let slab = SlabAllocator::create_with(n.as_str(), 64, 64, &typed).unwrap();
    check(&slab, wrong);
    let n = ShmName::new("handles-alloc-bump");
    let mut bump = BumpAllocator::create_with(n.as_str(), 1 << 20, &typed).unwrap();
    check(&bump, wrong);
    // Arenas (typed) still allocate there.
    assert_eq!(*bump.arena().alloc(3u64).unwrap().get().unwrap(), 3);

    // An undecided segment: the first raw allocation fixes it raw (its block is
    // the raw API's to write and free), and a typed handle is then refused.
    let n = ShmName::new("handles-alloc-unset");
    let unset = FreeListAllocator::create(n.as_str(), 1 << 20).unwrap();
    let o = unset.allocate(64).unwrap();
    assert_eq!(unset.segment().mode(), SegmentMode::Raw);
    unset.free(o).unwrap();
    assert!(ShmBox::new_in(&unset, 1u64).is_err());
}

type SharedBump = Arc<BumpAllocator>;

/// A batch writer that owns its bump allocator and an arena over it.
struct BatchWriter {
    bump: SharedBump,
    arena: Arena<SharedBump>,
}

/// A batch reader that owns its bump allocator and a validated archive reader.
struct BatchReader {
    bump: SharedBump,
    reader: shared_allocator::archive::ArenaArchiveReader<Vec<u32>, SharedBump>,
}

/// `Arena` and `ArenaArchiveReader` hold their bump allocator through a
/// `BumpHandle`: with an `Arc` they live in a struct next to it and move into
/// spawned threads (the red team's E0597 and "arena() needs &mut" cases).
#[test]
fn arena_and_arena_reader_live_next_to_a_shared_bump() {
    use shared_allocator::archive::ArenaArchiveReader;
    use shared_allocator::AccessError;
    let name = ShmName::new("handles-arena");
    let bump: SharedBump = Arc::new(BumpAllocator::create(name.as_str(), 1 << 20).unwrap());
    let writer = BatchWriter {
        bump: bump.clone(),
        arena: Arena::new_in(bump.clone()),
    };
    is_static_send(&writer);
    let (token, ptr, writer) = std::thread::spawn(move || {
        let token = writer
            .arena
            .archive(&vec![1u32, 2, 3])
            .unwrap()
            .into_token();
        let ptr = writer.arena.alloc(9u64).unwrap().arena_ptr();
        assert_eq!(writer.bump.epoch(), writer.arena.epoch());
        (token, ptr, writer)
    })
    .join()
    .unwrap();
    let reader = BatchReader {
        bump: bump.clone(),
        reader: ArenaArchiveReader::<Vec<u32>, _>::from_token(bump.clone(), token).unwrap(),
    };
    is_static_send(&reader);
    let (sum, reader) = std::thread::spawn(move || {
        let sum: u32 = reader
            .reader
            .access()
            .unwrap()
            .iter()
            .map(|x| x.to_native())
            .sum();
        assert_eq!(reader.reader.allocator().epoch(), reader.bump.epoch());
        (sum, reader)
    })
    .join()
    .unwrap();
    assert_eq!(sum, 6);
    assert_eq!(*ptr.get(&bump).unwrap(), 9);

    // A reset through a shared handle would not wait for that handle's own views
    // (the reader's pin is in it): refused while other clones exist.
    let BatchWriter {
        bump: wb,
        mut arena,
    } = writer;
    drop(wb);
    assert_eq!(arena.reset().unwrap_err(), AccessError::SharedHandle);
    assert_eq!(
        reader.reader.access().unwrap().len(),
        3,
        "nothing was reset"
    );
    drop(reader);
    drop(bump);
    // The arena's Arc is the last one: the reset is its own.
    let epoch = arena.reset().unwrap();
    assert_eq!(
        ptr.read(arena.allocator()).unwrap_err(),
        AccessError::Stale {
            handle_epoch: epoch - 1,
            current_epoch: epoch,
        }
    );
}

/// A borrowed `&BumpAllocator` makes an arena too (no `&mut` needed); it never
/// resets (others may hold views through the same handle).
#[test]
fn arena_over_a_shared_borrow_allocates_but_does_not_reset() {
    let name = ShmName::new("handles-arena-ref");
    let bump = BumpAllocator::create(name.as_str(), 1 << 20).unwrap();
    let mut a = Arena::new_in(&bump);
    let b = Arena::new_in(&bump);
    let x = a.alloc(1u64).unwrap().arena_ptr();
    let y = b.alloc(2u64).unwrap().arena_ptr();
    assert_eq!((*x.get(&bump).unwrap(), *y.get(&bump).unwrap()), (1, 2));
    assert_eq!(
        a.reset().unwrap_err(),
        shared_allocator::AccessError::SharedHandle
    );
}
