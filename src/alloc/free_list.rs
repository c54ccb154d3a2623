//! The general-purpose allocator: size classes over a shared page pool.
//!
//! The data region is cut into 4 KiB pages. Each page has one metadata line:
//! a **state word** `[gen: 24 | kind: 3 | class: 5 | aux: 32]`, which is the sole
//! authority on what the page is (free, a span of small blocks, the head or an
//! interior page of a large block), and six **block words** `[tag: 16 | bits: 48]`
//! for spans. Every change of a state word is a compare-and-swap that increments
//! its generation, so a step that read an old state cannot act on a newer one
//! (one exception: a repair marks a dead creator's span `SPAN_REPAIRED` in place,
//! keeping its tag; a step that read the unmarked state then fails its CAS).
//!
//! Requests up to 2 KiB go to one of [`SIZE_CLASSES`]: a span is one page carved
//! into equal blocks. Allocating a block is **one** CAS that sets a bit in a block
//! word; freeing is one CAS that clears it. A block word carries the tag of its
//! span (generation and class), so a free or allocation that raced a span's release
//! and reuse fails its CAS instead of touching the new span: two frees of the same
//! offset, in any processes, give one success and one [`FreeError::DoubleFree`],
//! and never change another block. A span is released back to the page pool as
//! soon as its last block is freed (eagerly), unless it is the freeing handle's
//! current span for that class, which stays until the handle moves on, drops, or
//! memory runs short. Releasing first *closes* every block word (CAS from "open and
//! empty" to `CLOSED`), so no allocation can land in a span being released.
//!
//! There are no lists: which spans have free blocks, and which pages are free, is
//! kept in two kinds of bitmaps that are only **hints** (a stale hint costs a
//! retry; repair rebuilds them). Nothing is ever taken off a shared structure
//! into a process's hands, so a process that dies holds nothing but the blocks
//! its own code allocated, and the multi-step operations it had in flight.
//!
//! Those operations (creating a span, releasing one, claiming a run of pages for a
//! large block, growing one) first write an intent record in the handle's slot of
//! the process registry ([`crate::process`]), naming the pages and the state the
//! first step installs (the state words also carry the slot index of the handle
//! that installed them). When a handle dies, whoever takes its slot's lock parks
//! its intents; the next repair pass finishes or rolls back each one, and repairs
//! what the global rules can see (an interior page whose head is gone, an empty
//! span). Repair runs when a handle joins over a dead one, when memory runs out,
//! and on [`FreeListAllocator::reclaim`]. See the tests in `tests/registry.rs` and
//! `tests/failpoints.rs`, which kill processes at every step.
//!
//! **Per-handle caches** (jemalloc's tcache, mimalloc's local free lists, over shared
//! memory). Each handle's registry slot has, per size class, a cache of up to
//! `depth` free blocks ([`DEFAULT_CACHE_DEPTH`], set per segment with
//! [`FreeListAllocator::create_with_cache`]; 0 turns caches off). The first thread
//! that allocates or frees through a handle owns its cache; allocation pops from
//! it and free pushes to it with plain loads and stores, no locked instruction.
//! Blocks in a cache count as allocated in the shared bitmaps, so every invariant
//! above holds unchanged; `stats()` reports them as `cached_bytes` (free, not live).
//! An empty cache is refilled with up to 8 blocks by one CAS on one block word; a
//! full one gives half back, one CAS per block word. A block freed by another
//! process than the one that allocated it simply goes into the freeing handle's
//! cache.
//!
//! *Memory pressure*: when memory runs out, the allocating handle empties its own
//! cache (and the caches this very thread owns in other handles), reclaims dead
//! handles' caches, asks live handles to flush theirs on their next call, and
//! *takes* the caches of owners that are not inside a cache operation right now,
//! so an owner that never calls again cannot keep memory from others. Each cache
//! has a gate: the owner marks itself active around every cache operation and
//! reads the gate (two plain stores and a load); a thief claims the gate with its
//! registry token, runs `membarrier(MEMBARRIER_CMD_GLOBAL)` (a memory barrier in
//! every running thread, a few milliseconds), waits up to 10 ms for the owner to
//! be outside, and empties the cache; an owner that finds the gate claimed uses
//! the shared path until the thief is done. It retries for at most 20 ms before
//! `OutOfMemory`. [`FreeListAllocator::stolen_blocks`] counts what a handle took.
//! Where the kernel refuses `membarrier` (no `CONFIG_MEMBARRIER`, `nohz_full`
//! CPUs, a seccomp filter), nothing is taken and flush requests alone remain: then
//! an owner that never calls again keeps its cache (at most `depth` blocks per
//! class) until it is dropped or dies.
//!
//! *Crash safety*: a pop lowers the count after reading the entry and a push
//! raises it after writing the entry, so a crash leaks at most the one block in
//! hand, and everything counted in a dead handle's cache goes back through the
//! reclaimer. A crash inside a refill or a flush, between its one CAS and its count
//! update, leaks the blocks of that one block word (at most 8); it never returns a
//! block twice (`tests/failpoints.rs` kills at `fl.cache.*` and counts them). A
//! thief or reclaimer that dies holding a gate leaves a claim by a dead
//! registration, which the next owner, thief or reclaimer reopens; the cache's
//! count always covers exactly the entries not yet given back, so the next one
//! continues where it stopped (`tests/registry.rs` kills at `cache.steal.claimed`
//! and `cache.dead.claimed`).
//!
//! *Double frees*: a cached block carries a mark (`key ^ offset`, with a random
//! per-segment key) in its first word. `free` refuses a block whose bit is clear or
//! that carries the mark, so a double free, through the same handle or another one
//! in any process, is an error at once. Two processes freeing the same block at the
//! very same instant can both succeed; the second flush then finds the bit already
//! clear and counts it ([`FreeListAllocator::late_double_frees`]), and until then
//! the block may be handed out twice: that race is not detected in time.
//!
//! **Stale offsets.** A raw offset is a number: `free(x)` after `x` was freed and
//! then handed out again *at the same offset, in the same class* frees the new
//! block, because nothing in the offset tells the two apart. Every other stale use
//! (the span was released, reused for another class or a large block, or the
//! block is free) is detected and is an error. Typed handles carry more than an
//! offset and detect the rest.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use super::cache::{self, cache_key, Gate, Mag, BATCH};
use super::{check_request, data_relative, ClassStats, Offset, ShmAllocator, ShmFree, Stats};
use crate::error::{AccessError, AllocError, FreeError, SegmentError};
use crate::process::{self, Intent, Membership, ProcessInfo};
use crate::segment::{
    AllocatorKind, CreateOptions, Layout, OpenOptions, Segment, ALLOC_REGION_START,
};
use crate::sync::bitmap;

const PAGE: u64 = 4096;
const PAGE_SHIFT: u32 = 12;
/// Largest number of pages (64 GiB): a large block's length fits 24 bits.
const MAX_PAGES: u64 = 1 << 24;

/// Block sizes of the small-object classes. Larger requests take whole pages.
pub const SIZE_CLASSES: [u32; 24] = [
    16, 32, 48, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 448, 512, 640, 768, 896, 1024,
    1280, 1536, 1792, 2048,
];
const NCLASS: usize = SIZE_CLASSES.len();
const SMALL_MAX: usize = 2048;

/// `CLASS_OF[(size + 15) / 16]` is the smallest class that fits `size`.
const CLASS_OF: [u8; SMALL_MAX / 16 + 1] = {
    let mut t = [0u8; SMALL_MAX / 16 + 1];
    let mut i = 0;
    let mut c = 0;
    while i < t.len() {
        while (SIZE_CLASSES[c] as usize) < i * 16 {
            c += 1;
        }
        t[i] = c as u8;
        i += 1;
    }
    t
};

// ---------------------------------------------------------------- state words

const KIND_FREE: u64 = 0;
const KIND_SMALL: u64 = 1;
const KIND_LARGE: u64 = 2;
const KIND_INTERIOR: u64 = 3;

#[inline]
fn kind(st: u64) -> u64 {
    (st >> 37) & 7
}
#[inline]
fn class(st: u64) -> usize {
    ((st >> 32) & 31) as usize
}
#[inline]
fn aux(st: u64) -> u64 {
    st & 0xFFFF_FFFF
}
/// The state that follows `st`: next generation, the given contents.
#[inline]
fn next(st: u64, kind: u64, class: usize, aux: u64) -> u64 {
    ((((st >> 40) + 1) & 0xFF_FFFF) << 40) | (kind << 37) | ((class as u64) << 32) | aux
}
/// Large-block `aux`: the installing slot and the length (head) or distance (interior).
#[inline]
fn run_aux(slot: usize, n: u64) -> u64 {
    ((slot as u64) << 24) | (n & 0xFF_FFFF)
}
/// Interior-page `aux`: the low generation bits of its head's state and the
/// distance to the head. The generation tells this block's interior pages from
/// those of an earlier block at the same head page (a `free` still walking the
/// old block's pages must not free the new one's).
#[inline]
fn interior_aux(head: u64, d: u64) -> u64 {
    (((head >> 40) & 0xFF) << 24) | (d & 0xFF_FFFF)
}
#[inline]
fn run_len(st: u64) -> u64 {
    aux(st) & 0xFF_FFFF
}

// ---------------------------------------------------------------- block words

const BITS: u64 = 48;
const BITS_MASK: u64 = (1 << BITS) - 1;
/// A block word no allocation or free can use: its tag matches no span, and every
/// bit reads as taken.
const CLOSED: u64 = u64::MAX;
const SPAN_WORDS: usize = 6; // 6 x 48 >= 256 blocks of the smallest class

/// The tag of span state `st`: low generation bits and the class. Never 0xFFFF
/// (classes are < 24), so it never matches `CLOSED`.
#[inline]
fn tag_of(st: u64) -> u64 {
    (((st >> 40) & 0x7FF) << 5) | class(st) as u64
}
#[inline]
fn cap_of(c: usize) -> u64 {
    CAP[c]
}
/// `CAP[c]`: blocks in a span of class `c` (a table: no division on the free path).
const CAP: [u64; NCLASS] = {
    let mut t = [0u64; NCLASS];
    let mut c = 0;
    while c < NCLASS {
        t[c] = PAGE / SIZE_CLASSES[c] as u64;
        c += 1;
    }
    t
};
#[inline]
fn words_of(c: usize) -> usize {
    cap_of(c).div_ceil(BITS) as usize
}
/// Block word `w` of an empty open span of class `c` with tag `tag`: bits past the
/// class's block count are set, so they are never handed out.
#[inline]
fn open_empty(w: usize, c: usize, tag: u64) -> u64 {
    let first = w as u64 * BITS;
    let valid = cap_of(c).saturating_sub(first).min(BITS);
    let pad = if valid == BITS {
        0
    } else {
        BITS_MASK & !((1 << valid) - 1)
    };
    (tag << BITS) | pad
}

/// `RECIP[c] = ceil(2^32 / size)`: `(x * RECIP[c]) >> 32 == x / size` for every
/// in-page offset x < 4096 (the error, below 4096 / 2^32, never crosses an integer
/// because x / size has a fractional part of at most 1 - 1/2048). Avoids a hardware
/// division on the free and check paths.
const RECIP: [u64; NCLASS] = {
    let mut r = [0u64; NCLASS];
    let mut c = 0;
    while c < NCLASS {
        r[c] = (1u64 << 32).div_ceil(SIZE_CLASSES[c] as u64);
        c += 1;
    }
    r
};

/// Block index of in-page offset `within` (< PAGE) in class `c`.
#[inline]
fn block_index(within: u64, c: usize) -> u64 {
    (within * RECIP[c]) >> 32
}

// ---------------------------------------------------------------- metadata layout

const LINE: u64 = 8; // words per page line: state, 6 block words, spare
const PM_STATE: usize = 0;
const PM_WORDS: usize = 1;

/// Intent kinds recorded in the registry.
const INTENT_NEW_SPAN: u8 = 1;
const INTENT_RELEASE: u8 = 2;
const INTENT_LARGE: u8 = 3;
const INTENT_GROW: u8 = 4;

/// In a span's state `aux`: a repair has finished (or is finishing) the creation of
/// this span, whose creator died (see `finish_intent`). Set without a new
/// generation, so the span's tag is kept.
const SPAN_REPAIRED: u64 = 1 << 31;

/// Give up on a CAS retry loop after this many rounds and report corruption.
/// Real contention makes progress long before; only a peer rewriting a word
/// forever (hostile) gets here.
const RETRY_LIMIT: u32 = 1 << 16;

fn bitmap_words(pages: u64) -> u64 {
    pages.div_ceil(64).div_ceil(LINE) * LINE
}
/// Word offsets in the metadata region: page hints, per-class span hints, lines.
fn avail_start(pages: u64, c: usize) -> u64 {
    bitmap_words(pages) * (1 + c as u64)
}
fn lines_start(pages: u64) -> u64 {
    avail_start(pages, NCLASS)
}
/// Per-handle caches: for each registry slot, one line with the gate (`cache::Gate`:
/// its control word and the owner's mark), then per class `[count, block
/// offsets ...]` of `depth + 1` words.
fn cache_start(pages: u64) -> u64 {
    lines_start(pages) + pages * LINE
}
fn cache_stride(depth: u64) -> u64 {
    LINE + NCLASS as u64 * (depth + 1)
}
fn meta_words_for(pages: u64, depth: u64) -> u64 {
    cache_start(pages) + process::SLOTS as u64 * cache_stride(depth)
}

/// Blocks per size class that each handle's cache holds at most, by default.
pub const DEFAULT_CACHE_DEPTH: u64 = 15;
/// The largest cache depth [`FreeListAllocator::create_with_cache`] accepts.
pub const MAX_CACHE_DEPTH: u64 = 63;
/// What a repair pass did; see [`FreeListAllocator::reclaim`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reclaimed {
    /// Registry slots of dead handles that this pass took over and freed.
    pub dead_slots: usize,
    /// Parked intent records of dead handles that were finished or rolled back.
    pub intents: usize,
    /// Pages returned to the page pool (empty spans, orphaned runs).
    pub pages: usize,
    /// Blocks returned from the caches of dead handles.
    pub cached_blocks: usize,
}

/// The general-purpose allocator: any size from 1 byte to the capacity, alignment up
/// to 4096, individual [`free`](ShmFree::free), memory freed at one size reusable at
/// any other. Lock-free: allocation and free of a small block are one CAS each.
/// Safe against processes dying at any instant: what a dead handle had in flight
/// is recovered through the process registry.
///
/// ```
/// use shared_allocator::prelude::*;
/// # let name = format!("doc-freelist-{}", std::process::id());
/// # let _cleanup = shared_allocator::segment::UnlinkGuard::new(&name);
/// let alloc = FreeListAllocator::create(&name, 10 << 20)?;
/// let off = alloc.allocate(256)?;
/// alloc.write(off, b"Hello from shared memory!")?;
/// assert_eq!(alloc.read(off, 25)?, b"Hello from shared memory!");
/// alloc.free(off)?;
/// assert_eq!(alloc.stats().live_blocks, Some(0));
/// alloc.unlink()?;
/// # Ok::<(), shared_allocator::Error>(())
/// ```
#[derive(Debug)]
pub struct FreeListAllocator {
    member: Membership,
    seg: Segment,
    pages: usize,
    /// Where this handle starts looking for a free page or span (spreads handles apart).
    hint: AtomicUsize,
    /// This handle's current span per class: `[tag: 16 | page + 1: 48]`, 0 = none.
    cur: [AtomicU64; NCLASS],
    /// Blocks per class in this handle's cache (0: no caches).
    depth: usize,
    /// The segment's cache-mark key: a cached block's first word holds `key ^ offset`.
    key: u64,
    /// The thread that uses this handle's cache (the first one that allocated or
    /// freed through it); other threads take the shared path. 0 = none yet.
    cache_owner: cache::CacheOwner,
    /// Double frees found when a cache was flushed (too late to report to the caller).
    late_double_frees: AtomicU64,
    /// Blocks this handle took from idle handles' caches (see `stolen_blocks`).
    stolen: AtomicU64,
    /// The segment object's inode: names it across this process's handles.
    ino: u64,
    /// Word index (in the metadata region) of page 0's line.
    lines_base: usize,
    /// Word index (in the metadata region) of slot 0's cache, and words per slot.
    cache_base0: usize,
    cache_stride: usize,
    /// The data region: its address in this mapping, and its bounds as offsets
    /// (validated at open). Numbers, so the type stays Send + Sync.
    data_addr: usize,
    data_off: u64,
    data_end: u64,
    /// The metadata region, resolved once at open (`Segment::words` checked it):
    /// address and length in words. Kept as a number so the type stays Send + Sync.
    meta_addr: usize,
    meta_words: usize,
}

impl FreeListAllocator {
    /// Creates a segment `name` with `capacity` bytes of data region (rounded up to
    /// whole 4 KiB pages; at most 64 GiB).
    ///
    /// # Errors
    /// [`SegmentError::AlreadyExists`], [`SegmentError::InvalidName`],
    /// [`SegmentError::InvalidParameter`], [`SegmentError::ForeignOwner`], or an OS error.
    pub fn create(name: &str, capacity: u64) -> Result<Self, SegmentError> {
        Self::create_with(name, capacity, &CreateOptions::default())
    }

    /// [`create`](Self::create) with options (permission mode).
    ///
    /// # Errors
    /// As [`create`](Self::create).
    pub fn create_with(
        name: &str,
        capacity: u64,
        opts: &CreateOptions,
    ) -> Result<Self, SegmentError> {
        Self::create_with_cache(name, capacity, DEFAULT_CACHE_DEPTH, opts)
    }

    /// [`create_with`](Self::create_with), choosing how many free blocks per size
    /// class each handle may keep in its cache (0 turns caches off; at most
    /// [`MAX_CACHE_DEPTH`]). Every handle that opens the segment uses this depth.
    ///
    /// A handle's cache lives in its registry slot: the first thread that allocates
    /// or frees through the handle gets allocation and free without any locked
    /// instruction while its cache has blocks or room, and takes or returns up to
    /// eight blocks per read-modify-write when it has not. Other threads of the
    /// process use the shared path. A dead handle's cache is returned by whoever
    /// reclaims its slot.
    ///
    /// # Errors
    /// As [`create`](Self::create); [`SegmentError::InvalidParameter`] for a depth
    /// over [`MAX_CACHE_DEPTH`].
    pub fn create_with_cache(
        name: &str,
        capacity: u64,
        depth: u64,
        opts: &CreateOptions,
    ) -> Result<Self, SegmentError> {
        if depth > MAX_CACHE_DEPTH {
            return Err(SegmentError::InvalidParameter {
                what: "free-list cache depth",
                value: depth,
            });
        }
        let pages = capacity.div_ceil(PAGE);
        if pages == 0 || pages >= MAX_PAGES {
            return Err(SegmentError::InvalidParameter {
                what: "free-list capacity",
                value: capacity,
            });
        }
        let meta_len = (meta_words_for(pages, depth) * 8).div_ceil(PAGE) * PAGE;
        let layout = Layout {
            kind: AllocatorKind::FreeList,
            total_size: ALLOC_REGION_START + meta_len + pages * PAGE,
            meta_offset: ALLOC_REGION_START,
            meta_len,
            data_offset: ALLOC_REGION_START + meta_len,
            data_len: pages * PAGE,
            params: [pages, depth, cache_key(), 0],
        };
        let seg = Segment::create(name, layout, opts)?;
        let this = Self::from_segment(seg).inspect_err(|_| {
            let _ = crate::segment::unlink(name);
        })?;
        // Pages past the end of the last hint word are permanently "in use"; every
        // block word starts closed.
        let bits = this.page_hints();
        let tail = pages % 64;
        if tail != 0 {
            bits[(pages / 64) as usize].store(!0 << tail, Ordering::Relaxed);
        }
        for p in 0..this.pages {
            for w in &this.line(p)[PM_WORDS..PM_WORDS + SPAN_WORDS] {
                w.store(CLOSED, Ordering::Relaxed);
            }
        }
        this.seg.publish();
        Ok(this)
    }

    /// Opens the free-list allocator `name` created by any process.
    ///
    /// # Errors
    /// [`SegmentError::NotFound`], [`SegmentError::WrongKind`],
    /// [`SegmentError::VersionMismatch`], [`SegmentError::InitTimeout`],
    /// [`SegmentError::CorruptHeader`], [`SegmentError::ForeignOwner`],
    /// [`SegmentError::RegistryFull`], ...
    pub fn open(name: &str) -> Result<Self, SegmentError> {
        Self::open_with(name, &OpenOptions::default())
    }

    /// [`open`](Self::open) with options (init timeout, ownership checks).
    ///
    /// # Errors
    /// As [`open`](Self::open).
    pub fn open_with(name: &str, opts: &OpenOptions) -> Result<Self, SegmentError> {
        let this = Self::from_segment(Segment::open(name, AllocatorKind::FreeList, opts)?)?;
        Ok(this)
    }

    fn from_segment(seg: Segment) -> Result<Self, SegmentError> {
        let l = *seg.layout();
        let [pages, depth, key, _] = l.params;
        let corrupt = |reason| Err(SegmentError::CorruptHeader { reason });
        if depth > MAX_CACHE_DEPTH {
            return corrupt("free-list cache depth out of range");
        }
        if pages == 0
            || pages >= MAX_PAGES
            || l.data_len != pages * PAGE
            || l.data_offset % PAGE != 0
        {
            return corrupt("free-list page count disagrees with the data region");
        }
        if meta_words_for(pages, depth) * 8 > l.meta_len {
            return corrupt("free-list metadata region too small");
        }
        let meta = seg
            .words(l.meta_offset, l.meta_len / 8)
            .ok_or(SegmentError::CorruptHeader {
                reason: "free-list metadata outside the mapping",
            })?;
        let (meta_addr, meta_words) = (meta.as_ptr() as usize, meta.len());
        let data_addr = seg
            .ptr_at(l.data_offset, l.data_len, PAGE as usize)
            .ok_or(SegmentError::CorruptHeader {
                reason: "free-list data region outside the mapping",
            })?
            .as_ptr() as usize;
        let ino = std::os::unix::fs::MetadataExt::ino(&seg.file().metadata().map_err(|_| {
            SegmentError::CorruptHeader {
                reason: "cannot fstat the segment",
            }
        })?);
        let joined = Membership::join(&seg)?;
        let hint = (std::process::id() as usize).wrapping_mul(0x9E37_79B9) % pages as usize;
        let this = FreeListAllocator {
            member: joined.membership,
            seg,
            pages: pages as usize,
            hint: AtomicUsize::new(hint),
            cur: [const { AtomicU64::new(0) }; NCLASS],
            depth: depth as usize,
            key,
            // Slot 0's cache words: `meta_words_for` (checked above against the
            // metadata region) covers the caches of all registry slots.
            cache_owner: cache::CacheOwner::new(
                meta_addr + cache_start(pages) as usize * 8,
                cache_stride(depth) as usize * 8,
            ),
            late_double_frees: AtomicU64::new(0),
            stolen: AtomicU64::new(0),
            ino,
            lines_base: lines_start(pages) as usize,
            cache_base0: cache_start(pages) as usize,
            cache_stride: cache_stride(depth) as usize,
            data_addr,
            data_off: l.data_offset,
            data_end: l.data_end(),
            meta_addr,
            meta_words,
        };
        if joined.found_dead {
            // We took over a dead handle's slot: first return what its cache held.
            if let Some(slot) = this.member.current() {
                cache::flush_dead(&this, slot);
            }
            this.repair();
        }
        Ok(this)
    }

    /// Removes the segment's name; see [`crate::segment::unlink`].
    ///
    /// # Errors
    /// [`SegmentError::NotFound`] if already removed.
    pub fn unlink(&self) -> Result<(), SegmentError> {
        self.seg.unlink()
    }

    /// The handles attached to this segment (pid, start time, slot generation,
    /// liveness), from the process registry.
    pub fn processes(&self) -> Vec<ProcessInfo> {
        process::processes(&self.seg, self.member.current())
    }

    /// Runs a repair pass now: takes over the registry slots of dead handles,
    /// finishes or rolls back the operations they had in flight, returns empty spans
    /// and orphaned pages to the pool, and rebuilds the search hints. Allocation runs
    /// this by itself before reporting out-of-memory; call it to see the numbers.
    /// O(pages + registry slots).
    pub fn reclaim(&self) -> Reclaimed {
        self.repair()
    }

    /// The whole metadata region as words (validated at open; never empty after).
    #[inline]
    fn meta(&self) -> &[AtomicU64] {
        // SAFETY:
        // - `meta_addr`/`meta_words` are the pointer and length of the slice that
        //   `Segment::words` returned for the metadata region at open: in bounds of the
        //   mapping, 8-aligned AtomicU64s, valid for any bit pattern;
        // - that mapping is owned by `self.seg`, which never remaps and lives as long as
        //   `self`, and the returned slice borrows `self`.
        unsafe { std::slice::from_raw_parts(self.meta_addr as *const AtomicU64, self.meta_words) }
    }

    #[inline]
    fn bitmap_at(&self, start: u64) -> &[AtomicU64] {
        let start = start as usize;
        &self.meta()[start..start + (self.pages as u64).div_ceil(64) as usize]
    }

    /// Page hints: bit set = the page is (probably) in use.
    #[inline]
    fn page_hints(&self) -> &[AtomicU64] {
        self.bitmap_at(0)
    }

    /// Span hints of class `c`: bit set = page is (probably) a span of `c` with a free block.
    #[inline]
    fn avail(&self, c: usize) -> &[AtomicU64] {
        self.bitmap_at(avail_start(self.pages as u64, c))
    }

    /// Page `p`'s metadata line (`None` past the last page).
    #[inline]
    fn page_line(&self, p: usize) -> Option<&[AtomicU64]> {
        if p >= self.pages {
            return None;
        }
        let start = self.lines_base + p * LINE as usize;
        self.meta().get(start..start + LINE as usize)
    }

    #[inline]
    fn line(&self, p: usize) -> &[AtomicU64] {
        // Callers pass p < pages; the region was sized for all pages at open.
        self.page_line(p).expect("page index checked by caller")
    }

    #[inline]
    fn state(&self, p: usize) -> &AtomicU64 {
        &self.line(p)[PM_STATE]
    }

    #[inline]
    fn page_offset(&self, p: usize) -> u64 {
        self.seg.layout().data_offset + ((p as u64) << PAGE_SHIFT)
    }

    fn my_slot(&self) -> Result<usize, AllocError> {
        self.member
            .slot(&self.seg)
            .map_err(|_| AllocError::Corrupted {
                what: "no process-registry slot (registry full or fcntl failed)",
            })
    }

    fn intend(&self, intent: Intent) -> Result<process::IntentGuard<'_>, AllocError> {
        self.member
            .intend(&self.seg, intent)
            .map_err(|_| AllocError::Corrupted {
                what: "no process-registry slot (registry full or fcntl failed)",
            })
    }

    fn set_bit(bits: &[AtomicU64], p: usize) {
        let (w, m) = (p / 64, 1u64 << (p % 64));
        if bits[w].load(Ordering::SeqCst) & m == 0 {
            bits[w].fetch_or(m, Ordering::SeqCst);
        }
    }

    fn clear_bit(bits: &[AtomicU64], p: usize) {
        let (w, m) = (p / 64, 1u64 << (p % 64));
        if bits[w].load(Ordering::Relaxed) & m != 0 {
            bits[w].fetch_and(!m, Ordering::SeqCst);
        }
    }

    // ---------------------------------------------------------------- small blocks

    /// Takes a free block of the span at page `p` (class `c`, tag `tag`), if it is
    /// still that span and has one.
    #[inline]
    fn take_block(&self, p: usize, c: usize, tag: u64) -> Option<Offset> {
        let line = self.page_line(p)?;
        for w in 0..words_of(c) {
            let word = &line[PM_WORDS + w];
            let mut v = word.load(Ordering::Relaxed);
            for _ in 0..64 {
                if v >> BITS != tag {
                    return None; // released, closing, or another span now
                }
                let free = !v & BITS_MASK;
                if free == 0 {
                    break;
                }
                let b = free.trailing_zeros();
                match word.compare_exchange_weak(
                    v,
                    v | (1 << b),
                    Ordering::SeqCst,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        crate::fail_point!("fl.alloc.taken");
                        let i = w as u64 * BITS + u64::from(b);
                        return Some(Offset::new(
                            self.page_offset(p) + i * u64::from(SIZE_CLASSES[c]),
                        ));
                    }
                    Err(now) => v = now,
                }
            }
        }
        None
    }

    /// Whether span `p` (class `c`, tag `tag`) has a free block right now.
    fn has_free(&self, p: usize, c: usize, tag: u64) -> bool {
        let line = self.line(p);
        (0..words_of(c)).any(|w| {
            let v = line[PM_WORDS + w].load(Ordering::SeqCst);
            v >> BITS == tag && !v & BITS_MASK != 0
        })
    }

    /// Whether span `p` (class `c`, tag `tag`) has no block handed out.
    fn is_empty_span(&self, p: usize, c: usize, tag: u64) -> bool {
        let line = self.line(p);
        (0..words_of(c)).all(|w| line[PM_WORDS + w].load(Ordering::SeqCst) == open_empty(w, c, tag))
    }

    /// Clears span `p`'s hint in class `c`, then re-sets it if the span does have a
    /// free block (a free that raced the clear set its block free first: with SeqCst
    /// on both sides, one of the two sees the other).
    fn drop_hint(&self, c: usize, p: usize) {
        let avail = self.avail(c);
        let (w, m) = (p / 64, 1u64 << (p % 64));
        avail[w].fetch_and(!m, Ordering::SeqCst);
        let st = self.state(p).load(Ordering::SeqCst);
        if kind(st) == KIND_SMALL && class(st) == c && self.has_free(p, c, tag_of(st)) {
            avail[w].fetch_or(m, Ordering::SeqCst);
        }
    }

    #[inline(never)]
    fn alloc_small(&self, c: usize, requested: u64) -> Result<Offset, AllocError> {
        match self.my_cache() {
            Some(slot) => cache::alloc_through(
                self,
                slot,
                || {
                    self.mag(slot, c).pop(
                        |off| self.mark(off),
                        || {
                            crate::fail_point!("fl.cache.pop");
                        },
                    )
                },
                || self.alloc_shared(c, requested),
                |_| self.refill_inside(slot, c),
            ),
            None => self.alloc_shared(c, requested),
        }
    }

    /// Allocation without the cache: one CAS on the current span's block word.
    #[inline]
    fn alloc_shared(&self, c: usize, requested: u64) -> Result<Offset, AllocError> {
        let cur = self.cur[c].load(Ordering::Relaxed);
        if cur != 0 {
            let p = (cur & BITS_MASK) as usize - 1;
            if let Some(off) = self.take_block(p, c, cur >> BITS) {
                return Ok(off);
            }
        }
        self.alloc_small_slow(c, requested)
    }

    #[cold]
    fn alloc_small_slow(&self, c: usize, requested: u64) -> Result<Offset, AllocError> {
        let cur = self.cur[c].swap(0, Ordering::Relaxed);
        if cur != 0 {
            self.drop_hint(c, (cur & BITS_MASK) as usize - 1);
        }
        let attempt = || match self.alloc_from_hints(c) {
            Some(off) => Ok(off),
            None => self.new_span(c, requested),
        };
        match attempt() {
            Err(AllocError::OutOfMemory { .. }) => {
                self.repair();
                self.retry_after_flushes(attempt)
            }
            r => r,
        }
    }

    /// Finds a span of class `c` with a free block through the span hints.
    fn alloc_from_hints(&self, c: usize) -> Option<Offset> {
        let avail = self.avail(c);
        let n = avail.len();
        let start = self.hint.load(Ordering::Relaxed) / 64 % n;
        for k in 0..n {
            let w = (start + k) % n;
            let mut v = avail[w].load(Ordering::Relaxed);
            // Each round drops one stale hint or returns: at most 64 rounds.
            while v != 0 {
                let p = w * 64 + v.trailing_zeros() as usize;
                v &= v - 1;
                if p >= self.pages {
                    break;
                }
                let st = self.state(p).load(Ordering::Acquire);
                if kind(st) == KIND_SMALL && class(st) == c {
                    let tag = tag_of(st);
                    if let Some(off) = self.take_block(p, c, tag) {
                        self.cur[c].store((tag << BITS) | (p as u64 + 1), Ordering::Relaxed);
                        return Some(off);
                    }
                }
                self.drop_hint(c, p);
            }
        }
        None
    }

    /// Claims a page whose hint is clear; returns it with its (free) state.
    fn claim_free_page(&self) -> Result<Option<(usize, u64)>, AllocError> {
        let hints = self.page_hints();
        for _ in 0..64 {
            let start = self.hint.load(Ordering::Relaxed) / 64 % hints.len();
            let Some(p) = bitmap::claim_one(hints, start) else {
                return Ok(None);
            };
            if p >= self.pages {
                return Err(AllocError::Corrupted {
                    what: "page hints mark pages past the end as free",
                });
            }
            self.hint.store(p, Ordering::Relaxed);
            let st = self.state(p).load(Ordering::Acquire);
            if kind(st) == KIND_FREE {
                return Ok(Some((p, st)));
            }
            // A stale hint: the page is in use, and its bit is now right.
        }
        Ok(None)
    }

    /// Takes a free page as a new span of class `c` and returns its first block.
    fn new_span(&self, c: usize, requested: u64) -> Result<Offset, AllocError> {
        let me = self.my_slot()?;
        for _ in 0..64 {
            let Some((p, st)) = self.claim_free_page()? else {
                break;
            };
            let new = next(st, KIND_SMALL, c, me as u64);
            let guard = self.intend(Intent {
                kind: INTENT_NEW_SPAN,
                page: p as u32,
                pages: 1,
                expected: new,
            })?;
            crate::fail_point!("fl.new_span.intent");
            if self
                .state(p)
                .compare_exchange(st, new, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
            {
                continue;
            }
            crate::fail_point!("fl.new_span.claimed");
            let tag = tag_of(new);
            let line = self.line(p);
            for w in 0..words_of(c) {
                let first = u64::from(w == 0); // block 0 is the caller's
                line[PM_WORDS + w].store(open_empty(w, c, tag) | first, Ordering::SeqCst);
                crate::fail_point!("fl.new_span.word");
            }
            Self::set_bit(self.avail(c), p);
            self.cur[c].store((tag << BITS) | (p as u64 + 1), Ordering::Relaxed);
            crate::fail_point!("fl.new_span.listed");
            drop(guard);
            return Ok(Offset::new(self.page_offset(p)));
        }
        Err(AllocError::OutOfMemory {
            requested,
            available: 0, // filled in once, by the caller that gives up
        })
    }

    /// Releases the empty span at page `p` (state `st`) to the page pool: closes its
    /// block words (each CAS fails if a block was taken meanwhile, and then the span
    /// is reopened and kept), then frees the page. Returns whether it did.
    fn release_span(&self, p: usize, st: u64) -> bool {
        let c = class(st);
        let tag = tag_of(st);
        let freed = next(st, KIND_FREE, 0, 0);
        let Ok(guard) = self.intend(Intent {
            kind: INTENT_RELEASE,
            page: p as u32,
            pages: 1,
            expected: freed,
        }) else {
            return false;
        };
        crate::fail_point!("fl.release.intent");
        let line = self.line(p);
        let nw = words_of(c);
        let mut closed = 0;
        while closed < nw {
            let w = &line[PM_WORDS + closed];
            if w.compare_exchange(
                open_empty(closed, c, tag),
                CLOSED,
                Ordering::SeqCst,
                Ordering::Relaxed,
            )
            .is_err()
            {
                break;
            }
            closed += 1;
            crate::fail_point!("fl.release.closed_word");
        }
        if closed < nw
            || self
                .state(p)
                .compare_exchange(st, freed, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            for w in 0..closed {
                let _ = line[PM_WORDS + w].compare_exchange(
                    CLOSED,
                    open_empty(w, c, tag),
                    Ordering::SeqCst,
                    Ordering::Relaxed,
                );
            }
            return false;
        }
        crate::fail_point!("fl.release.freed");
        Self::clear_bit(self.avail(c), p);
        Self::clear_bit(self.page_hints(), p);
        drop(guard);
        true
    }

    /// After a block of span `p` was freed (its word now `now`): keep the span's hint
    /// set, and release the span if it became empty and is not this handle's current
    /// span of its class.
    #[inline]
    fn after_small_free(&self, p: usize, st: u64, w: usize, now: u64) {
        let c = class(st);
        Self::set_bit(self.avail(c), p);
        let tag = tag_of(st);
        if now != open_empty(w, c, tag) {
            return;
        }
        let cur = self.cur[c].load(Ordering::Relaxed);
        if cur == (tag << BITS) | (p as u64 + 1) {
            return; // keep our current span: the next allocation reuses it
        }
        if self.is_empty_span(p, c, tag) {
            self.release_span(p, st);
        }
    }

    #[inline]
    fn free_small(&self, p: usize, st: u64, within: u64, off: u64) -> Result<(), FreeError> {
        let c = class(st);
        if c >= NCLASS {
            return Err(FreeError::Corrupted {
                what: "span class out of range",
            });
        }
        let size = u64::from(SIZE_CLASSES[c]);
        let i = block_index(within, c);
        if within != i * size || i >= cap_of(c) {
            return Err(FreeError::NotBlockStart { offset: off });
        }
        let tag = tag_of(st);
        let (w, bit) = ((i / BITS) as usize, 1u64 << (i % BITS));
        let word = &self.line(p)[PM_WORDS + w];
        let mut v = word.load(Ordering::Relaxed);
        if let Some(slot) = self.my_cache() {
            // The cheap check at free time: the block must be allocated (its bit
            // set) and not already in this handle's cache.
            if v >> BITS != tag || v & bit == 0 {
                return Err(FreeError::DoubleFree { offset: off });
            }
            // A block in any handle's cache carries a mark in its first word.
            let Some(mark) = self.mark(off) else {
                return Err(FreeError::OutOfRange { offset: off });
            };
            if mark.load(Ordering::Relaxed) == self.key ^ off {
                return Err(FreeError::DoubleFree { offset: off });
            }
            let pushed = cache::inside(self, slot, || {
                let m = self.mag(slot, c);
                if m.len() == m.depth() {
                    self.flush_class(slot, c, self.depth / 2);
                }
                m.push(off, mark, self.key, || {
                    crate::fail_point!("fl.cache.push");
                })
            });
            if pushed == Some(true) {
                return Ok(());
            }
            // Another process is emptying our cache: the shared path below.
        }
        for _ in 0..RETRY_LIMIT {
            // A tag mismatch: the span was released (and maybe reused) since `st`
            // was read, so this block was not live in it.
            if v >> BITS != tag || v & bit == 0 {
                return Err(FreeError::DoubleFree { offset: off });
            }
            crate::fail_point!("fl.free.before_clear");
            match word.compare_exchange_weak(v, v & !bit, Ordering::SeqCst, Ordering::Relaxed) {
                Ok(_) => {
                    crate::fail_point!("fl.free.cleared");
                    self.after_small_free(p, st, w, v & !bit);
                    return Ok(());
                }
                Err(now) => v = now,
            }
        }
        Err(FreeError::Corrupted {
            what: "free retried too often",
        })
    }

    // ---------------------------------------------------------------- caches

    /// This handle's slot, if the calling thread owns the handle's cache.
    #[inline(always)]
    fn my_cache(&self) -> Option<usize> {
        if self.depth == 0 {
            return None;
        }
        self.cache_owner.slot(&self.member, &self.seg, self.ino)
    }

    #[inline]
    fn cache_base(&self, slot: usize) -> usize {
        self.cache_base0 + slot * self.cache_stride
    }

    /// Slot `slot`'s cache of class `c`: `[count, offsets ...]`.
    #[inline(always)]
    fn mag(&self, slot: usize, c: usize) -> Mag<'_> {
        let start = self.cache_base(slot) + LINE as usize + c * (self.depth + 1);
        Mag::new(&self.meta()[start..start + self.depth + 1])
    }

    /// Slot `slot`'s cache gate (see [`Gate`]).
    #[inline]
    fn gate(&self, slot: usize) -> Gate<'_> {
        Gate::new(&self.meta()[self.cache_base(slot)..])
    }

    /// The first word of the block at `off` (any 16-aligned offset in the data region).
    #[inline(always)]
    fn mark(&self, off: u64) -> Option<&AtomicU64> {
        if !self.in_data(off) || off % 16 != 0 {
            return None;
        }
        let addr = self.data_addr + (off - self.data_off) as usize;
        // SAFETY:
        // - `data_addr` is the start of the data region in this mapping (`ptr_at`
        //   checked the whole region at open) and `off` lies inside it, 16 bytes
        //   before its end at least (the region is whole pages, `off` 16-aligned), so
        //   the 8 bytes at `addr` are in bounds and 8-aligned;
        // - any bit pattern is a valid AtomicU64; marks are only accessed atomically
        //   by this allocator, and a block's owner never holds a reference to a
        //   cached (free) block;
        // - the mapping is owned by `self.seg` and the reference borrows `self`.
        Some(unsafe { &*(addr as *const AtomicU64) })
    }

    /// The allocation fast path: pops a block of class `c` off this thread's cache
    /// with plain loads and stores. `None` (not the owner thread, empty cache, a
    /// gate that is not open, an entry that is no block offset) sends the caller to
    /// `alloc_small`, which handles every case.
    #[inline(always)]
    fn pop_cached(&self, c: usize) -> Option<Offset> {
        let base = self.cache_owner.base()?;
        // SAFETY: `base` is the address of our slot's cache words (see `fast_mag`).
        let (gate, m) = unsafe { self.fast_mag(base, c) };
        if !gate.enter_fast() {
            return None;
        }
        // An entry is only trusted as a 16-aligned offset inside the data region
        // (what `mark` checks).
        let off = m.pop(
            |off| self.mark(off),
            || {
                crate::fail_point!("fl.cache.pop");
            },
        );
        gate.leave();
        off.map(Offset::new)
    }

    /// The free fast path: pushes a small block onto this thread's cache after the
    /// same checks as `free_small` (the span's state, the block start, its bit set
    /// under the span's tag, no cache mark). False (any check failed, not the owner
    /// thread, a full cache, a gate that is not open) sends the caller to `free_checked`,
    /// which repeats every check and reports the precise error.
    #[inline(always)]
    fn push_cached(&self, off: u64) -> bool {
        let Some(base) = self.cache_owner.base() else {
            return false;
        };
        // (Also refuses the null offset: the data region starts past the header.)
        if !self.in_data(off) {
            return false;
        }
        let (p, within) = self.locate(off - self.data_off);
        // SAFETY: `off` is in the data region, which is `pages` whole pages (checked
        // at open), so `p < pages`.
        let line = unsafe { self.line_unchecked(p) };
        let st = line[PM_STATE].load(Ordering::Acquire);
        let c = class(st);
        if kind(st) != KIND_SMALL || c >= NCLASS {
            return false;
        }
        let i = block_index(within, c);
        if within != i * u64::from(SIZE_CLASSES[c]) || i >= CAP[c] {
            return false;
        }
        let (w, bit) = ((i / BITS) as usize, 1u64 << (i % BITS));
        let Some(word) = line.get(PM_WORDS + w) else {
            return false;
        };
        let v = word.load(Ordering::Relaxed);
        if v >> BITS != tag_of(st) || v & bit == 0 {
            return false;
        }
        // SAFETY: `off` is in the data region and a block start of a class whose
        // size is a multiple of 16, in a page-aligned region: 16-aligned.
        let mark = unsafe { self.mark_at(off) };
        if mark.load(Ordering::Relaxed) == self.key ^ off {
            return false;
        }
        // SAFETY: `base` is the address of our slot's cache words (see `fast_mag`).
        let (gate, m) = unsafe { self.fast_mag(base, c) };
        if !gate.enter_fast() {
            return false;
        }
        let pushed = m.push(off, mark, self.key, || {
            crate::fail_point!("fl.cache.push");
        });
        gate.leave();
        pushed
    }

    /// The gate and class `c`'s cache `[count, offsets ...]` of the slot whose
    /// cache words start at `base`.
    ///
    /// # Safety
    /// `base` must come from `self.cache_owner.base()` (the address of one registry
    /// slot's `cache_stride(depth)` cache words inside our metadata mapping), and
    /// `c < NCLASS`.
    #[inline(always)]
    unsafe fn fast_mag(&self, base: *const AtomicU64, c: usize) -> (Gate<'_>, Mag<'_>) {
        // SAFETY: the slot's cache words lie in our mapping (caller's contract),
        // which lives as long as `self`, and open with the gate's two words.
        let gate = unsafe { Gate::at(base) };
        // SAFETY: class `c`'s `depth + 1` words start at `LINE + c * (depth + 1)`
        // and end at most at `cache_stride(depth)` since `c < NCLASS`: inside the
        // slot's cache words, valid AtomicU64s for any bit pattern, borrowed no
        // longer than `self`, which owns the mapping.
        let mag = unsafe {
            std::slice::from_raw_parts(
                base.wrapping_add(LINE as usize + c * (self.depth + 1)),
                self.depth + 1,
            )
        };
        (gate, Mag::new(mag))
    }

    /// Page `p`'s metadata line, without the bounds checks of `page_line`.
    ///
    /// # Safety
    /// `p < self.pages`.
    #[inline(always)]
    unsafe fn line_unchecked(&self, p: usize) -> &[AtomicU64] {
        debug_assert!(p < self.pages);
        let start = self.lines_base + p * LINE as usize;
        // SAFETY: the lines of all `pages` pages lie in the metadata region
        // (`meta_words_for`, checked at open, counts them), so for `p < pages` the
        // `LINE` words at `lines_base + p * LINE` are in bounds of `meta()`.
        unsafe { self.meta().get_unchecked(start..start + LINE as usize) }
    }

    /// The first word of the block at `off`, without the checks of `mark`.
    ///
    /// # Safety
    /// `off` must be 16-aligned and inside the data region (`in_data`).
    #[inline(always)]
    unsafe fn mark_at(&self, off: u64) -> &AtomicU64 {
        debug_assert!(self.in_data(off) && off % 16 == 0);
        let addr = self.data_addr + (off - self.data_off) as usize;
        // SAFETY: as in `mark`, whose checks the caller's contract replaces: the 8
        // bytes at `addr` lie in the data region of this mapping, 8-aligned; any bit
        // pattern is a valid AtomicU64, marks are only accessed atomically, and the
        // mapping, owned by `self.seg`, outlives the borrow of `self`.
        unsafe { &*(addr as *const AtomicU64) }
    }

    /// `free` past the cache fast path: every check again, with its precise error.
    #[inline(never)]
    fn free_checked(&self, offset: Offset) -> Result<(), FreeError> {
        if offset.is_null() {
            return Err(FreeError::Null);
        }
        let off = offset.get();
        // (The data-region bounds, validated at open, kept in the handle.)
        if !self.in_data(off) {
            return Err(FreeError::OutOfRange { offset: off });
        }
        let (p, within) = self.locate(off - self.data_off);
        let st = self.state(p).load(Ordering::Acquire);
        match kind(st) {
            KIND_SMALL => self.free_small(p, st, within, off),
            KIND_LARGE if within == 0 => self.free_large(p, st, off),
            KIND_FREE if within == 0 => Err(FreeError::DoubleFree { offset: off }),
            _ => Err(FreeError::NotBlockStart { offset: off }),
        }
    }

    #[inline(always)]
    fn in_data(&self, off: u64) -> bool {
        off >= self.data_off && off < self.data_end
    }

    /// Blocks held in slot `slot`'s cache (as its counts say).
    fn cached_in(&self, slot: usize) -> u64 {
        (0..NCLASS).map(|c| self.mag(slot, c).len() as u64).sum()
    }

    /// Empties slot `slot`'s cache of every class (ours, or a dead handle's whose
    /// slot lock we hold). Returns how many blocks went back.
    fn flush_cache(&self, slot: usize) -> usize {
        (0..NCLASS)
            .map(|c| self.mag(slot, c).len() - self.flush_class(slot, c, 0))
            .sum()
    }

    /// Returns the cached blocks of class `c` above the first `keep` to the shared
    /// bitmaps, one read-modify-write per block word (see `Mag::flush` for the
    /// crash ordering). Returns the new count.
    fn flush_class(&self, slot: usize, c: usize, keep: usize) -> usize {
        let size = u64::from(SIZE_CLASSES[c]);
        self.mag(slot, c).flush(
            keep,
            |o| (o >> PAGE_SHIFT, (o & (PAGE - 1)) / size / BITS),
            |o| self.mark(o),
            |group| self.return_blocks(c, group),
            || {
                crate::fail_point!("fl.cache.flush");
            },
        )
    }

    /// Clears the bits of `offs` (blocks of class `c` in one block word) with one
    /// CAS; bits already clear are double frees found late.
    fn return_blocks(&self, c: usize, offs: &[u64]) {
        let l = *self.seg.layout();
        let Some(&first) = offs.first() else { return };
        if !self.in_data(first) {
            return; // a scribbled entry: drop it
        }
        let (p, _) = self.locate(first - l.data_offset);
        let st = self.state(p).load(Ordering::Acquire);
        if kind(st) != KIND_SMALL || class(st) != c {
            self.late_double_frees
                .fetch_add(offs.len() as u64, Ordering::Relaxed);
            return;
        }
        let size = u64::from(SIZE_CLASSES[c]);
        let mut mask = 0u64;
        let mut w = usize::MAX;
        for &off in offs {
            let within = off.wrapping_sub(self.page_offset(p));
            let i = within / size;
            if within >= PAGE || within % size != 0 || i >= cap_of(c) {
                continue;
            }
            if w == usize::MAX {
                w = (i / BITS) as usize;
            }
            if (i / BITS) as usize == w {
                mask |= 1 << (i % BITS);
            }
        }
        if mask == 0 {
            return;
        }
        let tag = tag_of(st);
        let word = &self.line(p)[PM_WORDS + w];
        let mut v = word.load(Ordering::Relaxed);
        for _ in 0..RETRY_LIMIT {
            if v >> BITS != tag {
                self.late_double_frees
                    .fetch_add(u64::from(mask.count_ones()), Ordering::Relaxed);
                return;
            }
            match word.compare_exchange_weak(v, v & !mask, Ordering::SeqCst, Ordering::Relaxed) {
                Ok(_) => {
                    let missing = (mask & !v).count_ones();
                    if missing != 0 {
                        self.late_double_frees
                            .fetch_add(u64::from(missing), Ordering::Relaxed);
                    }
                    self.after_small_free(p, st, w, v & !mask);
                    return;
                }
                Err(now) => v = now,
            }
        }
    }

    /// The cache of class `c` was empty, and one block was just taken through the
    /// shared path (inside the gate): takes up to [`BATCH`] more from the current
    /// span's block words with one CAS into the cache.
    fn refill_inside(&self, slot: usize, c: usize) {
        let m = self.mag(slot, c);
        let want = (self.depth / 2).saturating_sub(m.len()).min(BATCH as usize) as u32;
        let cur = self.cur[c].load(Ordering::Relaxed);
        if want == 0 || cur == 0 {
            return;
        }
        let (p, tag) = ((cur & BITS_MASK) as usize - 1, cur >> BITS);
        let Some(line) = self.page_line(p) else {
            return;
        };
        for w in 0..words_of(c) {
            let taken = bitmap::claim_lowest(&line[PM_WORDS + w], want, |v| {
                (v >> BITS == tag).then_some(!v & BITS_MASK)
            });
            if let Some(mask) = taken {
                crate::fail_point!("fl.cache.refill");
                // Highest first, so that pops hand blocks out in ascending order.
                let (base, size) = (self.page_offset(p), u64::from(SIZE_CLASSES[c]));
                let offs = bitmap::bits_high_first(mask)
                    .map(|b| base + (w as u64 * BITS + u64::from(b)) * size);
                m.append(offs, |o| self.mark(o), self.key);
                return;
            }
        }
    }

    /// Out of memory after a repair: asks other handles to flush their caches and
    /// retries `f` for a bounded time (20 ms) while any cache still holds blocks.
    fn retry_after_flushes<T>(
        &self,
        mut f: impl FnMut() -> Result<T, AllocError>,
    ) -> Result<T, AllocError> {
        let me = self.member.current();
        let mut last = f();
        for round in 0..20 {
            if !matches!(last, Err(AllocError::OutOfMemory { .. }))
                || !cache::request_flushes(self, me)
            {
                break;
            }
            // Idle owners never come to honour a request: take their caches.
            if round % 8 == 0 {
                let n = cache::steal_idle(self, me);
                self.stolen.fetch_add(n as u64, Ordering::Relaxed);
            } else {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            // Flushed blocks may have emptied spans (some handle's current one):
            // return those to the page pool before trying again.
            self.repair();
            last = f();
        }
        match last {
            Err(AllocError::OutOfMemory { requested, .. }) => Err(AllocError::OutOfMemory {
                requested,
                available: self.available_bytes(),
            }),
            r => r,
        }
    }

    /// Double frees that a cache flush found (after the second `free` had returned
    /// `Ok`): see the module docs for what is detected when.
    pub fn late_double_frees(&self) -> u64 {
        self.late_double_frees.load(Ordering::Relaxed)
    }

    /// Blocks this handle took back from other handles' caches when it ran out
    /// of memory, while their owners were idle (see the module docs, "Caches").
    pub fn stolen_blocks(&self) -> u64 {
        self.stolen.load(Ordering::Relaxed)
    }

    // ---------------------------------------------------------------- large blocks

    fn alloc_large(&self, size: usize) -> Result<Offset, AllocError> {
        let n = (size as u64).div_ceil(PAGE);
        if n > self.pages as u64 {
            return Err(AllocError::TooLarge {
                requested: size as u64,
                max: self.pages as u64 * PAGE,
            });
        }
        let n = n as usize;
        let me = self.my_slot()?;
        match self.try_alloc_large(size, n, me) {
            Err(AllocError::OutOfMemory { .. }) => {
                self.repair();
                self.retry_after_flushes(|| self.try_alloc_large(size, n, me))
            }
            r => r,
        }
    }

    fn try_alloc_large(&self, size: usize, n: usize, me: usize) -> Result<Offset, AllocError> {
        let hints = self.page_hints();
        for _ in 0..256 {
            let Some(s) = bitmap::find_clear_run(hints, n).filter(|&s| s + n <= self.pages) else {
                break;
            };
            if !bitmap::claim_run(hints, s, n) {
                continue;
            }
            let head = self.state(s).load(Ordering::Acquire);
            if kind(head) != KIND_FREE {
                self.unhint_free_pages(s, n);
                continue;
            }
            let new_head = next(head, KIND_LARGE, 0, run_aux(me, n as u64));
            let guard = self.intend(Intent {
                kind: INTENT_LARGE,
                page: s as u32,
                pages: n as u32,
                expected: new_head,
            })?;
            crate::fail_point!("fl.large.intent");
            if self
                .state(s)
                .compare_exchange(head, new_head, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
            {
                self.unhint_free_pages(s, n);
                continue;
            }
            crate::fail_point!("fl.large.head");
            if self.claim_interiors(s, 1, n, new_head) {
                drop(guard);
                return Ok(Offset::new(self.page_offset(s)));
            }
            self.undo_large(s, n, new_head);
            drop(guard);
        }
        Err(AllocError::OutOfMemory {
            requested: size as u64,
            available: 0, // filled in once, by the caller that gives up
        })
    }

    /// Marks pages `s + from .. s + to` interior pages of the block whose head (at
    /// `s`) has state `head`; on a page that is not free, undoes its own marks and
    /// returns false.
    fn claim_interiors(&self, s: usize, from: usize, to: usize, head: u64) -> bool {
        for d in from..to {
            let ps = self.state(s + d);
            let st = ps.load(Ordering::Acquire);
            if kind(st) != KIND_FREE
                || ps
                    .compare_exchange(
                        st,
                        next(st, KIND_INTERIOR, 0, interior_aux(head, d as u64)),
                        Ordering::AcqRel,
                        Ordering::Relaxed,
                    )
                    .is_err()
            {
                self.free_interiors(s, from, d, head);
                return false;
            }
            crate::fail_point!("fl.large.interior");
        }
        true
    }

    /// Frees the interior pages `s + from .. s + to` of the block whose head had
    /// state `head` (they point at `s` with that head's generation); clears their
    /// page hints.
    fn free_interiors(&self, s: usize, from: usize, to: usize, head: u64) -> usize {
        let mut n = 0;
        for d in from..to.min(self.pages - s) {
            let ps = self.state(s + d);
            let st = ps.load(Ordering::Acquire);
            if kind(st) != KIND_INTERIOR || aux(st) != interior_aux(head, d as u64) {
                continue;
            }
            if ps
                .compare_exchange(
                    st,
                    next(st, KIND_FREE, 0, 0),
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok()
            {
                Self::clear_bit(self.page_hints(), s + d);
                n += 1;
            }
        }
        n
    }

    /// Rolls back a large claim whose head state is `head` (as installed): frees its
    /// interior pages, then the head.
    fn undo_large(&self, s: usize, n: usize, head: u64) -> usize {
        let mut released = self.free_interiors(s, 1, n, head);
        if self
            .state(s)
            .compare_exchange(
                head,
                next(head, KIND_FREE, 0, 0),
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .is_ok()
        {
            Self::clear_bit(self.page_hints(), s);
            released += 1;
        }
        released
    }

    /// Clears the page hints of the free pages among `s..s+n` (after a failed claim).
    fn unhint_free_pages(&self, s: usize, n: usize) {
        for p in s..s + n {
            if kind(self.state(p).load(Ordering::Acquire)) == KIND_FREE {
                Self::clear_bit(self.page_hints(), p);
            }
        }
    }

    /// Extends the large block at page `s` over the free pages right after it.
    fn grow_large_in_place(&self, s: usize, new_size: usize) -> bool {
        let head = self.state(s);
        let st = head.load(Ordering::Acquire);
        let n = run_len(st) as usize;
        if kind(st) != KIND_LARGE || n == 0 || s + n > self.pages {
            return false;
        }
        let want = (new_size as u64).div_ceil(PAGE) as usize;
        if want <= n {
            return true;
        }
        if s + want > self.pages || !bitmap::claim_run(self.page_hints(), s + n, want - n) {
            return false;
        }
        let grown = (st & !0xFF_FFFF) | want as u64;
        let Ok(guard) = self.intend(Intent {
            kind: INTENT_GROW,
            page: (s + n) as u32,
            pages: (want - n) as u32,
            expected: grown,
        }) else {
            self.unhint_free_pages(s + n, want - n);
            return false;
        };
        crate::fail_point!("fl.grow.intent");
        if !self.claim_interiors(s, n, want, st) {
            self.unhint_free_pages(s + n, want - n);
            return false;
        }
        crate::fail_point!("fl.grow.interiors");
        // The head keeps its generation: handles to the block stay valid.
        if head
            .compare_exchange(st, grown, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            self.free_interiors(s, n, want, st);
            return false;
        }
        drop(guard);
        true
    }

    fn free_large(&self, s: usize, st: u64, offset: u64) -> Result<(), FreeError> {
        let n = run_len(st) as usize;
        if n == 0 || s + n > self.pages {
            return Err(FreeError::Corrupted {
                what: "large block length out of range",
            });
        }
        // Only one of two racing frees wins this CAS: the other sees a double free.
        if self
            .state(s)
            .compare_exchange(
                st,
                next(st, KIND_FREE, 0, 0),
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .is_err()
        {
            return Err(FreeError::DoubleFree { offset });
        }
        crate::fail_point!("fl.large_free.head");
        // Interior pages now point at a free head: any repair pass may free them
        // too (each page's CAS decides who), so a crash here loses nothing.
        self.free_interiors(s, 1, n, st);
        Self::clear_bit(self.page_hints(), s);
        Ok(())
    }

    // ---------------------------------------------------------------- repair

    /// The repair pass; see [`FreeListAllocator::reclaim`].
    fn repair(&self) -> Reclaimed {
        let me = self.member.current();
        let mut r = Reclaimed::default();
        // Our own cache first (only its owner thread may touch it).
        if let Some(slot) = self.my_cache() {
            cache::flush_own(self, slot);
        }
        // Dead slots whose records did not fit the orphan list keep them: park
        // more after each drain, while draining makes progress.
        for _round in 0..process::SLOTS {
            let mut cached = 0;
            let (freed, pending) = process::reclaim_dead(&self.seg, me, &mut |slot| {
                if self.depth == 0 {
                    return true;
                }
                let (done, n) = cache::flush_dead(self, slot);
                cached += n;
                done
            });
            r.cached_blocks += cached;
            r.dead_slots += freed;
            let before = r.intents;
            process::drain_orphans(&self.seg, |it| {
                crate::fail_point!("fl.repair.intent");
                let done = self.finish_intent(it, me);
                if let Some(pages) = done {
                    r.intents += 1;
                    r.pages += pages;
                }
                done.is_some()
            });
            if !pending || r.intents == before {
                break;
            }
        }
        let live = process::live_intents(&self.seg, me);
        let covered = |p: usize, intents: &[Intent]| intents.iter().any(|i| i.covers(p));
        crate::fail_point!("fl.repair.sweep");
        for p in 0..self.pages {
            let st = self.state(p).load(Ordering::Acquire);
            match kind(st) {
                KIND_FREE if !covered(p, &live) => Self::clear_bit(self.page_hints(), p),
                KIND_SMALL if class(st) < NCLASS => {
                    Self::set_bit(self.page_hints(), p);
                    let (c, tag) = (class(st), tag_of(st));
                    if self.is_empty_span(p, c, tag) {
                        r.pages += usize::from(self.release_span(p, st));
                    } else if self.has_free(p, c, tag) {
                        Self::set_bit(self.avail(c), p);
                    }
                }
                KIND_LARGE => Self::set_bit(self.page_hints(), p),
                KIND_INTERIOR => {
                    let d = run_len(st) as usize;
                    let head_ok = || {
                        p.checked_sub(d).is_some_and(|h| {
                            let hs = self.state(h).load(Ordering::Acquire);
                            d > 0
                                && kind(hs) == KIND_LARGE
                                && run_len(hs) as usize > d
                                && aux(st) == interior_aux(hs, d as u64)
                        })
                    };
                    if head_ok() {
                        Self::set_bit(self.page_hints(), p);
                        continue;
                    }
                    // An orphan, unless a live operation is still building or
                    // tearing down its block (a fresh look: intents change).
                    if covered(p, &process::live_intents(&self.seg, me)) {
                        continue;
                    }
                    // ...or a grow that finished since the head was read above: it
                    // extends the head before it clears its intent, so a look at the
                    // head after the intents sees the new length.
                    if head_ok() {
                        Self::set_bit(self.page_hints(), p);
                        continue;
                    }
                    if self
                        .state(p)
                        .compare_exchange(
                            st,
                            next(st, KIND_FREE, 0, 0),
                            Ordering::AcqRel,
                            Ordering::Relaxed,
                        )
                        .is_ok()
                    {
                        Self::clear_bit(self.page_hints(), p);
                        r.pages += 1;
                    }
                }
                _ => {}
            }
        }
        r
    }

    /// Finishes or rolls back one operation a dead handle had in flight. Returns the
    /// pages it returned, or `None` if a live operation is working on the same pages
    /// (the record stays parked for a later pass).
    fn finish_intent(&self, it: Intent, me: Option<usize>) -> Option<usize> {
        let p = it.page as usize;
        if p >= self.pages || it.pages == 0 || p + it.pages as usize > self.pages {
            return Some(0); // a scribbled record: nothing we can trust in it
        }
        let st = self.state(p).load(Ordering::Acquire);
        match it.kind {
            // `SPAN_REPAIRED` set: a repair already decided about block 0 (this
            // record is replayed: that repair died, or runs beside us).
            INTENT_NEW_SPAN if st == it.expected || st == it.expected | SPAN_REPAIRED => {
                let (c, tag) = (class(st), tag_of(st));
                let line = self.line(p);
                if c >= NCLASS {
                    return Some(0);
                }
                // Words it never initialised are still closed: open them (read
                // first, then check nobody live works here, then reopen only those).
                let closed: Vec<usize> = (0..words_of(c))
                    .filter(|&w| line[PM_WORDS + w].load(Ordering::SeqCst) == CLOSED)
                    .collect();
                let w0 = &line[PM_WORDS];
                let v0 = w0.load(Ordering::SeqCst);
                if process::live_intents(&self.seg, me)
                    .iter()
                    .any(|i| i.covers(p))
                {
                    return None;
                }
                // Block 0 is set for the dead caller, which never got it (the intent
                // is cleared before returning), iff the caller stored word 0. Nothing
                // changes that until a repair reopens words, so the first repair
                // decides, and marks the state (same generation: the tag, and so
                // every block, stays valid) before it reopens anything. A replay
                // (that repair died, or runs beside us) sees the mark and never
                // touches block 0, which may have a new holder by then.
                let give_back =
                    st == it.expected && !closed.contains(&0) && v0 >> BITS == tag && v0 & 1 == 1;
                if st == it.expected
                    && self
                        .state(p)
                        .compare_exchange(
                            st,
                            st | SPAN_REPAIRED,
                            Ordering::AcqRel,
                            Ordering::Relaxed,
                        )
                        .is_err()
                {
                    return None; // changed under us: look again in a later pass
                }
                for &w in &closed {
                    let _ = line[PM_WORDS + w].compare_exchange(
                        CLOSED,
                        open_empty(w, c, tag),
                        Ordering::SeqCst,
                        Ordering::Relaxed,
                    );
                }
                if give_back {
                    let _ = w0.fetch_and(!1, Ordering::SeqCst);
                }
                Self::set_bit(self.avail(c), p);
                let now = st | SPAN_REPAIRED;
                Some(usize::from(
                    self.is_empty_span(p, c, tag) && self.release_span(p, now),
                ))
            }
            INTENT_RELEASE
                if kind(st) == KIND_SMALL && next(st, KIND_FREE, 0, 0) == it.expected =>
            {
                let (c, tag) = (class(st), tag_of(st));
                if c >= NCLASS {
                    return Some(0);
                }
                let line = self.line(p);
                let closed: Vec<usize> = (0..words_of(c))
                    .filter(|&w| line[PM_WORDS + w].load(Ordering::SeqCst) == CLOSED)
                    .collect();
                if process::live_intents(&self.seg, me)
                    .iter()
                    .any(|i| i.covers(p))
                {
                    return None;
                }
                for &w in &closed {
                    let _ = line[PM_WORDS + w].compare_exchange(
                        CLOSED,
                        open_empty(w, c, tag),
                        Ordering::SeqCst,
                        Ordering::Relaxed,
                    );
                }
                Some(usize::from(
                    self.is_empty_span(p, c, tag) && self.release_span(p, st),
                ))
            }
            INTENT_RELEASE if st == it.expected => {
                // Released; only its hint may still say "in use".
                Self::clear_bit(self.page_hints(), p);
                Some(0)
            }
            INTENT_LARGE if st == it.expected => {
                Some(self.undo_large(p, it.pages as usize, it.expected))
            }
            // A grow's interior pages past the head's length are orphans that the
            // sweep frees; every other record names a step that never happened.
            _ => Some(0),
        }
    }

    /// Class for a small request, honouring `align` (None: use whole pages).
    #[inline]
    fn class_for(size: usize, align: usize) -> Option<usize> {
        let c = CLASS_OF[size.div_ceil(16)] as usize;
        if align <= 16 {
            return Some(c);
        }
        (c..NCLASS).find(|&c| SIZE_CLASSES[c] as usize % align == 0)
    }

    /// The page and in-page offset of a data-region offset.
    #[inline]
    fn locate(&self, rel: u64) -> (usize, u64) {
        ((rel >> PAGE_SHIFT) as usize, rel & (PAGE - 1))
    }
}

impl cache::Caches for FreeListAllocator {
    fn gate(&self, slot: usize) -> Gate<'_> {
        FreeListAllocator::gate(self, slot)
    }
    fn cached_in(&self, slot: usize) -> u64 {
        FreeListAllocator::cached_in(self, slot)
    }
    fn flush_cache(&self, slot: usize) -> usize {
        FreeListAllocator::flush_cache(self, slot)
    }
    fn cache_ino(&self) -> u64 {
        self.ino
    }
    fn mark(&self, off: u64) -> Option<&AtomicU64> {
        FreeListAllocator::mark(self, off)
    }
    fn mark_key(&self) -> u64 {
        self.key
    }
}

impl Drop for FreeListAllocator {
    fn drop(&mut self) {
        // Our cache goes back first (dropping needs `&mut self`: no thread uses it).
        if self.depth != 0 {
            if let Some(slot) = self.member.current() {
                cache::drop_own(self, &self.cache_owner, slot);
            }
        }
        // Our current spans stay on hold only while we may allocate from them.
        for c in 0..NCLASS {
            let cur = self.cur[c].swap(0, Ordering::Relaxed);
            if cur == 0 {
                continue;
            }
            let p = (cur & BITS_MASK) as usize - 1;
            if p >= self.pages {
                continue;
            }
            let st = self.state(p).load(Ordering::Acquire);
            if kind(st) == KIND_SMALL
                && class(st) == c
                && tag_of(st) == cur >> BITS
                && self.is_empty_span(p, c, tag_of(st))
            {
                self.release_span(p, st);
            }
        }
        self.member.leave(&self.seg);
    }
}

// SAFETY: spans and runs are claimed in page metadata outside the data region (the
// multi-process suites check that live blocks never overlap); its checks read only
// that metadata.
unsafe impl ShmAllocator for FreeListAllocator {
    const KIND: AllocatorKind = AllocatorKind::FreeList;

    fn liveness_token(&self) -> u32 {
        self.member.token(&self.seg)
    }

    fn token_alive(&self, token: u32) -> bool {
        self.member.is_alive(&self.seg, token)
    }

    fn segment(&self) -> &Segment {
        &self.seg
    }

    #[inline]
    fn allocate_aligned(&self, size: usize, align: usize) -> Result<Offset, AllocError> {
        check_request(size, align)?;
        if size <= SMALL_MAX {
            if let Some(c) = Self::class_for(size, align) {
                if let Some(off) = self.pop_cached(c) {
                    return Ok(off);
                }
                return self.alloc_small(c, size as u64);
            }
        }
        self.alloc_large(size)
    }

    #[inline]
    fn check_range(&self, offset: Offset, len: u64) -> Result<(), AccessError> {
        self.block_start_of(offset, len).map(|_| ())
    }

    #[inline]
    fn block_start_of(&self, offset: Offset, len: u64) -> Result<Option<Offset>, AccessError> {
        let rel = data_relative(&self.seg, offset, len)?;
        let not_alloc = AccessError::NotAllocated {
            offset: offset.get(),
            len,
        };
        let (p, within) = self.locate(rel);
        let line = self.line(p);
        let st = line[PM_STATE].load(Ordering::Acquire);
        match kind(st) {
            KIND_SMALL => {
                let c = class(st);
                if c >= NCLASS {
                    return Err(AccessError::Corrupted {
                        what: "span class out of range",
                    });
                }
                let size = u64::from(SIZE_CLASSES[c]);
                let i = block_index(within, c);
                if i >= cap_of(c) || within + len > (i + 1) * size {
                    return Err(not_alloc);
                }
                let v = line[PM_WORDS + (i / BITS) as usize].load(Ordering::Acquire);
                if v >> BITS != tag_of(st) || v & (1 << (i % BITS)) == 0 {
                    return Err(not_alloc);
                }
                // A block in some handle's cache is free to its users.
                let start = self.page_offset(p) + i * size;
                if self.depth != 0 && cache::Caches::is_cached(self, start) {
                    return Err(not_alloc);
                }
                Ok(Some(Offset::new(start)))
            }
            KIND_LARGE | KIND_INTERIOR => {
                let (start, dist) = if kind(st) == KIND_LARGE {
                    (p, 0)
                } else {
                    let d = run_len(st) as usize;
                    (p.checked_sub(d).ok_or(not_alloc.clone())?, d)
                };
                let st0 = self.line(start)[PM_STATE].load(Ordering::Acquire);
                let n = run_len(st0);
                if kind(st0) != KIND_LARGE || (dist as u64) >= n {
                    return Err(not_alloc);
                }
                if (dist as u64) * PAGE + within + len > n * PAGE {
                    return Err(not_alloc);
                }
                Ok(Some(Offset::new(self.page_offset(start))))
            }
            _ => Err(not_alloc),
        }
    }

    fn check_block_start(&self, offset: Offset) -> Result<(), AccessError> {
        let rel = data_relative(&self.seg, offset, 1)?;
        let not_start = AccessError::NotBlockStart {
            offset: offset.get(),
        };
        let (p, within) = self.locate(rel);
        let line = self.line(p);
        let st = line[PM_STATE].load(Ordering::Acquire);
        match kind(st) {
            KIND_SMALL => {
                let c = class(st);
                if c >= NCLASS {
                    return Err(AccessError::Corrupted {
                        what: "span class out of range",
                    });
                }
                let i = block_index(within, c);
                if i >= cap_of(c) || within != i * u64::from(SIZE_CLASSES[c]) {
                    return Err(not_start);
                }
                let v = line[PM_WORDS + (i / BITS) as usize].load(Ordering::Acquire);
                if v >> BITS != tag_of(st) || v & (1 << (i % BITS)) == 0 {
                    return Err(not_start);
                }
                if self.depth != 0 && cache::Caches::is_cached(self, offset.get()) {
                    return Err(not_start);
                }
                Ok(())
            }
            KIND_LARGE if within == 0 => Ok(()),
            _ => Err(not_start),
        }
    }

    fn available_bytes(&self) -> u64 {
        self.stats().free_bytes
    }

    fn used_bytes(&self) -> u64 {
        self.stats().live_bytes
    }

    /// Scans the page metadata: O(pages). Not for hot paths. An empty span counts
    /// as a whole free page (it is returned to the pool on demand).
    fn stats(&self) -> Stats {
        let mut classes: Vec<ClassStats> = SIZE_CLASSES
            .iter()
            .map(|&s| ClassStats {
                block_size: u64::from(s),
                ..ClassStats::default()
            })
            .collect();
        // Blocks in the caches (of every slot) count as free, not live.
        let mut cached_in: std::collections::HashMap<usize, u64> = Default::default();
        let mut cached_bytes = 0;
        if self.depth != 0 {
            let data = self.seg.layout().data_offset;
            for slot in 0..process::SLOTS {
                for (c, &size) in SIZE_CLASSES.iter().enumerate() {
                    for off in self.mag(slot, c).entries() {
                        if self.in_data(off) {
                            *cached_in
                                .entry(((off - data) >> PAGE_SHIFT) as usize)
                                .or_default() += 1;
                            cached_bytes += u64::from(size);
                        }
                    }
                }
            }
        }
        let (mut live_blocks, mut live_bytes, mut free_bytes) = (0, 0, 0);
        for p in 0..self.pages {
            let line = self.line(p);
            let st = line[PM_STATE].load(Ordering::Relaxed);
            match kind(st) {
                KIND_SMALL if class(st) < NCLASS => {
                    let c = class(st);
                    let (size, tag) = (u64::from(SIZE_CLASSES[c]), tag_of(st));
                    let used: u64 = (0..words_of(c))
                        .map(|w| {
                            let v = line[PM_WORDS + w].load(Ordering::Relaxed);
                            if v >> BITS != tag {
                                return 0;
                            }
                            let pad = open_empty(w, c, tag) & BITS_MASK;
                            u64::from((v & BITS_MASK & !pad).count_ones())
                        })
                        .sum();
                    let used = used.saturating_sub(cached_in.get(&p).copied().unwrap_or(0));
                    let cs = &mut classes[c];
                    cs.spans += 1;
                    cs.live_blocks += used;
                    cs.free_blocks += cap_of(c) - used;
                    live_blocks += used;
                    live_bytes += used * size;
                    free_bytes += if used == 0 {
                        PAGE
                    } else {
                        (cap_of(c) - used) * size
                    };
                }
                KIND_LARGE => {
                    live_blocks += 1;
                    live_bytes += run_len(st).min(self.pages as u64) * PAGE;
                }
                KIND_FREE => free_bytes += PAGE,
                _ => {}
            }
        }
        Stats {
            capacity: self.seg.layout().data_len,
            live_blocks: Some(live_blocks),
            live_bytes,
            free_bytes,
            cached_bytes,
            classes,
        }
    }
}

// SAFETY: `free_owned` frees exactly the block it is given, once (bitmap bit or run
// state, both CAS-claimed).
unsafe impl ShmFree for FreeListAllocator {
    #[inline]
    unsafe fn free_owned(&self, offset: Offset) -> Result<(), FreeError> {
        if self.push_cached(offset.get()) {
            return Ok(());
        }
        self.free_checked(offset)
    }

    /// Large blocks (whole pages) grow over free pages right after them; blocks of
    /// a size class grow only within their class size.
    fn grow_in_place(&self, offset: Offset, new_size: usize) -> bool {
        let Ok(rel) = data_relative(&self.seg, offset, 0) else {
            return false;
        };
        let (p, within) = self.locate(rel);
        let st = self.state(p).load(Ordering::Acquire);
        match kind(st) {
            KIND_LARGE if within == 0 => self.grow_large_in_place(p, new_size),
            KIND_SMALL if class(st) < NCLASS => new_size <= SIZE_CLASSES[class(st)] as usize,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reciprocal_division_is_exact() {
        for (c, &size) in SIZE_CLASSES.iter().enumerate() {
            for x in 0..PAGE {
                assert_eq!(block_index(x, c), x / u64::from(size), "{c} {x}");
            }
        }
    }

    #[test]
    fn class_table_fits() {
        for size in 1..=SMALL_MAX {
            let c = FreeListAllocator::class_for(size, 8).unwrap();
            assert!(SIZE_CLASSES[c] as usize >= size);
            assert!(c == 0 || (SIZE_CLASSES[c - 1] as usize) < size);
        }
        let c = FreeListAllocator::class_for(100, 64).unwrap();
        assert_eq!(SIZE_CLASSES[c] % 64, 0);
        assert!(FreeListAllocator::class_for(2047, 4096).is_none());
    }

    #[test]
    fn span_words_cover_every_class() {
        for c in 0..NCLASS {
            assert!(words_of(c) <= SPAN_WORDS);
            let tag = 0x123;
            let free: u64 = (0..words_of(c))
                .map(|w| u64::from((!open_empty(w, c, tag) & BITS_MASK).count_ones()))
                .sum();
            assert_eq!(free, cap_of(c), "class {c}");
            assert_ne!(tag_of(next(0, KIND_SMALL, c, 0)), CLOSED >> BITS);
        }
    }
}
