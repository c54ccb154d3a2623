//! Latest-only snapshots (mmap-sync's shape): a writer publishes a new snapshot
//! of a table as fast as it can, never waiting for readers; reader processes
//! always see the newest complete one, zero-copy and validated, and skip the
//! ones they missed (each snapshot says how many: `skipped`). A snapshot's memory
//! is reused only once no reader holds it.
//!
//! Readers block on a futex while nothing new is published: before the first
//! snapshot they sit idle, and print the CPU time they used meanwhile.
//!
//! ```text
//! cargo run --release --example arena_pipeline -- [readers=2] [snapshots=2000]
//! ```

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rkyv::{Archive, Serialize};
use shared_allocator::archive::{Delivery, PipelineOptions, Publisher, Subscriber};

#[derive(Archive, Serialize)]
struct Snapshot {
    version: u64,
    prices: Vec<(u64, f64)>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("reader") {
        return reader(&args[2]);
    }
    let readers: usize = args.get(1).map_or(Ok(2), |s| s.parse())?;
    let snapshots: u64 = args.get(2).map_or(Ok(2000), |s| s.parse())?;
    let name = format!("arena-pipeline-{}", std::process::id());
    let mut publisher =
        Publisher::<Snapshot>::create(&name, PipelineOptions::new(Delivery::Latest))?;
    let kids = (0..readers)
        .map(|_| {
            let exe = std::env::current_exe()?;
            Command::new(exe)
                .args(["reader", &name])
                .stdout(Stdio::piped())
                .spawn()
        })
        .collect::<Result<Vec<_>, _>>()?;
    while publisher.subscribers() < readers {
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(300)); // the readers sit idle

    let start = Instant::now();
    let mut snap = Snapshot {
        version: 0,
        prices: (0..10_000).map(|i| (i, 0.0)).collect(),
    };
    for version in 1..=snapshots {
        snap.version = version;
        snap.prices
            .iter_mut()
            .for_each(|p| p.1 = (p.0 * version) as f64);
        publisher.publish(&snap)?; // never waits for a reader
    }
    let wall = start.elapsed();
    publisher.close()?; // every reader gets the last snapshot, then the end
    println!(
        "{snapshots} snapshots in {:.1} ms, {readers} readers",
        wall.as_secs_f64() * 1e3
    );
    for kid in kids {
        print!(
            "reader: {}",
            String::from_utf8(kid.wait_with_output()?.stdout)?
        );
    }
    Ok(())
}

fn reader(name: &str) -> Result<(), Box<dyn std::error::Error>> {
    let mut sub = Subscriber::<Snapshot>::open(name)?;
    let (wall, cpu) = (Instant::now(), cpu_now());
    let (mut seen, mut last, mut idle) = (0u64, 0u64, None);
    while let Some(snap) = sub.recv_timeout(Duration::from_secs(60))? {
        idle.get_or_insert((wall.elapsed(), cpu_now() - cpu));
        let v = snap.version.to_native();
        assert_eq!(
            v,
            last + 1 + snap.skipped(),
            "every snapshot seen or counted"
        );
        for p in snap.prices.iter() {
            assert_eq!(
                p.1.to_native(),
                (p.0.to_native() * v) as f64,
                "a torn snapshot"
            );
        }
        (seen, last) = (seen + 1, v);
    }
    let (wall, cpu) = idle.unwrap_or_default();
    println!("saw {seen} snapshots (every one complete), skipped {}, the last v{last}; idle {:.1} ms using {:.3} ms CPU ({:.2}%)",
        sub.skipped(), wall.as_secs_f64() * 1e3, cpu.as_secs_f64() * 1e3, 100.0 * cpu.as_secs_f64() / wall.as_secs_f64().max(1e-9));
    Ok(())
}

/// CPU time (user + system) this process has used.
fn cpu_now() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}
