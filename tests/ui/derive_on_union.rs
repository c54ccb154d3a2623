use shared_allocator::ShmSafe;

#[derive(ShmSafe)]
#[repr(C)]
union Either {
    int: u64,
    float: f64,
}

fn main() {}
