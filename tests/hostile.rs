//! A hostile or buggy peer scribbles on the allocator metadata (or the header) through
//! the /dev/shm file. Operations in this process may then fail with errors, but must
//! never panic, hang, or crash.
//!
//! Every seed runs in a child process (batches of seeds per child, re-executions of
//! this test binary) under a watchdog: a panic is caught and reported with its seed, a
//! crash (e.g. SIGSEGV) or a hang is pinned on the seed the child had started last, and
//! the parent goes on with the next seed, so one run lists every failing seed.
//!
//! Knobs: `SA_HOSTILE_SEEDS` seeds per allocator kind (default 200), `SA_HOSTILE_OPS`
//! operations after the scribble (default 300), `SA_HOSTILE_FROM` first seed (default 0),
mod common;

use std::os::unix::fs::FileExt;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use common::{
    cleanup_pid, env_req, env_u64, read_stdout, role, shm_path, spawn_child, wait_or_kill, Rng,
    ShmName,
};
use shared_allocator::__layout::{meta_region, HEADER_REGION, LAYOUT_VERSION, MAGIC};
use shared_allocator::prelude::*;
use shared_allocator::{AllocError, OpenOptions, SegmentError};

const BATCH: u64 = 25;
const BATCH_WATCHDOG: Duration = Duration::from_secs(240);

fn quick() -> OpenOptions {
    OpenOptions {
        timeout: Duration::from_millis(20),
        ..OpenOptions::default()
    }
}

/// Writes `bytes` at `offset` of the segment's file, as another process would.
fn scribble(name: &ShmName, offset: u64, bytes: &[u8]) {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(shm_path(name.as_str()))
        .expect("open the segment file");
    f.write_all_at(bytes, offset).expect("scribble");
}

/// A value a confused peer might plausibly leave in a metadata word.
fn plausible(rng: &mut Rng, small_max: u64) -> u64 {
    let small = rng.below(small_max + 3);
    match rng.below(12) {
        0 => 0,
        1 => 1,
        2 => small,
        3 => u64::MAX,
        4 => !0 << rng.below(64),
        5 => (1 << 32) | small,
        6 => small << 32,
        7 => 1u64 << rng.below(64),
        // Shaped like a free-list span state: [gen | kind | listed | class | count].
        8 => {
            (rng.below(1 << 24) << 40)
                | (rng.below(4) << 38)
                | (rng.below(2) << 37)
                | (rng.below(32) << 32)
                | rng.below(300)
        }
        // Shaped like a tagged stack head: [tag | index + 1].
        9 => (rng.below(1 << 32) << 32) | rng.below(small_max + 3),
        10 => small.wrapping_sub(1),
        _ => rng.next_u64(),
    }
}

/// Overwrites part of `[start, start + len)` in one of several ways; returns a
/// description for the report.
fn corrupt(name: &ShmName, rng: &mut Rng, start: u64, len: u64, small_max: u64) -> String {
    let words = len / 8;
    let mode = rng.below(7);
    match mode {
        0 => {
            let junk: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            scribble(name, start, &junk);
            "all random".into()
        }
        1 => {
            let n = 1 + rng.below(8);
            for _ in 0..n {
                let w = rng.below(words);
                scribble(name, start + w * 8, &rng.next_u64().to_le_bytes());
            }
            format!("{n} random words")
        }
        2 | 3 => {
            let n = 1 + rng.below(16);
            for _ in 0..n {
                // Mostly the first words (heads, hints, bitmap starts) where it matters.
                let w = if rng.below(2) == 0 {
                    rng.below(words.min(512))
                } else {
                    rng.below(words)
                };
                let v = plausible(rng, small_max);
                scribble(name, start + w * 8, &v.to_le_bytes());
            }
            format!("{n} plausible words")
        }
        4 => {
            scribble(name, start, &vec![0; len as usize]);
            "all zero".into()
        }
        5 => {
            scribble(name, start, &vec![0xFF; len as usize]);
            "all ones".into()
        }
        _ => {
            let at = rng.below(len);
            let n = (1 + rng.below(512)).min(len - at);
            let junk: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
            scribble(name, start + at, &junk);
            format!("{n} random bytes at +{at}")
        }
    }
}

/// Random operations on `a` (and on handles reopened by name): errors are fine;
/// offsets handed out must still lie in the data region.
fn torment<A: ShmFree>(
    a: &A,
    name: &ShmName,
    rng: &mut Rng,
    ops: u64,
    max_size: u64,
    reopen: fn(&str) -> Result<A, SegmentError>,
) -> (u64, u64) {
    let l = *a.segment().layout();
    let mut mine: Vec<(Offset, usize)> = Vec::new();
    let mut other: Option<A> = None;
    let (mut ok, mut err) = (0u64, 0u64);
    for i in 0..ops {
        let h = match &other {
            Some(b) if rng.below(2) == 0 => b,
            _ => a,
        };
        let r: Result<(), String> = match rng.below(10) {
            0..=2 => {
                let size = 1 + rng.below(max_size) as usize;
                let align = 1 << rng.below(13);
                match h.allocate_aligned(size, align) {
                    Ok(o) => {
                        assert!(
                            o.get() >= l.data_offset && o.get() + size as u64 <= l.data_end(),
                            "allocate({size}, {align}) returned {o}, outside the data region \
                             [{:#x}, {:#x})",
                            l.data_offset,
                            l.data_end()
                        );
                        assert_eq!(o.get() % align as u64, 0, "misaligned {o} for {align}");
                        let _ = h.write(o, &vec![0xAB; size]);
                        mine.push((o, size));
                        Ok(())
                    }
                    Err(e) => Err(e.to_string()),
                }
            }
            3 | 4 => {
                let off = if !mine.is_empty() && rng.below(4) != 0 {
                    mine.swap_remove(rng.below(mine.len() as u64) as usize).0
                } else {
                    Offset::new(l.data_offset + rng.below(l.data_len + 64))
                };
                h.free(off).map_err(|e| e.to_string())
            }
            5 | 6 => {
                let (off, len) = if !mine.is_empty() && rng.below(2) == 0 {
                    mine[rng.below(mine.len() as u64) as usize]
                } else {
                    (
                        Offset::new(rng.below(l.total_size + 64)),
                        rng.below(5000) as usize,
                    )
                };
                let _ = h.check_range(off, len as u64);
                match rng.below(2) {
                    0 => h.read(off, len).map(drop).map_err(|e| e.to_string()),
                    _ => h.write(off, &vec![0x5A; len]).map_err(|e| e.to_string()),
                }
            }
            7 => {
                let s = h.stats();
                let _ = (h.available_bytes(), h.used_bytes(), h.epoch());
                assert_eq!(s.capacity, h.stats().capacity);
                Ok(())
            }
            8 => match reopen(name.as_str()) {
                Ok(b) => {
                    let _ = b.stats();
                    other = Some(b);
                    Ok(())
                }
                Err(e) => Err(e.to_string()),
            },
            _ => {
                if i % 2 == 0 {
                    let _ = h.allocate(1);
                }
                Ok(())
            }
        };
        match r {
            Ok(()) => ok += 1,
            Err(_) => err += 1,
        }
    }
    (ok, err)
}

/// One seed of metadata scribbling on a fresh allocator of `kind`.
fn meta_seed(kind: &str, seed: u64) -> String {
    let mut rng = Rng::new(seed ^ 0x0405_711E);
    let ops = env_u64("SA_HOSTILE_OPS", 300);
    let name = ShmName::new(&format!("hostile-{kind}"));
    let (what, ok, err) = match kind {
        "fl" => {
            let pages = 8 + rng.below(120);
            let a = FreeListAllocator::create(name.as_str(), pages * 4096).unwrap();
            let _ = torment(&a, &name, &mut rng, 60, 9000, |n| {
                FreeListAllocator::open_with(n, &quick())
            });
            let l = *a.segment().layout();
            let mut what = corrupt(&name, &mut rng, meta_region(&l).0, meta_region(&l).1, pages);
            let (mut ok, mut err) = torment(&a, &name, &mut rng, ops / 2, 9000, |n| {
                FreeListAllocator::open_with(n, &quick())
            });
            what += " + ";
            what += &corrupt(&name, &mut rng, meta_region(&l).0, meta_region(&l).1, pages);
            let (o2, e2) = torment(&a, &name, &mut rng, ops / 2, 9000, |n| {
                FreeListAllocator::open_with(n, &quick())
            });
            ok += o2;
            err += e2;
            (what, ok, err)
        }
        "slab" => {
            let slot = 1 + rng.below(300);
            let count = 1 + rng.below(3000);
            let a = SlabAllocator::create(name.as_str(), slot, count).unwrap();
            let _ = torment(&a, &name, &mut rng, 60, slot + 8, |n| {
                SlabAllocator::open_with(n, &quick())
            });
            let l = *a.segment().layout();
            let small = count.div_ceil(64);
            let mut what = corrupt(&name, &mut rng, meta_region(&l).0, meta_region(&l).1, small);
            let (mut ok, mut err) = torment(&a, &name, &mut rng, ops / 2, slot + 8, |n| {
                SlabAllocator::open_with(n, &quick())
            });
            what += " + ";
            what += &corrupt(&name, &mut rng, meta_region(&l).0, meta_region(&l).1, small);
            let (o2, e2) = torment(&a, &name, &mut rng, ops / 2, slot + 8, |n| {
                SlabAllocator::open_with(n, &quick())
            });
            ok += o2;
            err += e2;
            (what, ok, err)
        }
        "bump" => {
            let cap = 64 + rng.below(100_000);
            let mut a = BumpAllocator::create(name.as_str(), cap).unwrap();
            let l = *a.segment().layout();
            let (mut ok, mut err) = (0, 0);
            let mut what = String::new();
            for round in 0..3 {
                // The bump metadata is one word; scribble it (and its neighbours).
                what += &corrupt(&name, &mut rng, meta_region(&l).0, 64, cap);
                what += if round < 2 { " + " } else { "" };
                let (o, e) = bump_torment(&mut a, &name, &mut rng, ops / 3);
                ok += o;
                err += e;
            }
            (what, ok, err)
        }
        k => panic!("unknown kind {k}"),
    };
    format!("{what}: {ok} ok, {err} errors")
}

fn bump_torment(a: &mut BumpAllocator, name: &ShmName, rng: &mut Rng, ops: u64) -> (u64, u64) {
    let l = *a.segment().layout();
    let (mut ok, mut err) = (0, 0);
    for _ in 0..ops {
        let r = match rng.below(6) {
            0 | 1 => {
                let size = 1 + rng.below(5000) as usize;
                let align = 1 << rng.below(13);
                a.allocate_aligned(size, align)
                    .map(|o| {
                        assert!(o.get() >= l.data_offset && o.get() + size as u64 <= l.data_end());
                        assert_eq!(o.get() % align as u64, 0);
                        let _ = a.write(o, &vec![1; size]);
                    })
                    .map_err(|e: AllocError| e.to_string())
            }
            2 => {
                let off = Offset::new(rng.below(l.total_size + 64));
                let len = rng.below(5000) as usize;
                a.read(off, len).map(drop).map_err(|e| e.to_string())
            }
            3 => {
                let s = a.stats();
                assert!(s.live_bytes <= s.capacity && s.free_bytes <= s.capacity);
                let _ = (a.available_bytes(), a.used_bytes(), a.epoch());
                Ok(())
            }
            4 => BumpAllocator::open_with(name.as_str(), &quick())
                .map(|b| {
                    let _ = b.allocate(8);
                    let _ = b.stats();
                })
                .map_err(|e| e.to_string()),
            _ => {
                if rng.below(4) == 0 {
                    a.reset().map(drop).map_err(|e| e.to_string())
                } else {
                    Ok(())
                }
            }
        };
        match r {
            Ok(()) => ok += 1,
            Err(_) => err += 1,
        }
    }
    (ok, err)
}

/// One seed of header scribbling: reopening gives a typed error (or a handle that
/// works), and the existing handle keeps working.
fn header_seed(seed: u64) -> String {
    let mut rng = Rng::new(seed ^ 0x4EAD);
    let name = ShmName::new("hostile-hdr");
    let kind = rng.below(3);
    let h = match kind {
        0 => Handle::Fl(
            FreeListAllocator::create(name.as_str(), (1 + rng.below(64)) * 4096).unwrap(),
        ),
        1 => Handle::Slab(
            SlabAllocator::create(name.as_str(), 1 + rng.below(200), 1 + rng.below(500)).unwrap(),
        ),
        _ => Handle::Bump(BumpAllocator::create(name.as_str(), 1 + rng.below(50_000)).unwrap()),
    };
    let size = h.len();
    // Which header words to hit: magic@0 version+kind@8 state@16 total@24 pid@32
    // meta_offset@40 meta_len@48 data_offset@56 data_len@64 params@72..104.
    let mut what = Vec::new();
    match rng.below(4) {
        0 => {
            let n = 1 + rng.below(4);
            for _ in 0..n {
                let w = rng.below(13);
                let v = match w {
                    3 => size.wrapping_add(rng.below(3)).wrapping_sub(1),
                    5..=8 => [0, 64, 4096, 8192, size, size - 64, size + 64, u64::MAX]
                        [rng.below(8) as usize],
                    9 | 10 => plausible(&mut rng, 1 << 12),
                    _ => plausible(&mut rng, 16),
                };
                scribble(&name, w * 8, &v.to_le_bytes());
                what.push(format!("word {w} = {v:#x}"));
            }
        }
        1 => {
            let at = rng.below(HEADER_REGION);
            let n = (1 + rng.below(64)).min(HEADER_REGION - at);
            let junk: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
            scribble(&name, at, &junk);
            what.push(format!("{n} random bytes at {at}"));
        }
        2 => {
            // Keep magic / version / kind / state / size valid, scramble the regions.
            let junk: Vec<u8> = (0..72).map(|_| rng.next_u64() as u8).collect();
            scribble(&name, 32, &junk);
            what.push("regions and params random".into());
        }
        _ => {
            // A state word that is neither INIT nor READY, or READY with zero magic.
            if rng.below(2) == 0 {
                scribble(&name, 16, &(2 + rng.below(1000) as u32).to_le_bytes());
                what.push("state unknown".into());
            } else {
                scribble(&name, 0, &0u64.to_le_bytes());
                what.push("magic zero, state ready".into());
            }
        }
    }
    let mut results = Vec::new();
    let r = FreeListAllocator::open_with(name.as_str(), &quick());
    if let Ok(a) = &r {
        let _ = a.allocate(64).map(|o| a.free(o));
        let _ = a.stats();
    }
    results.push(short(r.map(drop)));
    let r = SlabAllocator::open_with(name.as_str(), &quick());
    if let Ok(a) = &r {
        let _ = a.allocate(1).map(|o| a.free(o));
        let _ = a.stats();
    }
    results.push(short(r.map(drop)));
    let r = BumpAllocator::open_with(name.as_str(), &quick());
    if let Ok(a) = &r {
        let _ = a.allocate(1);
        let _ = a.stats();
    }
    results.push(short(r.map(drop)));
    // The handle this process opened before the scribble validated its own copy of
    // the layout and is not affected.
    h.still_works();
    format!(
        "kind {kind}, {}: open -> {}",
        what.join(", "),
        results.join(" / ")
    )
}

// One handle per child process: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
enum Handle {
    Fl(FreeListAllocator),
    Slab(SlabAllocator),
    Bump(BumpAllocator),
}

impl Handle {
    fn len(&self) -> u64 {
        match self {
            Handle::Fl(a) => a.segment().len(),
            Handle::Slab(a) => a.segment().len(),
            Handle::Bump(a) => a.segment().len(),
        }
    }

    fn still_works(&self) {
        match self {
            Handle::Fl(a) => a.free(a.allocate(100).unwrap()).unwrap(),
            Handle::Slab(a) => a.free(a.allocate(1).unwrap()).unwrap(),
            Handle::Bump(a) => {
                a.allocate(1).unwrap();
            }
        }
    }
}

fn short(r: Result<(), SegmentError>) -> String {
    match r {
        Ok(()) => "Ok".into(),
        Err(e) => format!("{e:?}")
            .split([' ', '{', '('])
            .next()
            .unwrap()
            .to_owned(),
    }
}

/// Child side: runs seeds `SA_FROM..SA_TO`, printing START/OK/PANIC lines (stdout is
/// line-buffered, so the parent sees how far a crashed child got).
fn child(which: &str) {
    let from: u64 = env_req("SA_FROM").parse().unwrap();
    let to: u64 = env_req("SA_TO").parse().unwrap();
    std::panic::set_hook(Box::new(|info| {
        // The panic plus the library and test frames that led to it.
        let bt = std::backtrace::Backtrace::force_capture().to_string();
        let frames: Vec<&str> = bt
            .lines()
            .map(str::trim)
            .filter(|l| l.contains("shared_allocator::") || l.contains("hostile::"))
            .map(|l| l.split_once(": ").map_or(l, |(_, f)| f))
            .take(8)
            .collect();
        println!(
            "PANICMSG {} | via {}",
            info.to_string().replace('\n', " | "),
            frames.join(" <- ")
        );
    }));
    for seed in from..to {
        println!("START seed={seed}");
        let t = Instant::now();
        let r = std::panic::catch_unwind(AssertUnwindSafe(|| match which {
            "header" => header_seed(seed),
            kind => meta_seed(kind, seed),
        }));
        match r {
            Ok(desc) => println!("OK seed={seed} ms={} {desc}", t.elapsed().as_millis()),
            Err(_) => println!("PANIC seed={seed}"),
        }
    }
}

/// Parent side: runs every seed in batches of child processes; returns the failures.
fn fuzz(entry: &str) {
    let seeds = env_u64("SA_HOSTILE_SEEDS", 200);
    let first = env_u64("SA_HOSTILE_FROM", 0);
    let mut next = first;
    let mut failures: Vec<String> = Vec::new();
    let (mut done, mut slowest, mut summary) = (0u64, (0u64, 0u64), Vec::new());
    let start = Instant::now();
    while next < first + seeds {
        let to = (next + BATCH).min(first + seeds);
        let mut c = spawn_child(
            entry,
            "fuzz",
            &[("SA_FROM", next.to_string()), ("SA_TO", to.to_string())],
        );
        let pid = c.id();
        let reader = read_stdout(&mut c);
        let status = wait_or_kill(&mut c, BATCH_WATCHDOG);
        let out = reader.join().unwrap();
        let left = cleanup_pid(pid);
        let mut last_started = None;
        let mut last_msg = String::new();
        for l in out.lines() {
            if let Some(s) = l.strip_prefix("START seed=") {
                last_started = Some(s.parse::<u64>().unwrap());
            } else if let Some(rest) = l.strip_prefix("OK seed=") {
                done += 1;
                last_started = None;
                let mut it = rest.split_whitespace();
                let seed: u64 = it.next().unwrap().parse().unwrap();
                let ms: u64 = it
                    .next()
                    .unwrap()
                    .trim_start_matches("ms=")
                    .parse()
                    .unwrap();
                if ms > slowest.1 {
                    slowest = (seed, ms);
                }
                if summary.len() < 6 {
                    summary.push(rest.to_owned());
                }
            } else if let Some(m) = l.strip_prefix("PANICMSG ") {
                last_msg = m.to_owned();
            } else if let Some(s) = l.strip_prefix("PANIC seed=") {
                failures.push(format!("{entry}: seed {s} PANICKED: {last_msg}"));
                last_started = None;
            }
        }
        match status {
            Some(s) if s.success() => next = to,
            other => {
                let seed = last_started.unwrap_or(next);
                let how = match other {
                    None => "HUNG (killed by the watchdog)".to_owned(),
                    Some(s) => format!("CRASHED ({s})"),
                };
                failures.push(format!(
                    "{entry}: seed {seed} {how}; segments removed after it: {left:?}"
                ));
                next = seed + 1;
            }
        }
    }
    for s in &summary {
        println!("{entry}: sample: seed={s}");
    }
    println!(
        "{entry}: {done} seeds passed of {seeds} in {:.1?}; slowest seed {} took {} ms",
        start.elapsed(),
        slowest.0,
        slowest.1
    );
    let new = failures;
    assert!(
        new.is_empty(),
        "{} failing seeds:\n{}",
        new.len(),
        new.join("\n")
    );
}

fn dispatch(which: &str, entry: &str) {
    match role().as_deref() {
        Some("fuzz") => child(which),
        Some(r) => panic!("unknown role {r}"),
        None => fuzz(entry),
    }
}

#[test]
fn hostile_free_list_metadata() {
    dispatch("fl", "hostile_free_list_metadata");
}

#[test]
fn hostile_slab_metadata() {
    dispatch("slab", "hostile_slab_metadata");
}

#[test]
fn hostile_bump_metadata() {
    dispatch("bump", "hostile_bump_metadata");
}

#[test]
fn hostile_header() {
    dispatch("header", "hostile_header");
}

/// Sanity check of the scribble path itself: a header with a bad magic written
/// through the file is seen by `open` in this process.
#[test]
fn scribbled_magic_is_a_typed_error() {
    let name = ShmName::new("hostile-magic");
    let a = FreeListAllocator::create(name.as_str(), 4096).unwrap();
    scribble(&name, 0, &(MAGIC ^ 1).to_le_bytes());
    assert!(matches!(
        FreeListAllocator::open(name.as_str()),
        Err(SegmentError::BadMagic { found, .. }) if found == MAGIC ^ 1
    ));
    scribble(&name, 0, &MAGIC.to_le_bytes());
    scribble(&name, 8, &(LAYOUT_VERSION + 7).to_le_bytes());
    assert!(matches!(
        FreeListAllocator::open(name.as_str()),
        Err(SegmentError::VersionMismatch { .. })
    ));
    let o = a.allocate(10).unwrap();
    a.free(o).unwrap();
}

/// A peer clears the permanently-set bits past the last slot (the tail of the last
/// bitmap word). The slab must then report corruption, not hand out "slots" past the
/// end of its data region: the fallback scan checks `slot < slots`, the summary-hinted
/// pass (`claim_in_word`) does not.
#[test]
fn slab_cleared_tail_bits_hand_out_slots_past_the_end() {
    let name = ShmName::new("hostile-slab-tail");
    let a = SlabAllocator::create(name.as_str(), 24, 10).unwrap();
    let l = *a.segment().layout();
    // Slab metadata: 8 reserved words, the summary (1 word, padded to 8), then the bitmap.
    scribble(&name, meta_region(&l).0 + 16 * 8, &0u64.to_le_bytes());
    let mut outside = Vec::new();
    for _ in 0..64 {
        match a.allocate(24) {
            Ok(o) if o.get() + 24 > l.data_end() => outside.push(o.get()),
            Ok(_) => {}
            Err(AllocError::Corrupted { .. } | AllocError::OutOfMemory { .. }) => break,
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert!(
        outside.is_empty(),
        "allocate returned {} offsets outside the data region [{:#x}, {:#x}), first {:#x}",
        outside.len(),
        l.data_offset,
        l.data_end(),
        outside[0]
    );
}

/// A header whose slab parameters multiply past u64 (slot size 2^32, 2^32 slots) must
/// be rejected with a typed error on open, not panic.
#[test]
fn slab_header_params_overflow_on_open() {
    let name = ShmName::new("hostile-slab-params");
    drop(SlabAllocator::create(name.as_str(), 8, 8).unwrap());
    // params[0] (slot size) @72, params[1] (slot count) @80.
    scribble(&name, 72, &(1u64 << 32).to_le_bytes());
    scribble(&name, 80, &(1u64 << 32).to_le_bytes());
    let r = std::panic::catch_unwind(|| SlabAllocator::open(name.as_str()).map(drop));
    match r {
        Err(_) => panic!("SlabAllocator::open panicked on a header with huge parameters"),
        Ok(r) => assert!(
            matches!(r, Err(SegmentError::CorruptHeader { .. })),
            "{r:?}"
        ),
    }
}
