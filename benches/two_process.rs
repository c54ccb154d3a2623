//! 1, 2 and 4 processes hammering one free-list allocator.
//!
//! ```text
//! cargo bench --bench two_process                      # 2,000,000 pairs x 5 rounds
//! cargo bench --bench two_process -- --pairs 500000 --rounds 9
//! ```
//!
//! The parent creates a [`FreeListAllocator`] and, for N = 1, 2 and 4, re-executes
//! this binary as N - 1 children (role and index in the environment) that open the
//! same allocator. All N processes run the same workloads, started together by a
//! spin barrier in a control block allocated from the allocator itself, and each
//! times its own loop. Each child writes its times into its own area of the control
//! block; the parent prints, per N, the median ns/pair of every process, its ratio
//! to the 1-process median and the combined throughput, then one summary line per
//! workload:
//!
//! - `alloc_free`: allocate 64 bytes, free them at once;
//! - `live_set_64`: a ring of 64 live 64-byte blocks per process; each pair frees
//!   the oldest block and allocates a new one.
//!
//! Without `--bench` (as under `cargo test --benches`) it runs a tiny smoke round
//! and exits. A watchdog per child kills it if it runs too long; every wait on the
//! other processes has a deadline; the segment is unlinked by a guard, also on
//! panic, and children still running are killed when their guard drops.

use std::hint::black_box;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use shared_allocator::prelude::*;

const ROLE_VAR: &str = "SA_BENCH_ROLE";
const NAME_VAR: &str = "SA_BENCH_NAME";
const CTL_VAR: &str = "SA_BENCH_CTL";
const PAIRS_VAR: &str = "SA_BENCH_PAIRS";
const ROUNDS_VAR: &str = "SA_BENCH_ROUNDS";
const PROCS_VAR: &str = "SA_BENCH_PROCS";
const INDEX_VAR: &str = "SA_BENCH_INDEX";

/// Block size of every allocation.
const SIZE: usize = 64;
/// The workloads: name and live-set size (0 = free right after allocating).
const VARIANTS: [(&str, usize); 2] = [("alloc_free", 0), ("live_set_64", 64)];
/// The process counts measured, in this order (the first must be 1: the baseline).
const PROCS: [usize; 3] = [1, 2, 4];
const MAX_CHILDREN: usize = 3;
const MAX_ROUNDS: usize = 32;
/// Control block: [W_ARRIVE] barrier counter, [W_FAILED + c] child c's failure
/// flag, [result_word(c, v, r)] child c's nanoseconds for variant v, round r.
const W_ARRIVE: usize = 0;
const W_FAILED: usize = 1;
const W_RESULTS: usize = 8;
const CHILD_WORDS: usize = VARIANTS.len() * MAX_ROUNDS;
const CTL_WORDS: usize = W_RESULTS + MAX_CHILDREN * CHILD_WORDS;
const _: () = assert!(W_FAILED + MAX_CHILDREN <= W_RESULTS);
const _: () = assert!(PROCS[0] == 1);
/// How long any process waits at a barrier for the others.
const BARRIER_TIMEOUT: Duration = Duration::from_secs(60);

fn result_word(child: usize, variant: usize, round: usize) -> usize {
    W_RESULTS + child * CHILD_WORDS + variant * MAX_ROUNDS + round
}

/// A segment name unique to this process; unlinked on drop (also on panic).
struct ShmGuard(String);

impl Drop for ShmGuard {
    fn drop(&mut self) {
        let _ = shared_allocator::unlink(&self.0);
    }
}

/// A child process; killed on drop if still running (e.g. the parent panicked).
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
    /// Kill a child if it is still running after this long.
    child_limit: Duration,
}

/// The control block's words, borrowed from the allocator's mapping.
fn ctl_words(a: &FreeListAllocator, off: Offset) -> &[AtomicU64] {
    let bytes = (CTL_WORDS * 8) as u64;
    a.check_range(off, bytes)
        .expect("control block is a live block");
    let p = shared_allocator::__layout::ptr_at(a.segment(), off.get(), bytes, 8)
        .expect("control block inside the mapping, 8-aligned");
    // SAFETY: `ptr_at` checked that CTL_WORDS * 8 bytes at `off` lie inside the
    // mapping and are 8-aligned; every bit pattern is a valid AtomicU64, and all
    // processes access these words only atomically; the slice borrows `a`, which
    // keeps the mapping alive.
    unsafe { std::slice::from_raw_parts(p.as_ptr().cast::<AtomicU64>(), CTL_WORDS) }
}

/// An N-party spin barrier over one monotonically increasing counter word.
struct Barrier<'a> {
    word: &'a AtomicU64,
    parties: u64,
    phase: u64,
}

impl Barrier<'_> {
    /// Waits until all parties arrived; `abort` is polled while waiting.
    fn wait(&mut self, abort: impl Fn() -> Option<String>) -> Result<(), String> {
        self.phase += 1;
        let target = self.parties * self.phase;
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
                // A process may pass the last barrier and exit between our load and
                // `abort`: then the barrier is complete and its exit is no failure.
                if self.word.load(Ordering::Acquire) >= target {
                    break;
                }
                return Err(format!("barrier {}: {why}", self.phase));
            }
            if start.elapsed() > BARRIER_TIMEOUT {
                return Err(format!(
                    "barrier {}: the other processes did not arrive within {BARRIER_TIMEOUT:?}",
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

/// The synchronised part every process runs: per variant, a warm-up then `rounds`
/// timed rounds, each started by a barrier. Returns the nanoseconds per round,
/// `[variant][round]`. The caller passes one more barrier after this (the children
/// store their results before arriving there).
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
    let procs: u64 = env(PROCS_VAR).parse().expect("child: process count");
    let index: usize = env(INDEX_VAR).parse().expect("child: index");
    assert!(index < MAX_CHILDREN && (index as u64) < procs);
    let a = FreeListAllocator::open(&name).expect("child: open the allocator");
    let ctl = ctl_words(&a, ctl_off);
    let parent = std::os::unix::process::parent_id();
    let abort = move || {
        if std::os::unix::process::parent_id() != parent {
            return Some("the parent exited".to_owned());
        }
        (0..MAX_CHILDREN)
            .find(|&c| ctl[W_FAILED + c].load(Ordering::Acquire) != 0)
            .map(|c| format!("child {} failed", c + 1))
    };
    let mut barrier = Barrier {
        word: &ctl[W_ARRIVE],
        parties: procs,
        phase: 0,
    };
    let fail = |e: &str| -> ! {
        eprintln!("two_process child {}: {e}", index + 1);
        ctl[W_FAILED + index].store(1, Ordering::Release);
        std::process::exit(1)
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        synchronised(&a, &mut barrier, &p, &abort)
    }));
    match result {
        Ok(Ok(times)) => {
            // The parent reads these after the last barrier, which publishes them.
            for (v, t) in times.iter().enumerate() {
                for (r, &ns) in t.iter().enumerate() {
                    ctl[result_word(index, v, r)].store(ns, Ordering::Relaxed);
                }
            }
            match barrier.wait(abort) {
                Ok(()) => std::process::exit(0),
                Err(e) => fail(&e),
            }
        }
        Ok(Err(e)) => fail(&e),
        Err(_) => fail("panicked"),
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

/// Waits for one child in a thread; kills it once `limit` has passed.
fn watchdog(
    child: Arc<Mutex<Child>>,
    which: usize,
    limit: Duration,
    exited: Arc<AtomicBool>,
) -> JoinHandle<Result<ExitStatus, String>> {
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
                        return Err(format!("try_wait on child {which} failed: {e}"));
                    }
                }
                if start.elapsed() > limit {
                    let _ = c.kill();
                    let _ = c.wait();
                    exited.store(true, Ordering::Release);
                    let msg =
                        format!("watchdog: child {which} still running after {limit:?}; killed it");
                    eprintln!("two_process: {msg}");
                    return Err(msg);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
}

/// A running child: its guard (kills it on drop), watchdog and exit flag.
struct Running {
    _guard: ChildGuard,
    dog: JoinHandle<Result<ExitStatus, String>>,
    exited: Arc<AtomicBool>,
}

/// Runs the workloads in `procs` processes (the parent and `procs - 1` children).
/// Returns ns per pair, `[process][variant][round]`, the parent first.
fn measure(
    a: &FreeListAllocator,
    name: &str,
    ctl_off: Offset,
    p: &Params,
    procs: usize,
) -> Vec<Vec<Vec<f64>>> {
    assert!((1..=MAX_CHILDREN + 1).contains(&procs));
    let ctl = ctl_words(a, ctl_off);
    // No child of an earlier measurement is alive: the parent is the only user.
    for w in ctl {
        w.store(0, Ordering::Relaxed);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let children: Vec<Running> = (0..procs - 1)
        .map(|index| {
            let child = Command::new(&exe)
                .env(ROLE_VAR, "child")
                .env(NAME_VAR, name)
                .env(CTL_VAR, ctl_off.get().to_string())
                .env(PAIRS_VAR, p.pairs.to_string())
                .env(ROUNDS_VAR, p.rounds.to_string())
                .env(PROCS_VAR, procs.to_string())
                .env(INDEX_VAR, index.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap_or_else(|e| panic!("spawn child {}: {e}", index + 1));
            let child = Arc::new(Mutex::new(child));
            let exited = Arc::new(AtomicBool::new(false));
            Running {
                _guard: ChildGuard(Arc::clone(&child)),
                dog: watchdog(child, index + 1, p.child_limit, Arc::clone(&exited)),
                exited,
            }
        })
        .collect();

    let abort = || {
        children.iter().enumerate().find_map(|(c, ch)| {
            if ctl[W_FAILED + c].load(Ordering::Acquire) != 0 {
                Some(format!("child {} failed", c + 1))
            } else if ch.exited.load(Ordering::Acquire) {
                Some(format!("child {} exited early", c + 1))
            } else {
                None
            }
        })
    };
    let mut barrier = Barrier {
        word: &ctl[W_ARRIVE],
        parties: procs as u64,
        phase: 0,
    };
    let parent_ns = synchronised(a, &mut barrier, p, &abort)
        .unwrap_or_else(|e| panic!("parent, N={procs}: {e}"));
    // The children store their results, then arrive here.
    barrier
        .wait(abort)
        .unwrap_or_else(|e| panic!("parent, N={procs}: {e}"));
    for (c, ch) in children.into_iter().enumerate() {
        // The watchdog returns within `child_limit` (it kills the child then).
        let status = ch
            .dog
            .join()
            .expect("watchdog thread")
            .unwrap_or_else(|e| panic!("N={procs}: {e}"));
        assert!(
            status.success(),
            "N={procs}: child {} failed: {status}",
            c + 1
        );
    }

    let per_pair = |ns: u64| ns as f64 / p.pairs as f64;
    let mut out = vec![parent_ns
        .iter()
        .map(|t| t.iter().map(|&ns| per_pair(ns)).collect())
        .collect::<Vec<Vec<f64>>>()];
    for c in 0..procs - 1 {
        out.push(
            (0..VARIANTS.len())
                .map(|v| {
                    (0..p.rounds)
                        .map(|r| per_pair(ctl[result_word(c, v, r)].load(Ordering::Acquire)))
                        .collect()
                })
                .collect(),
        );
    }
    out
}

fn process_name(i: usize) -> String {
    if i == 0 {
        "parent".to_owned()
    } else {
        format!("child {i}")
    }
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

    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "two_process: FreeListAllocator, {SIZE}-byte blocks, {} pairs per process per round, \
         {} rounds, N = {PROCS:?} processes (parent + N-1 children) started together",
        p.pairs, p.rounds
    );
    let over: Vec<usize> = PROCS.iter().copied().filter(|&n| n > cpus).collect();
    if over.is_empty() {
        println!("machine: {cpus} CPUs");
    } else {
        println!(
            "machine: {cpus} CPUs; N={} oversubscribes (more processes than CPUs): \
             per-process times include time spent descheduled",
            over.iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(", N=")
        );
    }
    println!(
        "ns/pair: median over rounds of ns per alloc+free pair; x1-proc: that / the N=1 \
         median; Mpairs/s: a process's own rate, or combined: N * pairs / the slowest \
         process's time (median over rounds)"
    );

    // [n index][process][variant][round] ns per pair.
    let results: Vec<Vec<Vec<Vec<f64>>>> = PROCS
        .iter()
        .map(|&n| measure(&a, &guard.0, ctl_off, &p, n))
        .collect();
    let base: Vec<f64> = (0..VARIANTS.len())
        .map(|v| median(&results[0][0][v]))
        .collect();

    for (&n, res) in PROCS.iter().zip(&results) {
        let over = if n > cpus { ", oversubscribed" } else { "" };
        println!();
        println!(
            "N={n} ({} process{}{over})",
            n,
            if n == 1 { "" } else { "es" }
        );
        println!(
            "{:<12} {:<9} {:>9} {:>8} {:>9}",
            "workload", "process", "ns/pair", "x1-proc", "Mpairs/s"
        );
        for (v, &(vname, _)) in VARIANTS.iter().enumerate() {
            for (i, proc_res) in res.iter().enumerate() {
                let m = median(&proc_res[v]);
                let label = if i == 0 { vname } else { "" };
                print!(
                    "{label:<12} {:<9} {m:>9.1} {:>8.2} {:>9.1}",
                    process_name(i),
                    m / base[v],
                    1e3 / m
                );
                if bench {
                    print!("   rounds {:.1?}", proc_res[v]);
                }
                println!();
            }
            // Combined throughput of a round: all pairs over the slowest process's time.
            let combined: Vec<f64> = (0..p.rounds)
                .map(|r| {
                    let slowest = res.iter().map(|pr| pr[v][r]).fold(0.0, f64::max);
                    n as f64 * 1e3 / slowest
                })
                .collect();
            println!(
                "{:<12} {:<9} {:>9} {:>8} {:>9.1}",
                "",
                "combined",
                "",
                "",
                median(&combined)
            );
        }
    }

    println!();
    for (v, &(vname, _)) in VARIANTS.iter().enumerate() {
        let parts: Vec<String> = PROCS
            .iter()
            .zip(&results)
            .skip(1)
            .map(|(&n, res)| {
                let all: Vec<f64> = res.iter().flat_map(|pr| pr[v].iter().copied()).collect();
                format!("N={n} per-pair/1-proc = {:.2}", median(&all) / base[v])
            })
            .collect();
        println!(
            "summary {vname:<12} (median over all processes' rounds): {}",
            parts.join(", ")
        );
    }

    // Nothing leaked under contention: only the control block is live.
    assert_eq!(a.stats().live_blocks, Some(1), "blocks leaked");
    a.free(ctl_off).expect("free the control block");
    drop(a);
    drop(guard);
}
