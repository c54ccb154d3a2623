//! One producer and N consumer processes sharing batches of archived records
//! through a [`Publisher`] / [`Subscriber`] pipeline (every batch to every
//! consumer, zero-copy, no protocol of our own).
//!
//! The producer serialises about 1 MiB of records per batch straight into shared
//! memory; each consumer gets a validated `&ArchivedBatch` and digests every field
//! in place. The publisher reuses a batch's region once every consumer dropped it,
//! and fills the next region meanwhile. Consumers block on a futex: before the
//! first batch they sit idle, and print the CPU time they used while waiting.
//!
//! ```text
//! cargo run --release --example rkyv_pipeline -- [consumers=3] [batches=200]
//! ```

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rkyv::{Archive, Serialize};
use shared_allocator::archive::{Delivery, PipelineOptions, Publisher, Subscriber};

#[path = "../tests/support/records.rs"]
mod records;
use records::{record, Record};

#[derive(Archive, Serialize)]
struct Batch {
    seq: u64,
    records: Vec<Record>,
}

fn mix(h: u64, x: u64) -> u64 {
    (h ^ x).wrapping_mul(0x0000_0100_0000_01b3)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("consumer") {
        return consumer(&args[2]);
    }
    let consumers: usize = args.get(1).map_or(Ok(3), |s| s.parse())?;
    let batches: u64 = args.get(2).map_or(Ok(200), |s| s.parse())?;
    let name = format!("rkyv-pipeline-{}", std::process::id());
    let mut publisher = Publisher::<Batch>::create(&name, PipelineOptions::new(Delivery::Every))?;
    let kids = (0..consumers)
        .map(|_| {
            let exe = std::env::current_exe()?;
            Command::new(exe)
                .args(["consumer", &name])
                .stdout(Stdio::piped())
                .spawn()
        })
        .collect::<Result<Vec<_>, _>>()?;
    while publisher.subscribers() < consumers {
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(300)); // the consumers sit idle

    let mut batch = Batch {
        seq: 0,
        records: (0..9_000).map(record).collect(),
    };
    let (mut expected, start) = (0u64, Instant::now());
    for seq in 0..batches {
        batch.seq = seq;
        expected = batch.records.iter().fold(mix(expected, seq), |h, r| {
            mix(mix(h, r.id), r.name.len() as u64)
        });
        publisher.publish(&batch)?; // serialised once, in place
    }
    publisher.close()?; // waits until every consumer has every batch
    let wall = start.elapsed();
    println!(
        "{batches} batches of {} records, {consumers} consumers: {:.1} batches/s end to end",
        batch.records.len(),
        batches as f64 / wall.as_secs_f64()
    );
    for kid in kids {
        let out = String::from_utf8(kid.wait_with_output()?.stdout)?;
        let digest: u64 = out.split_whitespace().nth(1).ok_or("no output")?.parse()?;
        assert_eq!(digest, expected, "a consumer's digest differs");
        print!("consumer (digest checked): {out}");
    }
    Ok(())
}

fn consumer(name: &str) -> Result<(), Box<dyn std::error::Error>> {
    let mut sub = Subscriber::<Batch>::open(name)?;
    let (wall, cpu) = (Instant::now(), cpu_now());
    let (mut digest, mut idle) = (0u64, None);
    while let Some(batch) = sub.recv_timeout(Duration::from_secs(60))? {
        idle.get_or_insert((wall.elapsed(), cpu_now() - cpu));
        digest = batch
            .records
            .iter()
            .fold(mix(digest, batch.seq.to_native()), |h, r| {
                mix(mix(h, r.id.to_native()), r.name.len() as u64)
            });
    }
    let (wall, cpu) = idle.unwrap_or_default();
    println!(
        "digest {digest} - idle {:.1} ms using {:.3} ms CPU ({:.2}%)",
        wall.as_secs_f64() * 1e3,
        cpu.as_secs_f64() * 1e3,
        100.0 * cpu.as_secs_f64() / wall.as_secs_f64().max(1e-9)
    );
    Ok(())
}

/// CPU time (user + system) this process has used.
fn cpu_now() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}
