// A receiver that borrows its allocator (`&alloc`) cannot move into a spawned
// thread (it is not 'static); one made from an `Arc` can (tests/handles.rs).
use shared_allocator::prelude::*;

fn main() -> Result<(), Error> {
    let alloc = FreeListAllocator::create("never-created", 1 << 20)?;
    let jobs = alloc.root::<ShmChannel<u64, 4>>("jobs")?;
    let rx = jobs.receiver()?;
    std::thread::spawn(move || rx.recv());
    Ok(())
}
