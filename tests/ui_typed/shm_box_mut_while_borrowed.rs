// The owner's writes (`set`, `update`: `&mut self`) and `&T` follow the borrow
// rules like `Box`: no write while a `&T` from the box lives.
use shared_allocator::prelude::*;

fn main() -> Result<(), Error> {
    let alloc = FreeListAllocator::create("never-created", 1 << 20)?;
    let mut b = ShmBox::new_in(&alloc, 42u64)?;
    let r: &u64 = &b;
    b.set(99);
    println!("{r}");
    Ok(())
}
