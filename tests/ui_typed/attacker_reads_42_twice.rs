// The attack: a `&u64` from a RelPtr held while another handle writes the
// same bytes (a release build read 42 twice while memory held 99). A shared `&T`
// now needs `T: ShmSync`; a plain `u64` is read by copy or through its owner.
use shared_allocator::prelude::*;

fn main() -> Result<(), Error> {
    let alloc = FreeListAllocator::create("never-created", 1 << 20)?;
    let mut owner = ShmBox::new_in(&alloc, 42u64)?;
    let seen: &u64 = owner.rel_ptr().get(&alloc)?;
    let first = *seen;
    *owner = 99;
    println!("{first} {}", *seen);
    Ok(())
}
