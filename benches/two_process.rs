//! Two processes hammering one free-list allocator.
//!
//! ```text
//! cargo bench --bench two_process                      # 2,000,000 pairs x 5 rounds
//! cargo bench --bench two_process -- --pairs 500000 --rounds 9
//! ```
//!
//! The parent creates a [`FreeListAllocator`], measures a single-process baseline,
//! then re-executes this binary as a child (role in `SA_BENCH_ROLE`) that opens the
//! same allocator. Both run the same workloads, started together by a spin barrier
//! in a control block allocated from the allocator itself, and each times its own
//! loop. The child writes its times into the control block; the parent prints the
//! median ns/pair per process and per workload:
//!
//! - `alloc_free`: allocate 64 bytes, free them at once;
//! - `live_set_64`: a ring of 64 live 64-byte blocks per process; each pair frees
//!   the oldest block and allocates a new one.
//!
//! Without `--bench` (as under `cargo test --benches`) it runs a tiny smoke round
//! and exits. A watchdog kills the child if it runs too long; every wait on the
//! other process has a deadline; the segment is unlinked by a guard, also on panic.

use std::hint::black_box;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shared_allocator::prelude::*;

const ROLE_VAR: &str = "SA_BENCH_ROLE";
const NAME_VAR: &str = "SA_BENCH_NAME";
const CTL_VAR: &str = "SA_BENCH_CTL";
const PAIRS_VAR: &str = "SA_BENCH_PAIRS";
const ROUNDS_VAR: &str = "SA_BENCH_ROUNDS";

/// Block size of every allocation.
const SIZE: usize = 64;
/// The workloads: name and live-set size (0 = free right after allocating).
const VARIANTS: [(&str, usize); 2] = [("alloc_free", 0), ("live_set_64", 64)];
/// Control block: [0] barrier counter, [1] child failure flag,
/// [RESULTS + v * MAX_ROUNDS + r] the child's nanoseconds for variant v, round r.
const CTL_WORDS: usize = 128;
const W_ARRIVE: usize = 0;
const W_CHILD_FAILED: usize = 1;
const W_RESULTS: usize = 8;
const MAX_ROUNDS: usize = (CTL_WORDS - W_RESULTS) / VARIANTS.len();
/// How long either process waits at a barrier for the other.
const BARRIER_TIMEOUT: Duration = Duration::from_secs(60);

/// A segment name unique to this process; unlinked on drop (also on panic).
struct ShmGuard(String);

impl Drop for ShmGuard {
    fn drop(&mut self) {
        let _ = shared_allocator::unlink(&self.0);
    }
}

/// The child process; killed on drop if still running (e.g. the parent panicked).
struct ChildGuard(Arc<Mutex<Child>>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let mut child = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Ok(None) = child.try_wait() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Params {
    pairs: u64,
    rounds: usize,
    /// Kill the child if it is still running after this long.
    child_limit: Duration,
}

/// The control block's words, borrowed from the allocator's mapping.
fn ctl_words(a: &FreeListAllocator, off: Offset) -> &[AtomicU64] {
    let bytes = (CTL_WORDS * 8) as u64;
    a.check_range(off, bytes)
        .expect("control block is a live block");
    let p = a
        .segment()
        .ptr_at(off.get(), bytes, 8)
        .expect("control block inside the mapping, 8-aligned");
    // SAFETY: `ptr_at` checked that CTL_WORDS * 8 bytes at `off` lie inside the
    // mapping and are 8-aligned; every bit pattern is a valid AtomicU64, and both
    // processes access these words only atomically; the slice borrows `a`, which
    // keeps the mapping alive.
    unsafe { std::slice::from_raw_parts(p.as_ptr().cast::<AtomicU64>(), CTL_WORDS) }
}

/// A two-party spin barrier over one monotonically increasing counter word.
struct Barrier<'a> {
    word: &'a AtomicU64,
    phase: u64,
}

impl Barrier<'_> {
    /// Waits until the other process arrived too; `abort` is polled while waiting.
    fn wait(&mut self, abort: impl Fn() -> Option<String>) -> Result<(), String> {
        self.phase += 1;
        let target = 2 * self.phase;
        self.word.fetch_add(1, Ordering::AcqRel);
        let start = Instant::now();
        let mut spins = 0u32;
        while self.word.load(Ordering::Acquire) < target {
            spins = spins.wrapping_add(1);
            if spins % 1024 != 0 {
                std::hint::spin_loop();
                continue;
            }
            std::thread::yield_now();
            if let Some(why) = abort() {
                return Err(format!("barrier {}: {why}", self.phase));
            }
            if start.elapsed() > BARRIER_TIMEOUT {
                return Err(format!(
                    "barrier {}: the other process did not arrive within {BARRIER_TIMEOUT:?}",
                    self.phase
                ));
            }
        }
        Ok(())
    }
}

/// Runs `pairs` alloc+free pairs of `SIZE` bytes with a live set of `live` blocks;
/// returns the time of the pairs only (filling and draining the live set is untimed).
fn run(a: &FreeListAllocator, live: usize, pairs: u64) -> Duration {
    if live == 0 {
        let start = Instant::now();
        for _ in 0..pairs {
            let o = a.allocate(black_box(SIZE)).expect("allocate");
            a.free(black_box(o)).expect("free");
        }
        return start.elapsed();
    }
    let mut ring: Vec<Offset> = (0..live)
        .map(|_| a.allocate(SIZE).expect("allocate"))
        .collect();
    let start = Instant::now();
    let mut k = 0;
    for _ in 0..pairs {
        let slot = &mut ring[k];
        a.free(black_box(*slot)).expect("free");
        *slot = a.allocate(black_box(SIZE)).expect("allocate");
        k += 1;
        if k == live {
            k = 0;
        }
    }
    let d = start.elapsed();
    for o in ring {
        a.free(o).expect("free");
    }
    d
}

fn ns_per_pair(d: Duration, pairs: u64) -> f64 {
    d.as_nanos() as f64 / pairs as f64
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn warmup_pairs(p: &Params) -> u64 {
    (p.pairs / 10).max(1)
}

/// The synchronised part both processes run: per variant, a warm-up then `rounds`
/// timed rounds, each started by a barrier. Returns the nanoseconds per round,
/// `[variant][round]`. The caller passes one more barrier after this (the child
/// stores its results before arriving there).
fn synchronised(
    a: &FreeListAllocator,
    barrier: &mut Barrier<'_>,
    p: &Params,
    abort: &dyn Fn() -> Option<String>,
) -> Result<Vec<Vec<u64>>, String> {
    let mut out = Vec::new();
    for &(_, live) in &VARIANTS {
        barrier.wait(abort)?;
        run(a, live, warmup_pairs(p));
        let mut times = Vec::new();
        for _ in 0..p.rounds {
            barrier.wait(abort)?;
            times.push(run(a, live, p.pairs).as_nanos() as u64);
        }
        out.push(times);
    }
    Ok(out)
}

// ------------------------------------------------------------------------- child

fn child_main() -> ! {
    let env = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("child: {k} not set"));
    let name = env(NAME_VAR);
    let ctl_off = Offset::new(env(CTL_VAR).parse().expect("child: control offset"));
    let p = Params {
        pairs: env(PAIRS_VAR).parse().expect("child: pairs"),
        rounds: env(ROUNDS_VAR).parse().expect("child: rounds"),
        child_limit: Duration::ZERO,
    };
    let a = FreeListAllocator::open(&name).expect("child: open the allocator");
    let ctl = ctl_words(&a, ctl_off);
    let parent = std::os::unix::process::parent_id();
    let abort = move || {
        (std::os::unix::process::parent_id() != parent).then(|| "the parent exited".to_owned())
    };
    let mut barrier = Barrier {
        word: &ctl[W_ARRIVE],
        phase: 0,
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        synchronised(&a, &mut barrier, &p, &abort)
    }));
    match result {
        Ok(Ok(times)) => {
            // The parent reads these after the last barrier, which publishes them.
            for (v, t) in times.iter().enumerate() {
                for (r, &ns) in t.iter().enumerate() {
                    ctl[W_RESULTS + v * MAX_ROUNDS + r].store(ns, Ordering::Relaxed);
                }
            }
            match barrier.wait(abort) {
                Ok(()) => std::process::exit(0),
                Err(e) => {
                    eprintln!("two_process child: {e}");
                    std::process::exit(1)
                }
            }
        }
        Ok(Err(e)) => {
            eprintln!("two_process child: {e}");
            ctl[W_CHILD_FAILED].store(1, Ordering::Release);
            std::process::exit(1)
        }
        Err(_) => {
            ctl[W_CHILD_FAILED].store(1, Ordering::Release);
            std::process::exit(1)
        }
    }
}

// ------------------------------------------------------------------------ parent

fn parse_args() -> Option<(Params, bool)> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        return None; // test listers: there are no tests here
    }
    let bench = args.iter().any(|a| a == "--bench");
    let value = |flag: &str| -> Option<u64> {
        let i = args.iter().position(|a| a == flag)?;
        let v = args.get(i + 1)?;
        Some(
            v.parse()
                .unwrap_or_else(|_| panic!("{flag} wants a number, got {v:?}")),
        )
    };
    let (pairs, rounds) = if bench {
        (2_000_000, 5)
    } else {
        (5_000, 1) // smoke mode: `cargo test --benches`
    };
    let pairs = value("--pairs").unwrap_or(pairs).max(1);
    let rounds = (value("--rounds").unwrap_or(rounds) as usize).clamp(1, MAX_ROUNDS);
    let secs = value("--timeout").unwrap_or(300);
    Some((
        Params {
            pairs,
            rounds,
            child_limit: Duration::from_secs(secs),
        },
        bench,
    ))
}

/// Waits for the child in a thread; kills it once `limit` has passed.
fn watchdog(
    child: Arc<Mutex<Child>>,
    limit: Duration,
    exited: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Result<ExitStatus, String>> {
    std::thread::spawn(move || {
        let start = Instant::now();
        loop {
            {
                let mut c = child.lock().unwrap_or_else(|e| e.into_inner());
                match c.try_wait() {
                    Ok(Some(status)) => {
                        exited.store(true, Ordering::Release);
                        return Ok(status);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        let _ = c.kill();
                        let _ = c.wait();
                        exited.store(true, Ordering::Release);
                        return Err(format!("try_wait on the child failed: {e}"));
                    }
                }
                if start.elapsed() > limit {
                    let _ = c.kill();
                    let _ = c.wait();
                    exited.store(true, Ordering::Release);
                    let msg = format!("watchdog: child still running after {limit:?}; killed it");
                    eprintln!("two_process: {msg}");
                    return Err(msg);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
}

fn main() {
    if std::env::var_os(ROLE_VAR).is_some() {
        child_main();
    }
    let Some((p, bench)) = parse_args() else {
        return;
    };
    if !bench {
        println!("two_process: smoke mode (run with `cargo bench --bench two_process` to measure)");
    }

    let guard = ShmGuard(format!("sa-bench-2proc-{}", std::process::id()));
    let a = FreeListAllocator::create(&guard.0, 4 << 20).expect("create the allocator");
    let ctl_off = a
        .allocate(CTL_WORDS * 8)
        .expect("allocate the control block");
    let ctl = ctl_words(&a, ctl_off);
    for w in ctl {
        w.store(0, Ordering::Relaxed);
    }

    // Single-process baseline, same allocator, same workloads, same round structure.
    let mut single: Vec<Vec<f64>> = Vec::new();
    for &(_, live) in &VARIANTS {
        run(&a, live, warmup_pairs(&p));
        single.push(
            (0..p.rounds)
                .map(|_| ns_per_pair(run(&a, live, p.pairs), p.pairs))
                .collect(),
        );
    }

    let child = Command::new(std::env::current_exe().expect("current_exe"))
        .env(ROLE_VAR, "child")
        .env(NAME_VAR, &guard.0)
        .env(CTL_VAR, ctl_off.get().to_string())
        .env(PAIRS_VAR, p.pairs.to_string())
        .env(ROUNDS_VAR, p.rounds.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the child process");
    let child = Arc::new(Mutex::new(child));
    let child_guard = ChildGuard(Arc::clone(&child));
    let exited = Arc::new(AtomicBool::new(false));
    let dog = watchdog(child, p.child_limit, Arc::clone(&exited));

    let abort = || {
        if ctl[W_CHILD_FAILED].load(Ordering::Acquire) != 0 {
            Some("the child failed".to_owned())
        } else if exited.load(Ordering::Acquire) {
            Some("the child exited early".to_owned())
        } else {
            None
        }
    };
    let mut barrier = Barrier {
        word: &ctl[W_ARRIVE],
        phase: 0,
    };
    let parent_ns =
        synchronised(&a, &mut barrier, &p, &abort).unwrap_or_else(|e| panic!("parent: {e}"));
    // The child stores its results, then arrives here.
    barrier
        .wait(abort)
        .unwrap_or_else(|e| panic!("parent: {e}"));
    let status = dog
        .join()
        .expect("watchdog thread")
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success(), "child failed: {status}");
    drop(child_guard);

    println!(
        "two_process: FreeListAllocator, {SIZE}-byte blocks, {} pairs per process per round, \
         {} rounds, medians over rounds (ns per alloc+free pair)",
        p.pairs, p.rounds
    );
    println!(
        "{:<12} {:>10} {:>10} {:>10} {:>10} {:>10} {:>14}",
        "workload", "1-proc", "parent", "child", "parent/1p", "child/1p", "both Mpairs/s"
    );
    for (v, &(vname, _)) in VARIANTS.iter().enumerate() {
        let par: Vec<f64> = parent_ns[v]
            .iter()
            .map(|&ns| ns as f64 / p.pairs as f64)
            .collect();
        let chi: Vec<f64> = (0..p.rounds)
            .map(|r| {
                ctl[W_RESULTS + v * MAX_ROUNDS + r].load(Ordering::Acquire) as f64 / p.pairs as f64
            })
            .collect();
        // Combined throughput of a round: both processes' pairs over the slower one's time.
        let both: Vec<f64> = par
            .iter()
            .zip(&chi)
            .map(|(&a, &b)| 2.0 * 1e3 / a.max(b))
            .collect();
        let (s, pm, cm) = (median(&single[v]), median(&par), median(&chi));
        println!(
            "{vname:<12} {s:>10.1} {pm:>10.1} {cm:>10.1} {:>10.2} {:>10.2} {:>14.2}",
            pm / s,
            cm / s,
            median(&both)
        );
        if bench {
            println!("  rounds: 1-proc {:.1?}", single[v]);
            println!("          parent {par:.1?}");
            println!("          child  {chi:.1?}");
        }
    }

    // Nothing leaked under contention: only the control block is live.
    assert_eq!(a.stats().live_blocks, Some(1), "blocks leaked");
    a.free(ctl_off).expect("free the control block");
    drop(a);
    drop(guard);
}
