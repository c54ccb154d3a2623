//! Single-process behaviour of the three allocators.
mod common;

use common::ShmName;
use shared_allocator::prelude::*;

#[test]
fn free_list_roundtrip_and_reuse_across_sizes() {
    let name = ShmName::new("smoke-fl");
    let a = FreeListAllocator::create(name.as_str(), 1 << 20).unwrap();
    let mut offs = Vec::new();
    for i in 1..2000usize {
        let size = 1 + (i * 37) % 3000;
        match a.allocate(size) {
            Ok(o) => {
                a.write(o, &vec![i as u8; size]).unwrap();
                offs.push((o, size, i as u8));
            }
            Err(AllocError::OutOfMemory { .. }) => break,
            Err(e) => panic!("{e}"),
        }
    }
    for &(o, size, tag) in &offs {
        assert_eq!(a.read(o, size).unwrap(), vec![tag; size]);
    }
    for &(o, ..) in &offs {
        a.free(o).unwrap();
    }
    assert_eq!(a.stats().live_blocks, Some(0));
    let big = a.allocate(1 << 19).unwrap();
    a.write(big, &[7; 1 << 19]).unwrap();
    a.free(big).unwrap();
    let opened = FreeListAllocator::open(name.as_str()).unwrap();
    assert_eq!(opened.stats(), a.stats());
}

use shared_allocator::AllocError;

#[test]
fn slab_and_bump_basics() {
    let name = ShmName::new("smoke-slab");
    let s = SlabAllocator::create(name.as_str(), 24, 130).unwrap();
    let offs: Vec<_> = (0..130).map(|_| s.allocate(24).unwrap()).collect();
    assert!(matches!(s.allocate(1), Err(AllocError::OutOfMemory { .. })));
    for o in &offs {
        s.free(*o).unwrap();
    }
    assert_eq!(s.stats().live_blocks, Some(0));

    let name = ShmName::new("smoke-bump");
    let mut b = BumpAllocator::create(name.as_str(), 4096).unwrap();
    let o = b.allocate_aligned(10, 64).unwrap();
    assert_eq!(o.get() % 64, 0);
    assert_eq!(b.epoch(), 0);
    b.reset().unwrap();
    assert_eq!(b.epoch(), 1);
    assert_eq!(b.available_bytes(), 4096);
}

#[test]
fn free_list_grows_large_blocks_in_place() {
    let name = ShmName::new("smoke-grow");
    let a = FreeListAllocator::create(name.as_str(), 64 * 4096).unwrap();
    // Large blocks are placed from the top down: a spacer above the block, freed,
    // leaves the pages right after it free.
    let spacer = a.allocate(3 * 4096).unwrap();
    let o = a.allocate(3 * 4096).unwrap();
    a.free(spacer).unwrap();
    a.write(o, &[1; 3 * 4096]).unwrap();
    assert!(a.write(o, &[2; 5 * 4096]).is_err(), "3 pages only");
    assert!(a.grow_in_place(o, 5 * 4096).unwrap());
    a.write(o, &[2; 5 * 4096]).unwrap();
    assert_eq!(a.read(o, 5 * 4096).unwrap(), vec![2; 5 * 4096]);
    // A neighbour right after the block stops further growth; nothing changes.
    let next = a.allocate(4096).unwrap();
    assert_eq!(next.get(), o.get() + 5 * 4096);
    let before = a.stats();
    assert!(!a.grow_in_place(o, 6 * 4096).unwrap());
    assert_eq!(a.stats(), before);
    // Interior offsets of the grown part resolve to the block; freeing frees all.
    a.write(Offset::new(o.get() + 4 * 4096 + 10), &[3; 100])
        .unwrap();
    a.free(next).unwrap();
    a.free(o).unwrap();
    assert_eq!(a.stats().live_blocks, Some(0));
    assert_eq!(a.stats().free_bytes, 64 * 4096);
    // Size-class blocks grow only within their class.
    let small = a.allocate(40).unwrap(); // class 48
    assert!(a.grow_in_place(small, 48).unwrap());
    assert!(!a.grow_in_place(small, 49).unwrap());
    a.free(small).unwrap();
}
