// No `&mut T` into shared memory: a plain store through it could race a copy
// (`RelPtr::read`, `ShmPtr::read`) that another thread or process makes at the
// same time. The owner writes with `set` / `update` (byte-wise atomic stores).
#![allow(unused_mut)]
use shared_allocator::prelude::*;

fn main() -> Result<(), Error> {
    let alloc = FreeListAllocator::create("never-created", 1 << 20)?;
    let mut b = ShmBox::new_in(&alloc, [1u64, 2])?;
    b[0] = 99;
    Ok(())
}
