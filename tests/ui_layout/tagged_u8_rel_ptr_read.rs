// Resolving a pointer proves the layout too: `RelPtr::<Tagged<u8>>::read` would copy
// 7 uninitialised padding bytes out of shared memory.
use shared_allocator::prelude::*;

#[derive(ShmSafe, Clone, Copy)]
#[repr(C)]
struct Tagged<T> {
    tag: T,
    value: u64,
}

fn main() -> Result<(), Error> {
    let alloc = FreeListAllocator::create("never-created", 1 << 20)?;
    let p = RelPtr::<Tagged<u8>>::from_raw(4096);
    println!("{}", p.read(&alloc)?.value);
    Ok(())
}
