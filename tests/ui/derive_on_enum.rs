use shared_allocator::ShmSafe;

#[derive(ShmSafe)]
#[repr(u8)]
enum Mode {
    Read,
    Write,
}

fn main() {}
