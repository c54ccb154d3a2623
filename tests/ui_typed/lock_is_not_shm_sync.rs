// A lock hands out `&mut T` to plain data under it: not every byte is atomic, so
// it is ShmShared (a root may hold it, in a typed segment), never ShmSync, and a
// raw-mode RelPtr cannot view it.
use shared_allocator::prelude::*;
use shared_allocator::ShmMutex;

fn main() {
    let alloc = FreeListAllocator::open("never-opened").unwrap();
    let p = RelPtr::<ShmMutex<u64>>::from_raw(4096);
    let _ = p.get(&alloc);
}
