// A ShmBox of atomics stays behind `&`: another process may hold `&AtomicU64` to the
// same bytes (through `RelPtr::get`), so `get_mut` (a plain write) must not exist.
use shared_allocator::prelude::*;
use std::sync::atomic::AtomicU64;

fn main() -> Result<(), Error> {
    let alloc = FreeListAllocator::create("never-created", 1 << 20)?;
    let mut b = ShmBox::new_in(&alloc, AtomicU64::new(1))?;
    *b.get_mut() = 5;
    Ok(())
}
