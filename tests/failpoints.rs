//! Kills a process at every fail point of the allocator machinery, many times over,
//! while a survivor process keeps working, and checks that the reclaimer gets back
//! everything except what the dead process's own code held.
//!
//! Needs the `failpoints` feature:
//! `cargo test --release --features failpoints --test failpoints -- --nocapture`.
//!
//! For each named fail point (every `fail_point!` in `src/`, checked by
//! [`every_fail_point_is_listed`]) and each kill, the parent creates a fresh segment
//! and starts two re-executions of this binary:
//!
//! - a **survivor** that allocates, writes a tag pattern over each block, verifies it
//!   before freeing, and runs repair passes, until the parent raises a stop word. Any
//!   error other than out-of-memory, any damaged pattern, is a failure; it must exit
//!   on its own once stopped (watchdog: it never blocks);
//! - a **victim** that installs a callback on the fail point which SIGKILLs the
//!   victim when the point's hit count reaches K (the count lives in a shared
//!   anonymous mapping, so the victim's fork children count too; a fork child that
//!   reaches K kills the victim and then itself), then runs a workload that makes
//!   every point fire: small and large blocks of random sizes, `grow_in_place`, a
//!   second handle opened and dropped, explicit `reclaim`, forked children that use
//!   the inherited handle (re-joining the registry) and exit or die without leaving,
//!   some of them killed with an operation in flight (orphan intents).
//!
//! The victim reports every block its code holds on stdout, one `write(2)` per line
//! (readable after the SIGKILL): `@A size` before `allocate`, `@+ off size tag` after
//! it returned, `@- off` right before `free` and `@f off` after it, `@G off new` before
//! `grow_in_place` and `@= off new` / `@g off` after. So the last open line names the
//! operation in flight at death.
//!
//! After the victim (and any fork child of it) died, the survivor runs a repair
//! pass while it keeps working, then stops; the parent runs one more (`reclaim()`)
//! and checks:
//!
//! - `stats()` equals exactly the blocks the victim's code held, plus the block of
//!   an allocation in flight if it was taken (the only *in flight* allowance);
//! - the held blocks do not overlap and still hold their tag pattern;
//! - each held block frees successfully; only the block whose free was in flight
//!   may already be free (its free then fails: `DoubleFree`, or `NotBlockStart`
//!   once its page was released and reused);
//! - a sweep that frees every remaining block start finds nothing but that
//!   in-flight block; afterwards no block is live, `free_bytes == capacity`, and one
//!   allocation of the whole capacity succeeds (slab: every slot can be allocated).
//!
//! Anything else still held is *leaked by the machinery*; the table printed at the
//! end shows it per point (the target is 0 everywhere) and the test fails unless it
//! is 0 everywhere and every point was reached.
//!
//! Beside that table: [`double_crash_matrix`] (a dead operation, then its reclaimer
//! killed at each step of the repair, then a replay under live blocks),
//! [`reclaimer_killed_mid_repair_does_not_free_a_live_block`] and
//! [`repair_never_frees_pages_of_a_block_being_grown`] (fail points used to pause,
//! not kill), each of which found a bug in the repair pass.
//!
//! Knobs: `SA_FP_KILLS` kills per point (default 20), `SA_FP_SEED` base seed,
//! `SA_FP_POINTS` a comma-separated subset of points, `SA_FP_GROWS` grows in the
//! grow race (default 3000).
mod common;

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::panic::AssertUnwindSafe;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{
    check_pattern, env_req, env_u64, fill_pattern, read_stdout, role, spawn_child, wait_or_kill,
    KillOnDrop, Rng, ShmName,
};
use nix::errno::Errno;
use nix::sys::mman::{mmap_anonymous, MapFlags, ProtFlags};
use nix::sys::signal::{kill, raise, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, getpid, ForkResult};
use shared_allocator::alloc::{Inspect, SIZE_CLASSES};
use shared_allocator::prelude::*;
use shared_allocator::{AllocError, FreeError, Stats};

const ENTRY: &str = "failpoint_kills";
const PAGE: u64 = 4096;

/// Free-list capacity of each run's segment.
const FL_CAPACITY: u64 = 2 << 20;
const SLAB_SLOT: u64 = 64;
const SLAB_SLOTS: u64 = 4096;

/// Free-list victim iterations (a victim that is not killed stops after these).
const FL_ITERS: u32 = 300;
const SLAB_ITERS: u32 = 3000;

/// The points a free-list victim is killed at.
const FL_POINTS: &[&str] = &[
    "fl.alloc.taken",
    "fl.commit.done",
    "fl.commit.published",
    "fl.cache.flush",
    "fl.cache.flush.given",
    "fl.cache.pop",
    "fl.cache.push",
    "fl.cache.refill",
    "fl.cache.refill.listed",
    "fl.cache.refill.recorded",
    "fl.free.before_clear",
    "fl.free.cleared",
    "fl.grow.intent",
    "fl.grow.interiors",
    "fl.large.head",
    "fl.large.intent",
    "fl.large.interior",
    "fl.large_free.head",
    "fl.new_span.claimed",
    "fl.new_span.intent",
    "fl.new_span.listed",
    "fl.new_span.word",
    "fl.release.closed_word",
    "fl.release.freed",
    "fl.release.intent",
    "fl.repair.intent",
    "fl.repair.sweep",
    "registry.fork_rejoin",
    "registry.join.before_live",
    "registry.join.locked",
    "registry.leave.before_clear",
    "registry.leave.before_unlock",
    "registry.reclaim.before_free",
    "registry.reclaim.locked",
    "segment.open.before_map",
];
/// Where a sacrificial fork child of the victim dies (once, at the first hit), so
/// that the victim's repair passes have orphan intents of every kind to finish.
/// Each leaves nothing the child's code could still hold: a claim in flight is
/// rolled back by the repair, a free in flight has happened.
const SACRIFICE: &[&str] = &[
    "fl.large.head",
    "fl.large.interior",
    "fl.new_span.claimed",
    "fl.new_span.word",
    "fl.new_span.listed",
    "fl.release.intent",
    "fl.release.closed_word",
    "fl.release.freed",
    "fl.grow.intent",
    "fl.grow.interiors",
    "fl.free.cleared",
    "fl.large_free.head",
];
/// The points a slab victim is killed at.
const SLAB_POINTS: &[&str] = &[
    "slab.alloc.claimed",
    "slab.cache.flush",
    "slab.cache.flush.given",
    "slab.cache.pop",
    "slab.cache.push",
    "slab.cache.refill",
    "slab.cache.refill.listed",
    "slab.cache.refill.recorded",
    "slab.free.cleared",
];

/// Control words in a block the parent allocates: stop flag, survivor ready, victim
/// dead (the survivor then runs a repair at once, while it keeps working), and the
/// survivor's acknowledgement of that repair.
const W_STOP: usize = 0;
const W_READY: usize = 1;
const W_DEAD: usize = 2;
const W_ACK: usize = 3;

fn ctrl(seg: &shared_allocator::segment::Segment, off: u64) -> &[AtomicU64; 8] {
    let p = shared_allocator::__layout::ptr_at(seg, off, 64, 8).expect("control block in bounds");
    // SAFETY:
    // - `ptr_at` checked that 64 bytes at `off` lie inside the live mapping, 8-aligned;
    // - AtomicU64 is valid for every bit pattern, and every process of this test
    //   accesses these words only atomically;
    // - the reference borrows `seg`, so the mapping outlives it.
    unsafe { &*(p.as_ptr() as *const [AtomicU64; 8]) }
}

// ====================================================================== reporting

/// Writes one line to stdout with a single `write(2)`: nothing buffered is lost when
/// the process is killed, and lines of a fork child and its parent never interleave.
fn emit(line: &str) {
    let mut buf = Vec::with_capacity(line.len() + 1);
    buf.extend_from_slice(line.as_bytes());
    buf.push(b'\n');
    let mut rest = &buf[..];
    while !rest.is_empty() {
        match nix::unistd::write(std::io::stdout(), rest) {
            Ok(n) => rest = &rest[n..],
            Err(Errno::EINTR) => {}
            Err(e) => panic!("write to stdout: {e}"),
        }
    }
}

/// A hit counter shared by the victim and its fork children (zero-filled).
fn shared_counter() -> &'static AtomicU64 {
    // SAFETY: an anonymous shared mapping of one page at an address the kernel
    // chooses; nothing else is mapped or unmapped by it.
    let p = unsafe {
        mmap_anonymous(
            None,
            NonZeroUsize::new(4096).unwrap(),
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            MapFlags::MAP_SHARED,
        )
    }
    .expect("mmap shared counter");
    // SAFETY:
    // - the mapping is page-aligned, zero-filled, readable and writable, and never
    //   unmapped (it lives until the process exits), so it is a valid AtomicU64;
    // - it is only accessed atomically.
    unsafe { &*(p.as_ptr() as *const AtomicU64) }
}

// ====================================================================== the test

#[test]
fn failpoint_kills() {
    match role().as_deref() {
        Some("fp-victim") => return victim_main(),
        Some("fp-survivor") => return survivor_main(),
        Some(r) => panic!("unknown role {r}"),
        None => {}
    }
    let kills = env_u64("SA_FP_KILLS", 20) as u32;
    let base_seed = env_u64("SA_FP_SEED", 0x5A_F0_0D);
    let only: Option<Vec<String>> = std::env::var("SA_FP_POINTS")
        .ok()
        .map(|s| s.split(',').map(|p| p.trim().to_owned()).collect());
    let selected = |p: &&&str| only.as_ref().is_none_or(|o| o.iter().any(|x| x == **p));
    let started = Instant::now();
    let mut rows = Vec::new();
    for (i, point) in FL_POINTS.iter().filter(selected).enumerate() {
        rows.push(kill_at::<FreeListAllocator>(
            point,
            kills,
            base_seed ^ (i as u64) << 32,
        ));
    }
    for (i, point) in SLAB_POINTS.iter().filter(selected).enumerate() {
        rows.push(kill_at::<SlabAllocator>(
            point,
            kills,
            base_seed ^ (100 + i as u64) << 32,
        ));
    }
    print_table(&rows, started.elapsed());
    let mut failed = Vec::new();
    for r in &rows {
        if r.hits_calibrated == 0 {
            failed.push(format!("{}: never reached by the workload", r.point));
        }
        if r.hits_calibrated > 0 && r.kills < kills.div_ceil(2) {
            failed.push(format!(
                "{}: only {} kills of {kills} (the workload rarely reaches it)",
                r.point, r.kills
            ));
        }
        if r.leaked != 0 {
            failed.push(format!(
                "{}: {} bytes leaked by the machinery",
                r.point, r.leaked
            ));
        }
        for p in &r.problems {
            failed.push(format!("{}: {p}", r.point));
        }
    }
    assert!(
        failed.is_empty(),
        "fail-point suite found problems:\n{}",
        failed.join("\n")
    );
}

/// Every `fail_point!` in `src/` is killed at by this suite.
#[test]
fn every_fail_point_is_listed() {
    if role().is_some() {
        return;
    }
    let mut found = Vec::new();
    let mut dirs = vec![std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../src")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
                continue;
            }
            let text = std::fs::read_to_string(&p).unwrap();
            for part in text.split("fail_point!(\"").skip(1) {
                found.push(part.split('"').next().unwrap().to_owned());
            }
        }
    }
    found.sort();
    found.dedup();
    // Killed at by their own scenarios (not free-list or slab workloads):
    // `a_resetter_killed_while_waiting_blocks_nobody`,
    // `a_thief_killed_after_claiming_blocks_nobody` and
    // `a_reclaimer_killed_while_emptying_a_dead_cache` in tests/registry.rs, and
    // `a_notifier_killed_before_its_wake_strands_no_sleeper` in tests/coord.rs;
    // stalled at (not killed) by the open-against-remove races in tests/lifecycle.rs.
    const ELSEWHERE: &[&str] = &[
        "lifecycle.attach.before_join",
        "bump.reset.published",
        "event.notify.before_wake",
        "cache.steal.claimed",
        "cache.dead.claimed",
        // tests/collections_map.rs (torture workers killed at each of them) and
        // tests/collections_arc.rs (holders killed at each `arc.` point).
        "arc.drop.cleared",
        "arc.reap.cleared",
        "arc.redeem.claimed",
        "coll.release.cleared",
        "map.insert.committed",
        "map.insert.intent",
        "map.insert.written",
        "map.remove.intent",
        "map.remove.tombstoned",
        "map.repair.table",
        "map.resize.allocated",
        "map.resize.built",
        "map.resize.committed",
        "map.update.intent",
        "map.update.written",
        // tests/pipeline.rs (`publisher_killed_mid_batch`: the publisher killed
        // between claiming a region and writing its batch).
        "pipeline.publish.claimed",
    ];
    let mut listed: Vec<String> = FL_POINTS
        .iter()
        .chain(SLAB_POINTS)
        .chain(ELSEWHERE)
        .map(|s| (*s).to_owned())
        .collect();
    listed.sort();
    assert_eq!(
        found, listed,
        "fail points in src/ vs. points this suite kills at"
    );
}

/// A reclaimer killed after it finished part of a dead handle's operation must not
/// make the next reclaimer redo that part on top of a live block.
///
/// D dies in `new_span` with block 0 of a new span taken for its caller (intent
/// recorded). R1 runs the repair: it gives block 0 back, finds the span empty and
/// starts releasing it, and dies there (before D's parked record is cleared). We
/// then allocate block 0 of that span ourselves and run a repair, which replays D's
/// record: our live block must stay live.
#[test]
fn reclaimer_killed_mid_repair_does_not_free_a_live_block() {
    match role().as_deref() {
        Some("fp-die-at") => return die_at_main(),
        Some(_) => return,
        None => {}
    }
    let name = ShmName::new("fp-replay");
    let a = FreeListAllocator::create(name.as_str(), 1 << 20).unwrap();
    die_at(&name, "fl.new_span.listed", "alloc16");
    die_at(&name, "fl.release.intent", "reclaim");
    let off = a.allocate(16).unwrap();
    let mut buf = [0u8; 16];
    fill_pattern(&mut buf, 0x77);
    a.write(off, &buf).unwrap();
    a.reclaim();
    assert!(
        a.check_range(off, 16).is_ok(),
        "our live block {off} was freed by a replayed repair"
    );
    let other = a.allocate(16).unwrap();
    assert_ne!(other, off, "a live block was handed out again");
    a.free(other).unwrap();
    a.free(off).unwrap();
    assert_eq!(a.audit().live_blocks, Some(0));
}

/// Runs a child (of test `entry`) that arms a SIGKILL at the first hit of `point`,
/// opens `name` and does `action`. Returns whether it died there.
fn act(entry: &str, name: &ShmName, point: &str, action: &str) -> bool {
    let mut c = KillOnDrop::new(spawn_child(
        entry,
        "fp-die-at",
        &[
            ("SA_FP_NAME", name.as_str().to_owned()),
            ("SA_FP_POINT", point.to_owned()),
            ("SA_FP_ACTION", action.to_owned()),
        ],
    ));
    let st = wait_or_kill(c.child(), Duration::from_secs(60)).expect("watchdog: child hangs");
    assert!(
        st.success() || killed_by_sigkill(&st),
        "{action} (armed at {point}) failed: {st}"
    );
    killed_by_sigkill(&st)
}

fn die_at(name: &ShmName, point: &str, action: &str) {
    let entry = "reclaimer_killed_mid_repair_does_not_free_a_live_block";
    assert!(
        act(entry, name, point, action),
        "{action} did not reach {point}"
    );
}

fn die_at_main() {
    // `point` or `point#k`: die at the k-th hit (default the first).
    let spec = env_req("SA_FP_POINT");
    let (point, k) = match spec.split_once('#') {
        Some((p, k)) => (p.to_owned(), k.parse::<u64>().unwrap()),
        None => (spec, 1),
    };
    let hits = AtomicU64::new(0);
    fail::cfg_callback(point, move || {
        if hits.fetch_add(1, Ordering::SeqCst) + 1 == k {
            let _ = raise(Signal::SIGKILL);
        }
    })
    .unwrap();
    let a = FreeListAllocator::open(&env_req("SA_FP_NAME")).unwrap();
    let p = PAGE as usize;
    match env_req("SA_FP_ACTION").as_str() {
        "alloc16" | "new_span" => {
            a.allocate(16).unwrap();
        }
        "alloc_taken" => {
            a.allocate(16).unwrap();
            a.allocate(16).unwrap();
        }
        "free" => {
            let o = a.allocate(16).unwrap();
            a.free(o).unwrap();
        }
        "release" => {
            // Two blocks fill a span of the 2048 class; the third starts another
            // (now current) span; freeing the first two releases the full one.
            let x: Vec<Offset> = (0..3).map(|_| a.allocate(2048).unwrap()).collect();
            a.free(x[0]).unwrap();
            a.free(x[1]).unwrap();
        }
        "release16" => {
            // The same with the 16-byte class: 256 blocks, six block words.
            let x: Vec<Offset> = (0..257).map(|_| a.allocate(16).unwrap()).collect();
            for &o in &x[..256] {
                a.free(o).unwrap();
            }
        }
        "large" => {
            a.allocate(3 * p).unwrap();
        }
        "grow" => {
            // Large blocks are placed from the top down: a spacer above the block,
            // freed, leaves free pages right after it to grow into.
            let spacer = a.allocate(2 * p).unwrap();
            let o = a.allocate(p).unwrap();
            a.free(spacer).unwrap();
            assert!(a.grow_in_place(o, 3 * p).unwrap());
        }
        "large_free" => {
            let o = a.allocate(3 * p).unwrap();
            a.free(o).unwrap();
        }
        "reclaim" => {
            a.reclaim();
        }
        other => panic!("action {other}"),
    }
}

/// Two crashes in a row, for every step that leaves work for a repair and every
/// step of the repair: D dies at step P1 of an operation; R1 dies at the first (or
/// k-th, `point#k`) hit of P2 while repairing it (or finishes, if its repair never reaches P2); then we
/// allocate blocks of every class and a few large ones (possibly reusing what R1
/// gave back) and run the repair again. Our blocks must stay live and intact, and
/// after freeing them and sweeping up what D held, every page must be free.
#[test]
fn double_crash_matrix() {
    match role().as_deref() {
        Some("fp-die-at") => return die_at_main(),
        Some(_) => return,
        None => {}
    }
    const D_STEPS: &[(&str, &str)] = &[
        ("fl.new_span.intent", "new_span"),
        ("fl.new_span.claimed", "new_span"),
        ("fl.new_span.word", "new_span"),
        ("fl.new_span.listed", "new_span"),
        ("fl.alloc.taken", "alloc_taken"),
        ("fl.free.before_clear", "free"),
        ("fl.free.cleared", "free"),
        ("fl.release.intent", "release"),
        ("fl.release.closed_word", "release"),
        ("fl.release.freed", "release"),
        ("fl.large.intent", "large"),
        ("fl.large.head", "large"),
        ("fl.large.interior", "large"),
        ("fl.grow.intent", "grow"),
        ("fl.grow.interiors", "grow"),
        ("fl.large_free.head", "large_free"),
        // Later hits: partly initialised or partly closed spans, partial runs.
        ("fl.new_span.word#3", "new_span"),
        ("fl.new_span.word#6", "new_span"),
        ("fl.release.intent", "release16"),
        ("fl.release.closed_word#1", "release16"),
        ("fl.release.closed_word#4", "release16"),
        ("fl.release.freed", "release16"),
        ("fl.large.interior#2", "large"),
    ];
    const R_STEPS: &[&str] = &[
        "registry.join.locked",
        "registry.reclaim.locked",
        "registry.reclaim.before_free",
        "fl.repair.intent",
        "fl.repair.sweep",
        "fl.release.intent",
        "fl.release.closed_word",
        "fl.release.closed_word#3",
        "fl.release.freed",
        "fl.large.head",
    ];
    let entry = "double_crash_matrix";
    let mut failures = Vec::new();
    let (mut r_died, mut cases) = (0, 0);
    for &(p1, d_action) in D_STEPS {
        for &p2 in R_STEPS {
            cases += 1;
            let name = ShmName::new("fp-2x");
            // The page machinery, without caches (frees reach the shared path).
            let a = FreeListAllocator::create_with_cache(
                name.as_str(),
                1 << 20,
                0,
                &Default::default(),
            )
            .unwrap();
            assert!(
                act(entry, &name, p1, d_action),
                "{d_action} did not reach {p1}"
            );
            r_died += u32::from(act(entry, &name, p2, "reclaim"));
            if let Err(m) = allocate_verify_sweep(&a) {
                failures.push(format!("D dies at {p1}, R1 at {p2}: {m}"));
            }
        }
    }
    println!("double crash matrix: {cases} cases, the reclaimer died in {r_died}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Allocates blocks of every class and some large ones, repairs, checks them, frees
/// them, sweeps up every other live block, and checks every page is free again.
fn allocate_verify_sweep(a: &FreeListAllocator) -> Result<(), String> {
    let mut mine = Vec::new();
    let mut sizes: Vec<usize> = SIZE_CLASSES.iter().flat_map(|&c| [c as usize; 3]).collect();
    sizes.extend([4096, 8192, 12288, 16384, 4096]);
    for (i, size) in sizes.into_iter().enumerate() {
        let off = a
            .allocate(size)
            .map_err(|e| format!("allocate({size}): {e}"))?;
        let mut buf = vec![0u8; size];
        fill_pattern(&mut buf, 0xB10C_0000 + i as u64);
        a.write(off, &buf)
            .map_err(|e| format!("write of fresh block {off}: {e}"))?;
        mine.push((off, size, 0xB10C_0000 + i as u64));
    }
    a.reclaim();
    let mut sorted = mine.clone();
    sorted.sort();
    for w in sorted.windows(2) {
        if w[0].0.get() + w[0].1 as u64 > w[1].0.get() {
            return Err(format!("blocks overlap: {:?} and {:?}", w[0], w[1]));
        }
    }
    for &(off, size, tag) in &mine {
        let got = a
            .read(off, size)
            .map_err(|e| format!("our block {off} ({size} B) not live after repair: {e}"))?;
        check_pattern(&got, tag).map_err(|m| format!("our block {off} damaged: {m}"))?;
    }
    for &(off, size, _) in &mine {
        a.free(off)
            .map_err(|e| format!("free of our block {off} ({size} B): {e}"))?;
    }
    let l = *a.segment().layout();
    for off in (l.data_offset..l.data_end()).step_by(16) {
        match a.free(Offset::new(off)) {
            Ok(()) | Err(FreeError::NotBlockStart { .. } | FreeError::DoubleFree { .. }) => {}
            Err(e) => return Err(format!("sweep free of {off}: {e}")),
        }
    }
    let s = a.audit();
    if s.live_blocks != Some(0) || s.free_bytes != s.capacity {
        a.reclaim();
        let t = a.audit();
        return Err(format!(
            "after freeing everything: live_blocks {:?}, free_bytes {} of {} \
             (after another reclaim: {:?}, {})",
            s.live_blocks, s.free_bytes, s.capacity, t.live_blocks, t.free_bytes
        ));
    }
    let whole = a
        .allocate(s.capacity as usize)
        .map_err(|e| format!("allocate(capacity) after freeing everything: {e}"))?;
    a.free(whole).map_err(|e| format!("free of the whole: {e}"))
}

/// Many handles that die at once, each with an operation in flight, leak nothing.
///
/// One process opens `SA_FP_MANY` (default 40) handles, one per thread; each thread
/// starts a new span and stops at `fl.new_span.claimed` (the span's state is
/// installed, its words still closed, its intent recorded); when all are there, the
/// process is killed. One repair must then finish every one of those operations.
#[test]
fn many_handles_dying_at_once_leak_nothing() {
    if role().as_deref() == Some("fp-many") {
        return many_main();
    }
    if role().is_some() {
        return;
    }
    let name = ShmName::new("fp-many");
    let a = FreeListAllocator::create(name.as_str(), 1 << 20).unwrap();
    let n = env_u64("SA_FP_MANY", 40);
    let mut c = KillOnDrop::new(spawn_child(
        "many_handles_dying_at_once_leak_nothing",
        "fp-many",
        &[
            ("SA_FP_NAME", name.as_str().to_owned()),
            ("SA_FP_MANY", n.to_string()),
        ],
    ));
    let st = wait_or_kill(c.child(), Duration::from_secs(60)).expect("watchdog: child hangs");
    assert!(killed_by_sigkill(&st), "the child was not killed: {st}");
    let r = a.reclaim();
    println!("{n} handles died in new_span; one repair: {r:?}");
    let s = a.audit();
    assert_eq!(
        (s.live_blocks, s.free_bytes),
        (Some(0), s.capacity),
        "{n} handles died in new_span; one repair ({r:?}) left {} bytes unusable",
        s.capacity - s.free_bytes
    );
    let whole = a.allocate(s.capacity as usize);
    assert!(
        whole.is_ok(),
        "{n} handles died in new_span; after one repair ({r:?}) stats say all free, \
         but allocate(capacity) gives {whole:?}"
    );
}

fn many_main() {
    use std::sync::atomic::AtomicUsize;
    static PAUSED: AtomicUsize = AtomicUsize::new(0);
    let name = env_req("SA_FP_NAME");
    let n = env_u64("SA_FP_MANY", 40) as usize;
    let handles: Vec<FreeListAllocator> = (0..n)
        .map(|_| FreeListAllocator::open(&name).unwrap())
        .collect();
    fail::cfg_callback("fl.new_span.claimed", move || {
        if PAUSED.fetch_add(1, Ordering::SeqCst) + 1 == n {
            let _ = raise(Signal::SIGKILL);
        }
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    })
    .unwrap();
    std::thread::scope(|sc| {
        for h in &handles {
            sc.spawn(move || h.allocate(16));
        }
    });
    panic!("not all threads reached fl.new_span.claimed");
}

/// A repair pass running while a live handle grows a large block in place must not
/// free the pages the grow just added.
///
/// The grower's fail point between claiming the new pages and extending the head
/// (`fl.grow.interiors`) is made to spin for a while (no kill), so that repair passes
/// in another process often see the new pages while the head still has its old
/// length. After each successful grow, the page after the old end must still be an
/// interior page of the block (freeing it must say "not a block start", never
/// "double free").
#[test]
fn repair_never_frees_pages_of_a_block_being_grown() {
    match role().as_deref() {
        Some("fp-grower") => return grower_main(),
        Some("fp-repairer") => return repairer_main(),
        Some(_) => return,
        None => {}
    }
    let name = ShmName::new("fp-grow");
    let a = FreeListAllocator::create(name.as_str(), 1 << 20).unwrap();
    let ctrl_off = a.allocate(64).unwrap();
    a.write(ctrl_off, &[0u8; 64]).unwrap();
    let env = vec![
        ("SA_FP_NAME", name.as_str().to_owned()),
        ("SA_FP_CTRL", ctrl_off.get().to_string()),
        ("SA_FP_GROWS", env_u64("SA_FP_GROWS", 3000).to_string()),
    ];
    let entry = "repair_never_frees_pages_of_a_block_being_grown";
    let repairer = spawn_child(entry, "fp-repairer", &env);
    let grower = spawn_child(entry, "fp-grower", &env);
    let outs = common::finish_all(
        vec![grower, repairer],
        Duration::from_secs(300),
        "grow race",
    );
    let report = outs[0].iter().find(|l| l.starts_with("@grown")).cloned();
    let passes = outs[1].iter().find(|l| l.starts_with("@repairer")).cloned();
    println!("{report:?} {passes:?}");
    let grown = report.as_deref().map_or(0, |r| {
        r.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap()
    });
    assert!(grown > 0, "no grow succeeded: the race was not exercised");
    let bad: Vec<&String> = outs[0].iter().filter(|l| l.starts_with("@LOST")).collect();
    assert!(
        bad.is_empty(),
        "a repair freed pages of a block being grown: {bad:?}"
    );
    a.free(ctrl_off).unwrap();
    a.reclaim();
    let s = a.audit();
    assert_eq!((s.live_blocks, s.free_bytes), (Some(0), s.capacity));
}

fn grower_main() {
    let name = env_req("SA_FP_NAME");
    let c = {
        let a = FreeListAllocator::open(&name).unwrap();
        let off: u64 = env_req("SA_FP_CTRL").parse().unwrap();
        while ctrl(a.segment(), off)[W_READY].load(Ordering::Acquire) == 0 {
            std::thread::yield_now();
        }
        off
    };
    // Grow through the handle with the highest registry slot: a repair pass looks at
    // it last, after the repairer's many slots.
    let mut handles: Vec<FreeListAllocator> = Vec::new();
    while let Ok(h) = FreeListAllocator::open(&name) {
        handles.push(h);
        if handles.len() >= 40 {
            break;
        }
    }
    let slot = |h: &FreeListAllocator| h.processes().iter().find(|p| p.is_self).unwrap().slot;
    let best = (0..handles.len())
        .max_by_key(|&i| slot(&handles[i]))
        .unwrap();
    let a = handles.swap_remove(best);
    let c = ctrl(a.segment(), c);
    let grows: u64 = env_req("SA_FP_GROWS").parse().unwrap();
    let hold = env_u64("SA_FP_HOLD_US", 300);
    fail::cfg_callback("fl.grow.interiors", || {
        let t = Instant::now();
        while t.elapsed() < Duration::from_micros(3) {
            std::hint::spin_loop();
        }
    })
    .unwrap();
    let (mut grown, mut lost) = (0, 0);
    for _ in 0..grows {
        // Large blocks are placed from the top down: a spacer above the block,
        // freed, leaves free pages right after it to grow into.
        let spacer = a.allocate(2 * PAGE as usize).unwrap();
        let off = a.allocate(PAGE as usize).unwrap();
        a.free(spacer).unwrap();
        if a.grow_in_place(off, 2 * PAGE as usize).unwrap() {
            grown += 1;
            // Hold the grown block a while, as a real user would.
            let t = Instant::now();
            while t.elapsed() < Duration::from_micros(hold) {
                std::hint::spin_loop();
            }
            match a.free(Offset::new(off.get() + PAGE)) {
                Err(FreeError::NotBlockStart { .. }) => {}
                other => {
                    lost += 1;
                    emit(&format!("@LOST page after {off}: free gave {other:?}"));
                }
            }
        }
        a.free(off).unwrap();
    }
    c[W_STOP].store(1, Ordering::Release);
    emit(&format!("@grown {grown} of {grows}, lost {lost}"));
}

fn repairer_main() {
    let a = FreeListAllocator::open(&env_req("SA_FP_NAME")).unwrap();
    // Many live slots: each look at the live intents takes a while (one fcntl per
    // slot), as it does on a busy segment.
    let _others: Vec<FreeListAllocator> = (0..100)
        .map(|_| FreeListAllocator::open(&env_req("SA_FP_NAME")).unwrap())
        .collect();
    let c = ctrl(a.segment(), env_req("SA_FP_CTRL").parse().unwrap());
    c[W_READY].store(1, Ordering::Release);
    let (mut passes, mut pages) = (0u64, 0u64);
    while c[W_STOP].load(Ordering::Acquire) == 0 {
        pages += a.reclaim().pages as u64;
        passes += 1;
    }
    emit(&format!("@repairer passes={passes} pages={pages}"));
}

// ====================================================================== allocators

/// What the parent needs to know about each allocator kind.
trait Target: ShmFree + Inspect + Sized + 'static {
    const NAME: &'static str;
    fn create_for_test(name: &str) -> Self;
    fn open_for_test(name: &str) -> Self;
    /// The repair pass (none for the slab: its registry has nothing to repair).
    fn reclaim_now(&self);
    /// Every offset that may start a block.
    fn block_starts(&self) -> Vec<u64>;
    /// Bytes a block of `size` takes, as `stats` counts them.
    fn rounded(size: u64) -> u64;
    /// After everything was freed: the whole capacity can be handed out again.
    fn capacity_check(&self) -> Result<(), String>;
    /// The exact statistics (the free list's `audit`: its `stats` counters may be
    /// off by what a killed operation moved).
    fn audit(&self) -> shared_allocator::alloc::Stats;
    /// Blocks a flush of this handle found already given back.
    fn late_double_frees(&self) -> u64;
}

impl Target for FreeListAllocator {
    const NAME: &'static str = "fl";
    fn late_double_frees(&self) -> u64 {
        FreeListAllocator::late_double_frees(self)
    }
    fn audit(&self) -> shared_allocator::alloc::Stats {
        FreeListAllocator::audit(self)
    }
    fn create_for_test(name: &str) -> Self {
        // The shared free path (its two points) runs only without a cache: a
        // cached free is a plain store into the cache.
        let depth = if NO_CACHE.load(std::sync::atomic::Ordering::Relaxed) {
            0
        } else {
            shared_allocator::alloc::DEFAULT_CACHE_DEPTH
        };
        // Committed 256 KiB at a time from a 64 KiB start: the workload grows the
        // segment while victims are killed (the `fl.commit.*` points).
        let opts = shared_allocator::alloc::FreeListOptions {
            initial: 64 << 10,
            cache_depth: depth,
            ..Default::default()
        };
        FreeListAllocator::create_with_options(name, FL_CAPACITY, &opts).expect("create free list")
    }
    fn open_for_test(name: &str) -> Self {
        FreeListAllocator::open(name).expect("open free list")
    }
    fn reclaim_now(&self) {
        self.reclaim();
    }
    fn block_starts(&self) -> Vec<u64> {
        let l = self.segment().layout();
        (l.data_offset..l.data_end()).step_by(16).collect()
    }
    fn rounded(size: u64) -> u64 {
        if size <= 2048 {
            u64::from(
                *SIZE_CLASSES
                    .iter()
                    .find(|&&c| u64::from(c) >= size)
                    .unwrap(),
            )
        } else {
            size.div_ceil(PAGE) * PAGE
        }
    }
    fn capacity_check(&self) -> Result<(), String> {
        let cap = self.audit().capacity;
        let off = self
            .allocate(cap as usize)
            .map_err(|e| format!("allocate(capacity = {cap}) after freeing everything: {e}"))?;
        self.free(off)
            .map_err(|e| format!("free of the whole-capacity block: {e}"))
    }
}

impl Target for SlabAllocator {
    const NAME: &'static str = "slab";
    fn late_double_frees(&self) -> u64 {
        SlabAllocator::late_double_frees(self)
    }
    fn audit(&self) -> shared_allocator::alloc::Stats {
        self.stats()
    }
    fn create_for_test(name: &str) -> Self {
        let depth = if NO_CACHE.load(std::sync::atomic::Ordering::Relaxed) {
            0
        } else {
            shared_allocator::alloc::SLAB_CACHE_DEPTH
        };
        SlabAllocator::create_with_cache(name, SLAB_SLOT, SLAB_SLOTS, depth, &Default::default())
            .expect("create slab")
    }
    fn open_for_test(name: &str) -> Self {
        SlabAllocator::open(name).expect("open slab")
    }
    fn reclaim_now(&self) {
        self.reclaim();
    }
    fn block_starts(&self) -> Vec<u64> {
        let l = self.segment().layout();
        (0..SLAB_SLOTS)
            .map(|s| l.data_offset + s * SLAB_SLOT)
            .collect()
    }
    fn rounded(_size: u64) -> u64 {
        SLAB_SLOT
    }
    fn capacity_check(&self) -> Result<(), String> {
        let mut got = Vec::new();
        let res = loop {
            match self.allocate(SLAB_SLOT as usize) {
                Ok(o) => got.push(o),
                Err(AllocError::OutOfMemory { .. }) => break Ok(()),
                Err(e) => break Err(format!("slab allocate after freeing everything: {e}")),
            }
        };
        let n = got.len() as u64;
        for o in got {
            self.free(o).map_err(|e| format!("slab free {o}: {e}"))?;
        }
        res?;
        if n != SLAB_SLOTS {
            return Err(format!("only {n} of {SLAB_SLOTS} slots could be allocated"));
        }
        Ok(())
    }
}

// ====================================================================== parent

/// One row of the table.
#[derive(Default)]
struct Row {
    point: String,
    kind: &'static str,
    /// Hits of the point in the calibration run (no kill).
    hits_calibrated: u64,
    runs: u32,
    kills: u32,
    /// Runs whose victim finished before reaching K.
    missed: u32,
    /// Kills with an allocation in flight whose block was found live (the one allowed
    /// extra block) or with a free in flight that had already happened.
    in_flight_alloc: u32,
    in_flight_free: u32,
    /// Bytes the machinery did not get back, over all runs.
    leaked: u64,
    survivor_ops: u64,
    problems: Vec<String>,
}

/// Whether the next free list the suite creates has its caches off.
static NO_CACHE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn kill_at<A: Target>(point: &str, kills: u32, seed: u64) -> Row {
    NO_CACHE.store(
        point.starts_with("fl.free.") || point.starts_with("slab.free."),
        std::sync::atomic::Ordering::Relaxed,
    );
    let mut row = Row {
        point: point.to_owned(),
        kind: A::NAME,
        ..Row::default()
    };
    let mut rng = Rng::new(seed);
    // Calibration: how often does the point fire in a whole run? (Up to three seeds.)
    for attempt in 0..3 {
        let out = run_one::<A>(point, u64::MAX, seed ^ attempt, &mut row);
        if let Some(h) = out {
            row.hits_calibrated = h;
        }
        if row.hits_calibrated > 0 {
            break;
        }
    }
    let n = row.hits_calibrated;
    if n == 0 {
        return row;
    }
    let mut attempts = 0;
    while row.kills < kills && attempts < 3 * kills {
        // Spread K over the whole run: early, middle and late kills.
        let i = u64::from(row.kills);
        let stride = (n / u64::from(kills)).max(1);
        let mut k = (1 + i * n / u64::from(kills) + rng.below(stride)).min(n);
        if attempts > row.kills + 1 {
            k = 1 + rng.below(k); // earlier misses: aim lower
        }
        attempts += 1;
        run_one::<A>(
            point,
            k,
            seed.wrapping_add(u64::from(attempts) * 7919),
            &mut row,
        );
    }
    row
}

/// What the victim's output says it held.
#[derive(Default)]
struct Report {
    /// Blocks the victim's code held: offset -> (size, tag).
    held: BTreeMap<u64, (u64, u64)>,
    pending: Pending,
    hits: Option<u64>,
    children: Vec<i32>,
    problems: Vec<String>,
}

#[derive(Default, Clone, Copy, Debug)]
enum Pending {
    #[default]
    None,
    Alloc(u64),
    Free {
        off: u64,
        size: u64,
        tag: u64,
    },
    Grow {
        off: u64,
        old: u64,
        new: u64,
    },
}

fn parse(text: &str) -> Report {
    let mut r = Report::default();
    for line in text.lines() {
        let mut w = line.split_whitespace();
        let tag = w.next().unwrap_or("");
        let mut num = || -> u64 {
            w.next()
                .and_then(|x| x.parse().ok())
                .unwrap_or_else(|| panic!("bad victim line {line:?}"))
        };
        match tag {
            "@A" => r.pending = Pending::Alloc(num()),
            "@+" => {
                let (off, size, t) = (num(), num(), num());
                if let Some(old) = r.held.insert(off, (size, t)) {
                    r.problems.push(format!(
                        "offset {off} handed out while the victim still held it ({old:?})"
                    ));
                }
                r.pending = Pending::None;
            }
            "@oom" | "@f" | "@g" | "@k" => r.pending = Pending::None,
            "@-" => {
                let off = num();
                match r.held.remove(&off) {
                    Some((size, tag)) => r.pending = Pending::Free { off, size, tag },
                    None => r
                        .problems
                        .push(format!("victim freed {off}, which it did not hold")),
                }
            }
            "@G" => {
                let (off, new) = (num(), num());
                let old = r.held.get(&off).map_or(0, |h| h.0);
                r.pending = Pending::Grow { off, old, new };
            }
            "@=" => {
                let (off, new) = (num(), num());
                if let Some(h) = r.held.get_mut(&off) {
                    h.0 = new;
                }
                r.pending = Pending::None;
            }
            "@child" => r.children.push(num() as i32),
            "@done" => {
                r.hits = line
                    .split("hits=")
                    .nth(1)
                    .and_then(|x| x.trim().parse().ok());
            }
            _ => {}
        }
    }
    r
}

/// Joins a stdout reader; gives up (and says so) after `limit`.
fn join_reader(h: JoinHandle<String>, limit: Duration) -> Option<String> {
    let start = Instant::now();
    while !h.is_finished() {
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Some(h.join().unwrap())
}

fn killed_by_sigkill(s: &ExitStatus) -> bool {
    use std::os::unix::process::ExitStatusExt;
    s.signal() == Some(Signal::SIGKILL as i32)
}

/// One run: a fresh segment, a survivor, a victim killed at hit `k` of `point`.
/// Returns the victim's hit count if it finished without being killed.
fn run_one<A: Target>(point: &str, k: u64, seed: u64, row: &mut Row) -> Option<u64> {
    row.runs += 1;
    let ctx = format!("{point} K={k} seed={seed:#x}");
    let name = ShmName::new("fp");
    let a = A::create_for_test(name.as_str());
    let ctrl_off = a.allocate(64).expect("control block");
    a.write(ctrl_off, &[0u8; 64]).unwrap();
    let c = ctrl(a.segment(), ctrl_off.get());
    let env = |extra: Vec<(&'static str, String)>| {
        let mut v = vec![
            ("SA_FP_NAME", name.as_str().to_owned()),
            ("SA_FP_KIND", A::NAME.to_owned()),
            ("SA_FP_CTRL", ctrl_off.get().to_string()),
            ("SA_FP_POINT", point.to_owned()),
        ];
        v.extend(extra);
        v
    };
    let mut survivor = KillOnDrop::new(spawn_child(
        ENTRY,
        "fp-survivor",
        &env(vec![("SA_FP_SEED", (seed ^ 0xABCD).to_string())]),
    ));
    let surv_out = read_stdout(survivor.child());
    // The survivor is working before the victim starts.
    let ready_wait = Instant::now();
    while c[W_READY].load(Ordering::Acquire) == 0 {
        if ready_wait.elapsed() > Duration::from_secs(60) {
            row.problems
                .push(format!("{ctx}: survivor never became ready"));
            return None;
        }
        if let Ok(Some(s)) = survivor.child().try_wait() {
            row.problems
                .push(format!("{ctx}: survivor exited at start: {s}"));
            return None;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut victim = KillOnDrop::new(spawn_child(
        ENTRY,
        "fp-victim",
        &env(vec![
            ("SA_FP_K", k.to_string()),
            ("SA_FP_SEED", seed.to_string()),
        ]),
    ));
    let vict_out = read_stdout(victim.child());
    let status = wait_or_kill(victim.child(), Duration::from_secs(120));
    // Its fork children hold the pipe too: EOF means all of them are gone.
    let text = match join_reader(vict_out, Duration::from_secs(60)) {
        Some(t) => t,
        None => {
            row.problems
                .push(format!("{ctx}: a fork child of the victim never exited"));
            String::new()
        }
    };
    let rep = parse(&text);
    // The survivor, still working, is the first reclaimer of the dead victim.
    c[W_DEAD].store(1, Ordering::Release);
    let ack_wait = Instant::now();
    while c[W_ACK].load(Ordering::Acquire) == 0 {
        if ack_wait.elapsed() > Duration::from_secs(60) {
            row.problems
                .push(format!("{ctx}: survivor never ran its repair (blocked?)"));
            break;
        }
        if let Ok(Some(_)) = survivor.child().try_wait() {
            break; // it failed; reported below
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    c[W_STOP].store(1, Ordering::Release);
    let surv_status = wait_or_kill(survivor.child(), Duration::from_secs(120));
    let surv_text = join_reader(surv_out, Duration::from_secs(60)).unwrap_or_default();
    match surv_status {
        None => row
            .problems
            .push(format!("{ctx}: survivor blocked (watchdog killed it)")),
        Some(s) if !s.success() => row.problems.push(format!(
            "{ctx}: survivor failed with {s} (its stderr is above)"
        )),
        Some(_) => {}
    }
    row.survivor_ops += surv_text
        .lines()
        .find_map(|l| l.strip_prefix("@survivor ops="))
        .and_then(|x| x.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let mut finished = None;
    let pending = match &status {
        None => {
            row.problems
                .push(format!("{ctx}: victim blocked (watchdog killed it)"));
            return None;
        }
        Some(s) if killed_by_sigkill(s) => {
            row.kills += 1;
            rep.pending
        }
        Some(s) if s.success() => {
            if k != u64::MAX {
                row.missed += 1;
            }
            finished = rep.hits;
            // It returned: its last call completed.
            Pending::None
        }
        Some(s) => {
            row.problems.push(format!(
                "{ctx}: victim failed with {s} (its stderr is above); last lines: {:?}",
                text.lines().rev().take(5).collect::<Vec<_>>()
            ));
            return None;
        }
    };
    for p in &rep.problems {
        row.problems.push(format!("{ctx}: {p}"));
    }

    // ---- the reclaimer runs, then stats must be exactly what the victim held.
    a.reclaim_now();
    let stats0 = a.audit();
    check_after_death(&a, &ctx, &rep, pending, ctrl_off, stats0, row);
    finished
}

fn check_after_death<A: Target>(
    a: &A,
    ctx: &str,
    rep: &Report,
    pending: Pending,
    ctrl_off: Offset,
    stats0: Stats,
    row: &mut Row,
) {
    // The consistency walk (`shm-alloc check`): the dead victim's operations in
    // flight are skipped, everything else must hold.
    let mut problems: Vec<String> = a
        .check()
        .problems
        .into_iter()
        .map(|p| format!("check: {p}"))
        .collect();
    // No overlap among the blocks the victim held.
    let mut prev_end = 0;
    for (&off, &(size, _)) in &rep.held {
        if off < prev_end {
            problems.push(format!(
                "held block {off} overlaps the one before (ends {prev_end})"
            ));
        }
        prev_end = prev_end.max(off + size);
    }
    // Each held block is still live, holds its pattern, and frees.
    let mut expected_bytes = A::rounded(64); // the control block
    let mut expected_blocks = 1;
    let mut grow_alt = 0i64; // bytes to add if a grow in flight took effect
    for (&off, &(size, tag)) in &rep.held {
        let o = Offset::new(off);
        let check_len = match pending {
            Pending::Grow { off: g, old, .. } if g == off => old.min(size),
            _ => size,
        };
        match a.read(o, check_len as usize) {
            Ok(bytes) => {
                if let Err(m) = check_pattern(&bytes, tag) {
                    problems.push(format!("held block {off} damaged: {m}"));
                }
            }
            Err(e) => problems.push(format!("held block {off} ({size} bytes) not readable: {e}")),
        }
        expected_blocks += 1;
        match pending {
            Pending::Grow { off: g, old, new } if g == off => {
                expected_bytes += A::rounded(old);
                grow_alt = A::rounded(new) as i64 - A::rounded(old) as i64;
            }
            _ => expected_bytes += A::rounded(size),
        }
    }
    // Killed inside free: the block may or may not be freed already (and then its
    // page may have been released and reused since).
    let mut in_flight_free_live = false;
    if let Pending::Free { off, size, tag } = pending {
        if a.check_range(Offset::new(off), size).is_ok() {
            in_flight_free_live = true;
            expected_blocks += 1;
            expected_bytes += A::rounded(size);
            if let Ok(bytes) = a.read(Offset::new(off), size as usize) {
                if let Err(m) = check_pattern(&bytes, tag) {
                    problems.push(format!("block {off} whose free was in flight damaged: {m}"));
                }
            }
        }
    }
    // Free what the victim held.
    for &off in rep.held.keys() {
        if let Err(e) = a.free(Offset::new(off)) {
            problems.push(format!("free of victim-held block {off}: {e}"));
        }
    }
    if let Pending::Free { off, .. } = pending {
        match a.free(Offset::new(off)) {
            Ok(()) if in_flight_free_live => {}
            Err(FreeError::DoubleFree { .. } | FreeError::NotBlockStart { .. })
                if !in_flight_free_live =>
            {
                row.in_flight_free += 1;
            }
            r => problems.push(format!(
                "free of the in-flight-free block {off} (live: {in_flight_free_live}): {r:?}"
            )),
        }
    }
    if let Err(e) = a.free(ctrl_off) {
        problems.push(format!("free of the control block: {e}"));
    }
    // Sweep: free every block still live; only an allocation in flight may be one.
    let mut strays = Vec::new();
    for off in a.block_starts() {
        let o = Offset::new(off);
        if a.check_range(o, 1).is_err() {
            continue;
        }
        let before = a.audit().live_bytes;
        match a.free(o) {
            Ok(()) => strays.push((off, before - a.audit().live_bytes)),
            Err(FreeError::NotBlockStart { .. } | FreeError::DoubleFree { .. }) => {}
            Err(e) => problems.push(format!("sweep free of {off}: {e}")),
        }
    }
    let stray_bytes: u64 = strays.iter().map(|s| s.1).sum();
    let mut leaked = 0;
    match (pending, strays.as_slice()) {
        (_, []) => {}
        (Pending::Alloc(size), [(_, bytes)]) if *bytes == A::rounded(size) => {
            row.in_flight_alloc += 1;
        }
        // Killed inside a cache refill or flush: nothing is allowed beyond the one
        // block of an allocation in flight (issue 16, 3). The batch in flight is
        // recorded in the slot before the shared step, and the reclaimer returns
        // exactly the blocks nobody holds.
        (_, s) => {
            leaked += stray_bytes;
            problems.push(format!(
                "blocks live that nobody held (offset, bytes): {s:?}; in flight: {pending:?}"
            ));
        }
    }
    // stats() after the reclaimer == exactly what the victim's code held (+ in flight).
    let live0 = stats0.live_bytes as i64;
    let want = (expected_bytes + stray_bytes) as i64;
    if live0 != want && live0 != want + grow_alt {
        problems.push(format!(
            "after reclaim live_bytes = {live0}, the victim held {want} (grow in flight: {grow_alt:+})"
        ));
    }
    let want_blocks = expected_blocks + strays.len() as u64;
    if stats0.live_blocks != Some(want_blocks) {
        problems.push(format!(
            "after reclaim live_blocks = {:?}, the victim held {want_blocks}",
            stats0.live_blocks
        ));
    }
    // Everything freed: the machinery holds nothing.
    let s = a.audit();
    if s.live_blocks != Some(0) {
        problems.push(format!(
            "after freeing everything live_blocks = {:?}",
            s.live_blocks
        ));
    }
    if s.free_bytes != s.capacity {
        leaked += s.capacity.saturating_sub(s.free_bytes);
        // A second pass: does it get them back? (Reported, still a leak of the first.)
        a.reclaim_now();
        let again = a.audit();
        problems.push(format!(
            "after one reclaim and freeing everything: free_bytes {} of {} ({} missing; \
             after a second reclaim: {} missing)",
            s.free_bytes,
            s.capacity,
            s.capacity - s.free_bytes,
            again.capacity.saturating_sub(again.free_bytes)
        ));
    } else if let Err(m) = a.capacity_check() {
        problems.push(m);
    }
    // No block given back twice: the reclaimer's flushes (this handle's) found
    // every bit they cleared still set.
    if a.late_double_frees() != 0 {
        problems.push(format!(
            "{} blocks given back twice (late double frees in the reclaimer)",
            a.late_double_frees()
        ));
    }
    row.leaked += leaked;
    for p in problems {
        row.problems.push(format!("{ctx}: {p}"));
    }
}

fn print_table(rows: &[Row], elapsed: Duration) {
    println!();
    println!(
        "{:<30} {:>5} {:>7} {:>5} {:>6} {:>6} {:>9} {:>10} {:>9} {:>8}",
        "fail point",
        "kind",
        "hits/run",
        "runs",
        "kills",
        "missed",
        "inflight+",
        "inflight-",
        "leaked B",
        "problems"
    );
    for r in rows {
        println!(
            "{:<30} {:>5} {:>7} {:>5} {:>6} {:>6} {:>9} {:>10} {:>9} {:>8}",
            r.point,
            r.kind,
            r.hits_calibrated,
            r.runs,
            r.kills,
            r.missed,
            r.in_flight_alloc,
            r.in_flight_free,
            r.leaked,
            r.problems.len()
        );
    }
    let kills: u32 = rows.iter().map(|r| r.kills).sum();
    let leaked: u64 = rows.iter().map(|r| r.leaked).sum();
    let ops: u64 = rows.iter().map(|r| r.survivor_ops).sum();
    println!(
        "total: {} points, {kills} kills, {leaked} bytes leaked by the machinery, \
         {ops} survivor operations, {:.1} s",
        rows.len(),
        elapsed.as_secs_f64()
    );
    println!(
        "(inflight+: kills with an allocation in flight whose block was taken; \
         inflight-: kills with a free in flight that had already happened)"
    );
}

// ====================================================================== victim

fn victim_main() {
    let name = env_req("SA_FP_NAME");
    let point = env_req("SA_FP_POINT");
    let k: u64 = env_req("SA_FP_K").parse().unwrap();
    let seed: u64 = env_req("SA_FP_SEED").parse().unwrap();
    let counter = shared_counter();
    let victim = getpid();
    fail::cfg_callback(point.clone(), move || {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        if n == k {
            if getpid() != victim {
                // A fork child reached K: the victim dies with it.
                let _ = kill(victim, Signal::SIGKILL);
            }
            let _ = raise(Signal::SIGKILL);
            std::process::abort(); // not reached
        }
    })
    .unwrap();
    match env_req("SA_FP_KIND").as_str() {
        "fl" => {
            let a = FreeListAllocator::open(&name).expect("victim: open");
            let mut v = Victim {
                name: &name,
                point: &point,
                rng: Rng::new(seed),
                next_tag: seed << 24,
                held: Vec::new(),
            };
            v.run_fl(&a);
        }
        "slab" => {
            let a = SlabAllocator::open(&name).expect("victim: open");
            let mut v = Victim {
                name: &name,
                point: &point,
                rng: Rng::new(seed),
                next_tag: seed << 24,
                held: Vec::new(),
            };
            v.run_slab(&a);
        }
        other => panic!("kind {other}"),
    }
    emit(&format!("@done hits={}", counter.load(Ordering::SeqCst)));
}

struct Block {
    off: Offset,
    size: usize,
    tag: u64,
}

struct Victim<'n> {
    name: &'n str,
    point: &'n str,
    rng: Rng,
    next_tag: u64,
    held: Vec<Block>,
}

fn small_size(rng: &mut Rng) -> usize {
    1 + rng.below(2048) as usize
}

fn large_size(rng: &mut Rng) -> usize {
    2049 + rng.below(4 * PAGE) as usize
}

impl Victim<'_> {
    /// Allocates through `via`, writes the tag pattern, reports the block.
    fn alloc<A: ShmAllocator>(&mut self, via: &A, size: usize) -> Option<Block> {
        emit(&format!("@A {size}"));
        match via.allocate(size) {
            Ok(off) => {
                self.next_tag += 1;
                let tag = self.next_tag;
                let mut buf = vec![0u8; size];
                fill_pattern(&mut buf, tag);
                via.write(off, &buf)
                    .unwrap_or_else(|e| panic!("victim: write of fresh block {off}: {e}"));
                emit(&format!("@+ {} {size} {tag}", off.get()));
                Some(Block { off, size, tag })
            }
            Err(AllocError::OutOfMemory { .. }) => {
                emit("@oom");
                None
            }
            Err(e) => panic!("victim: allocate({size}): {e}"),
        }
    }

    /// Verifies the block's pattern, reports the free, frees it through `via`.
    fn free<A: ShmFree>(&mut self, via: &A, b: Block) {
        let got = via
            .read(b.off, b.size)
            .unwrap_or_else(|e| panic!("victim: read of held block {}: {e}", b.off));
        if let Err(m) = check_pattern(&got, b.tag) {
            panic!("victim: DAMAGED block {} ({} bytes): {m}", b.off, b.size);
        }
        emit(&format!("@- {}", b.off.get()));
        via.free(b.off)
            .unwrap_or_else(|e| panic!("victim: free of held block {}: {e}", b.off));
        emit(&format!("@f {}", b.off.get()));
    }

    fn free_random<A: ShmFree>(&mut self, via: &A) {
        if self.held.is_empty() {
            return;
        }
        let i = self.rng.below(self.held.len() as u64) as usize;
        let b = self.held.swap_remove(i);
        self.free(via, b);
    }

    fn grow(&mut self, a: &FreeListAllocator, i: usize) {
        let mut b = std::mem::replace(
            &mut self.held[i],
            Block {
                off: Offset::NULL,
                size: 0,
                tag: 0,
            },
        );
        self.grow_block(a, &mut b);
        self.held[i] = b;
    }

    /// Tries to grow a large block by one or two pages in place.
    fn grow_block(&mut self, a: &FreeListAllocator, b: &mut Block) {
        if b.size <= 2048 {
            return;
        }
        let new = b.size + (1 + self.rng.below(2) as usize) * PAGE as usize;
        emit(&format!("@G {} {new}", b.off.get()));
        if a.grow_in_place(b.off, new).unwrap() {
            emit(&format!("@= {} {new}", b.off.get()));
            let mut buf = vec![0u8; new];
            fill_pattern(&mut buf, b.tag);
            a.write(b.off, &buf)
                .unwrap_or_else(|e| panic!("victim: write of grown block {}: {e}", b.off));
            b.size = new;
        } else {
            emit(&format!("@g {}", b.off.get()));
        }
    }

    fn run_fl(&mut self, a: &FreeListAllocator) {
        for _ in 0..FL_ITERS {
            let large = self.held.iter().filter(|b| b.size > 2048).count();
            match self.rng.below(100) {
                0..=59 => {
                    if self.held.len() < 24 && (self.held.len() < 4 || self.rng.below(2) == 0) {
                        let size = small_size(&mut self.rng);
                        if let Some(b) = self.alloc(a, size) {
                            self.held.push(b);
                        }
                    } else {
                        self.free_random(a);
                    }
                }
                60..=71 => {
                    if large < 4 {
                        let size = large_size(&mut self.rng);
                        if let Some(b) = self.alloc(a, size) {
                            self.held.push(b);
                            if self.rng.below(2) == 0 {
                                self.grow(a, self.held.len() - 1);
                            }
                        }
                    } else if let Some(i) = self.held.iter().position(|b| b.size > 2048) {
                        let b = self.held.swap_remove(i);
                        self.free(a, b);
                    }
                }
                72..=76 => {
                    if let Some(i) = self.held.iter().position(|b| b.size > 2048) {
                        self.grow(a, i);
                    }
                }
                77..=83 => self.second_handle(),
                84..=88 => {
                    emit("@R");
                    a.reclaim();
                    emit("@r");
                }
                89..=92 => {
                    let sacrificial = self.rng.below(2) == 0;
                    self.fork_child(a, sacrificial);
                    if self.rng.below(4) != 0 {
                        emit("@R");
                        a.reclaim(); // takes over the dead child's slot
                        emit("@r");
                    }
                }
                _ => self.free_random(a),
            }
        }
    }

    /// Opens a second handle (segment open, registry join), allocates and frees
    /// through it, and drops it (releases its spans, leaves the registry).
    fn second_handle(&mut self) {
        emit("@O");
        let h = FreeListAllocator::open(self.name).expect("victim: second open");
        for _ in 0..1 + self.rng.below(5) {
            let size = if self.rng.below(4) == 0 {
                large_size(&mut self.rng)
            } else {
                small_size(&mut self.rng)
            };
            if let Some(b) = self.alloc(&h, size) {
                self.held.push(b);
            }
        }
        for _ in 0..self.rng.below(4) {
            self.free_random(&h);
        }
        emit("@D");
        drop(h);
        emit("@d");
    }

    /// Forks a child that uses the inherited handle (so it re-joins a slot of its
    /// own) and a fresh one, then exits without leaving the inherited slot (a dead
    /// slot for the next reclaim), or, if `sacrificial`, dies inside a large
    /// allocation with its intent recorded (an orphan intent for the repair pass).
    fn fork_child(&mut self, a: &FreeListAllocator, sacrificial: bool) {
        emit("@K");
        // SAFETY: the child only runs this test's code on its single thread and leaves
        // with `_exit`; the victim's other (libtest) thread holds no lock the child
        // needs (stdout is written with raw write(2), the fail registry is only
        // taken inside allocator calls of this thread).
        match unsafe { fork() }.expect("fork") {
            ForkResult::Child => {
                let code = match std::panic::catch_unwind(AssertUnwindSafe(|| {
                    self.child_work(a, sacrificial)
                })) {
                    Ok(()) => 0,
                    Err(_) => 101,
                };
                // SAFETY: ends the child at once without running the parent's
                // destructors or atexit handlers (the inherited handle's slot dies
                // with it, as a crashed process's would).
                unsafe { nix::libc::_exit(code) }
            }
            ForkResult::Parent { child } => {
                let st = waitpid(child, None).expect("waitpid");
                match st {
                    WaitStatus::Exited(_, 0) => emit("@k"),
                    WaitStatus::Signaled(_, Signal::SIGKILL, _) if sacrificial => emit("@k killed"),
                    other => panic!("victim: fork child ended with {other:?}"),
                }
            }
        }
    }

    fn child_work(&mut self, a: &FreeListAllocator, sacrificial: bool) {
        emit(&format!("@child {}", getpid()));
        if sacrificial {
            // Die at the first hit of another step that leaves an intent (or a
            // finished free) behind: the repair must finish or roll it back.
            let mut i = self.rng.below(SACRIFICE.len() as u64) as usize;
            if SACRIFICE[i] == self.point {
                i = (i + 1) % SACRIFICE.len();
            }
            fail::cfg_callback(SACRIFICE[i], || {
                let _ = raise(Signal::SIGKILL);
            })
            .unwrap();
        }
        let mut mine = Vec::new();
        // A large block first: its slow path makes the inherited handle re-join.
        let size = large_size(&mut self.rng);
        if let Some(mut b) = self.alloc(a, size) {
            if self.rng.below(2) == 0 {
                self.grow_block(a, &mut b);
            }
            mine.push(b);
        }
        // A run of one big class: fills spans, so new ones are made and, when freed
        // below, released.
        let size = 1025 + self.rng.below(1024) as usize;
        for _ in 0..2 + self.rng.below(6) {
            if let Some(b) = self.alloc(a, size) {
                mine.push(b);
            }
        }
        if self.rng.below(2) == 0 {
            emit("@O");
            let h = FreeListAllocator::open(self.name).expect("child: open");
            let size = small_size(&mut self.rng);
            if let Some(b) = self.alloc(&h, size) {
                mine.push(b);
            }
            emit("@D");
            drop(h);
            emit("@d");
        }
        // Free most of them; what stays is held by "the victim's code".
        while mine.len() > self.rng.below(2) as usize {
            let b = mine.swap_remove(0);
            self.free(a, b);
        }
    }

    fn run_slab(&mut self, a: &SlabAllocator) {
        for _ in 0..SLAB_ITERS {
            if self.held.len() < 300 && (self.held.len() < 8 || self.rng.below(2) == 0) {
                let size = 1 + self.rng.below(SLAB_SLOT) as usize;
                if let Some(b) = self.alloc(a, size) {
                    self.held.push(b);
                }
            } else {
                self.free_random(a);
            }
        }
    }
}

// ====================================================================== survivor

fn survivor_main() {
    let name = env_req("SA_FP_NAME");
    let ctrl_off: u64 = env_req("SA_FP_CTRL").parse().unwrap();
    let seed: u64 = env_req("SA_FP_SEED").parse().unwrap();
    match env_req("SA_FP_KIND").as_str() {
        "fl" => survive(
            &FreeListAllocator::open_for_test(&name),
            ctrl_off,
            seed,
            3 * PAGE,
        ),
        "slab" => survive(
            &SlabAllocator::open_for_test(&name),
            ctrl_off,
            seed,
            SLAB_SLOT,
        ),
        other => panic!("kind {other}"),
    }
}

/// Allocates, patterns, verifies and frees until stopped; only out-of-memory is an
/// acceptable error. Runs repair passes now and then (free list), which must leave
/// the victim's operations in flight alone while it lives.
fn survive<A: Target>(a: &A, ctrl_off: u64, seed: u64, max_size: u64) {
    let c = ctrl(a.segment(), ctrl_off);
    let mut rng = Rng::new(seed);
    let mut held: Vec<Block> = Vec::new();
    let (mut ops, mut oom) = (0u64, 0u64);
    let mut tag = (seed | 1) << 40;
    let mut rd = vec![0u8; max_size as usize];
    let verify = |b: &Block, rd: &mut [u8]| {
        let rd = &mut rd[..b.size];
        a.read_into(b.off, rd)
            .unwrap_or_else(|e| panic!("survivor: read of live block {}: {e}", b.off));
        if let Err(m) = check_pattern(rd, b.tag) {
            panic!("survivor: DAMAGED block {} ({} bytes): {m}", b.off, b.size);
        }
    };
    c[W_READY].store(1, Ordering::Release);
    let mut acked = false;
    while c[W_STOP].load(Ordering::Acquire) == 0 {
        ops += 1;
        if ops % 512 == 0 {
            a.reclaim_now();
        }
        if !acked && c[W_DEAD].load(Ordering::Acquire) != 0 {
            a.reclaim_now();
            acked = true;
            c[W_ACK].store(1, Ordering::Release);
        }
        if held.len() < 32 && (held.len() < 4 || rng.below(2) == 0) {
            let size = if max_size > 2048 && rng.below(8) == 0 {
                2049 + rng.below(max_size - 2048)
            } else {
                1 + rng.below(max_size.min(2048))
            } as usize;
            match a.allocate(size) {
                Ok(off) => {
                    tag += 1;
                    let mut buf = vec![0u8; size];
                    fill_pattern(&mut buf, tag);
                    a.write(off, &buf)
                        .unwrap_or_else(|e| panic!("survivor: write of fresh block {off}: {e}"));
                    held.push(Block { off, size, tag });
                }
                Err(AllocError::OutOfMemory { .. }) => oom += 1,
                Err(e) => panic!("survivor: allocate({size}): {e}"),
            }
        } else {
            let b = held.swap_remove(rng.below(held.len() as u64) as usize);
            verify(&b, &mut rd);
            a.free(b.off)
                .unwrap_or_else(|e| panic!("survivor: free of live block {}: {e}", b.off));
        }
    }
    for b in held.drain(..) {
        verify(&b, &mut rd);
        a.free(b.off)
            .unwrap_or_else(|e| panic!("survivor: free of live block {}: {e}", b.off));
    }
    // Its frees were all of live blocks: a flush (its own, or of a dead cache it
    // reclaimed) that finds a bit already clear gave a block back twice.
    let twice = a.late_double_frees();
    assert_eq!(
        twice, 0,
        "survivor: {twice} blocks given back twice by a flush"
    );
    emit(&format!("@survivor ops={ops} oom={oom}"));
}
