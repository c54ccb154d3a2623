// The red team's generic structs whose padding depends on the parameter:
// `ShmMutex<G3<u64>>` (4 padding bytes), a `#[shm(sync)]` root `S<AtomicU64>`,
// `ShmBox::new_in(&a, G3::<u8> { .. })`. `cargo check` used to pass them and
// `cargo build` failed inside this crate; the derive now refuses both structs at
// their own field, so `cargo check` reports them on the user's lines.
use shared_allocator::prelude::*;
use std::sync::atomic::{AtomicU32, AtomicU64};

#[derive(ShmSafe, Clone, Copy)]
#[repr(C)]
struct G3<T> {
    a: u32,
    t: T,
}

#[derive(ShmSafe)]
#[shm(sync)]
#[repr(C)]
struct S<T> {
    a: AtomicU32,
    t: T,
}

fn main() -> Result<(), Error> {
    let a = FreeListAllocator::create("never-created", 1 << 20)?;
    let _m = a.root::<ShmMutex<G3<u64>>>("l")?;
    let _r = a.root::<S<AtomicU64>>("m")?;
    let _b = ShmBox::new_in(&a, G3::<u8> { a: 1, t: 2 })?;
    Ok(())
}
