use shared_allocator::ShmSafe;

#[derive(ShmSafe)]
#[repr(C)]
struct View<'a> {
    data: &'a [u8; 8],
}

fn main() {}
