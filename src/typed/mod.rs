//! The typed layer: [`ShmSafe`] types placed in shared memory and addressed by
//! offsets that mean the same object in every process.
//!
//! Every typed block is in exactly one state (the crate's *Safety model*):
//!
//! - **exclusively owned**: [`ShmBox<T>`] (gives `&T`; its owner writes with
//!   [`ShmBox::set`] / [`ShmBox::update`]), the writer of a [`ShmVec<T>`], a
//!   [`ShmArchive`](crate::ShmArchive). Others copy out ([`RelPtr::read`],
//!   [`ShmPtr::read`], [`ShmVecReader`]); ownership moves by token
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
//! - [`ShmPtr<T>`]: a generation-checked pointer to a [`ShmBox`]'s value.
//!
//! # Authority: where ownership is decided
//!
//! Who owns a block, which type it holds, whether a view may exist: none of it is
//! read from bytes that safe code can write.
//!
//! - **Every block of a typed segment starts with a header this crate writes**: a
//!   [`ShmBox`] block starts with its owner header and generation, a vector's header
//!   block with its owner header, a vector's element buffer, a named root's object
//!   and the root directory's overflow block with a `PINNED`
//!   header (no token can claim it), an archive block with its owner header. Payloads
//!   (box values, vector elements, root objects, archive bytes) start *after* the
//!   header. No safe API writes a header: the payload views start after it, the raw
//!   API (`write`, `free`, `RelPtr::get`) is refused in typed segments
//!   ([`SegmentMode`](crate::segment::SegmentMode)), and Python's `view()` too.
//! - **A token names a block start, checked against allocator metadata**: the
//!   free list's page and span bitmaps, the slab's slot bitmap (and the handle caches'
//!   records), which live outside the data region
//!   ([`ShmAllocator::check_block_start`](crate::ShmAllocator)). So a token (or a
//!   `ShmPtr`) whose offset points into a payload is
//!   [`AccessError::NotBlockStart`](crate::AccessError::NotBlockStart), whatever
//!   bytes the attacker put there; only then is the header's nonce swapped, and the
//!   block start checked once more after the swap (a block freed and reused in
//!   between is refused and the swap undone).
//! - **The traits that unsafe code trusts are `unsafe`**: [`ShmAllocator`](crate::ShmAllocator)
//!   and [`ShmFree`](crate::ShmFree) (what an implementation promises is in their
//!   `# Safety`), [`ShmSafe`], [`ShmSync`] (every byte is only ever accessed
//!   atomically) and [`ShmShared`] (shared `&T` sound while only the type's own API
//!   touches it: locks and channels; no raw write, free or checked view reaches a
//!   root's block, in either mode: [`ShmAllocator::check_raw_range`](crate::ShmAllocator::check_raw_range);
//!   the unchecked fast [`RelPtr::get`] reaches it, which is sound because every
//!   byte of those blocks is accessed atomically, see "No plain stores").
//! - **Fork**: owning handles ([`ShmBox`], [`ShmVec`], [`ShmArchive`](crate::ShmArchive))
//!   record the fork epoch; a child's copy is no owner (its drop frees nothing,
//!   access is [`AccessError::Forked`](crate::AccessError::Forked) or, for `Deref`,
//!   a panic), and an [`ArenaBox`] view in a child takes its own pin.
//!
//! What this does not cover: *untrusted writers* (processes outside the safe API,
//! e.g. a scribbler with its own mapping) can write headers and metadata; against
//! them only the checked copy paths hold (crate *Safety model*). In a **raw**
//! segment every block start is raw bytes; that is sound because everything there
//! is accessed atomically, and tokens are refused there (they need typed mode).
//!
//! # No plain stores: why a copy never races a write
//!
//! The copy paths ([`RelPtr::read`], [`ShmPtr::read`], [`ShmVecReader`], the raw
//! `read`, archive copies) accept any offset inside a live block and load its bytes
//! with byte-wise atomic loads while other threads and processes may write, free
//! and reuse that block. Under Rust's memory model such a load is free of data
//! races only if every store it can meet is atomic too. So the rule is: **no safe
//! API of this crate stores into a segment's bytes with a plain store**. Every
//! store is an atomic operation or a byte-wise atomic copy (`atomic-memcpy`, as
//! C++'s P1478 seqlock copies):
//!
//! - a new block's header and value ([`ShmBox::new_in`], vector elements, arena
//!   values, archive bytes, root objects, collections): byte-wise atomic stores;
//! - a [`ShmBox`]'s later writes: [`ShmBox::set`] and [`ShmBox::update`] (a copy
//!   of the value, changed locally, stored back byte-wise atomically). There is no
//!   `DerefMut`: a `&mut T` into shared memory would let plain stores race copies
//!   that any process may make at any time, of this block or (after it is freed
//!   and reused) of the block that was there before;
//! - a [`ShmMutex`](crate::ShmMutex) guard derefs to the holder's copy of the
//!   data, taken when the lock is acquired and stored back byte-wise atomically
//!   when it is released; a [`ShmChannel`](crate::ShmChannel) slot and a pipeline
//!   region are filled with byte-wise atomic stores; the raw `write` is one too.
//!
//! What remains plain are *loads* through `&T` (a box's owner, a vector's writer,
//! a guard holder, arena and archive views); a load does not race a load, and no
//! store reaches those bytes while the reference lives (the states above). So no
//! sequence of safe calls makes a copy overlap a plain store, whatever block the
//! copy lands on and however often it is freed and reused, with no reader table or
//! grace period: the cost is on the writer's side, a byte-wise atomic store in
//! place of a `memcpy` (on x86-64 the same `mov`s, without vectorisation), and a
//! [`ShmBox`] write takes `update(|v| ...)` instead of `*b = ...`. The attacker's
//! tests are in `tests/copy_races.rs` (ThreadSanitizer, `scripts/sanitizers tsan`):
//! on the previous design (`DerefMut`, in-place guards) it reports each of them.
//!
//! A copy may still be torn (a mix of an old and a new value: every bit pattern is
//! a valid `T`) or stale (a [`RelPtr`] after a reuse reads the new object; use
//! [`ShmPtr`]). What this does not cover: untrusted writers (plain stores by C code
//! or `unsafe` code), and Python buffers from `view()` over raw blocks, which are
//! plain memory to Python (crate *Safety model*).
//!
//! ## Every public way to make a handle from numbers
//!
//! | constructor | checks | cannot check |
//! | --- | --- | --- |
//! | `BoxToken::from_raw` + [`ShmBox::from_token`] | typed mode; offset is a live block start (allocator metadata); header fingerprint = `T`'s; payload inside the block; nonce swap (exactly once), block start re-checked after | nothing that safe code can forge; a hostile non-crate writer can forge headers |
//! | `VecToken::from_raw` + [`ShmVec::from_token`] | as above for the header block; `len <= cap`; the buffer is a live block start holding a `PINNED` buffer header of `T` and `cap` elements | as above |
//! | `ArchiveToken::from_raw` + `ShmArchive::from_token` | as above, then checksum and bytecheck | as above |
//! | [`ShmPtr::from_raw`] + [`ShmPtr::read`] | live block start, header generation equal (before and after the copy), fingerprint; copy-out only | a generation value racing with a free *and* a reuse that puts the same number at the same place (a wrong copy, never UB) |
//! | [`RelPtr::from_raw`] + [`RelPtr::read`] | inside one live block, aligned; copy-out only | whether it is the object it was (a freed and reused block reads the new value: use [`ShmPtr`]) |
//! | [`RelPtr::get`] | raw mode only, data region, alignment; `T: ShmSync` | liveness (`get_checked` adds it); atomics only, so a stale view is still sound |
//! | [`ArenaBox::arena_ptr`] + [`ArenaPtr::get`] | epoch (`Stale`), pin, bounds; the segment it was made in (a process-local tag: another segment's same offset and epoch may be an arena's unwritten tail) | nothing more: the handle cannot be made from numbers or bytes (not `ShmSafe`, no `FromBytes`) |
//! | [`ArenaPtr::from_parts`] | epoch (`Stale`), bounds, liveness; gives copies only (`read`): `get` is [`AccessError::Unverified`](crate::AccessError::Unverified) | that the arena wrote the bytes: the `unsafe` [`ArenaPtr::from_parts_unchecked`] is for views |
//! | `ArenaArchiveToken::from_raw` + `ArenaArchiveReader::from_token` | epoch, pin, header, a checksum *keyed* with the segment's secret over (block offset, epoch, length, type tag, bytes), bytecheck: only this crate's seal of that block in that epoch validates, so an image left from an earlier epoch in an arena chunk's unwritten tail, a copy elsewhere, or a hand-built one is [`ArchiveError::Checksum`](crate::archive::ArchiveError) | a process that reads the key out of the shared memory object directly (outside the API, like an untrusted writer) can build images that validate |
//! | [`Roots::root`] by name | directory entry, type fingerprint, epoch, bounds | nothing more is needed: the directory is written only by this crate in typed mode |
//! | [`ShmVecReader::open`] by `RelPtr` | copies out with a seqlock; lengths bounded by the live block | that the header is a vector's (a forged one gives wrong but valid copies) |
//! | [`Offset::new`](crate::Offset) + raw `read`/`write`/`free` | raw mode for `write`/`free`, one live block, block start for `free`, never a root's block for `write`/`free` (and Python's `view()`) | nothing: raw segments are all-atomic |

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
mod words;

pub use arena::{Arena, ArenaBox, ArenaPtr, ArenaRef};
pub use rel_ptr::RelPtr;
pub use roots::{Root, RootInfo, Roots, MAX_ROOTS, MAX_ROOT_NAME};
pub use shm_box::ShmBox;
pub use shm_ptr::ShmPtr;
pub(crate) use shm_safe::{fingerprint, layout_checked};
pub use shm_safe::{ShmSafe, ShmShared, ShmSync};
pub use token::{BoxToken, HandOverToken, TokenSlot, VecToken};
pub use vec::{ShmVec, ShmVecHeader};
pub use vec_reader::ShmVecReader;
pub use words::{ChannelElement, MutexPayload};
