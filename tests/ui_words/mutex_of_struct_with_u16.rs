// A derived struct is a mutex payload only if every field is whole 4-byte words.
use shared_allocator::prelude::*;

#[derive(ShmSafe, Clone, Copy)]
#[repr(C)]
struct Flags {
    bits: u16,
}

fn main() {
    let _m = ShmMutex::new(Flags { bits: 0 });
}
