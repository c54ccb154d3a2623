//! The typed layer across real processes: RelPtr/ShmBox ownership hand-over,
//! ShmVec single writer with a concurrent reader, named roots raced by several
//! processes, and arena handles going stale after a reset.
mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{results as finish, role, say, spawn_child, ShmName};
use shared_allocator::__private::fingerprint;
use shared_allocator::prelude::*;
use shared_allocator::{AccessError, ShmVecHeader};

const LIMIT: Duration = Duration::from_secs(120);

/// A small shared struct (hand-written impl: this test does not depend on the derive).
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
struct Particle {
    pos: [f32; 3],
    vel: [f32; 3],
    id: u64,
    next: RelPtr<Particle>,
}
// SAFETY: repr(C), fields are ShmSafe, 24 + 8 + 8 = 40 bytes = size_of (no padding).
unsafe impl ShmSafe for Particle {
    const FINGERPRINT: u64 = fingerprint::primitive("Particle", 40, 8);
}
const _: () = assert!(std::mem::size_of::<Particle>() == 40);

fn env(k: &str) -> String {
    std::env::var(k).unwrap_or_else(|_| panic!("child needs {k}"))
}

/// Entry point of every child process; a no-op in the parent's test run.
#[test]
fn child() {
    let Some(role) = role() else { return };
    let name = env("SA_NAME");
    match role.as_str() {
        "take-box" => {
            let alloc = FreeListAllocator::open(&name).unwrap();
            let token = BoxToken::<Particle>::from_raw([
                env("SA_OFF").parse().unwrap(),
                env("SA_NONCE").parse().unwrap(),
            ]);
            // Take ownership: exactly once.
            let mut b = ShmBox::from_token(&alloc, token).unwrap();
            assert_eq!(b.id, 7);
            assert_eq!(b.pos, [1.0, 2.0, 3.0]);
            assert!(matches!(
                ShmBox::from_token(&alloc, token),
                Err(shared_allocator::TokenError::AlreadyClaimed { .. })
            ));
            // Others read the linked particle by copy.
            let next = b.next.read(&alloc).unwrap();
            assert_eq!(next.id, 8);
            b.update(|p| p.id = 70); // the owner writes
            assert_eq!(b.rel_ptr().read(&alloc).unwrap().id, 70);
            // Drop: frees the block in the shared allocator.
            drop(b);
            say("ok");
        }
        "vec-reader" => {
            let alloc = FreeListAllocator::open(&name).unwrap();
            let done = alloc.root::<AtomicU64>("done").unwrap();
            let ptr = RelPtr::<ShmVecHeader<u64>>::from_raw(env("SA_PTR").parse().unwrap());
            let reader = ShmVecReader::open(&alloc, ptr).unwrap();
            alloc
                .root::<AtomicU64>("ready")
                .unwrap()
                .store(1, Ordering::Release);
            let mut seen = Vec::new();
            let mut reads = 0u64;
            loop {
                let finished = done.load(Ordering::Acquire) == 1;
                let from = seen.len();
                reader.read_from(from, &mut seen).unwrap();
                reads += 1;
                for (i, v) in seen.iter().enumerate().skip(from) {
                    assert_eq!(*v, i as u64 * 3, "element {i} wrong: a torn prefix");
                }
                if finished && seen.len() == reader.len() {
                    break;
                }
            }
            say(format!("{} {reads}", seen.len()));
        }
        "roots" => {
            let alloc = FreeListAllocator::open(&name).unwrap();
            let c = alloc.root::<AtomicU64>("counter").unwrap();
            for _ in 0..1000 {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
        "arena-read" => {
            let bump = BumpAllocator::open(&name).unwrap();
            let h = ArenaPtr::<u64>::from_parts(
                env("SA_OFF").parse().unwrap(),
                env("SA_EPOCH").parse().unwrap(),
                env("SA_LEN").parse().unwrap(),
            );
            match h.read(&bump) {
                Ok(v) => say(format!("ok {}", v.iter().sum::<u64>())),
                Err(e) if e.is_stale() => say("stale"),
                Err(e) => panic!("unexpected error {e}"),
            }
        }
        other => panic!("unknown role {other}"),
    }
}

#[test]
fn shm_box_ownership_moves_to_another_process() {
    let name = ShmName::new("typed-box");
    let alloc = FreeListAllocator::create(name.as_str(), 1 << 20).unwrap();
    let second = ShmBox::new_in(
        &alloc,
        Particle {
            pos: [0.0; 3],
            vel: [0.0; 3],
            id: 8,
            next: RelPtr::null(),
        },
    )
    .unwrap();
    let first = ShmBox::new_in(
        &alloc,
        Particle {
            pos: [1.0, 2.0, 3.0],
            vel: [0.5; 3],
            id: 7,
            next: second.rel_ptr(),
        },
    )
    .unwrap();
    let ptr = first.rel_ptr();
    let token = first.into_token();
    let [off, nonce] = token.to_raw();
    let kid = spawn_child(
        "child",
        "take-box",
        &[
            ("SA_NAME", name.as_str().into()),
            ("SA_OFF", off.to_string()),
            ("SA_NONCE", nonce.to_string()),
        ],
    );
    assert_eq!(finish(kid, LIMIT, "take-box child"), ["ok"]);
    // The child freed it: resolving is now an error, not a read of a dead block.
    assert!(matches!(
        ptr.read(&alloc),
        Err(AccessError::NotAllocated { .. })
    ));
    // And the token is spent here too.
    assert!(ShmBox::from_token(&alloc, token).is_err());
    drop(second);
    assert_eq!(alloc.stats().live_blocks, Some(0));
}

#[test]
fn shm_vec_reader_sees_consistent_prefix_while_writer_pushes() {
    let name = ShmName::new("typed-vec");
    let alloc = FreeListAllocator::create(name.as_str(), 64 << 20).unwrap();
    let done = alloc.root::<AtomicU64>("done").unwrap();
    let mut v = ShmVec::<u64, _>::new_in(&alloc).unwrap();
    let kid = spawn_child(
        "child",
        "vec-reader",
        &[
            ("SA_NAME", name.as_str().into()),
            ("SA_PTR", v.rel_ptr().to_raw().to_string()),
        ],
    );
    let ready = alloc.root::<AtomicU64>("ready").unwrap();
    let t0 = std::time::Instant::now();
    while ready.load(Ordering::Acquire) == 0 {
        assert!(t0.elapsed() < LIMIT, "watchdog: reader never became ready");
        std::thread::yield_now();
    }
    let n = 1_000_000u64;
    for i in 0..n {
        v.push(i * 3).unwrap(); // grows (and moves) the buffer ~18 times
        if i % 50_000 == 0 {
            v.pop(); // shrinking retires elements: readers must notice
            v.push(i * 3).unwrap();
        }
    }
    done.store(1, Ordering::Release);
    let out = finish(kid, LIMIT, "vec reader");
    let fields: Vec<u64> = out[0].split(' ').map(|x| x.parse().unwrap()).collect();
    assert_eq!(fields[0], n, "reader saw every element");
    println!("reader caught up after {} incremental reads", fields[1]);
    assert_eq!(v.len(), n as usize);
    assert_eq!(v.pop(), Some((n - 1) * 3));
    v.clear();
    assert!(v.is_empty());
}

#[test]
fn roots_are_created_once_when_processes_race() {
    let name = ShmName::new("typed-roots");
    let alloc = FreeListAllocator::create(name.as_str(), 1 << 20).unwrap();
    let kids: Vec<_> = (0..4)
        .map(|_| spawn_child("child", "roots", &[("SA_NAME", name.as_str().into())]))
        .collect();
    for k in kids {
        finish(k, LIMIT, "roots child");
    }
    let c = alloc.root::<AtomicU64>("counter").unwrap();
    assert_eq!(c.load(Ordering::Relaxed), 4000, "all four used one object");
    let roots = alloc.roots().unwrap();
    assert_eq!(roots.len(), 1, "created exactly once: {roots:?}");
    // The object, plus the overflow directory (made once) if the name hashed past
    // the fixed table.
    assert!(alloc.stats().live_blocks.unwrap() <= 2);
    match alloc.root::<std::sync::atomic::AtomicU32>("counter") {
        Err(Error::TypeMismatch {
            name,
            expected,
            found,
        }) => {
            assert_eq!(name, "counter");
            assert!(expected.ends_with("AtomicU32"), "{expected}");
            assert!(found.contains("AtomicU64"), "{found}");
        }
        other => panic!("expected TypeMismatch, got {other:?}"),
    }
}

#[test]
fn arena_handles_are_stale_after_reset_in_another_process() {
    let name = ShmName::new("typed-arena");
    let mut bump = BumpAllocator::create(name.as_str(), 1 << 20).unwrap();
    let mut arena = bump.arena();
    let h = arena.alloc_slice(&[1u64, 2, 3, 4]).unwrap().arena_ptr();
    let vars = |h: ArenaPtr<u64>| {
        [
            ("SA_NAME", name.as_str().to_owned()),
            ("SA_OFF", h.offset().get().to_string()),
            ("SA_EPOCH", h.epoch().to_string()),
            ("SA_LEN", h.len().to_string()),
        ]
    };
    let before = finish(
        spawn_child("child", "arena-read", &vars(h)),
        LIMIT,
        "reader",
    );
    assert_eq!(before, ["ok 10"]);
    arena.reset().unwrap();
    // Reuse the bytes in the new epoch: a stale reader must not see them.
    let fresh = arena
        .alloc_slice(&[100u64, 200, 300, 400])
        .unwrap()
        .arena_ptr();
    assert_eq!(fresh.offset(), h.offset());
    let after = finish(
        spawn_child("child", "arena-read", &vars(h)),
        LIMIT,
        "reader",
    );
    assert_eq!(after, ["stale"]);
    let now = finish(
        spawn_child("child", "arena-read", &vars(fresh)),
        LIMIT,
        "reader",
    );
    assert_eq!(now, ["ok 1000"]);
}

#[test]
fn bad_rel_ptrs_are_errors() {
    // Shared views live in raw segments (see `SegmentMode`).
    let name = ShmName::new("typed-bad");
    let alloc = FreeListAllocator::create(name.as_str(), 1 << 20).unwrap();
    let off = alloc.allocate(8).unwrap();
    alloc.write(off, &5u64.to_ne_bytes()).unwrap();
    let p = RelPtr::<AtomicU64>::from_offset(off);
    assert_eq!(
        RelPtr::<AtomicU64>::null().get(&alloc).err(),
        Some(AccessError::Null)
    );
    assert!(matches!(
        RelPtr::<AtomicU64>::from_raw(u64::MAX - 7).get(&alloc),
        Err(AccessError::OutOfBounds { .. })
    ));
    assert!(matches!(
        RelPtr::<AtomicU64>::from_raw(p.to_raw() + 1).get(&alloc),
        Err(AccessError::Misaligned { .. })
    ));
    // The block (8 bytes, in the 16-byte class) is too small for a [u64; 4].
    assert!(matches!(
        p.cast::<[u64; 4]>().read(&alloc),
        Err(AccessError::NotAllocated { .. })
    ));
    assert_eq!(p.get(&alloc).unwrap().load(Ordering::Relaxed), 5);
    assert_eq!(p.cast::<u64>().read(&alloc).unwrap(), 5);
    alloc.free(off).unwrap();
    assert!(matches!(
        p.get_checked(&alloc),
        Err(AccessError::NotAllocated { .. })
    ));
    // The fast path only promises bounds and alignment: still inside the data region.
    assert!(p.get(&alloc).is_ok());

    // In a segment of typed handles the same pointers are refused outright.
    let typed_name = ShmName::new("typed-bad-typed");
    let typed = FreeListAllocator::create(typed_name.as_str(), 1 << 20).unwrap();
    let b = ShmBox::new_in(&typed, AtomicU64::new(5)).unwrap();
    assert!(matches!(
        b.rel_ptr().get(&typed),
        Err(AccessError::WrongMode(_))
    ));
    assert_eq!(b.load(Ordering::Relaxed), 5);
}

/// A struct that is both ShmSafe (our derive) and zerocopy's byte-view traits.
#[derive(
    shared_allocator::ShmSafe,
    zerocopy::IntoBytes,
    zerocopy::FromBytes,
    zerocopy::Immutable,
    zerocopy::KnownLayout,
    Clone,
    Copy,
    Debug,
    PartialEq,
)]
#[repr(C)]
struct Sample {
    t: u64,
    v: [f32; 2],
    link: RelPtr<Sample>,
}

#[test]
fn byte_views_interoperate_with_zerocopy_and_bytemuck() {
    use zerocopy::{FromBytes, IntoBytes};
    let name = ShmName::new("typed-bytes");
    let alloc = FreeListAllocator::create(name.as_str(), 1 << 20).unwrap();
    let s = Sample {
        t: 9,
        v: [1.5, -2.0],
        link: RelPtr::from_raw(4096),
    };
    let b = ShmBox::new_in(&alloc, s).unwrap();
    // The bytes in shared memory are exactly zerocopy's view of the value...
    assert_eq!(b.as_bytes(), s.as_bytes());
    // ...and zerocopy reads them back (e.g. after they crossed a pipe).
    assert_eq!(Sample::read_from_bytes(b.as_bytes()).unwrap(), s);
    // RelPtr is a plain u64 to bytemuck.
    let raw: u64 = bytemuck::cast(s.link);
    assert_eq!(raw, 4096);
    let mut v = ShmVec::<u32, _>::new_in(&alloc).unwrap();
    v.extend_from_slice(&[1, 2]).unwrap();
    assert_eq!(v.as_bytes(), [1u32, 2].as_bytes());
}

#[test]
fn shm_vec_grows_in_place_once_its_buffer_is_whole_pages() {
    let name = ShmName::new("typed-vec-grow");
    let alloc = FreeListAllocator::create(name.as_str(), 64 << 20).unwrap();
    let mut v = ShmVec::<u64, _>::new_in(&alloc).unwrap();
    let mut moves = 0;
    let mut last = std::ptr::null();
    for i in 0..1_000_000u64 {
        v.push(i).unwrap();
        if v.as_slice().as_ptr() != last {
            moves += 1;
            last = v.as_slice().as_ptr();
        }
    }
    // 4..256 elements live in size classes (7 moves), one move to whole pages,
    // then every doubling extends in place over free pages.
    assert!(moves <= 9, "buffer moved {moves} times");
    assert_eq!(v.capacity(), 1 << 20);
    assert!(v.iter().enumerate().all(|(i, &x)| x == i as u64));
}
