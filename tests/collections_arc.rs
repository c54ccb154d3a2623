//! `ShmArc` with real processes: 8 holders in 8 processes, some SIGKILLed while
//! holding; the block is freed exactly when the last live holder drops.
//!
//! `cargo test --release --test collections_arc`
mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use common::{child_command, env_req, role, wait_or_kill, KillOnDrop, ShmName};
use shared_allocator::collections::{ArcToken, ShmArc};
use shared_allocator::prelude::*;

const VALUE: [u64; 8] = [42, 1, 2, 3, 4, 5, 6, 7];

fn holder() {
    let alloc = FreeListAllocator::open(&env_req("SA_SEG")).unwrap();
    let raw: Vec<u64> = env_req("SA_TOKEN")
        .split(',')
        .map(|x| x.parse().unwrap())
        .collect();
    let token = ArcToken::<[u64; 8]>::from_raw([raw[0], raw[1], raw[2]]);
    let a = ShmArc::from_token(&alloc, token).unwrap();
    assert!(ShmArc::from_token(&alloc, token).is_err(), "redeemed twice");
    let clones = vec![a.clone(), a.clone()];
    assert_eq!(*a, VALUE);
    println!("ready");
    std::io::stdout().flush().unwrap();
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "drop");
    assert!(clones.iter().all(|c| **c == VALUE));
    drop(clones);
    drop(a);
    println!("dropped");
}

/// Redeems a token and drops it, dying at the fail point `SA_FAILPOINT` on the way.
#[cfg(feature = "failpoints")]
fn victim() {
    fail::cfg_callback(env_req("SA_FAILPOINT"), || {
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    })
    .unwrap();
    let alloc = FreeListAllocator::open(&env_req("SA_SEG")).unwrap();
    let raw: Vec<u64> = env_req("SA_TOKEN")
        .split(',')
        .map(|x| x.parse().unwrap())
        .collect();
    let token = ArcToken::<[u64; 8]>::from_raw([raw[0], raw[1], raw[2]]);
    let a = ShmArc::from_token(&alloc, token).unwrap();
    assert_eq!(*a, VALUE);
    drop(a);
    println!("survived");
}

fn live(alloc: &FreeListAllocator) -> u64 {
    alloc.stats().live_blocks.unwrap()
}

#[test]
fn eight_holders_some_killed_freed_when_the_last_live_one_drops() {
    if role().as_deref() == Some("holder") {
        holder();
        return;
    }
    if role().is_some() {
        return;
    }
    let name = ShmName::new("arc");
    let alloc = FreeListAllocator::create(name.as_str(), 8 << 20).unwrap();
    let before = live(&alloc);
    let a = ShmArc::new_in(&alloc, VALUE).unwrap();
    assert_eq!(live(&alloc), before + 1);
    let mut kids = Vec::new();
    let (tx, rx) = mpsc::channel();
    for i in 0..8 {
        let t = a.share().unwrap().to_raw();
        let mut c = child_command(
            &[],
            "eight_holders_some_killed_freed_when_the_last_live_one_drops",
            "holder",
            &[
                ("SA_SEG", name.as_str().to_owned()),
                ("SA_TOKEN", format!("{},{},{}", t[0], t[1], t[2])),
            ],
        )
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
        let out = BufReader::new(c.stdout.take().unwrap());
        let tx = tx.clone();
        std::thread::spawn(move || {
            for l in out.lines() {
                // Only the protocol's lines (the test harness prints its own).
                let l = l.unwrap();
                if l == "ready" || l == "dropped" {
                    let _ = tx.send((i, l));
                }
            }
        });
        kids.push(KillOnDrop(Some(c)));
    }
    let wait_for = |what: &str, n: usize| {
        for _ in 0..n {
            let (i, l) = rx
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("watchdog: no {what} from a holder"));
            assert_eq!(l, what, "holder {i}");
        }
    };
    wait_for("ready", 8);
    assert_eq!(a.holders(), 8 + 1);
    drop(a);
    assert_eq!(live(&alloc), before + 1, "freed while 8 processes hold it");
    // Kill three holders while they hold references.
    for k in kids.iter_mut().take(3) {
        let c = k.0.as_mut().unwrap();
        c.kill().unwrap();
        c.wait().unwrap();
        k.0 = None;
    }
    assert_eq!(live(&alloc), before + 1);
    // The live ones drop one after another: freed exactly at the last.
    for (n, k) in kids.iter_mut().enumerate().skip(3) {
        let c = k.0.as_mut().unwrap();
        writeln!(c.stdin.as_mut().unwrap(), "drop").unwrap();
        wait_for("dropped", 1);
        let status = wait_or_kill(c, Duration::from_secs(60)).expect("watchdog: holder");
        assert!(status.success());
        k.0 = None;
        if n < 7 {
            assert_eq!(
                live(&alloc),
                before + 1,
                "freed before the last live holder dropped"
            );
        }
    }
    assert_eq!(
        live(&alloc),
        before,
        "not freed when the last live holder dropped"
    );
}

#[test]
fn arc_tokens_are_typed_and_single_use() {
    if role().is_some() {
        return;
    }
    let name = ShmName::new("arc-tok");
    let alloc = FreeListAllocator::create(name.as_str(), 8 << 20).unwrap();
    let a = ShmArc::new_in(&alloc, 5u64).unwrap();
    let t = a.share().unwrap();
    let wrong = ArcToken::<u32>::from_raw(t.to_raw());
    assert!(ShmArc::<u32, _>::from_token(&alloc, wrong).is_err());
    let forged = ArcToken::<u64>::from_raw([t.to_raw()[0] + 8, 0, 1]);
    assert!(ShmArc::<u64, _>::from_token(&alloc, forged).is_err());
    let b = ShmArc::<u64, _>::from_token(&alloc, t).unwrap();
    assert!(ShmArc::<u64, _>::from_token(&alloc, t).is_err());
    assert_eq!(*b, 5);
    let before = alloc.stats().live_blocks.unwrap();
    drop(a);
    assert_eq!(alloc.stats().live_blocks.unwrap(), before);
    drop(b);
    assert_eq!(alloc.stats().live_blocks.unwrap(), before - 1);
}

/// A holder killed at each step of the header's lock-protected paths (redeeming,
/// its last drop, reaping another dead holder) leaves the count repairable: the
/// parent, the last live holder, frees the block when it drops.
#[cfg(feature = "failpoints")]
#[test]
fn holders_killed_at_fail_points_still_free_at_the_last_live_drop() {
    const ENTRY: &str = "holders_killed_at_fail_points_still_free_at_the_last_live_drop";
    match role().as_deref() {
        Some("holder") => return holder(),
        Some("victim") => return victim(),
        Some(_) => return,
        None => {}
    }
    for point in ["arc.redeem.claimed", "arc.drop.cleared", "arc.reap.cleared"] {
        let name = ShmName::new("arc-fp");
        let alloc = FreeListAllocator::create(name.as_str(), 8 << 20).unwrap();
        let before = live(&alloc);
        let a = ShmArc::new_in(&alloc, VALUE).unwrap();
        let tok = |t: ArcToken<[u64; 8]>| {
            let t = t.to_raw();
            format!("{},{},{}", t[0], t[1], t[2])
        };
        if point == "arc.reap.cleared" {
            // A holder that dies holding: the victim's last drop reaps it.
            let mut b = child_command(
                &[],
                ENTRY,
                "holder",
                &[
                    ("SA_SEG", name.as_str().to_owned()),
                    ("SA_TOKEN", tok(a.share().unwrap())),
                ],
            )
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
            let mut out = BufReader::new(b.stdout.take().unwrap());
            let mut line = String::new();
            while line.trim() != "ready" {
                line.clear();
                assert!(out.read_line(&mut line).unwrap() > 0, "holder exited");
            }
            b.kill().unwrap();
            b.wait().unwrap();
        }
        let mut v = child_command(
            &[],
            ENTRY,
            "victim",
            &[
                ("SA_SEG", name.as_str().to_owned()),
                ("SA_TOKEN", tok(a.share().unwrap())),
                ("SA_FAILPOINT", point.to_owned()),
            ],
        )
        .spawn()
        .unwrap();
        let status = wait_or_kill(&mut v, Duration::from_secs(60)).expect("watchdog: victim");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            status.signal(),
            Some(9),
            "{point}: the victim did not die there"
        );
        assert_eq!(
            live(&alloc),
            before + 1,
            "{point}: freed while the parent holds it"
        );
        assert_eq!(*a, VALUE);
        drop(a);
        assert_eq!(
            live(&alloc),
            before,
            "{point}: not freed at the last live drop"
        );
    }
}
