// `#[shm(sync)]` promises every byte is behind an atomic: a plain field is rejected.
use shared_allocator::ShmSafe;
use std::sync::atomic::AtomicU64;

#[derive(ShmSafe)]
#[shm(sync)]
#[repr(C)]
struct Mixed {
    hits: AtomicU64,
    last: u64,
}

fn main() {}
