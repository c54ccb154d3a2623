use shared_allocator::ShmSafe;

// A plain struct of ShmSafe fields, but without the derive.
#[repr(C)]
struct Plain {
    x: u64,
}

#[derive(ShmSafe)]
#[repr(C)]
struct Outer {
    inner: Plain,
}

fn main() {}
