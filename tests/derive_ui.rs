//! Compile-fail tests for `#[derive(ShmSafe)]`: one case per rejection rule in
//! `tests/ui/`, each with the compiler's message pinned in a `.stderr` file.
//!
//! After an intended change of a message, regenerate with
//! `TRYBUILD=overwrite cargo test --test derive_ui` and review the diff. The pinned
//! messages come from the toolchain in use (rustc 1.95); other versions may word them
//! differently. The field cases also pin rustc's "the following other types implement
//! trait `ShmSafe`" list (the first eight implementing types by name), so adding an
//! impl whose type name sorts early (e.g. `ArenaPtr<T>`) changes them too: re-bless.
#![cfg(feature = "derive")]

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("ui/*.rs");
}
