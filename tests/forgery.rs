//! The attacks of the "ownership that safe code cannot forge" issue (#15), one per
//! class, each written as a safe-code attacker and each ending in a typed error (the
//! compile-time ones are trybuild cases in `tests/ui_typed/`). Where the class
//! crosses processes, the forger and the victim are different processes.
mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{results as finish, role, say, spawn_child, ShmName};
use shared_allocator::__private::fingerprint;
use shared_allocator::prelude::*;
use shared_allocator::typed::ShmPtr;
use shared_allocator::{AccessError, Error, FreeError, ShmMutex, TokenError};

const LIMIT: Duration = Duration::from_secs(120);

fn env(k: &str) -> String {
    std::env::var(k).unwrap_or_else(|_| panic!("child needs {k}"))
}

fn env_u64(k: &str) -> u64 {
    env(k).parse().unwrap()
}

/// The claim word a token's nonce has (top bit set), as an attacker picks it.
const FORGED_NONCE: u64 = (1 << 63) | 0x5eed;

/// Entry point of every child process; a no-op in the parent's test run.
#[test]
fn child() {
    let Some(role) = role() else { return };
    let name = env("SA_NAME");
    let raw = [env_u64("SA_OFF"), env_u64("SA_NONCE")];
    #[cfg(feature = "rkyv")]
    if role == "open-arena-archive" {
        // Opens an arena archive token the parent forged: refused, or (before the
        // fix) a view whose bytes the parent's arena was about to write.
        use shared_allocator::archive::{ArenaArchiveReader, ArenaArchiveToken};
        let bump = BumpAllocator::open(&name).unwrap();
        match ArenaArchiveReader::<Vec<u64>, _>::from_token(&bump, ArenaArchiveToken::from_raw(raw))
        {
            Ok(r) => say(format!("redeemed {:?}", r.access().map(|a| a.len()))),
            Err(e) => say(format!("refused {e:?}")),
        }
        return;
    }
    let alloc = FreeListAllocator::open(&name).unwrap();
    match role.as_str() {
        // Redeems a BoxToken the parent forged: must be refused with a typed error.
        "redeem-box" => match ShmBox::<[u64; 4], _>::from_token(&alloc, BoxToken::from_raw(raw)) {
            Ok(b) => say(format!("redeemed {:?}", *b)),
            Err(e) => say(format!("refused {e:?}")),
        },
        "redeem-vec" => match ShmVec::<u64, _>::from_token(&alloc, VecToken::from_raw(raw)) {
            Ok(v) => say(format!("redeemed len {}", v.len())),
            Err(e) => say(format!("refused {e:?}")),
        },
        #[cfg(feature = "rkyv")]
        "redeem-archive" => {
            use shared_allocator::archive::{ArchiveToken, ShmArchive};
            match ShmArchive::<Vec<u64>, _>::from_token(&alloc, ArchiveToken::from_raw(raw)) {
                Ok(a) => {
                    say(format!("redeemed {}", a.len()));
                    std::mem::forget(a);
                }
                Err(e) => say(format!("refused {e:?}")),
            }
        }
        // Reads a generation-checked pointer the parent sent after dropping its box
        // and reusing the block.
        "read-shm-ptr" => match ShmPtr::<u64>::from_raw(raw).read(&alloc) {
            Ok(v) => say(format!("read {v}")),
            Err(e) => say(format!("refused {e:?}")),
        },
        other => panic!("unknown role {other}"),
    }
}

fn root_offset<A: Roots>(alloc: &A, name: &str) -> u64 {
    let info = alloc.roots().unwrap();
    info.iter().find(|r| r.name == name).unwrap().offset.get()
}

fn redeem_in_child(role: &str, name: &ShmName, raw: [u64; 2]) -> String {
    let child = spawn_child(
        "child",
        role,
        &[
            ("SA_NAME", name.as_str().to_owned()),
            ("SA_OFF", raw[0].to_string()),
            ("SA_NONCE", raw[1].to_string()),
        ],
    );
    let out = finish(child, LIMIT, role);
    out.into_iter()
        .find(|l| l.starts_with("redeemed") || l.starts_with("refused") || l.starts_with("read"))
        .unwrap_or_else(|| panic!("{role}: no verdict"))
}

/// Class 1: a BoxToken over the middle of another live box. The attacker writes a
/// plausible header (nonce, fingerprint) into its own box's payload and sends a
/// token naming it; before this issue the other process redeemed it and got a
/// second `&mut` to the attacker's live value.
#[test]
fn forged_box_token_inside_a_payload_is_refused_in_another_process() {
    let name = ShmName::new("forge-box");
    let alloc = FreeListAllocator::create(name.as_str(), 1 << 20).unwrap();
    let mut carrier = ShmBox::new_in(&alloc, [0u64; 16]).unwrap();
    carrier.update(|c| {
        c[0] = FORGED_NONCE;
        c[1] = <[u64; 4] as ShmSafe>::FINGERPRINT;
    });
    let at = carrier.rel_ptr().to_raw();
    let verdict = redeem_in_child("redeem-box", &name, [at, FORGED_NONCE]);
    assert!(verdict.contains("NotBlockStart"), "{verdict}");
    assert_eq!(carrier[0], FORGED_NONCE, "nothing changed in the carrier");
    // Every word of the payload, as a token offset: none is a block start.
    for i in 0..16u64 {
        let e = ShmBox::<[u64; 4], _>::from_token(
            &alloc,
            BoxToken::from_raw([at + 8 * i, FORGED_NONCE]),
        )
        .unwrap_err();
        assert!(
            matches!(e, TokenError::Access(AccessError::NotBlockStart { .. })),
            "{e}"
        );
    }
}

/// Class 1: a VecToken whose forged header (in a box payload) names another live
/// box as its buffer. Before: pushes overwrote the box, the drop freed it.
#[test]
fn forged_vec_header_naming_a_live_box_is_refused_in_another_process() {
    let name = ShmName::new("forge-vec");
    let alloc = FreeListAllocator::create(name.as_str(), 1 << 20).unwrap();
    let victim = ShmBox::new_in(&alloc, [7u64; 8]).unwrap();
    let mut carrier = ShmBox::new_in(&alloc, [0u64; 8]).unwrap();
    let vec_fp = fingerprint::str(<u64 as ShmSafe>::FINGERPRINT, "ShmVec");
    // [claim, fingerprint, len, cap, data, seq]
    let words = [FORGED_NONCE, vec_fp, 0, 8, victim.rel_ptr().to_raw(), 0];
    carrier.update(|c| c[..6].copy_from_slice(&words));
    let verdict = redeem_in_child(
        "redeem-vec",
        &name,
        [carrier.rel_ptr().to_raw(), FORGED_NONCE],
    );
    assert!(verdict.contains("NotBlockStart"), "{verdict}");
    assert_eq!(*victim, [7; 8]);
    // A genuine vector's header cannot be pointed at a box either: its data word is
    // written only by the vector, and a forged one at a block start needs a block
    // whose start safe code writes: there is none.
    let v = ShmVec::<u64, _>::new_in(&alloc).unwrap();
    let t = v.into_token();
    let v = ShmVec::from_token(&alloc, t).unwrap();
    drop(v);
}

/// Class 1: a token over a named root's object (all atomics, so any process may
/// write a header-shaped pair into it). Before: the root was freed and reused
/// while every process held `&` to it.
#[test]
fn forged_token_over_a_root_is_refused_and_the_root_stays() {
    let name = ShmName::new("forge-root");
    let alloc = FreeListAllocator::create(name.as_str(), 1 << 20).unwrap();
    let _typed = ShmBox::new_in(&alloc, 1u64).unwrap(); // a typed segment
    let root = alloc.root::<[AtomicU64; 4]>("words").unwrap();
    root[0].store(FORGED_NONCE, Ordering::Relaxed);
    root[1].store(<[u64; 4] as ShmSafe>::FINGERPRINT, Ordering::Relaxed);
    let at = root_offset(&alloc, "words");
    let verdict = redeem_in_child("redeem-box", &name, [at, FORGED_NONCE]);
    assert!(verdict.contains("NotBlockStart"), "{verdict}");
    // The root's block start holds a PINNED header no token can claim.
    let block = at - 16;
    let verdict = redeem_in_child("redeem-box", &name, [block, FORGED_NONCE]);
    assert!(verdict.starts_with("refused"), "{verdict}");
    root[2].store(5, Ordering::Relaxed);
    let again = alloc.root::<[AtomicU64; 4]>("words").unwrap();
    assert_eq!(
        again[2].load(Ordering::Relaxed),
        5,
        "the root is still there"
    );
}

/// Class 1: an ArchiveToken over a byte-exact copy of a genuine archive (header,
/// nonce and all) placed in a box payload. Before: validated, then rewritten
/// through the box under the reader's `&Archived`, and the next access faulted.
#[cfg(feature = "rkyv")]
#[test]
fn archive_token_over_a_copy_is_refused_in_another_process() {
    use shared_allocator::archive::ShmArchive;
    let name = ShmName::new("forge-arc");
    let alloc = FreeListAllocator::create(name.as_str(), 1 << 20).unwrap();
    let value: Vec<u64> = (0..32).collect();
    let a = ShmArchive::new_in(&alloc, &value).unwrap();
    let block_len = shared_allocator::__layout::HEADER_LEN as usize + a.len();
    let token = a.into_token();
    let bytes = alloc.read(token.offset(), block_len).unwrap();
    let mut carrier = ShmBox::new_in(&alloc, [0u64; 64]).unwrap();
    // A 16-aligned place inside the payload, as the archive format wants.
    let base = carrier.rel_ptr().to_raw();
    let skip = ((16 - base % 16) % 16) as usize / 8;
    for (i, w) in bytes.chunks(8).enumerate() {
        let mut b = [0u8; 8];
        b[..w.len()].copy_from_slice(w);
        carrier.update(|c| c[skip + i] = u64::from_ne_bytes(b));
    }
    let at = base + 8 * skip as u64;
    let verdict = redeem_in_child("redeem-archive", &name, [at, token.nonce()]);
    assert!(verdict.contains("NotBlockStart"), "{verdict}");
    // The genuine token still works, once.
    let a = ShmArchive::<Vec<u64>, _>::from_token(&alloc, token).unwrap();
    assert_eq!(a.access().unwrap().len(), 32);
}

/// Class 3: a lock in a root, in either segment mode: no raw write (which before
/// this issue landed under a held guard, changing the guard's `&T`), raw free or
/// view reaches a root's block ("roots are never freed").
#[test]
fn raw_access_never_reaches_a_roots_block_in_either_mode() {
    let name = ShmName::new("forge-lock");
    let alloc = FreeListAllocator::create(name.as_str(), 1 << 20).unwrap();
    let counter = alloc.root::<AtomicU64>("hits").unwrap();
    let off = alloc.allocate(8).unwrap();
    alloc.write(off, &[1; 8]).unwrap(); // the segment is raw now
    let m = alloc.root::<ShmMutex<u64>>("lock").unwrap();
    let mut g = m.lock().unwrap();
    *g = 7;
    for root in ["hits", "lock"] {
        let at = root_offset(&alloc, root);
        // Its block starts 16 bytes before the object (its PINNED header).
        for o in [at - 16, at - 8, at, at + 4] {
            let e = alloc.write(Offset::new(o), &[0xff; 4]).unwrap_err();
            assert!(matches!(e, AccessError::Root { .. }), "{root} {o}: {e}");
        }
        assert!(matches!(
            alloc.free(Offset::new(at - 16)),
            Err(FreeError::Root { .. })
        ));
        assert!(alloc.free(Offset::new(at)).is_err());
    }
    assert_eq!(*g, 7, "the guard's value did not change");
    drop(g);
    counter.fetch_add(1, Ordering::Relaxed);
    let again = alloc.root::<AtomicU64>("hits").unwrap();
    assert_eq!(again.load(Ordering::Relaxed), 1);
    alloc.write(off, &[2; 8]).unwrap(); // ordinary raw blocks still write
    alloc.free(off).unwrap(); // and free

    // In a typed segment the lock root works too, and nothing raw reaches it.
    let tname = ShmName::new("forge-lock-t");
    let t = FreeListAllocator::create(tname.as_str(), 1 << 20).unwrap();
    let _typed = ShmBox::new_in(&t, 1u64).unwrap();
    let m = t.root::<ShmMutex<u64>>("lock").unwrap();
    let g = m.lock().unwrap();
    let lock_at = root_offset(&t, "lock");
    assert!(t.write(Offset::new(lock_at), &[0; 8]).is_err());
    assert!(t.free(Offset::new(lock_at - 16)).is_err());
    drop(g);
}

/// Class 3: the raw `free` reads the root directory (the segment's, not the typed
/// layer's) for roots in the overflow part too.
#[test]
fn overflow_roots_are_never_freed_either() {
    use shared_allocator::__layout::FIXED_ROOTS;
    let name = ShmName::new("forge-overflow");
    let alloc = FreeListAllocator::create(name.as_str(), 1 << 20).unwrap();
    let off = alloc.allocate(8).unwrap();
    alloc.write(off, &[1; 8]).unwrap(); // a raw segment
    for i in 0..FIXED_ROOTS + 2 {
        let r = alloc.root::<AtomicU64>(&format!("r{i}")).unwrap();
        r.store(i as u64, Ordering::Relaxed);
    }
    // Every root's block, in either part of the directory, is refused.
    for i in 0..FIXED_ROOTS + 2 {
        let at = root_offset(&alloc, &format!("r{i}"));
        assert!(matches!(
            alloc.free(Offset::new(at - 16)),
            Err(FreeError::Root { .. })
        ));
    }
    let last = format!("r{}", FIXED_ROOTS + 1);
    let again = alloc.root::<AtomicU64>(&last).unwrap();
    assert_eq!(again.load(Ordering::Relaxed), FIXED_ROOTS as u64 + 1);
    alloc.free(off).unwrap();
}

/// Class 4: an arena handle rebuilt from numbers that name the reserved but not
/// yet written tail of a chunk. Before: a `&u64` there changed when the arena
/// later allocated. Now such a handle gives copies only.
#[test]
fn arena_handles_from_numbers_give_copies_not_views() {
    let name = ShmName::new("forge-arena");
    let mut bump = BumpAllocator::create(name.as_str(), 1 << 20).unwrap();
    let arena = bump.arena();
    let first = arena.alloc(1u64).unwrap();
    let h = first.arena_ptr();
    // The next 8 bytes are reserved by the arena but not written yet.
    let forged = ArenaPtr::<u64>::from_parts(h.offset().get() + 8, h.epoch(), 1);
    let e = forged.get(arena.allocator()).unwrap_err();
    assert!(matches!(e, AccessError::Unverified { .. }), "{e}");
    assert!(forged.get_slice(arena.allocator()).is_err());
    // Copies are sound for any numbers (checked, atomic).
    let _ = forged.read(arena.allocator());
    let second = arena.alloc(2u64).unwrap();
    assert_eq!(*second.get().unwrap(), 2);
    // The genuine handle views fine.
    assert_eq!(*h.get(arena.allocator()).unwrap(), 1);
}

/// Class 4: a genuine (viewable) arena handle from one bump segment used against
/// another segment in the same epoch, where the same offset is an arena chunk's
/// unwritten tail. Before: the view was granted and changed when the second
/// segment's arena wrote there. Now a handle views only the segment it was made in.
#[test]
fn arena_handle_of_another_segment_gives_no_view() {
    let (na, nb) = (ShmName::new("forge-seg-a"), ShmName::new("forge-seg-b"));
    let mut a = BumpAllocator::create(na.as_str(), 1 << 20).unwrap();
    let mut b = BumpAllocator::create(nb.as_str(), 1 << 20).unwrap();
    let arena_a = a.arena();
    let _first = arena_a.alloc(1u64).unwrap();
    let h = arena_a.alloc_slice(&[0u64; 16]).unwrap().arena_ptr();
    assert!(!h.is_from_numbers());
    let arena_b = b.arena();
    let _first_b = arena_b.alloc(1u64).unwrap();
    assert_eq!(
        arena_b.epoch(),
        h.epoch(),
        "both segments are in the same epoch"
    );
    // In `b`, `h`'s range is the reserved, unwritten tail of `arena_b`'s chunk.
    let e = h.get_slice(arena_b.allocator()).unwrap_err();
    assert!(matches!(e, AccessError::Unverified { .. }), "{e}");
    assert!(h.get(arena_b.allocator()).is_err());
    let later = arena_b.alloc_slice(&[9u64; 16]).unwrap();
    assert_eq!(
        later.arena_ptr().offset(),
        h.offset(),
        "the bytes a view would have covered"
    );
    // Its own segment views it, also through a second handle of the same segment.
    assert_eq!(*h.get_slice(arena_a.allocator()).unwrap(), [0; 16]);
    let a2 = BumpAllocator::open(na.as_str()).unwrap();
    assert_eq!(*h.get_slice(&a2).unwrap(), [0; 16]);
}

/// Class 4: an arena archive token forged over an arena chunk's reserved but
/// unwritten tail that still holds a genuine archive of an earlier epoch. Before:
/// the checksum was of the bytes alone, so another process opened it as a view,
/// and the arena's next allocations wrote under that `&Archived`. Now an arena
/// archive's checksum is keyed (segment secret) over block offset and epoch: the
/// old image, a copy of a current one elsewhere, or a hand-built one, is refused.
#[cfg(feature = "rkyv")]
#[test]
fn forged_arena_archive_token_over_an_unwritten_tail_is_refused() {
    use shared_allocator::archive::{ArchiveError, ArenaArchiveReader, ArenaArchiveToken};
    let name = ShmName::new("forge-arena-arc");
    let mut bump = BumpAllocator::create(name.as_str(), 1 << 20).unwrap();
    let value: Vec<u64> = (0..32).collect();
    // Epoch N-1: a genuine archive at the start of the bump region.
    let (old, old_epoch, len) = {
        let arena = bump.arena();
        let a = arena.archive(&value).unwrap();
        let len = a.len();
        let t = a.into_token();
        (t.offset().get(), t.epoch(), len)
    };
    let header = shared_allocator::__layout::HEADER_LEN as usize;
    let image = bump
        .read(Offset::new(old), (header + len).next_multiple_of(8))
        .unwrap();
    let epoch = bump.reset().unwrap();
    assert_ne!(epoch, old_epoch);
    // Epoch N: an arena reserves its chunk over the same bytes and writes only
    // its first value; the old archive's header and bytes sit in the tail.
    let arena = bump.arena();
    let first = arena.alloc(7u64).unwrap();
    assert_eq!(
        first.arena_ptr().offset().get(),
        old,
        "the chunk starts there"
    );
    let forged = ArenaArchiveToken::<Vec<u64>>::from_raw([old, epoch]);
    let verdict = redeem_in_child("open-arena-archive", &name, forged.to_raw());
    assert!(verdict.contains("Checksum"), "{verdict}");
    let e = ArenaArchiveReader::from_token(arena.allocator(), forged).unwrap_err();
    assert!(matches!(e, ArchiveError::Checksum { .. }), "{e}");
    assert!(forged.deserialize_copied(arena.allocator()).is_err());
    // A byte-exact copy of the old image written by the arena (so bytes it will
    // never write again) is refused too: the checksum binds the block offset.
    let mut words = vec![0u64; image.len() / 8];
    for (w, b) in words.iter_mut().zip(image.chunks(8)) {
        *w = u64::from_ne_bytes(b.try_into().unwrap());
    }
    let _pad = arena.alloc(0u64).unwrap();
    let copy = arena.alloc_slice(&words).unwrap();
    let at = copy.arena_ptr().offset().get();
    assert_eq!(at % 16, 0, "an archive-aligned place");
    let e = ArenaArchiveReader::from_token(
        arena.allocator(),
        ArenaArchiveToken::<Vec<u64>>::from_raw([at, epoch]),
    )
    .unwrap_err();
    assert!(matches!(e, ArchiveError::Checksum { .. }), "{e}");
    // A genuine archive of this epoch opens, in another process too; its token
    // with another epoch is Stale.
    let t = arena.archive(&value).unwrap().into_token();
    let verdict = redeem_in_child("open-arena-archive", &name, t.to_raw());
    assert_eq!(verdict, "redeemed Ok(32)");
    let stale = ArenaArchiveToken::<Vec<u64>>::from_raw([t.offset().get(), old_epoch]);
    assert!(ArenaArchiveReader::from_token(arena.allocator(), stale).is_err());
}

/// Class 5: owning handles copied by fork. The child's copy is no owner: its drop
/// frees nothing (the parent's next allocation does not get the block twice),
/// access is refused, and an arena value's view in the child takes its own pin.
#[test]
fn fork_children_do_not_own_their_parents_handles() {
    if role().is_some() {
        return;
    }
    let child = spawn_child("fork_entry", "fork", &[]);
    let out = finish(child, LIMIT, "fork");
    assert!(out.iter().any(|l| l == "fork ok"), "{out:?}");
}

/// The forking role (single-threaded: run through `--test-threads=1`).
#[test]
fn fork_entry() {
    if role().as_deref() != Some("fork") {
        return;
    }
    use shared_allocator::coord::LockError;
    let name = ShmName::new("forge-fork");
    let alloc = FreeListAllocator::create(name.as_str(), 1 << 20).unwrap();
    let mut b = ShmBox::new_in(&alloc, [3u64; 4]).unwrap();
    let mut v = ShmVec::<u64, _>::new_in(&alloc).unwrap();
    v.push(1).unwrap();
    let m = alloc.root::<ShmMutex<u64>>("lock").unwrap();
    let mut g = m.lock().unwrap();
    *g = 11;
    let bname = ShmName::new("forge-fork-b");
    let mut bump = BumpAllocator::create(bname.as_str(), 1 << 20).unwrap();
    let arena = bump.arena();
    let ab = arena.alloc(5u64).unwrap();
    let view = ab.get().unwrap();
    #[cfg(feature = "rkyv")]
    let (archive, reader) = {
        use shared_allocator::archive::ArenaArchiveReader;
        let a = arena.archive(&vec![1u64, 2, 3]).unwrap();
        let t = arena.archive(&vec![4u64]).unwrap().into_token();
        (
            a,
            ArenaArchiveReader::from_token(arena.allocator(), t).unwrap(),
        )
    };
    let live = alloc.stats().live_blocks.unwrap();
    // SAFETY: this process is single-threaded (a test binary run with
    // --test-threads=1, in a role that spawns no threads).
    match unsafe { nix::unistd::fork() }.unwrap() {
        nix::unistd::ForkResult::Child => {
            // The panics below are expected (and caught): keep stderr quiet.
            std::panic::set_hook(Box::new(|_| {}));
            let forked = |r: Result<(), AccessError>| matches!(r, Err(AccessError::Forked { .. }));
            let panics =
                |f: &dyn Fn()| std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err();
            let mut checks: Vec<(&str, bool)> = vec![
                ("box not owner", !b.is_owner()),
                ("vec not owner", !v.is_owner()),
                ("guard not holder", !g.is_holder()),
                (
                    "push",
                    matches!(v.push(2), Err(Error::Access(AccessError::Forked { .. }))),
                ),
                ("box try_get", forked(b.try_get().map(|_| ()))),
                ("box try_update", forked(b.try_update(|_| ()))),
                ("vec try_as_slice", forked(v.try_as_slice().map(|_| ()))),
                ("guard try_get", forked(g.try_get().map(|_| ()))),
                ("guard try_get_mut", forked(g.try_get_mut().map(|_| ()))),
                ("view try_get", forked(view.try_get().map(|_| ()))),
                (
                    "box deref panics",
                    panics(&|| {
                        std::hint::black_box(b[0]);
                    }),
                ),
                (
                    "vec as_slice panics",
                    panics(&|| {
                        std::hint::black_box(v.as_slice().len());
                    }),
                ),
                (
                    "guard deref panics",
                    panics(&|| {
                        std::hint::black_box(*g);
                    }),
                ),
                (
                    "view deref panics",
                    panics(&|| {
                        std::hint::black_box(*view);
                    }),
                ),
                // A fresh view in the child pins in the child.
                ("child's own view", *ab.get().unwrap() == 5),
            ];
            #[cfg(feature = "rkyv")]
            {
                use shared_allocator::archive::ArchiveError;
                let f = |r: Result<usize, ArchiveError>| {
                    matches!(r, Err(ArchiveError::Access(AccessError::Forked { .. })))
                };
                checks.push(("arena archive access", f(archive.access().map(|a| a.len()))));
                checks.push(("arena reader access", f(reader.access().map(|a| a.len()))));
                checks.push(("copy path works", reader.deserialize_copied().is_ok()));
            }
            checks.push(("box try_into_token", forked(b.try_into_token().map(|_| ()))));
            checks.push(("vec try_into_token", forked(v.try_into_token().map(|_| ()))));
            drop(g); // must not unlock the parent's lock
            let bad: Vec<&str> = checks.iter().filter(|c| !c.1).map(|c| c.0).collect();
            if !bad.is_empty() {
                eprintln!("fork child: failed checks {bad:?}");
            }
            std::process::exit(if bad.is_empty() { 0 } else { 1 });
        }
        nix::unistd::ForkResult::Parent { child } => {
            let st = nix::sys::wait::waitpid(child, None).unwrap();
            assert!(
                matches!(st, nix::sys::wait::WaitStatus::Exited(_, 0)),
                "{st:?}"
            );
            assert_eq!(
                alloc.stats().live_blocks.unwrap(),
                live,
                "child freed nothing"
            );
            assert_eq!(*b, [3; 4]);
            b.update(|v| v[0] = 4);
            assert_eq!(v.as_slice(), &[1]);
            // The child's copy of the guard did not unlock the parent's lock.
            assert!(matches!(m.try_lock(), Err(LockError::WouldBlock)));
            assert!(g.is_holder());
            *g += 1;
            drop(g);
            assert_eq!(*m.lock().unwrap(), 12);
            assert_eq!(*view, 5);
            #[cfg(feature = "rkyv")]
            {
                assert_eq!(archive.access().unwrap().len(), 3);
                assert_eq!(reader.access().unwrap().len(), 1);
                drop((archive, reader));
            }
            drop(view);
            drop(arena);
            bump.unlink().unwrap();
            say("fork ok");
        }
    }
}

/// Class 7: a stale pointer. The message-0 pointer must not read message 256's
/// value after the block is reused: a `ShmPtr` is an error, in another process.
#[test]
fn stale_shm_ptr_is_an_error_in_another_process() {
    let name = ShmName::new("forge-gen");
    let alloc = FreeListAllocator::create(name.as_str(), 1 << 20).unwrap();
    let first = ShmBox::new_in(&alloc, 0u64).unwrap();
    let p = first.shm_ptr();
    let rel = first.rel_ptr();
    let verdict = redeem_in_child("read-shm-ptr", &name, p.to_raw());
    assert_eq!(verdict, "read 0");
    drop(first);
    let second = ShmBox::new_in(&alloc, 256u64).unwrap();
    assert_eq!(second.rel_ptr(), rel, "the block was reused");
    assert_eq!(rel.read(&alloc).unwrap(), 256, "a bare RelPtr cannot tell");
    let verdict = redeem_in_child("read-shm-ptr", &name, p.to_raw());
    assert!(verdict.contains("StaleGeneration"), "{verdict}");
    // The new box's own pointer reads it; a forged generation does not.
    assert_eq!(second.shm_ptr().read(&alloc).unwrap(), 256);
    let [b, g] = second.shm_ptr().to_raw();
    assert!(ShmPtr::<u64>::from_raw([b, g + 1]).read(&alloc).is_err());
    // Ownership moves keep the generation (same object).
    let q = second.shm_ptr();
    let t = second.into_token();
    let back = ShmBox::<u64, _>::from_token(&alloc, t).unwrap();
    assert_eq!(q.read(&alloc).unwrap(), 256);
    drop(back);
    assert!(q.read(&alloc).is_err());
}
