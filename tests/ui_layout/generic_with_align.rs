// The red team's second round: a generic struct of one field type, but
// `repr(align(8))`: `Q<u8>` is padded to 8 bytes. The derive refuses `align` on
// generic structs, so `cargo check` reports it at the struct, not `cargo build`
// inside this crate.
use shared_allocator::prelude::*;

#[derive(ShmSafe, Clone, Copy)]
#[repr(C, align(8))]
struct Q<T> {
    a: T,
}

fn main() -> Result<(), Error> {
    let a = FreeListAllocator::create("never-created", 1 << 20)?;
    let _b = ShmBox::new_in(&a, Q::<u8> { a: 1 })?;
    Ok(())
}
