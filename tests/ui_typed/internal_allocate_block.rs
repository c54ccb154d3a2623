// The red team's second round: the typed handles' own allocation
// (`allocate_block`, no segment-mode claim) was a hidden but callable method, so
// safe code could allocate a raw block in a typed segment that nothing could free.
// It takes the crate-private `Internal` token now, which no other crate can make.
use shared_allocator::prelude::*;
use shared_allocator::segment::CreateOptions;

fn main() -> Result<(), Error> {
    let a = FreeListAllocator::create_with("never-created", 1 << 20, &CreateOptions::typed())?;
    let _leak = a.allocate_block(shared_allocator::alloc::Internal(()), 4096, 8)?;
    Ok(())
}
