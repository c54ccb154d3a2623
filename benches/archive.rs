//! Reading a 1 MiB batch of archived records: shared memory versus a Unix socket.
//!
//! ```text
//! cargo bench --bench archive
//! ```
//!
//! - `a_shm_first_access_validated`: a reader takes the token of an archive in
//!   shared memory (through its own mapping, as another process would) and
//!   validates it: header, XXH3 checksum, bytecheck. Then reads the root.
//! - `b_shm_later_access`: the same reader handle accessed again: it remembers
//!   the validation, so this is a liveness check and a pointer cast.
//! - `c_socket_then_validated`: what users do today: the same archive bytes
//!   sent over a Unix socket (length prefix + bytes) into a reused aligned
//!   buffer, then `rkyv::access` (bytecheck; no checksum).
//!
//! For reference, the writer side: `w_new_in_two_pass` (measure, then write in
//! place), `w_new_in_with_capacity` (one pass with a good capacity hint), and
//! `w_to_bytes_aligned_vec` (rkyv's own `to_bytes` into a heap `AlignedVec`).
//!
//! Medians are in `target/criterion/archive_1MiB/*/new/estimates.json`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rkyv::rancor;
use rkyv::util::AlignedVec;
use rkyv::Archived;
use shared_allocator::__layout::HEADER_LEN;
use shared_allocator::archive::{ArchiveToken, ShmArchive};
use shared_allocator::prelude::*;
use shared_allocator::segment::UnlinkGuard;

#[path = "../tests/support/records.rs"]
mod records;
use records::{record, Record};

/// A batch whose archive is about 1 MiB.
fn batch() -> Vec<Record> {
    let probe: Vec<Record> = (0..1000).map(record).collect();
    let per = rkyv::to_bytes::<rancor::Error>(&probe).unwrap().len() as f64 / 1000.0;
    let n = ((1 << 20) as f64 / per) as u64;
    (0..n).map(record).collect()
}

fn bench(c: &mut Criterion) {
    let name = format!("sa-bench-archive-{}", std::process::id());
    let writer = FreeListAllocator::create(&name, 64 << 20).unwrap();
    let _cleanup = UnlinkGuard::new(&name);
    let reader = FreeListAllocator::open(&name).unwrap();

    let batch = batch();
    let archive = ShmArchive::new_in(&writer, &batch).unwrap();
    let len = archive.len();
    let token: ArchiveToken<Vec<Record>> = archive.into_token();
    eprintln!("batch: {} records, archive {len} bytes", batch.len());

    // The same bytes, for the socket path.
    let bytes = writer
        .read(Offset::new(token.offset().get() + HEADER_LEN), len)
        .unwrap();
    let (mut rx, mut tx) = UnixStream::pair().unwrap();
    let sender = std::thread::spawn(move || {
        let mut req = [0u8; 1];
        while tx.read_exact(&mut req).is_ok() && req[0] == 1 {
            tx.write_all(&(bytes.len() as u64).to_le_bytes()).unwrap();
            tx.write_all(&bytes).unwrap();
        }
    });

    let mut g = c.benchmark_group("archive_1MiB");
    g.throughput(Throughput::Bytes(len as u64));
    g.warm_up_time(Duration::from_secs(2));
    g.measurement_time(Duration::from_secs(6));

    // Each hand-over spends its token: every iteration gives the archive back
    // with a fresh one, for the next.
    let token = std::cell::Cell::new(token);
    g.bench_function("a_shm_first_access_validated", |b| {
        b.iter(|| {
            let a = ShmArchive::from_token(&reader, token.get()).unwrap();
            std::hint::black_box(a.access().unwrap().len());
            token.set(a.into_token()); // give it back without freeing
        })
    });

    let held = ShmArchive::from_token(&reader, token.get()).unwrap();
    g.bench_function("b_shm_later_access", |b| {
        b.iter(|| std::hint::black_box(held.access().unwrap().len()))
    });
    let token = held.into_token();

    let mut buf = AlignedVec::<16>::with_capacity(len + 64);
    g.bench_function("c_socket_then_validated", |b| {
        b.iter(|| {
            rx.write_all(&[1]).unwrap();
            let mut n = [0u8; 8];
            rx.read_exact(&mut n).unwrap();
            let n = u64::from_le_bytes(n) as usize;
            buf.clear();
            buf.resize(n, 0);
            rx.read_exact(&mut buf).unwrap();
            let a = rkyv::access::<Archived<Vec<Record>>, rancor::Error>(&buf).unwrap();
            std::hint::black_box(a.len())
        })
    });
    rx.write_all(&[0]).unwrap();
    sender.join().unwrap();

    g.sample_size(20);
    g.bench_function("w_new_in_two_pass", |b| {
        b.iter(|| ShmArchive::new_in(&writer, &batch).unwrap().len())
    });
    g.bench_function("w_new_in_with_capacity", |b| {
        b.iter(|| {
            ShmArchive::new_in_with_capacity(&writer, &batch, len)
                .unwrap()
                .len()
        })
    });
    g.bench_function("w_to_bytes_aligned_vec", |b| {
        b.iter(|| rkyv::to_bytes::<rancor::Error>(&batch).unwrap().len())
    });
    g.finish();

    drop(ShmArchive::from_token(&writer, token).unwrap());
}

criterion_group!(benches, bench);
criterion_main!(benches);
