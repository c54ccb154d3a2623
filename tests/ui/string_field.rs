use shared_allocator::ShmSafe;

#[derive(ShmSafe)]
#[repr(C)]
struct Named {
    name: String,
}

fn main() {}
