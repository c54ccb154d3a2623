// A generic struct is checked for padding per instantiation, when its FINGERPRINT is
// evaluated: `Tagged<u64>` is fine, `Tagged<u8>` has 7 bytes of padding, whether it
// is used directly or as the field of a non-generic struct.
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
