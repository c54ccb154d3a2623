//! rkyv archives in shared memory: across real processes, under corruption,
//! and with arena resets.
#![cfg(feature = "rkyv")]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{finish, role, spawn_child, Rng, ShmName};
use rkyv::{Archive, Deserialize, Serialize};
use shared_allocator::__layout::HEADER_LEN;
use shared_allocator::archive::{
    ArchiveError, ArchiveToken, ArenaArchiveReader, ArenaArchiveToken, ShmArchive,
};
use shared_allocator::prelude::*;
use shared_allocator::{AccessError, TokenError};

const WATCHDOG: Duration = Duration::from_secs(120);

#[path = "support/records.rs"]
mod records;
use records::{record, ArchivedKind, ArchivedRecord, Kind, Record};

/// Compares every field of an archived record with the expected one.
fn check_record(a: &ArchivedRecord, e: &Record) {
    assert_eq!(a.id.to_native(), e.id);
    assert_eq!(a.name.as_str(), e.name);
    assert_eq!(a.values.len(), e.values.len());
    for (x, y) in a.values.iter().zip(&e.values) {
        assert_eq!(x.to_native(), *y);
    }
    assert_eq!(a.score.to_native().to_bits(), e.score.to_bits());
    match (&a.kind, &e.kind) {
        (ArchivedKind::Empty, Kind::Empty) => {}
        (ArchivedKind::Label(s), Kind::Label(t)) => assert_eq!(s.as_str(), t),
        (ArchivedKind::Point { x, y }, Kind::Point { x: ex, y: ey }) => {
            assert_eq!((x.to_native(), y.to_native()), (*ex, *ey));
        }
        (ArchivedKind::Tags(ts), Kind::Tags(es)) => {
            assert_eq!(ts.len(), es.len());
            for (t, e) in ts.iter().zip(es) {
                assert_eq!(t.as_str(), e);
            }
        }
        (a, e) => panic!(
            "variant mismatch: expected {e:?}, archived {}",
            kind_name(a)
        ),
    }
    assert_eq!(a.note.as_ref().map(|s| s.as_str()), e.note.as_deref());
}

fn kind_name(k: &ArchivedKind) -> &'static str {
    match k {
        ArchivedKind::Empty => "Empty",
        ArchivedKind::Label(_) => "Label",
        ArchivedKind::Point { .. } => "Point",
        ArchivedKind::Tags(_) => "Tags",
    }
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("child needs {name}"))
}

fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

// ---------------------------------------------------------------------------

/// Where the archive length and checksum sit in a block (after the 16-byte owner
/// header and the magic).
const LEN_AT: u64 = 24;
const SUM_AT: u64 = 40;

const RECORDS: u64 = 10_000;

/// A producer process archives 10,000 records, as one batch archive and as
/// 10,000 single-record archives; this process (the consumer) takes ownership
/// of each, validates it, reads every field and frees it.
#[test]
fn two_processes_10k_records() {
    if role().as_deref() == Some("producer") {
        let alloc = FreeListAllocator::open(&env("SA_SEG")).unwrap();
        let batch: Vec<Record> = (0..RECORDS).map(record).collect();
        let token = ShmArchive::new_in(&alloc, &batch).unwrap().into_token();
        let [o, n] = token.to_raw();
        println!("BATCH {o} {n}");
        for r in &batch {
            let [o, n] = ShmArchive::new_in(&alloc, r).unwrap().into_token().to_raw();
            println!("ONE {o} {n}");
        }
        return; // the archives outlive this process: ownership was given away
    }
    if role().is_some() {
        return;
    }

    let name = ShmName::new("arc-2proc");
    let alloc = FreeListAllocator::create(name.as_str(), 64 << 20).unwrap();
    let child = spawn_child(
        "two_processes_10k_records",
        "producer",
        &[("SA_SEG", name.as_str().to_owned())],
    );
    let lines = finish(child, WATCHDOG, "producer");
    assert_eq!(alloc.stats().live_blocks, Some(1 + RECORDS));

    let parse = |t: &str| -> [u64; 2] {
        let mut it = t.split(' ').map(|x| x.parse().unwrap());
        [it.next().unwrap(), it.next().unwrap()]
    };
    let mut singles = Vec::new();
    let mut batch = None;
    for l in &lines {
        if let Some(t) = l.strip_prefix("BATCH ") {
            batch = Some(ArchiveToken::<Vec<Record>>::from_raw(parse(t)));
        } else if let Some(t) = l.strip_prefix("ONE ") {
            singles.push(ArchiveToken::<Record>::from_raw(parse(t)));
        }
    }
    assert_eq!(singles.len() as u64, RECORDS);

    // The batch: validated once at from_token, then zero-copy reads.
    let archive = ShmArchive::from_token(&alloc, batch.expect("batch token")).unwrap();
    let archived = archive.access().unwrap();
    assert_eq!(archived.len() as u64, RECORDS);
    for (i, a) in archived.iter().enumerate() {
        check_record(a, &record(i as u64));
    }
    let owned = archive.deserialize().unwrap();
    assert_eq!(owned, (0..RECORDS).map(record).collect::<Vec<_>>());
    drop(archive);

    // One archive per record.
    for (i, t) in singles.into_iter().enumerate() {
        let a = ShmArchive::from_token(&alloc, t).unwrap();
        check_record(a.access().unwrap(), &record(i as u64));
        assert_eq!(a.deserialize().unwrap(), record(i as u64));
    }
    // Every archive was owned by exactly one handle, which freed it.
    assert_eq!(alloc.stats().live_blocks, Some(0));
}

// ---------------------------------------------------------------------------

/// Writes `bytes` over the block (header and archive) at `token`.
fn restore<A: ShmAllocator>(alloc: &A, block: Offset, bytes: &[u8]) {
    common::scribble(alloc, block, bytes).unwrap();
}

/// Sets the header's checksum to that of the (possibly corrupted) archive bytes,
/// as a hostile peer could: the checksum is then no help and bytecheck must act.
fn forge_checksum<A: ShmAllocator>(alloc: &A, block: Offset) {
    let len = u64::from_le_bytes(
        alloc
            .read(Offset::new(block.get() + LEN_AT), 8)
            .unwrap()
            .try_into()
            .unwrap(),
    );
    let data = alloc
        .read(Offset::new(block.get() + HEADER_LEN), len as usize)
        .unwrap();
    let sum = xxhash_rust::xxh3::xxh3_64(&data);
    common::scribble(alloc, Offset::new(block.get() + SUM_AT), &sum.to_le_bytes()).unwrap();
}

/// Reads every part of a value that passed validation (a wrong but valid value
/// must still be safe to read all the way through).
fn traverse(a: &rkyv::Archived<Vec<Record>>) -> usize {
    let mut n = 0;
    for r in a.iter() {
        n += r.name.len()
            + r.values
                .iter()
                .map(|v| v.to_native() as usize)
                .sum::<usize>()
                % 7;
        n += match &r.kind {
            ArchivedKind::Label(s) => s.len(),
            ArchivedKind::Tags(t) => t.iter().map(|s| s.len()).sum(),
            _ => 1,
        };
        n += r.note.as_ref().map_or(0, |s| s.len());
    }
    n
}

/// Random byte flips, truncated lengths and out-of-range relative pointers,
/// thousands of each, are rejected with an error. With the checksum forged (a
/// hostile peer), bytecheck still rejects every broken pointer and truncation
/// that breaks the structure, and whatever it accepts reads without a crash.
#[test]
fn corrupted_archives_are_rejected() {
    let name = ShmName::new("arc-corrupt");
    let alloc = FreeListAllocator::create(name.as_str(), 8 << 20).unwrap();
    let batch: Vec<Record> = (0..200).map(record).collect();
    let archive = ShmArchive::new_in(&alloc, &batch).unwrap();
    let len = archive.len();
    let block = archive.offset();
    let token = archive.into_token();
    let data = Offset::new(block.get() + HEADER_LEN);

    // Where the `values` vectors' relative pointers are (offsets inside the archive).
    let (relptr_pos, token): (Vec<usize>, _) = {
        let a = ShmArchive::from_token(&alloc, token).unwrap();
        let start = archive_start(&alloc, data);
        let pos = a
            .access()
            .unwrap()
            .iter()
            .filter(|r| !r.values.is_empty())
            // An ArchivedVec starts with its relative pointer.
            .map(|r| &r.values as *const _ as usize - start)
            .collect();
        (pos, a.into_token())
    };
    assert!(relptr_pos.len() > 50);
    // The block as `token` gave it away (claim word = its nonce).
    let pristine = alloc.read(block, HEADER_LEN as usize + len).unwrap();

    let mut rng = Rng::new(0x5eed);
    let open =
        |alloc: &FreeListAllocator| ShmArchive::from_token(alloc, token).map(|a| a.into_token());
    let (mut flips_rejected, mut forged_flips_rejected, mut forged_flips_accepted) = (0, 0, 0);
    const ROUNDS: usize = 3000;
    for round in 0..ROUNDS {
        let forge = round % 2 == 1;
        match round % 6 {
            // Random bytes flipped (1 to 8 of them).
            0 | 1 => {
                for _ in 0..1 + rng.below(8) {
                    let at = Offset::new(data.get() + rng.below(len as u64));
                    let old = alloc.read(at, 1).unwrap()[0];
                    common::scribble(&alloc, at, &[old ^ (1 + rng.below(255)) as u8]).unwrap();
                }
                if forge {
                    forge_checksum(&alloc, block);
                    match open(&alloc) {
                        Err(ArchiveError::Invalid { .. }) => forged_flips_rejected += 1,
                        Err(e) => panic!("round {round}: unexpected error {e}"),
                        Ok(t) => {
                            // Structurally valid, different content: must read safely.
                            let a = ShmArchive::from_token(&alloc, t).unwrap();
                            std::hint::black_box(traverse(a.access().unwrap()));
                            let _ = std::hint::black_box(a.deserialize());
                            let _ = a.into_token();
                            forged_flips_accepted += 1;
                        }
                    }
                } else {
                    let e = open(&alloc).unwrap_err();
                    assert!(
                        matches!(e, ArchiveError::Checksum { .. }),
                        "round {round}: {e}"
                    );
                    flips_rejected += 1;
                }
            }
            // Truncated length.
            2 | 3 => {
                let short = rng.below(len as u64);
                common::scribble(
                    &alloc,
                    Offset::new(block.get() + LEN_AT),
                    &short.to_le_bytes(),
                )
                .unwrap();
                if forge {
                    forge_checksum(&alloc, block);
                    match open(&alloc) {
                        Err(ArchiveError::Invalid { .. }) => {}
                        Err(e) => panic!("round {round}: unexpected error {e}"),
                        Ok(t) => {
                            // The new end happened to hold a valid (tiny) root: still safe.
                            let a = ShmArchive::from_token(&alloc, t).unwrap();
                            std::hint::black_box(traverse(a.access().unwrap()));
                            let _ = a.into_token();
                        }
                    }
                } else {
                    let e = open(&alloc).unwrap_err();
                    assert!(
                        matches!(e, ArchiveError::Checksum { .. }),
                        "round {round}: {e}"
                    );
                }
            }
            // A relative pointer aimed outside the archive.
            _ => {
                let at = relptr_pos[rng.below(relptr_pos.len() as u64) as usize];
                let target: i64 = if rng.below(2) == 0 {
                    -(at as i64) - 1 - rng.below(1 << 20) as i64 // before the start
                } else {
                    (len - at) as i64 + rng.below(1 << 20) as i64 // past the end
                };
                let rel = target as i32;
                common::scribble(
                    &alloc,
                    Offset::new(data.get() + at as u64),
                    &rel.to_le_bytes(),
                )
                .unwrap();
                if forge {
                    forge_checksum(&alloc, block);
                    let e = open(&alloc).unwrap_err();
                    assert!(
                        matches!(e, ArchiveError::Invalid { .. }),
                        "round {round}: {e}"
                    );
                } else {
                    let e = open(&alloc).unwrap_err();
                    assert!(
                        matches!(e, ArchiveError::Checksum { .. }),
                        "round {round}: {e}"
                    );
                }
            }
        }
        restore(&alloc, block, &pristine);
    }
    assert_eq!(flips_rejected, ROUNDS / 6);
    assert!(
        forged_flips_rejected > 0,
        "bytecheck never rejected a forged flip"
    );
    eprintln!(
        "forged flips: {forged_flips_rejected} rejected by bytecheck, \
         {forged_flips_accepted} structurally valid (read safely)"
    );

    // Header damage.
    let damage = |at: u64, bytes: &[u8]| {
        common::scribble(&alloc, Offset::new(block.get() + at), bytes).unwrap();
        let e = open(&alloc).unwrap_err();
        restore(&alloc, block, &pristine);
        e
    };
    let e = damage(0, &[0]);
    assert!(
        matches!(e, ArchiveError::Token(TokenError::AlreadyClaimed { .. })),
        "{e}"
    );
    let e = damage(8, &[1]);
    assert!(
        matches!(e, ArchiveError::Token(TokenError::TypeMismatch { .. })),
        "{e}"
    );
    assert!(matches!(damage(16, &[0]), ArchiveError::BadHeader { .. }));
    assert!(matches!(
        damage(32, &[1]),
        ArchiveError::TypeMismatch { .. }
    ));
    let e = damage(LEN_AT, &(u64::MAX / 2).to_le_bytes());
    assert!(matches!(e, ArchiveError::Access(_)), "{e}");
    let e = damage(LEN_AT, &((len as u64) + 4096).to_le_bytes());
    assert!(matches!(e, ArchiveError::Access(_)), "{e}");

    // Forged tokens: random offsets anywhere in (and past) the segment.
    let end = alloc.segment().len() + 4096;
    for _ in 0..5000 {
        let t = ArchiveToken::<Vec<Record>>::from_raw([rng.below(end), rng.below(u64::MAX)]);
        if t.offset() != block {
            assert!(ShmArchive::from_token(&alloc, t).is_err());
        }
    }

    // Still intact after all that.
    let a = ShmArchive::from_token(&alloc, token).unwrap();
    assert_eq!(a.deserialize().unwrap(), batch);
}

/// Address of the first archive byte at `data` (to turn field addresses into positions).
fn archive_start(alloc: &FreeListAllocator, data: Offset) -> usize {
    shared_allocator::__layout::ptr_at(alloc.segment(), data.get(), 1, 1)
        .unwrap()
        .as_ptr() as usize
}

// ---------------------------------------------------------------------------

/// A reset waits for readers in other processes: while a child holds an
/// `ArenaArchiveReader` (a zero-copy view), this process's reset is `Busy` and
/// nothing changes; once the child drops it the reset goes through and the token
/// is `Stale` in both. A child killed while holding a reader pins nothing. And a
/// reset in a child is `Busy` while this process's arena (its values are views)
/// lives.
#[test]
fn arena_archive_reset_waits_for_readers_in_other_processes() {
    match role().as_deref() {
        Some("holding-reader") => {
            let bump = BumpAllocator::open(&env("SA_SEG")).unwrap();
            let flags = FreeListAllocator::open(&env("SA_FLAGS")).unwrap();
            let flag = flags.root::<AtomicU64>("flag").unwrap();
            let raw: Vec<u64> = env("SA_TOKEN")
                .split(',')
                .map(|s| s.parse().unwrap())
                .collect();
            let token = ArenaArchiveToken::<Vec<Record>>::from_raw([raw[0], raw[1]]);

            let reader = ArenaArchiveReader::from_token(&bump, token).unwrap();
            let view = reader.access().unwrap();
            let before: Vec<u64> = view.iter().map(|r| r.id.to_native()).collect();
            flag.store(1, Ordering::Release);
            // The parent tries to reset now; the view must not change under us.
            wait_until("the parent's go", Duration::from_secs(60), || {
                flag.load(Ordering::Acquire) == 2
            });
            let after: Vec<u64> = view.iter().map(|r| r.id.to_native()).collect();
            assert_eq!(before, after);
            for (i, r) in view.iter().enumerate() {
                check_record(r, &record(i as u64));
            }
            if env("SA_DIE") == "1" {
                // Killed by the parent while the view is held.
                flag.store(3, Ordering::Release);
                std::thread::sleep(Duration::from_secs(60));
            }
            drop(reader);
            flag.store(3, Ordering::Release);
            wait_until("the parent's reset", Duration::from_secs(60), || {
                bump.epoch() != token.epoch()
            });
            assert!(ArenaArchiveReader::from_token(&bump, token)
                .unwrap_err()
                .is_stale());
            // SAFETY: trusted data, if it were current; the epoch check fails first.
            let unchecked = unsafe { token.access_unchecked(&bump) };
            assert!(unchecked.unwrap_err().is_stale());
            println!("STALE-OK");
            return;
        }
        Some("resetter") => {
            let mut bump = BumpAllocator::open(&env("SA_SEG")).unwrap();
            match bump.try_reset() {
                Ok(epoch) => println!("RESET {epoch}"),
                Err(AccessError::Busy { readers }) => println!("BUSY {readers}"),
                Err(e) => panic!("{e}"),
            }
            return;
        }
        Some(_) => return,
        None => {}
    }

    let name = ShmName::new("arc-stale");
    let flags_name = ShmName::new("arc-stale-flags");
    let mut bump = BumpAllocator::create(name.as_str(), 4 << 20).unwrap();
    let flags = FreeListAllocator::create(flags_name.as_str(), 1 << 16).unwrap();
    let flag = flags.root::<AtomicU64>("flag").unwrap();

    for die in [false, true] {
        flag.store(0, Ordering::Release);
        let batch: Vec<Record> = (0..500).map(record).collect();
        let token = bump.arena().archive(&batch).unwrap().into_token();
        let [off, epoch] = token.to_raw();
        let mut child = common::KillOnDrop::new(spawn_child(
            "arena_archive_reset_waits_for_readers_in_other_processes",
            "holding-reader",
            &[
                ("SA_SEG", name.as_str().to_owned()),
                ("SA_FLAGS", flags_name.as_str().to_owned()),
                ("SA_TOKEN", format!("{off},{epoch}")),
                ("SA_DIE", if die { "1" } else { "0" }.to_owned()),
            ],
        ));
        wait_until("the child's open", WATCHDOG, || {
            flag.load(Ordering::Acquire) == 1
        });
        // The attack: reset and reuse the bytes while the child's view lives.
        assert_eq!(
            bump.try_reset(),
            Err(AccessError::Busy { readers: 1 }),
            "a reset must not pass a live reader"
        );
        assert_eq!(
            bump.reset_timeout(Duration::from_millis(200)),
            Err(AccessError::Busy { readers: 1 })
        );
        assert_eq!(bump.epoch(), epoch, "a Busy reset changes nothing");
        flag.store(2, Ordering::Release);
        wait_until("the child's release", WATCHDOG, || {
            flag.load(Ordering::Acquire) == 3
        });
        if die {
            let mut c = child.take();
            c.kill().unwrap();
            c.wait().unwrap();
        }
        // The reader is gone (dropped, or dead): the reset goes through.
        assert_eq!(bump.reset().unwrap(), epoch + 1);
        let arena = bump.arena();
        let next: Vec<Record> = (1000..1500).map(record).collect();
        let reused = arena.archive(&next).unwrap();
        assert_eq!(reused.deserialize().unwrap(), next);
        if !die {
            let lines = finish(child.take(), WATCHDOG, "holding-reader");
            assert!(lines.iter().any(|l| l == "STALE-OK"), "{lines:?}");
        }
        let _ = reused;
        drop(arena);
    }

    // A reset in a child is Busy while this process's arena lives, and goes
    // through once it is dropped; our token is then Stale.
    let arena = bump.arena();
    let kept = arena.archive(&vec![record(7)]).unwrap();
    let before = kept.epoch();
    let resetter = || {
        let child = spawn_child(
            "arena_archive_reset_waits_for_readers_in_other_processes",
            "resetter",
            &[("SA_SEG", name.as_str().to_owned())],
        );
        finish(child, WATCHDOG, "resetter")
    };
    let busy = resetter();
    assert!(busy.iter().any(|l| l == "BUSY 1"), "{busy:?}");
    assert_eq!(kept.access().unwrap().len(), 1);
    let token = kept.into_token();
    drop(arena);
    let reset = resetter();
    let expected = format!("RESET {}", before + 1);
    assert!(reset.contains(&expected), "{reset:?}");
    assert!(ArenaArchiveReader::from_token(&bump, token)
        .unwrap_err()
        .is_stale());
}

// ---------------------------------------------------------------------------

#[derive(Archive, Serialize, Deserialize, Debug, PartialEq, Clone)]
struct Inventory {
    owner: String,
    by_name: HashMap<String, Vec<u8>>,
    by_id: BTreeMap<u32, Option<String>>,
    shapes: Vec<Shape>,
    boxed: Box<Inner>,
    pair: (u16, Option<Inner>),
    unit: Marker,
}

#[derive(Archive, Serialize, Deserialize, Debug, PartialEq, Clone)]
enum Shape {
    Circle(f32),
    Poly {
        points: Vec<(i16, i16)>,
        label: Option<String>,
    },
    Nested(Vec<Shape2>),
}

#[derive(Archive, Serialize, Deserialize, Debug, PartialEq, Clone)]
enum Shape2 {
    A,
    B(u64),
}

#[derive(Archive, Serialize, Deserialize, Debug, PartialEq, Clone)]
struct Inner {
    tags: Vec<String>,
    level: i64,
}

#[derive(Archive, Serialize, Deserialize, Debug, PartialEq, Clone)]
struct Marker;

fn inventory() -> Inventory {
    Inventory {
        owner: "a name long enough not to be inlined".into(),
        by_name: (0..300)
            .map(|i| (format!("key-{i}"), vec![i as u8; i % 9]))
            .collect(),
        by_id: (0..200)
            .map(|i| (i * 3, (i % 2 == 0).then(|| format!("v{i}"))))
            .collect(),
        shapes: vec![
            Shape::Circle(1.5),
            Shape::Poly {
                points: vec![(1, 2), (-3, 4)],
                label: Some("tri".into()),
            },
            Shape::Poly {
                points: vec![],
                label: None,
            },
            Shape::Nested(vec![Shape2::A, Shape2::B(u64::MAX)]),
        ],
        boxed: Box::new(Inner {
            tags: vec!["x".into(), "yy".into()],
            level: -9,
        }),
        pair: (7, None),
        unit: Marker,
    }
}

/// Vec, String, Option, HashMap, BTreeMap, enums, boxes, tuples and user
/// structs, read zero-copy and deserialized, for both kinds of handle.
#[test]
fn nested_types_roundtrip() {
    let name = ShmName::new("arc-nested");
    let alloc = FreeListAllocator::create(name.as_str(), 4 << 20).unwrap();
    let inv = inventory();
    let archive = ShmArchive::new_in(&alloc, &inv).unwrap();
    let a = archive.access().unwrap();
    assert_eq!(a.owner.as_str(), inv.owner);
    assert_eq!(a.by_name.len(), 300);
    assert_eq!(a.by_name.get("key-17").unwrap().as_slice(), &[17u8; 8][..]);
    assert!(a.by_name.get("nope").is_none());
    assert_eq!(a.by_id.len(), 200);
    for (k, v) in a.by_id.iter() {
        let i = k.to_native() / 3;
        assert_eq!(
            v.as_ref().map(|s| s.as_str()),
            inv.by_id[&k.to_native()].as_deref(),
            "{i}"
        );
    }
    match &a.shapes[1] {
        ArchivedShape::Poly { points, label } => {
            assert_eq!(points.len(), 2);
            assert_eq!(points[1].0.to_native(), -3);
            assert_eq!(label.as_ref().unwrap().as_str(), "tri");
        }
        _ => panic!("wrong variant"),
    }
    match &a.shapes[3] {
        ArchivedShape::Nested(v) => assert!(matches!(v[1], ArchivedShape2::B(x) if x == u64::MAX)),
        _ => panic!("wrong variant"),
    }
    assert_eq!(a.boxed.tags[1].as_str(), "yy");
    assert_eq!(a.boxed.level.to_native(), -9);
    assert!(a.pair.1.is_none());
    assert_eq!(archive.deserialize().unwrap(), inv);

    let name = ShmName::new("arc-nested-bump");
    let mut bump = BumpAllocator::create(name.as_str(), 4 << 20).unwrap();
    let arena = bump.arena();
    let token = arena.archive(&inv).unwrap().into_token();
    let reader = ArenaArchiveReader::from_token(arena.allocator(), token).unwrap();
    assert_eq!(reader.deserialize().unwrap(), inv);
    assert_eq!(
        reader.access().unwrap().by_name.get("key-5").unwrap().len(),
        5
    );
}

/// Owners free exactly once; ownership moves through tokens; bad tokens and
/// wrong types are errors; a capacity hint writes once when it fits.
#[test]
fn ownership_sizing_and_bad_tokens() {
    let name = ShmName::new("arc-own");
    let alloc = FreeListAllocator::create(name.as_str(), 4 << 20).unwrap();
    let live = || alloc.stats().live_blocks.unwrap();
    let value: Vec<Record> = (0..50).map(record).collect();

    let a = ShmArchive::new_in(&alloc, &value).unwrap();
    assert_eq!(live(), 1);
    assert_eq!(a.access().unwrap().len(), 50); // the writer's first access validates
    drop(a);
    assert_eq!(live(), 0);

    let t = ShmArchive::new_in(&alloc, &value).unwrap().into_token();
    assert_eq!(live(), 1, "into_token gives ownership away without freeing");
    let a = ShmArchive::from_token(&alloc, t).unwrap();
    let len = a.len();
    drop(a);
    assert_eq!(live(), 0);
    let e = ShmArchive::from_token(&alloc, t).unwrap_err();
    // The block is no longer a live block start (allocator metadata says so).
    assert!(
        matches!(e, ArchiveError::Access(AccessError::NotBlockStart { .. })),
        "{e}"
    );
    // A second redemption of a live block's token: refused, nothing changes.
    let t = ShmArchive::new_in(&alloc, &value).unwrap().into_token();
    let a = ShmArchive::from_token(&alloc, t).unwrap();
    let e = ShmArchive::from_token(&alloc, t).unwrap_err();
    assert!(
        matches!(e, ArchiveError::Token(TokenError::AlreadyClaimed { .. })),
        "{e}"
    );
    drop(a);
    assert_eq!(live(), 0);

    // Wrong type: the tag says so before bytecheck runs.
    let t = ShmArchive::new_in(&alloc, &value).unwrap().into_token();
    let wrong = ArchiveToken::<Vec<u64>>::from_raw(t.to_raw());
    let e = ShmArchive::from_token(&alloc, wrong).unwrap_err();
    assert!(
        matches!(e, ArchiveError::Token(TokenError::TypeMismatch { .. })),
        "{e}"
    );
    drop(ShmArchive::from_token(&alloc, t).unwrap());

    // Null, misaligned and out-of-range tokens.
    let e = ShmArchive::from_token(&alloc, ArchiveToken::<u32>::from_raw([0, 0])).unwrap_err();
    assert!(matches!(e, ArchiveError::Access(AccessError::Null)), "{e}");
    let [o, n] = t.to_raw();
    let e = ShmArchive::from_token(&alloc, ArchiveToken::<u32>::from_raw([o + 8, n])).unwrap_err();
    assert!(matches!(e, ArchiveError::BadHeader { .. }), "{e}");
    let e = ShmArchive::from_token(&alloc, ArchiveToken::<u32>::from_raw([u64::MAX - 15, n]))
        .unwrap_err();
    assert!(matches!(e, ArchiveError::Access(_)), "{e}");
    assert_eq!(live(), 0);

    // Capacity hints: big enough (one pass, block keeps its size), too small (retried exactly).
    let big = ShmArchive::new_in_with_capacity(&alloc, &value, len * 2).unwrap();
    assert_eq!(big.len(), len);
    assert!(alloc.used_bytes() >= (len * 2) as u64);
    assert_eq!(big.deserialize().unwrap(), value);
    let small = ShmArchive::new_in_with_capacity(&alloc, &value, 16).unwrap();
    assert_eq!(small.len(), len);
    assert_eq!(live(), 2, "the too-small block was freed");
    assert_eq!(small.deserialize().unwrap(), value);
    drop((big, small));

    // Zero-sized and empty values.
    let unit = ShmArchive::new_in(&alloc, &()).unwrap();
    assert!(unit.is_empty());
    unit.access().unwrap();
    let empty = ShmArchive::new_in(&alloc, &Vec::<String>::new()).unwrap();
    assert_eq!(empty.deserialize().unwrap(), Vec::<String>::new());
    drop((unit, empty));
    assert_eq!(live(), 0);

    // Out of memory is an error, and leaves nothing behind.
    let huge: Vec<u64> = vec![7; 1 << 20];
    let e = ShmArchive::new_in(&alloc, &huge).unwrap_err();
    assert!(matches!(e, ArchiveError::Alloc(_)), "{e}");
    assert_eq!(live(), 0);

    // Arena: capacity hints and out of memory.
    let bname = ShmName::new("arc-own-bump");
    let mut bump = BumpAllocator::create(bname.as_str(), 1 << 20).unwrap();
    let arena = bump.arena();
    let a = arena.archive_with_capacity(&value, 64).unwrap();
    assert_eq!(a.len(), len);
    assert_eq!(a.deserialize().unwrap(), value);
    let e = arena.archive(&huge).unwrap_err();
    assert!(matches!(e, ArchiveError::Alloc(_)), "{e}");
}

/// `access_unchecked` reads trusted data without validation, and still refuses
/// what it can check cheaply (wrong type, stale epoch).
#[test]
fn unchecked_access_for_trusted_data() {
    let name = ShmName::new("arc-unchecked");
    let alloc = FreeListAllocator::create(name.as_str(), 1 << 20).unwrap();
    let value: Vec<Record> = (0..20).map(record).collect();
    let t = ShmArchive::new_in(&alloc, &value).unwrap().into_token();
    // SAFETY: this process just wrote the archive and nothing else touches the segment.
    let a = unsafe { t.access_unchecked(&alloc) }.unwrap();
    check_record(&a[19], &value[19]);
    let wrong = ArchiveToken::<String>::from_raw(t.to_raw());
    // SAFETY: as above; the type tag check fails before any byte is interpreted.
    assert!(unsafe { wrong.access_unchecked(&alloc) }.is_err());
    drop(ShmArchive::from_token(&alloc, t).unwrap());

    let bname = ShmName::new("arc-unchecked-bump");
    let mut bump = BumpAllocator::create(bname.as_str(), 1 << 20).unwrap();
    let mut arena = bump.arena();
    let t = arena.archive(&value).unwrap().into_token();
    // SAFETY: written just above by this process, in this epoch, not reset yet.
    let a = unsafe { t.access_unchecked(arena.allocator()) }.unwrap();
    assert_eq!(a.len(), 20);
    arena.reset().unwrap();
    // SAFETY: the epoch check rejects the token before any byte is read.
    assert!(unsafe { t.access_unchecked(arena.allocator()) }
        .unwrap_err()
        .is_stale());
}
