//! Lock-free building blocks that live in shared memory.
//!
//! They operate on `&[AtomicU64]` views of a segment's metadata region, never on
//! pointers, and treat every value they load as untrusted: an index read from a
//! word is bounds-checked before use, and every loop that follows data it read is
//! bounded, so a peer that scribbles on the words can make operations fail but
//! not hang or touch memory outside the view.
//!
//! The blocking coordination types ([`ShmEvent`], [`ShmMutex`], [`ShmCondvar`]) are
//! `ShmSafe` state built on shared futexes (see `futex.rs`); who holds what, and
//! whether that holder is alive, comes from `owner.rs`.

pub mod bitmap;
mod word;

pub use word::Word;

mod condvar;
mod event;
pub(crate) mod futex;
mod mutex;
pub(crate) mod owner;

pub use crate::error::LockError;
pub use condvar::ShmCondvar;
pub use event::{EventListener, ShmEvent, WaitOutcome};
pub use mutex::{LockResult, OwnerDied, ShmMutex, ShmMutexGuard};
