//! The typed layer: [`ShmSafe`] types placed in shared memory and addressed by
//! offsets that mean the same object in every process.
//!
//! - [`RelPtr<T>`]: a typed offset, checked on every resolution.
//! - [`ShmBox<T>`]: owns one `T`, frees it on drop.
//! - [`ShmVec<T>`]: one writer, many readers in other processes ([`ShmVecReader`]).
//! - [`Roots`]: named, typed objects, found or created by name.
//! - [`Arena`]: typed allocations over a bump allocator, epoch-checked handles.

mod arena;
pub(crate) mod raw;
mod rel_ptr;
pub mod roots;
mod shm_box;
mod shm_safe;
pub mod token;
mod vec;

pub use arena::{Arena, ArenaBox, ArenaPtr};
pub use rel_ptr::RelPtr;
pub use roots::{RootInfo, Roots, FIXED_ROOTS, MAX_ROOTS, MAX_ROOT_NAME, OVERFLOW_ROOTS};
pub use shm_box::ShmBox;
pub use shm_safe::{fingerprint, layout_checked, ShmSafe, ShmSync};
pub use token::{BoxToken, HandOverToken, TokenSlot, VecToken};
pub use vec::{ShmVec, ShmVecHeader, ShmVecReader};
