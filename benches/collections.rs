//! `ShmHashMap` against its std counterparts, in one run (ratios are what counts on
//! a shared machine):
//!
//! - `map_get_1m`: one lookup of a random key among 1M `u64` keys: `ShmHashMap`
//!   vs `std::collections::HashMap` (hashbrown inside) with the same hasher and
//!   with std's default SipHash;
//! - `map_insert_1m`: building a map of 1M `u64` keys from empty (per insert);
//! - `map_mix_90_10`: a read-mostly mix (90% get, 10% insert over 1M keys), per
//!   operation: one process alone; the same process while a second *process* runs
//!   the same mix on the same map; `Mutex<HashMap>` shared by 2 threads;
//!   `ShmHashMap` shared by 2 threads.
//!
//! ```text
//! cargo bench --bench collections -- --warm-up-time 1 --measurement-time 3
//! ```

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use shared_allocator::collections::{MapHasher, ShmHashMap};
use shared_allocator::prelude::*;

const N: u64 = 1_000_000;

struct Name(String);
impl Name {
    fn new(tag: &str) -> Name {
        Name(format!("sa-bench-{tag}-{}", std::process::id()))
    }
}
impl Drop for Name {
    fn drop(&mut self) {
        let _ = shared_allocator::unlink(&self.0);
    }
}

type Fast = BuildHasherDefault<MapHasher>;

/// xorshift64*: random keys without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn get(c: &mut Criterion) {
    let name = Name::new("map-get");
    let alloc = FreeListAllocator::create(&name.0, 512 << 20).unwrap();
    let m = ShmHashMap::<u64, u64, _>::open(&alloc, "get").unwrap();
    let mut std_fast: HashMap<u64, u64, Fast> = HashMap::default();
    let mut std_sip: HashMap<u64, u64> = HashMap::new();
    for k in 0..N {
        m.insert(k, k).unwrap();
        std_fast.insert(k, k);
        std_sip.insert(k, k);
    }
    let mut g = c.benchmark_group("map_get_1m");
    let mut r = Rng(7);
    g.bench_function("shm_hash_map", |b| {
        b.iter(|| black_box(m.get(&(r.next() % N)).unwrap()))
    });
    g.bench_function("std_hashmap_same_hasher", |b| {
        b.iter(|| black_box(std_fast.get(&(r.next() % N))))
    });
    g.bench_function("std_hashmap_siphash", |b| {
        b.iter(|| black_box(std_sip.get(&(r.next() % N))))
    });
    g.finish();
}

fn insert(c: &mut Criterion) {
    let name = Name::new("map-insert");
    let alloc = FreeListAllocator::create(&name.0, 512 << 20).unwrap();
    let m = ShmHashMap::<u64, u64, _>::open(&alloc, "insert").unwrap();
    let mut g = c.benchmark_group("map_insert_1m");
    g.sample_size(10);
    // Per insert: each iteration builds a map of 1M keys from empty.
    g.bench_function("shm_hash_map", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters.div_ceil(N) {
                m.clear().unwrap();
                let t = Instant::now();
                for k in 0..N {
                    m.insert(k.wrapping_mul(0x9E37_79B9_7F4A_7C15), k).unwrap();
                }
                total += t.elapsed();
            }
            total.mul_f64(iters as f64 / (iters.div_ceil(N) * N) as f64)
        })
    });
    g.bench_function("std_hashmap_same_hasher", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters.div_ceil(N) {
                let t = Instant::now();
                let mut h: HashMap<u64, u64, Fast> = HashMap::default();
                for k in 0..N {
                    h.insert(k.wrapping_mul(0x9E37_79B9_7F4A_7C15), k);
                }
                total += t.elapsed();
                drop(black_box(h));
            }
            total.mul_f64(iters as f64 / (iters.div_ceil(N) * N) as f64)
        })
    });
    g.finish();
}

/// One operation of the 90/10 mix.
#[inline]
fn mix_op(m: &ShmHashMap<u64, u64, impl ShmFree>, r: &mut Rng) {
    let x = r.next();
    let k = x % N;
    if x >> 60 < 2 {
        // 2/16 = 12.5%: close to the 10% writes of the mix.
        m.insert(k, x).unwrap();
    } else {
        black_box(m.get(&k).unwrap());
    }
}

fn mix(c: &mut Criterion) {
    let name = Name::new("map-mix");
    let alloc = Arc::new(FreeListAllocator::create(&name.0, 512 << 20).unwrap());
    let m = ShmHashMap::<u64, u64, _>::open(alloc.clone(), "mix").unwrap();
    for k in 0..N {
        m.insert(k, k).unwrap();
    }
    let stop = alloc.root::<AtomicU64>("stop").unwrap();
    let mut g = c.benchmark_group("map_mix_90_10");
    let mut r = Rng(11);
    g.bench_function("shm_1_process", |b| b.iter(|| mix_op(&m, &mut r)));

    // A second process running the same mix on the same map.
    stop.store(0, Ordering::SeqCst);
    // SAFETY: the child only opens its own handle, runs the mix and `_exit`s; it
    // never returns into the bench harness.
    let child = match unsafe { nix::unistd::fork() }.unwrap() {
        nix::unistd::ForkResult::Child => {
            let a = FreeListAllocator::open(&name.0).unwrap();
            let m2 = ShmHashMap::<u64, u64, _>::open(&a, "mix").unwrap();
            let stop = a.root::<AtomicU64>("stop").unwrap();
            let mut r = Rng(std::process::id() as u64 | 1);
            while stop.load(Ordering::Relaxed) == 0 {
                for _ in 0..1000 {
                    mix_op(&m2, &mut r);
                }
            }
            // SAFETY: leaves the forked child at once, without running the parent's
            // atexit handlers or destructors.
            unsafe { nix::libc::_exit(0) };
        }
        nix::unistd::ForkResult::Parent { child } => child,
    };
    g.bench_function("shm_2_processes", |b| b.iter(|| mix_op(&m, &mut r)));
    stop.store(1, Ordering::SeqCst);
    let _ = nix::sys::wait::waitpid(child, None);

    // Two threads, per operation (wall time of both / total operations).
    let locked: Arc<Mutex<HashMap<u64, u64, Fast>>> =
        Arc::new(Mutex::new((0..N).map(|k| (k, k)).collect()));
    g.bench_function("std_mutex_hashmap_2_threads", |b| {
        b.iter_custom(|iters| {
            let per = iters.div_ceil(2);
            let t = Instant::now();
            std::thread::scope(|s| {
                for seed in 1..=2u64 {
                    let locked = locked.clone();
                    s.spawn(move || {
                        let mut r = Rng(seed * 77);
                        for _ in 0..per {
                            let x = r.next();
                            let k = x % N;
                            if x >> 60 < 2 {
                                locked.lock().unwrap().insert(k, x);
                            } else {
                                black_box(locked.lock().unwrap().get(&k).copied());
                            }
                        }
                    });
                }
            });
            t.elapsed()
        })
    });
    g.bench_function("shm_2_threads", |b| {
        b.iter_custom(|iters| {
            let per = iters.div_ceil(2);
            let t = Instant::now();
            std::thread::scope(|s| {
                for seed in 1..=2u64 {
                    let m = &m;
                    s.spawn(move || {
                        let mut r = Rng(seed * 77);
                        for _ in 0..per {
                            mix_op(m, &mut r);
                        }
                    });
                }
            });
            t.elapsed()
        })
    });
    g.finish();
}

criterion_group!(benches, get, insert, mix);
criterion_main!(benches);
