// The generic shapes the derive accepts (every field one type `X` or `[X; N]`:
// padding-free for every parameter) compile, on every path that places or
// resolves them. (Also makes trybuild run `cargo build`, so the
// per-instantiation checks of the compile-fail cases are evaluated.)
use shared_allocator::prelude::*;

#[derive(ShmSafe, Clone, Copy)]
#[repr(C)]
struct Tagged<T> {
    tag: T,
    value: T,
}

#[derive(ShmSafe, Clone, Copy)]
#[repr(C)]
struct Buf<const N: usize> {
    len: u64,
    data: [u64; N],
}

#[derive(ShmSafe, Clone, Copy)]
#[repr(C)]
struct Holder<T> {
    inner: Tagged<T>,
}

fn main() {
    // Only compiled, never run: the names are never created.
    if std::env::args().count() > 100 {
        let alloc = FreeListAllocator::create("never-created", 1 << 20).unwrap();
        let b = ShmBox::new_in(&alloc, Tagged { tag: 1u64, value: 2 }).unwrap();
        let _ = b.rel_ptr().read(&alloc);
        let mut v = ShmVec::new_in(&alloc).unwrap();
        v.push(Buf::<2> { len: 1, data: [7, 8] }).unwrap();
        let mut bump = BumpAllocator::create("never-created-2", 1 << 20).unwrap();
        let arena = bump.arena();
        let _ = arena.alloc(Holder { inner: Tagged { tag: 1u8, value: 2 } });
    }
}
