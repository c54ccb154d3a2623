//! Blocking coordination in shared memory, beside the [channel](crate::channel):
//! [`ShmEvent`] (wait for a condition, never missing a notification),
//! [`ShmMutex`] (a lock that survives its holder's death) and [`ShmCondvar`].
//!
//! All are `ShmSafe` state (zeroed memory is a valid value), so they live in named
//! roots or as fields of `#[derive(ShmSafe)]` structs, built on the shared futex
//! word and owner identities of the building-block layer (`crate::sync`).

mod condvar;
mod event;
mod mutex;

pub use crate::error::LockError;
pub use condvar::ShmCondvar;
pub use event::{EventListener, ShmEvent, WaitOutcome};
pub use mutex::{LockResult, OwnerDied, ShmMutex, ShmMutexGuard};
