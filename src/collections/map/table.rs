//! One shard's table: a block holding a [`PINNED`] header, the shard's intent
//! record (raw key, old value, new value), `cap` **control bytes** and `cap` slots
//! of `[hash: u64][key raw][value raw]`, addressed by a packed word (offset and
//! log2 of the capacity) so that one atomic store swaps tables.
//!
//! The control bytes are SwissTable's (hashbrown's): [`EMPTY`], [`TOMB`], or a
//! full slot's `0x80 | h7` (7 bits of its hash, [`ctrl_of`]). They are read and
//! written as `AtomicU64` words of [`GROUP`] slots, matched eight at a time with
//! SWAR arithmetic, so a probe reads one small, mostly cached word per 8 slots and
//! touches a slot's (uncached) line only for a likely match: one cache line per
//! lookup, and a branch a CPU predicts, so independent lookups overlap their
//! memory misses. Groups are aligned (slot `8g..8g+8`) and probed linearly.
//!
//! Every byte of a table is accessed with atomics (control words and hashes as
//! `AtomicU64`, raw keys and values with byte-wise atomic copies), by the lock
//! holder and by the lock-free readers alike, so a reader racing a writer (or
//! reading a table just freed and reused) makes a wrong copy that its seqlock
//! check then discards, never a data race. Only the shard's lock holder writes a
//! control word (a load and a store of the whole word: no mixed-size atomics).

use std::mem::{align_of, size_of};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::alloc::{Offset, ShmAllocator};
use crate::error::{CollectionError, Error};
use crate::typed::token::{OwnedHeader, PINNED};
use crate::typed::{raw, ShmSafe};

/// Control byte of a slot never used since the table was made (ends a probe).
pub(super) const EMPTY: u8 = 0x00;
/// Control byte of a removed entry (probes go past it; inserts reuse it).
pub(super) const TOMB: u8 = 0x01;
/// Bit set in the control byte of a full slot.
pub(super) const FULL: u8 = 0x80;
/// Slots per control word.
pub(super) const GROUP: u64 = 8;
/// Bytes of the table block's header.
const HEADER: u64 = 16;
/// Smallest table: 2^4 slots.
pub(super) const MIN_LOG2: u32 = 4;
/// Largest table: 2^36 slots per shard.
pub(super) const MAX_LOG2: u32 = 36;
const OFF_MASK: u64 = (1 << 56) - 1;
const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// The control byte of a full slot holding a key of hash `h`: 7 bits of the hash
/// that neither the shard (top 6 bits) nor the slot index (low 36 at most) use.
#[inline]
pub(super) fn ctrl_of(h: u64) -> u8 {
    FULL | ((h >> 40) & 0x7f) as u8
}

/// The bytes of `w` that are zero, as their high bits (exact: no borrow between
/// bytes).
#[inline]
pub(super) fn zero_bytes(w: u64) -> u64 {
    !(((w & !HI).wrapping_add(!HI)) | w) & HI
}

/// The bytes of `w` equal to `b`, as their high bits.
#[inline]
pub(super) fn match_byte(w: u64, b: u8) -> u64 {
    zero_bytes(w ^ LO.wrapping_mul(u64::from(b)))
}

/// The bytes of `w` that are free (empty or tombstone), as their high bits.
#[inline]
pub(super) fn free_bytes(w: u64) -> u64 {
    !w & HI
}

/// The byte index (0..8) of the lowest set high bit of a match mask.
#[inline]
pub(super) fn first(m: u64) -> u64 {
    u64::from(m.trailing_zeros() / 8)
}

/// Byte positions inside a table of a given key and value raw type.
#[derive(Clone, Copy)]
pub(super) struct Layout {
    key: u64,
    val: u64,
    slot: u64,
    intent_key: u64,
    intent_old: u64,
    intent_new: u64,
    ctrl: u64,
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
            ctrl: HEADER + ks + 2 * vs,
        }
    }

    /// Bytes of a table of `2^log2` slots.
    pub(super) fn bytes(&self, log2: u32) -> Option<u64> {
        let cap = 1u64 << log2;
        cap.checked_mul(self.slot)?
            .checked_add(cap)?
            .checked_add(self.ctrl)
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
    /// Byte offset of slot 0 inside the table (after the control bytes).
    slots: u64,
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
        Ok(Some(Table {
            base,
            slots: l.ctrl + (1 << log2),
            off,
            log2,
            l,
        }))
    }

    /// Resolves a word that [`resolve`](Self::resolve) accepted before for the
    /// same mapping (its bytes are in the usable data region, which never shrinks):
    /// only the mapping bounds are checked again. `None` for 0 or a word out of
    /// the mapping.
    #[inline]
    pub(super) fn resolve_known<A: ShmAllocator + ?Sized>(
        alloc: &A,
        word: u64,
        l: Layout,
    ) -> Option<Table> {
        let off = word & OFF_MASK;
        let log2 = (word >> 56) as u32;
        if word == 0 || log2 > MAX_LOG2 {
            return None;
        }
        let cap = 1u64 << log2;
        let bytes = cap.wrapping_mul(l.slot).wrapping_add(cap).wrapping_add(l.ctrl);
        let base = alloc.segment().ptr_at(off, bytes, 16)?;
        Some(Table {
            base,
            slots: l.ctrl + cap,
            off,
            log2,
            l,
        })
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
        // `byte` is below the table's checked length (callers pass slot and group
        // indices masked to the capacity, or intent offsets below `ctrl`).
        let p = self.base.as_ptr().wrapping_add(byte as usize);
        // SAFETY: `base` is a pointer into the mapping and `byte` is below the
        // table's length, which `resolve` checked lies inside the mapping: `p` is
        // inside the mapping too, so not null.
        unsafe { NonNull::new_unchecked(p) }
    }

    /// Number of control words.
    #[inline]
    pub(super) fn groups(&self) -> u64 {
        self.cap() / GROUP
    }

    /// An atomic word of the table at byte `byte` (8-aligned, inside the table).
    #[inline]
    fn word(&self, byte: u64) -> &AtomicU64 {
        let p = self.at(byte);
        // SAFETY:
        // - callers pass a control word index masked to the number of groups or a
        //   slot index masked to the capacity, so the 8 bytes lie inside the
        //   table's bytes, checked inside the mapping by `resolve`; 8-aligned (the
        //   block is 16-aligned; `ctrl`, `slots` and `slot` are multiples of 8);
        // - every access to these words, in every process, is atomic;
        // - the reference borrows `self`, whose user borrows the map handle that
        //   keeps the mapping alive.
        unsafe { &*p.as_ptr().cast::<AtomicU64>() }
    }

    /// Control word `g` (slots `8g..8g+8`, slot `8g+j` in bits `8j..8j+8`).
    #[inline]
    pub(super) fn group(&self, g: u64) -> &AtomicU64 {
        self.word(self.l.ctrl + (g & (self.groups() - 1)) * 8)
    }

    /// The control byte of slot `i`.
    #[inline]
    pub(super) fn ctrl(&self, i: u64) -> u8 {
        (self.group(i / GROUP).load(Ordering::Acquire) >> (8 * (i % GROUP))) as u8
    }

    /// Sets the control byte of slot `i` (Release: the slot's bytes written before
    /// are visible to a reader that sees the byte). Only the shard's lock holder
    /// (or the builder of an unpublished table) calls this.
    #[inline]
    pub(super) fn set_ctrl(&self, i: u64, c: u8) {
        let g = self.group(i / GROUP);
        let sh = 8 * (i % GROUP);
        let w = g.load(Ordering::Relaxed);
        g.store((w & !(0xff << sh)) | (u64::from(c) << sh), Ordering::Release);
    }

    #[inline]
    fn slot(&self, i: u64) -> u64 {
        self.slots + (i & self.mask()) * self.l.slot
    }

    /// The full hash stored in slot `i`.
    #[inline]
    pub(super) fn hash(&self, i: u64) -> &AtomicU64 {
        self.word(self.slot(i))
    }

    #[inline]
    pub(super) fn key<R>(&self, i: u64) -> NonNull<R> {
        self.at(self.slot(i) + self.l.key).cast()
    }

    #[inline]
    pub(super) fn val<R>(&self, i: u64) -> NonNull<R> {
        self.at(self.slot(i) + self.l.val).cast()
    }

    /// Hints the CPU to fetch the control word and the first slot's line of the
    /// group where a probe for hash `h` starts (no effect on memory).
    #[inline]
    pub(super) fn prefetch(&self, h: u64) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            let i = h & self.mask();
            let c = self.at(self.l.ctrl + (i / GROUP) * 8);
            let s = self.at(self.slot(i));
            #[allow(unused_unsafe)]
            // SAFETY: a prefetch never faults and changes no memory (the pointer is
            // inside the table's checked bytes anyway).
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>(c.as_ptr().cast::<i8>());
            }
            #[allow(unused_unsafe)]
            // SAFETY: as above.
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>(s.as_ptr().cast::<i8>());
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = h;
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
