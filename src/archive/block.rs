//! A sealed archive block as a reader sees it: header checks, validation, and the
//! one unsafe step from validated bytes to `&Archived<T>`.

use rkyv::api::high::HighDeserializer;
use rkyv::rancor;
use rkyv::util::AlignedVec;
use rkyv::{Archive, Archived, Deserialize};

use super::writer::{checksum, type_tag, Binding, MAGIC, SEAL_OFFSET, SEAL_WORDS};
use super::{ArchiveError, ShmArchivable, ARCHIVE_ALIGN, HEADER_LEN};
use crate::alloc::{Offset, ShmAllocator};
use crate::error::AccessError;
use crate::typed::raw;

/// What a validated (or trusted) block resolves to: its archive range.
#[derive(Debug, Clone, Copy)]
pub(super) struct Span {
    pub(super) block: Offset,
    pub(super) len: usize,
}

impl Span {
    pub(super) fn data(&self) -> Offset {
        Offset::new(self.block.get() + HEADER_LEN)
    }

    /// The archive bytes, after checking that they are still inside one live block.
    pub(super) fn bytes<'a, A: ShmAllocator + ?Sized>(
        &self,
        alloc: &'a A,
    ) -> Result<&'a [u8], AccessError> {
        raw::slice_at::<u8, A>(alloc, self.data(), self.len)
    }

    /// Reads and checks the header at `block`: magic, type tag, and that the
    /// archive it announces lies inside one live block. Does not look at the archive.
    pub(super) fn read<T: Archive, A: ShmAllocator + ?Sized>(
        alloc: &A,
        block: Offset,
    ) -> Result<(Span, u64, &[u8]), ArchiveError> {
        let (span, sum) = Self::read_seal::<T, A>(alloc, block)?;
        let bytes = span.bytes(alloc)?;
        Ok((span, sum, bytes))
    }

    /// Reads and checks the header at `block` (magic, type tag, length inside one
    /// live block); returns the span and the checksum from the header.
    pub(super) fn read_seal<T: Archive, A: ShmAllocator + ?Sized>(
        alloc: &A,
        block: Offset,
    ) -> Result<(Span, u64), ArchiveError> {
        if block.get() % ARCHIVE_ALIGN as u64 != 0 {
            return Err(ArchiveError::BadHeader {
                offset: block.get(),
                reason: "offset is not 16-aligned",
            });
        }
        // Copy the header out (byte-wise atomic): another process may scribble on
        // it, we use only this copy.
        let mut h = Vec::with_capacity(SEAL_WORDS);
        let seal = Offset::new(block.get() + SEAL_OFFSET);
        raw::copy_out::<u64, A>(alloc, seal, SEAL_WORDS, &mut h)?;
        let [magic, len, tag, sum] = [h[0], h[1], h[2], h[3]];
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
        alloc.check_range(span.data(), len as u64)?;
        Ok((span, sum))
    }

    /// The checked copy path: copies the archive at `block` out of shared memory
    /// (byte-wise atomic loads, the length checked against the live block before
    /// the local buffer is sized), then checks the checksum and bytecheck **on the
    /// private copy**. Whatever other processes write meanwhile, the result is an
    /// error or a valid archive that no one else can change.
    pub(super) fn copy_validated<T: ShmArchivable, A: ShmAllocator + ?Sized>(
        alloc: &A,
        block: Offset,
        binding: Binding,
    ) -> Result<AlignedVec<ARCHIVE_ALIGN>, ArchiveError> {
        let (span, sum) = Self::read_seal::<T, A>(alloc, block)?;
        let mut copy = AlignedVec::<ARCHIVE_ALIGN>::with_capacity(span.len);
        copy.resize(span.len, 0);
        raw::copy_bytes_out(alloc, span.data(), &mut copy)?;
        span.validate::<T, A>(alloc, binding, &copy, sum)?;
        Ok(copy)
    }

    /// Full validation: checksum (bound as `binding` says), then bytecheck.
    pub(super) fn validate<T: ShmArchivable, A: ShmAllocator + ?Sized>(
        &self,
        alloc: &A,
        binding: Binding,
        bytes: &[u8],
        sum: u64,
    ) -> Result<(), ArchiveError> {
        let found = checksum(alloc.segment(), binding, self.block, type_tag::<T>(), bytes);
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
    pub(super) fn check_bytes<T: ShmArchivable>(&self, bytes: &[u8]) -> Result<(), ArchiveError> {
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
pub(super) unsafe fn archived_unchecked<T: Archive>(bytes: &[u8]) -> &Archived<T> {
    // SAFETY:
    // - the caller guarantees that bytecheck accepted exactly these bytes as a
    //   `T::Archived` at rkyv's default root position, which is what
    //   `access_unchecked` requires;
    // - and that they did not change since (hand-over protocol; the block is
    //   still live / the epoch unchanged, which every caller re-checks just before).
    unsafe { rkyv::api::access_unchecked::<T::Archived>(bytes) }
}

pub(super) fn deserialize_archived<T>(archived: &Archived<T>) -> Result<T, ArchiveError>
where
    T: Archive,
    Archived<T>: Deserialize<T, HighDeserializer<rancor::Error>>,
{
    rkyv::deserialize::<T, rancor::Error>(archived).map_err(|e| ArchiveError::Deserialize {
        type_name: std::any::type_name::<T>(),
        reason: e.to_string(),
    })
}

/// Deserializes an owned `T` from a private, validated copy of the archive at
/// `block` (see [`Span::copy_validated`]).
pub(super) fn deserialize_copy<T, A>(
    alloc: &A,
    block: Offset,
    binding: Binding,
) -> Result<T, ArchiveError>
where
    T: ShmArchivable,
    A: ShmAllocator + ?Sized,
    Archived<T>: Deserialize<T, HighDeserializer<rancor::Error>>,
{
    let copy = Span::copy_validated::<T, A>(alloc, block, binding)?;
    // The copy is private and passed bytecheck just now.
    let archived = rkyv::api::high::access::<T::Archived, rancor::Error>(&copy).map_err(|e| {
        ArchiveError::Invalid {
            offset: block.get(),
            len: copy.len() as u64,
            reason: e.to_string(),
        }
    })?;
    deserialize_archived::<T>(archived)
}
