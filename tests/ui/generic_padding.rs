// A generic struct whose padding depends on its parameter (`Tagged<u8>` has 7
// bytes of padding, `Tagged<u64>` none) is refused by the derive itself, at the
// field that makes it so: `cargo check` reports it on the user's struct, before
// any instantiation.
use shared_allocator::ShmSafe;

#[derive(ShmSafe)]
#[repr(C)]
struct Tagged<T> {
    tag: T,
    value: u64,
}

#[derive(ShmSafe)]
#[repr(C)]
struct Fine {
    inner: Tagged<u64>,
}

#[derive(ShmSafe)]
#[repr(C)]
struct Holder {
    inner: Tagged<u8>,
}

const PADDED: u64 = <Tagged<u8> as ShmSafe>::FINGERPRINT;

fn main() {
    let _ = PADDED;
}
