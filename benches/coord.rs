//! Coordination benchmarks: wake-ups between processes, channel throughput, and the
//! uncontended mutex.
//!
//! ```text
//! cargo bench --bench coord
//! ```
//!
//! - `roundtrip/*`: a ping-pong between this process and a child (this binary
//!   re-executed with a role): one iteration is one round trip, both sides blocking
//!   in the kernel between messages. `shm_event` uses two [`ShmEvent`]s; the
//!   references are a pipe pair, an eventfd pair and a Unix datagram socket pair.
//! - `channel/*`: 8-byte tokens from producer processes to consumer processes,
//!   1 -> 1 and 4 -> 4 through a [`ShmChannel`] (one `send` and one `recv` or
//!   `try_recv` per token) and through Unix stream sockets in the same layouts (one
//!   `write` and one 8-byte `recv` per token): 1 -> 1, 4 -> 4 through one shared
//!   socket pair, and 4 -> 4 as four separate pairs. One iteration is one token;
//!   consumers count tokens locally and publish the count when they find nothing
//!   queued, the same way for every candidate.
//! - `mutex/*`: uncontended lock + unlock (and a counter increment) of a
//!   [`ShmMutex`] in a segment and of a `std::sync::Mutex`.
//!
//! After the criterion groups (with `--bench`), the same candidates run again in
//! *paired* rounds: short batches taking turns, so that load from other processes
//! on the machine hits all of them alike; it prints each median and the median of
//! the per-round ratios to the references (pipe; each Unix stream socket layout).
//! `SA_BENCH_COORD_PAIRED=0` skips them (`rt`, `tokens`: only that set).
//!
//! Children are killed if the parent panics; waits on another process have a
//! timeout, except the event ping-pong's (untimed, like the fd references' blocking
//! reads); segments are unlinked by guards.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use shared_allocator::channel::{RecvTimeoutError, ShmChannel, TryRecvError};
use shared_allocator::coord::{ShmEvent, ShmMutex};
use shared_allocator::prelude::*;
use shared_allocator::segment::UnlinkGuard;

const ROLE_VAR: &str = "SA_BENCH_COORD_ROLE";
const SEG_VAR: &str = "SA_BENCH_COORD_SEG";
const FDS_VAR: &str = "SA_BENCH_COORD_FDS";
const INDEX_VAR: &str = "SA_BENCH_COORD_INDEX";
const COUNT_VAR: &str = "SA_BENCH_COORD_COUNT";
/// Any single wait on another process longer than this is a hang.
const HANG: Duration = Duration::from_secs(60);

type Chan = ShmChannel<u64, 1024>;

#[derive(ShmSafe)]
#[shm(sync)]
#[repr(C)]
struct Ctl {
    cmd_seq: AtomicU64,
    cmd_kind: AtomicU64,
    cmd_iters: AtomicU64,
    cmd: ShmEvent,
    ping: ShmEvent,
    pong: ShmEvent,
    ball: AtomicU64,
    target: AtomicU64,
    received: AtomicU64,
    done: ShmEvent,
    quit: AtomicU64,
}

const KIND_EVENT: u64 = 1;
const KIND_PIPE: u64 = 2;
const KIND_EVENTFD: u64 = 3;
const KIND_DGRAM: u64 = 4;
const KIND_CHANNEL: u64 = 5;
const KIND_STREAM: u64 = 6;

fn inheritable(fd: &impl AsFd) {
    rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty()).expect("clear FD_CLOEXEC");
}

/// Worker processes of one benchmark; killed on drop.
struct Workers {
    kids: Vec<Child>,
    _seg: UnlinkGuard,
    alloc: FreeListAllocator,
}

impl Workers {
    fn new(tag: &str) -> Workers {
        let name = format!("sa-bench-coord-{tag}-{}", std::process::id());
        let alloc = FreeListAllocator::create(&name, 1 << 20).expect("segment");
        Workers {
            kids: Vec::new(),
            _seg: UnlinkGuard::new(&name),
            alloc,
        }
    }

    fn ctl(&self) -> shared_allocator::typed::Root<Ctl, &FreeListAllocator> {
        self.alloc.root("ctl").expect("control block")
    }

    fn spawn(&mut self, role: &str, index: usize, count: usize, fds: &[RawFd]) {
        let fds: Vec<String> = fds.iter().map(|f| f.to_string()).collect();
        let child = Command::new(std::env::current_exe().unwrap())
            .env(ROLE_VAR, role)
            .env(SEG_VAR, self.alloc.segment().name())
            .env(FDS_VAR, fds.join(","))
            .env(INDEX_VAR, index.to_string())
            .env(COUNT_VAR, count.to_string())
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn worker");
        self.kids.push(child);
    }

    /// Starts command `kind` with `iters` in every worker.
    fn command(&self, kind: u64, iters: u64) {
        let c = self.ctl();
        c.cmd_kind.store(kind, Ordering::Relaxed);
        c.cmd_iters.store(iters, Ordering::Relaxed);
        c.cmd_seq.fetch_add(1, Ordering::AcqRel);
        c.cmd.notify_all();
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        let c = self.ctl();
        c.quit.store(1, Ordering::Release);
        c.cmd.notify_all();
        let start = Instant::now();
        for k in &mut self.kids {
            while matches!(k.try_wait(), Ok(None)) && start.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(5));
            }
            let _ = k.kill();
            let _ = k.wait();
        }
    }
}

fn wait(ev: &ShmEvent, what: &str, cond: impl FnMut() -> bool) {
    assert!(ev.wait_timeout_until(HANG, cond), "bench hang: {what}");
}

/// A pong child and this process's ends of every reference channel.
struct RoundTrips {
    w: Workers,
    p2c_w: OwnedFd,
    c2p_r: OwnedFd,
    ev_p2c: OwnedFd,
    ev_c2p: OwnedFd,
    dg_parent: UnixDatagram,
}

impl RoundTrips {
    fn new() -> RoundTrips {
        let mut w = Workers::new("rt");
        let (p2c_r, p2c_w) = rustix::pipe::pipe().unwrap();
        let (c2p_r, c2p_w) = rustix::pipe::pipe().unwrap();
        let ev_p2c = rustix::event::eventfd(0, rustix::event::EventfdFlags::empty()).unwrap();
        let ev_c2p = rustix::event::eventfd(0, rustix::event::EventfdFlags::empty()).unwrap();
        let (dg_parent, dg_child) = UnixDatagram::pair().unwrap();
        for fd in [&p2c_r, &c2p_w, &ev_p2c, &ev_c2p] {
            inheritable(fd);
        }
        inheritable(&dg_child);
        let fds = [
            p2c_r.as_raw_fd(),
            c2p_w.as_raw_fd(),
            ev_p2c.as_raw_fd(),
            ev_c2p.as_raw_fd(),
            dg_child.as_raw_fd(),
        ];
        w.spawn("pong", 0, 1, &fds);
        // The child has its copies; p2c_r, c2p_w and dg_child close here.
        RoundTrips {
            w,
            p2c_w,
            c2p_r,
            ev_p2c,
            ev_c2p,
            dg_parent,
        }
    }

    /// `iters` round trips of `kind`; the time they took.
    fn run(&self, kind: u64, iters: u64) -> Duration {
        let ctl = self.w.ctl();
        self.w.command(kind, iters);
        let msg = 1u64.to_ne_bytes();
        let mut buf = [0u8; 8];
        let fd_pair = |tx: &OwnedFd, rx: &OwnedFd, len: usize| {
            let mut buf = [0u8; 8];
            let start = Instant::now();
            for _ in 0..iters {
                rustix::io::write(tx, &msg[..len]).unwrap();
                rustix::io::read(rx, &mut buf[..len]).unwrap();
            }
            start.elapsed()
        };
        match kind {
            KIND_EVENT => {
                let base = ctl.ball.load(Ordering::Acquire);
                let start = Instant::now();
                for i in 0..iters {
                    let odd = base + 2 * i + 1;
                    ctl.ball.store(odd, Ordering::Release);
                    ctl.ping.notify_one();
                    // No timeout, like the blocking reads of the fd references (a
                    // timed futex wait arms a kernel timer).
                    ctl.pong
                        .wait_until(|| ctl.ball.load(Ordering::Acquire) > odd);
                }
                start.elapsed()
            }
            KIND_PIPE => fd_pair(&self.p2c_w, &self.c2p_r, 1),
            KIND_EVENTFD => fd_pair(&self.ev_p2c, &self.ev_c2p, 8),
            KIND_DGRAM => {
                let start = Instant::now();
                for _ in 0..iters {
                    self.dg_parent.send(&[1]).unwrap();
                    self.dg_parent.recv(&mut buf).unwrap();
                }
                start.elapsed()
            }
            k => panic!("unknown round trip {k}"),
        }
    }
}

const ROUNDTRIPS: [(&str, u64); 4] = [
    ("shm_event", KIND_EVENT),
    ("pipe", KIND_PIPE),
    ("eventfd", KIND_EVENTFD),
    ("unix_datagram", KIND_DGRAM),
];

fn bench_roundtrip(c: &mut Criterion, rt: &RoundTrips) {
    let mut g = c.benchmark_group("roundtrip");
    g.warm_up_time(Duration::from_millis(500));
    g.measurement_time(Duration::from_secs(3));
    for (name, kind) in ROUNDTRIPS {
        g.bench_function(name, |b| b.iter_custom(|iters| rt.run(kind, iters)));
    }
    g.finish();
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Paired runs: the candidates take turns in short batches, so a change of load on
/// the machine (other processes come and go) hits all of them alike; prints the
/// median time of each and, for each reference (indices in `refs`), the median of
/// the per-round ratios to it.
fn paired(
    what: &str,
    rounds: usize,
    names: &[&str],
    refs: &[usize],
    mut run: impl FnMut(usize) -> f64,
) {
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    for _ in 0..rounds {
        for (k, t) in times.iter_mut().enumerate() {
            t.push(run(k));
        }
    }
    println!(
        "paired {what}, {rounds} interleaved rounds (median per item; ratio = median of per-round ratios to the reference named):"
    );
    for k in 0..names.len() {
        let mut t = times[k].clone();
        let mut line = format!("  {:<22} {:>10.1} ns", names[k], median(&mut t));
        for &r in refs.iter().filter(|&&r| r != k) {
            let mut ratios: Vec<f64> = (0..rounds).map(|i| times[k][i] / times[r][i]).collect();
            line += &format!("   /{} {:.3}", names[r], median(&mut ratios));
        }
        println!("{line}");
    }
}

/// The pong side: one command at a time, `iters` round trips of the command's kind.
fn pong() {
    let alloc = FreeListAllocator::open(&std::env::var(SEG_VAR).unwrap()).unwrap();
    let ctl = alloc.root::<Ctl>("ctl").unwrap();
    let fds: Vec<RawFd> = std::env::var(FDS_VAR)
        .unwrap()
        .split(',')
        .map(|s| s.parse().unwrap())
        .collect();
    // SAFETY:
    // - the parent passed these descriptors open and without FD_CLOEXEC, and this
    //   process owns its copies of them: nothing else here uses these numbers;
    // - each number is wrapped once.
    let owned: Vec<OwnedFd> = fds
        .iter()
        .map(|&f| unsafe { OwnedFd::from_raw_fd(f) })
        .collect();
    let (p2c_r, c2p_w, ev_p2c, ev_c2p) = (&owned[0], &owned[1], &owned[2], &owned[3]);
    let dg = UnixDatagram::from(owned[4].try_clone().unwrap());
    let mut seen = 0;
    let mut buf = [0u8; 8];
    loop {
        wait(&ctl.cmd, "command", || {
            ctl.cmd_seq.load(Ordering::Acquire) > seen || ctl.quit.load(Ordering::Acquire) != 0
        });
        if ctl.quit.load(Ordering::Acquire) != 0 {
            return;
        }
        seen = ctl.cmd_seq.load(Ordering::Acquire);
        let iters = ctl.cmd_iters.load(Ordering::Relaxed);
        match ctl.cmd_kind.load(Ordering::Relaxed) {
            KIND_EVENT => {
                for _ in 0..iters {
                    let mut odd = 0;
                    ctl.ping.wait_until(|| {
                        odd = ctl.ball.load(Ordering::Acquire);
                        odd % 2 == 1
                    });
                    ctl.ball.store(odd + 1, Ordering::Release);
                    ctl.pong.notify_one();
                }
            }
            KIND_PIPE => {
                for _ in 0..iters {
                    rustix::io::read(p2c_r, &mut buf[..1]).unwrap();
                    rustix::io::write(c2p_w, &buf[..1]).unwrap();
                }
            }
            KIND_EVENTFD => {
                for _ in 0..iters {
                    rustix::io::read(ev_p2c, &mut buf).unwrap();
                    rustix::io::write(ev_c2p, &1u64.to_ne_bytes()).unwrap();
                }
            }
            KIND_DGRAM => {
                for _ in 0..iters {
                    dg.recv(&mut buf).unwrap();
                    dg.send(&buf[..1]).unwrap();
                }
            }
            k => panic!("pong: unknown command {k}"),
        }
    }
}

/// Runs `iters` tokens through the workers and times until the last one arrived.
fn run_tokens(w: &Workers, kind: u64, iters: u64) -> Duration {
    let ctl = w.ctl();
    ctl.received.store(0, Ordering::Release);
    ctl.target.store(iters, Ordering::Release);
    let start = Instant::now();
    w.command(kind, iters);
    wait(&ctl.done, "tokens", || {
        ctl.received.load(Ordering::Acquire) >= iters
    });
    start.elapsed()
}

/// Worker groups for the token benchmarks (idle groups sleep, costing the running
/// one nothing): the channel 1 -> 1 and 4 -> 4, and the Unix stream socket in the
/// same process layouts: 1 -> 1, 4 -> 4 through one socket pair (every producer
/// writes into the same end, every consumer reads from the other: the socket is the
/// MPMC queue, like the channel), and 4 -> 4 as four separate pairs (producer `i`
/// to consumer `i`: no sharing at all, the socket's best case).
fn token_workers() -> Vec<(String, Workers, u64)> {
    let mut groups = Vec::new();
    for (np, nc) in [(1usize, 1usize), (4, 4)] {
        let mut w = Workers::new(&format!("ch{np}{nc}"));
        let _ = w.alloc.root::<Chan>("chan").unwrap();
        for i in 0..nc {
            w.spawn("consumer", i, nc, &[]);
        }
        for i in 0..np {
            w.spawn("producer", i, np, &[]);
        }
        groups.push((format!("shm_channel_{np}to{nc}"), w, KIND_CHANNEL));
    }
    for (n, pairs) in [(1usize, 1usize), (4, 1), (4, 4)] {
        let mut w = Workers::new(&format!("stream{n}{pairs}"));
        let socks: Vec<(UnixStream, UnixStream)> =
            (0..pairs).map(|_| UnixStream::pair().unwrap()).collect();
        for (tx, rx) in &socks {
            inheritable(tx);
            inheritable(rx);
        }
        for i in 0..n {
            w.spawn("stream-consumer", i, n, &[socks[i % pairs].1.as_raw_fd()]);
        }
        for i in 0..n {
            w.spawn("stream-producer", i, n, &[socks[i % pairs].0.as_raw_fd()]);
        }
        drop(socks); // the workers hold the only ends now
        let name = match (n, pairs) {
            (1, _) => "unix_stream_1to1".to_owned(),
            (_, 1) => format!("unix_stream_{n}to{n}"),
            _ => format!("unix_stream_{n}x_1to1"),
        };
        groups.push((name, w, KIND_STREAM));
    }
    groups
}

fn bench_channel(c: &mut Criterion, groups: &[(String, Workers, u64)]) {
    let mut g = c.benchmark_group("channel");
    g.throughput(Throughput::Elements(1));
    g.warm_up_time(Duration::from_millis(500));
    g.measurement_time(Duration::from_secs(3));
    for (name, w, kind) in groups {
        g.bench_function(name.as_str(), |b| {
            b.iter_custom(|iters| run_tokens(w, *kind, iters))
        });
    }
    g.finish();
}

fn share(iters: u64, index: u64, count: u64) -> u64 {
    iters / count + u64::from(index < iters % count)
}

/// Producer worker: for every command, sends its share of the tokens.
fn producer(stream: bool) {
    let alloc = FreeListAllocator::open(&std::env::var(SEG_VAR).unwrap()).unwrap();
    let ctl = alloc.root::<Ctl>("ctl").unwrap();
    let index: u64 = std::env::var(INDEX_VAR).unwrap().parse().unwrap();
    let count: u64 = std::env::var(COUNT_VAR).unwrap().parse().unwrap();
    let chan = alloc.root::<Chan>("chan").unwrap();
    let tx = (!stream).then(|| chan.sender().unwrap());
    let mut sock = stream.then(|| {
        let fd: RawFd = std::env::var(FDS_VAR).unwrap().parse().unwrap();
        // SAFETY:
        // - the parent passed this socket open and inheritable, and only this process
        //   uses its copy; the number is wrapped once.
        UnixStream::from(unsafe { OwnedFd::from_raw_fd(fd) })
    });
    let mut seen = 0;
    loop {
        wait(&ctl.cmd, "command", || {
            ctl.cmd_seq.load(Ordering::Acquire) > seen || ctl.quit.load(Ordering::Acquire) != 0
        });
        if ctl.quit.load(Ordering::Acquire) != 0 {
            return;
        }
        seen = ctl.cmd_seq.load(Ordering::Acquire);
        let n = share(ctl.cmd_iters.load(Ordering::Relaxed), index, count);
        for i in 0..n {
            let token = index << 48 | i;
            match (&tx, &mut sock) {
                (Some(tx), _) => tx.send_timeout(token, HANG).expect("send"),
                (_, Some(s)) => s.write_all(&token.to_ne_bytes()).expect("write"),
                _ => unreachable!(),
            }
        }
    }
}

/// Consumer worker: receives tokens forever, counting them locally; it adds its
/// count to the shared total whenever it finds nothing queued (and every 4096
/// tokens), and the one that brings the total to the target wakes the parent. (A
/// shared increment per token would make 4 consumers contend on one cache line:
/// harness cost, not the queue's.) Every candidate counts the same way.
fn consumer(stream: bool) {
    let alloc = FreeListAllocator::open(&std::env::var(SEG_VAR).unwrap()).unwrap();
    let ctl = alloc.root::<Ctl>("ctl").unwrap();
    let chan = alloc.root::<Chan>("chan").unwrap();
    let rx = (!stream).then(|| chan.receiver().unwrap());
    let mut sock = stream.then(|| {
        let fd: RawFd = std::env::var(FDS_VAR).unwrap().parse().unwrap();
        // SAFETY: as in `producer`.
        UnixStream::from(unsafe { OwnedFd::from_raw_fd(fd) })
    });
    let mut buf = [0u8; 8];
    let mut local = 0u64;
    let flush = |local: &mut u64| {
        if *local == 0 {
            return;
        }
        let total = ctl.received.fetch_add(*local, Ordering::AcqRel) + *local;
        let target = ctl.target.load(Ordering::Acquire);
        if total >= target && total - *local < target {
            ctl.done.notify_all();
        }
        *local = 0;
    };
    loop {
        if local >= 4096 {
            flush(&mut local);
        }
        // Without waiting first: on "nothing queued", publish the count, then block.
        match (&rx, &mut sock) {
            (Some(rx), _) => match rx.try_recv() {
                Ok(token) => {
                    std::hint::black_box(token);
                    local += 1;
                    continue;
                }
                Err(TryRecvError::Empty) => flush(&mut local),
                Err(_) => return,
            },
            (_, Some(s)) => {
                match rustix::net::recv(&*s, &mut buf, rustix::net::RecvFlags::DONTWAIT)
                    .map(|(n, _)| n)
                {
                    Ok(8) => {
                        std::hint::black_box(buf);
                        local += 1;
                        continue;
                    }
                    Ok(0) => return, // the producers are gone
                    Ok(n) => {
                        // A partial token (not expected: each write is one 8-byte skb).
                        if s.read_exact(&mut buf[n..]).is_err() {
                            return;
                        }
                        local += 1;
                        continue;
                    }
                    Err(rustix::io::Errno::AGAIN) => flush(&mut local),
                    Err(e) => panic!("recv: {e}"),
                }
            }
            _ => unreachable!(),
        }
        match (&rx, &mut sock) {
            (Some(rx), _) => match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(token) => {
                    std::hint::black_box(token);
                }
                Err(RecvTimeoutError::Timeout) => {
                    if ctl.quit.load(Ordering::Acquire) != 0 {
                        return;
                    }
                    continue;
                }
                Err(_) => return,
            },
            (_, Some(s)) => {
                if s.read_exact(&mut buf).is_err() {
                    return; // the producers are gone
                }
                std::hint::black_box(buf);
            }
            _ => unreachable!(),
        }
        local += 1;
    }
}

fn bench_mutex(c: &mut Criterion) {
    let w = Workers::new("mutex");
    let shm = w.alloc.root::<ShmMutex<[u64; 2]>>("m").unwrap();
    let std_mutex = std::sync::Mutex::new([0u64; 2]);
    let mut g = c.benchmark_group("mutex");
    g.bench_function("shm_mutex_lock_unlock", |b| {
        b.iter(|| {
            let mut g = shm.lock().unwrap();
            g[0] += 1;
        })
    });
    g.bench_function("std_mutex_lock_unlock", |b| {
        b.iter(|| {
            let mut g = std_mutex.lock().unwrap();
            g[0] += 1;
        })
    });
    g.finish();
}

fn main() {
    if let Ok(role) = std::env::var(ROLE_VAR) {
        match role.as_str() {
            "pong" => pong(),
            "producer" => producer(false),
            "consumer" => consumer(false),
            "stream-producer" => producer(true),
            "stream-consumer" => consumer(true),
            r => panic!("unknown role {r}"),
        }
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    bench_mutex(&mut c);
    let rt = RoundTrips::new();
    bench_roundtrip(&mut c, &rt);
    let groups = token_workers();
    bench_channel(&mut c, &groups);
    // SA_BENCH_COORD_PAIRED: unset or "all" runs both paired sets, "rt" only the
    // round trips, "tokens" only the tokens, "0" none.
    let which = std::env::var("SA_BENCH_COORD_PAIRED").unwrap_or_else(|_| "all".into());
    let bench_mode = std::env::args().any(|a| a == "--bench");
    if bench_mode && (which == "all" || which == "rt") {
        let kinds = [KIND_EVENT, KIND_EVENTFD, KIND_DGRAM, KIND_PIPE];
        let names = ["shm_event", "eventfd", "unix_datagram", "pipe"];
        paired("round trips", 40, &names, &[3], |k| {
            rt.run(kinds[k], 2_000).as_nanos() as f64 / 2_000.0
        });
    }
    if bench_mode && (which == "all" || which == "tokens") {
        let names: Vec<&str> = groups.iter().map(|g| g.0.as_str()).collect();
        let refs: Vec<usize> = (0..names.len())
            .filter(|&k| names[k].starts_with("unix_stream"))
            .collect();
        paired("8-byte tokens", 20, &names, &refs, |k| {
            let (_, w, kind) = &groups[k];
            run_tokens(w, *kind, 100_000).as_nanos() as f64 / 100_000.0
        });
    }
    c.final_summary();
}
