//! Layout mistakes are `cargo check` errors at the user's line, naming the user's
//! type: channel elements and mutex payloads are trait bounds
//! ([`ChannelElement`](shared_allocator::typed::ChannelElement),
//! [`MutexPayload`](shared_allocator::typed::MutexPayload)), not post-monomorphization
//! const panics. Only compile-fail cases here, so trybuild runs `cargo check`.
//! Regenerate the expected output with `TRYBUILD=overwrite cargo test --test words_ui`.

#[test]
fn layout_mistakes_fail_cargo_check_at_the_users_line() {
    let t = trybuild::TestCases::new();
    t.compile_fail("ui_words/*.rs");
}
