use shared_allocator::ShmSafe;

#[derive(ShmSafe)]
#[repr(C, packed)]
struct Packed {
    tag: u8,
    value: u64,
}

fn main() {}
