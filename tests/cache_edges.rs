//! Cache edges across processes whose views of a growing free list differ.
//!
//! A handle commits the pages another process grew the segment by only when it
//! first looks at them. A flush by such a handle (a reclaimer emptying a dead
//! handle's cache, a thief emptying an idle one) must still clear the cache mark
//! of every block it gives back, or the block goes back carrying it: the next
//! holder that gets it through the shared path finds it "cached" (`write` says it
//! is not allocated, `free` says double free).
mod common;

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use common::{env_req, read_stdout, role, say, spawn_child, wait_with_watchdog, ShmName};
use shared_allocator::alloc::FreeListOptions;
use shared_allocator::prelude::*;

const LIMIT: Duration = Duration::from_secs(60);

/// The owner child grows the segment with 64-byte blocks, frees the last few into
/// its cache (blocks on pages committed after the parent opened), reports them and
/// dies with them cached. The parent's handle, opened before the growth, reclaims
/// the dead cache, then takes every 64-byte block from a thread that does not own
/// its cache (the shared path): each must be writable and free without error.
#[test]
fn a_flush_by_a_handle_that_has_not_seen_the_growth_clears_every_mark() {
    const ENTRY: &str = "a_flush_by_a_handle_that_has_not_seen_the_growth_clears_every_mark";
    if role().as_deref() == Some("owner") {
        let a = FreeListAllocator::open(&env_req("SA_NAME")).unwrap();
        let start = a.stats().committed_bytes;
        let mut held = Vec::new();
        while a.stats().committed_bytes == start || held.len() < 4096 {
            held.push(a.allocate(64).expect("allocate while growing"));
        }
        for o in held.drain(held.len() - 4..) {
            a.free(o).unwrap();
            say(format!("cached {}", o.get()));
        }
        say(format!("committed {}", a.stats().committed_bytes));
        nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL).unwrap();
        unreachable!();
    }
    let name = ShmName::new("cache-stale");
    let opts = FreeListOptions {
        initial: 64 << 10,
        ..Default::default()
    };
    let a = FreeListAllocator::create_with_options(name.as_str(), 4 << 20, &opts).unwrap();
    let before = a.stats().committed_bytes;
    let mut child = spawn_child(ENTRY, "owner", &[("SA_NAME", name.as_str().to_owned())]);
    let out = read_stdout(&mut child);
    let status = wait_with_watchdog(&mut child, LIMIT, "owner");
    assert_eq!(
        status.signal(),
        Some(9),
        "the owner died with its cache: {status}"
    );
    let lines: Vec<String> = out
        .join()
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("@@ ").map(str::to_owned))
        .collect();
    let cached: Vec<u64> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("cached ")?.parse().ok())
        .collect();
    assert_eq!(cached.len(), 4, "{lines:?}");
    assert!(
        cached.iter().all(|&o| o >= before),
        "the cached blocks lie past what the parent had committed: {cached:?}"
    );
    let r = a.reclaim();
    assert_eq!(r.dead_slots, 1, "{r:?}");
    // Take everything of the class through the shared path (a thread that does not
    // own this handle's cache: the reclaim above made this thread its owner).
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut got = Vec::new();
            let mut bad = Vec::new();
            while let Ok(o) = a.allocate(64) {
                if a.write(o, &[7u8; 64]).is_err() {
                    bad.push(o.get());
                }
                got.push(o);
            }
            assert!(
                bad.is_empty(),
                "blocks handed out still marked as cached: {bad:?} (the dead cache held {cached:?})"
            );
            for o in got {
                a.free(o).unwrap();
            }
        });
    });
}
