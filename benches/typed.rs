//! Typed layer against its std counterparts, in one run:
//! `ShmBox::new_in` + drop vs `Box::new` + drop; view access vs a plain reference
//! read (`rel_ptr_get`: `RelPtr::<AtomicU64>::get` + a Relaxed load, the shared
//! view; `shm_box_deref`: the owner's `&T`; `rel_ptr_read`: the checked copy path
//! for a plain `u64`); and `ShmVec::push` of 1M u64 vs `Vec::push`.
//!
//! ```text
//! cargo bench --bench typed
//! ```

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use shared_allocator::prelude::*;

/// Unlinks the bench segment on drop, also if a bench panics.
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

fn shm_box(c: &mut Criterion) {
    let name = Name::new("box");
    let alloc = FreeListAllocator::create(&name.0, 64 << 20).unwrap();
    // Raw frees decide a segment's mode as raw (see `SegmentMode`): a second one.
    let raw_name = Name::new("box-raw");
    let raw = FreeListAllocator::create(&raw_name.0, 64 << 20).unwrap();
    let mut g = c.benchmark_group("box_new_drop");
    g.bench_function("std_box", |b| {
        b.iter(|| drop(black_box(Box::new(black_box([7u64; 4])))))
    });
    g.bench_function("raw_allocate_free_32", |b| {
        b.iter(|| raw.free(raw.allocate(black_box(32)).unwrap()).unwrap())
    });
    // A ShmBox<[u64; 4]> block is 48 bytes: the 16-byte owner header (claim word and
    // fingerprint) and the 32-byte value.
    g.bench_function("raw_allocate_free_48", |b| {
        b.iter(|| raw.free(raw.allocate(black_box(48)).unwrap()).unwrap())
    });
    g.bench_function("shm_box", |b| {
        b.iter(|| {
            drop(black_box(
                ShmBox::new_in(&alloc, black_box([7u64; 4])).unwrap(),
            ))
        })
    });
    g.finish();
}

fn rel_ptr(c: &mut Criterion) {
    use std::sync::atomic::{AtomicU64, Ordering};
    let name = Name::new("relptr");
    let alloc = FreeListAllocator::create(&name.0, 1 << 20).unwrap();
    // Shared views of atomics live in raw segments (see `SegmentMode`).
    let raw_name = Name::new("relptr-raw");
    let raw = FreeListAllocator::create(&raw_name.0, 1 << 20).unwrap();
    let shared = raw.allocate(8).unwrap();
    raw.write(shared, &42u64.to_ne_bytes()).unwrap();
    let p = RelPtr::<AtomicU64>::from_offset(shared);
    let owned = ShmBox::new_in(&alloc, 42u64).unwrap();
    let q = owned.rel_ptr();
    let local = Box::new(42u64);
    let r: &u64 = &local;
    let mut g = c.benchmark_group("deref");
    g.bench_function("plain_ref", |bn| bn.iter(|| *black_box(r)));
    g.bench_function("rel_ptr_get", |bn| {
        bn.iter(|| {
            black_box(p)
                .get(black_box(&raw))
                .unwrap()
                .load(Ordering::Relaxed)
        })
    });
    g.bench_function("shm_box_deref", |bn| bn.iter(|| **black_box(&owned)));
    g.bench_function("rel_ptr_read", |bn| {
        bn.iter(|| black_box(q).read(black_box(&alloc)).unwrap())
    });
    // The generation-checked read of the same value (target: <= 2x rel_ptr_read).
    let gp = owned.shm_ptr();
    g.bench_function("shm_ptr_read", |bn| {
        bn.iter(|| black_box(gp).read(black_box(&alloc)).unwrap())
    });
    g.finish();
}

/// The owner's write: `*b = v` on a `Box` against `ShmBox::set` and
/// `ShmBox::update` (byte-wise atomic stores; a `ShmBox` has no `DerefMut`).
fn box_write(c: &mut Criterion) {
    let name = Name::new("boxwrite");
    let alloc = FreeListAllocator::create(&name.0, 1 << 20).unwrap();
    let mut local = Box::new([0u64; 4]);
    let mut owned = ShmBox::new_in(&alloc, [0u64; 4]).unwrap();
    let mut g = c.benchmark_group("box_write_4x_u64");
    let mut i = 0u64;
    g.bench_function("std_box_assign", |b| {
        b.iter(|| {
            i += 1;
            **black_box(&mut local) = black_box([i; 4]);
        })
    });
    g.bench_function("shm_box_set", |b| {
        b.iter(|| {
            i += 1;
            black_box(&mut owned).set(black_box([i; 4]));
        })
    });
    g.bench_function("shm_box_update_one", |b| {
        b.iter(|| {
            i += 1;
            black_box(&mut owned).update(|v| v[1] = black_box(i));
        })
    });
    g.finish();
}

fn vec_push(c: &mut Criterion) {
    const N: u64 = 1_000_000;
    let name = Name::new("vec");
    let alloc = FreeListAllocator::create(&name.0, 256 << 20).unwrap();
    let mut g = c.benchmark_group("push_1m_u64");
    g.throughput(Throughput::Elements(N));
    g.sample_size(20);
    g.bench_function("std_vec", |b| {
        b.iter_batched(
            Vec::new,
            |mut v| {
                for i in 0..N {
                    v.push(black_box(i));
                }
                v
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("shm_vec", |b| {
        b.iter_batched(
            || ShmVec::<u64, _>::new_in(&alloc).unwrap(),
            |mut v| {
                for i in 0..N {
                    v.push(black_box(i)).unwrap();
                }
                v
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, shm_box, rel_ptr, box_write, vec_push);
criterion_main!(benches);
