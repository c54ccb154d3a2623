// A channel element must be whole 8-byte words: `[u32; 3]` is 12 bytes.
use shared_allocator::prelude::*;

fn main() -> Result<(), Error> {
    let alloc = FreeListAllocator::create("never-created", 1 << 20)?;
    let jobs = alloc.root::<ShmChannel<[u32; 3], 4>>("jobs")?;
    let _tx = jobs.sender()?;
    Ok(())
}
