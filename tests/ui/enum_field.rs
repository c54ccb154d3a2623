use shared_allocator::ShmSafe;

#[allow(dead_code)]
#[repr(u32)]
enum State {
    Idle,
    Busy,
}

#[derive(ShmSafe)]
#[repr(C)]
struct Job {
    id: u32,
    state: State,
}

fn main() {}
