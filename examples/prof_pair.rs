//! A plain loop (not a criterion bench): 20M alloc+free pairs of 64 bytes on a free
//! list, and the same through `std::alloc::System`, in one run.
use shared_allocator::prelude::*;
use std::alloc::{GlobalAlloc, Layout, System};
fn main() {
    let name = format!("prof-pair-{}", std::process::id());
    let _g = shared_allocator::segment::UnlinkGuard::new(&name);
    let a = FreeListAllocator::create(&name, 1 << 20).unwrap();
    let sname = format!("prof-slab-{}", std::process::id());
    let _g2 = shared_allocator::segment::UnlinkGuard::new(&sname);
    let slab = SlabAllocator::create(&sname, 64, 16 * 1024).unwrap();
    let n: u32 = std::env::var("N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000_000);
    for _ in 0..3 {
        let t = std::time::Instant::now();
        for _ in 0..n {
            let o = a.allocate(std::hint::black_box(64)).unwrap();
            a.free(std::hint::black_box(o)).unwrap();
        }
        let ours = t.elapsed().as_nanos() as f64 / f64::from(n);
        let t = std::time::Instant::now();
        for _ in 0..n {
            let o = slab.allocate(std::hint::black_box(64)).unwrap();
            slab.free(std::hint::black_box(o)).unwrap();
        }
        let sl = t.elapsed().as_nanos() as f64 / f64::from(n);
        let l = Layout::from_size_align(64, 8).unwrap();
        let t = std::time::Instant::now();
        for _ in 0..n {
            // SAFETY: non-zero size; freed once with the same layout.
            let p = unsafe { System.alloc(std::hint::black_box(l)) };
            // SAFETY: `p` came from System.alloc(l).
            unsafe { System.dealloc(std::hint::black_box(p), l) };
        }
        let sys = t.elapsed().as_nanos() as f64 / f64::from(n);
        println!(
            "free list {ours:.2} ns ({:.2}x), slab {sl:.2} ns ({:.2}x), System {sys:.2} ns",
            ours / sys,
            sl / sys
        );
    }
}
