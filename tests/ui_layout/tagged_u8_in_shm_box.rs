// `Tagged<u8>` has 7 padding bytes. Nothing evaluates its FINGERPRINT by hand:
// `ShmBox::new_in` itself proves the layout of the instantiation it places.
use shared_allocator::prelude::*;

#[derive(ShmSafe, Clone, Copy)]
#[repr(C)]
struct Tagged<T> {
    tag: T,
    value: u64,
}

fn main() -> Result<(), Error> {
    let alloc = FreeListAllocator::create("never-created", 1 << 20)?;
    let b = ShmBox::new_in(&alloc, Tagged { tag: 1u8, value: 2 })?;
    println!("{}", b.value);
    Ok(())
}
