// A derived struct is a channel element only if every field is whole 8-byte words.
use shared_allocator::prelude::*;

#[derive(ShmSafe, Clone, Copy)]
#[repr(C)]
struct Job {
    id: u64,
    kind: u32,
    _pad: u32,
}

struct Worker {
    jobs: ShmChannel<Job, 16>,
}

fn main() {}
