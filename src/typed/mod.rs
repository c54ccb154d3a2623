//! The typed layer: [`ShmSafe`] types placed in shared memory and addressed by
//! offsets that mean the same object in every process.

mod shm_safe;

pub use shm_safe::{fingerprint, ShmSafe};
