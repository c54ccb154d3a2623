use shared_allocator::ShmSafe;

#[derive(ShmSafe)]
struct NoRepr {
    a: u64,
    b: u64,
}

fn main() {}
