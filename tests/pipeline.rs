//! Batch pipelines across real processes: every digest checked in both delivery
//! modes, a subscriber SIGKILLed while holding a batch, a late joiner, a slow
//! subscriber under each back-pressure policy (block, drop oldest), the publisher
//! killed mid-stream (and its names gone afterwards), a fork child's copy of a
//! batch, and idle subscribers' CPU time.
#![cfg(feature = "rkyv")]

mod common;

use std::time::{Duration, Instant};

use common::*;
use shared_allocator::archive::{
    Backpressure, Delivery, PipelineError, PipelineOptions, Publisher, Subscriber,
};

#[derive(rkyv::Archive, rkyv::Serialize, Debug)]
struct Msg {
    seq: u64,
    values: Vec<u64>,
    label: String,
}

const WATCHDOG: Duration = Duration::from_secs(120);

fn value(seq: u64, i: u64) -> u64 {
    (seq.wrapping_mul(0x9E37_79B9_7F4A_7C15)) ^ i
}

/// Batch `seq`: its size varies (so the regions grow several times).
fn msg(seq: u64, scale: u64) -> Msg {
    let n = scale + (seq % 7) * scale / 2;
    Msg {
        seq,
        values: (0..n).map(|i| value(seq, i)).collect(),
        label: format!("batch-{seq}"),
    }
}

/// Checks every field of an archived batch against what `msg` makes.
fn check(m: &ArchivedMsg, seq: u64) {
    assert_eq!(m.seq.to_native(), seq, "sequence number");
    assert_eq!(m.label.as_str(), format!("batch-{seq}"));
    for (i, v) in m.values.iter().enumerate() {
        assert_eq!(v.to_native(), value(seq, i as u64), "batch {seq} value {i}");
    }
}

fn cpu_now() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

fn wait_for_subscribers<T: shared_allocator::archive::PipelineBatch>(p: &Publisher<T>, n: usize) {
    let start = Instant::now();
    while p.subscribers() < n {
        assert!(
            start.elapsed() < WATCHDOG,
            "watchdog: subscribers did not join"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn open_retrying(name: &str) -> Subscriber<Msg> {
    let start = Instant::now();
    loop {
        match Subscriber::<Msg>::open(name) {
            Ok(s) => return s,
            Err(e) => {
                assert!(
                    start.elapsed() < WATCHDOG,
                    "watchdog: cannot open {name}: {e}"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

/// Subscriber role: receives until the end of the stream (or the publisher's
/// death), checking every batch; reports count, last sequence number, how it
/// ended, and the CPU and wall time of its first (idle) wait.
///
/// `SA_HOLD`: create that file while holding the first batch, then sleep (to be
/// killed), or with `SA_GO` wait until that file exists and go on. `SA_SLOW_MS`:
/// sleep that long holding each batch.
fn subscriber_role() {
    let name = env_req("SA_NAME");
    let every = env_req("SA_MODE") == "every";
    let hold = std::env::var("SA_HOLD").ok(); // a file to create while holding
    let go = std::env::var("SA_GO").ok();
    let slow = Duration::from_millis(env_u64("SA_SLOW_MS", 0));
    let mut sub = open_retrying(&name);
    let (mut count, mut last, mut idle_wall, mut idle_cpu) = (0u64, 0u64, 0u128, 0u128);
    let ended = loop {
        let (w0, c0) = (Instant::now(), cpu_now());
        let got = sub.recv_timeout(WATCHDOG);
        if count == 0 {
            idle_wall = w0.elapsed().as_micros();
            idle_cpu = cpu_now().saturating_sub(c0).as_micros();
        }
        match got {
            Ok(Some(batch)) => {
                let seq = batch.seq();
                check(&batch, seq);
                if every && last != 0 {
                    assert_eq!(seq, last + 1, "Every mode skipped a batch");
                }
                assert!(seq > last, "batches out of order: {seq} after {last}");
                if last != 0 {
                    assert_eq!(seq, last + 1 + batch.skipped(), "skips are counted");
                }
                last = seq;
                count += 1;
                if let Some(mark) = hold.as_ref().filter(|_| count == 1) {
                    std::fs::write(mark, b"holding").unwrap();
                    match &go {
                        None => std::thread::sleep(WATCHDOG), // killed here
                        Some(go) => {
                            let start = Instant::now();
                            while !std::path::Path::new(go).exists() {
                                assert!(start.elapsed() < WATCHDOG, "watchdog: no go");
                                std::thread::sleep(Duration::from_millis(5));
                            }
                        }
                    }
                    check(&batch, seq); // intact after the publisher went on
                }
                std::thread::sleep(slow);
            }
            Ok(None) => break "closed",
            Err(PipelineError::PublisherGone) => break "gone",
            Err(e) => panic!("subscriber: {e}"),
        }
    };
    let skipped = sub.skipped();
    drop(sub);
    say(format!(
        "sub count={count} skipped={skipped} last={last} idle_wall_us={idle_wall} idle_cpu_us={idle_cpu} ended={ended}"
    ));
}

fn spawn_subscriber(
    entry: &str,
    name: &str,
    mode: &str,
    extra: &[(&str, String)],
) -> std::process::Child {
    let mut env = vec![("SA_NAME", name.to_owned()), ("SA_MODE", mode.to_owned())];
    env.extend(extra.iter().cloned());
    spawn_child(entry, "subscriber", &env)
}

fn lines(out: &[String]) -> Vec<&str> {
    out.iter().filter_map(|l| l.strip_prefix("@@ ")).collect()
}

fn thousand_batches(entry: &str, delivery: Delivery, mode: &str) {
    if role().is_some() {
        return subscriber_role();
    }
    let name = ShmName::new(mode);
    let batches = env_u64("SA_BATCHES", 1000);
    let mut opts = PipelineOptions::new(delivery);
    opts.region_capacity = 4096; // batches are 8-24 KiB: the regions grow
    opts.timeout = WATCHDOG;
    let mut p = Publisher::<Msg>::create(name.as_str(), opts).unwrap();
    let kids = (0..3)
        .map(|_| spawn_subscriber(entry, name.as_str(), mode, &[]))
        .collect();
    wait_for_subscribers(&p, 3);
    std::thread::sleep(Duration::from_millis(300)); // they sit idle meanwhile
    for seq in 1..=batches {
        assert_eq!(p.publish(&msg(seq, 1000)).unwrap(), seq);
    }
    assert!(
        p.region_capacity() >= 20_000,
        "regions grew: {}",
        p.region_capacity()
    );
    p.close().unwrap();
    for out in finish_all(kids, WATCHDOG, "subscriber") {
        let l = lines(&out);
        let r = report(&l.iter().map(|s| s.to_string()).collect::<Vec<_>>(), "sub").to_owned();
        assert!(r.ends_with("ended=closed"), "{r}");
        assert_eq!(field(&r, "last"), batches, "{r}");
        if delivery == Delivery::Every {
            assert_eq!(field(&r, "count"), batches, "{r}");
        } else {
            assert!(field(&r, "count") >= 1, "{r}");
        }
        // Idle: blocked on a futex, not spinning (a generous bound, not a timing).
        let (wall, cpu) = (field(&r, "idle_wall_us"), field(&r, "idle_cpu_us"));
        assert!(wall >= 200_000, "the first wait was idle for 300 ms: {r}");
        assert!(
            cpu * 5 < wall,
            "idle subscriber used {cpu} us CPU in {wall} us: {r}"
        );
        println!("{mode}: {r}");
    }
}

#[test]
fn every_mode_three_subscribers_every_digest() {
    thousand_batches(
        "every_mode_three_subscribers_every_digest",
        Delivery::Every,
        "every",
    );
}

#[test]
fn latest_mode_three_subscribers_every_digest() {
    thousand_batches(
        "latest_mode_three_subscribers_every_digest",
        Delivery::Latest,
        "latest",
    );
}

/// A subscriber SIGKILLed while holding batch 1: its slot stops counting, so the
/// publisher goes on (instead of timing out) and the other subscriber gets all;
/// in the pinned modes its dead pin no longer keeps its region, and its slot is
/// taken over by a new subscriber.
#[test]
fn subscriber_killed_holding_a_batch() {
    const ENTRY: &str = "subscriber_killed_holding_a_batch";
    if role().is_some() {
        return subscriber_role();
    }
    for (delivery, backpressure, mode) in [
        (Delivery::Every, Backpressure::Block, "every"),
        (Delivery::Every, Backpressure::DropOldest, "drop"),
        (Delivery::Latest, Backpressure::Block, "latest"),
    ] {
        let name = ShmName::new("killed-sub");
        let mut opts = PipelineOptions::new(delivery);
        opts.backpressure = backpressure;
        opts.regions = 2;
        opts.max_subscribers = 2;
        opts.timeout = Duration::from_secs(30);
        let mut p = Publisher::<Msg>::create(name.as_str(), opts).unwrap();
        let mark = std::env::temp_dir().join(format!("{}.holding", name.as_str()));
        let mut victim = KillOnDrop::new(spawn_subscriber(
            ENTRY,
            name.as_str(),
            mode,
            &[("SA_HOLD", mark.display().to_string())],
        ));
        wait_for_subscribers(&p, 1);
        let survivor = spawn_subscriber(ENTRY, name.as_str(), mode, &[]);
        wait_for_subscribers(&p, 2);
        p.publish(&msg(1, 100)).unwrap();
        // Wait until the victim holds batch 1 (it creates the mark), then kill it.
        let start = Instant::now();
        while !mark.exists() {
            assert!(
                start.elapsed() < WATCHDOG,
                "watchdog: victim never got batch 1"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = std::fs::remove_file(&mark);
        let mut v = victim.take();
        v.kill().unwrap();
        v.wait().unwrap();
        // The dead subscriber's slot (and pin) is taken over (2 slots, 1 live).
        drop(Subscriber::<Msg>::open(name.as_str()).unwrap());
        // With K = 2, batch 3 reuses batch 1's region: only possible because the
        // dead holder no longer counts (Every would otherwise time out after 30 s).
        for seq in 2..=20 {
            p.publish(&msg(seq, 100)).unwrap();
        }
        assert_eq!(p.subscribers(), 1);
        p.close().unwrap();
        let out = finish_all(vec![survivor], WATCHDOG, "survivor");
        let l: Vec<String> = lines(&out[0]).iter().map(|s| s.to_string()).collect();
        let r = report(&l, "sub");
        assert_eq!(field(r, "last"), 20, "{r}");
        assert!(r.ends_with("ended=closed"), "{r}");
    }
}

/// A subscriber that joins after 5 batches receives 6.. (Every mode).
#[test]
fn late_joiner_starts_at_the_next_batch() {
    let name = ShmName::new("late");
    let mut p =
        Publisher::<Msg>::create(name.as_str(), PipelineOptions::new(Delivery::Every)).unwrap();
    let mut early = Subscriber::<Msg>::open(name.as_str()).unwrap();
    for seq in 1..=5 {
        p.publish(&msg(seq, 10)).unwrap();
        assert_eq!(early.recv_timeout(WATCHDOG).unwrap().unwrap().seq(), seq);
    }
    let mut late = Subscriber::<Msg>::open(name.as_str()).unwrap();
    for seq in 6..=8 {
        p.publish(&msg(seq, 10)).unwrap();
        assert_eq!(early.recv_timeout(WATCHDOG).unwrap().unwrap().seq(), seq);
    }
    let mut got = vec![];
    for _ in 6..=8 {
        let b = late.recv_timeout(WATCHDOG).unwrap().unwrap();
        check(&b, b.seq());
        got.push(b.seq());
    }
    assert_eq!(got, [6, 7, 8]);
    p.close().unwrap(); // every live subscriber has drained: no wait
    assert!(late.recv_timeout(WATCHDOG).unwrap().is_none());
}

/// Every mode blocks the publisher for a slow subscriber, then fails with
/// `Timeout` (nothing published); once the batch is released it goes on.
/// Latest mode never blocks it.
#[test]
fn slow_subscriber_back_pressure() {
    let name = ShmName::new("slow");
    let mut opts = PipelineOptions::new(Delivery::Every);
    opts.regions = 2;
    opts.timeout = Duration::from_millis(200);
    let mut p = Publisher::<Msg>::create(name.as_str(), opts).unwrap();
    let mut slow = Subscriber::<Msg>::open(name.as_str()).unwrap();
    p.publish(&msg(1, 10)).unwrap();
    p.publish(&msg(2, 10)).unwrap();
    let held = slow.recv().unwrap().unwrap();
    assert!(matches!(
        p.publish(&msg(3, 10)),
        Err(PipelineError::Timeout(_))
    ));
    assert_eq!(p.published(), 2);
    check(&held, 1); // untouched by the failed publish
    drop(held);
    p.publish(&msg(3, 10)).unwrap();
    for seq in 2..=3 {
        let b = slow.recv().unwrap().unwrap();
        check(&b, seq);
    }

    let name = ShmName::new("slow-latest");
    let mut p =
        Publisher::<Msg>::create(name.as_str(), PipelineOptions::new(Delivery::Latest)).unwrap();
    let mut slow = Subscriber::<Msg>::open(name.as_str()).unwrap();
    p.publish(&msg(1, 10)).unwrap();
    let held = slow.recv().unwrap().unwrap();
    for seq in 2..=100 {
        p.publish(&msg(seq, 10)).unwrap(); // never blocks
    }
    check(&held, 1);
    drop(held);
    let b = slow.recv().unwrap().unwrap();
    assert_eq!(b.seq(), 100, "Latest hands out the newest batch");
    check(&b, 100);
}

/// The publisher is SIGKILLed while publishing large batches: the subscribers see
/// only complete, correct batches, then `PublisherGone`; once they finish, none
/// of the pipeline's names is left in /dev/shm.
#[test]
fn publisher_killed_mid_batch() {
    const ENTRY: &str = "publisher_killed_mid_batch";
    match role().as_deref() {
        Some("subscriber") => return subscriber_role(),
        Some("publisher") => {
            let mode = env_req("SA_MODE");
            let mut opts = PipelineOptions::new(if mode == "latest" {
                Delivery::Latest
            } else {
                Delivery::Every
            });
            if mode == "drop" {
                opts.backpressure = Backpressure::DropOldest;
            }
            opts.timeout = WATCHDOG;
            let mut p = Publisher::<Msg>::create(&env_req("SA_NAME"), opts).unwrap();
            wait_for_subscribers(&p, 2);
            // With `SA_FAILPOINT`: die at that point of the 5th batch (the first four
            // are complete), instead of at a random instant.
            #[cfg(feature = "failpoints")]
            if let Ok(point) = std::env::var("SA_FAILPOINT") {
                static HITS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                fail::cfg_callback(point, || {
                    if HITS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 4 {
                        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
                    }
                })
                .unwrap();
            }
            for seq in 1.. {
                p.publish(&msg(seq, 100_000)).unwrap(); // ~1 MiB: killed mid-write
            }
            unreachable!();
        }
        _ => {}
    }
    // At a random instant; with the `failpoints` feature also at the step between
    // claiming a region and writing the batch (.ci/run runs that build).
    let mut points = vec![None];
    if cfg!(feature = "failpoints") {
        points.push(Some("pipeline.publish.claimed"));
    }
    for (mode, point) in ["every", "latest", "drop"]
        .into_iter()
        .flat_map(|m| points.iter().map(move |p| (m, *p)))
    {
        let name = ShmName::new("killed-pub");
        let data = format!("{}-d", name.as_str());
        let mut env = vec![
            ("SA_NAME", name.as_str().to_owned()),
            ("SA_MODE", mode.to_owned()),
        ];
        if let Some(point) = point {
            env.push(("SA_FAILPOINT", point.to_owned()));
        }
        let mut publisher = KillOnDrop::new(spawn_child(ENTRY, "publisher", &env));
        let subs = (0..2)
            .map(|_| spawn_subscriber(ENTRY, name.as_str(), mode, &[]))
            .collect();
        let mut p = publisher.take();
        if point.is_none() {
            std::thread::sleep(Duration::from_millis(700));
            p.kill().unwrap();
            p.wait().unwrap();
        } else {
            // It kills itself at the point; a watchdog in case it never gets there.
            let start = Instant::now();
            let status = loop {
                if let Some(st) = p.try_wait().unwrap() {
                    break st;
                }
                if start.elapsed() > WATCHDOG {
                    let _ = p.kill();
                    panic!("{mode}: the publisher never reached {point:?}");
                }
                std::thread::sleep(Duration::from_millis(10));
            };
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(
                status.signal(),
                Some(9),
                "{mode}: died at {point:?}: {status:?}"
            );
        }
        for out in finish_all(subs, WATCHDOG, "subscriber") {
            let l: Vec<String> = lines(&out).iter().map(|s| s.to_string()).collect();
            let r = report(&l, "sub");
            assert!(r.ends_with("ended=gone"), "{r}");
            println!("{mode}: {r}");
        }
        // Nothing of the pipeline remains: the subscribers removed the names.
        let left: Vec<String> = shm_entries(name.as_str())
            .into_iter()
            .filter(|e| e == name.as_str() || e.starts_with(&data))
            .collect();
        for e in &left {
            let _ = shared_allocator::unlink(e);
        }
        assert!(
            left.is_empty(),
            "{mode} {point:?}: a killed publisher's names remain: {left:?}"
        );
    }
}

/// A subscriber copied into a fork child does not use the parent's slot there.
#[test]
fn forked_subscriber_is_refused() {
    let name = ShmName::new("fork");
    let mut p =
        Publisher::<Msg>::create(name.as_str(), PipelineOptions::new(Delivery::Every)).unwrap();
    let mut sub = Subscriber::<Msg>::open(name.as_str()).unwrap();
    p.publish(&msg(1, 10)).unwrap();
    // SAFETY: the child only calls `recv` (no locks held by other threads are
    // touched: the test harness thread is idle) and leaves with `_exit`.
    match unsafe { nix::unistd::fork() }.unwrap() {
        nix::unistd::ForkResult::Child => {
            let ok = matches!(
                sub.recv_timeout(Duration::ZERO),
                Err(PipelineError::Forked(_))
            );
            std::mem::forget(sub);
            // SAFETY: `_exit` ends the child without running the parent's destructors.
            unsafe { nix::libc::_exit(if ok { 0 } else { 1 }) };
        }
        nix::unistd::ForkResult::Parent { child } => {
            let status = nix::sys::wait::waitpid(child, None).unwrap();
            assert_eq!(status, nix::sys::wait::WaitStatus::Exited(child, 0));
        }
    }
    check(&sub.recv_timeout(WATCHDOG).unwrap().unwrap(), 1);
}

/// Latest mode: every subscriber holding a different old batch never leaves the
/// publisher without a free region; the held batches stay intact.
#[test]
fn latest_every_subscriber_holding_an_old_batch() {
    let name = ShmName::new("latest-hold");
    let mut opts = PipelineOptions::new(Delivery::Latest);
    opts.max_subscribers = 3;
    let mut p = Publisher::<Msg>::create(name.as_str(), opts).unwrap();
    let mut subs: Vec<_> = (0..3)
        .map(|_| Subscriber::<Msg>::open(name.as_str()).unwrap())
        .collect();
    let mut held = Vec::new();
    for (i, s) in subs.iter_mut().enumerate() {
        p.publish(&msg(i as u64 + 1, 50)).unwrap();
        held.push(s.recv().unwrap().unwrap()); // pins batch i + 1
    }
    for seq in 4..=200 {
        p.publish(&msg(seq, 50)).unwrap();
    }
    for (i, b) in held.iter().enumerate() {
        check(b, i as u64 + 1);
    }
    assert!(
        Subscriber::<Msg>::open(name.as_str()).is_err(),
        "a 4th is Full"
    );
    drop(held);
    let b = subs[0].recv().unwrap().unwrap();
    assert_eq!(b.seq(), 200);
}

/// Wrong type and too many subscribers are typed errors.
#[test]
fn wrong_type_and_full_are_refused() {
    let name = ShmName::new("refuse");
    let mut opts = PipelineOptions::new(Delivery::Every);
    opts.max_subscribers = 1;
    let _p = Publisher::<Msg>::create(name.as_str(), opts).unwrap();
    assert!(matches!(
        Subscriber::<Vec<u64>>::open(name.as_str()),
        Err(PipelineError::TypeMismatch(_))
    ));
    let _one = Subscriber::<Msg>::open(name.as_str()).unwrap();
    assert!(matches!(
        Subscriber::<Msg>::open(name.as_str()),
        Err(PipelineError::Full(1))
    ));
    assert!(matches!(
        Publisher::<Msg>::create(name.as_str(), PipelineOptions::new(Delivery::Every)),
        Err(PipelineError::Segment(_))
    ));
}

fn wait_for_file(path: &std::path::Path, what: &str) {
    let start = Instant::now();
    while !path.exists() {
        assert!(start.elapsed() < WATCHDOG, "watchdog: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A slow subscriber process under each back-pressure policy of `Every`:
/// - `Block`: it sleeps on every batch; the publisher waits for it, it gets all
///   100 batches, none skipped;
/// - `DropOldest`: it holds batch 1 while the publisher publishes 100 more with a
///   1 ms timeout (Block would fail with `Timeout`): the publisher never waits;
///   the subscriber's held batch stays intact, then it gets the retained newest
///   batches, learns how many it lost (`skipped`), and every batch it gets is
///   digest-checked. A second one that sleeps on every batch accounts for every
///   batch as received or skipped.
#[test]
fn slow_subscriber_process_under_each_policy() {
    const ENTRY: &str = "slow_subscriber_process_under_each_policy";
    if role().is_some() {
        return subscriber_role();
    }
    // Block.
    let name = ShmName::new("slow-block");
    let mut opts = PipelineOptions::new(Delivery::Every);
    opts.regions = 2;
    opts.timeout = WATCHDOG;
    let mut p = Publisher::<Msg>::create(name.as_str(), opts).unwrap();
    let kid = spawn_subscriber(ENTRY, name.as_str(), "every", &[("SA_SLOW_MS", "3".into())]);
    wait_for_subscribers(&p, 1);
    for seq in 1..=100 {
        p.publish(&msg(seq, 200)).unwrap();
    }
    p.close().unwrap();
    let out = finish_all(vec![kid], WATCHDOG, "block subscriber");
    let l: Vec<String> = lines(&out[0]).iter().map(|s| s.to_string()).collect();
    let r = report(&l, "sub");
    assert_eq!(field(r, "count"), 100, "{r}");
    assert_eq!(field(r, "skipped"), 0, "{r}");
    assert!(r.ends_with("ended=closed"), "{r}");

    // Drop oldest: a subscriber that holds batch 1 until told to go on.
    let name = ShmName::new("slow-drop");
    let mut opts = PipelineOptions::new(Delivery::Every);
    opts.backpressure = Backpressure::DropOldest;
    opts.regions = 3;
    opts.max_subscribers = 2;
    opts.region_capacity = 4096; // grows while the subscriber holds batch 1
    opts.timeout = Duration::from_millis(1);
    let mut p = Publisher::<Msg>::create(name.as_str(), opts).unwrap();
    let mark = std::env::temp_dir().join(format!("{}.holding", name.as_str()));
    let go = std::env::temp_dir().join(format!("{}.go", name.as_str()));
    let holder = spawn_subscriber(
        ENTRY,
        name.as_str(),
        "drop",
        &[
            ("SA_HOLD", mark.display().to_string()),
            ("SA_GO", go.display().to_string()),
        ],
    );
    let sleeper = spawn_subscriber(ENTRY, name.as_str(), "drop", &[("SA_SLOW_MS", "2".into())]);
    wait_for_subscribers(&p, 2);
    p.publish(&msg(1, 200)).unwrap();
    wait_for_file(&mark, "the holder never got batch 1");
    for seq in 2..=101 {
        // Never waits: with a 1 ms timeout, Block would fail here.
        assert_eq!(p.publish(&msg(seq, 200 + seq * 20)).unwrap(), seq);
    }
    std::fs::write(&go, b"go").unwrap();
    // Close waits only 1 ms for the subscribers to drain: let them drain first.
    let start = Instant::now();
    while p.flush().is_err() {
        assert!(
            start.elapsed() < WATCHDOG,
            "watchdog: subscribers never drained"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    p.close().unwrap();
    let _ = std::fs::remove_file(&mark);
    let _ = std::fs::remove_file(&go);
    let outs = finish_all(vec![holder, sleeper], WATCHDOG, "drop subscriber");
    for (i, out) in outs.iter().enumerate() {
        let l: Vec<String> = lines(out).iter().map(|s| s.to_string()).collect();
        let r = report(&l, "sub");
        println!("drop-oldest subscriber {i}: {r}");
        assert!(r.ends_with("ended=closed"), "{r}");
        assert_eq!(field(r, "last"), 101, "the newest batch arrives: {r}");
        assert_eq!(
            field(r, "count") + field(r, "skipped"),
            101,
            "every batch received or counted as skipped: {r}"
        );
        if i == 0 {
            // Held batch 1 while 100 more were published; 3 are retained.
            assert_eq!(field(r, "count"), 4, "{r}");
            assert_eq!(field(r, "skipped"), 97, "{r}");
        }
    }
}

/// Drop oldest in one process: a held batch survives the publisher lapping it and
/// a growth of the regions; the next `recv` reports the skipped batches.
#[test]
fn drop_oldest_reports_skipped_batches() {
    let name = ShmName::new("drop-skip");
    let mut opts = PipelineOptions::new(Delivery::Every);
    opts.backpressure = Backpressure::DropOldest;
    opts.regions = 2;
    opts.max_subscribers = 1;
    opts.region_capacity = 256;
    opts.timeout = Duration::from_millis(1);
    let mut p = Publisher::<Msg>::create(name.as_str(), opts).unwrap();
    let mut sub = Subscriber::<Msg>::open(name.as_str()).unwrap();
    p.publish(&msg(1, 10)).unwrap();
    p.publish(&msg(2, 10)).unwrap();
    {
        let b = sub.recv().unwrap().unwrap();
        assert_eq!((b.seq(), b.skipped()), (1, 0));
        for seq in 3..=50 {
            p.publish(&msg(seq, 10 + seq * 10)).unwrap(); // grows, never waits
        }
        check(&b, 1);
    }
    let b = sub.recv().unwrap().unwrap();
    assert_eq!((b.seq(), b.skipped()), (49, 47), "the 2 newest are kept");
    check(&b, 49);
    drop(b);
    let b = sub.recv().unwrap().unwrap();
    assert_eq!((b.seq(), b.skipped()), (50, 0));
    check(&b, 50);
    drop(b);
    assert_eq!(sub.skipped(), 47);
    p.close().unwrap();
    assert!(sub.recv().unwrap().is_none());
}

/// A batch copied into a fork child: dropping the copy there must not release
/// the parent's pin (else the publisher overwrites the region the parent is
/// reading), and reading through the copy panics instead of racing the writer.
#[test]
fn forked_batch_copy_releases_nothing() {
    for (delivery, backpressure) in [
        (Delivery::Latest, Backpressure::Block),
        (Delivery::Every, Backpressure::DropOldest),
    ] {
        let name = ShmName::new("fork-batch");
        let mut opts = PipelineOptions::new(delivery);
        opts.backpressure = backpressure;
        opts.max_subscribers = 1;
        opts.regions = 1;
        let mut p = Publisher::<Msg>::create(name.as_str(), opts).unwrap();
        let mut sub = Subscriber::<Msg>::open(name.as_str()).unwrap();
        p.publish(&msg(1, 50)).unwrap();
        let held = sub.recv().unwrap().unwrap();
        // SAFETY: the child only drops its copies and leaves with `_exit`; no
        // other thread of this test holds a lock the child could need.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let read =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| held.seq.to_native()));
                drop(held); // must not release the parent's pin
                std::mem::forget(sub);
                // SAFETY: `_exit` ends the child without running the parent's
                // destructors.
                unsafe { nix::libc::_exit(if read.is_err() { 0 } else { 1 }) };
            }
            nix::unistd::ForkResult::Parent { child } => {
                let status = nix::sys::wait::waitpid(child, None).unwrap();
                assert_eq!(
                    status,
                    nix::sys::wait::WaitStatus::Exited(child, 0),
                    "reading a batch copy in a fork child panics"
                );
            }
        }
        for seq in 2..=100 {
            p.publish(&msg(seq, 50 + seq)).unwrap();
        }
        check(&held, 1); // still pinned: never overwritten
        assert_eq!(held.seq(), 1);
    }
}

/// A publisher copied into a fork child (red team rt22 A14/A20): there it must
/// neither publish into the parent's pipeline (two writers tear held batches) nor
/// close it or remove its names when dropped.
#[test]
fn forked_publisher_is_refused() {
    let name = ShmName::new("fork-pub");
    let mut opts = PipelineOptions::new(Delivery::Latest);
    opts.max_subscribers = 2;
    let mut p = Publisher::<Msg>::create(name.as_str(), opts).unwrap();
    let mut sub = Subscriber::<Msg>::open(name.as_str()).unwrap();
    p.publish(&msg(1, 10)).unwrap();
    let held = sub.recv().unwrap().unwrap();
    // SAFETY: the child only calls `publish`, `flush`, `close` on its copy and
    // leaves with `_exit`; no other thread of this test holds a lock it needs.
    match unsafe { nix::unistd::fork() }.unwrap() {
        nix::unistd::ForkResult::Child => {
            let mut ok = matches!(p.publish(&msg(99, 10)), Err(PipelineError::Forked(_)));
            ok &= matches!(p.flush(), Err(PipelineError::Forked(_)));
            ok &= matches!(p.close(), Err(PipelineError::Forked(_))); // closes nothing
            std::mem::forget(held);
            std::mem::forget(sub);
            // SAFETY: `_exit` ends the child without running the parent's destructors.
            unsafe { nix::libc::_exit(if ok { 0 } else { 1 }) };
        }
        nix::unistd::ForkResult::Parent { child } => {
            let status = nix::sys::wait::waitpid(child, None).unwrap();
            assert_eq!(status, nix::sys::wait::WaitStatus::Exited(child, 0));
        }
    }
    assert_eq!(p.published(), 1, "the child published nothing");
    assert!(
        shm_entries(name.as_str())
            .iter()
            .any(|e| e == name.as_str()),
        "the child's drop removed no name"
    );
    for seq in 2..=50 {
        p.publish(&msg(seq, 10 + seq)).unwrap();
    }
    check(&held, 1);
    drop(held);
    let b = sub.recv().unwrap().unwrap();
    check(&b, 50);
    drop(b);
    p.close().unwrap();
    assert!(sub.recv().unwrap().is_none());
}

/// Region capacities whose sizes overflow are `BadOption`, not a panic or a
/// pipeline that never publishes (red team rt22 A04/A19).
#[test]
fn huge_region_capacity_is_a_bad_option() {
    for cap in [usize::MAX, 1 << 62, usize::MAX / 2] {
        let name = ShmName::new("huge-cap");
        let mut opts = PipelineOptions::new(Delivery::Latest);
        opts.region_capacity = cap;
        assert!(
            matches!(
                Publisher::<Msg>::create(name.as_str(), opts),
                Err(PipelineError::BadOption("region_capacity"))
            ),
            "capacity {cap}"
        );
        assert!(shm_entries(name.as_str()).is_empty(), "nothing left behind");
    }
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq)]
struct Plain {
    seq: u64,
    values: Vec<u64>,
}

fn plain(seq: u64) -> Plain {
    Plain {
        seq,
        values: (0..50 + seq % 13).map(|i| value(seq, i)).collect(),
    }
}

/// The checked copy path: `recv_copied` hands out the same batches (and skips)
/// as `recv`, releases each one, and with a peer scribbling the control block
/// (red team rt22 A15b) gives typed errors or valid values, never a panic.
#[test]
fn recv_copied_is_the_checked_copy_path() {
    for (delivery, backpressure) in [
        (Delivery::Every, Backpressure::Block),
        (Delivery::Every, Backpressure::DropOldest),
        (Delivery::Latest, Backpressure::Block),
    ] {
        let name = ShmName::new("copied");
        let mut opts = PipelineOptions::new(delivery);
        opts.backpressure = backpressure;
        opts.regions = 2;
        opts.region_capacity = 256; // grows
        opts.timeout = Duration::from_millis(50);
        let mut p = Publisher::<Plain>::create(name.as_str(), opts).unwrap();
        let mut sub = Subscriber::<Plain>::open(name.as_str()).unwrap();
        for seq in 1..=20 {
            p.publish(&plain(seq)).unwrap();
            let (got, skipped, v) = sub.recv_copied(WATCHDOG).unwrap().unwrap();
            assert_eq!((got, skipped), (seq, 0));
            assert_eq!(v, plain(seq));
        }
        if delivery == Delivery::Latest || backpressure == Backpressure::DropOldest {
            for seq in 21..=30 {
                p.publish(&plain(seq)).unwrap();
            }
            let (got, skipped, v) = sub.recv_copied(WATCHDOG).unwrap().unwrap();
            let kept = if delivery == Delivery::Latest { 30 } else { 29 };
            assert_eq!((got, skipped), (kept, kept - 21));
            assert_eq!(v, plain(kept));
            if kept == 29 {
                let (got, skipped, v) = sub.recv_copied(WATCHDOG).unwrap().unwrap();
                assert_eq!((got, skipped, v), (30, 0, plain(30)));
            }
        }
        p.flush().unwrap(); // every batch released
        drop(sub);

        // A scribbling peer on the control segment, between the calls.
        let mut sub = Subscriber::<Plain>::open(name.as_str()).unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(format!("/dev/shm/{}", name.as_str()))
            .unwrap();
        // SAFETY: a test scribbler: this process reads the control block only
        // through `recv_copied`, whose copy-out tolerates concurrent writes.
        let mut map = unsafe { memmap2::MmapMut::map_mut(&file) }.unwrap();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut oks = 0;
        for round in 0..300u64 {
            let _ = p.publish(&plain(1000 + round));
            for _ in 0..4 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let at = (x as usize % (map.len() / 8)) * 8;
                let val = match x % 4 {
                    0 => 0,
                    1 => u64::MAX,
                    2 => x >> 3,
                    _ => x % 64,
                };
                map[at..at + 8].copy_from_slice(&val.to_le_bytes());
            }
            // Errors (and the end of the stream) are fine; a value must be valid.
            if let Ok(Some((_, _, v))) = sub.recv_copied(Duration::from_millis(1)) {
                oks += 1;
                assert_eq!(v.values.len() as u64, 50 + v.seq % 13, "{v:?}");
            }
        }
        println!("{delivery:?}/{backpressure:?}: {oks} values copied under scribbling");
        drop(map);
        drop(sub);
    }
}
