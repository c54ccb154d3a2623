//! A process killed with SIGKILL at any instant never blocks or damages the others.
//!
//! A victim process runs a tight allocate / write / verify / free loop and is killed
//! at a random moment (1–30 ms after it says it is running), again and again, while
//! two survivor processes keep allocating, verifying and freeing their own blocks the
//! whole time. Survivors run until the parent raises a stop word that lives in the
//! segment itself. Afterwards the survivors free everything, and the parent measures
//! what leaked (only what the victims held may leak) and checks the allocator still
//! serves the whole capacity modulo that leak.
//!
//! Knobs: `SA_KILLS` kills per allocator (default 50).
mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{
    check_pattern, env_req, env_u64, field, fill_pattern, finish_all, report, role, spawn_child,
    KillOnDrop, Rng, ShmName,
};
use shared_allocator::prelude::*;
use shared_allocator::segment::Segment;
use shared_allocator::{AllocError, Stats};

const PAGE: u64 = 4096;
/// Blocks a victim holds at most besides the one it is working on.
const VICTIM_HELD: usize = 2;
/// Largest free-list block the workload asks for: 20,000 bytes = 5 pages.
const MAX_FL_SIZE: u64 = 20_000;
const SLAB_SLOT: u64 = 64;

/// Control words in the segment: stop flag, victim ready sequence, survivor heartbeats.
const W_STOP: usize = 0;
const W_READY: usize = 1;
const W_HB: usize = 2;

fn ctrl(seg: &Segment, off: Offset) -> &[AtomicU64; 8] {
    let p =
        shared_allocator::__layout::ptr_at(seg, off.get(), 64, 8).expect("control block in bounds");
    // SAFETY:
    // - `ptr_at` checked 64 bytes at `off` are inside the live mapping and 8-aligned;
    // - AtomicU64 is valid for every bit pattern and these words are only accessed
    //   atomically by every process of this test;
    // - the reference borrows `seg`, so the mapping outlives it.
    unsafe { &*(p.as_ptr() as *const [AtomicU64; 8]) }
}

fn fl_size(rng: &mut Rng) -> usize {
    (match rng.below(100) {
        0..=39 => 1 + rng.below(64),
        40..=89 => 65 + rng.below(2048 - 64),
        _ => 2049 + rng.below(MAX_FL_SIZE - 2048),
    }) as usize
}

fn slab_size(rng: &mut Rng) -> usize {
    1 + rng.below(SLAB_SLOT) as usize
}

struct Held {
    off: Offset,
    size: usize,
    tag: u64,
}

fn verify<A: ShmAllocator>(a: &A, b: &Held, rd: &mut [u8], who: &str) {
    let rd = &mut rd[..b.size];
    a.read_into(b.off, rd)
        .unwrap_or_else(|e| panic!("{who}: read of live block {}: {e}", b.off));
    if let Err(m) = check_pattern(rd, b.tag) {
        panic!("{who}: DAMAGED block at {} ({} bytes): {m}", b.off, b.size);
    }
}

/// The victim: never stops by itself (a self-limit of 120 s guards against orphans).
fn victim<A: ShmFree>(a: &A, sizes: fn(&mut Rng) -> usize) {
    let off = Offset::new(env_req("SA_CTRL").parse().unwrap());
    let seq: u64 = env_req("SA_SEQ").parse().unwrap();
    let w = ctrl(a.segment(), off);
    let mut rng = Rng::new(seq.wrapping_mul(0xABCD) ^ u64::from(std::process::id()));
    let mut held: Vec<Held> = Vec::new();
    let mut buf = vec![0u8; 1 << 15];
    let mut rd = vec![0u8; 1 << 15];
    let start = Instant::now();
    w[W_READY].store(seq, Ordering::SeqCst);
    for i in 0u64.. {
        if i % 1024 == 0
            && (start.elapsed() > Duration::from_secs(120)
                || w[W_STOP].load(Ordering::Relaxed) != 0)
        {
            std::process::exit(3);
        }
        let size = sizes(&mut rng);
        match a.allocate(size) {
            Ok(o) => {
                let b = Held {
                    off: o,
                    size,
                    tag: (0xD1E << 52) | (seq << 32) | (i & 0xFFFF_FFFF),
                };
                fill_pattern(&mut buf[..size], b.tag);
                a.write(o, &buf[..size]).unwrap();
                verify(a, &b, &mut rd, "victim");
                held.push(b);
            }
            Err(AllocError::OutOfMemory { .. }) => {}
            Err(e) => panic!("victim: {e:?}"),
        }
        while held.len() > rng.below(VICTIM_HELD as u64 + 1) as usize {
            let b = held.swap_remove(0);
            verify(a, &b, &mut rd, "victim");
            a.free(b.off).unwrap();
        }
    }
}

/// A survivor: works until the stop word is set, then verifies and frees everything.
fn survivor<A: ShmFree>(a: &A, sizes: fn(&mut Rng) -> usize) {
    let off = Offset::new(env_req("SA_CTRL").parse().unwrap());
    let idx: usize = env_req("SA_IDX").parse().unwrap();
    let w = ctrl(a.segment(), off);
    let who = format!("survivor {idx}");
    let mut rng = Rng::new(0x5_0000 + idx as u64);
    let mut live: Vec<Held> = Vec::new();
    let mut buf = vec![0u8; 1 << 15];
    let mut rd = vec![0u8; 1 << 15];
    let (mut ops, mut oom, mut verified) = (0u64, 0u64, 0u64);
    let start = Instant::now();
    while w[W_STOP].load(Ordering::Acquire) == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(500),
            "{who}: never told to stop"
        );
        for _ in 0..64 {
            ops += 1;
            if live.len() < 48 && (live.is_empty() || rng.below(2) == 0) {
                let size = sizes(&mut rng);
                match a.allocate(size) {
                    Ok(o) => {
                        let b = Held {
                            off: o,
                            size,
                            tag: ((idx as u64 + 1) << 52) | ops,
                        };
                        fill_pattern(&mut buf[..size], b.tag);
                        a.write(o, &buf[..size]).unwrap();
                        live.push(b);
                    }
                    Err(AllocError::OutOfMemory { .. }) => oom += 1,
                    Err(e) => panic!("{who}: allocate({size}): {e:?}"),
                }
            } else {
                let b = live.swap_remove(rng.below(live.len() as u64) as usize);
                verify(a, &b, &mut rd, &who);
                verified += 1;
                a.free(b.off)
                    .unwrap_or_else(|e| panic!("{who}: free {}: {e}", b.off));
            }
        }
        w[W_HB + idx].fetch_add(1, Ordering::Relaxed);
    }
    for b in &live {
        verify(a, b, &mut rd, &who);
        verified += 1;
    }
    for b in live.drain(..) {
        a.free(b.off).unwrap();
    }
    println!("RESULT survivor={idx} ops={ops} oom={oom} verified={verified}");
}

/// Parent side: survivors + `kills` victims killed at random moments. Returns the
/// stats after the survivors freed everything, and the number of kills.
fn kill_run<A: ShmFree>(entry: &str, name: &ShmName, a: &A, kills: u64) -> (Stats, u64) {
    let started = Instant::now();
    let ctrl_off = a.allocate(64).unwrap();
    a.write(ctrl_off, &[0; 64]).unwrap();
    let w = ctrl(a.segment(), ctrl_off);
    let env = |k: &'static str, v: String| {
        vec![
            ("SA_NAME", name.as_str().to_owned()),
            ("SA_CTRL", ctrl_off.get().to_string()),
            (k, v),
        ]
    };
    let survivors: Vec<_> = (0..2)
        .map(|i| spawn_child(entry, "survivor", &env("SA_IDX", i.to_string())))
        .collect();
    // Survivors are reaped by finish_all below; kill them if this function panics first.
    let mut guard: Vec<KillOnDrop> = survivors.into_iter().map(KillOnDrop::new).collect();
    let mut rng = Rng::new(0xC0FFEE);
    let mut hb_at_first_kill = [0u64; 2];
    let mut delays = Vec::new();
    for k in 1..=kills {
        let mut v = KillOnDrop::new(spawn_child(entry, "victim", &env("SA_SEQ", k.to_string())));
        let t = Instant::now();
        while w[W_READY].load(Ordering::SeqCst) != k {
            if let Some(s) = v.child().try_wait().unwrap() {
                panic!("victim {k} exited before it was ready: {s}");
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "watchdog: victim {k} never ready"
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        let delay = 1 + rng.below(30);
        delays.push(delay);
        std::thread::sleep(Duration::from_millis(delay));
        if let Some(s) = v.child().try_wait().unwrap() {
            panic!("victim {k} exited by itself (it found damage or an error?): {s}");
        }
        let mut c = v.take();
        c.kill().unwrap();
        let s = c.wait().unwrap();
        assert!(!s.success());
        if k == 1 {
            hb_at_first_kill = [
                w[W_HB].load(Ordering::Relaxed),
                w[W_HB + 1].load(Ordering::Relaxed),
            ];
        }
        for g in guard.iter_mut() {
            if let Some(s) = g.child().try_wait().unwrap() {
                panic!("a survivor exited during the kill phase: {s}");
            }
        }
    }
    // Liveness (not timing): both survivors made progress while victims were killed.
    let hb_end = [
        w[W_HB].load(Ordering::Relaxed),
        w[W_HB + 1].load(Ordering::Relaxed),
    ];
    w[W_STOP].store(1, Ordering::Release);
    let children = guard.iter_mut().map(KillOnDrop::take).collect();
    let outs = finish_all(children, Duration::from_secs(120), "survivor");
    for (i, o) in outs.iter().enumerate() {
        let l = report(o, "RESULT");
        println!("{entry}: {l}");
        assert!(field(l, "ops") > 0);
        assert!(
            hb_end[i] > hb_at_first_kill[i],
            "survivor {i} made no progress during the kill phase ({hb_at_first_kill:?} -> {hb_end:?})"
        );
    }
    a.free(ctrl_off).unwrap();
    let st = a.stats();
    println!(
        "{entry}: {kills} kills (delays {}..{} ms) in {:.1?}; survivor heartbeats {hb_at_first_kill:?} -> {hb_end:?}",
        delays.iter().min().unwrap(),
        delays.iter().max().unwrap(),
        started.elapsed()
    );
    (st, kills)
}

fn dispatch<A: ShmFree>(open: fn(&str) -> A, sizes: fn(&mut Rng) -> usize) -> bool {
    match role().as_deref() {
        None => false,
        Some(r) => {
            let a = open(&env_req("SA_NAME"));
            match r {
                "victim" => victim(&a, sizes),
                "survivor" => survivor(&a, sizes),
                other => panic!("unknown role {other}"),
            }
            true
        }
    }
}

#[test]
fn free_list_survives_sigkill() {
    if dispatch(|n| FreeListAllocator::open(n).unwrap(), fl_size) {
        return;
    }
    let kills = env_u64("SA_KILLS", 50);
    let capacity = 16 << 20;
    let name = ShmName::new("kill-fl");
    let a = FreeListAllocator::create(name.as_str(), capacity).unwrap();
    let (st, kills) = kill_run("free_list_survives_sigkill", &name, &a, kills);
    // What a victim can leak at one kill: the blocks it held plus the one in flight
    // (each at most 5 pages, as a large block or as the span keeping a small block),
    // plus one span page lost between a pop and its follow-up, plus one claimed page not
    // yet published as a span.
    let max_block_pages = MAX_FL_SIZE.div_ceil(PAGE);
    let per_kill = ((VICTIM_HELD as u64 + 1) * max_block_pages + 2) * PAGE;
    let bound = kills * per_kill;
    let unusable = st.capacity - st.free_bytes;
    println!(
        "free-list leak after {kills} kills: live_blocks={:?} live_bytes={} unusable_bytes={} \
         (= {} pages; bound {} bytes = {} per kill)",
        st.live_blocks,
        st.live_bytes,
        unusable,
        unusable.div_ceil(PAGE),
        bound,
        per_kill
    );
    assert!(st.live_bytes <= bound);
    assert!(unusable <= bound);
    assert!(st.live_blocks.unwrap() <= kills * (VICTIM_HELD as u64 + 1));

    // Still works: every free page can be taken, written and given back...
    let mut pages = Vec::new();
    loop {
        match a.allocate(PAGE as usize) {
            Ok(o) => {
                a.write(o, &[0x3C; PAGE as usize]).unwrap();
                pages.push(o);
            }
            Err(AllocError::OutOfMemory { .. }) => break,
            Err(e) => panic!("{e:?}"),
        }
    }
    for &o in &pages {
        assert_eq!(a.read(o, PAGE as usize).unwrap(), vec![0x3C; PAGE as usize]);
        a.free(o).unwrap();
    }
    let got = pages.len() as u64 * PAGE;
    println!("free-list after the kills: {got} bytes allocatable page by page of {capacity}");
    assert!(
        got + bound >= capacity,
        "only {got} of {capacity} bytes allocatable"
    );
    // ...and a large block still fits (binary search for the largest).
    let (mut lo, mut hi) = (0u64, capacity / PAGE);
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        match a.allocate((mid * PAGE) as usize) {
            Ok(o) => {
                a.free(o).unwrap();
                lo = mid;
            }
            Err(_) => hi = mid - 1,
        }
    }
    println!(
        "free-list after the kills: largest single allocation {} pages",
        lo
    );
    assert!(lo * PAGE >= 64 << 10, "no 64 KiB block fits any more");
}

#[test]
fn slab_survives_sigkill() {
    if dispatch(|n| SlabAllocator::open(n).unwrap(), slab_size) {
        return;
    }
    let kills = env_u64("SA_KILLS", 50);
    let slots = 2048;
    let name = ShmName::new("kill-slab");
    let a = SlabAllocator::create(name.as_str(), SLAB_SLOT, slots).unwrap();
    let (st, kills) = kill_run("slab_survives_sigkill", &name, &a, kills);
    let bound = kills * (VICTIM_HELD as u64 + 1);
    let leaked = st.live_blocks.unwrap();
    println!(
        "slab leak after {kills} kills: live_blocks={leaked} live_bytes={} (bound {bound} slots)",
        st.live_bytes
    );
    assert!(leaked <= bound);
    let all: Vec<Offset> = std::iter::from_fn(|| a.allocate(SLAB_SLOT as usize).ok()).collect();
    assert_eq!(all.len() as u64, slots - leaked);
    for o in all {
        a.free(o).unwrap();
    }
}

/// A process killed while it returns cached empty spans to the page pool (which every
/// allocation does when the page pool is exhausted) must not take the other spans with
/// it: the victim here holds no block at all. Spans it had taken off a stack are marked
/// with its pid and adopted by the next process that runs short of pages; what may leak
/// is the one span in its hands between a pop and that mark, or between writing a
/// span's link and the push that lists it (at most two per kill).
///
/// Setup (parent, deterministic): fill the whole heap with 16-byte blocks (every page a
/// full class-16 span), then free one block in each span, so the class-16 stack lists
/// every span with one free block. The victim loops on `allocate(2048)`: the page pool
/// is empty, so every call runs the empty-span reclaim (pop every span of every class,
/// release the empty ones, push the rest back) and then reports out of memory. It is
/// killed at random moments. Afterwards the parent must get one 16-byte block from
/// every span but the leaked ones, and after freeing everything every page but theirs.
#[test]
fn free_list_kill_during_span_reclaim() {
    if let Some(r) = role() {
        assert_eq!(r, "reclaimer");
        let a = FreeListAllocator::open(&env_req("SA_NAME")).unwrap();
        let w = ctrl(
            a.segment(),
            Offset::new(env_req("SA_CTRL").parse().unwrap()),
        );
        let seq: u64 = env_req("SA_SEQ").parse().unwrap();
        w[W_READY].store(seq, Ordering::SeqCst);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            match a.allocate(2048) {
                Err(AllocError::OutOfMemory { .. }) => {}
                other => panic!("reclaimer: expected out of memory, got {other:?}"),
            }
        }
        return;
    }
    let kills = env_u64("SA_RECLAIM_KILLS", 20);
    let pages = 64u64;
    let name = ShmName::new("kill-reclaim");
    let a = FreeListAllocator::create(name.as_str(), pages * PAGE).unwrap();
    let ctrl_off = a.allocate(16).unwrap(); // its span stays partly used (control words)
    a.write(ctrl_off, &[0; 16]).unwrap();
    let ctrl_words = ctrl_off; // 16 bytes are enough for W_STOP and W_READY
    let mut blocks = Vec::new();
    while let Ok(o) = a.allocate(16) {
        blocks.push(o);
    }
    assert_eq!(
        blocks.len() as u64 + 1,
        pages * 256,
        "heap should be all class-16 spans"
    );
    // Free the first block of every page (except the control page's first block).
    let mut freed_per_span = 0;
    blocks.retain(|&o| {
        if (o.get() - a.segment().layout().data_offset) % PAGE == 0 {
            a.free(o).unwrap();
            freed_per_span += 1;
            false
        } else {
            true
        }
    });
    assert_eq!(freed_per_span, pages - 1);
    // Only W_STOP and W_READY (the first 16 bytes) are used; the 64-byte view stays
    // inside the control block's page.
    let w = ctrl(a.segment(), ctrl_words);
    let mut rng = Rng::new(77);
    for k in 1..=kills {
        let env = vec![
            ("SA_NAME", name.as_str().to_owned()),
            ("SA_CTRL", ctrl_words.get().to_string()),
            ("SA_SEQ", k.to_string()),
        ];
        let mut v = KillOnDrop::new(spawn_child(
            "free_list_kill_during_span_reclaim",
            "reclaimer",
            &env,
        ));
        let t = Instant::now();
        while w[W_READY].load(Ordering::SeqCst) != k {
            if let Some(s) = v.child().try_wait().unwrap() {
                panic!("reclaimer {k} exited before it was ready: {s}");
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "watchdog: reclaimer never ready"
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        std::thread::sleep(Duration::from_millis(1 + rng.below(30)));
        if let Some(s) = v.child().try_wait().unwrap() {
            panic!("reclaimer {k} exited by itself: {s}");
        }
        let mut c = v.take();
        c.kill().unwrap();
        c.wait().unwrap();
    }
    // The victims held nothing: one free 16-byte block per span must still be found.
    let mut regained = Vec::new();
    while let Ok(o) = a.allocate(16) {
        regained.push(o);
    }
    println!(
        "reclaim kills: {kills} kills; free blocks reachable afterwards: {} of {}",
        regained.len(),
        pages - 1
    );
    let lost = pages - 1 - regained.len() as u64;
    for o in regained.into_iter().chain(blocks) {
        a.free(o).unwrap();
    }
    a.write(ctrl_off, &[0; 16]).unwrap();
    a.free(ctrl_off).unwrap();
    let st = a.stats();
    let whole = a.allocate((pages * PAGE) as usize);
    println!(
        "reclaim kills: after freeing everything: live_blocks={:?} free_bytes={} of {}; \
         whole-capacity allocation: {:?}",
        st.live_blocks,
        st.free_bytes,
        st.capacity,
        whole.as_ref().map(|_| "ok")
    );
    assert!(
        lost <= 2 * kills,
        "{lost} spans with free blocks became unreachable after {kills} kills (bound: 2 per kill)"
    );
    if let Ok(o) = whole {
        a.free(o).unwrap();
    }
    // Page by page, every page except the leaked spans comes back.
    let pages_back: Vec<Offset> = std::iter::from_fn(|| a.allocate(PAGE as usize).ok()).collect();
    println!(
        "reclaim kills: {} of {pages} pages allocatable again after {kills} kills ({lost} leaked)",
        pages_back.len()
    );
    assert_eq!(pages_back.len() as u64, pages - lost);
    for o in pages_back {
        a.free(o).unwrap();
    }
}
