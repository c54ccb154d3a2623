use shared_allocator::ShmSafe;

#[derive(ShmSafe)]
#[repr(C)]
struct Growable {
    items: Vec<u64>,
}

fn main() {}
