//! Compile-fail tests for layouts that only a concrete instantiation reveals:
//! padding in `Tagged<u8>`, in a const-generic struct, in a generic holder of
//! such a struct, and the `extern crate self as core;` hijack of the derive's paths.
//!
//! These errors come from const evaluation at monomorphization, which `cargo check`
//! does not reach, so the pass case makes trybuild run `cargo build`. Regenerate the
//! pinned messages with `TRYBUILD=overwrite cargo test --test derive_layout_ui`.
#![cfg(feature = "derive")]

#[test]
fn padding_is_proven_for_every_instantiation_a_handle_uses() {
    let t = trybuild::TestCases::new();
    t.compile_fail("ui_layout/*.rs");
    t.pass("ui_layout_pass/*.rs");
}
