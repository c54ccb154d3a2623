//! Coordination across real processes: events, the robust mutex, the condvar.
//!
//! Every child is this test binary re-executed with a role (see `common`), under a
//! watchdog; every segment has a unique name and is unlinked by a guard.
//!
//! - `event_ping_pong_no_lost_wakeups`: two processes bounce a counter through two
//!   events many thousand times; every wait has a generous timeout, so a lost
//!   wake-up shows as a timeout, not as a slow test.
//! - `event_notify_all_wakes_every_process`: three waiting processes, generations
//!   published with `notify_all`.
//! - `condvar_ping_pong_across_processes`: the same bouncing through a mutex and a
//!   condvar.
//! - `mutex_excludes_across_processes`: a two-word invariant under the lock.
//! - `mutex_holder_killed_*`: the holder is SIGKILLed while holding the lock; a
//!   process asleep in `lock()` and a later `try_lock` both get `OwnerDied`.
//! - `mutex_holder_killed_in_other_pid_namespace`: the holder runs under
//!   `unshare --pid --fork`; the next locker still learns `OwnerDied` (owners are
//!   registry tokens, alive while the kernel holds their slot's lock: no pids).
mod common;

use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{env_req, env_u64, finish_all, results, role, say, spawn_child, KillOnDrop, ShmName};
use shared_allocator::coord::{LockError, ShmCondvar, ShmEvent, ShmMutex, WaitOutcome};
use shared_allocator::prelude::*;

/// A wait that takes this long means a lost wake-up (nothing here is that slow).
const GENEROUS: Duration = Duration::from_secs(10);
const WATCHDOG: Duration = Duration::from_secs(120);

#[derive(ShmSafe)]
#[shm(sync)]
#[repr(C)]
struct PingPong {
    ping: ShmEvent,
    pong: ShmEvent,
    ball: AtomicU64,
    timeouts: AtomicU64,
}

fn open(name: &str) -> FreeListAllocator {
    FreeListAllocator::open(name).expect("child opens the segment")
}

/// Waits until `word` is at least `at_least`, asserting progress within GENEROUS.
fn await_value(ev: &ShmEvent, word: &AtomicU64, at_least: u64, who: &str) {
    if !ev.wait_timeout_until(GENEROUS, || word.load(Ordering::Acquire) >= at_least) {
        panic!(
            "{who}: no wake-up for {at_least} within {GENEROUS:?} (value {}): a lost wake-up",
            word.load(Ordering::Acquire)
        );
    }
}

#[test]
fn event_ping_pong_no_lost_wakeups() {
    let rounds = env_u64("SA_COORD_PINGPONG", 20_000);
    if role().as_deref() == Some("pong") {
        let a = open(&env_req("SA_SEG"));
        let pp = a.root::<PingPong>("pp").unwrap();
        for i in 0..rounds {
            // Odd values are the ping's, even ones the pong's.
            await_value(&pp.ping, &pp.ball, 2 * i + 1, "pong");
            pp.ball.store(2 * i + 2, Ordering::Release);
            pp.pong.notify_one();
        }
        say("pong done");
        return;
    }
    let name = ShmName::new("coord-pp");
    let a = FreeListAllocator::create(name.as_str(), 1 << 20).unwrap();
    let pp = a.root::<PingPong>("pp").unwrap();
    let child = spawn_child(
        "event_ping_pong_no_lost_wakeups",
        "pong",
        &[("SA_SEG", name.as_str().to_owned())],
    );
    let mut guard = KillOnDrop::new(child);
    let start = Instant::now();
    for i in 0..rounds {
        pp.ball.store(2 * i + 1, Ordering::Release);
        pp.ping.notify_one();
        await_value(&pp.pong, &pp.ball, 2 * i + 2, "ping");
    }
    let per = start.elapsed() / rounds as u32;
    let out = results(guard.take(), WATCHDOG, "pong");
    assert_eq!(out, ["pong done"]);
    eprintln!("{rounds} round trips, {per:?} each");
}

#[derive(ShmSafe)]
#[shm(sync)]
#[repr(C)]
struct Generations {
    changed: ShmEvent,
    generation: AtomicU64,
    seen: AtomicU64,
    seen_changed: ShmEvent,
}

#[test]
fn event_notify_all_wakes_every_process() {
    const WAITERS: u64 = 3;
    let gens = env_u64("SA_COORD_GENERATIONS", 300);
    if role().as_deref() == Some("gen-waiter") {
        let a = open(&env_req("SA_SEG"));
        let g = a.root::<Generations>("gen").unwrap();
        for k in 1..=gens {
            await_value(&g.changed, &g.generation, k, "gen-waiter");
            g.seen.fetch_add(1, Ordering::AcqRel);
            g.seen_changed.notify_all();
        }
        say("waiter done");
        return;
    }
    let name = ShmName::new("coord-gen");
    let a = FreeListAllocator::create(name.as_str(), 1 << 20).unwrap();
    let g = a.root::<Generations>("gen").unwrap();
    let kids: Vec<_> = (0..WAITERS)
        .map(|_| {
            spawn_child(
                "event_notify_all_wakes_every_process",
                "gen-waiter",
                &[("SA_SEG", name.as_str().to_owned())],
            )
        })
        .collect();
    for k in 1..=gens {
        g.generation.store(k, Ordering::Release);
        g.changed.notify_all();
        // Every waiter acknowledges generation k before k + 1 is published.
        await_value(&g.seen_changed, &g.seen, k * WAITERS, "publisher");
    }
    for out in finish_all(kids, WATCHDOG, "gen-waiter") {
        assert!(out.iter().any(|l| l == "@@ waiter done"), "{out:?}");
    }
}

#[derive(ShmSafe)]
#[shm(shared)]
#[repr(C)]
struct Shared {
    lock: ShmMutex<[u64; 2]>,
    changed: ShmCondvar,
}

#[test]
fn condvar_ping_pong_across_processes() {
    let rounds = env_u64("SA_COORD_CONDVAR", 5_000);
    let bounce = |s: &Shared, parity: u64, who: &str| {
        for i in 0..rounds {
            let want = 2 * i + parity;
            let g = s.lock.lock().expect("nobody died");
            let (mut g, outcome) = s
                .changed
                .wait_timeout_while(g, GENEROUS, |v| v[0] != want)
                .expect("nobody died");
            assert_eq!(
                outcome,
                WaitOutcome::Notified,
                "{who}: no wake-up for {want}: a lost wake-up"
            );
            g[0] += 1;
            g[1] += 1;
            drop(g);
            s.changed.notify_all();
        }
    };
    if role().as_deref() == Some("cv") {
        let a = open(&env_req("SA_SEG"));
        bounce(&a.root("shared").unwrap(), 1, "child");
        say("cv done");
        return;
    }
    let name = ShmName::new("coord-cv");
    let a = FreeListAllocator::create(name.as_str(), 1 << 20).unwrap();
    let s = a.root::<Shared>("shared").unwrap();
    let child = spawn_child(
        "condvar_ping_pong_across_processes",
        "cv",
        &[("SA_SEG", name.as_str().to_owned())],
    );
    let mut guard = KillOnDrop::new(child);
    bounce(&s, 0, "parent");
    assert_eq!(results(guard.take(), WATCHDOG, "cv child"), ["cv done"]);
    let g = s.lock.lock().unwrap();
    assert_eq!(*g, [2 * rounds, 2 * rounds]);
}

#[test]
fn mutex_excludes_across_processes() {
    const PROCS: u64 = 3;
    let iters = env_u64("SA_COORD_MUTEX_ITERS", 20_000);
    if role().as_deref() == Some("incr") {
        let a = open(&env_req("SA_SEG"));
        let s = a.root::<Shared>("shared").unwrap();
        for _ in 0..iters {
            let mut g = s.lock.lock().expect("nobody died");
            // Two separate, non-atomic steps: another holder would see them differ.
            let before = g[0];
            assert_eq!(before, g[1], "invariant broken: two holders at once");
            g[0] = before + 1;
            std::hint::black_box(&mut *g);
            g[1] = before + 1;
        }
        say("incr done");
        return;
    }
    let name = ShmName::new("coord-mx");
    let a = FreeListAllocator::create(name.as_str(), 1 << 20).unwrap();
    let s = a.root::<Shared>("shared").unwrap();
    let kids = (0..PROCS)
        .map(|_| {
            spawn_child(
                "mutex_excludes_across_processes",
                "incr",
                &[("SA_SEG", name.as_str().to_owned())],
            )
        })
        .collect();
    finish_all(kids, WATCHDOG, "incr");
    assert_eq!(*s.lock.lock().unwrap(), [PROCS * iters, PROCS * iters]);
}

#[derive(ShmSafe)]
#[shm(shared)]
#[repr(C)]
struct Robust {
    lock: ShmMutex<[u64; 2]>,
    holding: AtomicU64,
    holding_changed: ShmEvent,
}

/// Child role: lock, half-update, announce, and wait to be killed.
fn holder(a: &FreeListAllocator) -> ! {
    let r = a.root::<Robust>("robust").unwrap();
    let mut g = r.lock.lock().expect("first holder");
    g[0] = 1; // the update is half done: g[1] still 0 (in the holder's copy only)
    r.holding.store(1, Ordering::Release);
    r.holding_changed.notify_all();
    // Killed by the parent; exit on our own if that never comes.
    std::thread::sleep(WATCHDOG);
    std::process::exit(9);
}

/// Child role: wait until the holder holds, then block in `lock()` and report.
fn blocked_locker(a: &FreeListAllocator) {
    let r = a.root::<Robust>("robust").unwrap();
    await_value(&r.holding_changed, &r.holding, 1, "locker");
    let start = Instant::now();
    match r.lock.lock_robust() {
        Err(died) => {
            let mut g = died.into_inner();
            say(format!(
                "owner_died=1 value={}-{} waited_ms={}",
                g[0],
                g[1],
                start.elapsed().as_millis()
            ));
            g[1] = g[0]; // repair
            g.mark_consistent();
        }
        Ok(_) => say("owner_died=0"),
    };
}

fn wait_holding(r: &Robust) {
    await_value(&r.holding_changed, &r.holding, 1, "parent");
}

#[test]
fn mutex_holder_killed_waiter_gets_owner_died() {
    match role().as_deref() {
        Some("holder") => holder(&open(&env_req("SA_SEG"))),
        Some("locker") => return blocked_locker(&open(&env_req("SA_SEG"))),
        _ => {}
    }
    let name = ShmName::new("coord-od");
    let a = FreeListAllocator::create(name.as_str(), 1 << 20).unwrap();
    let r = a.root::<Robust>("robust").unwrap();
    let env = [("SA_SEG", name.as_str().to_owned())];
    let entry = "mutex_holder_killed_waiter_gets_owner_died";
    let mut holder = KillOnDrop::new(spawn_child(entry, "holder", &env));
    let locker = KillOnDrop::new(spawn_child(entry, "locker", &env)).take();
    wait_holding(&r);
    // Let the locker reach its futex sleep, then kill the holder mid-update.
    std::thread::sleep(Duration::from_millis(200));
    assert!(matches!(r.lock.try_lock(), Err(LockError::WouldBlock)));
    holder.child().kill().unwrap();
    holder.child().wait().unwrap(); // reaped: the holder is gone for good
    let out = results(locker, WATCHDOG, "locker");
    assert_eq!(out.len(), 1, "{out:?}");
    // The guard works on the holder's copy, stored back on unlock: a holder killed
    // before it unlocked leaves the data as it found it ([0, 0]), and the next
    // locker is still told (OwnerDied), since the holder may have acted on it.
    assert!(out[0].starts_with("owner_died=1 value=0-0"), "{out:?}");
    // Repaired and marked consistent by the locker: clean from now on.
    let g = r.lock.lock().expect("consistent again");
    assert_eq!(*g, [0, 0]);
    assert!(r.lock.is_consistent());
}

#[test]
fn mutex_holder_killed_try_lock_and_timeout_get_owner_died() {
    if role().as_deref() == Some("holder") {
        holder(&open(&env_req("SA_SEG")));
    }
    let name = ShmName::new("coord-od2");
    let a = FreeListAllocator::create(name.as_str(), 1 << 20).unwrap();
    let r = a.root::<Robust>("robust").unwrap();
    let env = [("SA_SEG", name.as_str().to_owned())];
    let mut holder = KillOnDrop::new(spawn_child(
        "mutex_holder_killed_try_lock_and_timeout_get_owner_died",
        "holder",
        &env,
    ));
    wait_holding(&r);
    assert!(matches!(
        r.lock.lock_timeout(Duration::from_millis(100)),
        Err(LockError::TimedOut)
    ));
    holder.child().kill().unwrap();
    holder.child().wait().unwrap();
    match r.lock.try_lock() {
        Err(LockError::OwnerDied) => {}
        other => panic!("expected OwnerDied, got {:?}", other.map(|g| *g)),
    };
    // `lock` released it again, still inconsistent: `lock_robust` hands the guard.
    let g = r
        .lock
        .lock_robust()
        .expect_err("still inconsistent")
        .into_inner();
    assert_eq!(*g, [0, 0], "the dead holder's copy was never stored back");
    drop(g); // not marked consistent: the next locker is told too
    match r.lock.lock_timeout(Duration::from_secs(5)) {
        Err(LockError::OwnerDied) => {}
        other => panic!("expected OwnerDied again, got {:?}", other.map(|g| *g)),
    };
    let mut g = r.lock.lock_or_repair(|_| {});
    assert_eq!(*g, [0, 0], "lock_or_repair's closure marked it consistent");
    g[0] = 1;
    g[1] = 1;
    g.mark_consistent();
    drop(g);
    assert_eq!(*r.lock.lock().expect("consistent"), [1, 1]);
}

/// The holder runs in a new pid namespace (as pid 1 there). The parent, in the
/// original namespace, must still learn that it died.
///
/// A pid-based owner identity fails this (it would ask `kill(1, 0)` about the
/// holder's namespace-local pid and find this namespace's init alive); the
/// registry token does not. Needs root for `unshare` (CI runs as root).
#[test]
fn mutex_holder_killed_in_other_pid_namespace() {
    if role().as_deref() == Some("holder") {
        holder(&open(&env_req("SA_SEG")));
    }
    let name = ShmName::new("coord-ns");
    let a = FreeListAllocator::create(name.as_str(), 1 << 20).unwrap();
    let r = a.root::<Robust>("robust").unwrap();
    let unshare = common::child_command(
        &["unshare", "--pid", "--fork", "--kill-child=SIGKILL"],
        "mutex_holder_killed_in_other_pid_namespace",
        "holder",
        &[("SA_SEG", name.as_str().into())],
    )
    .stdout(Stdio::null())
    .spawn()
    .expect("run unshare (util-linux) as root: this test must not be skipped");
    let mut unshare = KillOnDrop::new(unshare);
    if !r
        .holding_changed
        .wait_timeout_until(GENEROUS, || r.holding.load(Ordering::Acquire) == 1)
    {
        let status = unshare.child().try_wait().unwrap();
        panic!("the holder in the new pid namespace never locked (unshare status {status:?})");
    }
    // Kill the holder (pid 1 of its namespace) from here, through unshare's child.
    common::kill_children(unshare.child().id());
    unshare.child().wait().unwrap();
    match r.lock.lock_timeout(Duration::from_secs(5)) {
        Err(LockError::OwnerDied) => assert_eq!(
            *r.lock.lock_robust().expect_err("inconsistent").into_inner(),
            [0, 0]
        ),
        Err(LockError::TimedOut) => panic!(
            "the holder died in another pid namespace, but the lock still looks held \
             by a live owner (pid-based owner identity)"
        ),
        other => panic!("expected OwnerDied, got {:?}", other.map(|g| *g)),
    };
}

#[derive(ShmSafe)]
#[shm(sync)]
#[repr(C)]
struct Doomed {
    ev: ShmEvent,
    flag: AtomicU64,
}

/// Polls `cond` (the parent watching children arrive) for at most GENEROUS.
fn poll_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < GENEROUS, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The attacker's case for the waiter registration: two processes are SIGKILLed
/// while asleep in `wait_until`, so they never unregister. A live waiter must still
/// be woken by one `notify_one`, and the dead registrations must be forgotten by
/// the next notification: afterwards the event counts no waiter and a notification
/// touches nothing (no spare wake-up system calls for the rest of its life).
#[test]
fn event_waiter_killed_while_waiting_is_forgotten() {
    match role().as_deref() {
        Some("doomed") => {
            let a = open(&env_req("SA_SEG"));
            let d = a.root::<Doomed>("doomed").unwrap();
            // Never notified: the parent kills this process while it sleeps here.
            d.ev.wait_timeout_until(WATCHDOG, || d.flag.load(Ordering::Acquire) == 2);
            say("not killed");
            return;
        }
        Some(r @ ("survivor" | "survivor2")) => {
            let a = open(&env_req("SA_SEG"));
            let d = a.root::<Doomed>("doomed").unwrap();
            await_value(&d.ev, &d.flag, if r == "survivor" { 1 } else { 2 }, r);
            say("woken");
            return;
        }
        _ => {}
    }
    let name = ShmName::new("coord-doomed");
    let a = FreeListAllocator::create(name.as_str(), 1 << 20).unwrap();
    let d = a.root::<Doomed>("doomed").unwrap();
    let env = [("SA_SEG", name.as_str().to_owned())];
    let entry = "event_waiter_killed_while_waiting_is_forgotten";
    let mut doomed: Vec<KillOnDrop> = (0..2)
        .map(|_| KillOnDrop::new(spawn_child(entry, "doomed", &env)))
        .collect();
    poll_until("two registered waiters", || d.ev.waiters() == 2);
    // Let them reach the futex sleep (the counts below hold either way).
    std::thread::sleep(Duration::from_millis(100));
    for k in &mut doomed {
        k.child().kill().unwrap();
        k.child().wait().unwrap(); // reaped: gone for good, still registered
    }
    let survivor = KillOnDrop::new(spawn_child(entry, "survivor", &env)).take();
    poll_until("the survivor registered", || d.ev.waiters() == 3);
    std::thread::sleep(Duration::from_millis(100));
    d.flag.store(1, Ordering::Release);
    d.ev.notify_one(); // must reach the live waiter, not a dead one
    assert_eq!(results(survivor, WATCHDOG, "survivor"), ["woken"]);
    // The next notification finds nobody asleep and forgets the dead registrations.
    d.ev.notify_one();
    assert_eq!(d.ev.waiters(), 0, "dead waiters still registered");
    assert!(
        !d.ev.has_listeners(),
        "a notification still has to advance the word (and may call FUTEX_WAKE)"
    );
    // A full cycle with a live waiter leaves the event just as idle.
    let survivor = KillOnDrop::new(spawn_child(entry, "survivor2", &env)).take();
    poll_until("the second survivor registered", || d.ev.waiters() == 1);
    d.flag.store(2, Ordering::Release);
    d.ev.notify_one();
    assert_eq!(results(survivor, WATCHDOG, "survivor2"), ["woken"]);
    assert_eq!(d.ev.waiters(), 0);
}

/// The attacker's case for the notifier: it is SIGKILLed after moving the event's
/// word and before its `FUTEX_WAKE` (a fail point), while a process sleeps with no
/// timeout at all. The sleeper must still wake: sleeps are sliced, and each slice
/// re-checks the word.
#[cfg(feature = "failpoints")]
#[test]
fn a_notifier_killed_before_its_wake_strands_no_sleeper() {
    match role().as_deref() {
        Some("sleeper") => {
            let a = open(&env_req("SA_SEG"));
            let d = a.root::<Doomed>("doomed").unwrap();
            d.ev.wait_until(|| d.flag.load(Ordering::Acquire) == 1);
            say("woken");
            return;
        }
        Some("notifier") => {
            let a = open(&env_req("SA_SEG"));
            let d = a.root::<Doomed>("doomed").unwrap();
            fail::cfg_callback("event.notify.before_wake", || {
                nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL).unwrap();
            })
            .unwrap();
            d.flag.store(1, Ordering::Release);
            d.ev.notify_all();
            say("not killed");
            return;
        }
        _ => {}
    }
    let name = ShmName::new("coord-dead-notifier");
    let a = FreeListAllocator::create(name.as_str(), 1 << 20).unwrap();
    let d = a.root::<Doomed>("doomed").unwrap();
    let env = [("SA_SEG", name.as_str().to_owned())];
    let entry = "a_notifier_killed_before_its_wake_strands_no_sleeper";
    let sleeper = KillOnDrop::new(spawn_child(entry, "sleeper", &env)).take();
    poll_until("the sleeper registered", || d.ev.waiters() == 1);
    std::thread::sleep(Duration::from_millis(100));
    let mut notifier = KillOnDrop::new(spawn_child(entry, "notifier", &env));
    let status = common::wait_with_watchdog(notifier.child(), WATCHDOG, "notifier");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(9),
        "the notifier was not killed at its fail point: {status}"
    );
    let start = Instant::now();
    assert_eq!(results(sleeper, WATCHDOG, "sleeper"), ["woken"]);
    assert!(
        start.elapsed() < GENEROUS,
        "the sleeper woke only at its watchdog"
    );
}
