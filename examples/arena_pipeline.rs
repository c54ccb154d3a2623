//! A coordinator fills a bump arena with one batch of records at a time and resets it
//! between batches; worker processes read each batch through an epoch-carrying
//! handle. After a reset, a handle from the previous batch is `Stale` in every
//! worker, although its bytes now hold the next batch.
//!
//! Two segments: the bump arena for batch data, and a small free-list segment for the
//! control block (a named root), which must survive the arena's resets.
//!
//! ```text
//! cargo run --release --example arena_pipeline
//! ```

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

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
}

const WORKERS: usize = 3;
const BATCHES: u64 = 50;
const RECORDS: usize = 10_000;
const WATCHDOG: Duration = Duration::from_secs(60);

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) -> Result<(), String> {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > WATCHDOG {
            return Err(format!("watchdog: {what}"));
        }
        std::thread::yield_now();
    }
    Ok(())
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
    let control: &Control = control_seg.root("control")?;

    let mut kids = Vec::new();
    for _ in 0..WORKERS {
        kids.push(
            Command::new(std::env::current_exe()?)
                .args(["worker", &data, &ctl])
                .spawn()?,
        );
    }

    let start = Instant::now();
    let mut arena = bump.arena();
    for k in 1..=BATCHES {
        arena.reset(); // nothing from the arena is alive here: this compiles
        let records: Vec<Record> = (0..RECORDS as u64)
            .map(|i| Record {
                id: i,
                batch: k,
                values: [(i * k) as u32; 6],
            })
            .collect();
        let h = arena.alloc_slice(&records)?.handle();
        control.off.store(h.offset().get(), Ordering::Relaxed);
        control.epoch.store(h.epoch(), Ordering::Relaxed);
        control.len.store(h.len() as u64, Ordering::Relaxed);
        control.seq.store(k, Ordering::Release);
        // Protocol: reset only once every worker has finished reading this batch.
        wait_until("workers did not acknowledge a batch", || {
            control.acks.load(Ordering::Acquire) >= k * WORKERS as u64
        })?;
    }
    control.done.store(1, Ordering::Release);
    let elapsed = start.elapsed();

    for mut kid in kids {
        wait_until("worker did not exit", || {
            matches!(kid.try_wait(), Ok(Some(_)))
        })?;
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
    Ok(())
}

fn worker(data: &str, ctl: &str) -> Result<(), Box<dyn std::error::Error>> {
    let bump = BumpAllocator::open(data)?;
    let control_seg = FreeListAllocator::open(ctl)?;
    let control: &Control = control_seg.root("control")?;
    let mut seen = 0;
    let mut previous: Option<ArenaPtr<Record>> = None;
    loop {
        wait_until("no new batch", || {
            control.seq.load(Ordering::Acquire) > seen || control.done.load(Ordering::Acquire) == 1
        })?;
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
    }
    Ok(())
}
