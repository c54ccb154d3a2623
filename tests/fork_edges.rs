//! The allocator's edges around processes: `fork` at the descriptor limit or
//! without `/proc`, a process that closes its own descriptors, `fork` from a
//! program whose other threads churn handles, scribbled intent records, a fork
//! child that finds the registry full, and what `exec` does to a slot.
//!
//! Every scenario runs in real processes: the test re-executes this binary in a
//! role (with a watchdog), and the role forks where it needs a child.
mod common;

use std::io::{BufReader, Write};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{env_req, expect_line, results, role, say, wait_with_watchdog, KillOnDrop, ShmName};
use nix::libc;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};
use shared_allocator::__layout::{HEADER_REGION, INTENTS, SLOTS};
use shared_allocator::prelude::*;
use shared_allocator::{AllocError, SegmentError};

const LIMIT: Duration = Duration::from_secs(60);

/// Runs this binary's test `entry` in role `role` with `SA_NAME = name`; returns
/// its `@@` lines (fails on a non-zero exit or past the watchdog).
fn run_role(entry: &str, role: &str, name: &ShmName) -> Vec<String> {
    let c = common::child_command(&[], entry, role, &[("SA_NAME", name.as_str().into())])
        .spawn()
        .expect("spawn child");
    results(c, LIMIT, role)
}

/// Waits for fork child `pid` (of this single-threaded role process) with a
/// watchdog: SIGKILLs it and fails after `limit`. Returns its exit code.
fn wait_child(pid: Pid, limit: Duration, what: &str) -> i32 {
    let start = Instant::now();
    loop {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)).unwrap() {
            WaitStatus::Exited(_, code) => return code,
            WaitStatus::Signaled(_, sig, _) => panic!("{what}: killed by {sig:?}"),
            _ => {}
        }
        if start.elapsed() > limit {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = waitpid(pid, None);
            panic!("watchdog: {what} still running after {limit:?}; killed it");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Forks this single-threaded role process: the child runs `child` and `_exit`s
/// with 0; the parent waits for it (watchdog) and checks that exit code.
fn fork_and_wait(what: &str, child: impl FnOnce()) {
    // SAFETY: every role that calls this is single-threaded (the test harness runs
    // with --test-threads=1 and these roles spawn no threads), so the child may
    // run arbitrary code after fork.
    match unsafe { fork() }.unwrap() {
        ForkResult::Child => {
            child();
            exit_child(0);
        }
        ForkResult::Parent { child } => assert_eq!(wait_child(child, LIMIT, what), 0),
    }
}

/// Ends a fork child at once (no unwinding, no destructors of the parent's state).
fn exit_child(code: i32) -> ! {
    let _ = std::io::stdout().flush();
    // SAFETY: _exit is always safe to call; it ends this process.
    unsafe { libc::_exit(code) }
}

/// What a fork child reports about its parent's slot and its own handle.
fn report_child(a: &FreeListAllocator, parent_slot: usize) {
    report_as("child", a, parent_slot);
}

/// [`report_child`] with another label (a grandchild's).
fn report_as(label: &str, a: &FreeListAllocator, parent_slot: usize) {
    let alloc = match a.allocate(64) {
        Ok(_) => "ok".to_owned(),
        Err(AllocError::Registry(e)) if matches!(*e, SegmentError::LockLost { .. }) => {
            "lost".to_owned()
        }
        Err(e) => format!("error:{e:?}"),
    };
    let procs = a.processes();
    let parent_alive = procs
        .iter()
        .find(|p| p.slot == parent_slot)
        .map(|p| p.alive);
    let own = procs.iter().find(|p| p.is_self).map(|p| p.slot);
    let reclaimed = a.reclaim().dead_slots;
    say(format!(
        "{label} alloc={alloc} parent_alive={parent_alive:?} own={own:?} reclaimed={reclaimed}"
    ));
}

/// The child's line is either "it got a lock of its own" or "its handle refuses".
fn check_child_line(lines: &[String], parent_slot: usize) {
    check_line_of("child ", lines, parent_slot);
}

fn check_line_of(label: &str, lines: &[String], parent_slot: usize) {
    let line = lines
        .iter()
        .find(|l| l.starts_with(label))
        .unwrap_or_else(|| panic!("no {label}line in {lines:?}"));
    assert!(
        line.contains("parent_alive=Some(true)"),
        "the child saw its live parent as dead: {line}"
    );
    assert!(
        line.ends_with("reclaimed=0"),
        "the child reclaimed a live slot: {line}"
    );
    if line.contains("alloc=ok") {
        assert!(
            !line.contains(&format!("own=Some({parent_slot})")) && !line.contains("own=None"),
            "the child works in its parent's slot: {line}"
        );
    } else {
        assert!(line.contains("alloc=lost"), "unexpected: {line}");
    }
}

fn parent_slot(lines: &[String]) -> usize {
    lines
        .iter()
        .find_map(|l| l.strip_prefix("parent slot="))
        .expect("parent slot line")
        .parse()
        .unwrap()
}

// ------------------------------------------------------------------ fork at the fd limit

/// Issue 16, 1: a fork child whose descriptor table is full cannot open a new
/// description; it must not go on with its parent's (both would see each other as
/// dead and reclaim each other's live slot).
#[test]
fn fork_at_the_descriptor_limit_never_shares_the_parents_lock() {
    const ENTRY: &str = "fork_at_the_descriptor_limit_never_shares_the_parents_lock";
    if role().as_deref() == Some("fd-full") {
        let a = FreeListAllocator::open(&env_req("SA_NAME")).unwrap();
        let keep = a.allocate(64).unwrap();
        let me = a.processes().into_iter().find(|p| p.is_self).unwrap();
        say(format!("parent slot={}", me.slot));
        // A small limit, then fill the table to it.
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit and setrlimit read and write a valid rlimit struct.
        unsafe {
            assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
            lim.rlim_cur = 64;
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
        }
        let mut filled = 0;
        // SAFETY: dup of stdin; the copies are closed when this process exits.
        while unsafe { libc::dup(0) } >= 0 {
            filled += 1;
        }
        assert!(filled > 0);
        fork_and_wait("fd-full child", || {
            report_child(&a, me.slot);
            // Its own fork, still at the limit: the grandchild gets a lock of its
            // own too (or refuses), and sees its live grandparent as alive.
            fork_and_wait("fd-full grandchild", || {
                report_as("grandchild", &a, me.slot)
            });
        });
        a.free(keep).unwrap();
        say("parent done");
        return;
    }
    if role().is_some() {
        return;
    }
    let name = ShmName::new("fe-fdfull");
    let a = FreeListAllocator::create(name.as_str(), 1 << 20).unwrap();
    let lines = run_role(ENTRY, "fd-full", &name);
    check_child_line(&lines, parent_slot(&lines));
    check_line_of("grandchild ", &lines, parent_slot(&lines));
    assert!(lines.iter().any(|l| l == "parent done"), "{lines:?}");
    a.reclaim();
    // The child's and the grandchild's own blocks (their code held them at exit).
    assert_eq!(a.stats().live_blocks, Some(2), "{lines:?}");
}

/// Issue 16, 1 and 8: without `/proc` at fork time the child cannot re-open its
/// lock description: its handles refuse with `LockLost`, and it never reads its
/// live parent as dead.
#[test]
fn fork_without_proc_refuses_with_lock_lost() {
    const ENTRY: &str = "fork_without_proc_refuses_with_lock_lost";
    if role().as_deref() == Some("no-proc") {
        let a = FreeListAllocator::open(&env_req("SA_NAME")).unwrap();
        let me = a.processes().into_iter().find(|p| p.is_self).unwrap();
        say(format!("parent slot={}", me.slot));
        hide_proc();
        fork_and_wait("no-proc child", || report_child(&a, me.slot));
        return;
    }
    if role().is_some() {
        return;
    }
    let name = ShmName::new("fe-noproc");
    let a = FreeListAllocator::create(name.as_str(), 1 << 20).unwrap();
    let lines = run_role(ENTRY, "no-proc", &name);
    check_child_line(&lines, parent_slot(&lines));
    let line = lines.iter().find(|l| l.starts_with("child ")).unwrap();
    assert!(line.contains("alloc=lost"), "{line}");
    drop(a);
}

/// This process loses `/proc`: a private mount namespace with an empty tmpfs
/// over it (we run as root in CI).
fn hide_proc() {
    // SAFETY: plain system calls with NUL-terminated literals.
    unsafe {
        assert_eq!(libc::unshare(libc::CLONE_NEWNS), 0, "unshare(CLONE_NEWNS)");
        assert_eq!(
            libc::mount(
                c"none".as_ptr(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null()
            ),
            0,
            "make / private"
        );
        assert_eq!(
            libc::mount(
                c"tmpfs".as_ptr(),
                c"/proc".as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                std::ptr::null()
            ),
            0,
            "mount tmpfs over /proc"
        );
    }
    assert!(std::fs::metadata("/proc/self/fd").is_err());
}

/// Issue 16, 8: `/proc` is required: without it, `create` and `open` fail with a
/// typed error (an OS error naming `/proc/self/fd`), never a panic.
#[test]
fn without_proc_create_is_a_typed_error() {
    const ENTRY: &str = "without_proc_create_is_a_typed_error";
    if role().as_deref() == Some("no-proc-create") {
        let name = env_req("SA_NAME");
        hide_proc();
        match FreeListAllocator::create(&name, 1 << 20) {
            Err(SegmentError::Os { op, .. }) if op.contains("/proc/self/fd") => {
                say(format!("create: {op}"))
            }
            other => panic!("expected an OS error naming /proc/self/fd, got {other:?}"),
        }
        let _ = shared_allocator::unlink(&name);
        return;
    }
    if role().is_some() {
        return;
    }
    let name = ShmName::new("fe-noproc-create");
    let lines = run_role(ENTRY, "no-proc-create", &name);
    assert!(lines.iter().any(|l| l.starts_with("create: ")), "{lines:?}");
}

// ------------------------------------------------------------------ closed descriptors

/// Issue 16, 1: a process that closes its own descriptors (`close_range`, as
/// daemons do) loses its lock. A peer then reclaims its slot and another handle
/// takes it; the process must stop using the slot (no block of the new holder's
/// cache handed out twice) and refuse multi-step operations with `LockLost`.
#[test]
fn a_handle_whose_descriptors_were_closed_stops() {
    const ENTRY: &str = "a_handle_whose_descriptors_were_closed_stops";
    if role().as_deref() == Some("closer") {
        let a = FreeListAllocator::open(&env_req("SA_NAME")).unwrap();
        // Fill this handle's cache of 64-byte blocks, then give all back to it.
        let v: Vec<_> = (0..16).map(|_| a.allocate(64).unwrap()).collect();
        for o in v {
            a.free(o).unwrap();
        }
        let me = a.processes().into_iter().find(|p| p.is_self).unwrap();
        // SAFETY: close_range only closes descriptors; the handle's are among them
        // (what this scenario is about). stdin/stdout/stderr stay open.
        let rc = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
        assert_eq!(rc, 0, "close_range");
        say(format!("closed slot={}", me.slot));
        // Wait for the parent's word: by then it reclaimed our slot and a new
        // handle holds it, with blocks in its cache.
        let mut s = String::new();
        std::io::stdin().read_line(&mut s).unwrap();
        let mut got = Vec::new();
        for _ in 0..32 {
            match a.allocate(64) {
                Ok(o) => got.push(o.get().to_string()),
                Err(e) => got.push(format!("{e:?}")),
            }
        }
        let large = match a.allocate(3 * 4096) {
            Err(AllocError::Registry(e)) if matches!(*e, SegmentError::LockLost { .. }) => {
                "lost".to_owned()
            }
            other => format!("{other:?}"),
        };
        say(format!("small {}", got.join(",")));
        say(format!("large {large}"));
        // The handle's descriptors are gone: never drop it (its File would close a
        // number this process no longer owns).
        std::mem::forget(a);
        return;
    }
    if role().is_some() {
        return;
    }
    let name = ShmName::new("fe-closer");
    let a = FreeListAllocator::create(name.as_str(), 1 << 20).unwrap();
    let mut c = KillOnDrop::new(
        common::child_command(&[], ENTRY, "closer", &[("SA_NAME", name.as_str().into())])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut out = BufReader::new(c.child().stdout.take().unwrap());
    let slot: usize = expect_line(&mut out, "closed slot=")["closed slot=".len()..]
        .parse()
        .unwrap();
    // The kernel drops the lock a moment after close: reclaim until we did.
    let start = Instant::now();
    while a.reclaim().dead_slots == 0 {
        assert!(start.elapsed() < LIMIT, "the closer's slot never read dead");
        std::thread::sleep(Duration::from_millis(2));
    }
    // New handles until one sits in the closer's old slot; fill its cache.
    let mut handles = Vec::new();
    let theirs;
    loop {
        let h = FreeListAllocator::open(name.as_str()).unwrap();
        let s = h.processes().into_iter().find(|p| p.is_self).unwrap().slot;
        if s == slot {
            let v: Vec<_> = (0..16).map(|_| h.allocate(64).unwrap()).collect();
            for o in &v[8..] {
                h.free(*o).unwrap();
            }
            theirs = v[..8].to_vec();
            handles.push(h);
            break;
        }
        handles.push(h);
        assert!(handles.len() < SLOTS, "never got slot {slot}");
    }
    // Mark our live blocks.
    for o in &theirs {
        a.write(*o, &[0x5A; 64]).unwrap();
    }
    let cached_before = a.stats().cached_bytes;
    assert!(cached_before > 0);
    writeln!(c.child().stdin.take().unwrap()).unwrap();
    let small = expect_line(&mut out, "small ");
    let large = expect_line(&mut out, "large ");
    wait_with_watchdog(c.child(), LIMIT, "closer");
    assert_eq!(large, "large lost", "{large}");
    // The closer never touched the new holder's cache (its gate is stamped with
    // the new holder's generation).
    assert_eq!(
        a.stats().cached_bytes,
        cached_before,
        "the closer took blocks out of the new holder's cache"
    );
    // Nothing the closer got is a block the new holder holds or caches.
    for o in &theirs {
        assert_eq!(a.read(*o, 64).unwrap(), [0x5A; 64], "a live block changed");
    }
    let got: Vec<u64> = small
        .trim_start_matches("small ")
        .split(',')
        .filter_map(|s| s.parse().ok())
        .collect();
    // The blocks the closer got must be distinct from each other and from
    // everything the holder allocates next (its cache first).
    let h = handles.last().unwrap();
    let next: Vec<u64> = (0..64).map(|_| h.allocate(64).unwrap().get()).collect();
    for g in &got {
        assert!(
            !theirs.iter().any(|t| t.get() == *g),
            "{g} handed out twice"
        );
        assert!(!next.contains(g), "{g} handed out twice (holder's cache)");
    }
    let mut sorted = got.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), got.len(), "the closer got a block twice");
}

// ------------------------------------------------------------------ fork vs churning threads

/// Issue 16, 5: `fork` while other threads open, use and drop handles (they take
/// the process-local tables' locks all the time). Every child opens and drops a
/// handle and exits; none may hang on a lock its parent's threads held at the fork.
#[test]
fn forks_against_threads_churning_handles_never_hang() {
    const ENTRY: &str = "forks_against_threads_churning_handles_never_hang";
    if role().as_deref() == Some("churn") {
        let name = env_req("SA_NAME");
        let forks = common::env_u64("SA_FORKS", 300);
        let stop = Arc::new(AtomicBool::new(false));
        let ops = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..3)
            .map(|_| {
                let (stop, ops, name) = (stop.clone(), ops.clone(), name.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let h = FreeListAllocator::open(&name).unwrap();
                        let o = h.allocate(64).unwrap();
                        h.free(o).unwrap();
                        drop(h);
                        ops.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        let a = FreeListAllocator::open(&name).unwrap();
        let mut done = 0;
        for _ in 0..forks {
            // SAFETY: the child only opens and drops a handle, allocates through
            // the inherited one, and _exits: the allocator's process-local state
            // is what this test checks; std's is not touched beyond that.
            match unsafe { fork() }.unwrap() {
                ForkResult::Child => {
                    let h = FreeListAllocator::open(&name).unwrap();
                    let o = a.allocate(64).unwrap();
                    a.free(o).unwrap();
                    drop(h);
                    exit_child(0);
                }
                ForkResult::Parent { child } => {
                    assert_eq!(wait_child(child, Duration::from_secs(20), "fork child"), 0);
                    done += 1;
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            t.join().unwrap();
        }
        say(format!(
            "forks={done} churn_ops={}",
            ops.load(Ordering::Relaxed)
        ));
        return;
    }
    if role().is_some() {
        return;
    }
    let name = ShmName::new("fe-churn");
    let a = FreeListAllocator::create(name.as_str(), 4 << 20).unwrap();
    let lines = run_role(ENTRY, "churn", &name);
    assert!(lines.iter().any(|l| l.starts_with("forks=")), "{lines:?}");
    a.reclaim();
    assert_eq!(a.stats().live_blocks, Some(0));
}

// ------------------------------------------------------------------ scribbled intents

/// The registry words of slot `slot` in a separate mapping of segment `name` (a
/// scribbler's view: the allocator does not know about it).
struct Scribbler {
    map: memmap2::MmapRaw,
}

impl Scribbler {
    fn new(name: &ShmName) -> Scribbler {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(common::shm_path(name.as_str()))
            .unwrap();
        Scribbler {
            map: memmap2::MmapRaw::map_raw(&f).unwrap(),
        }
    }

    fn word(&self, off: u64) -> &AtomicU64 {
        assert!(off % 8 == 0 && off + 8 <= self.map.len() as u64);
        // SAFETY: 8-aligned, inside the mapping (checked), only accessed atomically
        // here; the mapping lives as long as `self`.
        unsafe { &*(self.map.as_mut_ptr().add(off as usize) as *const AtomicU64) }
    }

    /// Intent record `k` of registry slot `slot` (descriptor word).
    fn intent(&self, slot: usize, k: usize) -> &AtomicU64 {
        self.word(HEADER_REGION + (slot as u64 * 32 + 8 + 2 * k as u64) * 8)
    }
}

/// Issue 16, 6: intent records that no thread of this process claimed (written by a
/// scribbler) cost nothing: the next multi-step operation overwrites one at once
/// and succeeds, every time (it used to spin ~11 ms and fail with `Corrupted`).
#[test]
fn scribbled_intent_records_are_overwritten_at_once() {
    let name = ShmName::new("fe-intents");
    let a = FreeListAllocator::create(name.as_str(), 4 << 20).unwrap();
    let slot = a.processes().into_iter().find(|p| p.is_self).unwrap().slot;
    let s = Scribbler::new(&name);
    let done = Arc::new(AtomicBool::new(false));
    let d = done.clone();
    let watchdog = std::thread::spawn(move || {
        let start = Instant::now();
        while !d.load(Ordering::Relaxed) {
            assert!(
                start.elapsed() < LIMIT,
                "watchdog: operations under scribbled intents did not return"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    for round in 0..200u64 {
        for k in 0..INTENTS {
            // Valid-looking records (bit 63) and placeholders alike.
            let v = if k % 2 == 0 {
                1
            } else {
                (1 << 63) | (round << 8) | k as u64
            };
            s.intent(slot, k).store(v, Ordering::Relaxed);
        }
        // A large block takes an intent record.
        let o = a
            .allocate(2 * 4096)
            .unwrap_or_else(|e| panic!("round {round}: {e:?}"));
        a.free(o).unwrap();
    }
    done.store(true, Ordering::Relaxed);
    watchdog.join().unwrap();
    // Our own records are clean again after each operation; the pass rolled back
    // nothing of ours.
    for k in 0..INTENTS {
        s.intent(slot, k).store(0, Ordering::Relaxed);
    }
    a.reclaim();
    assert_eq!(a.stats().live_blocks, Some(0));
}

// ------------------------------------------------------------------ registry full in a fork child

/// Issue 16, 7: a fork child that must re-join a full registry gets
/// `AllocError::Registry(RegistryFull)`, not `Corrupted`.
#[test]
fn a_fork_child_finding_the_registry_full_gets_registry_full() {
    const ENTRY: &str = "a_fork_child_finding_the_registry_full_gets_registry_full";
    if role().as_deref() == Some("full") {
        let name = env_req("SA_NAME");
        let mut hs = Vec::new();
        loop {
            match FreeListAllocator::open(&name) {
                Ok(h) => hs.push(h),
                Err(SegmentError::RegistryFull { slots }) => {
                    assert_eq!(slots, SLOTS);
                    break;
                }
                Err(e) => panic!("open: {e:?}"),
            }
        }
        fork_and_wait("full child", || {
            say(format!("child {:?}", hs[0].allocate(64)))
        });
        return;
    }
    if role().is_some() {
        return;
    }
    let name = ShmName::new("fe-full");
    drop(FreeListAllocator::create(name.as_str(), 1 << 20).unwrap());
    let lines = run_role(ENTRY, "full", &name);
    let line = lines.iter().find(|l| l.starts_with("child ")).unwrap();
    assert!(
        line.contains("Registry(RegistryFull"),
        "expected RegistryFull: {line}"
    );
}

// ------------------------------------------------------------------ exec

/// The slots of `name` and whether each is alive, as a fresh handle sees them.
fn slot_alive(a: &FreeListAllocator, slot: usize) -> Option<bool> {
    a.processes()
        .into_iter()
        .find(|p| p.slot == slot)
        .map(|p| p.alive)
}

/// Issue 16, 8: a handle's descriptors are close-on-exec, so `exec` ends the slot
/// like death (its reclaimer runs); a program that clears `FD_CLOEXEC` on them and
/// execs keeps the slot alive for the new image's lifetime.
#[test]
fn exec_releases_the_slot_unless_cloexec_was_cleared() {
    const ENTRY: &str = "exec_releases_the_slot_unless_cloexec_was_cleared";
    if let Some(r) = role() {
        if r != "exec" && r != "exec-keep" {
            return;
        }
        let name = env_req("SA_NAME");
        let a = FreeListAllocator::open(&name).unwrap();
        let _ = a.allocate(64).unwrap();
        let me = a.processes().into_iter().find(|p| p.is_self).unwrap();
        if r == "exec-keep" {
            // Every descriptor naming the segment object loses FD_CLOEXEC.
            let target = common::shm_path(&name);
            for e in std::fs::read_dir("/proc/self/fd").unwrap() {
                let e = e.unwrap();
                let Ok(fd) = e.file_name().to_string_lossy().parse::<i32>() else {
                    continue;
                };
                let Ok(link) = std::fs::read_link(e.path()) else {
                    continue;
                };
                if link == target {
                    // SAFETY: fcntl(F_SETFD) on a descriptor of this process.
                    unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
                }
            }
        }
        say(format!("slot={}", me.slot));
        use std::os::unix::process::CommandExt;
        let err = std::process::Command::new("sleep").arg("30").exec();
        panic!("exec: {err}");
    }
    for (role, expect_alive) in [("exec", false), ("exec-keep", true)] {
        let name = ShmName::new("fe-exec");
        let a = FreeListAllocator::create(name.as_str(), 1 << 20).unwrap();
        let mut c: Child =
            common::child_command(&[], ENTRY, role, &[("SA_NAME", name.as_str().into())])
                .spawn()
                .unwrap();
        let mut out = BufReader::new(c.stdout.take().unwrap());
        let slot: usize = expect_line(&mut out, "slot=")[5..].parse().unwrap();
        let mut c = KillOnDrop::new(c);
        // The exec'd `sleep` runs for 30 s; look for up to 10 s.
        let start = Instant::now();
        let mut alive = slot_alive(&a, slot);
        while alive == Some(true) && !expect_alive && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(5));
            alive = slot_alive(&a, slot);
        }
        if expect_alive {
            std::thread::sleep(Duration::from_millis(300));
            alive = slot_alive(&a, slot);
        }
        assert!(
            c.child().try_wait().unwrap().is_none(),
            "{role}: the exec'd program ended early"
        );
        assert_eq!(alive, Some(expect_alive), "{role}: slot {slot}");
        if !expect_alive {
            assert_eq!(a.reclaim().dead_slots, 1, "{role}");
        }
        // Kill the exec'd program: now the slot is dead either way.
        let _ = c.child().kill();
        let _ = c.child().wait();
        let start = Instant::now();
        while a.reclaim().dead_slots == 0 && slot_alive(&a, slot).is_some() {
            assert!(start.elapsed() < LIMIT, "{role}: slot never reclaimed");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(a.stats().live_blocks, Some(1), "{role}: the child's block");
    }
}

// ------------------------------------------------------------------ intents exhausted

/// Issue 16, 7: more threads of one handle in multi-step operations than it has
/// intent records: the extra one gets `AllocError::Registry(IntentsBusy)` after a
/// short bounded wait (never `Corrupted`), and its refused call leaks nothing.
#[cfg(feature = "failpoints")]
#[test]
fn more_threads_than_intent_records_get_intents_busy() {
    const ENTRY: &str = "more_threads_than_intent_records_get_intents_busy";
    if role().as_deref() == Some("busy") {
        let a = Arc::new(FreeListAllocator::open(&env_req("SA_NAME")).unwrap());
        let parked = Arc::new(AtomicU64::new(0));
        let release = Arc::new(AtomicBool::new(false));
        {
            let (parked, release) = (parked.clone(), release.clone());
            fail::cfg_callback("fl.large.intent", move || {
                parked.fetch_add(1, Ordering::SeqCst);
                let start = Instant::now();
                while !release.load(Ordering::SeqCst) {
                    assert!(start.elapsed() < LIMIT, "never released");
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
            .unwrap();
        }
        let holders: Vec<_> = (0..INTENTS)
            .map(|_| {
                let a = a.clone();
                std::thread::spawn(move || a.allocate(2 * 4096).unwrap())
            })
            .collect();
        let start = Instant::now();
        while parked.load(Ordering::SeqCst) < INTENTS as u64 {
            assert!(start.elapsed() < LIMIT, "holders never parked");
            std::thread::sleep(Duration::from_millis(1));
        }
        let r = a.allocate(2 * 4096);
        say(format!("extra {r:?}"));
        release.store(true, Ordering::SeqCst);
        let blocks: Vec<_> = holders.into_iter().map(|h| h.join().unwrap()).collect();
        fail::remove("fl.large.intent");
        // The extra call's page run went back: everything frees, and the whole
        // capacity can be had again.
        for b in blocks {
            a.free(b).unwrap();
        }
        a.reclaim();
        let s = a.stats();
        say(format!(
            "after live={:?} free={} cap={}",
            s.live_blocks, s.free_bytes, s.capacity
        ));
        return;
    }
    if role().is_some() {
        return;
    }
    let name = ShmName::new("fe-busy");
    let a = FreeListAllocator::create(name.as_str(), 1 << 20).unwrap();
    let lines = run_role(ENTRY, "busy", &name);
    let extra = lines.iter().find(|l| l.starts_with("extra ")).unwrap();
    assert!(
        extra.contains("Registry(IntentsBusy"),
        "expected IntentsBusy: {extra}"
    );
    let after = lines.iter().find(|l| l.starts_with("after ")).unwrap();
    let s = a.stats();
    assert_eq!(s.live_blocks, Some(0), "{after}");
    assert_eq!(s.free_bytes, s.capacity, "{after}");
}

// ------------------------------------------------------------------ a stalled large free

/// Issue 16, 2: a `free` of a large block stalls right after its head CAS while a
/// repair pass runs and the head page is reused 128 times (interior pages used to
/// carry 8 bits of the head's generation). When the free goes on, it must not free
/// the interior pages of the block that now lives there.
#[cfg(feature = "failpoints")]
#[test]
fn a_stalled_large_free_never_frees_a_newer_blocks_pages() {
    const ENTRY: &str = "a_stalled_large_free_never_frees_a_newer_blocks_pages";
    const SIZE: usize = 3 * 4096;
    if role().as_deref() == Some("stalled-large-free") {
        let a = FreeListAllocator::open(&env_req("SA_NAME")).unwrap();
        let x = Offset::new(env_req("SA_OFF").parse().unwrap());
        fail::cfg_callback("fl.large_free.head", || {
            say("paused");
            let mut s = String::new();
            let _ = std::io::stdin().read_line(&mut s);
        })
        .unwrap();
        let r = a.free(x);
        say(format!("freed {r:?}"));
        return;
    }
    if role().is_some() {
        return;
    }
    let name = ShmName::new("fe-aba");
    let a = FreeListAllocator::create(name.as_str(), 1 << 20).unwrap();
    let x = a.allocate(SIZE).unwrap();
    let mut c = KillOnDrop::new(
        common::child_command(
            &[],
            ENTRY,
            "stalled-large-free",
            &[
                ("SA_NAME", name.as_str().into()),
                ("SA_OFF", x.get().to_string()),
            ],
        )
        .stdin(Stdio::piped())
        .spawn()
        .unwrap(),
    );
    let mut out = BufReader::new(c.child().stdout.take().unwrap());
    expect_line(&mut out, "paused");
    // A repair while the free stalls, then reuse: keep the 128th block that lands
    // on the stalled block's head page (its generation's low 8 bits match).
    a.reclaim();
    let mut landed = 0;
    let mut kept = None;
    for _ in 0..2000 {
        let b = a.allocate(SIZE).unwrap();
        if b == x {
            landed += 1;
            if landed == 128 {
                kept = Some(b);
                break;
            }
        }
        a.free(b).unwrap();
    }
    let kept = kept.unwrap_or_else(|| a.allocate(SIZE).unwrap());
    a.write(kept, &[0xB7; SIZE]).unwrap();
    writeln!(c.child().stdin.take().unwrap()).unwrap();
    let freed = expect_line(&mut out, "freed ");
    wait_with_watchdog(c.child(), LIMIT, "stalled large free");
    assert_eq!(freed, "freed Ok(())");
    // Fill the rest: nothing may land on the kept block, whose bytes stay.
    let mut others = Vec::new();
    while let Ok(o) = a.allocate(SIZE) {
        a.write(o, &[0xC3; SIZE]).unwrap();
        others.push(o);
    }
    for o in &others {
        assert!(
            o.get() + SIZE as u64 <= kept.get() || kept.get() + SIZE as u64 <= o.get(),
            "block {} overlaps the live block {} (landed {landed} times on the head)",
            o.get(),
            kept.get()
        );
    }
    assert_eq!(
        a.read(kept, SIZE).unwrap(),
        vec![0xB7; SIZE],
        "the live block's pages were handed out again"
    );
    for o in others {
        a.free(o).unwrap();
    }
    a.free(kept).unwrap();
    a.reclaim();
    let s = a.stats();
    assert_eq!((s.live_blocks, s.free_bytes), (Some(0), s.capacity));
}

// ------------------------------------------------------------------ the per-process handle limit

/// Issue 16, 1: past `MAX_HANDLES` handles in one process (over all segments),
/// `open` says so (`HandleLimit`) instead of silently leaving the handle out of
/// the fork table; a dropped handle's entry is reused.
#[test]
fn the_per_process_handle_limit_is_a_typed_error() {
    const ENTRY: &str = "the_per_process_handle_limit_is_a_typed_error";
    use shared_allocator::process::MAX_HANDLES;
    if role().as_deref() == Some("many-handles") {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit and setrlimit read and write a valid rlimit struct.
        unsafe {
            assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
            lim.rlim_cur = lim.rlim_max.min(8192);
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
        }
        let names: Vec<ShmName> = (0..MAX_HANDLES / SLOTS + 1)
            .map(|_| ShmName::new("fe-many"))
            .collect();
        let mut hs = Vec::new();
        for n in &names {
            hs.push(FreeListAllocator::create(n.as_str(), 1 << 16).unwrap());
        }
        let mut refused = None;
        'outer: for n in names.iter().cycle().take(MAX_HANDLES * 2) {
            match FreeListAllocator::open(n.as_str()) {
                Ok(h) => hs.push(h),
                Err(SegmentError::RegistryFull { .. }) => continue,
                Err(e) => {
                    refused = Some(e);
                    break 'outer;
                }
            }
        }
        say(format!("held={} refused={refused:?}", hs.len()));
        hs.pop();
        let again = FreeListAllocator::open(names[0].as_str()).map(|_| ());
        say(format!("after drop {again:?}"));
        return;
    }
    if role().is_some() {
        return;
    }
    let name = ShmName::new("fe-many-parent");
    let lines = run_role(ENTRY, "many-handles", &name);
    assert!(
        lines.contains(&format!(
            "held={MAX_HANDLES} refused=Some(HandleLimit {{ limit: {MAX_HANDLES} }})"
        )),
        "{lines:?}"
    );
    assert!(lines.contains(&"after drop Ok(())".to_owned()), "{lines:?}");
}
