//! The tests, benches and examples of `shared_allocator` (an unpublished crate: see
//! tests/Cargo.toml). The library target is empty; trybuild needs one to build its
//! compile-fail cases against this crate's dependencies.
