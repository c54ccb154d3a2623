//! `ShmChannel` across real processes.
//!
//! - `delivery_4x4`: 4 producer and 4 consumer processes; every producer sends
//!   `SA_COORD_MESSAGES` values (default 100,000; the full run is
//!   `SA_COORD_MESSAGES=1000000 cargo test --release --test coord_channel`). Every
//!   value arrives exactly once (a bit per value in shared memory, set with
//!   `fetch_or`: a bit already set is a duplicate), and each consumer sees every
//!   producer's values in increasing order.
//! - `sigkill_producers_and_consumers`: producers and consumers are SIGKILLed at
//!   random moments while they work (`SA_COORD_KILLS`, default 60) and replaced.
//!   Every blocking call has a timeout; a survivor that hits one fails. At the end
//!   every value is accounted for: delivered, lost with a dead process (at most one
//!   per dead consumer, and the channel's loss counters stay within the kills), or
//!   still queued (the final consumers drain until `Disconnected`).
//! - `endpoints_errors_and_handles`, `endpoint_table_limits`: the API in one process
//!   (try_ variants, Full, timeouts, Disconnected both ways, RelPtr and token values,
//!   the endpoint table).
mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{env_req, env_u64, finish_all, role, say, spawn_child, KillOnDrop, Rng, ShmName};
use shared_allocator::channel::{RecvError, RecvTimeoutError, SendError, SendTimeoutError};
use shared_allocator::prelude::*;

type Chan = ShmChannel<u64, 512>;

/// Bits of the delivery map: 256 streams x 2^14 values (kill test), or 4 x 2^20.
const MAP_WORDS: usize = 1 << 16;
/// The map lives in roots (a channel root makes the segment typed, so no raw
/// block), split in parts that fit on a stack while a root is created (zeroed).
const MAP_PART: usize = 1024;
struct Map<'a>(Vec<Root<[AtomicU64; MAP_PART], &'a FreeListAllocator>>);

impl std::ops::Index<usize> for Map<'_> {
    type Output = AtomicU64;
    fn index(&self, i: usize) -> &AtomicU64 {
        &self.0[i / MAP_PART][i % MAP_PART]
    }
}

/// Longer than any healthy wait: hitting it means a survivor was blocked.
const OP_TIMEOUT: Duration = Duration::from_secs(20);
const WATCHDOG: Duration = Duration::from_secs(600);

#[derive(ShmSafe)]
#[shm(sync)]
#[repr(C)]
struct Control {
    /// Raised by the parent: producers stop sending.
    stop: AtomicU64,
    /// Per stream: values sent successfully (the next value is `sent`).
    sent: [AtomicU64; 256],
    duplicates: AtomicU64,
    out_of_order: AtomicU64,
    received: AtomicU64,
}

fn value(stream: u64, seq: u64) -> u64 {
    stream << 40 | seq
}

fn setup(name: &ShmName, size: u64) -> FreeListAllocator {
    let a = FreeListAllocator::create(name.as_str(), size).unwrap();
    // A channel root puts the segment in typed mode (nothing raw may write a
    // channel's bytes), so the delivery map is in roots too (zeroed), not a raw block.
    let _ = map_of(&a);
    let _ = a.root::<Control>("ctl").unwrap();
    let _ = a.root::<Chan>("chan").unwrap();
    a
}

fn map_of(a: &FreeListAllocator) -> Map<'_> {
    Map((0..MAP_WORDS / MAP_PART)
        .map(|i| a.root(&format!("map{i}")).expect("delivery map"))
        .collect())
}

/// Consumer role: receive until disconnected; mark, check duplicates and order.
fn consumer(bits_per_stream: u32) {
    let a = FreeListAllocator::open(&env_req("SA_SEG")).unwrap();
    let ctl = a.root::<Control>("ctl").unwrap();
    let map = map_of(&a);
    let chan = a.root::<Chan>("chan").unwrap();
    let rx = chan.receiver().unwrap();
    let mut last = vec![None::<u64>; 256];
    let mut n = 0u64;
    loop {
        match rx.recv_timeout(OP_TIMEOUT) {
            Ok(v) => {
                let (stream, seq) = (v >> 40, v & ((1 << 40) - 1));
                assert!(stream < 256 && seq < 1 << bits_per_stream, "garbage {v:#x}");
                let bit = (stream << bits_per_stream) + seq;
                let old = map[(bit / 64) as usize].fetch_or(1 << (bit % 64), Ordering::AcqRel);
                if old & (1 << (bit % 64)) != 0 {
                    ctl.duplicates.fetch_add(1, Ordering::Relaxed);
                }
                let l = &mut last[stream as usize];
                if l.is_some_and(|l| l >= seq) {
                    ctl.out_of_order.fetch_add(1, Ordering::Relaxed);
                }
                *l = Some(seq);
                ctl.received.fetch_add(1, Ordering::Relaxed);
                n += 1;
            }
            Err(RecvTimeoutError::Disconnected) => break,
            Err(e) => panic!("consumer {}: {e} after {n} values", std::process::id()),
        }
    }
    say(format!("consumer received={n}"));
}

/// Producer role: send stream `SA_STREAM`, `SA_COUNT` values, unless stopped.
fn producer() {
    let a = FreeListAllocator::open(&env_req("SA_SEG")).unwrap();
    let ctl = a.root::<Control>("ctl").unwrap();
    let chan = a.root::<Chan>("chan").unwrap();
    let stream: u64 = env_req("SA_STREAM").parse().unwrap();
    let count: u64 = env_req("SA_COUNT").parse().unwrap();
    let tx = chan.sender().unwrap();
    for seq in 0..count {
        if seq % 256 == 0 && ctl.stop.load(Ordering::Acquire) != 0 {
            break;
        }
        match tx.send_timeout(value(stream, seq), OP_TIMEOUT) {
            Ok(()) => ctl.sent[stream as usize].store(seq + 1, Ordering::Release),
            Err(SendTimeoutError::Disconnected(_)) => break,
            Err(e) => panic!("producer {stream}: {e} at {seq}"),
        }
    }
    say(format!(
        "producer stream={stream} sent={}",
        ctl.sent[stream as usize].load(Ordering::Relaxed)
    ));
}

#[test]
fn delivery_4x4() {
    const PRODUCERS: u64 = 4;
    const CONSUMERS: usize = 4;
    let per = env_u64("SA_COORD_MESSAGES", 100_000);
    assert!(
        per <= 1 << 20,
        "the delivery map holds 2^20 values per producer"
    );
    match role().as_deref() {
        Some("consumer") => return consumer(20),
        Some("producer") => return producer(),
        _ => {}
    }
    let name = ShmName::new("coord-ch");
    let a = setup(&name, 16 << 20);
    let ctl = a.root::<Control>("ctl").unwrap();
    let env = |k: &str, v: String| (k.to_owned(), v);
    let seg = name.as_str().to_owned();
    let start = Instant::now();
    // Until every producer has sent something, the parent holds a sender: a fast
    // producer can finish its whole stream before the last one registers, and
    // consumers would see Disconnected in between.
    let chan = a.root::<Chan>("chan").unwrap();
    let hold = chan.sender().unwrap();
    let mut kids: Vec<_> = (0..CONSUMERS)
        .map(|_| spawn_child("delivery_4x4", "consumer", &[("SA_SEG", seg.clone())]))
        .collect();
    for s in 0..PRODUCERS {
        let e = [
            env("SA_SEG", seg.clone()),
            env("SA_STREAM", s.to_string()),
            env("SA_COUNT", per.to_string()),
        ];
        let e: Vec<(&str, String)> = e.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        kids.push(spawn_child("delivery_4x4", "producer", &e));
    }
    while (0..PRODUCERS).any(|s| ctl.sent[s as usize].load(Ordering::Acquire) == 0) {
        assert!(
            start.elapsed() < OP_TIMEOUT,
            "a producer never started sending"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(hold);
    let outs = finish_all(kids, WATCHDOG, "delivery child");
    let elapsed = start.elapsed();
    let total: u64 = outs[..CONSUMERS]
        .iter()
        .map(|o| {
            let line = o.iter().find(|l| l.starts_with("@@ consumer")).unwrap();
            common::field(line, "received")
        })
        .sum();
    assert_eq!(total, PRODUCERS * per);
    assert_eq!(ctl.duplicates.load(Ordering::Relaxed), 0);
    assert_eq!(ctl.out_of_order.load(Ordering::Relaxed), 0);
    let map = map_of(&a);
    for s in 0..PRODUCERS {
        for seq in 0..per {
            let bit = (s << 20) + seq;
            assert!(
                map[(bit / 64) as usize].load(Ordering::Relaxed) & (1 << (bit % 64)) != 0,
                "value {seq} of producer {s} never arrived"
            );
        }
    }
    assert_eq!(chan.stats().queued, 0);
    eprintln!(
        "{PRODUCERS}x{CONSUMERS} processes, {} messages in {elapsed:?} ({:.1} M msg/s)",
        PRODUCERS * per,
        (PRODUCERS * per) as f64 / elapsed.as_secs_f64() / 1e6
    );
}

#[test]
fn sigkill_producers_and_consumers() {
    const PRODUCERS: usize = 4;
    const CONSUMERS: usize = 4;
    const STREAMS: u64 = 256;
    const PER_STREAM: u64 = 1 << 14;
    /// A victim has been running at least this long: past start-up, mid-operation.
    const MIN_AGE: Duration = Duration::from_millis(20);
    let kills = env_u64("SA_COORD_KILLS", 60);
    match role().as_deref() {
        Some("consumer") => return consumer(14),
        Some("producer") => return producer(),
        _ => {}
    }
    let name = ShmName::new("coord-kill");
    let a = setup(&name, 16 << 20);
    let ctl = a.root::<Control>("ctl").unwrap();
    let chan = a.root::<Chan>("chan").unwrap();
    let seg = name.as_str().to_owned();
    let entry = "sigkill_producers_and_consumers";
    let mut next_stream = 0u64;
    let spawn_producer = |next: &mut u64| {
        let s = *next;
        *next += 1;
        KillOnDrop::new(spawn_child(
            entry,
            "producer",
            &[
                ("SA_SEG", seg.clone()),
                ("SA_STREAM", s.to_string()),
                ("SA_COUNT", PER_STREAM.to_string()),
            ],
        ))
    };
    let spawn_consumer =
        || KillOnDrop::new(spawn_child(entry, "consumer", &[("SA_SEG", seg.clone())]));
    // The parent keeps one endpoint of each side registered while workers come and
    // go, so nobody sees a transient "every sender (receiver) is gone" between a
    // death and its replacement; dropping `keep_tx` at the end lets the final
    // consumers drain and see Disconnected. Registered before any worker starts:
    // a producer can send its whole stream and drop its sender within a few
    // milliseconds, and a consumer would then see Disconnected at once.
    let keep_tx = chan.sender().unwrap();
    let keep_rx = chan.receiver().unwrap();
    let mut producers: Vec<(KillOnDrop, Instant)> = (0..PRODUCERS)
        .map(|_| (spawn_producer(&mut next_stream), Instant::now()))
        .collect();
    let mut consumers: Vec<(KillOnDrop, Instant)> = (0..CONSUMERS)
        .map(|_| (spawn_consumer(), Instant::now()))
        .collect();
    let mut rng = Rng::new(env_u64("SA_COORD_SEED", 0x5eed));
    let (mut killed_p, mut killed_c) = (0u64, 0u64);
    let start = Instant::now();
    while killed_p + killed_c < kills {
        assert!(start.elapsed() < WATCHDOG, "kill loop watchdog");
        // Let them work (and block, and wake) for a moment, then kill one mid-operation.
        std::thread::sleep(Duration::from_millis(5 + rng.below(25)));
        // Producers that finished their stream get a new one; nobody else may exit.
        for (p, born) in producers.iter_mut() {
            if let Some(status) = p.child().try_wait().unwrap() {
                assert!(status.success(), "a producer failed on its own: {status}");
                if next_stream < STREAMS {
                    *p = spawn_producer(&mut next_stream);
                    *born = Instant::now();
                }
            }
        }
        for (c, _) in consumers.iter_mut() {
            if let Some(status) = c.child().try_wait().unwrap() {
                panic!("a consumer exited on its own during the kill phase: {status}");
            }
        }
        let kill_producer = rng.below(2) == 0 && next_stream < STREAMS;
        let victims = if kill_producer {
            &mut producers
        } else {
            &mut consumers
        };
        let i = rng.below(victims.len() as u64) as usize;
        let (victim, born) = &mut victims[i];
        if born.elapsed() < MIN_AGE || victim.child().try_wait().unwrap().is_some() {
            continue; // still starting up, or a finished producer: not mid-operation
        }
        victim.child().kill().unwrap();
        victim.child().wait().unwrap(); // reaped: its owner identity is dead from now on
        if kill_producer {
            killed_p += 1;
            *victim = spawn_producer(&mut next_stream);
        } else {
            killed_c += 1;
            *victim = spawn_consumer();
        }
        *born = Instant::now();
    }
    // Stop: producers finish, then consumers drain and see Disconnected.
    ctl.stop.store(1, Ordering::Release);
    drop(keep_tx);
    let mut all: Vec<_> = producers.iter_mut().map(|(p, _)| p.take()).collect();
    all.extend(consumers.iter_mut().map(|(c, _)| c.take()));
    let outs = finish_all(all, WATCHDOG, "survivor");
    assert_eq!(outs.len(), PRODUCERS + CONSUMERS);
    drop(keep_rx);

    let stats = chan.stats();
    assert_eq!(stats.queued, 0, "the final consumers drained the channel");
    assert_eq!(
        ctl.duplicates.load(Ordering::Relaxed),
        0,
        "a value arrived twice"
    );
    assert_eq!(
        ctl.out_of_order.load(Ordering::Relaxed),
        0,
        "a stream arrived out of order"
    );
    assert!(
        stats.lost_in_send <= killed_p,
        "{stats:?} after {killed_p} producer kills"
    );
    assert!(
        stats.lost_in_recv <= killed_c,
        "{stats:?} after {killed_c} consumer kills"
    );
    // Every value below a stream's `sent` count was delivered, except at most one per
    // dead consumer (taken and never recorded); `sent` itself may have arrived (sent
    // just before the kill, the count not yet raised); nothing beyond it exists.
    let map = map_of(&a);
    let bit = |s: u64, q: u64| {
        let b = (s << 14) + q;
        map[(b / 64) as usize].load(Ordering::Relaxed) & (1 << (b % 64)) != 0
    };
    let (mut missing, mut delivered, mut sent_total, mut unacked) = (0u64, 0u64, 0u64, 0u64);
    for s in 0..next_stream {
        let sent = ctl.sent[s as usize].load(Ordering::Relaxed);
        sent_total += sent;
        for q in 0..PER_STREAM {
            let got = bit(s, q);
            delivered += u64::from(got);
            if q < sent && !got {
                missing += 1;
            }
            unacked += u64::from(got && q == sent);
            assert!(
                !got || q <= sent,
                "stream {s}: value {q} arrived but only {sent} were sent"
            );
        }
    }
    assert!(
        missing <= killed_c,
        "{missing} sent values never arrived, more than the {killed_c} consumer kills explain"
    );
    eprintln!(
        "{} kills ({killed_p} producers, {killed_c} consumers) over {next_stream} streams: \
         {sent_total} acknowledged sends, {delivered} delivered ({unacked} of them sent by a \
         producer killed before it counted the send), {missing} lost with dead consumers, \
         {} / {} lost in send / recv (channel counters), 0 queued",
        killed_p + killed_c,
        stats.lost_in_send,
        stats.lost_in_recv
    );
}

/// In one process: the try_ variants, Full, timeouts, Disconnected both ways, and
/// values that are handles (RelPtr, [u64; 2] arena tokens).
#[test]
fn endpoints_errors_and_handles() {
    use shared_allocator::channel::{TryRecvError, TrySendError};
    let name = ShmName::new("coord-api");
    let a = FreeListAllocator::create(name.as_str(), 1 << 20).unwrap();

    let ch = a.root::<ShmChannel<u64, 2>>("small").unwrap();
    let rx = ch.receiver().unwrap();
    assert_eq!(rx.try_recv(), Err(TryRecvError::Empty)); // no sender yet: not disconnected
    let tx = ch.sender().unwrap();
    tx.try_send(1).unwrap();
    tx.send_timeout(2, Duration::from_millis(10)).unwrap();
    assert!(matches!(tx.try_send(3), Err(TrySendError::Full(3))));
    let start = Instant::now();
    assert!(matches!(
        tx.send_timeout(3, Duration::from_millis(100)),
        Err(SendTimeoutError::Timeout(3))
    ));
    assert!(start.elapsed() >= Duration::from_millis(100));
    assert_eq!(ch.len(), 2);
    assert_eq!(rx.recv(), Ok(1));
    assert_eq!(rx.try_recv(), Ok(2));
    let start = Instant::now();
    assert_eq!(
        rx.recv_timeout(Duration::from_millis(100)),
        Err(RecvTimeoutError::Timeout)
    );
    assert!(start.elapsed() >= Duration::from_millis(100));
    tx.send(4).unwrap();
    drop(tx); // the last sender: queued values still arrive, then Disconnected
    assert_eq!(rx.recv(), Ok(4));
    assert_eq!(rx.recv(), Err(RecvError::Disconnected));
    assert_eq!(rx.try_recv(), Err(TryRecvError::Disconnected));
    let tx = ch.sender().unwrap(); // a new sender reconnects
    drop(rx);
    assert!(matches!(tx.send(5), Err(SendError::Disconnected(5))));
    assert!(matches!(tx.try_send(6), Err(TrySendError::Disconnected(6))));

    // Handles travel as values; ownership moves with them.
    let boxed = ShmBox::new_in(&a, 42u64).unwrap();
    let ptrs = a.root::<ShmChannel<RelPtr<u64>, 4>>("ptrs").unwrap();
    let (ptx, prx) = (ptrs.sender().unwrap(), ptrs.receiver().unwrap());
    ptx.send(boxed.rel_ptr()).unwrap();
    assert_eq!(prx.recv().unwrap().read(&a).unwrap(), 42);
    let tokens = a.root::<ShmChannel<[u64; 2], 4>>("tokens").unwrap();
    let (ttx, trx) = (tokens.sender().unwrap(), tokens.receiver().unwrap());
    ttx.send([7, 8]).unwrap();
    assert_eq!(trx.recv(), Ok([7, 8]));
    let stats = ch.stats();
    assert_eq!(
        (stats.capacity, stats.lost_in_send, stats.lost_in_recv),
        (2, 0, 0)
    );
}

/// Every endpoint entry can be taken, and a dropped endpoint's entry is reused.
#[test]
fn endpoint_table_limits() {
    use shared_allocator::channel::{EndpointError, MAX_ENDPOINTS};
    let name = ShmName::new("coord-eps");
    let a = FreeListAllocator::create(name.as_str(), 1 << 20).unwrap();
    let ch = a.root::<ShmChannel<u64, 4>>("ch").unwrap();
    let mut held: Vec<_> = (0..MAX_ENDPOINTS).map(|_| ch.sender().unwrap()).collect();
    assert_eq!(
        ch.receiver().unwrap_err(),
        EndpointError::TooManyEndpoints { max: MAX_ENDPOINTS }
    );
    held.pop();
    let _rx = ch.receiver().unwrap();
    assert_eq!(ch.stats().senders as usize, MAX_ENDPOINTS - 1);
}

/// A receiver process SIGKILLed while asleep in `recv` never unregisters from the
/// channel's not-empty event. The next send must forget it (no spare wake-up
/// system calls for every later send), and the channel goes on: a live receiver
/// gets the message, and the sender learns nothing wrong.
#[test]
fn receiver_killed_while_waiting_is_forgotten() {
    type Small = ShmChannel<u64, 4>;
    if role().as_deref() == Some("sleeper") {
        let a = FreeListAllocator::open(&env_req("SA_SEG")).unwrap();
        let ch = a.root::<Small>("ch").unwrap();
        let rx = ch.receiver().unwrap();
        // Nothing is ever sent before the parent kills this process.
        let got = rx.recv_timeout(WATCHDOG);
        say(format!("not killed: {got:?}"));
        return;
    }
    let name = ShmName::new("coord-sleeper");
    let a = FreeListAllocator::create(name.as_str(), 1 << 20).unwrap();
    let ch = a.root::<Small>("ch").unwrap();
    let tx = ch.sender().unwrap();
    let env = [("SA_SEG", name.as_str().to_owned())];
    let mut sleeper = KillOnDrop::new(spawn_child(
        "receiver_killed_while_waiting_is_forgotten",
        "sleeper",
        &env,
    ));
    let start = Instant::now();
    while ch.stats().waiting_receivers != 1 {
        assert!(
            start.elapsed() < OP_TIMEOUT,
            "the receiver never went to sleep"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    std::thread::sleep(Duration::from_millis(100)); // into FUTEX_WAIT (holds either way)
    sleeper.child().kill().unwrap();
    sleeper.child().wait().unwrap();
    assert_eq!(
        ch.stats().waiting_receivers,
        1,
        "nobody could know it died yet"
    );
    tx.send_timeout(1, OP_TIMEOUT)
        .expect("send past a dead receiver");
    let s = ch.stats();
    assert_eq!(
        (s.waiting_receivers, s.waiting_senders, s.queued),
        (0, 0, 1),
        "the send must forget the dead receiver's registration"
    );
    let rx = ch.receiver().unwrap();
    assert_eq!(rx.recv_timeout(OP_TIMEOUT).unwrap(), 1);
    tx.send_timeout(2, OP_TIMEOUT).unwrap();
    assert_eq!(rx.try_recv().unwrap(), 2);
    assert_eq!(ch.stats().lost_in_recv + ch.stats().lost_in_send, 0);
}
