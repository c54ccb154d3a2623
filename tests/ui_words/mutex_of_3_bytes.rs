// A mutex payload must be whole 4-byte words: `[u8; 3]` leaves padding after it.
use shared_allocator::prelude::*;

fn main() -> Result<(), Error> {
    let alloc = FreeListAllocator::create("never-created", 1 << 20)?;
    let m = alloc.root::<ShmMutex<[u8; 3]>>("m")?;
    *m.lock()? = [1, 2, 3];
    Ok(())
}
