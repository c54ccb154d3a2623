//! `ShmHashMap` with real processes: an oracle test, the multi-process torture
//! with SIGKILLs at random instants and at fail points (with `--features
//! failpoints`), hostile scribbles over the map's metadata, and nested values
//! built in one process and read and dropped in another.
//!
//! `cargo test --release --test collections_map` (add `--features failpoints` for
//! the kills at fail points; .ci/run does).
mod common;

use std::collections::HashMap;
use std::io::Write as _;
use std::os::unix::fs::FileExt;
use std::ptr::NonNull;
use std::time::Duration;

use common::{
    child_command, env_req, env_u64, read_stdout, role, wait_or_kill, KillOnDrop, Rng, ShmName,
};
use shared_allocator::collections::{RawStr, RawVec, ShmHashMap, ShmValue};
use shared_allocator::prelude::*;
use shared_allocator::{CollectionError, Error};

const WATCHDOG: Duration = Duration::from_secs(120);

fn live_blocks(a: &FreeListAllocator) -> u64 {
    a.stats().live_blocks.unwrap()
}

#[test]
fn map_matches_a_std_hashmap_and_frees_everything() {
    if role().is_some() {
        return;
    }
    let name = ShmName::new("map-oracle");
    let alloc = FreeListAllocator::create(name.as_str(), 64 << 20).unwrap();
    let base = live_blocks(&alloc);
    let m = ShmHashMap::<String, String, _>::open(&alloc, "m").unwrap();
    let root_blocks = live_blocks(&alloc) - base;
    let mut oracle: HashMap<String, String> = HashMap::new();
    let mut rng = Rng::new(env_u64("SA_MAP_SEED", 7));
    for step in 0..20_000u64 {
        let k = format!("key-{}", rng.below(3000));
        match rng.below(10) {
            0..=3 => {
                let v = "v".repeat(rng.below(100) as usize) + &step.to_string();
                assert_eq!(
                    m.insert(k.as_str(), v.as_str()).unwrap(),
                    oracle.insert(k, v)
                );
            }
            4..=5 => assert_eq!(m.remove(&k).unwrap(), oracle.remove(&k)),
            6 => {
                let add = rng.below(2) == 0;
                m.update(k.as_str(), |cur| {
                    if add {
                        Some(cur.unwrap_or_default() + "+")
                    } else {
                        None::<String>
                    }
                })
                .unwrap();
                if add {
                    oracle.entry(k).or_default().push('+');
                } else {
                    oracle.remove(&k);
                }
            }
            _ => assert_eq!(m.get(&k).unwrap().as_ref(), oracle.get(&k)),
        }
    }
    assert_eq!(m.len(), oracle.len());
    let mut got = m.entries().unwrap();
    got.sort();
    let mut want: Vec<_> = oracle.into_iter().collect();
    want.sort();
    assert_eq!(got, want);
    // Empty strings and a key of every length around the inline buffer.
    m.insert("", "").unwrap();
    assert_eq!(m.get("").unwrap().as_deref(), Some(""));
    m.clear().unwrap();
    assert!(m.is_empty());
    assert_eq!(
        live_blocks(&alloc) - base,
        root_blocks,
        "the map leaked blocks"
    );
}

#[test]
fn map_of_u64_grows_to_200k_keys_and_shrinks_by_removal() {
    if role().is_some() {
        return;
    }
    let name = ShmName::new("map-grow");
    let alloc = FreeListAllocator::create(name.as_str(), 256 << 20).unwrap();
    let m = ShmHashMap::<u64, u64, _>::open(&alloc, "m").unwrap();
    let n = env_u64("SA_MAP_N", 200_000);
    for k in 0..n {
        assert_eq!(m.insert(k, k * 3).unwrap(), None);
    }
    assert_eq!(m.len() as u64, n);
    for k in 0..n {
        assert_eq!(m.get(&k).unwrap(), Some(k * 3));
    }
    assert_eq!(m.get(&n).unwrap(), None);
    for k in (0..n).step_by(2) {
        assert_eq!(m.remove(&k).unwrap(), Some(k * 3));
    }
    assert_eq!(m.len() as u64, n / 2);
    assert_eq!(m.keys().unwrap().len() as u64, n / 2);
}

#[test]
fn a_map_opened_with_other_types_is_refused() {
    if role().is_some() {
        return;
    }
    let name = ShmName::new("map-types");
    let alloc = FreeListAllocator::create(name.as_str(), 8 << 20).unwrap();
    ShmHashMap::<u64, u64, _>::open(&alloc, "m").unwrap();
    assert!(matches!(
        ShmHashMap::<String, u64, _>::open(&alloc, "m"),
        Err(Error::TypeMismatch { .. })
    ));
}

// ------------------------------------------------------------------------------
// The torture.

/// Writes one log line with one write(2), so it survives a SIGKILL right after.
fn log(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(format!("{line}\n").as_bytes());
    let _ = out.flush();
}

fn value_of(key: u64, ver: u64) -> String {
    format!("{key}:{ver}:{}", "x".repeat((ver % 50) as usize))
}

/// Checks a value read for `key` is one that some writer wrote for it (never torn).
fn check_shape(key: u64, v: &str) -> u64 {
    let mut parts = v.splitn(3, ':');
    let k: u64 = parts.next().unwrap().parse().expect("key part");
    let ver: u64 = parts.next().unwrap().parse().expect("version part");
    assert_eq!(k, key, "value of another key: {v}");
    assert_eq!(v, value_of(key, ver), "torn value");
    ver
}

const FAIL_POINTS: &[&str] = &[
    "map.insert.intent",
    "map.insert.written",
    "map.insert.committed",
    "map.update.intent",
    "map.update.written",
    "map.remove.intent",
    "map.remove.tombstoned",
    "map.resize.allocated",
    "map.resize.built",
    "map.resize.committed",
    "coll.release.cleared",
    "map.repair.table",
];

fn torture_worker() {
    let name = env_req("SA_SEG");
    let base = env_u64("SA_KEYBASE", 0);
    let keys = env_u64("SA_KEYS", 1000);
    let run_for = Duration::from_millis(env_u64("SA_MS", 1000));
    let start = std::time::Instant::now();
    let mut rng = Rng::new(env_u64("SA_SEED", 1));
    #[cfg(feature = "failpoints")]
    if let Ok(point) = std::env::var("SA_FAILPOINT") {
        let at = env_u64("SA_FAIL_AT", 1);
        let hits = std::sync::atomic::AtomicU64::new(0);
        fail::cfg_callback(point, move || {
            if hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1 == at {
                let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
            }
        })
        .unwrap();
    }
    let alloc = FreeListAllocator::open(&name).unwrap();
    let m = ShmHashMap::<u64, String, _>::open(&alloc, "torture").unwrap();
    let all = env_u64("SA_ALLKEYS", keys);
    let mut model: HashMap<u64, u64> = HashMap::new();
    let mut ver = 0;
    while start.elapsed() < run_for {
        let key = base + rng.below(keys);
        ver += 1;
        match rng.below(20) {
            0..=9 => {
                log(&format!("I {key} {ver}"));
                let old = m.insert(key, value_of(key, ver).as_str()).unwrap();
                assert_eq!(
                    old.map(|o| check_shape(key, &o)),
                    model.insert(key, ver),
                    "own key {key}"
                );
                log(&format!("A {key} {ver}"));
            }
            10..=12 => {
                log(&format!("D {key}"));
                let old = m.remove(&key).unwrap();
                assert_eq!(old.map(|o| check_shape(key, &o)), model.remove(&key));
                log(&format!("R {key}"));
            }
            13 => {
                let present = model.contains_key(&key);
                if present {
                    log(&format!("I {key} {ver}"));
                } else {
                    log(&format!("D {key}"));
                }
                m.update(key, |cur| {
                    assert_eq!(cur.is_some(), present);
                    present.then(|| value_of(key, ver))
                })
                .unwrap();
                if present {
                    model.insert(key, ver);
                    log(&format!("A {key} {ver}"));
                } else {
                    log(&format!("R {key}"));
                }
            }
            14..=17 => {
                let got = m.get(&key).unwrap().map(|v| check_shape(key, &v));
                assert_eq!(got, model.get(&key).copied(), "read own key {key}");
            }
            _ => {
                // Someone else's key: any value written for it, never a torn one.
                let other = rng.below(all);
                if let Some(v) = m.get(&other).unwrap() {
                    check_shape(other, &v);
                }
            }
        }
    }
    log("DONE");
}

/// What the log of one worker says about its keys: the last acknowledged state and
/// the operation in flight (if it died in one).
/// Per key: the last acknowledged value version (`None`: removed).
type Acked = HashMap<u64, Option<u64>>;
/// The key and version of an operation logged as started but not acknowledged.
type InFlight = Option<(u64, Option<u64>)>;

fn replay(text: &str) -> (Acked, InFlight, bool) {
    let mut acked: HashMap<u64, Option<u64>> = HashMap::new();
    let mut pending = None;
    let mut done = false;
    for line in text.lines() {
        let w: Vec<&str> = line.split(' ').collect();
        match w[0] {
            "I" => pending = Some((w[1].parse().unwrap(), Some(w[2].parse().unwrap()))),
            "D" => pending = Some((w[1].parse().unwrap(), None)),
            "A" => {
                acked.insert(w[1].parse().unwrap(), Some(w[2].parse().unwrap()));
                pending = None;
            }
            "R" => {
                acked.insert(w[1].parse().unwrap(), None);
                pending = None;
            }
            "DONE" => done = true,
            _ => {}
        }
    }
    (acked, pending, done)
}

#[test]
fn torture_workers_killed_at_random_instants_and_fail_points() {
    if role().as_deref() == Some("torture") {
        torture_worker();
        return;
    }
    if role().is_some() {
        return;
    }
    let name = ShmName::new("map-torture");
    let alloc = FreeListAllocator::create(name.as_str(), 128 << 20).unwrap();
    let m = ShmHashMap::<u64, String, _>::open(&alloc, "torture").unwrap();
    let base_blocks = live_blocks(&alloc);
    let rounds = env_u64("SA_MAP_ROUNDS", 4);
    let workers = env_u64("SA_MAP_WORKERS", 4);
    let keys = 600;
    let mut rng = Rng::new(env_u64("SA_MAP_SEED", 42));
    let mut kills = 0u64;
    let mut all_logs = Vec::new();
    let mut fp_index = 0usize;
    let all_keys = rounds * workers * keys;
    for round in 0..rounds {
        let mut kids = Vec::new();
        for w in 0..workers {
            let id = round * workers + w;
            let mut env = vec![
                ("SA_SEG", name.as_str().to_owned()),
                ("SA_KEYBASE", (id * keys).to_string()),
                ("SA_KEYS", keys.to_string()),
                ("SA_ALLKEYS", all_keys.to_string()),
                ("SA_MS", env_u64("SA_MAP_MS", 1500).to_string()),
                ("SA_SEED", rng.next_u64().to_string()),
            ];
            // With fail points: every second worker dies at the K-th hit of one.
            if cfg!(feature = "failpoints") && w % 2 == 1 {
                let p = FAIL_POINTS[fp_index % FAIL_POINTS.len()];
                fp_index += 1;
                env.push(("SA_FAILPOINT", p.to_owned()));
                env.push(("SA_FAIL_AT", (1 + rng.below(40)).to_string()));
            }
            let mut c = child_command(
                &[],
                "torture_workers_killed_at_random_instants_and_fail_points",
                "torture",
                &env,
            )
            .spawn()
            .unwrap();
            let out = read_stdout(&mut c);
            kids.push((KillOnDrop(Some(c)), out, w));
        }
        // Kill one worker of each round at a random instant.
        let victim = rng.below(workers) as usize;
        std::thread::sleep(Duration::from_millis(100 + rng.below(1000)));
        if let Some(c) = kids[victim].0 .0.as_mut() {
            let _ = c.kill();
        }
        for (mut k, out, w) in kids {
            let status = wait_or_kill(k.0.as_mut().unwrap(), WATCHDOG)
                .unwrap_or_else(|| panic!("watchdog: torture worker {w} hung"));
            k.0 = None;
            let text = out.join().unwrap();
            let (_, _, done) = replay(&text);
            if !status.success() {
                use std::os::unix::process::ExitStatusExt;
                assert_eq!(
                    status.signal(),
                    Some(9),
                    "worker {w} of round {round} failed: {status}\n{}",
                    text.lines().rev().take(5).collect::<Vec<_>>().join("\n")
                );
                kills += 1;
            } else {
                assert!(done, "worker {w} exited without finishing");
            }
            all_logs.push(text);
        }
    }
    // A reader of every shard repairs what the dead left; then check the state.
    let entries = m.entries().unwrap();
    let mut seen = HashMap::new();
    for (k, v) in &entries {
        assert!(seen.insert(*k, v.clone()).is_none(), "key {k} twice");
        check_shape(*k, v);
    }
    for text in &all_logs {
        let (acked, pending, _) = replay(text);
        for (k, want) in &acked {
            let got = seen.get(k).map(|v| check_shape(*k, v));
            let ok = got == *want || pending.is_some_and(|(pk, pv)| pk == *k && got == pv);
            assert!(
                ok,
                "key {k}: acknowledged {want:?}, in flight {pending:?}, map has {got:?}"
            );
        }
        if let Some((pk, pv)) = pending {
            if !acked.contains_key(&pk) {
                let got = seen.get(&pk).map(|v| check_shape(pk, v));
                assert!(
                    got.is_none() || got == pv,
                    "key {pk}: in flight {pv:?}, map has {got:?}"
                );
            }
        }
    }
    // Every key the logs never wrote is absent.
    let written: std::collections::HashSet<u64> = all_logs
        .iter()
        .flat_map(|t| {
            let (a, p, _) = replay(t);
            a.into_keys().chain(p.map(|p| p.0))
        })
        .collect();
    for k in seen.keys() {
        assert!(written.contains(k), "key {k} nobody wrote");
    }
    assert_eq!(m.len(), entries.len());
    // Leaks: clear the map, reclaim the dead's caches; what stays is what the dead
    // processes' code held outside the map (at most one allocation window and one
    // cleared-but-not-freed block per death).
    m.clear().unwrap();
    alloc.reclaim();
    let leaked = live_blocks(&alloc) - base_blocks;
    eprintln!("torture: {rounds} rounds x {workers} workers, {kills} killed, {leaked} blocks held by dead code");
    assert!(kills >= rounds, "every round kills one");
    assert!(
        leaked <= 2 * kills,
        "{leaked} blocks leaked after {kills} deaths: more than the dead code held"
    );
}

// ------------------------------------------------------------------------------
// Hostile scribbles.

const ROOT_SHARD_WORDS: u64 = 16;

fn scribbler() {
    let name = env_req("SA_SEG");
    let alloc = FreeListAllocator::open(&name).unwrap();
    let m = ShmHashMap::<String, String, _>::open(&alloc, "hostile").unwrap();
    let root = alloc
        .roots()
        .unwrap()
        .into_iter()
        .find(|r| r.name == "hostile")
        .unwrap()
        .offset
        .get();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(common::shm_path(&name))
        .unwrap();
    let mut rng = Rng::new(env_u64("SA_SEED", 3));
    let read_u64 = |off: u64| {
        let mut b = [0u8; 8];
        file.read_exact_at(&mut b, off).unwrap();
        u64::from_le_bytes(b)
    };
    let rounds = env_u64("SA_SCRIBBLES", 300);
    let (mut errors, mut oks) = (0, 0);
    for round in 0..rounds {
        // Pick a target: a shard word (not the lock), or bytes of a shard's table.
        let si = rng.below(64);
        let shard = root + ROOT_SHARD_WORDS + si * 80;
        let table = read_u64(shard + 24) & ((1 << 56) - 1);
        let file_len = file.metadata().unwrap().len();
        let target = if rng.below(2) == 0 || table == 0 || table + 8 * 64 > file_len {
            shard + 16 + 8 * rng.below(8)
        } else {
            table + 8 * rng.below(64)
        };
        let garbage = match rng.below(4) {
            0 => rng.next_u64(),
            1 => u64::MAX,
            2 => rng.below(1 << 20),
            _ => read_u64(target) ^ (1 << rng.below(64)),
        };
        file.write_all_at(&garbage.to_le_bytes(), target).unwrap();
        for j in 0..20 {
            let k = format!("k{}", rng.below(400));
            let r = match (round + j) % 5 {
                0 => m.get(&k).map(drop),
                1 => m.insert(k.as_str(), "after").map(drop),
                2 => m.remove(&k).map(drop),
                3 => m.entries().map(drop),
                _ => m.update(k.as_str(), |v| v.map(|s| s + "!")).map(drop),
            };
            match r {
                Ok(()) => oks += 1,
                Err(Error::Collection(CollectionError::Busy { .. })) => {
                    panic!("a scribble (not a lock word) made an operation wait")
                }
                Err(_) => errors += 1,
            }
        }
    }
    println!("scribbles: {rounds} rounds, {oks} ok, {errors} errors");
}

#[test]
fn hostile_scribbles_over_map_metadata_give_errors_not_ub_or_hangs() {
    if role().as_deref() == Some("scribbler") {
        scribbler();
        return;
    }
    if role().is_some() {
        return;
    }
    let name = ShmName::new("map-hostile");
    let alloc = FreeListAllocator::create(name.as_str(), 32 << 20).unwrap();
    let m = ShmHashMap::<String, String, _>::open(&alloc, "hostile").unwrap();
    for i in 0..400 {
        m.insert(format!("k{i}").as_str(), format!("value {i}").as_str())
            .unwrap();
    }
    let mut c = child_command(
        &[],
        "hostile_scribbles_over_map_metadata_give_errors_not_ub_or_hangs",
        "scribbler",
        &[("SA_SEG", name.as_str().to_owned())],
    )
    .spawn()
    .unwrap();
    let out = read_stdout(&mut c);
    let status = wait_or_kill(&mut c, WATCHDOG).expect("watchdog: the scribbled map hung");
    let text = out.join().unwrap();
    assert!(status.success(), "scribbler failed: {status}\n{text}");
    assert!(text.contains("scribbles:"), "{text}");
    eprintln!("{}", text.trim());
}

#[test]
fn lock_words_scribbled_with_this_process_as_owner_are_taken_over_not_busy() {
    if role().is_some() {
        return;
    }
    let name = ShmName::new("map-lockword");
    let alloc = FreeListAllocator::create(name.as_str(), 8 << 20).unwrap();
    let m = ShmHashMap::<u64, u64, _>::open(&alloc, "m").unwrap();
    m.insert(1, 1).unwrap();
    let root = alloc.roots().unwrap()[0].offset.get();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(common::shm_path(name.as_str()))
        .unwrap();
    // Take every shard's lock word: copy in the identity of a holder this process
    // knows is alive (its own, from a lock it takes and keeps).
    let shard0 = root + ROOT_SHARD_WORDS;
    let mut token = 0u32;
    m.update(1u64, |v| {
        // Inside the update this process holds key 1's shard lock: its word is
        // this process's identity.
        for si in 0..64 {
            let mut b = [0u8; 4];
            file.read_exact_at(&mut b, shard0 + si * 80).unwrap();
            token |= u32::from_le_bytes(b);
        }
        v
    })
    .unwrap();
    assert_ne!(token, 0);
    for si in 0..64 {
        file.write_all_at(&token.to_le_bytes(), shard0 + si * 80)
            .unwrap();
    }
    // Reads whose shard is stable still answer without the lock.
    assert_eq!(m.get(&1).unwrap(), Some(1));
    // The words name this process, but no thread of it holds a lock (the shards'
    // holder words say so): a writer takes the word over after
    // `FORGED_AFTER` and repairs, instead of failing with `Busy` for as long as
    // this process lives (red team rt18-s2 B3). A word naming another live
    // process still waits `LOCK_TIMEOUT` and is `Busy`.
    m.insert(2u64, 2).unwrap();
    m.update(1u64, |v| v.map(|x| x + 10)).unwrap();
    assert_eq!(m.remove(&2).unwrap(), Some(2));
    assert_eq!(m.get(&1).unwrap(), Some(11));
}

/// Red team rt18-s2 B3: snapshot the segment while this thread holds a shard
/// (inside `update`), then write back the one 8-byte word that was nonzero then
/// and is zero now (the lock word). Every later write of that shard waited 10 s
/// and failed with `Busy`, for as long as this process lived.
#[test]
fn a_replayed_lock_word_of_this_process_is_taken_over_not_busy_forever() {
    if role().is_some() {
        return;
    }
    let name = ShmName::new("map-lockreplay");
    let alloc = FreeListAllocator::create(name.as_str(), 8 << 20).unwrap();
    let m = ShmHashMap::<String, u64, _>::open(&alloc, "m").unwrap();
    m.insert("k1", 1).unwrap();
    let root = alloc.roots().unwrap()[0].offset.get();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(common::shm_path(name.as_str()))
        .unwrap();
    let words = 64 * 10 + 2;
    let snap = || {
        let mut b = vec![0u8; words as usize * 8];
        file.read_exact_at(&mut b, root).unwrap();
        b.chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect::<Vec<_>>()
    };
    let mut held = Vec::new();
    m.update("k1", |v: Option<u64>| {
        held = snap();
        v
    })
    .unwrap();
    let after = snap();
    let w = (0..after.len())
        .find(|&i| held[i] != 0 && after[i] == 0)
        .expect("a word set while the shard was held");
    file.write_all_at(&held[w].to_le_bytes(), root + 8 * w as u64)
        .unwrap();
    for round in 0..3u64 {
        m.insert("k1", round).unwrap();
        assert_eq!(m.get("k1").unwrap(), Some(round));
    }
    assert_eq!(m.remove("k1").unwrap(), Some(2));
    assert!(m.is_empty());
}

// ------------------------------------------------------------------------------
// Nesting.

/// A struct of strings and a vector, as a map value: its raw form is a
/// `#[derive(ShmSafe)]` struct of the fields' raw forms.
#[derive(Debug, Clone, PartialEq)]
struct Person {
    name: String,
    tags: Vec<String>,
    age: u64,
}

#[derive(shared_allocator::ShmSafe, Clone, Copy)]
#[repr(C)]
struct PersonRaw {
    name: RawStr,
    tags: RawVec<RawStr>,
    age: u64,
}

// SAFETY: each field is delegated to its own `ShmValue` impl (whose promises hold
// per field); `release` projects to the fields in place and releases each, so it
// is idempotent exactly when theirs are.
unsafe impl ShmValue for Person {
    type Raw = PersonRaw;
    type Query = Person;
    type Out = Person;

    fn store<A: ShmFree + ?Sized>(p: &Person, alloc: &A) -> Result<PersonRaw, Error> {
        let mut name = String::store(&p.name, alloc)?;
        let tags = match Vec::<String>::store(&p.tags, alloc) {
            Ok(t) => t,
            Err(e) => {
                // SAFETY: a local raw value just stored, owned by nobody else.
                unsafe { String::release(NonNull::from(&mut name), alloc) };
                return Err(e);
            }
        };
        Ok(PersonRaw {
            name,
            tags,
            age: p.age,
        })
    }

    fn load<A: ShmAllocator + ?Sized>(r: &PersonRaw, alloc: &A) -> Result<Person, Error> {
        Ok(Person {
            name: String::load(&r.name, alloc)?,
            tags: Vec::<String>::load(&r.tags, alloc)?,
            age: r.age,
        })
    }

    unsafe fn release<A: ShmFree + ?Sized>(raw: NonNull<PersonRaw>, alloc: &A) {
        let p = raw.as_ptr();
        // SAFETY: field projections of the caller's valid, aligned pointer.
        let (name, tags) = unsafe {
            (
                NonNull::new_unchecked(std::ptr::addr_of_mut!((*p).name)),
                NonNull::new_unchecked(std::ptr::addr_of_mut!((*p).tags)),
            )
        };
        // SAFETY: the caller owns the value, so it owns each field's raw form.
        unsafe { String::release(name, alloc) };
        // SAFETY: as above.
        unsafe { Vec::<String>::release(tags, alloc) };
    }
}

fn people(i: u64) -> Vec<Person> {
    (0..(i % 5))
        .map(|j| Person {
            name: format!("person {i}.{j} {}", "ü".repeat(j as usize)),
            tags: (0..j).map(|t| format!("tag{t}")).collect(),
            age: i * 10 + j,
        })
        .collect()
}

#[test]
fn nested_values_built_in_one_process_read_and_dropped_in_another() {
    let name_var = std::env::var("SA_SEG");
    match role().as_deref() {
        Some("nest-build") => {
            let alloc = FreeListAllocator::open(&name_var.unwrap()).unwrap();
            let m = ShmHashMap::<String, Vec<Person>, _>::open(&alloc, "people").unwrap();
            for i in 0..300 {
                m.insert(format!("group {i}").as_str(), people(i).as_slice())
                    .unwrap();
            }
            // Replace some (frees the old nested values), remove a few.
            for i in (0..300).step_by(7) {
                m.insert(format!("group {i}").as_str(), people(i + 1).as_slice())
                    .unwrap();
            }
            println!("built {}", m.len());
            return;
        }
        Some(_) => return,
        None => {}
    }
    let name = ShmName::new("map-nest");
    let alloc = FreeListAllocator::create(name.as_str(), 32 << 20).unwrap();
    let base = live_blocks(&alloc);
    let mut c = child_command(
        &[],
        "nested_values_built_in_one_process_read_and_dropped_in_another",
        "nest-build",
        &[("SA_SEG", name.as_str().to_owned())],
    )
    .spawn()
    .unwrap();
    let out = read_stdout(&mut c);
    let status = wait_or_kill(&mut c, WATCHDOG).expect("watchdog: builder hung");
    assert!(status.success(), "builder failed");
    assert!(out.join().unwrap().contains("built 300"));
    alloc.reclaim();
    let m = ShmHashMap::<String, Vec<Person>, _>::open(&alloc, "people").unwrap();
    for i in 0..300 {
        let want = if i % 7 == 0 { people(i + 1) } else { people(i) };
        assert_eq!(m.get(&format!("group {i}")).unwrap(), Some(want));
    }
    for i in 0..150 {
        assert!(m.remove(&format!("group {i}")).unwrap().is_some());
    }
    m.clear().unwrap();
    // The root stays (roots are never freed); nothing else.
    assert_eq!(live_blocks(&alloc) - base, 1, "nested blocks leaked");
}
