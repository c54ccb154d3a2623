//! Bad calls give typed errors and change nothing: one test per case, each checking
//! the exact error (with its numbers) and that the stats and the contents of the
//! existing blocks are the same before and after.
mod common;

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use common::{shm_path, Rng, ShmName};
use shared_allocator::__layout::{meta_region, LAYOUT_VERSION, MAGIC};
use shared_allocator::prelude::*;
use shared_allocator::{
    AccessError, AllocError, CreateOptions, FreeError, OpenOptions, SegmentError, Stats,
};

const PAGE: u64 = 4096;

/// Blocks with known contents, to check that a rejected call touched nothing.
struct Fixture<A> {
    a: A,
    blocks: Vec<(Offset, Vec<u8>)>,
}

impl<A: ShmAllocator> Fixture<A> {
    fn new(a: A, sizes: &[usize]) -> Self {
        let mut blocks = Vec::new();
        for (i, &size) in sizes.iter().enumerate() {
            let off = a.allocate(size).unwrap();
            let data: Vec<u8> = (0..size).map(|j| (i * 31 + j * 7) as u8 | 1).collect();
            a.write(off, &data).unwrap();
            blocks.push((off, data));
        }
        Fixture { a, blocks }
    }

    fn snapshot(&self) -> (Stats, u64, u64, u64) {
        // A refused allocation may first empty this handle's cache (out of memory
        // flushes it): blocks moving from cached to plainly free change no live
        // or free number, which is what "nothing changed" means here.
        let stats = Stats {
            cached_bytes: 0,
            ..self.a.stats()
        };
        (
            stats,
            self.a.available_bytes(),
            self.a.used_bytes(),
            self.a.epoch(),
        )
    }

    /// Runs `bad` and checks it changed neither the stats nor any block's contents.
    fn unchanged<R>(&self, bad: impl FnOnce(&A) -> R) -> R {
        let before = self.snapshot();
        let r = bad(&self.a);
        assert_eq!(self.snapshot(), before, "a rejected call changed the stats");
        for (off, data) in &self.blocks {
            assert_eq!(
                &self.a.read(*off, data.len()).unwrap(),
                data,
                "a rejected call changed the block at {off}"
            );
        }
        r
    }

    fn off(&self, i: usize) -> Offset {
        self.blocks[i].0
    }
}

fn fl(name: &ShmName, capacity: u64) -> Fixture<FreeListAllocator> {
    // Two small blocks (class 112), one large block (3 pages), one 16-byte block.
    Fixture::new(
        FreeListAllocator::create(name.as_str(), capacity).unwrap(),
        &[100, 100, 10_000, 16],
    )
}

fn slab(name: &ShmName) -> Fixture<SlabAllocator> {
    // Slot size 20: stride 24, so slots are 8-aligned and 4 padding bytes follow each.
    Fixture::new(
        SlabAllocator::create(name.as_str(), 20, 100).unwrap(),
        &[20, 20, 7],
    )
}

fn bump(name: &ShmName) -> Fixture<BumpAllocator> {
    Fixture::new(
        BumpAllocator::create(name.as_str(), 4096).unwrap(),
        &[100, 1000],
    )
}

fn opts(ms: u64) -> OpenOptions {
    OpenOptions {
        timeout: Duration::from_millis(ms),
        ..OpenOptions::default()
    }
}

fn data_end<A: ShmAllocator>(a: &A) -> u64 {
    a.segment().layout().data_end()
}

// ----------------------------------------------------------------- out of memory

#[test]
fn out_of_memory_free_list() {
    let name = ShmName::new("bad-oom-fl");
    let f = fl(&name, 16 * PAGE); // uses 1 + 3 + 1 pages (two spans, one large)
    let free_before = f.a.stats().free_bytes;
    // 11 free pages plus free blocks in the two spans: 52,944 bytes, but no 14-page run.
    let e = f.unchanged(|a| a.allocate(14 * PAGE as usize)).unwrap_err();
    let AllocError::OutOfMemory {
        requested,
        available,
    } = e
    else {
        panic!("expected OutOfMemory, got {e:?}");
    };
    assert_eq!(requested, 14 * PAGE);
    assert_eq!(available, free_before);
    assert!(
        available < requested && available >= 11 * PAGE,
        "{available}"
    );
    // Larger than the whole heap: TooLarge, with the heap size.
    let e = f
        .unchanged(|a| a.allocate(16 * PAGE as usize + 1))
        .unwrap_err();
    assert_eq!(
        e,
        AllocError::TooLarge {
            requested: 16 * PAGE + 1,
            max: 16 * PAGE
        }
    );
    let e = f.unchanged(|a| a.allocate(usize::MAX)).unwrap_err();
    assert!(matches!(e, AllocError::TooLarge { requested, .. } if requested == u64::MAX));
}

#[test]
fn out_of_memory_slab() {
    let name = ShmName::new("bad-oom-slab");
    let mut f = slab(&name);
    while let Ok(o) = f.a.allocate(20) {
        f.a.write(o, &[0xEE; 20]).unwrap();
        f.blocks.push((o, vec![0xEE; 20]));
    }
    assert_eq!(f.blocks.len(), 100);
    let e = f.unchanged(|a| a.allocate(5)).unwrap_err();
    assert_eq!(
        e,
        AllocError::OutOfMemory {
            requested: 5,
            available: 0
        }
    );
    let e = f.unchanged(|a| a.allocate(21)).unwrap_err();
    assert_eq!(
        e,
        AllocError::TooLarge {
            requested: 21,
            max: 20
        }
    );
}

#[test]
fn out_of_memory_bump() {
    let name = ShmName::new("bad-oom-bump");
    let f = bump(&name); // 100 + pad 4 + 1000 = 1104 of 4096 bytes used
    let used = f.a.used_bytes();
    assert_eq!(used, 1104);
    let e = f.unchanged(|a| a.allocate(3000)).unwrap_err();
    assert_eq!(
        e,
        AllocError::OutOfMemory {
            requested: 3000,
            available: 4096 - used
        }
    );
    // Fits by size, not once aligned.
    let e = f.unchanged(|a| a.allocate_aligned(2000, 4096)).unwrap_err();
    assert_eq!(
        e,
        AllocError::OutOfMemory {
            requested: 2000,
            available: 4096 - used
        }
    );
    let e = f.unchanged(|a| a.allocate(4097)).unwrap_err();
    assert_eq!(
        e,
        AllocError::TooLarge {
            requested: 4097,
            max: 4096
        }
    );
}

// ----------------------------------------------------------------- size and alignment

#[test]
fn zero_size() {
    let (n1, n2, n3) = (
        ShmName::new("bad-zero-fl"),
        ShmName::new("bad-zero-slab"),
        ShmName::new("bad-zero-bump"),
    );
    let (f1, f2, f3) = (fl(&n1, 16 * PAGE), slab(&n2), bump(&n3));
    assert_eq!(f1.unchanged(|a| a.allocate(0)), Err(AllocError::ZeroSize));
    assert_eq!(
        f1.unchanged(|a| a.allocate_aligned(0, 64)),
        Err(AllocError::ZeroSize)
    );
    assert_eq!(f2.unchanged(|a| a.allocate(0)), Err(AllocError::ZeroSize));
    assert_eq!(f3.unchanged(|a| a.allocate(0)), Err(AllocError::ZeroSize));
}

#[test]
fn bad_alignment() {
    let (n1, n2, n3) = (
        ShmName::new("bad-align-fl"),
        ShmName::new("bad-align-slab"),
        ShmName::new("bad-align-bump"),
    );
    let (f1, f2, f3) = (fl(&n1, 16 * PAGE), slab(&n2), bump(&n3));
    for align in [0, 3, 12, 4097, 8192, 1 << 40] {
        let want = Err(AllocError::BadAlignment { align, max: 4096 });
        assert_eq!(f1.unchanged(|a| a.allocate_aligned(16, align)), want);
        assert_eq!(f2.unchanged(|a| a.allocate_aligned(16, align)), want);
        assert_eq!(f3.unchanged(|a| a.allocate_aligned(16, align)), want);
    }
    // A power of two the slab's 24-byte stride cannot honour.
    assert_eq!(
        f2.unchanged(|a| a.allocate_aligned(16, 16)),
        Err(AllocError::BadAlignment { align: 16, max: 8 })
    );
}

// ----------------------------------------------------------------- bad offsets to free

#[test]
fn free_list_free_bad_offsets() {
    let name = ShmName::new("bad-off-fl");
    let f = fl(&name, 16 * PAGE);
    let l = *f.a.segment().layout();
    let (small, large) = (f.off(0).get(), f.off(2).get());
    let cases: Vec<(u64, FreeError)> = vec![
        (0, FreeError::Null),
        (1, FreeError::OutOfRange { offset: 1 }),
        (
            meta_region(&l).0,
            FreeError::OutOfRange {
                offset: meta_region(&l).0,
            },
        ),
        (
            l.data_offset - 8,
            FreeError::OutOfRange {
                offset: l.data_offset - 8,
            },
        ),
        (
            l.data_end() + 64,
            FreeError::OutOfRange {
                offset: l.data_end() + 64,
            },
        ),
        (u64::MAX, FreeError::OutOfRange { offset: u64::MAX }),
        // Inside a small block, and in the unused tail of its span (36 * 112 = 4032).
        (small + 8, FreeError::NotBlockStart { offset: small + 8 }),
        (small + 1, FreeError::NotBlockStart { offset: small + 1 }),
        (
            f.a.segment().layout().data_offset + 4032,
            FreeError::NotBlockStart {
                offset: l.data_offset + 4032,
            },
        ),
        // Inside a large block: its first page, an interior page, its last byte.
        (
            large + 100,
            FreeError::NotBlockStart {
                offset: large + 100,
            },
        ),
        (
            large + PAGE,
            FreeError::NotBlockStart {
                offset: large + PAGE,
            },
        ),
        (
            large + 3 * PAGE - 1,
            FreeError::NotBlockStart {
                offset: large + 3 * PAGE - 1,
            },
        ),
    ];
    assert_eq!(small, l.data_offset, "fixture layout changed");
    for (off, want) in cases {
        assert_eq!(
            f.unchanged(|a| a.free(Offset::new(off))),
            Err(want),
            "free({off:#x})"
        );
    }
    // A page never handed out: reported as a double free (an unallocated block).
    // (Small spans sit at the bottom of the region, large blocks at the top: the
    // middle page is free.)
    let never = l.data_offset + (l.data_len / PAGE / 2) * PAGE;
    assert_eq!(
        f.unchanged(|a| a.free(Offset::new(never))),
        Err(FreeError::DoubleFree { offset: never })
    );
}

/// `free` and `check_range` at exactly the end of the data region (one past the last
/// byte) must be rejected like any other offset outside it.
#[test]
fn free_list_offset_at_data_end() {
    let name = ShmName::new("bad-end-fl");
    let f = fl(&name, 16 * PAGE);
    let end = data_end(&f.a);
    let r = f.unchanged(|a| std::panic::catch_unwind(|| a.free(Offset::new(end))));
    assert_eq!(
        r.expect("free(data_end) panicked"),
        Err(FreeError::OutOfRange { offset: end })
    );
    let r = f.unchanged(|a| std::panic::catch_unwind(|| a.check_range(Offset::new(end), 0)));
    assert!(matches!(
        r.expect("check_range(data_end, 0) panicked"),
        Err(AccessError::OutOfBounds { .. } | AccessError::NotAllocated { .. })
    ));
    let r = f.unchanged(|a| std::panic::catch_unwind(|| a.write(Offset::new(end), &[])));
    assert!(r.expect("write(data_end, []) panicked").is_err());
}

#[test]
fn slab_free_bad_offsets() {
    let name = ShmName::new("bad-off-slab");
    let f = slab(&name);
    let l = *f.a.segment().layout();
    let s0 = f.off(0).get();
    assert_eq!(s0 % 24, l.data_offset % 24);
    let last_end = l.data_offset + 100 * 24;
    let cases: Vec<(u64, FreeError)> = vec![
        (0, FreeError::Null),
        (8, FreeError::OutOfRange { offset: 8 }),
        (
            l.data_offset - 8,
            FreeError::OutOfRange {
                offset: l.data_offset - 8,
            },
        ),
        (s0 + 8, FreeError::NotBlockStart { offset: s0 + 8 }),
        // The padding between slot_size (20) and the stride (24).
        (s0 + 20, FreeError::NotBlockStart { offset: s0 + 20 }),
        (last_end, FreeError::OutOfRange { offset: last_end }),
        (
            last_end + 24,
            FreeError::OutOfRange {
                offset: last_end + 24,
            },
        ),
        (u64::MAX, FreeError::OutOfRange { offset: u64::MAX }),
    ];
    for (off, want) in cases {
        assert_eq!(
            f.unchanged(|a| a.free(Offset::new(off))),
            Err(want),
            "free({off:#x})"
        );
    }
}

#[test]
fn bump_rejects_reads_outside_what_was_handed_out() {
    let name = ShmName::new("bad-off-bump");
    let f = bump(&name);
    let l = *f.a.segment().layout();
    let used_end = l.data_offset + f.a.used_bytes();
    assert_eq!(
        f.unchanged(|a| a.read(Offset::new(used_end), 1)),
        Err(AccessError::NotAllocated {
            offset: used_end,
            len: 1
        })
    );
    assert_eq!(
        f.unchanged(|a| a.write(Offset::new(used_end - 1), &[1, 2])),
        Err(AccessError::NotAllocated {
            offset: used_end - 1,
            len: 2
        })
    );
    assert_eq!(
        f.unchanged(|a| a.read(Offset::new(l.data_end()), 1)),
        Err(AccessError::OutOfBounds {
            offset: l.data_end(),
            len: 1,
            start: l.data_offset,
            end: l.data_end()
        })
    );
    assert_eq!(
        f.unchanged(|a| a.read(Offset::NULL, 1)),
        Err(AccessError::Null)
    );
}

// ----------------------------------------------------------------- double free

#[test]
fn double_free_free_list_small() {
    let name = ShmName::new("bad-df-fl-small");
    let mut f = fl(&name, 16 * PAGE);
    let (off, _) = f.blocks.remove(1); // the second 100-byte block, its span still in use
    f.a.free(off).unwrap();
    assert_eq!(
        f.unchanged(|a| a.free(off)),
        Err(FreeError::DoubleFree { offset: off.get() })
    );
    // The last block of its span: the span stays cached, the bit stays clear.
    let (only, _) = f.blocks.remove(2); // the 16-byte block, alone in its span
    f.a.free(only).unwrap();
    assert_eq!(
        f.unchanged(|a| a.free(only)),
        Err(FreeError::DoubleFree { offset: only.get() })
    );
}

#[test]
fn double_free_free_list_large() {
    let name = ShmName::new("bad-df-fl-large");
    let mut f = fl(&name, 16 * PAGE);
    let (off, _) = f.blocks.remove(2);
    f.a.free(off).unwrap();
    assert_eq!(
        f.unchanged(|a| a.free(off)),
        Err(FreeError::DoubleFree { offset: off.get() })
    );
    // Its interior pages are free pages now, not block starts of anything.
    assert_eq!(
        f.unchanged(|a| a.free(Offset::new(off.get() + PAGE))),
        Err(FreeError::DoubleFree {
            offset: off.get() + PAGE
        })
    );
}

#[test]
fn double_free_slab() {
    let name = ShmName::new("bad-df-slab");
    let mut f = slab(&name);
    let (off, _) = f.blocks.remove(0);
    f.a.free(off).unwrap();
    assert_eq!(
        f.unchanged(|a| a.free(off)),
        Err(FreeError::DoubleFree { offset: off.get() })
    );
    // A slot never handed out.
    let never = Offset::new(f.a.segment().layout().data_offset + 99 * 24);
    assert_eq!(
        f.unchanged(|a| a.free(never)),
        Err(FreeError::DoubleFree {
            offset: never.get()
        })
    );
}

// ----------------------------------------------------------------- reads and writes

#[test]
fn free_list_read_write_out_of_bounds() {
    let name = ShmName::new("bad-rw-fl");
    let mut f = fl(&name, 16 * PAGE);
    let l = *f.a.segment().layout();
    let small = f.off(0).get(); // 100 bytes, class 112
    let large = f.off(2).get(); // 10,000 bytes, 3 pages
    let na = |offset, len| Err::<(), _>(AccessError::NotAllocated { offset, len });
    // The class size is the block's real extent; one byte more crosses into the next block.
    assert!(f.a.check_range(Offset::new(small), 112).is_ok());
    assert_eq!(
        f.unchanged(|a| a.write(Offset::new(small), &[0xFF; 113])),
        na(small, 113)
    );
    assert_eq!(
        f.unchanged(|a| a.write(Offset::new(small + 100), &[0xFF; 13])),
        na(small + 100, 13)
    );
    assert_eq!(
        f.unchanged(|a| a.read(Offset::new(small), 113).map(drop)),
        na(small, 113)
    );
    // Large: the rounded extent is 3 pages; past it is refused.
    assert!(f.a.check_range(Offset::new(large), 3 * PAGE).is_ok());
    // (Large blocks are placed from the top of the region down: past this one may
    // be past the data region too, which is refused as out of bounds.)
    let past = |r: Result<(), AccessError>, off: u64, len: u64| match r {
        Err(AccessError::OutOfBounds { .. }) if large + 3 * PAGE == l.data_end() => {}
        r => assert_eq!(r, na(off, len)),
    };
    past(
        f.unchanged(|a| a.write(Offset::new(large + 3 * PAGE - 1), &[0xFF; 2])),
        large + 3 * PAGE - 1,
        2,
    );
    past(
        f.unchanged(|a| a.write(Offset::new(large), &vec![0xFF; 3 * PAGE as usize + 1])),
        large,
        3 * PAGE + 1,
    );
    // Outside the data region, and a length that overflows.
    assert_eq!(
        f.unchanged(|a| a.read(Offset::new(meta_region(&l).0), 8).map(drop)),
        Err(AccessError::OutOfBounds {
            offset: meta_region(&l).0,
            len: 8,
            start: l.data_offset,
            end: l.data_end()
        })
    );
    assert!(matches!(
        f.unchanged(|a| a.check_range(Offset::new(small), u64::MAX)),
        Err(AccessError::OutOfBounds { .. })
    ));
    assert_eq!(
        f.unchanged(|a| a.write(Offset::NULL, &[1])),
        Err(AccessError::Null)
    );
    // A freed block (small and large): reads and writes are refused.
    let (gone, _) = f.blocks.remove(1);
    f.a.free(gone).unwrap();
    assert_eq!(
        f.unchanged(|a| a.read(gone, 1).map(drop)),
        na(gone.get(), 1)
    );
    assert_eq!(f.unchanged(|a| a.write(gone, &[1])), na(gone.get(), 1));
    let (gone, _) = f.blocks.remove(1); // the large one (indices shifted)
    f.a.free(gone).unwrap();
    assert_eq!(f.unchanged(|a| a.write(gone, &[1])), na(gone.get(), 1));
    assert_eq!(
        f.unchanged(|a| a.write(Offset::new(gone.get() + PAGE), &[1])),
        na(gone.get() + PAGE, 1)
    );
}

#[test]
fn slab_read_write_out_of_bounds() {
    let name = ShmName::new("bad-rw-slab");
    let mut f = slab(&name);
    let s0 = f.off(0).get();
    let na = |offset, len| Err::<(), _>(AccessError::NotAllocated { offset, len });
    assert!(f.a.check_range(Offset::new(s0), 20).is_ok());
    // The padding after slot_size belongs to no block.
    assert_eq!(
        f.unchanged(|a| a.write(Offset::new(s0), &[9; 21])),
        na(s0, 21)
    );
    assert_eq!(
        f.unchanged(|a| a.write(Offset::new(s0 + 20), &[9])),
        na(s0 + 20, 1)
    );
    assert_eq!(
        f.unchanged(|a| a.write(Offset::new(s0 + 19), &[9; 2])),
        na(s0 + 19, 2)
    );
    let (gone, _) = f.blocks.remove(0);
    f.a.free(gone).unwrap();
    assert_eq!(
        f.unchanged(|a| a.read(gone, 1).map(drop)),
        na(gone.get(), 1)
    );
    assert_eq!(f.unchanged(|a| a.write(gone, &[1])), na(gone.get(), 1));
}

// ----------------------------------------------------------------- opening segments

#[test]
fn open_missing_name() {
    let name = ShmName::new("bad-missing");
    let want = SegmentError::NotFound {
        name: format!("/{}", name.as_str()),
    };
    assert_eq!(FreeListAllocator::open(name.as_str()).unwrap_err(), want);
    assert_eq!(SlabAllocator::open(name.as_str()).unwrap_err(), want);
    assert_eq!(BumpAllocator::open(name.as_str()).unwrap_err(), want);
    assert_eq!(shared_allocator::unlink(name.as_str()).unwrap_err(), want);
    assert!(!shm_path(name.as_str()).exists());
}

#[test]
fn open_wrong_kind() {
    let (n1, n2, n3) = (
        ShmName::new("bad-kind-fl"),
        ShmName::new("bad-kind-slab"),
        ShmName::new("bad-kind-bump"),
    );
    let (f1, f2, f3) = (fl(&n1, 16 * PAGE), slab(&n2), bump(&n3));
    let wk = |expected, found| SegmentError::WrongKind { expected, found };
    f1.unchanged(|_| {
        assert_eq!(
            SlabAllocator::open(n1.as_str()).unwrap_err(),
            wk("slab", "free-list")
        );
        assert_eq!(
            BumpAllocator::open(n1.as_str()).unwrap_err(),
            wk("bump", "free-list")
        );
    });
    f2.unchanged(|_| {
        assert_eq!(
            FreeListAllocator::open(n2.as_str()).unwrap_err(),
            wk("free-list", "slab")
        );
        assert_eq!(
            BumpAllocator::open(n2.as_str()).unwrap_err(),
            wk("bump", "slab")
        );
    });
    f3.unchanged(|_| {
        assert_eq!(
            FreeListAllocator::open(n3.as_str()).unwrap_err(),
            wk("free-list", "bump")
        );
        assert_eq!(
            SlabAllocator::open(n3.as_str()).unwrap_err(),
            wk("slab", "bump")
        );
    });
    // An unknown kind number in the header.
    write_at(&n1, 12, &77u32.to_le_bytes());
    assert_eq!(
        FreeListAllocator::open(n1.as_str()).unwrap_err(),
        wk("free-list", "unknown")
    );
}

fn write_at(name: &ShmName, offset: u64, bytes: &[u8]) {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(shm_path(name.as_str()))
        .unwrap();
    f.write_all_at(bytes, offset).unwrap();
}

#[test]
fn open_other_layout_version() {
    let name = ShmName::new("bad-version");
    let f = fl(&name, 16 * PAGE);
    for v in [0, LAYOUT_VERSION + 1, u32::MAX] {
        write_at(&name, 8, &v.to_le_bytes());
        assert_eq!(
            FreeListAllocator::open(name.as_str()).unwrap_err(),
            SegmentError::VersionMismatch {
                expected: LAYOUT_VERSION,
                found: v
            }
        );
    }
    // This process validated the header at create: its handle keeps working.
    f.unchanged(|a| {
        let o = a.allocate(10).unwrap();
        a.free(o).unwrap();
    });
}

#[test]
fn open_truncated_segment() {
    let name = ShmName::new("bad-trunc");
    let total = {
        let f = fl(&name, 16 * PAGE);
        f.a.segment().len()
    }; // unmapped here: truncating a file this process maps would SIGBUS it
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(shm_path(name.as_str()))
        .unwrap();
    file.set_len(total - PAGE).unwrap();
    assert_eq!(
        FreeListAllocator::open(name.as_str()).unwrap_err(),
        SegmentError::SizeMismatch {
            header: total,
            actual: total - PAGE
        }
    );
    // Grown instead of truncated: also a mismatch.
    file.set_len(total + PAGE).unwrap();
    assert_eq!(
        FreeListAllocator::open(name.as_str()).unwrap_err(),
        SegmentError::SizeMismatch {
            header: total,
            actual: total + PAGE
        }
    );
    // Cut inside the header: it can never become ready.
    file.set_len(100).unwrap();
    match FreeListAllocator::open_with(name.as_str(), &opts(100)).unwrap_err() {
        SegmentError::InitTimeout {
            size, creator_pid, ..
        } => {
            assert_eq!(size, 100);
            assert_eq!(creator_pid, 0);
        }
        e => panic!("expected InitTimeout, got {e:?}"),
    }
}

#[test]
fn open_garbage_file() {
    let name = ShmName::new("bad-garbage");
    drop(fl(&name, 16 * PAGE));
    let len = std::fs::metadata(shm_path(name.as_str())).unwrap().len();
    let mut rng = Rng::new(99);
    let mut junk: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
    junk[0] |= 1; // not all-zero magic (that would mean "still initialising")
    write_at(&name, 0, &junk);
    let found = u64::from_le_bytes(junk[..8].try_into().unwrap());
    assert_ne!(found, MAGIC);
    let want = SegmentError::BadMagic {
        name: format!("/{}", name.as_str()),
        found,
    };
    assert_eq!(FreeListAllocator::open(name.as_str()).unwrap_err(), want);
    assert_eq!(SlabAllocator::open(name.as_str()).unwrap_err(), want);
    assert_eq!(BumpAllocator::open(name.as_str()).unwrap_err(), want);
}

/// Takes (or, with `F_UNLCK`, releases) the init lock a creator holds from
/// `shm_open` until it publishes the header (byte 2^40 - 1 of the object).
fn init_lock(file: &std::fs::File, l_type: i16) {
    use nix::fcntl::{fcntl, FcntlArg};
    let fl = nix::libc::flock {
        l_type,
        l_whence: nix::libc::SEEK_SET as i16,
        l_start: (1 << 40) - 1,
        l_len: 1,
        l_pid: 0,
    };
    fcntl(file, FcntlArg::F_OFD_SETLK(&fl)).unwrap();
}

#[test]
fn open_never_initialised_file() {
    // An all-zero object that nobody initialises: not ours, or a creator that died
    // after ftruncate. Refused after the short grace, long before the open timeout.
    let name = ShmName::new("bad-zeros");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(shm_path(name.as_str()))
        .unwrap();
    file.set_len(64 << 10).unwrap();
    let long = opts(60_000); // the old code waited this whole minute
    for open in [
        |n: &str, o: &OpenOptions| FreeListAllocator::open_with(n, o).map(drop),
        |n: &str, o: &OpenOptions| SlabAllocator::open_with(n, o).map(drop),
        |n: &str, o: &OpenOptions| BumpAllocator::open_with(n, o).map(drop),
    ] {
        assert_eq!(
            open(name.as_str(), &long).unwrap_err(),
            SegmentError::Uninitialized {
                name: format!("/{}", name.as_str()),
                size: 64 << 10
            }
        );
    }
    // A creator that died before ftruncate: an empty object.
    file.set_len(0).unwrap();
    file.flush().unwrap();
    assert!(matches!(
        FreeListAllocator::open_with(name.as_str(), &long),
        Err(SegmentError::Uninitialized { size: 0, .. })
    ));
    // While some process holds the init lock (a creator still at work), open waits
    // for it, up to the timeout, whatever the object looks like.
    init_lock(&file, nix::libc::F_WRLCK as i16);
    match FreeListAllocator::open_with(name.as_str(), &opts(300)).unwrap_err() {
        SegmentError::InitTimeout {
            waited_ms, size, ..
        } => {
            assert!(waited_ms >= 300);
            assert_eq!(size, 0);
        }
        e => panic!("expected InitTimeout, got {e:?}"),
    }
    file.set_len(64 << 10).unwrap();
    match BumpAllocator::open_with(name.as_str(), &opts(300)).unwrap_err() {
        SegmentError::InitTimeout {
            waited_ms,
            creator_pid,
            size,
            ..
        } => {
            assert!(waited_ms >= 300);
            assert_eq!((creator_pid, size), (0, 64 << 10));
        }
        e => panic!("expected InitTimeout, got {e:?}"),
    }
    init_lock(&file, nix::libc::F_UNLCK as i16);
    assert!(matches!(
        BumpAllocator::open_with(name.as_str(), &long),
        Err(SegmentError::Uninitialized { .. })
    ));
}

#[test]
fn open_waits_for_a_creator_that_holds_the_init_lock_then_succeeds() {
    // A real creator racing many openers: none of them may see "uninitialised".
    for round in 0..20 {
        let name = ShmName::new(&format!("bad-race-{round}"));
        let n = name.as_str().to_owned();
        let openers: Vec<_> = (0..3)
            .map(|_| {
                let n = n.clone();
                std::thread::spawn(move || loop {
                    match FreeListAllocator::open(&n) {
                        Ok(_) => return,
                        Err(SegmentError::NotFound { .. }) => std::thread::yield_now(),
                        Err(e) => panic!("open during create: {e:?}"),
                    }
                })
            })
            .collect();
        let a = FreeListAllocator::create(&n, 1 << 20).unwrap();
        for t in openers {
            t.join().unwrap();
        }
        drop(a);
    }
}

// ----------------------------------------------------------------- names

#[test]
fn invalid_names() {
    let long = "x".repeat(255);
    for n in [
        "",
        "/",
        "a/b",
        "/a/b",
        "a\0b",
        ".",
        "..",
        "/..",
        long.as_str(),
    ] {
        let bad = |r: SegmentError| {
            assert!(
                matches!(r, SegmentError::InvalidName { ref name, .. } if name == n),
                "{n:?}: {r:?}"
            )
        };
        bad(FreeListAllocator::create(n, PAGE).unwrap_err());
        bad(SlabAllocator::create(n, 8, 8).unwrap_err());
        bad(BumpAllocator::create(n, PAGE).unwrap_err());
        bad(FreeListAllocator::open(n).unwrap_err());
        bad(SlabAllocator::open(n).unwrap_err());
        bad(BumpAllocator::open(n).unwrap_err());
        bad(shared_allocator::unlink(n).unwrap_err());
    }
    // The longest accepted name (254 bytes after the slash) works end to end.
    let base = format!("sa-test-longname-{}-", std::process::id());
    let n = format!("{base}{}", "y".repeat(254 - base.len()));
    let a = BumpAllocator::create(&n, PAGE).unwrap();
    let guard_unlink = scopeguard(&n);
    assert_eq!(a.segment().name(), format!("/{n}"));
    drop(BumpAllocator::open(&format!("/{n}")).unwrap());
    drop(guard_unlink);
    assert!(!shm_path(&n).exists());
}

/// Unlinks `n` when dropped (for names not made by ShmName).
fn scopeguard(n: &str) -> impl Drop + '_ {
    struct G<'a>(&'a str);
    impl Drop for G<'_> {
        fn drop(&mut self) {
            let _ = shared_allocator::unlink(self.0);
        }
    }
    G(n)
}

#[test]
fn create_existing_name() {
    let name = ShmName::new("bad-exists");
    let f = fl(&name, 16 * PAGE);
    let want = SegmentError::AlreadyExists {
        name: format!("/{}", name.as_str()),
    };
    f.unchanged(|_| {
        assert_eq!(
            FreeListAllocator::create(name.as_str(), PAGE).unwrap_err(),
            want
        );
        assert_eq!(
            SlabAllocator::create(name.as_str(), 8, 8).unwrap_err(),
            want
        );
        assert_eq!(
            BumpAllocator::create(name.as_str(), PAGE).unwrap_err(),
            want
        );
    });
    // The failed creates did not unlink the existing segment either.
    let again = FreeListAllocator::open(name.as_str()).unwrap();
    assert_eq!(again.stats(), f.a.stats());
}

#[test]
fn unlink_twice() {
    let name = ShmName::new("bad-unlink");
    let a = SlabAllocator::create(name.as_str(), 8, 8).unwrap();
    a.unlink().unwrap();
    assert_eq!(
        a.unlink().unwrap_err(),
        SegmentError::NotFound {
            name: format!("/{}", name.as_str())
        }
    );
    assert!(matches!(
        shared_allocator::unlink(name.as_str()),
        Err(SegmentError::NotFound { .. })
    ));
    // The mapping outlives the name.
    let o = a.allocate(8).unwrap();
    a.write(o, &[1; 8]).unwrap();
    assert_eq!(a.read(o, 8).unwrap(), vec![1; 8]);
}

#[test]
fn invalid_creation_parameters() {
    let name = ShmName::new("bad-param");
    let n = name.as_str();
    let ip = |r: SegmentError, what: &str, value: u64| match r {
        SegmentError::InvalidParameter { what: w, value: v } => {
            assert!(w.contains(what), "{w}");
            assert_eq!(v, value);
        }
        e => panic!("expected InvalidParameter, got {e:?}"),
    };
    ip(FreeListAllocator::create(n, 0).unwrap_err(), "capacity", 0);
    ip(
        FreeListAllocator::create(n, u64::MAX).unwrap_err(),
        "capacity",
        u64::MAX,
    );
    ip(SlabAllocator::create(n, 0, 10).unwrap_err(), "size", 0);
    ip(SlabAllocator::create(n, 10, 0).unwrap_err(), "count", 0);
    ip(
        SlabAllocator::create(n, (1 << 32) + 1, 1).unwrap_err(),
        "size",
        (1 << 32) + 1,
    );
    ip(BumpAllocator::create(n, 0).unwrap_err(), "capacity", 0);
    ip(
        BumpAllocator::create(n, 1 << 40).unwrap_err(),
        "capacity",
        1 << 40,
    );
    for mode in [0o1000, 0o4600, 0o7777, u32::MAX] {
        ip(
            FreeListAllocator::create_with(
                n,
                PAGE,
                &CreateOptions {
                    mode,
                    ..Default::default()
                },
            )
            .unwrap_err(),
            "mode",
            u64::from(mode),
        );
    }
    assert!(
        !shm_path(n).exists(),
        "a rejected create left an object behind"
    );
}

/// Slot size times slot count overflows u64: must be a parameter error, not a panic
/// (debug) or a slab whose slots lie outside its data region (release).
#[test]
fn slab_size_times_count_overflow() {
    let name = ShmName::new("bad-slab-ovf");
    let r = std::panic::catch_unwind(|| SlabAllocator::create(name.as_str(), 1 << 32, 1 << 32));
    let _ = shared_allocator::unlink(name.as_str());
    match r {
        Err(_) => panic!("SlabAllocator::create(1 << 32, 1 << 32) panicked"),
        Ok(Ok(_)) => panic!("SlabAllocator::create(1 << 32, 1 << 32) succeeded"),
        Ok(Err(e)) => assert!(
            matches!(
                e,
                SegmentError::InvalidParameter { .. } | SegmentError::Os { .. }
            ),
            "{e:?}"
        ),
    }
}
