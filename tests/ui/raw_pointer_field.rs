use shared_allocator::ShmSafe;

// A linked list through raw pointers: the address means nothing in another process.
#[derive(ShmSafe)]
#[repr(C)]
struct Node {
    value: u64,
    next: *const Node,
}

fn main() {}
