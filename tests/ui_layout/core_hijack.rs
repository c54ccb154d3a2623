// The crate renames itself to `core` and brings a `size_of` that lies. The derive
// reaches `core` through `shared_allocator::__private::core`, so the real
// `size_of` still sees the 7 padding bytes of `Padded`.
extern crate self as core;

pub mod mem {
    pub const fn size_of<T>() -> usize {
        16
    }
    pub const fn align_of<T>() -> usize {
        8
    }
}

use shared_allocator::prelude::*;
use std::sync::atomic::AtomicU64;

#[derive(ShmSafe)]
#[shm(sync)]
#[repr(C)]
struct Padded {
    a: std::sync::atomic::AtomicU8,
    b: AtomicU64,
}

fn main() -> Result<(), Error> {
    let alloc = FreeListAllocator::create("never-created", 1 << 20)?;
    let p = alloc.root::<Padded>("padded")?;
    let _ = p;
    Ok(())
}
