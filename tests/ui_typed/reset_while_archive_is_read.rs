// A validated archive reader borrows the bump allocator: this process cannot reset
// it (and reuse the bytes) while the reader can still hand out references.
use shared_allocator::archive::ArenaArchiveReader;
use shared_allocator::prelude::*;

fn main() -> Result<(), Error> {
    let mut bump = BumpAllocator::create("never-created", 4096)?;
    let token = bump.arena().archive(&vec![1u32, 2, 3])?.into_token();
    let reader = ArenaArchiveReader::<Vec<u32>, _>::from_token(&bump, token)?;
    bump.reset();
    println!("{}", reader.access()?.len());
    Ok(())
}
