//! The rkyv writer that serialises a batch straight into its region.

use std::marker::PhantomData;
use std::ptr::NonNull;

use rkyv::rancor::{self, Source};
use rkyv::ser::{Positional, Writer};
use thiserror::Error;

use super::PipelineBatch;
use crate::alloc::Offset;
use crate::archive::{ArchiveError, ARCHIVE_ALIGN, HEADER_LEN};
use crate::segment::Segment;


/// The rkyv writer of a pipeline batch: copies each piece rkyv emits straight
/// to its place in the region (byte-wise atomic stores: the region is the
/// publisher's alone while it is written, see
/// [`Publisher::publish`](super::Publisher::publish), but a stale checked copy of
/// it may still be in flight); bytes past the region's capacity are only counted,
/// so one pass also measures the size.
#[derive(Debug)]
pub struct PipeWriter<'s> {
    /// Start of the region's archive bytes (`cap` of them, inside a mapping that
    /// outlives `'s`).
    region: NonNull<u8>,
    cap: usize,
    pos: usize,
    _seg: PhantomData<&'s Segment>,
}

impl Positional for PipeWriter<'_> {
    #[inline]
    fn pos(&self) -> usize {
        self.pos
    }
}

impl<E: Source> Writer<E> for PipeWriter<'_> {
    #[inline]
    fn write(&mut self, bytes: &[u8]) -> Result<(), E> {
        let end = self.pos.saturating_add(bytes.len());
        if end <= self.cap {
            let dst = self.region.as_ptr().wrapping_add(self.pos);
            // SAFETY:
            // - `pos + len <= cap`, and `region..region + cap` lies inside the live
            //   mapping (`serialize_into` got it from `ptr_at`, and the segment
            //   outlives `'s`), so `dst..dst + len` is valid for writes;
            // - `bytes` is process-local memory, so the ranges do not overlap;
            // - no process reads or writes these bytes meanwhile: `PipeWriter`s
            //   are made only by `serialize_into`, called by the one publisher on
            //   a region it claimed for a new sequence number. Claiming (see "Why
            //   no subscriber reads a region being written" in the module docs):
            //   Every + Block waits until every live subscriber's cursor has
            //   passed the region's last batch, so none holds or will read it;
            //   pinned modes clear the region's number, then check that no live
            //   subscriber pinned it (SeqCst Dekker: a subscriber pins, then looks
            //   for the number, so it either is seen pinning or does not find the
            //   region). No subscriber looks at the region again until the new
            //   number is published, after this write;
            // - byte-wise atomic stores, not a plain copy: a process may be copying
            //   these bytes out (a stale checked copy, `recv_copied`, a raw read) at
            //   this moment, and its atomic loads must not race plain stores (crate
            //   `typed` docs, "No plain stores").
            unsafe { crate::segment::store_bytes(dst, bytes) };
        }
        self.pos = end;
        Ok(())
    }
}

/// Serialises `value` into the region at `block` (archive bytes at
/// `block + HEADER_LEN`, `cap` of them); returns the archive's length, which
/// exceeds `cap` if it did not fit (then the region holds nothing usable).
pub(super) fn serialize_into<T: PipelineBatch>(
    seg: &Segment,
    block: Offset,
    cap: usize,
    value: &T,
) -> Result<usize, ArchiveError> {
    let region = seg
        .ptr_at(block.get() + HEADER_LEN, cap as u64, ARCHIVE_ALIGN)
        .ok_or(PipelineErrorInner::OutsideMapping)
        .map_err(|e| ArchiveError::Serialize {
            type_name: std::any::type_name::<T>(),
            reason: e.to_string(),
        })?;
    let w = PipeWriter {
        region,
        cap,
        pos: 0,
        _seg: PhantomData,
    };
    let w = rkyv::api::high::to_bytes_in::<_, rancor::Error>(value, w).map_err(|e| {
        ArchiveError::Serialize {
            type_name: std::any::type_name::<T>(),
            reason: e.to_string(),
        }
    })?;
    std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
    Ok(w.pos)
}

#[derive(Debug, Error)]
enum PipelineErrorInner {
    #[error("region outside the data segment")]
    OutsideMapping,
}

