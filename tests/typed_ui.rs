//! Compile-time guarantees of the typed layer (trybuild): arena values keep the
//! arena, and the bump allocator under it, from being reset; so does a validated
//! archive reader.
#[test]
fn arena_borrows_forbid_reset() {
    let t = trybuild::TestCases::new();
    t.compile_fail("ui_typed/*.rs");
}
