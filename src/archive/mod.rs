//! [rkyv] archives written into and read from shared memory (cargo feature `rkyv`).
//!
//! A value whose type derives [`rkyv::Archive`] and [`rkyv::Serialize`] is
//! serialized **straight into a shared allocation**; another process gets a
//! zero-copy `&Archived<T>` to it after validating it with bytecheck.
//!
//! | writer process | token sent across | reader process |
//! | --- | --- | --- |
//! | [`ShmArchive::new_in`] (any [`ShmFree`] allocator), then [`ShmArchive::into_token`] | [`ArchiveToken`], 16 bytes (offset + nonce) | [`ShmArchive::from_token`]: takes ownership exactly once, validates, frees on drop |
//! | [`Arena::archive`] (a [`BumpAllocator`] arena), then [`ArenaArchive::into_token`] | [`ArenaArchiveToken`], 16 bytes (offset + epoch) | [`ArenaArchiveReader::from_token`]: validates; any number of readers; the arena's `reset` frees |
//!
//! # The rule: validate when ownership passes
//!
//! bytecheck proves that the bytes *as they are now* form a valid `Archived<T>`.
//! A reference into shared memory is only as good as the promise that nobody
//! changes those bytes afterwards. So an archive changes hands exactly once, in
//! one direction:
//!
//! 1. The writer serializes into a block that no other process knows yet.
//! 2. The writer converts its handle **into** a token (`into_token(self)`): the
//!    handle is consumed, a fresh nonce goes into the block's claim word, and
//!    this module has no API that writes to an archive afterwards. (There is no
//!    `access_mut`.)
//! 3. The reader turns the token into a handle: it **claims** the block (a
//!    compare-and-swap of the nonce: exactly one `from_token` of a token
//!    succeeds, a second is [`TokenError::AlreadyClaimed`](crate::TokenError)),
//!    then **validates once, right there** (header, bounds, checksum, bytecheck)
//!    and remembers it: every later [`access`](ShmArchive::access) is a
//!    bounds/epoch check and a pointer cast, no re-validation.
//!
//! An owned archive is in the *exclusively owned* state of the crate's safety
//! model (immutable, one owner); an arena archive is *shared and immutable*.
//!
//! The safe path is the short one: `from_token` / `open` validate, `access`
//! never hands out unvalidated bytes. Skipping validation takes an `unsafe`
//! call by name: [`ArchiveToken::access_unchecked`],
//! [`ArenaArchiveToken::access_unchecked`].
//!
//! **Zero-copy views trust only untrusted writers.** Against cooperating
//! processes a view from `access` cannot change under it: a raw
//! [`ShmAllocator::write`](crate::ShmAllocator::write) or `free` is refused in a
//! segment of typed handles ([`SegmentMode`](crate::segment::SegmentMode)), an
//! owned archive has one owner (tokens are redeemed once), and a bump `reset` by
//! any handle in any process waits for an arena archive's readers (they pin the
//! region) or returns `Busy`. A process that scribbles on the segment outside the
//! API can still change the bytes under a view. Readers who do not trust every
//! writer use the **copy path** beside each view: `deserialize_copied` on
//! [`ShmArchive`], [`ArenaArchiveReader`] and [`ArenaArchiveToken`] copies the
//! archive out with byte-wise atomic loads and validates the private copy, so a
//! rewritten relative pointer is an error there, never a wild read. What *is* checked at
//! every access: that the block is still allocated (free-list) and that the
//! arena was not reset since (bump: `AccessError::Stale` in every process).
//! Corrupt bytes present at hand-over, whatever their origin, are always an
//! [`ArchiveError`], never undefined behaviour.
//!
//! # Block format and token
//!
//! An archive block is `[header: 48 bytes][archive bytes]`, 16-aligned
//! (rkyv's own alignment for archive buffers), so the archive starts 16-aligned
//! in every process. The header holds the owner header of every owned block
//! (claim word, type tag as fingerprint), then a magic number, the archive
//! length, the type tag and an XXH3-64 checksum of the archive bytes. The token
//! is the block's offset and the hand-over nonce; the length lives in the block.
//! Arena tokens carry the offset and the 64-bit bump epoch (16 bytes), exactly like
//! [`ArenaPtr`](crate::ArenaPtr). (An archived type that needs more than 16-byte
//! alignment fails validation with an error, as it would in rkyv's `AlignedVec`.)
//!
//! - The **type tag** hashes the type's name without module paths (so the same
//!   `Record` in two binaries agrees) and the archived size and alignment. It
//!   catches "opened as the wrong type" mistakes early; it is not a schema check
//!   (bytecheck is the safety check).
//! - The **checksum** turns accidental corruption that is still structurally
//!   valid (a flipped bit in an integer, a changed ASCII letter, a shortened
//!   length whose new end happens to look like a valid root) into an error.
//!   bytecheck alone checks structure, not content. The checksum is not a
//!   security boundary (a hostile writer can recompute it); bytecheck, which
//!   runs after it regardless, is what rules out undefined behaviour.
//! - An **arena archive's** checksum word is keyed: SipHash-2-4 under a 128-bit
//!   secret the segment's creator draws (kept in the segment header, which no
//!   API reads or writes) over the block offset, the bump epoch, the length, the
//!   type tag and the XXH3 checksum. An arena archive token is two numbers with
//!   no owner header to check against, and an arena chunk's reserved but unwritten
//!   tail may still hold an archive from an earlier epoch, which the arena will
//!   write over: a view there would change under its reader. With the key, only
//!   this crate's seal of *that* block in *that* epoch validates; an old image, a
//!   copy of a current one at another offset, or one built by the caller (say, as
//!   an arena slice) is [`ArchiveError::Checksum`]. (A process that reads the key
//!   out of the shared memory object directly is outside the API, like an
//!   untrusted writer: the copy paths stay sound against it, views trust it.)
//!
//! # Where bytes are copied
//!
//! There is no intermediate copy of the archive. rkyv resolves each archived
//! value into a small stack temporary and hands it to its `Writer`; our
//! [`ShmWriter`] copies each such piece directly to its final place in the
//! shared block (bounds-checked). That per-piece copy is how rkyv writes into
//! any buffer, including its own `AlignedVec`; there is no `to_bytes` +
//! `memcpy` of the whole archive anywhere.
//!
//! The price is sizing. The archive's size is not known before serializing, and
//! a shared allocation cannot grow in place, so [`ShmArchive::new_in`] and
//! [`Arena::archive`] serialize **twice**: a first pass through the same writer
//! with capacity 0 only counts bytes (rkyv serialization is deterministic), then
//! the block is allocated with the exact size and the second pass writes it.
//! This costs a second serialization (CPU; the counting pass is cheaper than a
//! writing one: for a 1 MiB batch in `benches/archive.rs` the two passes take
//! about 1.5x one pass) but never wastes shared memory and never copies. When
//! the caller knows a bound (batches of similar size),
//! [`ShmArchive::new_in_with_capacity`] / [`Arena::archive_with_capacity`]
//! serialize once into a block of that capacity; if it turns out too small,
//! the writer keeps counting past the end, and one more pass writes into an
//! exact block (a free-list block is freed; an arena's first block stays used
//! until the next reset).
//!
//! [rkyv]: https://docs.rs/rkyv/0.8

#[cfg(doc)]
use crate::{alloc::ShmFree, typed::Arena, BumpAllocator};

mod arena;
mod block;
mod owned;
mod pipeline;
mod writer;

use rkyv::api::high::{HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::{Archive, Serialize};

pub use crate::error::ArchiveError;
pub use crate::typed::token::ArchiveToken;
pub use arena::{ArenaArchive, ArenaArchiveReader, ArenaArchiveToken};
pub use owned::ShmArchive;
#[doc(hidden)]
pub use pipeline::PipeWriter;
pub use pipeline::{
    Backpressure, Batch, Delivery, PipelineBatch, PipelineError, PipelineOptions, Publisher, Subscriber,
    MAX_SUBSCRIBERS,
};
#[doc(hidden)]
pub use writer::ShmWriter;

/// The rkyv this module is built against (0.8), for `#[rkyv(crate = ...)]` or
/// to keep versions in step.
pub use rkyv;

/// Alignment of an archive block and of the archive inside it (rkyv's buffer alignment).
pub(crate) const ARCHIVE_ALIGN: usize = 16;
/// Bytes of the block header in front of the archive: the hand-over claim word and
/// type fingerprint, then magic, length, type tag and checksum.
pub(crate) const HEADER_LEN: u64 = 48;

/// Types that can be archived into shared memory and validated back: anything
/// that derives `rkyv::Archive` and `rkyv::Serialize` with rkyv's default
/// (bytecheck) settings. Implemented automatically; never implement it by hand.
///
/// [`deserialize`](ShmArchive::deserialize) additionally needs
/// `#[derive(rkyv::Deserialize)]`.
pub trait ShmArchivable:
    Archive<Archived: for<'v> CheckBytes<HighValidator<'v, rancor::Error>>>
    + for<'w, 'a> Serialize<HighSerializer<ShmWriter<'w>, ArenaHandle<'a>, rancor::Error>>
{
}

impl<T> ShmArchivable for T where
    T: Archive<Archived: for<'v> CheckBytes<HighValidator<'v, rancor::Error>>>
        + for<'w, 'a> Serialize<HighSerializer<ShmWriter<'w>, ArenaHandle<'a>, rancor::Error>>
{
}
