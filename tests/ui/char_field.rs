use shared_allocator::ShmSafe;

#[derive(ShmSafe)]
#[repr(C)]
struct Letter {
    c: char,
}

fn main() {}
