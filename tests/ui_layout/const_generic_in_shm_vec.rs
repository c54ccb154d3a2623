// A const-generic struct: `Buf<1>` has 7 padding bytes after `len`. `ShmVec::push`
// would copy them into shared memory; `ShmVec::new_in` refuses to compile instead.
use shared_allocator::prelude::*;

#[derive(ShmSafe, Clone, Copy)]
#[repr(C)]
struct Buf<const N: usize> {
    len: u8,
    data: [u64; N],
}

fn main() -> Result<(), Error> {
    let alloc = FreeListAllocator::create("never-created", 1 << 20)?;
    let mut v = ShmVec::new_in(&alloc)?;
    v.push(Buf::<1> { len: 1, data: [7] })?;
    Ok(())
}
