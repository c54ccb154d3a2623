//! Lock-free building blocks that live in shared memory.
//!
//! They operate on `&[AtomicU64]` views of a segment's metadata region, never on
//! pointers, and treat every value they load as untrusted: an index read from a
//! word is bounds-checked before use, and every loop that follows data it read is
//! bounded, so a peer that scribbles on the words can make operations fail but
//! not hang or touch memory outside the view.
//!
//! Also the shared futex word (`futex.rs`) and owner identities (`owner.rs`: who
//! holds what, and whether that holder is alive), which the coordination types of
//! [`crate::coord`] and the channel build on.

pub mod bitmap;
mod word;

pub use word::Word;

pub(crate) mod futex;
pub(crate) mod owner;
