//! One producer and N consumer processes sharing batches of archived records
//! through a bump allocator that is reset after every batch.
//!
//! Per batch, the producer serializes about 1 MiB of records straight into the
//! shared arena ([`Arena::archive_with_capacity`]: one pass, sized by the
//! previous batch) and sends each consumer the 16-byte token (offset and epoch)
//! through that consumer's [`ShmChannel`]. Each consumer validates the archive once
//! ([`ArenaArchiveReader::from_token`]: checksum + bytecheck), reads every field
//! zero-copy, and answers with a digest of the batch through a shared replies
//! channel, which the producer checks. When all consumers have answered, the
//! producer resets the arena: the next batch reuses the same memory, and old tokens
//! would be `Stale`. The channels live in a small free-list segment beside the
//! arena (roots must survive the arena's resets).
//!
//! Everyone blocks on the channels (futexes), nobody polls: before the first batch
//! the consumers sit idle for a moment, and the program prints the CPU time they
//! used while blocked, and the children's totals from `getrusage(RUSAGE_CHILDREN)`.
//!
//! ```text
//! cargo run --release --example rkyv_pipeline -- [consumers=3] [batches=200]
//! ```

use std::process::Command;
use std::time::{Duration, Instant};

use rkyv::{Archive, Serialize};
use shared_allocator::archive::{ArenaArchiveReader, ArenaArchiveToken};
use shared_allocator::channel::RecvTimeoutError;
use shared_allocator::prelude::*;
use shared_allocator::segment::UnlinkGuard;

#[derive(Archive, Serialize, Debug, Clone)]
struct Batch {
    seq: u64,
    records: Vec<Record>,
}

#[path = "../tests/support/records.rs"]
mod records;
use records::{record, ArchivedKind, Kind, Record};

/// FNV-style mixing of every field, the same over native and archived records.
fn mix(h: u64, x: u64) -> u64 {
    (h ^ x).wrapping_mul(0x0000_0100_0000_01b3)
}
fn mix_str(h: u64, s: &str) -> u64 {
    s.bytes()
        .fold(mix(h, s.len() as u64), |h, b| mix(h, b.into()))
}

fn digest_native(b: &Batch) -> u64 {
    let mut h = mix(0xcbf2_9ce4_8422_2325, b.seq);
    for r in &b.records {
        h = mix(h, r.id);
        h = mix_str(h, &r.name);
        h = r.values.iter().fold(h, |h, v| mix(h, (*v).into()));
        h = mix(h, r.score.to_bits());
        h = match &r.kind {
            Kind::Empty => mix(h, 0),
            Kind::Label(s) => mix_str(mix(h, 1), s),
            Kind::Point { x, y } => mix(mix(mix(h, 2), *x as u64), *y as u64),
            Kind::Tags(t) => t.iter().fold(mix(h, 3), |h, s| mix_str(h, s)),
        };
        h = match &r.note {
            Some(s) => mix_str(mix(h, 1), s),
            None => mix(h, 0),
        };
    }
    h
}

fn digest_archived(b: &ArchivedBatch) -> u64 {
    let mut h = mix(0xcbf2_9ce4_8422_2325, b.seq.to_native());
    for r in b.records.iter() {
        h = mix(h, r.id.to_native());
        h = mix_str(h, &r.name);
        h = r.values.iter().fold(h, |h, v| mix(h, v.to_native().into()));
        h = mix(h, r.score.to_native().to_bits());
        h = match &r.kind {
            ArchivedKind::Empty => mix(h, 0),
            ArchivedKind::Label(s) => mix_str(mix(h, 1), s),
            ArchivedKind::Point { x, y } => {
                mix(mix(mix(h, 2), x.to_native() as u64), y.to_native() as u64)
            }
            ArchivedKind::Tags(t) => t.iter().fold(mix(h, 3), |h, s| mix_str(h, s)),
        };
        h = match r.note.as_ref() {
            Some(s) => mix_str(mix(h, 1), s),
            None => mix(h, 0),
        };
    }
    h
}

/// One consumer's tokens: `[offset, epoch]` of an archived batch.
type Tokens = ShmChannel<[u64; 2], 4>;
/// Replies: `[consumer, digest, validate_us, read_us, idle_wall_us, idle_cpu_us]`.
type Replies = ShmChannel<[u64; 6], 64>;

/// How long anyone waits for another process before giving up.
const WATCHDOG: Duration = Duration::from_secs(60);

fn tokens_root(i: usize) -> String {
    format!("tokens-{i}")
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
    if args.get(1).map(String::as_str) == Some("consumer") {
        return consumer(&args[2], &args[3], args[4].parse()?);
    }
    let consumers: usize = args.get(1).map_or(Ok(3), |s| s.parse())?;
    let batches: u64 = args.get(2).map_or(Ok(200), |s| s.parse())?;

    // About 1 MiB of archived records per batch.
    let mut batch = Batch {
        seq: 0,
        records: (0..9_000).map(record).collect(),
    };
    let name = format!("rkyv-pipeline-{}", std::process::id());
    let ctl_name = format!("rkyv-pipeline-ctl-{}", std::process::id());
    let mut bump = BumpAllocator::create(&name, 8 << 20)?;
    let ctl = FreeListAllocator::create(&ctl_name, 1 << 20)?;
    let _cleanup = (UnlinkGuard::new(&name), UnlinkGuard::new(&ctl_name));
    let senders = (0..consumers)
        .map(|i| Ok(ctl.root::<Tokens>(&tokens_root(i))?.sender()?))
        .collect::<Result<Vec<_>, Box<dyn std::error::Error>>>()?;
    let replies = ctl.root::<Replies>("replies")?.receiver()?;

    let children_cpu_before = children_cpu(); // a baseline: only our consumers count
    let mut kids = (0..consumers)
        .map(|i| {
            Command::new(std::env::current_exe()?)
                .args(["consumer", &name, &ctl_name, &i.to_string()])
                .spawn()
        })
        .collect::<Result<Vec<_>, std::io::Error>>()?;
    // The consumers start and block on their empty channels: let them sit idle.
    std::thread::sleep(Duration::from_millis(300));

    let mut capacity = 0;
    let (mut bytes, mut archive_time, mut consumer_validate_us, mut consumer_read_us) =
        (0u64, Duration::ZERO, 0u64, 0u64);
    let mut idle = vec![(0u64, 0u64); consumers];
    let start = Instant::now();
    for seq in 0..batches {
        batch.seq = seq;
        let expected = digest_native(&batch);
        let mut arena = bump.arena();

        let t = Instant::now();
        let archive = arena.archive_with_capacity(&batch, capacity)?;
        archive_time += t.elapsed();
        capacity = archive.len();
        bytes += archive.len() as u64;
        let token = archive.into_token().to_raw();

        for tx in &senders {
            tx.send_timeout(token, WATCHDOG)?;
        }
        for _ in 0..consumers {
            let [i, digest, validate_us, read_us, idle_wall_us, idle_cpu_us] =
                replies.recv_timeout(WATCHDOG)?;
            assert_eq!(digest, expected, "consumer {i}: batch {seq} digest differs");
            consumer_validate_us += validate_us;
            consumer_read_us += read_us;
            idle[i as usize] = (idle_wall_us, idle_cpu_us);
        }
        arena.reset()?; // everyone is done with this batch
    }
    let wall = start.elapsed();
    drop(senders); // Disconnected: the consumers exit
    for kid in &mut kids {
        // Consumers give up on their own after the watchdog time, so this ends.
        if !kid.wait()?.success() {
            return Err("a consumer failed".into());
        }
    }
    let consumers_cpu = children_cpu().saturating_sub(children_cpu_before);

    let mib = bytes as f64 / (1 << 20) as f64;
    let records = batches * batch.records.len() as u64;
    let reads = (batches * consumers as u64) as f64;
    println!(
        "{batches} batches of {} records ({:.2} MiB archived each), {consumers} consumers",
        batch.records.len(),
        mib / batches as f64
    );
    println!(
        "end to end: {:.1} batches/s, {:.0} records/s, {:.0} MiB/s produced, {:.0} MiB/s consumed (all consumers)",
        batches as f64 / wall.as_secs_f64(),
        records as f64 / wall.as_secs_f64(),
        mib / wall.as_secs_f64(),
        mib * consumers as f64 / wall.as_secs_f64()
    );
    println!(
        "producer: archive into shm {:.0} us/batch ({:.0} MiB/s)",
        archive_time.as_secs_f64() * 1e6 / batches as f64,
        mib / archive_time.as_secs_f64()
    );
    println!(
        "consumer: validate {:.0} us/batch, read every field {:.0} us/batch",
        consumer_validate_us as f64 / reads,
        consumer_read_us as f64 / reads
    );
    let idle_wall: u64 = idle.iter().map(|i| i.0).sum();
    let idle_cpu: u64 = idle.iter().map(|i| i.1).sum();
    println!(
        "idle consumers: blocked {:.1} ms in total waiting for tokens, using {:.3} ms of CPU meanwhile ({:.2}%)",
        idle_wall as f64 / 1e3,
        idle_cpu as f64 / 1e3,
        100.0 * idle_cpu as f64 / (idle_wall as f64).max(1.0)
    );
    println!(
        "all consumers (getrusage RUSAGE_CHILDREN): {:.1} ms of CPU in total, validation and reads included",
        consumers_cpu.as_secs_f64() * 1e3
    );
    Ok(())
}

fn consumer(name: &str, ctl_name: &str, index: u64) -> Result<(), Box<dyn std::error::Error>> {
    let bump = BumpAllocator::open(name)?;
    let ctl = FreeListAllocator::open(ctl_name)?;
    let tokens = ctl
        .root::<Tokens>(&tokens_root(index as usize))?
        .receiver()?;
    let replies = ctl.root::<Replies>("replies")?.sender()?;
    let (mut idle_wall, mut idle_cpu) = (Duration::ZERO, Duration::ZERO);
    loop {
        let (wall0, cpu0) = (Instant::now(), cpu_now());
        let raw = match tokens.recv_timeout(WATCHDOG) {
            Ok(raw) => raw,
            Err(RecvTimeoutError::Disconnected) => return Ok(()), // the producer is done
            Err(e) => return Err(e.into()),
        };
        idle_wall += wall0.elapsed();
        idle_cpu += cpu_now().saturating_sub(cpu0);
        let token = ArenaArchiveToken::<Batch>::from_raw(raw);

        let t = Instant::now();
        let reader = ArenaArchiveReader::from_token(&bump, token)?; // validates once
        let validate = t.elapsed();
        let t = Instant::now();
        let digest = digest_archived(reader.access()?); // zero-copy
        let read = t.elapsed();
        let reply = [
            index,
            digest,
            validate.as_micros() as u64,
            read.as_micros() as u64,
            idle_wall.as_micros() as u64,
            idle_cpu.as_micros() as u64,
        ];
        replies.send_timeout(reply, WATCHDOG)?;
    }
}
