//! Serializing straight into a shared block: the rkyv [`Writer`], sizing, the type
//! tag and the sealed header.

use rkyv::rancor::{self, Source};
use rkyv::ser::{Positional, Writer};
use rkyv::Archive;
use thiserror::Error;

use super::{ArchiveError, ShmArchivable, ARCHIVE_ALIGN, HEADER_LEN};
use crate::alloc::{Offset, ShmAllocator};
use crate::error::AllocError;
use crate::segment::Segment;
use crate::typed::{fingerprint, raw};

/// Magic number of an archive block (after the owner header).
pub(super) const MAGIC: u64 = u64::from_le_bytes(*b"SArkyv02");
/// Offset of the magic, length, tag and checksum words in the block.
pub(super) const SEAL_OFFSET: u64 = 16;
pub(super) const SEAL_WORDS: usize = 4;

/// The rkyv [`Writer`] that serializes into a shared block: each piece rkyv
/// emits is copied to its final place in the segment (bounds-checked, no
/// unsafe). Bytes past the block's capacity are not written, only counted, so
/// one serialization pass also measures the size a block needs.
///
/// Created internally by [`ShmArchive::new_in`](super::ShmArchive::new_in) and [`Arena::archive`](crate::Arena::archive); it
/// appears in [`ShmArchivable`](super::ShmArchivable)'s bounds.
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
pub(super) fn type_tag<T: Archive>() -> u64 {
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

/// What an archive's checksum word binds its bytes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Binding {
    /// An owned archive ([`ShmArchive`](super::ShmArchive)): the plain checksum of
    /// the bytes. Its authority is the block start and owner header (tokens name
    /// checked block starts), so the checksum only detects damage.
    Owned,
    /// An arena archive of bump `epoch`: a keyed hash of the block offset, the
    /// epoch, the length, the type tag and the bytes' checksum, under the segment's
    /// secret key. Only this crate's `seal` can produce one, so an archive image
    /// left in an arena chunk from an earlier epoch, copied elsewhere, or built by
    /// the caller does not validate for a token it was not sealed for.
    Arena {
        /// The bump epoch the archive was written in.
        epoch: u64,
    },
}

/// The checksum word of an archive of type tag `tag` whose bytes are `bytes`,
/// in a block at `block` of `seg`, bound as `binding` says.
pub(super) fn checksum(
    seg: &Segment,
    binding: Binding,
    block: Offset,
    tag: u64,
    bytes: &[u8],
) -> u64 {
    let sum = xxhash_rust::xxh3::xxh3_64(bytes);
    match binding {
        Binding::Owned => sum,
        Binding::Arena { epoch } => {
            use std::hash::Hasher;
            let [k0, k1] = seg.archive_key();
            // SipHash-2-4 (std's `SipHasher`, deprecated only in favour of
            // `DefaultHasher`, whose algorithm is unspecified): a keyed PRF, so the
            // word cannot be computed without the key.
            #[allow(deprecated)]
            let mut h = std::hash::SipHasher::new_with_keys(k0, k1);
            for w in [block.get(), epoch, bytes.len() as u64, tag, sum] {
                h.write_u64(w);
            }
            h.finish()
        }
    }
}

/// Block size for an archive of `len` bytes: header, at least one byte (so the
/// empty archive's range lies inside the block), rounded to the alignment.
pub(super) fn block_size(len: usize) -> Result<usize, AllocError> {
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
pub(super) fn serialize_into<T: ShmArchivable>(
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
pub(super) fn seal<T: Archive, A: ShmAllocator + ?Sized>(
    alloc: &A,
    block: Offset,
    len: usize,
    binding: Binding,
) -> Result<(), ArchiveError> {
    let data = raw::slice_at::<u8, A>(alloc, Offset::new(block.get() + HEADER_LEN), len)?;
    let tag = type_tag::<T>();
    let sum = checksum(alloc.segment(), binding, block, tag, data);
    let header = [MAGIC, len as u64, tag, sum];
    raw::write_fresh::<u64, A>(
        alloc,
        Offset::new(block.get() + SEAL_OFFSET),
        header.into_iter(),
    )?;
    crate::typed::token::OwnedHeader::init(alloc, block, type_tag::<T>())?;
    Ok(())
}

pub(super) fn nondeterministic<T>(measured: usize) -> ArchiveError {
    ArchiveError::Serialize {
        type_name: std::any::type_name::<T>(),
        reason: format!(
            "serialization is not deterministic: measured {measured} bytes, then needed more"
        ),
    }
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
        assert_eq!(block_size(0).unwrap(), 64);
        assert_eq!(block_size(1).unwrap(), 64);
        assert_eq!(block_size(16).unwrap(), 64);
        assert_eq!(block_size(17).unwrap(), 80);
        assert!(block_size(usize::MAX).is_err());
    }
}
