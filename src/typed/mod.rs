//! The typed layer: [`ShmSafe`] types placed in shared memory and addressed by
//! offsets that mean the same object in every process.
//!
//! Every typed block is in exactly one state (the crate's *Safety model*):
//!
//! - **exclusively owned**: [`ShmBox<T>`] (gives `&T` and `&mut T`), the writer of a
//!   [`ShmVec<T>`], a [`ShmArchive`](crate::ShmArchive). Others copy out
//!   ([`RelPtr::read`], [`ShmVecReader`]); ownership moves by token
//!   ([`token`]: `into_token` / `from_token`, exactly once, type-checked);
//! - **shared and immutable**: arena values ([`Arena`], [`ArenaPtr`]), written once
//!   and epoch-checked;
//! - **concurrently mutable**: only for [`ShmSync`] types (atomics), the only ones
//!   [`RelPtr::get`] and [`Roots::root`] give `&T` to.
//!
//! - [`RelPtr<T>`]: a typed offset, checked on every resolution.
//! - [`ShmBox<T>`]: owns one `T`, frees it on drop.
//! - [`ShmVec<T>`]: one writer, many readers in other processes ([`ShmVecReader`]).
//! - [`Roots`]: named, typed objects, found or created by name; [`TokenSlot`] parks
//!   a token in one.
//! - [`Arena`]: typed allocations over a bump allocator, epoch-checked handles.

mod arena;
pub(crate) mod raw;
mod rel_ptr;
pub mod roots;
mod shm_box;
mod shm_ptr;
mod shm_safe;
pub mod token;
mod vec;
mod vec_reader;

pub use arena::{Arena, ArenaBox, ArenaPtr, ArenaRef};
pub use rel_ptr::RelPtr;
pub use roots::{RootInfo, Roots, FIXED_ROOTS, MAX_ROOTS, MAX_ROOT_NAME, OVERFLOW_ROOTS};
pub use shm_box::ShmBox;
pub use shm_ptr::ShmPtr;
pub use shm_safe::{fingerprint, layout_checked, ShmSafe, ShmShared, ShmSync};
pub use token::{BoxToken, HandOverToken, TokenSlot, VecToken};
pub use vec::{ShmVec, ShmVecHeader};
pub use vec_reader::ShmVecReader;
