//! Batch pipelines against the same batches over Unix sockets and pipes, in one run.
//!
//! ```text
//! cargo bench --bench pipeline -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! - `pipeline_10mib_2_subscribers/{pipeline,unix_socket}`: per-batch time of a
//!   ~10 MiB batch (100k records: a string and eight `f64`) delivered to 2 reader
//!   processes that validate it and read every field. Pipeline: `Every` mode, the
//!   writer serialises into shared memory. Sockets: the writer `rkyv::to_bytes`,
//!   writes the bytes to each reader's socket; each reader reads them into an
//!   aligned buffer, validates and reads every field, and acks with one byte.
//! - `writer_10mib/{publish,rkyv_to_bytes}`: the writer's cost alone (no subscriber).
//! - `reader_10mib/{validate,digest,copy}`: where a reader's time goes (bytecheck,
//!   reading every field, and the copy a socket reader adds).
//! - `latency_1kib/{latest_pipeline_round_trip,pipe_round_trip}`: a 1 KiB batch to a
//!   reader process and back (publish-to-visible is about half the round trip).
//!
//! Reader processes are this binary re-executed with a role in the environment.

use std::hint::black_box;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion, Throughput};
use rkyv::{Archive, Serialize};
use shared_allocator::archive::{Delivery, PipelineOptions, Publisher, Subscriber};

const ROLE: &str = "SA_PIPE_BENCH_ROLE";
const NAME: &str = "SA_PIPE_BENCH_NAME";

#[derive(Archive, Serialize)]
struct Rec {
    name: String,
    v: [f64; 8],
}

#[derive(Archive, Serialize)]
struct Big {
    seq: u64,
    recs: Vec<Rec>,
}

#[derive(Archive, Serialize)]
struct Small {
    seq: u64,
    payload: Vec<u8>,
}

fn big() -> Big {
    Big {
        seq: 0,
        recs: (0..100_000)
            .map(|i| Rec {
                name: format!("record-{i:08}-with-a-name"),
                v: [i as f64; 8],
            })
            .collect(),
    }
}

/// Reads every field.
fn digest(b: &ArchivedBig) -> u64 {
    b.recs.iter().fold(b.seq.to_native(), |h, r| {
        let h = r
            .name
            .bytes()
            .fold(h, |h, x| h.rotate_left(5) ^ u64::from(x));
        r.v.iter()
            .fold(h, |h, x| h.rotate_left(3) ^ x.to_native().to_bits())
    })
}

struct Kids(Vec<Child>);
impl Drop for Kids {
    fn drop(&mut self) {
        for k in &mut self.0 {
            let _ = k.kill();
            let _ = k.wait();
        }
    }
}

fn spawn(role: &str, name: &str, stdin: Stdio, stdout: Stdio) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .env(ROLE, role)
        .env(NAME, name)
        .stdin(stdin)
        .stdout(stdout)
        .spawn()
        .unwrap()
}

fn unique(tag: &str) -> String {
    format!("sa-bench-pipe-{tag}-{}", std::process::id())
}

fn wait_subs<T: shared_allocator::archive::PipelineBatch>(p: &Publisher<T>, n: usize) {
    let start = Instant::now();
    while p.subscribers() < n {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "readers did not join"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn big_batches(c: &mut Criterion) {
    let mut batch = big();
    let len = rkyv::to_bytes::<rkyv::rancor::Error>(&batch).unwrap().len();
    let mut g = c.benchmark_group("pipeline_10mib_2_subscribers");
    g.throughput(Throughput::Bytes(len as u64)).sample_size(10);

    let name = unique("big");
    let mut opts = PipelineOptions::new(Delivery::Every);
    opts.region_capacity = len + (1 << 20);
    opts.timeout = Duration::from_secs(60);
    let mut p = Publisher::<Big>::create(&name, opts).unwrap();
    let kids = Kids(
        (0..2)
            .map(|_| spawn("sub", &name, Stdio::null(), Stdio::null()))
            .collect(),
    );
    wait_subs(&p, 2);
    g.bench_function("pipeline", |b| {
        b.iter_custom(|n| {
            let t = Instant::now();
            for _ in 0..n {
                batch.seq += 1;
                p.publish(&batch).unwrap();
            }
            p.flush().unwrap(); // both readers have read everything
            t.elapsed()
        })
    });
    p.close().unwrap();
    drop(kids);

    let mut socks = Vec::new();
    let mut kids = Kids(Vec::new());
    for _ in 0..2 {
        let (mine, theirs) = UnixStream::pair().unwrap();
        let fd: std::os::fd::OwnedFd = theirs.into();
        kids.0
            .push(spawn("sock", "", Stdio::from(fd), Stdio::null()));
        socks.push(mine);
    }
    g.bench_function("unix_socket", |b| {
        b.iter_custom(|n| {
            let t = Instant::now();
            for _ in 0..n {
                batch.seq += 1;
                let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&batch).unwrap();
                for s in &mut socks {
                    s.write_all(&(bytes.len() as u64).to_le_bytes()).unwrap();
                    s.write_all(&bytes).unwrap();
                }
            }
            for s in &mut socks {
                let mut acks = vec![0u8; n as usize];
                s.read_exact(&mut acks).unwrap();
            }
            t.elapsed()
        })
    });
    drop(socks);
    drop(kids);
    g.finish();

    let mut g = c.benchmark_group("writer_10mib");
    g.throughput(Throughput::Bytes(len as u64)).sample_size(10);
    let name = unique("writer");
    let mut opts = PipelineOptions::new(Delivery::Every);
    opts.region_capacity = len + (1 << 20);
    let mut p = Publisher::<Big>::create(&name, opts).unwrap();
    g.bench_function("publish", |b| {
        b.iter(|| p.publish(black_box(&batch)).unwrap())
    });
    g.bench_function("rkyv_to_bytes", |b| {
        b.iter(|| rkyv::to_bytes::<rkyv::rancor::Error>(black_box(&batch)).unwrap())
    });
    drop(p);
    g.finish();
}

/// Where a reader's time goes: validation (bytecheck) and reading every field,
/// and the copy a socket reader makes.
fn reader_parts(c: &mut Criterion) {
    let batch = big();
    let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&batch).unwrap();
    let mut g = c.benchmark_group("reader_10mib");
    g.throughput(Throughput::Bytes(bytes.len() as u64))
        .sample_size(10);
    g.bench_function("validate", |b| {
        b.iter(|| rkyv::access::<ArchivedBig, rkyv::rancor::Error>(black_box(&bytes)).is_ok())
    });
    g.bench_function("digest", |b| {
        // SAFETY: `bytes` is what `rkyv::to_bytes` made of a `Big` just above.
        let a = unsafe { rkyv::access_unchecked::<ArchivedBig>(&bytes) };
        b.iter(|| digest(black_box(a)))
    });
    let mut copy = rkyv::util::AlignedVec::<16>::new();
    copy.resize(bytes.len(), 0);
    g.bench_function("copy", |b| {
        b.iter(|| copy.copy_from_slice(black_box(&bytes)))
    });
    g.finish();
}

fn latency(c: &mut Criterion) {
    let mut g = c.benchmark_group("latency_1kib");
    let mut small = Small {
        seq: 0,
        payload: vec![7; 1000],
    };

    let (ping, pong) = (unique("ping"), unique("pong"));
    let opts = PipelineOptions::new(Delivery::Latest);
    let mut p = Publisher::<Small>::create(&ping, opts.clone()).unwrap();
    let kids = Kids(vec![spawn("echo", &ping, Stdio::null(), Stdio::null())]);
    wait_subs(&p, 1);
    let mut back = loop {
        match Subscriber::<Small>::open(&pong) {
            Ok(s) => break s,
            Err(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    };
    g.bench_function("latest_pipeline_round_trip", |b| {
        b.iter(|| {
            small.seq += 1;
            p.publish(&small).unwrap();
            loop {
                let r = back.recv_timeout(Duration::from_secs(10)).unwrap().unwrap();
                if r.seq.to_native() == small.seq {
                    break;
                }
            }
        })
    });
    p.close().unwrap(); // the echo process sees the end and closes its side
    drop(back);
    let mut kids = kids;
    for k in &mut kids.0 {
        let _ = k.wait();
    }
    let _ = shared_allocator::unlink(&pong); // had it died first
    let _ = shared_allocator::unlink(&format!("{pong}-d1"));

    let mut kid = spawn("pipe", "", Stdio::piped(), Stdio::piped());
    let (mut to, mut from) = (kid.stdin.take().unwrap(), kid.stdout.take().unwrap());
    let _kids = Kids(vec![kid]);
    let msg = [7u8; 1024];
    let mut buf = [0u8; 1024];
    g.bench_function("pipe_round_trip", |b| {
        b.iter(|| {
            to.write_all(&msg).unwrap();
            from.read_exact(&mut buf).unwrap();
        })
    });
    drop(to);
    g.finish();
}

fn child(role: &str) {
    let name = std::env::var(NAME).unwrap();
    match role {
        "sub" => {
            let mut s = Subscriber::<Big>::open(&name).unwrap();
            while let Some(b) = s.recv_timeout(Duration::from_secs(120)).unwrap() {
                black_box(digest(&b));
            }
        }
        "sock" => {
            use std::os::fd::FromRawFd;
            // SAFETY: fd 0 is the socket the parent passed as stdin; this process
            // owns it from here on and nothing else uses fd 0.
            let mut s = unsafe { UnixStream::from_raw_fd(0) };
            let mut buf = rkyv::util::AlignedVec::<16>::new();
            let mut len = [0u8; 8];
            while s.read_exact(&mut len).is_ok() {
                buf.resize(u64::from_le_bytes(len) as usize, 0);
                s.read_exact(&mut buf).unwrap();
                let b = rkyv::access::<ArchivedBig, rkyv::rancor::Error>(&buf).unwrap();
                black_box(digest(b));
                s.write_all(&[1]).unwrap();
            }
        }
        "echo" => {
            let pong = name.replace("ping", "pong");
            let mut s = Subscriber::<Small>::open(&name).unwrap();
            let mut p =
                Publisher::<Small>::create(&pong, PipelineOptions::new(Delivery::Latest)).unwrap();
            wait_subs(&p, 1);
            let mut reply = Small {
                seq: 0,
                payload: vec![1; 1000],
            };
            while let Ok(Some(b)) = s.recv_timeout(Duration::from_secs(120)) {
                reply.seq = b.seq.to_native();
                drop(b);
                p.publish(&reply).unwrap();
            }
        }
        "pipe" => {
            let (mut i, mut o) = (std::io::stdin().lock(), std::io::stdout().lock());
            let mut buf = [0u8; 1024];
            while i.read_exact(&mut buf).is_ok() {
                o.write_all(&buf).unwrap();
                o.flush().unwrap();
            }
        }
        other => panic!("unknown role {other}"),
    }
}

criterion_group!(benches, big_batches, reader_parts, latency);

fn main() {
    if let Ok(role) = std::env::var(ROLE) {
        return child(&role);
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
