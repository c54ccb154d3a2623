//! Lock-free building blocks that live in shared memory.
//!
//! They operate on `&[AtomicU64]` views of a segment's metadata region, never on
//! pointers, and treat every value they load as untrusted: an index read from a
//! word is bounds-checked before use, and every loop that follows data it read is
//! bounded, so a peer that scribbles on the words can make operations fail but
//! not hang or touch memory outside the view.

pub mod bitmap;
mod word;

pub use word::Word;
