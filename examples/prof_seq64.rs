//! A plain loop (not a criterion bench) for profiling: 64-byte allocations in
//! chunks of 4,096 (the frees between chunks untimed) on a free list, and the same
//! through `std::alloc::System`, in one run. `CAP` (bytes, default 1 GiB), `N`.
use shared_allocator::prelude::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::time::{Duration, Instant};
fn main() {
    let cap: u64 = std::env::var("CAP")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1 << 30);
    let n: usize = std::env::var("N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4_000_000);
    let name = format!("prof-seq64-{}", std::process::id());
    let _g = shared_allocator::segment::UnlinkGuard::new(&name);
    let a = FreeListAllocator::create(&name, cap).unwrap();
    let l = Layout::from_size_align(64, 8).unwrap();
    let mut held = Vec::with_capacity(4096);
    let mut sheld = Vec::with_capacity(4096);
    for _ in 0..3 {
        let mut ours = Duration::ZERO;
        for _ in 0..n / 4096 {
            let t = Instant::now();
            for _ in 0..4096 {
                held.push(a.allocate(std::hint::black_box(64)).unwrap());
            }
            ours += t.elapsed();
            held.drain(..).for_each(|o| a.free(o).unwrap());
        }
        let mut sys = Duration::ZERO;
        for _ in 0..n / 4096 {
            let t = Instant::now();
            for _ in 0..4096 {
                // SAFETY: non-zero size; freed once below with the same layout.
                sheld.push(unsafe { System.alloc(std::hint::black_box(l)) });
            }
            sys += t.elapsed();
            // SAFETY: each pointer came from System.alloc(l), freed once.
            sheld
                .drain(..)
                .for_each(|p| unsafe { System.dealloc(p, l) });
        }
        let o = ours.as_nanos() as f64 / n as f64;
        let s = sys.as_nanos() as f64 / n as f64;
        println!(
            "seq64 free list {o:.2} ns ({:.2}x), System {s:.2} ns",
            o / s
        );
    }
}
