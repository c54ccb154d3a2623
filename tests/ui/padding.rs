// Implicit padding: 7 bytes after `tag` so that `value` is aligned.
use shared_allocator::ShmSafe;

#[derive(ShmSafe)]
#[repr(C)]
struct Padded {
    tag: u8,
    value: u64,
}

fn main() {}
