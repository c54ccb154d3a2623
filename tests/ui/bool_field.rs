use shared_allocator::ShmSafe;

#[derive(ShmSafe)]
#[repr(C)]
struct Flags {
    ready: bool,
}

fn main() {}
