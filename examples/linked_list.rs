//! A producer process builds a linked list of `RelPtr`-linked particles in shared
//! memory; a consumer process (this program re-executed) walks it from a named root
//! and checks every node. No serialisation: the consumer copies each node straight
//! out of the producer's block (`RelPtr::read`, a checked byte-wise atomic copy),
//! through offsets that mean the same thing in both processes.
//!
//! ```text
//! cargo run --release --example linked_list
//! ```

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use shared_allocator::prelude::*;
use shared_allocator::segment::UnlinkGuard;

#[derive(ShmSafe, Clone, Copy, Debug)]
#[repr(C)]
struct Particle {
    pos: [f32; 3],
    vel: [f32; 3],
    id: u64,
    next: RelPtr<Particle>,
}

/// The list head, found by name in the consumer: all atomics, so it can be a root.
#[derive(ShmSafe)]
#[shm(sync)]
#[repr(C)]
struct ListHead {
    first: AtomicU64, // raw RelPtr<Particle>, published with Release when complete
    count: AtomicU64,
}

const N: u64 = 10_000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("consumer") {
        return consumer(&args[2]);
    }
    let name = format!("linked-list-{}", std::process::id());
    let alloc = FreeListAllocator::create(&name, 4 << 20)?;
    let _cleanup = UnlinkGuard::new(&name);

    // Build back to front so each node can point at the one after it.
    let mut next = RelPtr::null();
    let mut tokens = Vec::with_capacity(N as usize);
    for id in (0..N).rev() {
        let f = id as f32;
        let node = ShmBox::new_in(
            &alloc,
            Particle {
                pos: [f, f * 2.0, f * 3.0],
                vel: [1.0, 0.0, -1.0],
                id,
                next,
            },
        )?;
        next = node.rel_ptr();
        tokens.push(node.into_token()); // the list owns its nodes now
    }
    let head = alloc.root::<ListHead>("particles")?;
    head.count.store(N, Ordering::Relaxed);
    head.first.store(next.to_raw(), Ordering::Release);
    println!(
        "producer {}: built {N} particles in /{name}",
        std::process::id()
    );

    let mut kid = Command::new(std::env::current_exe()?)
        .args(["consumer", &name])
        .spawn()?;
    let start = Instant::now();
    let status = loop {
        if let Some(s) = kid.try_wait()? {
            break s;
        }
        if start.elapsed() > Duration::from_secs(30) {
            kid.kill()?;
            return Err("consumer hung (watchdog)".into());
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    if !status.success() {
        return Err(format!("consumer failed: {status}").into());
    }

    // Free the list (the consumer only read it).
    for token in tokens {
        drop(ShmBox::from_token(&alloc, token)?);
    }
    println!(
        "producer: freed the list, {} live blocks left (the root)",
        alloc.stats().live_blocks.unwrap_or(0)
    );
    alloc.unlink()?;
    Ok(())
}

fn consumer(name: &str) -> Result<(), Box<dyn std::error::Error>> {
    let alloc = FreeListAllocator::open(name)?;
    let head = alloc.root::<ListHead>("particles")?;
    let mut p = RelPtr::<Particle>::from_raw(head.first.load(Ordering::Acquire));
    let (mut seen, mut sum) = (0u64, 0.0f64);
    while !p.is_null() {
        let node = p.read(&alloc)?; // validated (bounds, alignment, live block), copied
        assert_eq!(node.id, seen, "nodes in order");
        assert_eq!(node.pos[1], node.id as f32 * 2.0);
        sum += f64::from(node.pos[0]);
        seen += 1;
        p = node.next;
    }
    assert_eq!(seen, head.count.load(Ordering::Relaxed));
    println!(
        "consumer {}: walked {seen} particles, sum of x = {sum}",
        std::process::id()
    );
    Ok(())
}
