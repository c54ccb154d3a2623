// A root is reachable by name from every process: shared and writable. A plain
// `u64` root would hand out `&u64` to bytes other processes write.
use shared_allocator::prelude::*;

fn main() -> Result<(), Error> {
    let alloc = FreeListAllocator::create("never-created", 1 << 20)?;
    let n = alloc.root::<u64>("n")?;
    println!("{n}");
    Ok(())
}
