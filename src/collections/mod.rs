//! Shared data structures built on the typed layer: a concurrent hash map
//! ([`ShmHashMap`]), shared read-only ownership ([`ShmArc`]), strings
//! ([`ShmString`], an owning growable handle; [`InlineStr`]; `String` values of
//! collections) and nested values ([`ShmValue`], [`RawVec`]).
//!
//! # Nesting by construction
//!
//! Every value a collection holds has a plain-data **raw form** inside the segment
//! ([`ShmValue::Raw`]: offsets and lengths, never process pointers): a `u64` is its
//! own raw form, a `String` is a [`RawStr`] (offset and length of a block of its
//! bytes), a `Vec<T>` is a [`RawVec`] of `T`'s raw forms. A struct of such fields
//! is a `#[derive(ShmSafe)]` struct of their raw forms, so a string sits in a struct
//! in a vector in a map. Every block a raw form names starts with a header this
//! crate writes (a *pinned* header: no token can name it),
//! and is owned by exactly one raw form: removing or replacing a value releases
//! its blocks exactly once, in whichever process does it
//! ([`ShmValue::release`] clears each reference before freeing what it named, so
//! even a repair of a crashed release frees nothing twice).
//!
//! Reads copy out: [`ShmValue::load`] follows the raw form through the checked copy
//! paths and returns an owned value ([`ShmValue::Out`]), so no reference into shared
//! memory outlives a call and a racing writer costs a retry, never a torn value.
//!
//! Collections live in typed segments (they put the segment in typed mode).

pub mod arc;
pub mod map;
mod string;
mod value;

pub use arc::{ArcToken, ShmArc, ARC_TOKENS};
pub use map::{Entries, ShmHashMap, SHARDS};
pub use string::{InlineStr, ShmString, StringToken};
pub use value::{MapHasher, RawStr, RawVec, ShmKey, ShmValue};

/// How long a collection waits for a lock held by a live process before it gives
/// up with [`CollectionError::Busy`](crate::error::CollectionError::Busy).
pub const LOCK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
