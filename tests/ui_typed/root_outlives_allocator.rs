// A root borrowed from an allocator cannot outlive it (the mapping goes with it).
use shared_allocator::prelude::*;
use std::sync::atomic::AtomicU64;

fn main() -> Result<(), Error> {
    let hits = {
        let alloc = FreeListAllocator::create("never-created", 1 << 20)?;
        alloc.root::<AtomicU64>("hits")?
    };
    drop(hits);
    Ok(())
}
