use shared_allocator::ShmSafe;

#[derive(ShmSafe)]
#[repr(C)]
struct Borrowing {
    name: &'static u64,
}

fn main() {}
