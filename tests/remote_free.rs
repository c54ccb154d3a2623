//! Blocks allocated in one process and freed in another, at scale, with the
//! per-handle caches on, while producers and consumers are SIGKILLed.
//!
//! Producers allocate blocks of random sizes, fill each with a tag (its offset and
//! size, repeated), and send the offset through a `ShmChannel`; consumers receive,
//! check the whole block (an overlap would show as a foreign tag) and free it into
//! their own caches. The parent kills and restarts workers throughout. At the end
//! every worker has exited; the parent reclaims the dead ones' slots (their caches
//! come back), frees what the dead held (blocks in a killed producer's hands or a
//! killed consumer's), and checks the allocator is empty and whole again.
//!
//! Knobs: `SA_RF_KILLS` (default 12), `SA_RF_MILLIS` run time (default 3000).
mod common;

use std::io::{BufRead, BufReader};
use std::process::Child;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{env_req, env_u64, role, KillOnDrop, Rng, ShmName};
use shared_allocator::channel::RecvTimeoutError;
use shared_allocator::prelude::*;

const CAP: u64 = 32 << 20;
const MAGIC: u64 = 0x5A5A_0000_0000_0000;

#[derive(ShmSafe)]
#[shm(sync)]
#[repr(C)]
struct Ctl {
    stop: AtomicU64,
    sent: AtomicU64,
    checked: AtomicU64,
    damaged: AtomicU64,
    errors: AtomicU64,
}

type Chan = ShmChannel<u64, 1024>;

fn tag_of(off: u64, size: u64) -> u64 {
    MAGIC ^ (off << 16) ^ size
}

fn producer(a: &FreeListAllocator, ctl: &Ctl, ch: &Chan, seed: u64) {
    let tx = ch.sender().unwrap();
    let mut rng = Rng::new(seed);
    let mut buf = Vec::new();
    while ctl.stop.load(Ordering::Acquire) == 0 {
        let size = 16 + rng.below(4080);
        let off = match a.allocate(size as usize) {
            Ok(o) => o,
            Err(_) => {
                ctl.errors.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
        };
        let t = tag_of(off.get(), size);
        buf.clear();
        buf.extend_from_slice(&size.to_le_bytes());
        while buf.len() + 8 <= size as usize {
            buf.extend_from_slice(&t.to_le_bytes());
        }
        a.write(off, &buf).unwrap();
        let mut v = off.get();
        loop {
            match tx.send(v, Some(Duration::from_millis(50))) {
                Ok(()) => break,
                Err(e) if ctl.stop.load(Ordering::Acquire) != 0 => {
                    v = e.into_inner();
                    a.free(Offset::new(v)).unwrap();
                    return;
                }
                Err(e) => v = e.into_inner(),
            }
        }
        ctl.sent.fetch_add(1, Ordering::Relaxed);
    }
}

fn consumer(a: &FreeListAllocator, ctl: &Ctl, ch: &Chan) {
    let rx = ch.receiver().unwrap();
    let mut head = [0u8; 8];
    loop {
        let off = match rx.recv(Some(Duration::from_millis(50))) {
            Ok(o) => Offset::new(o),
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
            Err(e) => panic!("consumer: {e}"),
        };
        a.read_into(off, &mut head).unwrap();
        let size = u64::from_le_bytes(head);
        let body = a.read(off, size as usize).unwrap();
        let t = tag_of(off.get(), size).to_le_bytes();
        if body[8..].chunks_exact(8).any(|c| c != t) {
            ctl.damaged.fetch_add(1, Ordering::Relaxed);
        }
        a.free(off).unwrap();
        ctl.checked.fetch_add(1, Ordering::Relaxed);
    }
}

fn spawn(role: &str, name: &str, seed: u64) -> Child {
    common::spawn_child(
        "remote_frees_at_scale_with_kills",
        role,
        &[("SA_NAME", name.into()), ("SA_SEED", seed.to_string())],
    )
}

/// Waits until the worker says it is running (its handle joined and its endpoint
/// is registered), so that a kill lands mid-work.
fn ready(c: &mut Child) {
    let mut out = BufReader::new(c.stdout.take().unwrap());
    let mut line = String::new();
    while out.read_line(&mut line).unwrap() > 0 {
        if line.contains("@@ running") {
            // Keep draining its output, or its next write would fail (broken pipe).
            std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
            return;
        }
        line.clear();
    }
    panic!("worker ended before it ran");
}

#[test]
fn remote_frees_at_scale_with_kills() {
    if let Some(r) = role() {
        let a = FreeListAllocator::open(&env_req("SA_NAME")).unwrap();
        let ctl: &Ctl = a.root("ctl").unwrap();
        let ch: &Chan = a.root("chan").unwrap();
        common::say("running");
        match r.as_str() {
            "producer" => producer(&a, ctl, ch, env_req("SA_SEED").parse().unwrap()),
            "consumer" => consumer(&a, ctl, ch),
            other => panic!("unknown role {other}"),
        }
        return;
    }
    let name = ShmName::new("remote-free");
    let a = FreeListAllocator::create(name.as_str(), CAP).unwrap();
    let ctl: &Ctl = a.root("ctl").unwrap();
    let ch: &Chan = a.root("chan").unwrap();
    // The parent keeps one endpoint per side while workers come and go, so that
    // nobody sees a transient "every peer is gone".
    let keep_tx = ch.sender().unwrap();
    let keep_rx = ch.receiver().unwrap();
    let kills = env_u64("SA_RF_KILLS", 12);
    let millis = env_u64("SA_RF_MILLIS", 3000);
    let mut rng = Rng::new(0xF00D);
    let mut seed = 1;
    let mut workers: Vec<(String, KillOnDrop)> = Vec::new();
    for r in ["producer", "producer", "consumer", "consumer"] {
        seed += 1;
        let mut c = spawn(r, name.as_str(), seed);
        ready(&mut c);
        workers.push((r.to_owned(), KillOnDrop::new(c)));
    }
    let start = Instant::now();
    let mut killed = 0;
    while killed < kills || start.elapsed() < Duration::from_millis(millis) {
        std::thread::sleep(Duration::from_millis(10 + rng.below(150)));
        let k = rng.below(workers.len() as u64) as usize;
        let (r, mut w) = workers.swap_remove(k);
        w.child().kill().unwrap();
        let _ = w.child().wait();
        killed += 1;
        seed += 1;
        let mut c = spawn(&r, name.as_str(), seed);
        ready(&mut c);
        workers.push((r, KillOnDrop::new(c)));
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "watchdog: run took too long"
        );
    }
    // Stop producers, then let consumers drain and see the senders gone.
    ctl.stop.store(1, Ordering::Release);
    drop(keep_tx);
    let deadline = Instant::now() + Duration::from_secs(60);
    for (r, w) in &mut workers {
        loop {
            if let Some(s) = w.child().try_wait().unwrap() {
                assert!(s.success(), "{r} failed: {s}");
                break;
            }
            assert!(Instant::now() < deadline, "watchdog: a {r} never finished");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    // What is still queued (a dead consumer's share) is freed here.
    let mut drained = 0;
    while let Ok(o) = keep_rx.try_recv() {
        a.free(Offset::new(o)).unwrap();
        drained += 1;
    }
    drop(keep_rx);
    let sent = ctl.sent.load(Ordering::Relaxed);
    let checked = ctl.checked.load(Ordering::Relaxed);
    assert_eq!(
        ctl.damaged.load(Ordering::Relaxed),
        0,
        "a block was handed out twice"
    );
    // Dead handles' slots and caches come back through the reclaimer; blocks the
    // dead held (allocated, not yet sent; received, not yet freed) are swept here.
    // (The kernel drops a dead process's lock a moment after its death: retry.)
    for _ in 0..5000 {
        a.reclaim();
        if a.processes().iter().all(|p| p.alive) {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(a.processes().iter().all(|p| p.alive), "{:?}", a.processes());
    let l = *a.segment().layout();
    let mut swept = 0;
    for off in (l.data_offset..l.data_end()).step_by(16) {
        let o = Offset::new(off);
        if a.check_range(o, 1).is_ok() && a.free(o).is_ok() {
            swept += 1;
        }
    }
    println!(
        "remote frees: {sent} sent, {checked} checked and freed by another process, \
         {drained} drained at the end, {killed} kills, {swept} blocks swept after the kills"
    );
    assert!(checked > 10_000, "too little work: {checked}");
    // Each kill may strand the blocks its victim held: at most one in a producer's
    // hands (plus a refill batch of 8) or one in a consumer's. Roots are never
    // freed (a raw free of a root's block is `FreeError::Root`): they stay.
    assert!(
        swept <= killed * 9 + 8,
        "{swept} blocks swept after {killed} kills"
    );
    let s = a.stats();
    let roots = a.roots().unwrap().len() as u64;
    assert_eq!(s.live_blocks, Some(roots), "{s:?}");
    let big = a.allocate(CAP as usize / 2).unwrap();
    a.free(big).unwrap();
}
