//! Process safety for real: four processes (re-executions of this test binary, not
//! threads) hammer one allocator at once. Every block is filled with a pattern unique
//! to (process, block serial) and verified in full before it is freed and at the end,
//! so two live blocks that overlap (in this process or across processes) show up as a
//! damaged tag, naming the intruder.
//!
//! Workload size: `SA_MP_OPS` operations per process (default 200,000, the number of
//! the foundation issue); `SA_MP_PROCS` processes (default 4).
mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{
    check_pattern, env_req, env_u64, field, fill_pattern, finish_all, report, role, spawn_child,
    Rng, ShmName,
};
use shared_allocator::prelude::*;
use shared_allocator::{AllocError, SegmentError};

const WATCHDOG: Duration = Duration::from_secs(600);

fn ops() -> u64 {
    env_u64("SA_MP_OPS", 200_000)
}

fn procs() -> u64 {
    env_u64("SA_MP_PROCS", 4)
}

/// Tag of block `serial` of process `proc`: distinct for every block of the run.
fn tag(proc: u64, serial: u64) -> u64 {
    ((proc + 1) << 52) | (serial & ((1 << 52) - 1))
}

/// Spawns the workers of `entry`, waits for all of them, returns their RESULT lines.
fn run_workers(entry: &str, name: &ShmName, extra: &[(&str, String)]) -> Vec<String> {
    let start = Instant::now();
    let children = (0..procs())
        .map(|p| {
            let mut env = vec![
                ("SA_NAME", name.as_str().to_owned()),
                ("SA_PROC", p.to_string()),
                ("SA_SEED", (0x5EED_0000 + p * 7919).to_string()),
                ("SA_MP_OPS", ops().to_string()),
            ];
            env.extend(extra.iter().map(|(k, v)| (*k, v.clone())));
            spawn_child(entry, "worker", &env)
        })
        .collect();
    let outs = finish_all(children, WATCHDOG, entry);
    let lines: Vec<String> = outs
        .iter()
        .map(|o| report(o, "RESULT").to_owned())
        .collect();
    for l in &lines {
        println!("{entry}: {l}");
    }
    println!(
        "{entry}: {} processes x {} ops finished in {:.1?}",
        procs(),
        ops(),
        start.elapsed()
    );
    lines
}

#[derive(Clone, Copy)]
struct Block {
    off: Offset,
    size: usize,
    tag: u64,
}

/// One worker: random allocate / free over a live set whose target size changes in
/// phases, full-pattern writes and verification, local overlap check, alignment check.
fn churn<A: ShmFree>(a: &A, mut next_request: impl FnMut(&mut Rng) -> (usize, usize)) {
    let proc: u64 = env_req("SA_PROC").parse().unwrap();
    let seed: u64 = env_req("SA_SEED").parse().unwrap();
    let ops = ops();
    let mut rng = Rng::new(seed);
    let mut live: Vec<Block> = Vec::new();
    // start -> end of this process's live blocks, to catch a block handed out twice.
    let mut spans: BTreeMap<u64, u64> = BTreeMap::new();
    let mut buf = vec![0u8; 1 << 15];
    let mut rd = vec![0u8; 1 << 15];
    let (mut serial, mut allocs, mut frees, mut oom, mut max_live) = (0u64, 0u64, 0u64, 0u64, 0);
    let mut bytes = 0u64;
    let mut target = 0usize;
    let verify = |a: &A, b: &Block, rd: &mut [u8]| {
        let rd = &mut rd[..b.size];
        a.read_into(b.off, rd)
            .unwrap_or_else(|e| panic!("proc {proc}: read of live block {:?}: {e}", b.off));
        if let Err(msg) = check_pattern(rd, b.tag) {
            panic!(
                "proc {proc}: DAMAGED block at {} (+{} bytes): {msg}",
                b.off, b.size
            );
        }
    };
    for op in 0..ops {
        if op % 8192 == 0 {
            // New phase: the live set drifts towards a new random size (0..255 blocks).
            target = rng.below(256) as usize;
        }
        if op % 50_000 == 49_999 {
            for b in &live {
                verify(a, b, &mut rd);
            }
        }
        let grow = live.is_empty() || (live.len() < target && rng.below(100) < 70);
        let grow = grow || (live.len() >= target && rng.below(100) < 30);
        if grow {
            let (size, align) = next_request(&mut rng);
            let res = if align == 8 {
                a.allocate(size)
            } else {
                a.allocate_aligned(size, align)
            };
            let off = match res {
                Ok(o) => o,
                Err(AllocError::OutOfMemory { requested, .. }) => {
                    assert_eq!(requested, size as u64);
                    oom += 1;
                    // Under pressure: make room.
                    if !live.is_empty() {
                        let b = live.swap_remove(rng.below(live.len() as u64) as usize);
                        verify(a, &b, &mut rd);
                        spans.remove(&b.off.get());
                        a.free(b.off).unwrap();
                        frees += 1;
                    }
                    continue;
                }
                Err(e) => panic!("proc {proc}: allocate({size}, {align}): unexpected {e:?}"),
            };
            assert_eq!(
                off.get() % align as u64,
                0,
                "proc {proc}: offset {off} not aligned to {align}"
            );
            let (start, end) = (off.get(), off.get() + size as u64);
            if let Some((&s, &e)) = spans.range(..end).next_back() {
                assert!(
                    e <= start,
                    "proc {proc}: new block {start:#x}..{end:#x} overlaps own live block {s:#x}..{e:#x}"
                );
            }
            spans.insert(start, end);
            let b = Block {
                off,
                size,
                tag: tag(proc, serial),
            };
            serial += 1;
            fill_pattern(&mut buf[..size], b.tag);
            a.write(off, &buf[..size])
                .unwrap_or_else(|e| panic!("proc {proc}: write to fresh block {off}: {e}"));
            live.push(b);
            allocs += 1;
            bytes += size as u64;
            max_live = max_live.max(live.len());
        } else {
            let b = live.swap_remove(rng.below(live.len() as u64) as usize);
            verify(a, &b, &mut rd);
            spans.remove(&b.off.get());
            a.free(b.off)
                .unwrap_or_else(|e| panic!("proc {proc}: free of live block {}: {e}", b.off));
            frees += 1;
        }
    }
    for b in &live {
        verify(a, b, &mut rd);
    }
    for b in live.drain(..) {
        a.free(b.off).unwrap();
        frees += 1;
    }
    println!(
        "RESULT proc={proc} ops={ops} allocs={allocs} frees={frees} oom={oom} max_live={max_live} bytes={bytes}"
    );
}

fn open_retry<T>(f: impl Fn() -> Result<T, SegmentError>) -> T {
    f().unwrap_or_else(|e| panic!("worker could not open the segment: {e}"))
}

#[test]
fn free_list_four_processes() {
    if role().is_some() {
        let a = open_retry(|| FreeListAllocator::open(&env_req("SA_NAME")));
        churn(&a, |rng| {
            let size = match rng.below(100) {
                0..=44 => 1 + rng.below(64),
                45..=96 => 65 + rng.below(2048 - 64),
                _ => 2049 + rng.below(20_000 - 2048),
            } as usize;
            let align = if rng.below(100) < 70 {
                8
            } else {
                1 << rng.below(13)
            };
            (size, align)
        });
        return;
    }
    // 1 MiB: four processes with up to 255 live blocks each run into it now and then,
    // so out-of-memory, span reclaim and page reuse across sizes all happen concurrently.
    let capacity = 1 << 20;
    let name = ShmName::new("mp-fl");
    let a = FreeListAllocator::create(name.as_str(), capacity).unwrap();
    let lines = run_workers("free_list_four_processes", &name, &[]);
    let oom: u64 = lines.iter().map(|l| field(l, "oom")).sum();
    let allocs: u64 = lines.iter().map(|l| field(l, "allocs")).sum();
    let frees: u64 = lines.iter().map(|l| field(l, "frees")).sum();
    assert_eq!(allocs, frees);
    let st = a.stats();
    println!("free-list after the run: allocs={allocs} oom={oom} stats={st:?}");
    assert_eq!(st.live_blocks, Some(0));
    assert_eq!(st.live_bytes, 0);
    // Nothing leaked: half the capacity in one block, then the whole of it.
    let half = a.allocate((capacity / 2) as usize).unwrap();
    a.write(half, &vec![0xA5; (capacity / 2) as usize]).unwrap();
    a.free(half).unwrap();
    let all = a.allocate(capacity as usize).unwrap();
    a.free(all).unwrap();
    assert_eq!(a.stats().live_blocks, Some(0));
    drop(a);
    drop(name);
    assert!(common::shm_entries(&format!("sa-test-mp-fl-{}-", std::process::id())).is_empty());
}

#[test]
fn slab_four_processes() {
    const SLOT: u64 = 40;
    if role().is_some() {
        let a = open_retry(|| SlabAllocator::open(&env_req("SA_NAME")));
        churn(&a, |rng| {
            let size = 1 + rng.below(SLOT) as usize;
            // A stride of 40 aligns slots to 8.
            (size, 1 << rng.below(4))
        });
        return;
    }
    // Fewer slots than four full live sets: the slab runs full regularly.
    let slots = 700;
    let name = ShmName::new("mp-slab");
    let a = SlabAllocator::create(name.as_str(), SLOT, slots).unwrap();
    let lines = run_workers("slab_four_processes", &name, &[]);
    let oom: u64 = lines.iter().map(|l| field(l, "oom")).sum();
    let allocs: u64 = lines.iter().map(|l| field(l, "allocs")).sum();
    println!(
        "slab after the run: allocs={allocs} oom={oom} stats={:?}",
        a.stats()
    );
    assert_eq!(a.stats().live_blocks, Some(0));
    assert_eq!(a.stats().live_bytes, 0);
    // Every slot is usable again.
    let all: Vec<Offset> = (0..slots)
        .map(|_| a.allocate(SLOT as usize).unwrap())
        .collect();
    assert!(matches!(a.allocate(1), Err(AllocError::OutOfMemory { .. })));
    for o in all {
        a.free(o).unwrap();
    }
    assert_eq!(a.stats().live_blocks, Some(0));
}

#[test]
fn bump_four_processes() {
    if role().is_some() {
        bump_worker();
        return;
    }
    // Sized so that the processes together exhaust it in the last part of the run.
    let capacity = (ops() * 310).max(1 << 16);
    let name = ShmName::new("mp-bump");
    let mut a = BumpAllocator::create(name.as_str(), capacity).unwrap();
    let lines = run_workers("bump_four_processes", &name, &[]);
    let sum: u64 = lines.iter().map(|l| field(l, "bytes")).sum();
    let oom: u64 = lines.iter().map(|l| field(l, "oom")).sum();
    let used = a.used_bytes();
    println!("bump after the run: capacity={capacity} used={used} sum_of_sizes={sum} oom={oom}");
    assert!(used >= sum, "used {used} < sum of allocated sizes {sum}");
    assert!(used <= capacity);
    assert_eq!(a.stats().live_bytes, used);
    assert_eq!(a.available_bytes(), capacity - used);
    assert_eq!(a.epoch(), 0);
    assert_eq!(a.reset(), Ok(1));
    assert_eq!(a.epoch(), 1);
    assert_eq!(a.available_bytes(), capacity);
    assert_eq!(a.used_bytes(), 0);
    let o = a.allocate(capacity as usize).unwrap();
    assert_eq!(o.get(), a.segment().layout().data_offset);
}

fn bump_worker() {
    let a = open_retry(|| BumpAllocator::open(&env_req("SA_NAME")));
    let proc: u64 = env_req("SA_PROC").parse().unwrap();
    let mut rng = Rng::new(env_req("SA_SEED").parse().unwrap());
    let ops = ops();
    let mut live: Vec<Block> = Vec::new();
    let mut buf = vec![0u8; 4096];
    let mut rd = vec![0u8; 4096];
    let (mut oom, mut bytes, mut verified) = (0u64, 0u64, 0u64);
    let l = *a.segment().layout();
    for _ in 0..ops {
        if live.is_empty() || rng.below(100) < 75 {
            let size = 1 + rng.below(128) as usize;
            let align = if rng.below(100) < 2 {
                4096
            } else {
                1 << rng.below(7)
            };
            match a.allocate_aligned(size, align) {
                Ok(off) => {
                    assert_eq!(off.get() % align as u64, 0, "offset {off} align {align}");
                    assert!(off.get() >= l.data_offset && off.get() + size as u64 <= l.data_end());
                    let b = Block {
                        off,
                        size,
                        tag: tag(proc, live.len() as u64),
                    };
                    fill_pattern(&mut buf[..size], b.tag);
                    a.write(off, &buf[..size]).unwrap();
                    live.push(b);
                    bytes += size as u64;
                }
                Err(AllocError::OutOfMemory {
                    requested,
                    available,
                }) => {
                    assert_eq!(requested, size as u64);
                    assert!(available < (size + align) as u64);
                    oom += 1;
                }
                Err(e) => panic!("proc {proc}: allocate({size}, {align}): {e:?}"),
            }
        } else {
            let b = live[rng.below(live.len() as u64) as usize];
            a.read_into(b.off, &mut rd[..b.size]).unwrap();
            if let Err(m) = check_pattern(&rd[..b.size], b.tag) {
                panic!("proc {proc}: DAMAGED bump block at {}: {m}", b.off);
            }
            verified += 1;
        }
    }
    for b in &live {
        a.read_into(b.off, &mut rd[..b.size]).unwrap();
        if let Err(m) = check_pattern(&rd[..b.size], b.tag) {
            panic!(
                "proc {proc}: DAMAGED bump block at {} (final check): {m}",
                b.off
            );
        }
    }
    println!(
        "RESULT proc={proc} ops={ops} allocs={} oom={oom} verified={verified} bytes={bytes}",
        live.len()
    );
}
