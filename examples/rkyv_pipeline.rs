//! One producer and N consumer processes sharing batches of archived records
//! through a bump allocator that is reset after every batch.
//!
//! Per batch, the producer serializes about 1 MiB of records straight into the
//! shared arena ([`Arena::archive_with_capacity`]: one pass, sized by the
//! previous batch) and sends each consumer the 16-byte token (offset and epoch)
//! over its stdin. Each consumer validates the archive once
//! ([`ArenaArchiveReader::open`]: checksum + bytecheck), reads every field
//! zero-copy, and answers with a digest of the batch, which the producer checks.
//! When all consumers have answered, the producer resets the arena: the next
//! batch reuses the same memory, and old tokens would be `Stale`.
//!
//! ```text
//! cargo run --release --example rkyv_pipeline -- [consumers=3] [batches=200]
//! ```

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use rkyv::{Archive, Serialize};
use shared_allocator::archive::{ArenaArchiveReader, ArenaArchiveToken};
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

struct Consumer {
    child: Child,
    tx: ChildStdin,
    rx: BufReader<ChildStdout>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("consumer") {
        return consumer(&args[2]);
    }
    let consumers: usize = args.get(1).map_or(Ok(3), |s| s.parse())?;
    let batches: u64 = args.get(2).map_or(Ok(200), |s| s.parse())?;

    // About 1 MiB of archived records per batch.
    let mut batch = Batch {
        seq: 0,
        records: (0..9_000).map(record).collect(),
    };
    let name = format!("rkyv-pipeline-{}", std::process::id());
    let mut bump = BumpAllocator::create(&name, 8 << 20)?;
    let _cleanup = UnlinkGuard::new(&name);

    let mut kids: Vec<Consumer> = (0..consumers)
        .map(|_| {
            let mut child = Command::new(std::env::current_exe()?)
                .args(["consumer", &name])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()?;
            let tx = child.stdin.take().expect("piped");
            let rx = BufReader::new(child.stdout.take().expect("piped"));
            Ok(Consumer { child, tx, rx })
        })
        .collect::<Result<_, std::io::Error>>()?;

    let mut capacity = 0;
    let (mut bytes, mut archive_time, mut consumer_validate_us, mut consumer_read_us) =
        (0u64, Duration::ZERO, 0u64, 0u64);
    let start = Instant::now();
    let mut line = String::new();
    for seq in 0..batches {
        batch.seq = seq;
        let expected = digest_native(&batch);
        let mut arena = bump.arena();

        let t = Instant::now();
        let archive = arena.archive_with_capacity(&batch, capacity)?;
        archive_time += t.elapsed();
        capacity = archive.len();
        bytes += archive.len() as u64;
        let [offset, epoch] = archive.into_token().to_raw();

        for k in &mut kids {
            writeln!(k.tx, "{offset} {epoch}")?;
            k.tx.flush()?;
        }
        for (i, k) in kids.iter_mut().enumerate() {
            line.clear();
            k.rx.read_line(&mut line)?;
            let f: Vec<u64> = line
                .split_whitespace()
                .map(|s| s.parse())
                .collect::<Result<_, _>>()?;
            assert_eq!(f.len(), 3, "consumer {i}: bad reply {line:?}");
            assert_eq!(f[0], expected, "consumer {i}: batch {seq} digest differs");
            consumer_validate_us += f[1];
            consumer_read_us += f[2];
        }
        arena.reset(); // everyone is done with this batch
    }
    let wall = start.elapsed();
    for mut k in kids {
        drop(k.tx); // EOF: the consumer exits
        k.child.wait()?;
    }

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
    Ok(())
}

fn consumer(name: &str) -> Result<(), Box<dyn std::error::Error>> {
    let bump = BumpAllocator::open(name)?;
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    for line in stdin.lock().lines() {
        let line = line?;
        let mut f = line.split_whitespace().map(str::parse::<u64>);
        let (Some(offset), Some(epoch)) = (f.next(), f.next()) else {
            return Err(format!("bad token line {line:?}").into());
        };
        let token = ArenaArchiveToken::<Batch>::from_raw([offset?, epoch?]);

        let t = Instant::now();
        let reader = ArenaArchiveReader::open(&bump, token)?; // validates once
        let validate = t.elapsed();
        let t = Instant::now();
        let digest = digest_archived(reader.access()?); // zero-copy
        let read = t.elapsed();
        writeln!(
            out,
            "{digest} {} {}",
            validate.as_micros(),
            read.as_micros()
        )?;
        out.flush()?;
    }
    Ok(())
}
