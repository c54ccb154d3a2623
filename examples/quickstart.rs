//! The first thing to run: one parent, three child processes, one shared allocator.
//!
//! The parent creates two free-list segments, each with its mode fixed at
//! creation: a raw one for the bytes (the offset API: `allocate`, `write`,
//! `read`, `free`) and a typed one for the coordination (channels and an event,
//! as named roots). It writes a greeting into the raw one, and hands the
//! greeting's offset to each child through a [`ShmChannel`] in the typed one. Each child (this same program, re-executed
//! with `child`) opens the segment by name, takes the offset from the channel, reads
//! the greeting, allocates a block of its own, writes a reply into it and sends the
//! reply's offset and length back through a second channel, and waits (on a
//! [`ShmEvent`]) until the parent has every reply. The parent reads
//! every reply through those offsets, frees everything, and removes the segment.
//! Nobody polls: receivers sleep on a futex until a message arrives.
//!
//! ```text
//! cargo run --release --example quickstart
//! ```

use std::process::Command;
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicU64, Ordering};

use shared_allocator::prelude::*;
use shared_allocator::segment::{CreateOptions, UnlinkGuard};

const CHILDREN: usize = 3;
/// Offsets of greetings, parent to children.
type Greetings = ShmChannel<u64, 8>;
/// `[offset, length]` of replies, children to parent.
type Replies = ShmChannel<[u64; 2], 8>;
/// "Every reply is in": the children may exit.
#[derive(ShmSafe)]
#[shm(sync)]
#[repr(C)]
struct Bye {
    done: AtomicU64,
    event: ShmEvent,
}
/// Nobody waits for another process longer than this.
const TIMEOUT: Duration = Duration::from_secs(10);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("child") {
        return child(&args[2], args[3].parse()?);
    }

    let name = format!("quickstart-{}", std::process::id());
    let data_name = format!("{name}-data");
    // Coordination (channels, an event) in a typed segment, bytes in a raw one.
    let coord = FreeListAllocator::create_with(&name, 1 << 20, &CreateOptions::typed())?;
    let _cleanup = UnlinkGuard::new(&name);
    let alloc = FreeListAllocator::create_with(&data_name, 1 << 20, &CreateOptions::raw())?;
    let _cleanup_data = UnlinkGuard::new(&data_name);
    println!(
        "parent {}: created segments /{name} (typed) and /{data_name} (raw), 1 MiB free lists",
        std::process::id()
    );
    let greetings = coord.root::<Greetings>("greetings")?.sender()?;
    let replies = coord.root::<Replies>("replies")?.receiver()?;

    let greeting = b"hello from the parent";
    let hello = alloc.allocate(greeting.len())?;
    alloc.write(hello, greeting)?;

    let mut kids = Vec::new();
    for i in 0..CHILDREN {
        kids.push(
            Command::new(std::env::current_exe()?)
                .args(["child", &name, &i.to_string()])
                .spawn()?,
        );
    }
    for _ in 0..CHILDREN {
        greetings.send_timeout(hello.get(), TIMEOUT)?; // one offset per child
    }

    let mut got = Vec::new();
    for _ in 0..CHILDREN {
        let [off, len] = replies.recv_timeout(TIMEOUT)?; // sleeps until a child replies
        got.push((Offset::new(off), len as usize));
    }
    let bye = coord.root::<Bye>("bye")?;
    bye.done.store(1, Ordering::Release);
    bye.event.notify_all(); // every child may go now
    for mut kid in kids {
        // Watchdog: a child that hangs is killed rather than waited for forever.
        let start = Instant::now();
        while kid.try_wait()?.is_none() {
            if start.elapsed() > TIMEOUT {
                kid.kill()?;
                return Err("child did not finish within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        if !kid.wait()?.success() {
            return Err("a child failed".into());
        }
    }

    got.sort(); // the children answer in any order
    for (off, len) in &got {
        let text = alloc.read(*off, *len)?;
        println!(
            "parent read at offset {off}: {}",
            String::from_utf8_lossy(&text)
        );
        alloc.free(*off)?;
    }
    alloc.free(hello)?;
    let stats = alloc.stats();
    println!(
        "after freeing: {} live blocks in the raw segment, {} bytes free of {}",
        stats.live_blocks.unwrap_or(0),
        stats.free_bytes,
        stats.capacity
    );
    alloc.unlink()?;
    coord.unlink()?;
    println!("segments removed");
    Ok(())
}

fn child(name: &str, id: usize) -> Result<(), Box<dyn std::error::Error>> {
    let coord = FreeListAllocator::open(name)?;
    let alloc = FreeListAllocator::open(&format!("{name}-data"))?;
    let greetings = coord.root::<Greetings>("greetings")?.receiver()?;
    let replies = coord.root::<Replies>("replies")?.sender()?;
    let hello = Offset::new(greetings.recv_timeout(TIMEOUT)?);
    let greeting = alloc.read(hello, 21)?;
    let reply = format!(
        "child {id} (pid {}) got {:?}",
        std::process::id(),
        String::from_utf8_lossy(&greeting)
    );
    let off = alloc.allocate(reply.len())?;
    alloc.write(off, reply.as_bytes())?;
    replies.send_timeout([off.get(), reply.len() as u64], TIMEOUT)?;
    // Stay registered until the parent has every reply: were every sender gone in
    // between, the parent's receiver would rightly report `Disconnected`.
    let bye = coord.root::<Bye>("bye")?;
    if !bye
        .event
        .wait_timeout_until(TIMEOUT, || bye.done.load(Ordering::Acquire) == 1)
    {
        return Err("the parent never said goodbye".into());
    }
    Ok(())
}
