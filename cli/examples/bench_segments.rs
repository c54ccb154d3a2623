//! The fixture of the `shm-alloc` timing runs: `N` small free-list segments and
//! one free-list segment of `SIZE` bytes, held open until stdin closes, then
//! removed.
//!
//! ```sh
//! cargo run --release -p shared_allocator_cli --example bench_segments -- PREFIX 100 17179869184
//! # in another shell, while it waits:
//! hyperfine 'shm-alloc list --prefix PREFIX' 'shm-alloc info PREFIX-big'
//! ```

use std::io::Read;

use shared_allocator::segment::UnlinkGuard;
use shared_allocator::{FreeListAllocator, ShmAllocator};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let prefix = args.get(1).expect("usage: bench_segments PREFIX N SIZE");
    let n: usize = args.get(2).map_or(100, |a| a.parse().expect("N"));
    let size: u64 = args.get(3).map_or(16 << 30, |a| a.parse().expect("SIZE"));
    let mut guards = Vec::new();
    let mut held = Vec::new();
    for i in 0..n {
        let name = format!("{prefix}-{i:03}");
        guards.push(UnlinkGuard::new(name.clone()));
        let a = FreeListAllocator::create(&name, 1 << 20).expect("create");
        a.allocate(1000).expect("allocate");
        held.push(a);
    }
    let big = format!("{prefix}-big");
    guards.push(UnlinkGuard::new(big.clone()));
    let a = FreeListAllocator::create(&big, size).expect("create the big segment");
    for _ in 0..100 {
        a.allocate(300).expect("allocate");
    }
    held.push(a);
    println!("ready");
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
}
