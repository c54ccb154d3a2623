//! [rkyv] archives written into and read from shared memory (cargo feature `rkyv`).
//!
//! A value whose type derives [`rkyv::Archive`] and [`rkyv::Serialize`] is
//! serialized **straight into a shared allocation**; another process gets a
//! zero-copy `&Archived<T>` to it after validating it with bytecheck.
//!
//! | writer process | token sent across | reader process |
//! | --- | --- | --- |
//! | [`ShmArchive::new_in`] (any [`ShmFree`] allocator), then [`ShmArchive::into_token`] | [`ArchiveToken`], 8 bytes | [`ShmArchive::from_token`]: validates, takes ownership, frees on drop |
//! | [`Arena::archive`] (a [`BumpAllocator`] arena), then [`ArenaArchive::into_token`] | [`ArenaArchiveToken`], 16 bytes (offset + epoch) | [`ArenaArchiveReader::open`]: validates; any number of readers; the arena's `reset` frees |
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
//!    handle is consumed, and this module has no API that writes to an archive
//!    afterwards. (There is no `access_mut`.)
//! 3. The reader turns the token into a reader handle, which **validates once,
//!    right there** (header, bounds, checksum, bytecheck) and remembers it: every
//!    later [`access`](ShmArchive::access) is a bounds/epoch check and a pointer
//!    cast, no re-validation.
//!
//! The safe path is the short one: `from_token` / `open` validate, `access`
//! never hands out unvalidated bytes. Skipping validation takes an `unsafe`
//! call by name: [`ArchiveToken::access_unchecked`],
//! [`ArenaArchiveToken::access_unchecked`].
//!
//! What Rust cannot check across processes, and this module does not pretend
//! to (see the crate's safety model): a process that writes into the block
//! after the hand-over (raw [`ShmAllocator::write`] to its offset, a second
//! "owner" freeing it, or a bump `reset` in another process while a reference
//! from `access` is still held) breaks the protocol, and references handed out
//! earlier may then see bytes that were never validated. In this process the
//! borrow checker rules out the reset ([`BumpAllocator::reset`] takes
//! `&mut self`, and readers borrow the allocator); a raw `write` into an
//! archive's block is the one in-process way left to break the rule. What *is* checked at
//! every access: that the block is still allocated (free-list) and that the
//! arena was not reset since (bump: [`AccessError::Stale`] in every process).
//! Corrupt bytes present at hand-over, whatever their origin, are always an
//! [`ArchiveError`], never undefined behaviour.
//!
//! # Block format and token
//!
//! An archive block is `[header: 32 bytes][archive bytes]`, 16-aligned
//! (rkyv's own alignment for archive buffers), so the archive starts 16-aligned
//! in every process. The header holds a magic number, the archive length, a
//! type tag and an XXH3-64 checksum of the archive bytes. The token is just the
//! block's [`Offset`]; the length lives in the block, so an 8-byte token
//! suffices. Arena tokens add the bump epoch (16 bytes), exactly like
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

use std::marker::PhantomData;
use std::sync::atomic::{fence, AtomicBool, Ordering};

use rkyv::api::high::{HighDeserializer, HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor::{self, Source};
use rkyv::ser::allocator::ArenaHandle;
use rkyv::ser::{Positional, Writer};
use rkyv::{Archive, Archived, Deserialize, Serialize};
use thiserror::Error;

use crate::alloc::{BumpAllocator, Offset, ShmAllocator, ShmFree};
use crate::error::{AccessError, AllocError};
use crate::segment::Segment;
use crate::typed::{fingerprint, raw, Arena, ShmSafe};

/// The rkyv this module is built against (0.8), for `#[rkyv(crate = ...)]` or
/// to keep versions in step.
pub use rkyv;

/// Alignment of an archive block and of the archive inside it (rkyv's buffer alignment).
pub const ARCHIVE_ALIGN: usize = 16;
/// Bytes of the block header in front of the archive.
pub const HEADER_LEN: u64 = 32;
const HEADER_WORDS: usize = (HEADER_LEN / 8) as usize;
const MAGIC: u64 = u64::from_le_bytes(*b"SArkyv01");

/// An archive operation failed. Nothing in the segment changed, except that a
/// failed arena write may leave its block used until the next reset.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ArchiveError {
    /// The allocator refused the block.
    #[error(transparent)]
    Alloc(#[from] AllocError),
    /// The token does not resolve to live, in-bounds memory, or is stale
    /// ([`AccessError::Stale`]: the arena was reset since).
    #[error(transparent)]
    Access(#[from] AccessError),
    /// The value's `Serialize` implementation failed.
    #[error("serializing a {type_name} failed: {reason}")]
    Serialize {
        /// The type being archived.
        type_name: &'static str,
        /// rkyv's message.
        reason: String,
    },
    /// The token does not point at an archive block (bad magic, misaligned).
    #[error("no archive block at offset {offset}: {reason}")]
    BadHeader {
        /// The block offset from the token.
        offset: u64,
        /// What was wrong.
        reason: &'static str,
    },
    /// The block holds an archive of another type.
    #[error("archive at offset {offset} holds another type (tag {found:#018x}), not {expected} (tag {expected_tag:#018x})")]
    TypeMismatch {
        /// The block offset.
        offset: u64,
        /// The type asked for.
        expected: &'static str,
        /// Its tag.
        expected_tag: u64,
        /// The tag in the block.
        found: u64,
    },
    /// The archive bytes do not match the checksum written with them.
    #[error("archive at offset {offset} ({len} bytes) is corrupt: checksum {found:#018x}, header says {expected:#018x}")]
    Checksum {
        /// The block offset.
        offset: u64,
        /// Archive length from the header.
        len: u64,
        /// Checksum in the header.
        expected: u64,
        /// Checksum of the bytes.
        found: u64,
    },
    /// bytecheck rejected the archive: it is not a valid `Archived<T>`.
    #[error("archive at offset {offset} ({len} bytes) failed validation: {reason}")]
    Invalid {
        /// The block offset.
        offset: u64,
        /// Archive length from the header.
        len: u64,
        /// bytecheck's message.
        reason: String,
    },
    /// Deserializing into an owned value failed.
    #[error("deserializing a {type_name} failed: {reason}")]
    Deserialize {
        /// The type being rebuilt.
        type_name: &'static str,
        /// rkyv's message.
        reason: String,
    },
}

impl ArchiveError {
    /// Whether this is a stale-handle error (the arena was reset since the token was made).
    pub fn is_stale(&self) -> bool {
        matches!(self, ArchiveError::Access(AccessError::Stale { .. }))
    }
}

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

/// The rkyv [`Writer`] that serializes into a shared block: each piece rkyv
/// emits is copied to its final place in the segment (bounds-checked, no
/// unsafe). Bytes past the block's capacity are not written, only counted, so
/// one serialization pass also measures the size a block needs.
///
/// Created internally by [`ShmArchive::new_in`] and [`Arena::archive`]; it
/// appears in [`ShmArchivable`]'s bounds.
#[derive(Debug)]
pub struct ShmWriter<'s> {
    seg: &'s Segment,
    base: u64,
    cap: usize,
    pos: usize,
}

#[derive(Debug, Error)]
#[error("archive write at {offset}+{len} falls outside the mapping")]
struct OutsideMapping {
    offset: u64,
    len: usize,
}

#[derive(Debug, Error)]
#[error("archive larger than the address space")]
struct SizeOverflow;

impl Positional for ShmWriter<'_> {
    #[inline]
    fn pos(&self) -> usize {
        self.pos
    }
}

impl<E: Source> Writer<E> for ShmWriter<'_> {
    #[inline]
    fn write(&mut self, bytes: &[u8]) -> Result<(), E> {
        let end = self
            .pos
            .checked_add(bytes.len())
            .ok_or_else(|| E::new(SizeOverflow))?;
        if end <= self.cap {
            let offset = self.base + self.pos as u64;
            if !self.seg.write_bytes(offset, bytes) {
                return Err(E::new(OutsideMapping {
                    offset,
                    len: bytes.len(),
                }));
            }
        }
        self.pos = end;
        Ok(())
    }
}

/// The type tag stored in a block: the type name without module paths, and the
/// archived size and alignment.
fn type_tag<T: Archive>() -> u64 {
    let name = std::any::type_name::<T>();
    let bytes = name.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80;
    let mut h = fingerprint::START;
    // Hash the name piece by piece, leaving out every `path::` prefix. Pieces end
    // at ASCII punctuation, so every slice boundary is a char boundary.
    let (mut start, mut i) = (0, 0);
    while i < bytes.len() {
        if ident(bytes[i]) {
            i += 1;
        } else if bytes[i] == b':' && bytes.get(i + 1) == Some(&b':') {
            i += 2;
            start = i;
        } else {
            h = fingerprint::str(h, &name[start..=i]);
            i += 1;
            start = i;
        }
    }
    h = fingerprint::str(h, &name[start..]);
    h = fingerprint::u64(h, std::mem::size_of::<T::Archived>() as u64);
    fingerprint::u64(h, std::mem::align_of::<T::Archived>() as u64)
}

fn checksum(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

/// Block size for an archive of `len` bytes: header, at least one byte (so the
/// empty archive's range lies inside the block), rounded to the alignment.
fn block_size(len: usize) -> Result<usize, AllocError> {
    let too_large = AllocError::TooLarge {
        requested: u64::MAX,
        max: u64::MAX,
    };
    let n = len
        .max(1)
        .checked_add(HEADER_LEN as usize + ARCHIVE_ALIGN - 1)
        .ok_or(too_large)?;
    Ok(n & !(ARCHIVE_ALIGN - 1))
}

/// Serializes `value` into the block at `block` whose archive area holds `cap`
/// bytes. Returns the archive's length; if it exceeds `cap`, nothing past `cap`
/// was written and no header was written: the caller retries with a bigger block.
/// With `cap == 0` this only measures.
fn serialize_into<T: ShmArchivable>(
    seg: &Segment,
    block: Offset,
    cap: usize,
    value: &T,
) -> Result<usize, ArchiveError> {
    let writer = ShmWriter {
        seg,
        base: block.get() + HEADER_LEN,
        cap,
        pos: 0,
    };
    let writer = rkyv::api::high::to_bytes_in::<_, rancor::Error>(value, writer).map_err(|e| {
        ArchiveError::Serialize {
            type_name: std::any::type_name::<T>(),
            reason: e.to_string(),
        }
    })?;
    Ok(writer.pos)
}

/// Writes the header of a block whose `len` archive bytes are in place.
fn seal<T: Archive, A: ShmAllocator + ?Sized>(
    alloc: &A,
    block: Offset,
    len: usize,
) -> Result<(), ArchiveError> {
    let data = raw::slice_at::<u8, A>(alloc, Offset::new(block.get() + HEADER_LEN), len)?;
    let header = [MAGIC, len as u64, type_tag::<T>(), checksum(data)];
    raw::write_fresh::<u64, A>(alloc, block, header.into_iter())?;
    Ok(())
}

/// What a validated (or trusted) block resolves to: its archive range.
#[derive(Debug, Clone, Copy)]
struct Span {
    block: Offset,
    len: usize,
}

impl Span {
    fn data(&self) -> Offset {
        Offset::new(self.block.get() + HEADER_LEN)
    }

    /// The archive bytes, after checking that they are still inside one live block.
    fn bytes<'a, A: ShmAllocator + ?Sized>(&self, alloc: &'a A) -> Result<&'a [u8], AccessError> {
        raw::slice_at::<u8, A>(alloc, self.data(), self.len)
    }

    /// Reads and checks the header at `block`: magic, type tag, and that the
    /// archive it announces lies inside one live block. Does not look at the archive.
    fn read<T: Archive, A: ShmAllocator + ?Sized>(
        alloc: &A,
        block: Offset,
    ) -> Result<(Span, u64, &[u8]), ArchiveError> {
        if block.get() % ARCHIVE_ALIGN as u64 != 0 {
            return Err(ArchiveError::BadHeader {
                offset: block.get(),
                reason: "offset is not 16-aligned",
            });
        }
        // Copy the header out: another process may scribble on it, we use only this copy.
        let mut h = [0u64; HEADER_WORDS];
        h.copy_from_slice(raw::slice_at::<u64, A>(alloc, block, HEADER_WORDS)?);
        let [magic, len, tag, sum] = h;
        if magic != MAGIC {
            return Err(ArchiveError::BadHeader {
                offset: block.get(),
                reason: "bad magic",
            });
        }
        let expected_tag = type_tag::<T>();
        if tag != expected_tag {
            return Err(ArchiveError::TypeMismatch {
                offset: block.get(),
                expected: std::any::type_name::<T>(),
                expected_tag,
                found: tag,
            });
        }
        let len = usize::try_from(len).map_err(|_| AccessError::NotAllocated {
            offset: block.get() + HEADER_LEN,
            len,
        })?;
        let span = Span { block, len };
        let bytes = span.bytes(alloc)?;
        Ok((span, sum, bytes))
    }

    /// Full validation: checksum, then bytecheck.
    fn validate<T: ShmArchivable>(&self, bytes: &[u8], sum: u64) -> Result<(), ArchiveError> {
        let found = checksum(bytes);
        if found != sum {
            return Err(ArchiveError::Checksum {
                offset: self.block.get(),
                len: self.len as u64,
                expected: sum,
                found,
            });
        }
        self.check_bytes::<T>(bytes)
    }

    /// bytecheck only (for a block whose checksum this process wrote itself or checked).
    fn check_bytes<T: ShmArchivable>(&self, bytes: &[u8]) -> Result<(), ArchiveError> {
        rkyv::api::high::access::<T::Archived, rancor::Error>(bytes)
            .map(|_| ())
            .map_err(|e| ArchiveError::Invalid {
                offset: self.block.get(),
                len: self.len as u64,
                reason: e.to_string(),
            })
    }
}

/// The archived value in `bytes`, which this process validated as an `Archived<T>`.
///
/// # Safety
/// `bytes` passed [`Span::check_bytes`] for `T` (in this process) and has not
/// been written since. The module docs give the protocol that keeps it so.
unsafe fn archived_unchecked<T: Archive>(bytes: &[u8]) -> &Archived<T> {
    // SAFETY:
    // - the caller guarantees that bytecheck accepted exactly these bytes as a
    //   `T::Archived` at rkyv's default root position, which is what
    //   `access_unchecked` requires;
    // - and that they did not change since (hand-over protocol; the block is
    //   still live / the epoch unchanged, which every caller re-checks just before).
    unsafe { rkyv::api::access_unchecked::<T::Archived>(bytes) }
}

fn nondeterministic<T>(measured: usize) -> ArchiveError {
    ArchiveError::Serialize {
        type_name: std::any::type_name::<T>(),
        reason: format!(
            "serialization is not deterministic: measured {measured} bytes, then needed more"
        ),
    }
}

fn deserialize_archived<T>(archived: &Archived<T>) -> Result<T, ArchiveError>
where
    T: Archive,
    Archived<T>: Deserialize<T, HighDeserializer<rancor::Error>>,
{
    rkyv::deserialize::<T, rancor::Error>(archived).map_err(|e| ArchiveError::Deserialize {
        type_name: std::any::type_name::<T>(),
        reason: e.to_string(),
    })
}

// ---------------------------------------------------------------------------
// Free-list archives: one owner at a time.
// ---------------------------------------------------------------------------

/// An rkyv archive in a shared block that this handle owns: freed when it drops.
///
/// The writer creates it with [`new_in`](ShmArchive::new_in), gives it away
/// with [`into_token`](ShmArchive::into_token) (8 bytes to send to another
/// process), and the reader takes ownership with
/// [`from_token`](ShmArchive::from_token), which validates the archive once.
/// After that, [`access`](ShmArchive::access) is a bounds check and a pointer
/// cast: zero-copy, no re-validation. See the [module docs](self) for the rule.
///
/// The handle holds the allocator it was validated against, so it cannot be
/// used with another segment by mistake.
///
/// ```
/// use shared_allocator::prelude::*;
/// use shared_allocator::archive::{ArchiveToken, ShmArchive};
///
/// #[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq)]
/// struct Order { id: u64, item: String, qty: Vec<u32> }
///
/// # let name = format!("doc-archive-{}", std::process::id());
/// # let _cleanup = shared_allocator::segment::UnlinkGuard::new(&name);
/// let alloc = FreeListAllocator::create(&name, 1 << 20)?;
/// let order = Order { id: 7, item: "bolts".into(), qty: vec![1, 2, 3] };
///
/// // Writer: serialize straight into shared memory, give the archive away.
/// let token = ShmArchive::new_in(&alloc, &order)?.into_token();
/// let raw: u64 = token.to_raw(); // send these 8 bytes to the reader
///
/// // Reader (another process; here the same one, through its own mapping):
/// let reader_alloc = FreeListAllocator::open(&name)?;
/// let archive = ShmArchive::<Order, _>::from_token(&reader_alloc, ArchiveToken::from_raw(raw))?;
/// let archived = archive.access()?; // validated once, at from_token
/// assert_eq!(archived.item.as_str(), "bolts");
/// assert_eq!(archived.qty[2].to_native(), 3);
/// assert_eq!(archive.deserialize()?, order);
/// drop(archive); // the reader owns it now: frees the block
/// assert_eq!(alloc.stats().live_blocks, Some(0));
/// # alloc.unlink()?;
/// # Ok::<(), shared_allocator::Error>(())
/// ```
pub struct ShmArchive<'a, T: ShmArchivable, A: ShmFree> {
    alloc: &'a A,
    span: Span,
    validated: AtomicBool,
    _type: PhantomData<fn() -> T>,
}

impl<'a, T: ShmArchivable, A: ShmFree> ShmArchive<'a, T, A> {
    /// Serializes `value` into a new block of `alloc`, sized exactly: one pass
    /// measures, the second writes in place (see the [module docs](self) for
    /// this trade-off).
    ///
    /// # Errors
    /// [`ArchiveError::Alloc`] if the allocator refuses, [`ArchiveError::Serialize`]
    /// if the value's `Serialize` fails. Nothing is left allocated on error.
    pub fn new_in(alloc: &'a A, value: &T) -> Result<Self, ArchiveError> {
        let len = serialize_into(alloc.segment(), Offset::NULL, 0, value)?;
        Self::write_exact(alloc, value, len)
    }

    /// Serializes `value` in one pass into a new block with room for `capacity`
    /// archive bytes. If the archive turns out larger, that block is freed and
    /// a second pass writes into a block of the exact size. A block larger than
    /// needed keeps its size until freed.
    ///
    /// # Errors
    /// As [`new_in`](ShmArchive::new_in).
    pub fn new_in_with_capacity(
        alloc: &'a A,
        value: &T,
        capacity: usize,
    ) -> Result<Self, ArchiveError> {
        match Self::fill(alloc, capacity, value)? {
            Ok(me) => Ok(me),
            // The first pass counted the exact size past the end of the block.
            Err(len) => Self::write_exact(alloc, value, len),
        }
    }

    fn write_exact(alloc: &'a A, value: &T, len: usize) -> Result<Self, ArchiveError> {
        Self::fill(alloc, len, value)?.map_err(|_| nondeterministic::<T>(len))
    }

    /// Allocates a block with room for `cap` archive bytes, serializes into it
    /// and seals it. `Ok(Err(len))` if the archive (of `len` bytes) did not fit;
    /// the block is freed then, and on error.
    fn fill(alloc: &'a A, cap: usize, value: &T) -> Result<Result<Self, usize>, ArchiveError> {
        let block = alloc.allocate_aligned(block_size(cap)?, ARCHIVE_ALIGN)?;
        let sealed = serialize_into(alloc.segment(), block, cap, value).and_then(|len| {
            if len <= cap {
                seal::<T, A>(alloc, block, len)?;
            }
            Ok(len)
        });
        match sealed {
            Ok(len) if len <= cap => Ok(Ok(ShmArchive {
                alloc,
                span: Span { block, len },
                validated: AtomicBool::new(false),
                _type: PhantomData,
            })),
            Ok(len) => {
                let _ = alloc.free(block);
                Ok(Err(len))
            }
            Err(e) => {
                let _ = alloc.free(block);
                Err(e)
            }
        }
    }

    /// Takes ownership of the archive at `token` (given away by another process
    /// with [`into_token`](ShmArchive::into_token)) and **validates it now**:
    /// header, bounds, checksum and bytecheck. Every later
    /// [`access`](ShmArchive::access) reuses this validation.
    ///
    /// Taking the same token twice is a bug (two owners), not undefined
    /// behaviour: the second free is refused, and the first owner's drop makes
    /// the other's accesses fail.
    ///
    /// # Errors
    /// [`ArchiveError::Access`] (null, out of bounds, not a live block),
    /// [`ArchiveError::BadHeader`], [`ArchiveError::TypeMismatch`],
    /// [`ArchiveError::Checksum`], [`ArchiveError::Invalid`]. On error the block
    /// is not freed (it is not known to be an archive of ours).
    pub fn from_token(alloc: &'a A, token: ArchiveToken<T>) -> Result<Self, ArchiveError> {
        let (span, sum, bytes) = Span::read::<T, A>(alloc, token.offset())?;
        span.validate::<T>(bytes, sum)?;
        Ok(ShmArchive {
            alloc,
            span,
            validated: AtomicBool::new(true),
            _type: PhantomData,
        })
    }

    /// Gives the archive away: returns the token another process takes it with,
    /// and gives up this handle (and with it any access from this side).
    pub fn into_token(self) -> ArchiveToken<T> {
        let token = ArchiveToken::new(self.span.block);
        std::mem::forget(self);
        token
    }

    /// The archived value, zero-copy.
    ///
    /// Validated once per handle: at [`from_token`](ShmArchive::from_token), or
    /// on the first call for a handle this process wrote. Every call checks that
    /// the block is still allocated (cheap).
    ///
    /// # Errors
    /// [`ArchiveError::Access`] if the block was freed by someone else; on the
    /// first call of a writer's handle, the validation errors of `from_token`.
    pub fn access(&self) -> Result<&Archived<T>, ArchiveError> {
        let bytes = self.span.bytes(self.alloc)?;
        if !self.validated.load(Ordering::Acquire) {
            // This process wrote and checksummed the bytes; bytecheck proves
            // nobody broke them since.
            self.span.check_bytes::<T>(bytes)?;
            self.validated.store(true, Ordering::Release);
        }
        // SAFETY:
        // - `validated` is set only after `check_bytes` accepted this span's bytes
        //   (here or in `from_token`); `bytes` is that same span, re-resolved
        //   against the same allocator (the handle holds it);
        // - this handle owns the block (not freed before drop, `bytes` just
        //   re-checked it is live) and no API writes to an archive after it is
        //   written, so the bytes are the validated ones.
        Ok(unsafe { archived_unchecked::<T>(bytes) })
    }

    /// Deserializes an owned `T` from the archive.
    ///
    /// # Errors
    /// As [`access`](ShmArchive::access), or [`ArchiveError::Deserialize`].
    pub fn deserialize(&self) -> Result<T, ArchiveError>
    where
        Archived<T>: Deserialize<T, HighDeserializer<rancor::Error>>,
    {
        deserialize_archived::<T>(self.access()?)
    }

    /// Length of the archive in bytes (without the 32-byte block header).
    pub fn len(&self) -> usize {
        self.span.len
    }

    /// Whether the archive has no bytes (a zero-sized `T`).
    pub fn is_empty(&self) -> bool {
        self.span.len == 0
    }

    /// Offset of the block (what the token holds).
    pub fn offset(&self) -> Offset {
        self.span.block
    }

    /// The allocator the archive lives in.
    pub fn allocator(&self) -> &'a A {
        self.alloc
    }
}

impl<T: ShmArchivable, A: ShmFree> Drop for ShmArchive<'_, T, A> {
    fn drop(&mut self) {
        // A failure means someone else already freed it (a broken hand-over): nothing to do.
        let _ = self.alloc.free(self.span.block);
    }
}

impl<T: ShmArchivable, A: ShmFree> std::fmt::Debug for ShmArchive<'_, T, A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShmArchive")
            .field("type", &std::any::type_name::<T>())
            .field("offset", &self.span.block)
            .field("len", &self.span.len)
            .field("validated", &self.validated.load(Ordering::Relaxed))
            .finish()
    }
}

/// The 8-byte token of an archive in a free-list (or other [`ShmFree`]) allocator:
/// the block offset. The length, type tag and checksum are in the block.
///
/// Send [`to_raw`](ArchiveToken::to_raw) through any channel; rebuild with
/// [`from_raw`](ArchiveToken::from_raw). [`ShmSafe`], so it can also live in
/// shared memory. A forged or stale token gives an error, never a wild access.
#[repr(transparent)]
pub struct ArchiveToken<T> {
    offset: u64,
    _type: PhantomData<fn() -> T>,
}

impl<T> ArchiveToken<T> {
    fn new(offset: Offset) -> Self {
        ArchiveToken {
            offset: offset.get(),
            _type: PhantomData,
        }
    }

    /// Rebuilds a token from the number another process sent.
    pub const fn from_raw(raw: u64) -> Self {
        ArchiveToken {
            offset: raw,
            _type: PhantomData,
        }
    }

    /// The number to send to another process.
    pub const fn to_raw(self) -> u64 {
        self.offset
    }

    /// The block offset.
    pub const fn offset(self) -> Offset {
        Offset::new(self.offset)
    }
}

impl<T: ShmArchivable> ArchiveToken<T> {
    /// The archived value **without validation**, for trusted data: no checksum,
    /// no bytecheck, no ownership taken. The header (magic, type tag) and the
    /// bounds of the block are still checked.
    ///
    /// # Safety
    /// The caller guarantees that:
    /// - the block holds an archive of `T` written by this module (for example
    ///   by a trusted process with [`ShmArchive::new_in`]) and its bytes have not
    ///   been damaged since;
    /// - no process writes to or frees the block while the returned reference lives.
    ///
    /// # Errors
    /// [`ArchiveError::Access`], [`ArchiveError::BadHeader`], [`ArchiveError::TypeMismatch`].
    pub unsafe fn access_unchecked<A: ShmAllocator>(
        self,
        alloc: &A,
    ) -> Result<&Archived<T>, ArchiveError> {
        let (_, _, bytes) = Span::read::<T, A>(alloc, self.offset())?;
        // SAFETY:
        // - the caller guarantees these bytes are a valid archive of T (what
        //   `archived_unchecked` requires from bytecheck);
        // - and that nobody writes them while the reference lives.
        Ok(unsafe { archived_unchecked::<T>(bytes) })
    }
}

impl<T> Clone for ArchiveToken<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for ArchiveToken<T> {}
impl<T> PartialEq for ArchiveToken<T> {
    fn eq(&self, o: &Self) -> bool {
        self.offset == o.offset
    }
}
impl<T> Eq for ArchiveToken<T> {}
impl<T> std::fmt::Debug for ArchiveToken<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ArchiveToken<{}>({:#x})",
            std::any::type_name::<T>(),
            self.offset
        )
    }
}

// SAFETY: repr(transparent) over a u64 (the PhantomData is zero-sized): no padding,
// every bit pattern valid, no pointers (an offset), fixed layout, no Drop.
unsafe impl<T: 'static> ShmSafe for ArchiveToken<T> {
    const FINGERPRINT: u64 = fingerprint::primitive("ArchiveToken", 8, 8);
}

// ---------------------------------------------------------------------------
// Arena archives: epoch-checked, freed by reset.
// ---------------------------------------------------------------------------

impl<'b> Arena<'b> {
    /// Serializes `value` into this arena, sized exactly (two passes: see the
    /// [module docs](self)). The archive lives until the arena is reset; the
    /// returned handle borrows the arena, so this process cannot reset it while
    /// the handle lives.
    ///
    /// # Errors
    /// [`ArchiveError::Alloc`] when the bump allocator is full,
    /// [`ArchiveError::Serialize`] if the value's `Serialize` fails (the block
    /// stays used until the next reset).
    pub fn archive<T: ShmArchivable>(
        &self,
        value: &T,
    ) -> Result<ArenaArchive<'_, T>, ArchiveError> {
        let bump = self.allocator();
        let len = serialize_into(bump.segment(), Offset::NULL, 0, value)?;
        ArenaArchive::fill(bump, len, value)?.map_err(|_| nondeterministic::<T>(len))
    }

    /// Serializes `value` in one pass into a block with room for `capacity`
    /// archive bytes; if the archive is larger, a second pass writes into an
    /// exact block and the first block stays used until the next reset. Unused
    /// capacity also stays used until then.
    ///
    /// # Errors
    /// As [`archive`](Arena::archive).
    pub fn archive_with_capacity<T: ShmArchivable>(
        &self,
        value: &T,
        capacity: usize,
    ) -> Result<ArenaArchive<'_, T>, ArchiveError> {
        let bump = self.allocator();
        match ArenaArchive::fill(bump, capacity, value)? {
            Ok(a) => Ok(a),
            // The first pass counted the exact size past the end of the block.
            Err(len) => {
                ArenaArchive::fill(bump, len, value)?.map_err(|_| nondeterministic::<T>(len))
            }
        }
    }
}

/// An archive in an [`Arena`], as its writer holds it: borrows the arena (so
/// this process cannot reset it meanwhile) and carries the epoch it was written in.
///
/// Give it to other processes with [`into_token`](ArenaArchive::into_token);
/// each opens it with [`ArenaArchiveReader::open`]. After the arena's reset
/// (in any process) every handle and token of it is [`AccessError::Stale`].
///
/// ```
/// use shared_allocator::prelude::*;
/// use shared_allocator::archive::{ArenaArchiveReader, ArenaArchiveToken};
///
/// # let name = format!("doc-arena-archive-{}", std::process::id());
/// # let _cleanup = shared_allocator::segment::UnlinkGuard::new(&name);
/// let mut bump = BumpAllocator::create(&name, 1 << 20)?;
/// let arena = bump.arena();
/// let batch: Vec<String> = vec!["a".into(), "bc".into()];
/// let token = arena.archive(&batch)?.into_token();
/// let raw: [u64; 2] = token.to_raw(); // 16 bytes: offset and epoch
///
/// // A consumer process: open (validates once), then read zero-copy.
/// let consumer = BumpAllocator::open(&name)?;
/// let reader = ArenaArchiveReader::<Vec<String>>::open(&consumer, ArenaArchiveToken::from_raw(raw))?;
/// assert_eq!(reader.access()?[1].as_str(), "bc");
///
/// // The coordinator (here: a third mapping of the segment) ends the batch.
/// let mut coordinator = BumpAllocator::open(&name)?;
/// coordinator.reset();
/// assert!(reader.access().unwrap_err().is_stale());
/// # drop(arena);
/// # bump.unlink()?;
/// # Ok::<(), shared_allocator::Error>(())
/// ```
pub struct ArenaArchive<'a, T: ShmArchivable> {
    bump: &'a BumpAllocator,
    span: Span,
    epoch: u64,
    validated: AtomicBool,
    _type: PhantomData<fn() -> T>,
}

impl<'a, T: ShmArchivable> ArenaArchive<'a, T> {
    /// As [`ShmArchive::fill`]; a block that was too small stays used until the reset.
    fn fill(
        bump: &'a BumpAllocator,
        cap: usize,
        value: &T,
    ) -> Result<Result<Self, usize>, ArchiveError> {
        let (block, epoch) = bump.allocate_with_epoch(block_size(cap)?, ARCHIVE_ALIGN)?;
        let len = serialize_into(bump.segment(), block, cap, value)?;
        if len > cap {
            return Ok(Err(len));
        }
        seal::<T, BumpAllocator>(bump, block, len)?;
        Ok(Ok(ArenaArchive {
            bump,
            span: Span { block, len },
            epoch,
            validated: AtomicBool::new(false),
            _type: PhantomData,
        }))
    }

    /// The token for other processes (offset and epoch). Consumes the handle:
    /// the writer gives the archive up and the readers validate it.
    pub fn into_token(self) -> ArenaArchiveToken<T> {
        ArenaArchiveToken::new(self.span.block, self.epoch)
    }

    /// The archived value, zero-copy; validated on the first call (bytecheck).
    ///
    /// # Errors
    /// [`AccessError::Stale`] if any process reset the arena since; on the first
    /// call, [`ArchiveError::Invalid`] if the bytes were damaged.
    pub fn access(&self) -> Result<&Archived<T>, ArchiveError> {
        let bytes = checked_epoch_bytes(self.bump, self.span, self.epoch)?;
        if !self.validated.load(Ordering::Acquire) {
            self.span.check_bytes::<T>(bytes)?;
            self.validated.store(true, Ordering::Release);
        }
        // SAFETY:
        // - `validated` is set only after `check_bytes` accepted this span's bytes
        //   in this bump allocator (the handle holds it);
        // - the epoch is unchanged (just checked), so the block was not released
        //   and reused, and no API writes an archive after it is written.
        Ok(unsafe { archived_unchecked::<T>(bytes) })
    }

    /// Deserializes an owned `T`; the epoch is re-checked afterwards, so the
    /// value never mixes bytes of a later epoch.
    ///
    /// # Errors
    /// As [`access`](ArenaArchive::access), or [`ArchiveError::Deserialize`].
    pub fn deserialize(&self) -> Result<T, ArchiveError>
    where
        Archived<T>: Deserialize<T, HighDeserializer<rancor::Error>>,
    {
        deserialize_in_epoch(self.bump, self.epoch, self.access()?)
    }

    /// Length of the archive in bytes.
    pub fn len(&self) -> usize {
        self.span.len
    }

    /// Whether the archive has no bytes (a zero-sized `T`).
    pub fn is_empty(&self) -> bool {
        self.span.len == 0
    }

    /// The epoch the archive belongs to.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }
}

impl<T: ShmArchivable> std::fmt::Debug for ArenaArchive<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        debug_arena::<T>(f, "ArenaArchive", self.span, self.epoch)
    }
}

/// Deserializes `archived` (of an arena archive of `epoch`), then re-checks the
/// epoch, so the value never mixes bytes of a later epoch.
fn deserialize_in_epoch<T: ShmArchivable>(
    bump: &BumpAllocator,
    epoch: u64,
    archived: &Archived<T>,
) -> Result<T, ArchiveError>
where
    Archived<T>: Deserialize<T, HighDeserializer<rancor::Error>>,
{
    let v = deserialize_archived::<T>(archived)?;
    check_epoch(bump, epoch)?;
    Ok(v)
}

fn debug_arena<T>(
    f: &mut std::fmt::Formatter<'_>,
    name: &str,
    span: Span,
    epoch: u64,
) -> std::fmt::Result {
    f.debug_struct(name)
        .field("type", &std::any::type_name::<T>())
        .field("offset", &span.block)
        .field("len", &span.len)
        .field("epoch", &epoch)
        .finish()
}

fn check_epoch(bump: &BumpAllocator, epoch: u64) -> Result<(), AccessError> {
    let now = bump.epoch();
    if now != epoch {
        return Err(AccessError::Stale {
            handle_epoch: epoch,
            current_epoch: now,
        });
    }
    Ok(())
}

fn checked_epoch_bytes(bump: &BumpAllocator, span: Span, epoch: u64) -> Result<&[u8], AccessError> {
    check_epoch(bump, epoch)?;
    span.bytes(bump)
}

/// A validated, read-only view of an arena archive, in any process. Any number
/// of readers may view one archive; the arena's reset releases it.
///
/// [`open`](ArenaArchiveReader::open) validates once; [`access`](ArenaArchiveReader::access)
/// afterwards only checks the epoch (one atomic load) and the bounds. An example
/// is on [`ArenaArchive`].
pub struct ArenaArchiveReader<'a, T: ShmArchivable> {
    bump: &'a BumpAllocator,
    span: Span,
    epoch: u64,
    _type: PhantomData<fn() -> T>,
}

impl<'a, T: ShmArchivable> ArenaArchiveReader<'a, T> {
    /// Opens the archive at `token` and **validates it now**: epoch, header,
    /// bounds, checksum, bytecheck, and the epoch once more afterwards (so the
    /// bytes validated all belong to the token's epoch).
    ///
    /// # Errors
    /// [`AccessError::Stale`] (as [`ArchiveError::Access`]) if the arena was reset
    /// since the token was made; otherwise as [`ShmArchive::from_token`].
    pub fn open(
        bump: &'a BumpAllocator,
        token: ArenaArchiveToken<T>,
    ) -> Result<Self, ArchiveError> {
        check_epoch(bump, token.epoch)?;
        let (span, sum, bytes) = Span::read::<T, BumpAllocator>(bump, token.offset())?;
        span.validate::<T>(bytes, sum)?;
        fence(Ordering::Acquire);
        check_epoch(bump, token.epoch)?;
        Ok(ArenaArchiveReader {
            bump,
            span,
            epoch: token.epoch,
            _type: PhantomData,
        })
    }

    /// The archived value, zero-copy, without re-validation.
    ///
    /// # Errors
    /// [`AccessError::Stale`] if any process reset the arena since.
    #[inline]
    pub fn access(&self) -> Result<&Archived<T>, ArchiveError> {
        let bytes = checked_epoch_bytes(self.bump, self.span, self.epoch)?;
        // SAFETY:
        // - `open` (the only constructor) ran `check_bytes` on this span's bytes in
        //   this bump allocator (the reader holds it) and checked the epoch after;
        // - the epoch is unchanged (just checked), so the block was not released and
        //   reused, and no API writes an archive after it is written.
        Ok(unsafe { archived_unchecked::<T>(bytes) })
    }

    /// Deserializes an owned `T`; the epoch is re-checked afterwards.
    ///
    /// # Errors
    /// As [`access`](ArenaArchiveReader::access), or [`ArchiveError::Deserialize`].
    pub fn deserialize(&self) -> Result<T, ArchiveError>
    where
        Archived<T>: Deserialize<T, HighDeserializer<rancor::Error>>,
    {
        deserialize_in_epoch(self.bump, self.epoch, self.access()?)
    }

    /// Length of the archive in bytes.
    pub fn len(&self) -> usize {
        self.span.len
    }

    /// Whether the archive has no bytes (a zero-sized `T`).
    pub fn is_empty(&self) -> bool {
        self.span.len == 0
    }

    /// The epoch the archive belongs to.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }
}

impl<T: ShmArchivable> std::fmt::Debug for ArenaArchiveReader<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        debug_arena::<T>(f, "ArenaArchiveReader", self.span, self.epoch)
    }
}

/// The 16-byte token of an arena archive: block offset and bump epoch. The
/// epoch is what makes it [`Stale`](AccessError::Stale) after a reset in every
/// process, as for [`ArenaPtr`](crate::ArenaPtr); 8 bytes could not carry both
/// a full offset and the epoch.
#[repr(C)]
pub struct ArenaArchiveToken<T> {
    offset: u64,
    epoch: u64,
    _type: PhantomData<fn() -> T>,
}

impl<T> ArenaArchiveToken<T> {
    fn new(offset: Offset, epoch: u64) -> Self {
        ArenaArchiveToken {
            offset: offset.get(),
            epoch,
            _type: PhantomData,
        }
    }

    /// Rebuilds a token from the two numbers another process sent (`[offset, epoch]`).
    pub const fn from_raw(raw: [u64; 2]) -> Self {
        ArenaArchiveToken {
            offset: raw[0],
            epoch: raw[1],
            _type: PhantomData,
        }
    }

    /// The two numbers to send to another process: `[offset, epoch]`.
    pub const fn to_raw(self) -> [u64; 2] {
        [self.offset, self.epoch]
    }

    /// The block offset.
    pub const fn offset(self) -> Offset {
        Offset::new(self.offset)
    }

    /// The epoch the archive belongs to.
    pub const fn epoch(self) -> u64 {
        self.epoch
    }
}

impl<T: ShmArchivable> ArenaArchiveToken<T> {
    /// The archived value **without validation**, for trusted data: no checksum,
    /// no bytecheck. The epoch, the header (magic, type tag) and the bounds are
    /// still checked.
    ///
    /// # Safety
    /// The caller guarantees that:
    /// - the block holds an archive of `T` written by this module in this epoch
    ///   (by a trusted process) and its bytes have not been damaged since;
    /// - no process resets the arena or writes to the block while the returned
    ///   reference lives.
    ///
    /// # Errors
    /// [`AccessError::Stale`], [`ArchiveError::BadHeader`], [`ArchiveError::TypeMismatch`],
    /// bounds errors.
    pub unsafe fn access_unchecked(
        self,
        bump: &BumpAllocator,
    ) -> Result<&Archived<T>, ArchiveError> {
        check_epoch(bump, self.epoch)?;
        let (_, _, bytes) = Span::read::<T, BumpAllocator>(bump, self.offset())?;
        // SAFETY:
        // - the caller guarantees these bytes are a valid archive of T (what
        //   `archived_unchecked` requires from bytecheck);
        // - and that nobody resets the arena or writes them while the reference lives.
        Ok(unsafe { archived_unchecked::<T>(bytes) })
    }
}

impl<T> Clone for ArenaArchiveToken<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for ArenaArchiveToken<T> {}
impl<T> PartialEq for ArenaArchiveToken<T> {
    fn eq(&self, o: &Self) -> bool {
        (self.offset, self.epoch) == (o.offset, o.epoch)
    }
}
impl<T> Eq for ArenaArchiveToken<T> {}
impl<T> std::fmt::Debug for ArenaArchiveToken<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ArenaArchiveToken<{}>({:#x}, epoch {})",
            std::any::type_name::<T>(),
            self.offset,
            self.epoch
        )
    }
}

// SAFETY: repr(C) of two u64 and a zero-sized PhantomData: no padding, every bit
// pattern valid, no pointers (offset and epoch are numbers), fixed layout, no Drop.
unsafe impl<T: 'static> ShmSafe for ArenaArchiveToken<T> {
    const FINGERPRINT: u64 = fingerprint::primitive("ArenaArchiveToken", 16, 8);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_tag_ignores_module_paths_but_not_names() {
        mod a {
            #[derive(rkyv::Archive, rkyv::Serialize)]
            pub struct Record(pub u32);
        }
        mod b {
            #[derive(rkyv::Archive, rkyv::Serialize)]
            pub struct Record(pub u32);
            #[derive(rkyv::Archive, rkyv::Serialize)]
            pub struct Other(pub u32);
        }
        assert_eq!(type_tag::<Vec<a::Record>>(), type_tag::<Vec<b::Record>>());
        assert_ne!(type_tag::<a::Record>(), type_tag::<b::Other>());
        assert_ne!(type_tag::<u32>(), type_tag::<i32>());
        assert_ne!(type_tag::<Vec<u32>>(), type_tag::<Option<u32>>());
    }

    #[test]
    fn block_size_rounds_and_has_room() {
        assert_eq!(block_size(0).unwrap(), 48);
        assert_eq!(block_size(1).unwrap(), 48);
        assert_eq!(block_size(16).unwrap(), 48);
        assert_eq!(block_size(17).unwrap(), 64);
        assert!(block_size(usize::MAX).is_err());
    }
}
