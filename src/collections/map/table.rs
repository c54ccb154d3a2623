//! One shard's table: a block holding a [`PINNED`] header, the shard's intent
//! record (raw key, old value, new value) and `cap` slots of
//! `[tag: u64][key raw][value raw]`, addressed by a packed word (offset and log2 of
//! the capacity) so that one atomic store swaps tables.
//!
//! Every byte of a table is accessed with atomics (tags as `AtomicU64`, raw keys
//! and values with byte-wise atomic copies), by the lock holder and by the lock-free
//! readers alike, so a reader racing a writer (or reading a table just freed and
//! reused) makes a wrong copy that its seqlock check then discards, never a data race.

use std::mem::{align_of, size_of};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::alloc::{Offset, ShmAllocator};
use crate::error::{CollectionError, Error};
use crate::typed::token::{OwnedHeader, PINNED};
use crate::typed::{raw, ShmSafe};

/// Tag of a slot never used since the table was made (ends a probe).
pub(super) const EMPTY: u64 = 0;
/// Tag of a removed entry (probes go past it; inserts reuse it).
pub(super) const TOMB: u64 = 1;
/// Bit set in the tag of a full slot (the rest is the key's hash).
pub(super) const FULL: u64 = 1 << 63;
/// Bytes of the table block's header.
const HEADER: u64 = 16;
/// Smallest table: 2^4 slots.
pub(super) const MIN_LOG2: u32 = 4;
/// Largest table: 2^36 slots per shard.
pub(super) const MAX_LOG2: u32 = 36;
const OFF_MASK: u64 = (1 << 56) - 1;

/// Byte positions inside a table of a given key and value raw type.
#[derive(Clone, Copy)]
pub(super) struct Layout {
    key: u64,
    val: u64,
    slot: u64,
    intent_key: u64,
    intent_old: u64,
    intent_new: u64,
    slots: u64,
}

const fn round8(x: usize) -> u64 {
    (x as u64).div_ceil(8) * 8
}

impl Layout {
    pub(super) const fn of<KR: ShmSafe, VR: ShmSafe>() -> Layout {
        assert!(
            align_of::<KR>() <= 8 && align_of::<VR>() <= 8,
            "map keys and values need raw forms aligned to at most 8"
        );
        let ks = round8(size_of::<KR>());
        let vs = round8(size_of::<VR>());
        Layout {
            key: 8,
            val: 8 + ks,
            slot: 8 + ks + vs,
            intent_key: HEADER,
            intent_old: HEADER + ks,
            intent_new: HEADER + ks + vs,
            slots: HEADER + ks + 2 * vs,
        }
    }

    /// Bytes of a table of `2^log2` slots.
    pub(super) fn bytes(&self, log2: u32) -> Option<u64> {
        (1u64 << log2)
            .checked_mul(self.slot)?
            .checked_add(self.slots)
    }
}

/// The packed table word: offset in the low 56 bits, log2 of the capacity above.
pub(super) fn pack(off: u64, log2: u32) -> u64 {
    off | (u64::from(log2) << 56)
}

/// A table resolved to a pointer into the mapping (bounds-checked).
#[derive(Clone, Copy)]
pub(super) struct Table {
    base: NonNull<u8>,
    pub(super) off: u64,
    pub(super) log2: u32,
    pub(super) l: Layout,
}

impl Table {
    /// Resolves a table word: `None` for 0 (no table yet); an error for a word
    /// whose capacity is out of range or whose bytes are outside the data region.
    /// Cheap (arithmetic only): whether the block is live and ours is
    /// [`check_owned`](Self::check_owned)'s (writers), or the seqlock's (readers).
    #[inline]
    pub(super) fn resolve<A: ShmAllocator + ?Sized>(
        alloc: &A,
        word: u64,
        l: Layout,
    ) -> Result<Option<Table>, Error> {
        if word == 0 {
            return Ok(None);
        }
        let off = word & OFF_MASK;
        let log2 = (word >> 56) as u32;
        let bad = || CollectionError::Corrupted {
            what: "map table word",
            found: word,
        };
        if !(MIN_LOG2..=MAX_LOG2).contains(&log2) || off % 16 != 0 {
            return Err(bad().into());
        }
        let bytes = l.bytes(log2).ok_or_else(bad)?;
        crate::alloc::data_relative(alloc.segment(), Offset::new(off), bytes)?;
        let base = alloc.segment().ptr_at(off, bytes, 16).ok_or_else(bad)?;
        Ok(Some(Table { base, off, log2, l }))
    }

    /// Checks that the table is a live block of this map (allocator metadata: block
    /// start, range inside it; the crate-written header: [`PINNED`] and `fp`): what
    /// a writer checks before it writes into or frees a table.
    pub(super) fn check_owned<A: ShmAllocator + ?Sized>(
        &self,
        alloc: &A,
        fp: u64,
    ) -> Result<(), Error> {
        check_table_block(alloc, self.off, fp)?;
        let bytes = self.l.bytes(self.log2).unwrap_or(u64::MAX);
        alloc.check_range(Offset::new(self.off), bytes)?;
        Ok(())
    }

    #[inline]
    pub(super) fn cap(&self) -> u64 {
        1 << self.log2
    }

    #[inline]
    pub(super) fn mask(&self) -> u64 {
        self.cap() - 1
    }

    #[inline]
    fn at(&self, byte: u64) -> NonNull<u8> {
        // `byte` is below the table's checked length (callers pass slot indices
        // masked to the capacity, or intent offsets below `slots`).
        NonNull::new(self.base.as_ptr().wrapping_add(byte as usize)).unwrap_or(self.base)
    }

    /// The tag of slot `i` (`i < cap`).
    #[inline]
    pub(super) fn tag(&self, i: u64) -> &AtomicU64 {
        debug_assert!(i < self.cap());
        let p = self.at(self.l.slots + (i & self.mask()) * self.l.slot);
        // SAFETY:
        // - the slot lies inside the table's bytes, checked inside the mapping by
        //   `resolve` (the index is masked to the capacity); 8-aligned (the block
        //   is 16-aligned, `slots` and `slot` are multiples of 8);
        // - every access to a tag, in every process, is atomic;
        // - the reference borrows `self`, whose user borrows the map handle that
        //   keeps the mapping alive.
        unsafe { &*p.as_ptr().cast::<AtomicU64>() }
    }

    #[inline]
    pub(super) fn key<R>(&self, i: u64) -> NonNull<R> {
        self.at(self.l.slots + (i & self.mask()) * self.l.slot + self.l.key)
            .cast()
    }

    #[inline]
    pub(super) fn val<R>(&self, i: u64) -> NonNull<R> {
        self.at(self.l.slots + (i & self.mask()) * self.l.slot + self.l.val)
            .cast()
    }

    pub(super) fn intent_key<R>(&self) -> NonNull<R> {
        self.at(self.l.intent_key).cast()
    }

    pub(super) fn intent_old<R>(&self) -> NonNull<R> {
        self.at(self.l.intent_old).cast()
    }

    pub(super) fn intent_new<R>(&self) -> NonNull<R> {
        self.at(self.l.intent_new).cast()
    }
}

/// Copies a raw value out of a table (byte-wise atomic loads).
#[inline]
pub(super) fn load<R: ShmSafe>(p: NonNull<R>) -> R {
    // SAFETY: every `NonNull<R>` this module hands out points inside a resolved
    // table (bounds checked in the mapping, 8-aligned, `R`'s alignment at most 8
    // by `Layout::of`), and the mapping outlives the map handle the caller borrows.
    unsafe { raw::atomic_read_relaxed(p) }
}

/// Stores a raw value into a table (byte-wise atomic stores).
#[inline]
pub(super) fn store<R: ShmSafe>(p: NonNull<R>, v: R) {
    // SAFETY:
    // - `p` points inside a resolved table, aligned for `R` (as for `load`);
    // - callers write only tables their shard lock covers, checked live and the
    //   map's (`check_owned`); every other access to these bytes is atomic.
    unsafe { atomic_memcpy::atomic_store(p.as_ptr(), v, Ordering::Relaxed) };
}

/// Checks that `off` is the start of a live table block of a map with `fp`.
pub(super) fn check_table_block<A: ShmAllocator + ?Sized>(
    alloc: &A,
    off: u64,
    fp: u64,
) -> Result<(), Error> {
    let h = OwnedHeader::at(alloc, Offset::new(off))?;
    if h.claim_word(Ordering::Acquire) != PINNED || h.fingerprint() != fp {
        return Err(CollectionError::Corrupted {
            what: "map table header",
            found: off,
        }
        .into());
    }
    Ok(())
}

/// Writes a table header into a freshly allocated block.
pub(super) fn init_table<A: ShmAllocator + ?Sized>(
    alloc: &A,
    off: u64,
    fp: u64,
) -> Result<(), Error> {
    OwnedHeader::init_pinned(alloc, Offset::new(off), fp)?;
    Ok(())
}
