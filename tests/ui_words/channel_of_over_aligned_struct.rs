// `#[repr(align(16))]` raises the alignment past 8: the derive emits no
// `ChannelElement`, so the struct cannot be a channel element even though its
// fields are whole words.
use shared_allocator::prelude::*;

#[derive(ShmSafe, Clone, Copy)]
#[repr(C, align(16))]
struct Wide {
    a: u64,
    b: u64,
}

fn main() -> Result<(), Error> {
    let alloc = FreeListAllocator::create("never-created", 1 << 20)?;
    let _c = alloc.root::<ShmChannel<Wide, 4>>("c")?;
    Ok(())
}
