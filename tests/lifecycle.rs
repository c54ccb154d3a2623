//! The segment lifecycle with real processes: `open_or_create` raced by 8
//! processes (also over a crashed creator's half-initialised object), the
//! remove-on-last-close policy with processes closing and SIGKILLed in random
//! order and against a concurrent `open`, and the consistency walk after kills.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::MetadataExt;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use shared_allocator::alloc::Inspect;
use shared_allocator::prelude::*;
use shared_allocator::segment::{remove_if_stale, Staleness, STALE_GRACE};
use shared_allocator::SegmentError;

const LIMIT: Duration = Duration::from_secs(60);

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// Spins until the wall clock passes `SA_GO` (ns): children started one by one
/// then act at the same instant.
fn wait_for_go() {
    let go: u64 = env_req("SA_GO").parse().unwrap();
    while now_ns() < go {
        std::hint::spin_loop();
    }
}

/// A child that reads its stdin line by line (commands from the parent).
fn spawn_interactive(entry: &str, role: &str, env: &[(&str, String)]) -> Child {
    child_command(&[], entry, role, env)
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawn child")
}

fn read_line(child: &mut Child, what: &str) -> String {
    // One line, with a watchdog thread that kills the child if it hangs.
    let pid = child.id();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let d2 = done.clone();
    let dog = std::thread::spawn(move || {
        let start = Instant::now();
        while !d2.load(Ordering::Relaxed) {
            if start.elapsed() > LIMIT {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    });
    let out = child.stdout.as_mut().expect("piped stdout");
    // Lines are read byte by byte so nothing past the newline is buffered away;
    // the test harness's own lines ("running 1 test") are skipped.
    let line = loop {
        let mut line = String::new();
        let mut b = [0u8; 1];
        let mut eof = true;
        while std::io::Read::read(out, &mut b).unwrap_or(0) == 1 {
            eof = false;
            if b[0] == b'\n' {
                break;
            }
            line.push(b[0] as char);
        }
        if eof || !(line.is_empty() || line.starts_with("running ")) {
            break line;
        }
    };
    done.store(true, Ordering::Relaxed);
    assert!(!dog.join().unwrap(), "watchdog: {what} hung; killed it");
    line
}

/// Leaves a crashed creator's half-initialised object under `name`: a child
/// creates it the way `create` starts (O_EXCL, sized, magic written, header not
/// published) and is SIGKILLed before publishing.
fn crashed_creator(entry: &str, name: &str) {
    let mut c = KillOnDrop::new(spawn_child(
        entry,
        "half-create",
        &[("SA_NAME", name.to_owned())],
    ));
    let line = read_line(c.child(), "half-create child");
    assert_eq!(line, "half", "child said {line:?}");
    c.child().kill().unwrap();
    c.child().wait().unwrap();
}

/// The child side of [`crashed_creator`].
fn half_create(name: &str) {
    use nix::fcntl::OFlag;
    use nix::sys::stat::Mode;
    let fd = nix::sys::mman::shm_open(
        format!("/{name}").as_str(),
        OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR,
        Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    let f = std::fs::File::from(fd);
    f.set_len(1 << 20).unwrap();
    std::os::unix::fs::FileExt::write_at(&f, b"SHMALLOC", 0).unwrap();
    println!("half");
    std::thread::sleep(Duration::from_secs(3600));
}

fn race_role() -> bool {
    match role().as_deref() {
        None => false,
        Some("half-create") => {
            half_create(&env_req("SA_NAME"));
            true
        }
        Some("racer") => {
            let name = env_req("SA_NAME");
            wait_for_go();
            let (a, created) = FreeListAllocator::open_or_create(&name, 1 << 20).unwrap();
            let joined = a.root::<AtomicU64>("joined").unwrap();
            joined.fetch_add(1, Ordering::SeqCst);
            println!("created={}", u8::from(created));
            true
        }
        Some(other) => panic!("unknown role {other}"),
    }
}

fn race_eight(entry: &str, name: &ShmName) {
    let go = now_ns() + 300_000_000; // 300 ms: every child is started by then
    let kids: Vec<Child> = (0..8)
        .map(|_| {
            spawn_child(
                entry,
                "racer",
                &[
                    ("SA_NAME", name.as_str().to_owned()),
                    ("SA_GO", go.to_string()),
                ],
            )
        })
        .collect();
    let outs = finish_all(kids, LIMIT, "racer");
    let created = outs
        .iter()
        .filter(|o| o.iter().any(|l| l == "created=1"))
        .count();
    assert_eq!(created, 1, "exactly one racer creates: {outs:?}");
    // Every racer counted itself in the segment that now has the name: all eight
    // ended up on this one segment.
    let a = FreeListAllocator::open(name.as_str()).unwrap();
    let joined = a.root::<AtomicU64>("joined").unwrap();
    assert_eq!(joined.load(Ordering::SeqCst), 8);
    assert!(a.check().is_consistent(), "{:?}", a.check());
}

#[test]
fn open_or_create_raced_by_eight_processes() {
    if race_role() {
        return;
    }
    for _ in 0..3 {
        let name = ShmName::new("l19-race");
        race_eight("open_or_create_raced_by_eight_processes", &name);
    }
}

#[test]
fn open_or_create_replaces_a_crashed_creators_object() {
    if race_role() {
        return;
    }
    let entry = "open_or_create_replaces_a_crashed_creators_object";
    let name = ShmName::new("l19-stale");
    crashed_creator(entry, name.as_str());
    // Too young to judge: left alone (it could be a creator at work).
    assert_eq!(
        remove_if_stale(name.as_str()).unwrap(),
        Staleness::Initialising
    );
    std::thread::sleep(STALE_GRACE + Duration::from_millis(100));
    race_eight(entry, &name);
    // A published segment is never stale.
    assert_eq!(
        remove_if_stale(name.as_str()).unwrap(),
        Staleness::Published
    );
}

#[test]
fn open_or_create_opens_what_exists() {
    let name = ShmName::new("l19-ooc");
    let (a, created) = SlabAllocator::open_or_create(name.as_str(), 64, 100).unwrap();
    assert!(created);
    // Other parameters: the existing segment wins.
    let (b, created) = SlabAllocator::open_or_create(name.as_str(), 32, 7).unwrap();
    assert!(!created);
    assert_eq!(b.slot_count(), 100);
    // Another kind under the name is an error, not a replacement.
    assert!(matches!(
        FreeListAllocator::open_or_create(name.as_str(), 1 << 20),
        Err(SegmentError::WrongKind { .. })
    ));
    drop((a, b));
    let bump = ShmName::new("l19-ooc-bump");
    let (c, created) = BumpAllocator::open_or_create(bump.as_str(), 1 << 16).unwrap();
    assert!(created);
    let (_d, created) = BumpAllocator::open_or_create(bump.as_str(), 1 << 16).unwrap();
    assert!(!created);
    drop(c);
}

// ------------------------------------------------------------------ last close

fn holder_role() -> bool {
    match role().as_deref() {
        None => false,
        Some("holder") => {
            // Opens, says so, then closes when told ("close") and says so.
            let a = FreeListAllocator::open(&env_req("SA_NAME")).unwrap();
            let _ = a.allocate(100).unwrap();
            println!("open");
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).unwrap();
            assert_eq!(line.trim(), "close");
            drop(a);
            println!("closed");
            // Stay alive (without a handle) until stdin closes.
            let _ = std::io::stdin().read_line(&mut line);
            true
        }
        Some("opener") => {
            let name = env_req("SA_NAME");
            // With the `failpoints` feature: stall between taking the lifecycle
            // lock and joining the registry, so that the race with a remover is
            // hit every time (without the lock, the name would go meanwhile).
            #[cfg(feature = "failpoints")]
            if let Ok(ms) = std::env::var("SA_ATTACH_SLEEP_MS") {
                fail::cfg("lifecycle.attach.before_join", &format!("sleep({ms})")).unwrap();
            }
            wait_for_go();
            match FreeListAllocator::open(&name) {
                Ok(a) => {
                    println!("opened");
                    let mut line = String::new();
                    let _ = std::io::stdin().read_line(&mut line);
                    drop(a);
                    println!("closed");
                }
                Err(SegmentError::NotFound { .. }) => println!("notfound"),
                Err(e) => panic!("opener: {e}"),
            }
            true
        }
        Some(other) => panic!("unknown role {other}"),
    }
}

fn exists(name: &ShmName) -> bool {
    shm_path(name.as_str()).exists()
}

#[test]
fn last_close_removes_the_name_exactly_when_no_live_handle_remains() {
    if holder_role() {
        return;
    }
    let entry = "last_close_removes_the_name_exactly_when_no_live_handle_remains";
    let rounds = env_u64("SA_LASTCLOSE_ROUNDS", 8);
    let mut rng = Rng::new(env_u64("SA_SEED", 0x19));
    for round in 0..rounds {
        let name = ShmName::new("l19-last");
        let a = FreeListAllocator::create(name.as_str(), 1 << 20).unwrap();
        a.segment().set_remove_on_last_close(true);
        let mut kids: Vec<Option<Child>> = (0..4)
            .map(|_| {
                Some(spawn_interactive(
                    entry,
                    "holder",
                    &[("SA_NAME", name.as_str().to_owned())],
                ))
            })
            .collect();
        for k in kids.iter_mut() {
            assert_eq!(read_line(k.as_mut().unwrap(), "holder open"), "open");
        }
        drop(a); // the creator leaves first: four live handles remain
        assert!(exists(&name), "round {round}: removed while 4 handles live");
        // Random order, each one closed or SIGKILLed at random.
        let mut order: Vec<usize> = (0..4).collect();
        for i in (1..4).rev() {
            order.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let mut last_killed = false;
        for (step, &i) in order.iter().enumerate() {
            let mut c = kids[i].take().unwrap();
            let kill = rng.below(3) == 0;
            if kill {
                c.kill().unwrap();
                c.wait().unwrap();
            } else {
                writeln!(c.stdin.as_mut().unwrap(), "close").unwrap();
                assert_eq!(read_line(&mut c, "holder close"), "closed");
            }
            let left = 3 - step;
            if left > 0 {
                assert!(
                    exists(&name),
                    "round {round}: name gone with {left} live handle(s) left"
                );
            } else {
                last_killed = kill;
            }
            drop(c.stdin.take());
            wait_with_watchdog(&mut c, LIMIT, "holder exit");
        }
        if last_killed {
            // A SIGKILLed process runs no code: the name stays, with no live
            // process attached, for gc (here: the same decision the CLI makes).
            assert!(exists(&name), "round {round}");
            shared_allocator::segment::set_observer_mode(true);
            let o = FreeListAllocator::open(name.as_str()).unwrap();
            shared_allocator::segment::set_observer_mode(false);
            assert_eq!(o.registry().live_others(), 0);
            assert!(o.check().is_consistent(), "{:?}", o.check());
            assert!(o.remove_if_unattached().unwrap());
        } else {
            assert!(
                !exists(&name),
                "round {round}: the last handle closed, but the name stays"
            );
        }
        assert!(!exists(&name));
    }
}

#[test]
fn last_close_never_races_a_concurrent_open() {
    if holder_role() {
        return;
    }
    let entry = "last_close_never_races_a_concurrent_open";
    let rounds = env_u64("SA_LASTCLOSE_RACES", 24);
    let (mut opened, mut missed) = (0, 0);
    for round in 0..rounds {
        let name = ShmName::new("l19-race-close");
        let a = FreeListAllocator::create(name.as_str(), 1 << 20).unwrap();
        a.segment().set_remove_on_last_close(true);
        // Spread the opener's start around the close by a few hundred µs; with
        // fail points, every other round stalls the opener 30 ms inside `open`
        // and closes 10 ms into that.
        let stall = cfg!(feature = "failpoints") && round % 2 == 0;
        let go = now_ns() + 150_000_000 + (round % 8) * 100_000;
        let mut c = spawn_interactive(
            entry,
            "opener",
            &[
                ("SA_NAME", name.as_str().to_owned()),
                ("SA_GO", go.to_string()),
                (
                    "SA_ATTACH_SLEEP_MS",
                    if stall { "30" } else { "0" }.to_owned(),
                ),
            ],
        );
        while now_ns() < go + if stall { 10_000_000 } else { 300_000 } {
            std::hint::spin_loop();
        }
        drop(a);
        match read_line(&mut c, "opener").as_str() {
            "opened" => {
                opened += 1;
                assert!(
                    exists(&name),
                    "round {round}: a live handle, but the name is gone"
                );
                writeln!(c.stdin.as_mut().unwrap(), "close").unwrap();
                assert_eq!(read_line(&mut c, "opener close"), "closed");
                assert!(
                    !exists(&name),
                    "round {round}: last handle closed, name stays"
                );
            }
            "notfound" => {
                missed += 1;
                assert!(!exists(&name), "round {round}");
            }
            other => panic!("opener said {other:?}"),
        }
        drop(c.stdin.take());
        wait_with_watchdog(&mut c, LIMIT, "opener exit");
    }
    println!("opened {opened}, not found {missed}");
}

#[test]
fn observers_never_keep_a_name_alive() {
    let name = ShmName::new("l19-observer");
    let a = FreeListAllocator::create(name.as_str(), 1 << 20).unwrap();
    a.segment().set_remove_on_last_close(true);
    shared_allocator::segment::set_observer_mode(true);
    let o = FreeListAllocator::open(name.as_str());
    shared_allocator::segment::set_observer_mode(false);
    let o = o.unwrap();
    assert!(o.registry().slots.iter().any(|s| s.is_self && s.observer));
    drop(a); // the last real handle: removes the name although the observer is attached
    assert!(!exists(&name));
    drop(o);
    let _ = std::fs::metadata(shm_path(name.as_str())).map(|m| m.ino());
}

// ------------------------------------------------------------------ check after kills

#[test]
fn check_is_consistent_after_sigkills() {
    if let Some(r) = role() {
        assert_eq!(r, "worker");
        let a = FreeListAllocator::open(&env_req("SA_NAME")).unwrap();
        let mut rng = Rng::new(u64::from(std::process::id()));
        let mut held = Vec::new();
        println!("ready");
        loop {
            if held.len() < 64 && rng.below(2) == 0 {
                let size = if rng.below(8) == 0 {
                    4096 * (1 + rng.below(4) as usize)
                } else {
                    1 + rng.below(2048) as usize
                };
                if let Ok(o) = a.allocate(size) {
                    held.push(o);
                }
            } else if let Some(o) = held.pop() {
                a.free(o).unwrap();
            }
        }
    }
    let name = ShmName::new("l19-killcheck");
    let a = FreeListAllocator::create(name.as_str(), 8 << 20).unwrap();
    let kills = env_u64("SA_CHECK_KILLS", 12);
    let mut rng = Rng::new(7);
    for _ in 0..kills {
        let mut c = spawn_child(
            "check_is_consistent_after_sigkills",
            "worker",
            &[("SA_NAME", name.as_str().to_owned())],
        );
        let mut out = BufReader::new(c.stdout.take().unwrap());
        let mut l = String::new();
        out.read_line(&mut l).unwrap();
        std::thread::sleep(Duration::from_micros(rng.below(20_000)));
        c.kill().unwrap();
        c.wait().unwrap();
        // Dead slots and their intents are not inconsistencies: in flight.
        let c1 = a.check();
        assert!(c1.is_consistent(), "{c1:?}");
    }
    a.reclaim();
    let c2 = a.check();
    assert!(c2.is_consistent(), "{c2:?}");
    assert_eq!(a.registry().dead(), 0);
    assert_eq!(c2.in_flight, 0);
}

/// Red-team: an observer (a tool) SIGKILLed while attached leaves its slot's
/// observer mark behind. Whoever takes that slot next must count as a live handle
/// for the last-close policy, or the name would vanish under it.
#[test]
fn a_dead_observers_mark_never_passes_to_the_next_holder() {
    if let Some(r) = role() {
        assert_eq!(r, "observer");
        shared_allocator::segment::set_observer_mode(true);
        let _o = FreeListAllocator::open(&env_req("SA_NAME")).unwrap();
        println!("ready");
        std::thread::sleep(Duration::from_secs(3600));
        return;
    }
    let name = ShmName::new("l19-obs-dead");
    let a = FreeListAllocator::create(name.as_str(), 1 << 20).unwrap();
    a.segment().set_remove_on_last_close(true);
    let mut c = KillOnDrop::new(spawn_child(
        "a_dead_observers_mark_never_passes_to_the_next_holder",
        "observer",
        &[("SA_NAME", name.as_str().to_owned())],
    ));
    let mut out = BufReader::new(c.child().stdout.take().unwrap());
    let mut l = String::new();
    while l.trim() != "ready" {
        l.clear();
        assert!(out.read_line(&mut l).unwrap() > 0, "observer child exited");
    }
    let obs_slot = a
        .registry()
        .slots
        .iter()
        .find(|s| s.observer)
        .expect("the observer's slot")
        .slot;
    c.child().kill().unwrap();
    c.child().wait().unwrap();
    a.reclaim();
    // Take slots until one lands on the dead observer's.
    let mut handles = Vec::new();
    loop {
        let h = FreeListAllocator::open(name.as_str()).unwrap();
        let mine = h
            .registry()
            .slots
            .iter()
            .find(|s| s.is_self)
            .unwrap()
            .clone();
        assert!(
            !mine.observer,
            "slot {} inherited an observer mark",
            mine.slot
        );
        let hit = mine.slot == obs_slot;
        handles.push(h);
        if hit {
            break;
        }
        assert!(handles.len() < 128, "never got slot {obs_slot}");
    }
    let last = handles.pop().unwrap();
    drop(handles);
    drop(a);
    assert!(
        exists(&name),
        "removed while the handle in the old observer slot lives"
    );
    drop(last);
    assert!(!exists(&name));
}

/// Red-team: `gc` / `rm` (remove if unattached, from an observer handle) racing a
/// process's `open`: the process either finds the name gone, or is attached to
/// the segment that keeps the name. Never attached to a removed one.
#[test]
fn remove_if_unattached_never_races_a_concurrent_open() {
    if holder_role() {
        return;
    }
    let entry = "remove_if_unattached_never_races_a_concurrent_open";
    let rounds = env_u64("SA_GC_RACES", 16);
    for round in 0..rounds {
        let name = ShmName::new("l19-gc-race");
        drop(FreeListAllocator::create(name.as_str(), 1 << 20).unwrap());
        let stall = cfg!(feature = "failpoints") && round % 2 == 0;
        let go = now_ns() + 150_000_000 + (round % 8) * 100_000;
        let mut c = spawn_interactive(
            entry,
            "opener",
            &[
                ("SA_NAME", name.as_str().to_owned()),
                ("SA_GO", go.to_string()),
                (
                    "SA_ATTACH_SLEEP_MS",
                    if stall { "30" } else { "0" }.to_owned(),
                ),
            ],
        );
        shared_allocator::segment::set_observer_mode(true);
        let o = FreeListAllocator::open(name.as_str());
        shared_allocator::segment::set_observer_mode(false);
        let o = o.unwrap();
        while now_ns() < go + if stall { 10_000_000 } else { 200_000 } {
            std::hint::spin_loop();
        }
        let removed = o.remove_if_unattached().unwrap();
        match read_line(&mut c, "opener").as_str() {
            "opened" => {
                assert!(!removed, "round {round}: removed while a process attached");
                assert!(exists(&name), "round {round}");
                writeln!(c.stdin.as_mut().unwrap(), "close").unwrap();
                assert_eq!(read_line(&mut c, "opener close"), "closed");
            }
            "notfound" => assert!(removed && !exists(&name), "round {round}"),
            other => panic!("opener said {other:?}"),
        }
        drop(c.stdin.take());
        wait_with_watchdog(&mut c, LIMIT, "opener exit");
    }
}

/// Red-team #3: `open_or_create` right after a creator died mid-initialisation
/// (younger than `STALE_GRACE`, nobody holding its init lock) waits the grace out
/// and replaces the object instead of failing with `Uninitialized`.
#[test]
fn open_or_create_right_after_a_crashed_creator_replaces_it() {
    if race_role() {
        return;
    }
    let entry = "open_or_create_right_after_a_crashed_creator_replaces_it";
    let name = ShmName::new("l19-fresh-stale");
    crashed_creator(entry, name.as_str());
    let (a, created) = FreeListAllocator::open_or_create(name.as_str(), 1 << 20)
        .expect("open_or_create replaces a crashed creator's object");
    assert!(created, "the crashed creator's object was replaced");
    let off = a.allocate(64).unwrap();
    a.write(off, b"x").unwrap();
    assert!(a.check().is_consistent(), "{:?}", a.check());
}
