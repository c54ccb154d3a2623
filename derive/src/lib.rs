//! `#[derive(ShmSafe)]` for `shared_allocator` (filled in by the typed-layer work).
