// The arena holds the bump allocator mutably: no raw reset behind its back.
use shared_allocator::prelude::*;

fn main() -> Result<(), Error> {
    let mut bump = BumpAllocator::create("never-created", 4096)?;
    let arena = bump.arena();
    let x = arena.alloc(5u64)?;
    bump.reset();
    println!("{}", x.get()?);
    Ok(())
}
