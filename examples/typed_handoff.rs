//! A Rust process leaves a typed value in a segment for a later process, then exits.
//!
//! It creates a free-list segment (`name` from the command line), moves a
//! `[u64; 4]` into a [`ShmBox`] there (which puts the segment in *typed* mode) and
//! gives the box away as a token, then exits without removing the segment. It
//! prints one line: the value's offset in the segment and the token's two numbers.
//! A later process redeems the token with `ShmBox::from_token`, once.
//!
//! Nothing else may touch the value's bytes meanwhile: in a typed segment the raw
//! API (`write`, `free`) is refused, and so is the Python package's `view()` (its
//! test suite runs this program to check that: `python/tests/test_views.py`).
//!
//! ```text
//! cargo run --example typed_handoff -- my-segment
//! ```

use shared_allocator::prelude::*;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let name = std::env::args()
        .nth(1)
        .ok_or("usage: typed_handoff <segment name>")?;
    let alloc = FreeListAllocator::create(&name, 1 << 20)?;
    let value = ShmBox::new_in(&alloc, [1u64, 2, 3, 4])?;
    let at = value.rel_ptr().raw();
    let [offset, nonce] = value.into_token().to_raw();
    println!("{at} {offset} {nonce}");
    Ok(())
}
