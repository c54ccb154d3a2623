//! The first thing to run: one parent, three child processes, one shared allocator.
//!
//! The parent creates a free-list allocator in a named segment and writes a
//! greeting into it. Each child (this same program, re-executed with `child`)
//! opens the segment by name, reads the greeting through the offset it was given
//! on its command line, allocates a block of its own, writes a reply into it and
//! prints the reply's offset. The parent reads every reply through those offsets,
//! frees everything, and removes the segment.
//!
//! ```text
//! cargo run --release --example quickstart
//! ```

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shared_allocator::prelude::*;
use shared_allocator::segment::UnlinkGuard;

const CHILDREN: usize = 3;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("child") {
        return child(&args[2], args[3].parse()?, Offset::new(args[4].parse()?));
    }

    let name = format!("quickstart-{}", std::process::id());
    let alloc = FreeListAllocator::create(&name, 1 << 20)?;
    let _cleanup = UnlinkGuard::new(&name);
    println!(
        "parent {}: created segment /{name} (1 MiB free list)",
        std::process::id()
    );

    let greeting = b"hello from the parent";
    let hello = alloc.allocate(greeting.len())?;
    alloc.write(hello, greeting)?;

    let mut kids = Vec::new();
    for i in 0..CHILDREN {
        let child = Command::new(std::env::current_exe()?)
            .args(["child", &name, &i.to_string(), &hello.get().to_string()])
            .stdout(Stdio::piped())
            .spawn()?;
        kids.push(child);
    }

    let mut replies = Vec::new();
    for mut kid in kids {
        // Watchdog: a child that hangs is killed rather than waited for forever.
        let start = Instant::now();
        while kid.try_wait()?.is_none() {
            if start.elapsed() > Duration::from_secs(10) {
                kid.kill()?;
                return Err("child did not finish within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let out = kid.wait_with_output()?;
        let line = String::from_utf8(out.stdout)?;
        let (off, len) = line.trim().split_once(' ').ok_or("bad child output")?;
        replies.push((Offset::new(off.parse()?), len.parse::<usize>()?));
    }

    for (off, len) in &replies {
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
        "after freeing: {} live blocks, {} bytes free of {}",
        stats.live_blocks.unwrap_or(0),
        stats.free_bytes,
        stats.capacity
    );
    alloc.unlink()?;
    println!("segment removed");
    Ok(())
}

fn child(name: &str, id: usize, hello: Offset) -> Result<(), Box<dyn std::error::Error>> {
    let alloc = FreeListAllocator::open(name)?;
    let greeting = alloc.read(hello, 21)?;
    let reply = format!(
        "child {id} (pid {}) got {:?}",
        std::process::id(),
        String::from_utf8_lossy(&greeting)
    );
    let off = alloc.allocate(reply.len())?;
    alloc.write(off, reply.as_bytes())?;
    println!("{} {}", off.get(), reply.len());
    Ok(())
}
