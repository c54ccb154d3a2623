//! The attacks of the "sound by construction" issue, each ending in a typed error
//! (the compile-time ones are trybuild cases in `tests/ui_typed/` and
//! `tests/ui_layout/`), with real processes wherever the scenario crosses processes.
mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{results as finish, role, say, spawn_child, ShmName};
use shared_allocator::__layout::HEADER_LEN;
use shared_allocator::archive::{ArchiveToken, ShmArchive};
use shared_allocator::prelude::*;
use shared_allocator::segment::SegmentMode;
use shared_allocator::typed::{TokenSlot, MAX_ROOTS};
use shared_allocator::{
    AccessError, AllocError, ArchiveError, FreeError, ShmVecHeader, TokenError, WrongMode,
};

const LIMIT: Duration = Duration::from_secs(120);

fn env(k: &str) -> String {
    std::env::var(k).unwrap_or_else(|_| panic!("child needs {k}"))
}

/// Entry point of every child process; a no-op in the parent's test run.
#[test]
fn child() {
    let Some(role) = role() else { return };
    let name = env("SA_NAME");
    match role.as_str() {
        // One run of a writer program: takes the log vector from its root (or makes
        // it), appends its range, parks the vector again and exits.
        "vec-writer" => {
            let alloc = FreeListAllocator::open(&name).unwrap();
            let slot = alloc.root::<TokenSlot>("log").unwrap();
            let mut log = match slot.take::<VecToken<u64>>() {
                Some(t) => ShmVec::from_token(&alloc, t).unwrap(),
                None => ShmVec::new_in(&alloc).unwrap(),
            };
            let from: u64 = env("SA_FROM").parse().unwrap();
            assert_eq!(
                log.len() as u64,
                from,
                "the previous run's elements are there"
            );
            for i in from..from + 10_000 {
                log.push(i).unwrap();
            }
            slot.put(log.into_token());
            say("parked");
        }
        // Several processes race to redeem one token: exactly one wins.
        "redeem" => {
            let alloc = FreeListAllocator::open(&name).unwrap();
            let go = alloc.root::<AtomicU64>("go").unwrap();
            let token = BoxToken::<[u64; 4]>::from_raw([
                env("SA_OFF").parse().unwrap(),
                env("SA_NONCE").parse().unwrap(),
            ]);
            while go.load(Ordering::Acquire) == 0 {
                std::hint::spin_loop();
            }
            let taken = ShmBox::from_token(&alloc, token);
            match taken {
                Ok(b) => {
                    assert_eq!(*b, [1, 2, 3, 4]);
                    // Give it back for the parent to free.
                    alloc
                        .root::<TokenSlot>("winner")
                        .unwrap()
                        .put(b.into_token());
                    say("won");
                }
                Err(TokenError::AlreadyClaimed { .. }) => say("refused"),
                Err(e) => panic!("unexpected {e}"),
            };
        }
        // A peer that rewrites one relative pointer inside a validated archive.
        "scribble-relptr" => {
            let alloc = FreeListAllocator::open(&name).unwrap();
            let at: u64 = env("SA_AT").parse().unwrap();
            // An untrusted writer (the raw API refuses typed segments).
            common::scribble(&alloc, Offset::new(at), &(-1_000_000i32).to_le_bytes()).unwrap();
            say("scribbled");
        }
        // Creates its own 100 roots while three other processes do the same.
        "many-roots" => {
            let alloc = FreeListAllocator::open(&name).unwrap();
            let go = alloc.root::<AtomicU64>("go").unwrap();
            while go.load(Ordering::Acquire) == 0 {
                std::hint::spin_loop();
            }
            let me = env("SA_ME");
            for i in 0..100 {
                let c = alloc.root::<AtomicU64>(&format!("r-{me}-{i}")).unwrap();
                c.fetch_add(1, Ordering::Relaxed);
            }
            say("done");
        }
        other => panic!("unknown role {other}"),
    }
}

/// Four processes create 400 roots at once: the overflow directory is grown by
/// exactly one of them (no leaked directory blocks), and every root exists once.
#[test]
fn roots_directory_grows_once_under_a_race() {
    let name = ShmName::new("snd-many-roots");
    let alloc = FreeListAllocator::create(name.as_str(), 8 << 20).unwrap();
    let go = alloc.root::<AtomicU64>("go").unwrap();
    let kids: Vec<_> = (0..4)
        .map(|k| {
            spawn_child(
                "child",
                "many-roots",
                &[("SA_NAME", name.as_str().into()), ("SA_ME", k.to_string())],
            )
        })
        .collect();
    go.store(1, Ordering::Release);
    for k in kids {
        assert_eq!(finish(k, LIMIT, "root creator"), ["done"]);
    }
    let roots = alloc.roots().unwrap();
    assert_eq!(roots.len(), 401);
    // 401 objects and one directory block: nothing leaked by the race.
    assert_eq!(alloc.stats().live_blocks, Some(402));
}

/// A `ShmVec` is handed over through a root, and appended to by a writer process
/// after the previous writer process exited (a restart), twice; then taken here.
#[test]
fn shm_vec_survives_writer_restarts_through_a_root() {
    let name = ShmName::new("snd-vec-restart");
    let alloc = FreeListAllocator::create(name.as_str(), 8 << 20).unwrap();
    for run in 0..3u64 {
        let kid = spawn_child(
            "child",
            "vec-writer",
            &[
                ("SA_NAME", name.as_str().into()),
                ("SA_FROM", (run * 10_000).to_string()),
            ],
        );
        assert_eq!(finish(kid, LIMIT, "vec writer"), ["parked"]);
    }
    let slot = alloc.root::<TokenSlot>("log").unwrap();
    let token: VecToken<u64> = slot.take().expect("the last writer parked the log");
    // A reader follows the vector without owning it.
    let reader = ShmVecReader::open(
        &alloc,
        RelPtr::<ShmVecHeader<u64>>::from_offset(token.offset()),
    )
    .unwrap();
    assert_eq!(reader.to_vec().unwrap(), (0..30_000).collect::<Vec<u64>>());
    let log = ShmVec::from_token(&alloc, token).unwrap();
    assert!(log.iter().copied().eq(0..30_000));
    // The token is spent; a wrong element type is refused before any claim.
    assert!(matches!(
        ShmVec::<u64, _>::from_token(&alloc, token),
        Err(TokenError::AlreadyClaimed { .. })
    ));
    let wrong = VecToken::<u32>::from_raw(token.to_raw());
    assert!(matches!(
        ShmVec::<u32, _>::from_token(&alloc, wrong),
        Err(TokenError::TypeMismatch { .. })
    ));
    drop(log);
    let roots_blocks = alloc.stats().live_blocks.unwrap();
    assert!(
        roots_blocks <= 2,
        "only the root slot (and directory) left: {roots_blocks}"
    );
}

/// Four processes race `from_token` on one token: exactly one owns the box.
#[test]
fn a_token_is_redeemed_exactly_once_across_processes() {
    let name = ShmName::new("snd-redeem");
    let alloc = FreeListAllocator::create(name.as_str(), 1 << 20).unwrap();
    let go = alloc.root::<AtomicU64>("go").unwrap();
    let token = ShmBox::new_in(&alloc, [1u64, 2, 3, 4])
        .unwrap()
        .into_token();
    let [off, nonce] = token.to_raw();
    let kids: Vec<_> = (0..4)
        .map(|_| {
            spawn_child(
                "child",
                "redeem",
                &[
                    ("SA_NAME", name.as_str().into()),
                    ("SA_OFF", off.to_string()),
                    ("SA_NONCE", nonce.to_string()),
                ],
            )
        })
        .collect();
    go.store(1, Ordering::Release);
    let outs: Vec<String> = kids
        .into_iter()
        .flat_map(|k| finish(k, LIMIT, "redeemer"))
        .collect();
    assert_eq!(outs.iter().filter(|l| *l == "won").count(), 1, "{outs:?}");
    assert_eq!(
        outs.iter().filter(|l| *l == "refused").count(),
        3,
        "{outs:?}"
    );
    assert!(ShmBox::from_token(&alloc, token).is_err(), "spent here too");
    let back: BoxToken<[u64; 4]> = alloc.root::<TokenSlot>("winner").unwrap().take().unwrap();
    drop(ShmBox::from_token(&alloc, back).unwrap());
}

/// The attack: `from_token` twice on one token, drop one handle, reuse the
/// block for a box of the same size. The second redemption is an error now, so no
/// second handle exists to read the reused bytes as an archive.
#[test]
fn from_token_twice_then_reuse_is_refused() {
    let name = ShmName::new("snd-twice");
    let alloc = FreeListAllocator::create(name.as_str(), 1 << 20).unwrap();
    let value: Vec<String> = vec!["a".into(), "bc".into()];
    let token = ShmArchive::new_in(&alloc, &value).unwrap().into_token();
    let first = ShmArchive::<Vec<String>, _>::from_token(&alloc, token).unwrap();
    let e = ShmArchive::<Vec<String>, _>::from_token(&alloc, token).unwrap_err();
    assert!(
        matches!(e, ArchiveError::Token(TokenError::AlreadyClaimed { .. })),
        "{e}"
    );
    let size = HEADER_LEN as usize + first.len();
    drop(first);
    // Reuse the freed block with a box of the same size class.
    let filler = ShmBox::new_in(&alloc, [0x7fff_fff0u64; 4]).unwrap();
    let _more: Vec<_> = (0..4)
        .map(|_| ShmBox::new_in(&alloc, [u64::MAX; 4]).unwrap())
        .collect();
    let e = ShmArchive::<Vec<String>, _>::from_token(&alloc, token).unwrap_err();
    assert!(
        matches!(
            e,
            ArchiveError::Token(_) | ArchiveError::Access(_) | ArchiveError::BadHeader { .. }
        ),
        "{e} (block of {size} bytes)"
    );
    // Boxes too.
    let t = filler.into_token();
    let b = ShmBox::from_token(&alloc, t).unwrap();
    assert!(matches!(
        ShmBox::from_token(&alloc, t),
        Err(TokenError::AlreadyClaimed { .. })
    ));
    drop(b);
    assert!(ShmBox::from_token(&alloc, t).is_err());
}

/// A peer process rewrites a relative pointer inside an archive after it was
/// validated. The checked copy path (`deserialize_copied`, validation of a private
/// copy) gives an error, never a signal.
#[test]
fn peer_rewriting_a_relative_pointer_is_an_error_on_the_copy_path() {
    let name = ShmName::new("snd-relptr");
    let alloc = FreeListAllocator::create(name.as_str(), 1 << 20).unwrap();
    let value: Vec<Vec<u32>> = (0..16).map(|i| vec![i; 8]).collect();
    let token = ShmArchive::new_in(&alloc, &value).unwrap().into_token();
    let archive = ShmArchive::<Vec<Vec<u32>>, _>::from_token(&alloc, token).unwrap();
    assert_eq!(archive.deserialize_copied().unwrap(), value);
    // The root vector's relative pointer is the first word of the root object, which
    // rkyv puts at the end of the archive (8 bytes: i32 offset, u32 length).
    let root_at = archive.offset().get() + HEADER_LEN + archive.len() as u64 - 8;
    let kid = spawn_child(
        "child",
        "scribble-relptr",
        &[
            ("SA_NAME", name.as_str().into()),
            ("SA_AT", root_at.to_string()),
        ],
    );
    assert_eq!(finish(kid, LIMIT, "scribbler"), ["scribbled"]);
    let e = archive.deserialize_copied().unwrap_err();
    assert!(
        matches!(
            e,
            ArchiveError::Checksum { .. } | ArchiveError::Invalid { .. }
        ),
        "{e}"
    );
}

/// A hostile `len` in a vector header: `to_vec` gives a typed error, not an
/// allocation-failure abort or a capacity-overflow panic.
#[test]
fn hostile_vector_length_is_an_error() {
    let name = ShmName::new("snd-vec-len");
    let alloc = FreeListAllocator::create(name.as_str(), 1 << 20).unwrap();
    let mut v = ShmVec::<u64, _>::new_in(&alloc).unwrap();
    v.extend_from_slice(&[1, 2, 3]).unwrap();
    let hdr = v.rel_ptr();
    let reader = ShmVecReader::open(&alloc, hdr).unwrap();
    // Header words: claim, fingerprint, len, cap, data, seq.
    let len_at = Offset::new(hdr.to_raw() + 16);
    let cap_at = Offset::new(hdr.to_raw() + 24);
    for (len, cap) in [
        (u64::MAX, u64::MAX),
        (1 << 60, 1 << 60),
        (usize::MAX as u64 / 8 + 1, u64::MAX),
        (4, 3),
    ] {
        common::scribble(&alloc, len_at, &len.to_le_bytes()).unwrap();
        common::scribble(&alloc, cap_at, &cap.to_le_bytes()).unwrap();
        let e = reader.to_vec().unwrap_err();
        assert!(
            matches!(
                e,
                AccessError::Corrupted { .. }
                    | AccessError::NotAllocated { .. }
                    | AccessError::OutOfBounds { .. }
            ),
            "len {len}: {e}"
        );
        assert!(reader.get(2).is_err() || reader.get(2).unwrap() == Some(3));
    }
    common::scribble(&alloc, len_at, &3u64.to_le_bytes()).unwrap();
    common::scribble(&alloc, cap_at, &4u64.to_le_bytes()).unwrap();
    assert_eq!(reader.to_vec().unwrap(), [1, 2, 3]);
}

/// The shared view of a value another handle writes exists only for atomics, and
/// sees every write (the `&u64` variant does not compile:
/// `tests/ui_typed/attacker_reads_42_twice.rs`).
#[test]
fn shared_views_see_concurrent_writes_through_atomics() {
    let name = ShmName::new("snd-view");
    let alloc = FreeListAllocator::create(name.as_str(), 1 << 20).unwrap();
    let other = FreeListAllocator::open(name.as_str()).unwrap();
    // In a segment of typed handles, atomics are shared through roots (never
    // freed, so a view can not outlive its object).
    let owner = alloc
        .root_with::<AtomicU64>("v", || AtomicU64::new(42))
        .unwrap();
    let seen = other.root::<AtomicU64>("v").unwrap();
    let first = seen.load(Ordering::Relaxed);
    owner.store(99, Ordering::Relaxed);
    assert_eq!((first, seen.load(Ordering::Relaxed)), (42, 99));
    // Plain data: the owner writes (byte-wise atomic stores), others copy.
    let mut plain = ShmBox::new_in(&alloc, 42u64).unwrap();
    let p = plain.rel_ptr();
    let before = p.read(&alloc).unwrap();
    plain.set(99);
    assert_eq!((before, p.read(&alloc).unwrap()), (42, 99));
}

/// Roots: a panicking `init` gives its claim back; more than a thousand roots,
/// listed and removed; a bump allocator refuses roots with a clear error.
#[test]
fn roots_release_panicking_claims_and_scale_past_a_thousand() {
    let name = ShmName::new("snd-roots");
    let alloc = FreeListAllocator::create(name.as_str(), 4 << 20).unwrap();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = alloc.root_with::<AtomicU64>("flaky", || panic!("init failed"));
    }));
    assert!(r.is_err());
    // Not RootBusy: the claim was released while the panic unwound.
    let v = alloc
        .root_with::<AtomicU64>("flaky", || AtomicU64::new(5))
        .unwrap();
    assert_eq!(v.load(Ordering::Relaxed), 5);

    let n = 1024;
    for i in 0..n {
        let c = alloc.root::<AtomicU64>(&format!("root-{i}")).unwrap();
        c.store(i, Ordering::Relaxed);
    }
    for i in 0..n {
        let c = alloc.root::<AtomicU64>(&format!("root-{i}")).unwrap();
        assert_eq!(c.load(Ordering::Relaxed), i);
    }
    let listed = alloc.roots().unwrap();
    assert_eq!(listed.len() as u64, n + 1);
    assert!(listed.iter().any(|r| r.name == "root-1023"));
    assert!(alloc.remove_root("root-7").unwrap());
    assert!(!alloc.remove_root("root-7").unwrap());
    assert_eq!(alloc.roots().unwrap().len() as u64, n);
    // Recreated after removal: a fresh object.
    let again = alloc.root::<AtomicU64>("root-7").unwrap();
    assert_eq!(again.load(Ordering::Relaxed), 0);
    // The table ends with a clear error.
    let mut full = None;
    for i in 0..MAX_ROOTS {
        if let Err(e) = alloc.root::<AtomicU64>(&format!("more-{i}")) {
            full = Some(e);
            break;
        }
    }
    assert!(
        matches!(full, Some(Error::RootTableFull { .. })),
        "{full:?}"
    );

    let bname = ShmName::new("snd-roots-bump");
    let bump = BumpAllocator::create(bname.as_str(), 1 << 20).unwrap();
    assert!(matches!(
        bump.root::<AtomicU64>("x"),
        Err(Error::RootsUnsupported { .. })
    ));
}

/// The bump epoch is a full 64 bits: resets do not wrap it within any lifetime, so a
/// handle from an old epoch never matches a new one.
#[test]
fn bump_epochs_do_not_wrap() {
    let name = ShmName::new("snd-epoch");
    let mut bump = BumpAllocator::create(name.as_str(), 1 << 16).unwrap();
    let h = bump.arena().alloc(7u64).unwrap().arena_ptr();
    for _ in 0..(1 << 20) {
        bump.reset().unwrap();
    }
    assert_eq!(bump.epoch(), 1 << 20);
    assert!(h.read(&bump).unwrap_err().is_stale());
    // An arena token carries the same wide epoch.
    let t = bump.arena().archive(&vec![1u32]).unwrap().into_token();
    assert_eq!(t.epoch(), 1 << 20);
    let _ = ArchiveToken::<u32>::from_raw([0, 0]);
}

/// A raw read of a length that no block has is an error before anything is
/// allocated here (no allocation-failure abort).
#[test]
fn raw_read_of_a_huge_length_is_an_error() {
    let name = ShmName::new("snd-raw-read");
    let alloc = FreeListAllocator::create(name.as_str(), 1 << 20).unwrap();
    let off = alloc.allocate(64).unwrap();
    for len in [usize::MAX, usize::MAX / 2, 1 << 40] {
        assert!(alloc.read(off, len).is_err());
    }
    assert_eq!(alloc.read(off, 64).unwrap().len(), 64);
}

/// The attack: `ShmAllocator::write` over an archive after it was validated,
/// and a raw `free` of its block. The segment holds typed handles, so the raw API
/// refuses both (`WrongMode`) and the archive is intact. An untrusted writer (a
/// mapping of its own) can still damage it: the checked copy path turns that
/// into an error.
#[test]
fn raw_write_over_an_archive_is_refused() {
    let name = ShmName::new("snd-raw-write");
    let alloc = FreeListAllocator::create(name.as_str(), 1 << 20).unwrap();
    let value: Vec<String> = (0..64).map(|i| format!("value-{i}")).collect();
    let token = ShmArchive::new_in(&alloc, &value).unwrap().into_token();
    let archive = ShmArchive::<Vec<String>, _>::from_token(&alloc, token).unwrap();
    let data = archive.offset().get() + HEADER_LEN;
    let view = archive.access().unwrap();
    let wrong = WrongMode {
        expected: SegmentMode::Raw,
        found: SegmentMode::Typed,
    };
    let typed = Err(AccessError::WrongMode(wrong));
    assert_eq!(
        alloc.write(Offset::new(data), &vec![0xff; archive.len()]),
        typed
    );
    assert_eq!(alloc.write(archive.offset(), &[0u8; 48]), typed);
    assert_eq!(
        alloc.free(archive.offset()),
        Err(FreeError::WrongMode(wrong))
    );
    // A raw block in the same segment is refused too: it could never be written
    // or freed there.
    assert_eq!(alloc.allocate(64), Err(AllocError::WrongMode(wrong)));
    assert_eq!(view.len(), 64);
    assert_eq!(view[63].as_str(), "value-63");
    assert_eq!(archive.deserialize_copied().unwrap(), value);
    // The same bytes from an untrusted writer: the copy path reports it.
    common::scribble(&alloc, Offset::new(data), &vec![0xff; archive.len()]).unwrap();
    let e = archive.deserialize_copied().unwrap_err();
    assert!(matches!(e, ArchiveError::Checksum { .. }), "{e}");
    common::scribble(&alloc, archive.offset(), &[0u8; 48]).unwrap();
    assert!(archive.deserialize_copied().is_err());
}

/// The other way round: once the raw API wrote a segment, typed handles that give
/// non-atomic references are refused there, and `RelPtr::get` views (atomics,
/// over blocks the raw API may free and rewrite) are refused in a typed segment.
#[test]
fn raw_and_typed_segments_do_not_mix() {
    let name = ShmName::new("snd-modes");
    let alloc = FreeListAllocator::create(name.as_str(), 1 << 20).unwrap();
    assert_eq!(alloc.segment().mode(), SegmentMode::Unset);
    let off = alloc.allocate(64).unwrap();
    alloc.write(off, &[0; 8]).unwrap();
    assert_eq!(alloc.segment().mode(), SegmentMode::Raw);
    let raw_mode = AccessError::WrongMode(WrongMode {
        expected: SegmentMode::Typed,
        found: SegmentMode::Raw,
    });
    assert_eq!(
        ShmBox::new_in(&alloc, 1u64).unwrap_err(),
        Error::Access(raw_mode.clone())
    );
    assert!(ShmVec::<u64, _>::new_in(&alloc).is_err());
    assert!(ShmArchive::new_in(&alloc, &vec![1u32]).is_err());
    // Another handle (another process would do the same) sees the decided mode.
    let other = FreeListAllocator::open(name.as_str()).unwrap();
    assert!(ShmBox::new_in(&other, 1u64).is_err());
    // Views of atomics and roots are fine in a raw segment.
    let v = RelPtr::<AtomicU64>::from_offset(off).get(&other).unwrap();
    v.fetch_add(5, Ordering::Relaxed);
    assert_eq!(alloc.read(off, 1).unwrap(), [5]);
    let r = alloc.root::<AtomicU64>("counter").unwrap();
    r.store(1, Ordering::Relaxed);
    alloc.free(off).unwrap();

    let typed_name = ShmName::new("snd-modes-typed");
    let typed = FreeListAllocator::create(typed_name.as_str(), 1 << 20).unwrap();
    let b = ShmBox::new_in(&typed, 7u64).unwrap();
    // A forged pointer at the box's `u64`, seen as an atomic, would write behind
    // the box's `&mut u64`: refused.
    assert!(b.rel_ptr().cast::<AtomicU64>().get(&typed).is_err());
    assert_eq!(b.rel_ptr().read(&typed).unwrap(), 7);
    let r = typed.root::<AtomicU64>("counter").unwrap();
    r.store(2, Ordering::Relaxed);
    assert_eq!(*b, 7);
}

/// The attack: a second `BumpAllocator::open` in the same process resets and
/// re-allocates while an arena archive reader (a zero-copy view) is held. The
/// reader pins the region: the reset is `Busy` and the view keeps its bytes; once
/// the reader is dropped the reset goes through and the token is `Stale`.
#[test]
fn second_bump_mapping_cannot_reset_under_a_reader() {
    use shared_allocator::archive::ArenaArchiveReader;
    let name = ShmName::new("snd-bump-reopen");
    let mut bump = BumpAllocator::create(name.as_str(), 1 << 20).unwrap();
    let batch: Vec<String> = (0..64).map(|i| format!("item-{i}")).collect();
    let token = bump.arena().archive(&batch).unwrap().into_token();
    let h = bump.arena().alloc(5u64).unwrap().arena_ptr();
    let reader = ArenaArchiveReader::<Vec<String>, _>::from_token(&bump, token).unwrap();
    let view = reader.access().unwrap();
    let mut second = BumpAllocator::open(name.as_str()).unwrap();
    assert_eq!(second.try_reset(), Err(AccessError::Busy { readers: 1 }));
    assert_eq!(
        second.reset_timeout(std::time::Duration::from_millis(50)),
        Err(AccessError::Busy { readers: 1 })
    );
    // A Busy reset changed nothing: allocations go on in the same epoch, after
    // the archive, and the view is intact.
    let other: Vec<u64> = (0..512).collect();
    let _ = second.arena().archive(&other).unwrap();
    assert_eq!(view.len(), 64);
    assert_eq!(view[63].as_str(), "item-63");
    assert_eq!(reader.deserialize_copied().unwrap(), batch);
    // An ArenaPtr view pins the same way.
    let v = h.get(&bump).unwrap();
    drop(reader);
    assert!(second.try_reset().unwrap_err().is_busy());
    assert_eq!(*v, 5);
    drop(v);
    second.try_reset().unwrap();
    assert!(token.deserialize_copied(&bump).unwrap_err().is_stale());
    assert!(
        ArenaArchiveReader::<Vec<String>, _>::from_token(&bump, token)
            .unwrap_err()
            .is_stale()
    );
    assert!(h.get(&bump).unwrap_err().is_stale());
}
