//! A coordinator fills a bump arena with one batch of records at a time and resets it
//! between batches; worker processes read each batch through an epoch-carrying
//! handle. After a reset, a handle from the previous batch is `Stale` in every
//! worker, although its bytes now hold the next batch.
//!
//! Two segments: the bump arena for batch data, and a small free-list segment for the
//! control block (a named root), which must survive the arena's resets.
//!
//! Nobody spins: workers sleep on a `ShmEvent` until a batch is published, the
//! coordinator sleeps on another until every worker acknowledged it. Before the
//! first batch the coordinator pauses, so the workers sit idle; each worker measures
//! the CPU time it used while blocked, and the program prints it with the children's
//! totals from `getrusage(RUSAGE_CHILDREN)`: blocking, not polling, costs ~nothing.
//!
//! ```text
//! cargo run --release --example arena_pipeline
//! ```

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use shared_allocator::coord::ShmEvent;
use shared_allocator::prelude::*;
use shared_allocator::segment::UnlinkGuard;

#[derive(ShmSafe, Clone, Copy)]
#[repr(C)]
struct Record {
    id: u64,
    batch: u64,
    values: [u32; 6],
}

#[derive(ShmSafe)]
#[shm(sync)]
#[repr(C)]
struct Control {
    seq: AtomicU64, // batch number last published (0 = none yet)
    off: AtomicU64, // the batch's ArenaPtr, in parts
    epoch: AtomicU64,
    len: AtomicU64,
    acks: AtomicU64,  // batches read, summed over workers
    stale: AtomicU64, // old handles found Stale, summed over workers
    done: AtomicU64,
    published: ShmEvent,     // notified with each new batch (and at the end)
    acked: ShmEvent,         // notified with each acknowledgement
    idle_wall_us: AtomicU64, // time workers spent blocked, summed
    idle_cpu_us: AtomicU64,  // CPU time they used while blocked, summed
}

const WORKERS: usize = 3;
const BATCHES: u64 = 50;
const RECORDS: usize = 10_000;
const WATCHDOG: Duration = Duration::from_secs(60);

/// Blocks on `event` until `cond()` holds (a notification between the check and the
/// sleep is never missed), failing after the watchdog's time.
fn wait_until(event: &ShmEvent, what: &str, cond: impl FnMut() -> bool) -> Result<(), String> {
    if event.wait_timeout_until(WATCHDOG, cond) {
        Ok(())
    } else {
        Err(format!("watchdog: {what}"))
    }
}

/// CPU time (user + system) this process has used.
fn cpu_now() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// CPU time (user + system) of the children this process has waited for.
fn children_cpu() -> Duration {
    use nix::libc;
    // SAFETY: an all-zero `rusage` is a valid value of this plain C struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY:
    // - `ru` is a valid, writable `rusage` for the call to fill;
    // - RUSAGE_CHILDREN is a valid `who`, so the call cannot fail with EINVAL.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    assert_eq!(rc, 0, "getrusage");
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("worker") {
        return worker(&args[2], &args[3]);
    }
    let pid = std::process::id();
    let (data, ctl) = (
        format!("pipeline-data-{pid}"),
        format!("pipeline-ctl-{pid}"),
    );
    let mut bump = BumpAllocator::create(&data, 4 << 20)?;
    let control_seg = FreeListAllocator::create(&ctl, 64 << 10)?;
    let _cleanup = (UnlinkGuard::new(&data), UnlinkGuard::new(&ctl));
    let control = control_seg.root::<Control>("control")?;

    let children_cpu_before = children_cpu(); // a baseline: only our workers count
    let mut kids = Vec::new();
    for _ in 0..WORKERS {
        kids.push(
            Command::new(std::env::current_exe()?)
                .args(["worker", &data, &ctl])
                .spawn()?,
        );
    }

    // The workers are up and blocked: let them sit idle for a moment.
    std::thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    let mut arena = bump.arena();
    for k in 1..=BATCHES {
        arena.reset()?; // nothing from the arena is alive here: this compiles
        let records: Vec<Record> = (0..RECORDS as u64)
            .map(|i| Record {
                id: i,
                batch: k,
                values: [(i * k) as u32; 6],
            })
            .collect();
        let h = arena.alloc_slice(&records)?.arena_ptr();
        control.off.store(h.offset().get(), Ordering::Relaxed);
        control.epoch.store(h.epoch(), Ordering::Relaxed);
        control.len.store(h.len() as u64, Ordering::Relaxed);
        control.seq.store(k, Ordering::Release);
        control.published.notify_all();
        // Protocol: reset only once every worker has finished reading this batch.
        wait_until(
            &control.acked,
            "workers did not acknowledge a batch",
            || control.acks.load(Ordering::Acquire) >= k * WORKERS as u64,
        )?;
    }
    control.done.store(1, Ordering::Release);
    control.published.notify_all();
    let elapsed = start.elapsed();

    for mut kid in kids {
        // Workers give up on their own after the watchdog time, so this ends.
        if !kid.wait()?.success() {
            return Err("a worker failed".into());
        }
    }
    let bytes = BATCHES as usize * RECORDS * std::mem::size_of::<Record>();
    println!(
        "{BATCHES} batches x {RECORDS} records to {WORKERS} workers in {:.1} ms ({:.0} MB/s per worker, validated copies)",
        elapsed.as_secs_f64() * 1e3,
        bytes as f64 / elapsed.as_secs_f64() / 1e6
    );
    println!(
        "stale handles detected by workers after resets: {} (expected {})",
        control.stale.load(Ordering::Relaxed),
        (BATCHES - 1) * WORKERS as u64
    );
    let idle_wall = Duration::from_micros(control.idle_wall_us.load(Ordering::Relaxed));
    let idle_cpu = Duration::from_micros(control.idle_cpu_us.load(Ordering::Relaxed));
    println!(
        "idle workers: blocked {:.1} ms in total waiting for batches, using {:.3} ms of CPU meanwhile ({:.2}%)",
        idle_wall.as_secs_f64() * 1e3,
        idle_cpu.as_secs_f64() * 1e3,
        100.0 * idle_cpu.as_secs_f64() / idle_wall.as_secs_f64().max(1e-9)
    );
    println!(
        "all workers (getrusage RUSAGE_CHILDREN): {:.1} ms of CPU in total, reading included",
        children_cpu()
            .saturating_sub(children_cpu_before)
            .as_secs_f64()
            * 1e3
    );
    Ok(())
}

fn worker(data: &str, ctl: &str) -> Result<(), Box<dyn std::error::Error>> {
    let bump = BumpAllocator::open(data)?;
    let control_seg = FreeListAllocator::open(ctl)?;
    let control = control_seg.root::<Control>("control")?;
    let mut seen = 0;
    let mut previous: Option<ArenaPtr<Record>> = None;
    let (mut idle_wall, mut idle_cpu) = (Duration::ZERO, Duration::ZERO);
    loop {
        let (wall0, cpu0) = (Instant::now(), cpu_now());
        wait_until(&control.published, "no new batch", || {
            control.seq.load(Ordering::Acquire) > seen || control.done.load(Ordering::Acquire) == 1
        })?;
        idle_wall += wall0.elapsed();
        idle_cpu += cpu_now().saturating_sub(cpu0);
        let k = control.seq.load(Ordering::Acquire);
        if k == seen {
            break; // done
        }
        if let Some(old) = previous {
            // The coordinator reset the arena before publishing batch k.
            match old.read(&bump) {
                Err(e) if e.is_stale() => {
                    control.stale.fetch_add(1, Ordering::Relaxed);
                }
                other => {
                    return Err(
                        format!("old handle not stale: {:?}", other.map(|v| v.len())).into(),
                    )
                }
            }
        }
        let h = ArenaPtr::<Record>::from_parts(
            control.off.load(Ordering::Relaxed),
            control.epoch.load(Ordering::Relaxed),
            control.len.load(Ordering::Relaxed),
        );
        let records = h.read(&bump)?; // validated copy, epoch re-checked after
        for (i, r) in records.iter().enumerate() {
            assert_eq!((r.id, r.batch), (i as u64, k));
            assert_eq!(r.values[5], (i as u64 * k) as u32);
        }
        previous = Some(h);
        seen = k;
        control.acks.fetch_add(1, Ordering::AcqRel);
        control.acked.notify_all();
    }
    control
        .idle_wall_us
        .fetch_add(idle_wall.as_micros() as u64, Ordering::Relaxed);
    control
        .idle_cpu_us
        .fetch_add(idle_cpu.as_micros() as u64, Ordering::Relaxed);
    Ok(())
}
