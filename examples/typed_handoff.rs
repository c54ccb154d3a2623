//! A Rust process leaves typed data in a segment for a later process, then exits.
//!
//! `typed_handoff <name>` creates a free-list segment, moves a `[u64; 4]` into a
//! [`ShmBox`] there (which puts the segment in *typed* mode) and gives the box away
//! as a token. `typed_handoff <name> bump` creates a bump segment instead and
//! puts `[1, 2, 3, 4]` in an arena (typed mode too). Either way it exits without
//! removing the segment and prints one line: the value's offset in the segment,
//! then (free list) the token's two numbers or (bump) the epoch. A later process
//! redeems the token with `ShmBox::from_token`, once, or reads the arena value
//! through `ArenaPtr::from_parts(offset, epoch, 4).read`.
//!
//! Nothing else may touch those bytes meanwhile: in a typed segment the raw API
//! (`write`, `free`) is refused, and so is the Python package's `view()` (its test
//! suite runs this program to check that: `python/tests/test_views.py`).
//!
//! ```text
//! cargo run --example typed_handoff -- my-segment [bump]
//! ```

use shared_allocator::prelude::*;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let name = args
        .next()
        .ok_or("usage: typed_handoff <segment name> [bump]")?;
    if args.next().as_deref() == Some("bump") {
        let mut bump = BumpAllocator::create(&name, 1 << 20)?;
        let arena = bump.arena();
        let h = arena.alloc_slice(&[1u64, 2, 3, 4])?.handle();
        println!("{} {}", h.offset().get(), h.epoch());
        return Ok(());
    }
    let alloc = FreeListAllocator::create(&name, 1 << 20)?;
    let value = ShmBox::new_in(&alloc, [1u64, 2, 3, 4])?;
    let at = value.rel_ptr().raw();
    let [offset, nonce] = value.into_token().to_raw();
    println!("{at} {offset} {nonce}");
    Ok(())
}
