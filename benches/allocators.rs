//! Criterion benchmarks of the three allocators against in-process references.
//!
//! Each group measures one operation for the shared-memory allocators and for a
//! reference in the same group (std, bumpalo, a bare atomic), so the results read
//! as ratios. The groups follow the seed package's five benchmark operations:
//! write, read, sequential_alloc, alloc_free, reuse_pattern.
//!
//! ```text
//! cargo bench --bench allocators -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! Medians are in `$CARGO_TARGET_DIR/criterion/<group>/<bench>/new/estimates.json`.
//! Every segment gets a unique name (tag + pid) and is unlinked by a guard, also
//! when a benchmark panics.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use shared_allocator::prelude::*;

/// Payload of the write and read groups.
const PAYLOAD: usize = 64;
/// Block size of the sequential_alloc group.
const SEQ_SIZE: usize = 128;
/// Allocations timed in a row in sequential_alloc; the reset/free between two
/// chunks is not timed.
const SEQ_CHUNK: usize = 4096;
/// Block size of the alloc_free group.
const PAIR_SIZE: usize = 64;
/// Live blocks in the reuse_pattern ring.
const RING: usize = 1000;
/// Length of the precomputed size sequence of reuse_pattern (cycled through).
const SIZES: usize = 8192;

/// A segment name unique to this process; the segment is unlinked on drop, so
/// also when a benchmark panics and unwinds.
struct ShmGuard(String);

impl ShmGuard {
    fn new(tag: &str) -> ShmGuard {
        ShmGuard(format!("sa-bench-{tag}-{}", std::process::id()))
    }

    fn name(&self) -> &str {
        &self.0
    }
}

impl Drop for ShmGuard {
    fn drop(&mut self) {
        let _ = shared_allocator::unlink(&self.0);
    }
}

/// Runs `op(state, i)` for `iters` values of `i`, in chunks of at most `chunk`;
/// `between(state, n)` runs untimed before each chunk and once at the end, with `n`
/// the length of the previous chunk (to reset or free what it allocated).
/// Returns the time spent in the chunks only.
fn chunked<S>(
    iters: u64,
    chunk: usize,
    state: &mut S,
    mut between: impl FnMut(&mut S, usize),
    mut op: impl FnMut(&mut S, usize),
) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters;
    let mut prev = 0;
    while left > 0 {
        let n = left.min(chunk as u64) as usize;
        between(state, prev);
        let start = Instant::now();
        for i in 0..n {
            op(state, i);
        }
        total += start.elapsed();
        prev = n;
        left -= n as u64;
    }
    between(state, prev);
    total
}

/// A small deterministic PRNG (xorshift64*).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `lo..hi` (modulo bias is irrelevant here).
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo) as u64) as usize
    }
}

/// The reference: `std::alloc::System` called directly (no `Box`, no global-allocator
/// indirection), as a C program would call malloc/free.
fn std_alloc(layout: Layout) -> NonNull<u8> {
    // SAFETY: every layout used here has a non-zero size.
    let p = unsafe { System.alloc(layout) };
    NonNull::new(p).unwrap_or_else(|| std::alloc::handle_alloc_error(layout))
}

fn std_dealloc(p: NonNull<u8>, layout: Layout) {
    // SAFETY: `p` came from `std_alloc(layout)` (System) with this same layout and
    // is freed exactly once.
    unsafe { System.dealloc(p.as_ptr(), layout) };
}

// ------------------------------------------------------------------ write / read

fn write(c: &mut Criterion) {
    let (bump_name, fl_name) = (ShmGuard::new("write-bump"), ShmGuard::new("write-fl"));
    let bump = BumpAllocator::create(bump_name.name(), 1 << 20).expect("create bump");
    let fl = FreeListAllocator::create(fl_name.name(), 1 << 20).expect("create free list");
    let payload = [0xA5u8; PAYLOAD];
    let b_off = bump.allocate(PAYLOAD).expect("bump allocate");
    let f_off = fl.allocate(PAYLOAD).expect("free-list allocate");
    let mut boxed: Box<[u8]> = vec![0u8; PAYLOAD].into_boxed_slice();
    // Sanity, untimed (a filtered run may skip the benchmarks below).
    bump.write(b_off, &payload).unwrap();
    fl.write(f_off, &payload).unwrap();
    assert_eq!(bump.read(b_off, PAYLOAD).unwrap(), payload);
    assert_eq!(fl.read(f_off, PAYLOAD).unwrap(), payload);

    let mut g = c.benchmark_group("write");
    g.throughput(Throughput::Elements(1));
    g.bench_function("bump", |b| {
        b.iter(|| bump.write(black_box(b_off), black_box(&payload)).unwrap())
    });
    g.bench_function("free_list", |b| {
        b.iter(|| fl.write(black_box(f_off), black_box(&payload)).unwrap())
    });
    g.bench_function("std_box_copy", |b| {
        b.iter(|| {
            let dst = black_box(&mut boxed[..]);
            dst.copy_from_slice(black_box(&payload));
            black_box(dst);
        })
    });
    g.finish();
}

fn read(c: &mut Criterion) {
    let (bump_name, fl_name) = (ShmGuard::new("read-bump"), ShmGuard::new("read-fl"));
    let bump = BumpAllocator::create(bump_name.name(), 1 << 20).expect("create bump");
    let fl = FreeListAllocator::create(fl_name.name(), 1 << 20).expect("create free list");
    let payload = [0x5Au8; PAYLOAD];
    let b_off = bump.allocate(PAYLOAD).expect("bump allocate");
    let f_off = fl.allocate(PAYLOAD).expect("free-list allocate");
    bump.write(b_off, &payload).unwrap();
    fl.write(f_off, &payload).unwrap();
    let boxed: Box<[u8]> = payload.to_vec().into_boxed_slice();
    let mut buf = [0u8; PAYLOAD];
    // Sanity, untimed (a filtered run may skip the benchmarks below).
    bump.read_into(b_off, &mut buf).unwrap();
    assert_eq!(buf, payload);
    buf = [0; PAYLOAD];
    fl.read_into(f_off, &mut buf).unwrap();
    assert_eq!(buf, payload);

    let mut g = c.benchmark_group("read");
    g.throughput(Throughput::Elements(1));
    g.bench_function("bump", |b| {
        b.iter(|| {
            bump.read_into(black_box(b_off), black_box(&mut buf))
                .unwrap()
        })
    });
    g.bench_function("free_list", |b| {
        b.iter(|| fl.read_into(black_box(f_off), black_box(&mut buf)).unwrap())
    });
    g.bench_function("std_box_copy", |b| {
        b.iter(|| {
            let dst = black_box(&mut buf);
            dst.copy_from_slice(black_box(&boxed[..]));
            black_box(dst);
        })
    });
    g.finish();
}

// ------------------------------------------------------------- sequential_alloc

fn sequential_alloc(c: &mut Criterion) {
    let (bump_name, fl_name) = (ShmGuard::new("seq-bump"), ShmGuard::new("seq-fl"));
    let mut bump = BumpAllocator::create(bump_name.name(), (SEQ_CHUNK * SEQ_SIZE) as u64)
        .expect("create bump");
    let fl = FreeListAllocator::create(fl_name.name(), 4 * (SEQ_CHUNK * SEQ_SIZE) as u64)
        .expect("create free list");
    let layout = Layout::from_size_align(SEQ_SIZE, 8).unwrap();

    let mut g = c.benchmark_group("sequential_alloc");
    g.throughput(Throughput::Elements(1));

    // One uncontended atomic add: the floor for any shared allocator.
    let counter = AtomicU64::new(0);
    g.bench_function("atomic_fetch_add", |b| {
        b.iter_custom(|iters| {
            chunked(
                iters,
                SEQ_CHUNK,
                &mut (),
                |_, _| counter.store(0, Ordering::Relaxed),
                |_, _| {
                    black_box(black_box(&counter).fetch_add(SEQ_SIZE as u64, Ordering::Relaxed));
                },
            )
        })
    });

    g.bench_function("bump", |b| {
        b.iter_custom(|iters| {
            chunked(
                iters,
                SEQ_CHUNK,
                &mut bump,
                |bump, _| {
                    bump.reset().unwrap();
                },
                |bump, _| {
                    black_box(bump.allocate(black_box(SEQ_SIZE)).unwrap());
                },
            )
        })
    });

    let mut offs = vec![Offset::NULL; SEQ_CHUNK];
    g.bench_function("free_list", |b| {
        b.iter_custom(|iters| {
            chunked(
                iters,
                SEQ_CHUNK,
                &mut offs,
                |offs, n| {
                    for &o in &offs[..n] {
                        fl.free(o).unwrap();
                    }
                },
                |offs, i| offs[i] = fl.allocate(black_box(SEQ_SIZE)).unwrap(),
            )
        })
    });
    assert_eq!(fl.stats().live_blocks, Some(0));

    let mut arena = bumpalo::Bump::with_capacity(SEQ_CHUNK * SEQ_SIZE + 4096);
    g.bench_function("bumpalo", |b| {
        b.iter_custom(|iters| {
            chunked(
                iters,
                SEQ_CHUNK,
                &mut arena,
                |arena, _| arena.reset(),
                |arena, _| {
                    black_box(arena.alloc_layout(black_box(layout)));
                },
            )
        })
    });

    let mut ptrs: Vec<Option<NonNull<u8>>> = vec![None; SEQ_CHUNK];
    g.bench_function("std_alloc", |b| {
        b.iter_custom(|iters| {
            chunked(
                iters,
                SEQ_CHUNK,
                &mut ptrs,
                |ptrs, n| {
                    for p in &mut ptrs[..n] {
                        std_dealloc(p.take().expect("allocated"), layout);
                    }
                },
                |ptrs, i| ptrs[i] = Some(std_alloc(black_box(layout))),
            )
        })
    });
    g.finish();
}

// ------------------------------------------------------------------- alloc_free

fn alloc_free(c: &mut Criterion) {
    let (fl_name, slab_name) = (ShmGuard::new("pair-fl"), ShmGuard::new("pair-slab"));
    let fl = FreeListAllocator::create(fl_name.name(), 1 << 20).expect("create free list");
    let slab =
        SlabAllocator::create(slab_name.name(), PAIR_SIZE as u64, 16 * 1024).expect("create slab");

    for size in [PAIR_SIZE, 256] {
        let layout = Layout::from_size_align(size, 8).unwrap();
        let mut g = c.benchmark_group(format!("alloc_free_{size}"));
        g.throughput(Throughput::Elements(1));
        g.bench_function("free_list", |b| {
            b.iter(|| {
                let o = fl.allocate(black_box(size)).unwrap();
                fl.free(black_box(o)).unwrap();
            })
        });
        if size == PAIR_SIZE {
            g.bench_function("slab", |b| {
                b.iter(|| {
                    let o = slab.allocate(black_box(size)).unwrap();
                    slab.free(black_box(o)).unwrap();
                })
            });
        }
        g.bench_function("std_system", |b| {
            b.iter(|| {
                let p = black_box(std_alloc(black_box(layout)));
                std_dealloc(p, layout);
            })
        });
        g.finish();
    }
    assert_eq!(fl.stats().live_blocks, Some(0));
    assert_eq!(slab.stats().live_blocks, Some(0));
}

/// Typed arena allocation of one `u64` (reset when full) against bumpalo.
fn arena_alloc(c: &mut Criterion) {
    let name = ShmGuard::new("arena");
    let mut bump = BumpAllocator::create(name.name(), 64 << 20).expect("create bump");
    let mut g = c.benchmark_group("arena_alloc");
    g.throughput(Throughput::Elements(1));
    g.bench_function("arena", |b| {
        let mut arena = bump.arena();
        b.iter(|| {
            if arena.alloc(black_box(7u64)).is_err() {
                arena.reset().unwrap();
            }
        })
    });
    let mut bumpalo = bumpalo::Bump::with_capacity(64 << 20);
    let mut used = 0usize;
    g.bench_function("bumpalo", |b| {
        b.iter(|| {
            if used >= (64 << 20) / 8 {
                bumpalo.reset();
                used = 0;
            }
            black_box(bumpalo.alloc(black_box(7u64)));
            used += 1;
        })
    });
    g.finish();
}

// ---------------------------------------------------------------- reuse_pattern

fn reuse_pattern(c: &mut Criterion) {
    let fl_name = ShmGuard::new("reuse-fl");
    let fl = FreeListAllocator::create(fl_name.name(), 8 << 20).expect("create free list");
    let mut rng = Rng::new(0x5EED);
    let sizes: Vec<usize> = (0..SIZES).map(|_| rng.range(16, 1024)).collect();

    let mut g = c.benchmark_group("reuse_pattern");
    g.throughput(Throughput::Elements(1));

    // Ring of live blocks: slot `k % RING` holds the block allocated at step k.
    let mut ring: Vec<Offset> = sizes[..RING]
        .iter()
        .map(|&s| fl.allocate(s).unwrap())
        .collect();
    let mut step = RING;
    g.bench_with_input(BenchmarkId::new("free_list", RING), &sizes, |b, sizes| {
        b.iter(|| {
            let slot = &mut ring[step % RING];
            fl.free(black_box(*slot)).unwrap();
            *slot = fl.allocate(black_box(sizes[step % SIZES])).unwrap();
            step += 1;
        })
    });
    for o in ring.drain(..) {
        fl.free(o).unwrap();
    }
    assert_eq!(fl.stats().live_blocks, Some(0));

    let mut ring: Vec<(NonNull<u8>, Layout)> = sizes[..RING]
        .iter()
        .map(|&s| {
            let l = Layout::from_size_align(s, 8).unwrap();
            (std_alloc(l), l)
        })
        .collect();
    let mut step = RING;
    g.bench_with_input(BenchmarkId::new("std_alloc", RING), &sizes, |b, sizes| {
        b.iter(|| {
            let slot = &mut ring[step % RING];
            std_dealloc(black_box(slot.0), slot.1);
            let l = Layout::from_size_align(black_box(sizes[step % SIZES]), 8).unwrap();
            *slot = (std_alloc(l), l);
            step += 1;
        })
    });
    for (p, l) in ring.drain(..) {
        std_dealloc(p, l);
    }
    g.finish();
}

criterion_group!(
    benches,
    write,
    read,
    sequential_alloc,
    alloc_free,
    reuse_pattern,
    arena_alloc
);
criterion_main!(benches);
