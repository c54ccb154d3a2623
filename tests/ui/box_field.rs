use shared_allocator::ShmSafe;

#[derive(ShmSafe)]
#[repr(C)]
struct Boxed {
    value: Box<u64>,
}

fn main() {}
