// A generic holder without padding of its own, around a padded instantiation:
// `Holder<u8>` holds a `Tagged<u8>`. `Arena::alloc` proves the whole layout.
use shared_allocator::prelude::*;

#[derive(ShmSafe, Clone, Copy)]
#[repr(C)]
struct Tagged<T> {
    tag: T,
    value: u64,
}

#[derive(ShmSafe, Clone, Copy)]
#[repr(C)]
struct Holder<T> {
    inner: Tagged<T>,
}

fn main() -> Result<(), Error> {
    let mut bump = BumpAllocator::create("never-created", 1 << 20)?;
    let arena = bump.arena();
    let h = arena.alloc(Holder { inner: Tagged { tag: 1u8, value: 2 } })?;
    println!("{:?}", h.arena_ptr());
    Ok(())
}
