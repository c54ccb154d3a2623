// A value from the arena is alive, so the arena cannot be reset.
use shared_allocator::prelude::*;

fn main() -> Result<(), Error> {
    let mut bump = BumpAllocator::create("never-created", 4096)?;
    let mut arena = bump.arena();
    let x = arena.alloc(5u64)?;
    arena.reset();
    println!("{}", x.get()?);
    Ok(())
}
