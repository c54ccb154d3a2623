//! The free list at real sizes: the same operations at 8 MiB, 1 GiB and 16 GiB of
//! capacity, each against `std::alloc::System` in the same group, so the results
//! read as ratios that show whether a cost grows with capacity.
//!
//! - `ring_<cap>`: 1,000 live blocks of 16..1024 B; each step frees the oldest and
//!   allocates a new one (the reuse pattern).
//! - `seq64_<cap>`: 64-byte allocations in a row (4,096 per timed chunk; the frees
//!   between chunks are not timed).
//! - `stats_<cap>`: one `stats()` call; `oom_<cap>`: one allocation that fails with
//!   out-of-memory (a request larger than the free bytes).
//!
//! ```text
//! cargo bench --bench capacity -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! Untouched pages cost nothing: a 16 GiB segment needs no 16 GiB of memory.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use shared_allocator::prelude::*;
use shared_allocator::AllocError;

const RING: usize = 1000;
const SIZES: usize = 8192;
const SEQ_CHUNK: usize = 4096;
const CAPACITIES: [(u64, &str); 3] = [(8 << 20, "8MiB"), (1 << 30, "1GiB"), (16 << 30, "16GiB")];

/// A segment name unique to this process, unlinked on drop.
struct ShmGuard(String);

impl ShmGuard {
    fn new(tag: &str) -> ShmGuard {
        ShmGuard(format!("sa-bench-cap-{tag}-{}", std::process::id()))
    }
}

impl Drop for ShmGuard {
    fn drop(&mut self) {
        let _ = shared_allocator::unlink(&self.0);
    }
}

struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn sizes() -> Vec<usize> {
    let mut rng = Rng(0x5EED_5EED_5EED);
    (0..SIZES)
        .map(|_| 16 + (rng.next_u64() % 1008) as usize)
        .collect()
}

fn sys_alloc(layout: Layout) -> NonNull<u8> {
    // SAFETY: every layout used here has a non-zero size.
    NonNull::new(unsafe { System.alloc(layout) }).expect("System out of memory")
}

fn sys_free(p: NonNull<u8>, layout: Layout) {
    // SAFETY: `p` came from `sys_alloc(layout)` and is freed exactly once.
    unsafe { System.dealloc(p.as_ptr(), layout) }
}

fn ring(c: &mut Criterion, fl: &FreeListAllocator, cap: &str) {
    let sizes = sizes();
    let mut g = c.benchmark_group(format!("ring_{cap}"));
    g.throughput(Throughput::Elements(1));
    g.bench_function("free_list", |b| {
        let mut live: Vec<Offset> = sizes[..RING]
            .iter()
            .map(|&s| fl.allocate(s).unwrap())
            .collect();
        let mut k = RING;
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                let slot = k % RING;
                fl.free(live[slot]).unwrap();
                live[slot] = fl.allocate(black_box(sizes[k % SIZES])).unwrap();
                k += 1;
            }
            start.elapsed()
        });
        for o in live {
            fl.free(o).unwrap();
        }
    });
    g.bench_function("std_system", |b| {
        let layout = |s: usize| Layout::from_size_align(s, 8).unwrap();
        let mut live: Vec<(NonNull<u8>, usize)> = sizes[..RING]
            .iter()
            .map(|&s| (sys_alloc(layout(s)), s))
            .collect();
        let mut k = RING;
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                let slot = k % RING;
                let (p, s) = live[slot];
                sys_free(p, layout(s));
                let s = black_box(sizes[k % SIZES]);
                live[slot] = (sys_alloc(layout(s)), s);
                k += 1;
            }
            start.elapsed()
        });
        for (p, s) in live {
            sys_free(p, layout(s));
        }
    });
    g.finish();
}

/// Times `iters` calls of `alloc` in chunks of [`SEQ_CHUNK`], running `free` on
/// what a chunk allocated between chunks (not timed).
fn chunked<T>(iters: u64, mut alloc: impl FnMut() -> T, mut free: impl FnMut(T)) -> Duration {
    let mut held = Vec::with_capacity(SEQ_CHUNK);
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(SEQ_CHUNK as u64);
        let start = Instant::now();
        for _ in 0..n {
            held.push(alloc());
        }
        total += start.elapsed();
        held.drain(..).for_each(&mut free);
        left -= n;
    }
    total
}

fn seq64(c: &mut Criterion, fl: &FreeListAllocator, cap: &str) {
    let mut g = c.benchmark_group(format!("seq64_{cap}"));
    g.throughput(Throughput::Elements(1));
    g.bench_function("free_list", |b| {
        b.iter_custom(|iters| {
            chunked(
                iters,
                || fl.allocate(black_box(64)).unwrap(),
                |o| fl.free(o).unwrap(),
            )
        });
    });
    g.bench_function("std_system", |b| {
        let layout = Layout::from_size_align(64, 8).unwrap();
        b.iter_custom(|iters| {
            chunked(
                iters,
                || sys_alloc(black_box(layout)),
                |p| sys_free(p, layout),
            )
        });
    });
    g.finish();
}

fn stats_and_oom(c: &mut Criterion, fl: &FreeListAllocator, cap: &str, capacity: u64) {
    let mut g = c.benchmark_group(format!("stats_oom_{cap}"));
    g.bench_function("stats", |b| b.iter(|| black_box(fl.stats())));
    // One small block held, so a whole-capacity request cannot fit.
    let held = fl.allocate(64).unwrap();
    g.bench_function("oom", |b| {
        b.iter(|| {
            let e = fl.allocate(black_box(capacity as usize)).unwrap_err();
            assert!(matches!(e, AllocError::OutOfMemory { .. }), "{e:?}");
        })
    });
    fl.free(held).unwrap();
    g.finish();
}

fn capacity(c: &mut Criterion) {
    for (capacity, label) in CAPACITIES {
        let name = ShmGuard::new(label);
        let t = Instant::now();
        let fl = FreeListAllocator::create(&name.0, capacity).expect("create");
        eprintln!("create({label}): {:?}", t.elapsed());
        ring(c, &fl, label);
        seq64(c, &fl, label);
        stats_and_oom(c, &fl, label, capacity);
    }
}

criterion_group!(benches, capacity);
criterion_main!(benches);
