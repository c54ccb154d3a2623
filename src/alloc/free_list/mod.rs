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
//! current span for that class and no free page lies below it: then it stays
//! until the handle moves on, drops, or memory runs short (a current span above a
//! free page goes back, so small spans pack toward the low end). Releasing first *closes* every block word (CAS from "open and
//! empty" to `CLOSED`), so no allocation can land in a span being released.
//!
//! There are no lists: which spans have free blocks, and which pages are free, is
//! kept in two kinds of bitmaps that are only **hints** (a stale hint costs a
//! retry; repair rebuilds them). Nothing is ever taken off a shared structure
//! into a process's hands, so a process that dies holds nothing but the blocks
//! its own code allocated, and the multi-step operations it had in flight.
//!
//! **Cost independent of capacity.** Each bitmap has two summary levels above it
//! ([`crate::sync::summary`]), so the lowest span of a class with a free block, the
//! lowest free page and the highest free page are found in a few word loads at any
//! capacity up to 64 GiB. **Placement is compact**: small spans are taken from the
//! bottom of the region up, large blocks from the top of the committed pages down,
//! so the free pages stay in one run in between and a large block fits whenever the
//! free bytes allow it (from every process alike: nothing depends on the pid). A
//! span left above a free page (processes churning at the same time leave some) is
//! *out of place*: no allocation takes a block of it (a cached one goes back to it)
//! nor picks it over a new span at the lowest free page, so it drains and goes
//! back to the pool (see `span.rs`, "Placement").
//!
//! **Memory committed on demand, growing online.** The capacity is a maximum that
//! every process maps once; pages of the shared-memory file (and their metadata:
//! page lines and summary-bitmap words) are committed with `fallocate` before the
//! allocator hands them out (at create only a fixed part of the metadata, about
//! 1.3 MiB at 64 GiB), a
//! chunk at a time as the page pool runs dry
//! ([`FreeListAllocator::create_with_options`]). A file system that cannot back a
//! chunk (a small `/dev/shm`) makes the allocation that needed it an
//! [`AllocError::OutOfMemory`], never a `SIGBUS`. Each process commits, itself, what
//! the shared committed count says before it touches those pages.
//!
//! **Statistics** come from counters kept as spans, blocks and pages change
//! ([`ShmAllocator::stats`], O(1) in the capacity); [`FreeListAllocator::audit`]
//! is the exact walk over the page metadata, for tests and tools.
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
//! An empty cache takes the caller's block and up to 8 more for itself by one CAS
//! on one block word of the handle's current span, inside one gate entry (only
//! when that span has none left does the shared path find a block, and a second
//! CAS refills); a full one gives half back, one CAS per block word. A block freed by another
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
//! reclaimer. A refill or a flush records its batch (one block word's blocks) in
//! the slot before its one CAS and updates the record right after it, so whoever
//! next holds the gate lists the blocks a dead refill took, or a dead flush
//! unlisted, in the cache: a crash inside either leaks nothing and never returns a
//! block twice (`crate::alloc::in_flight`; `tests/failpoints.rs` kills on both
//! sides of each CAS and asserts it). Only a kill between the CAS instruction and
//! the record store next to it leaks the batch (at most 9 blocks). A
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

mod cache_glue;
mod inspect;
mod large;
mod page;
mod repair;
mod span;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use super::cache::{self, cache_key, Gate, Mag, BATCH};
use super::in_flight::InFlight;
use super::{check_request, data_relative, ClassStats, Offset, ShmAllocator, ShmFree, Stats};
use crate::error::{AccessError, AllocError, FreeError, SegmentError};
use crate::process::{self, Intent, Membership, ProcessInfo};
use crate::segment::{
    AllocatorKind, CreateOptions, Layout, OpenOptions, Segment, ALLOC_REGION_START,
};
use crate::sync::bitmap;
use crate::sync::summary::{self, Shape, Summary};
use page::*;
use repair::*;
use span::*;

pub use span::SIZE_CLASSES;

const PAGE: u64 = 4096;
const PAGE_SHIFT: u32 = 12;
/// Largest number of pages (64 GiB): a large block's length fits 24 bits.
const MAX_PAGES: u64 = 1 << 24;

/// Give up on a CAS retry loop after this many rounds and report corruption.
/// Real contention makes progress long before; only a peer rewriting a word
/// forever (hostile) gets here.
const RETRY_LIMIT: u32 = 1 << 16;

/// Words of the metadata head: the committed-page count, span counts per class.
const HEAD_WORDS: u64 = 64;
/// Head word: pages of the data region committed (fallocated) so far; only grows.
const H_COMMITTED: usize = 0;
/// Head words `H_SPANS + c`: spans of class `c` (counted as they are created and
/// released; see `stats`).
const H_SPANS: usize = 8;
/// Head words `H_TOUCHED..+3`: which slots' counter blocks were ever written
/// (`stats` sums only those).
const H_TOUCHED: usize = 40;
/// Per-slot counter words (one block of `CTR_STRIDE` per registry slot, and one
/// more for handles without a slot): `[live blocks per class..., large pages,
/// large blocks]`, wrapping deltas whose sum over all slots is the total.
const CTR_STRIDE: u64 = 32;
const CTR_LARGE_PAGES: usize = NCLASS;
const CTR_LARGE_BLOCKS: usize = NCLASS + 1;
/// Pages committed at a time when the pool runs dry (1 MiB; a multiple of 64 so
/// the page lines of a chunk fill whole metadata pages).
const GROW_CHUNK: u64 = 256;

/// Words of one summary bitmap over `pages` bits.
fn sum_words(pages: u64) -> u64 {
    summary::total_words(pages, LINE)
}
/// Word offsets in the metadata region: the head, the free-page summary bitmap
/// (bitmap 0), the span summary bitmaps of each class (bitmap `1 + c`), the
/// caches, the per-slot counters, and last the page lines (committed with their
/// pages, so that a segment's metadata grows with it).
fn bitmap_start(pages: u64, k: usize) -> u64 {
    HEAD_WORDS + sum_words(pages) * k as u64
}
/// Per-handle caches: for each registry slot, one line with the gate (`cache::Gate`:
/// its control word and the owner's mark), then per class `[count, block
/// offsets ...]` of `depth + 1` words.
fn cache_start(pages: u64) -> u64 {
    bitmap_start(pages, 1 + NCLASS)
}
fn cache_stride(depth: u64) -> u64 {
    LINE + NCLASS as u64 * (depth + 1)
}
fn counters_start(pages: u64, depth: u64) -> u64 {
    cache_start(pages) + process::SLOTS as u64 * cache_stride(depth)
}
/// Page lines start on a metadata page of their own (committed with the pages).
fn lines_start(pages: u64, depth: u64) -> u64 {
    let end = counters_start(pages, depth) + (process::SLOTS as u64 + 1) * CTR_STRIDE;
    end.div_ceil(PAGE / 8) * (PAGE / 8)
}
fn meta_words_for(pages: u64, depth: u64) -> u64 {
    lines_start(pages, depth) + pages * LINE
}

/// Commits the metadata whose size does not follow the committed pages: the
/// head, the top and middle levels of each summary bitmap, the caches and the
/// counters.
fn commit_fixed_meta(seg: &Segment, pages: u64, depth: u64) -> Result<(), SegmentError> {
    let at = |w: u64| seg.layout().meta_offset + w * 8;
    seg.commit(at(0), HEAD_WORDS * 8)?;
    let leaf = Shape::new(pages as usize, LINE).leaf_start() as u64;
    for k in 0..=NCLASS {
        seg.commit(at(bitmap_start(pages, k)), leaf * 8)?;
    }
    let start = cache_start(pages);
    seg.commit(at(start), (lines_start(pages, depth) - start) * 8)
}

/// Blocks per size class that each handle's cache holds at most, by default.
pub const DEFAULT_CACHE_DEPTH: u64 = 15;
/// The largest cache depth [`FreeListAllocator::create_with_cache`] accepts.
pub const MAX_CACHE_DEPTH: u64 = 63;
/// How a growing free-list segment is created; see
/// [`FreeListAllocator::create_with_options`].
#[derive(Debug, Clone)]
pub struct FreeListOptions {
    /// Bytes of the data region committed at creation (rounded up to whole pages,
    /// at least one, at most the maximum). Default 1 MiB.
    pub initial: u64,
    /// Blocks per size class each handle may cache (0 turns caches off; at most
    /// [`MAX_CACHE_DEPTH`]). Default [`DEFAULT_CACHE_DEPTH`].
    pub cache_depth: u64,
    /// Permission mode of the segment.
    pub segment: CreateOptions,
}

impl Default for FreeListOptions {
    fn default() -> Self {
        FreeListOptions {
            initial: 1 << 20,
            cache_depth: DEFAULT_CACHE_DEPTH,
            segment: CreateOptions::default(),
        }
    }
}

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
    /// Pages of the data region at its maximum (what every process maps).
    pages: usize,
    /// Pages this process has seen committed (`fallocate`d by itself, so a scribbled
    /// committed count cannot make it touch a page the file system may not back).
    /// Every page line and data page at or past this is never touched.
    local: AtomicUsize,
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
    /// The lowest free page this handle saw last (`usize::MAX`: none), refreshed
    /// when it changes spans or releases a span: a span above it
    /// is out of place (a free page lies below it), so its cached blocks go back to
    /// it rather than be handed out, and a current span above it is let go (see
    /// `span.rs`, "Placement").
    frontier: AtomicUsize,
    /// Free bytes of the file system under the segment (`u64::MAX`: not read yet),
    /// and when they were read, in nanoseconds since `ROOM_EPOCH` (see `fs_room`).
    room: AtomicU64,
    room_read: AtomicU64,
    /// The segment object's inode: names it across this process's handles.
    ino: u64,
    /// Word index (in the metadata region) of page 0's line.
    lines_base: usize,
    /// Word index (in the metadata region) of the per-slot counters.
    ctr_base: usize,
    /// Where the levels of each summary bitmap lie (`sum_words(pages)` words each).
    shape: Shape,
    /// The slot (+ 1) whose bit in `H_TOUCHED` this handle has set.
    ctr_marked: AtomicUsize,
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
    /// whole 4 KiB pages; at most 64 GiB, of which one block can take all but one
    /// page). The capacity is a maximum: 1 MiB is committed at once and the rest as
    /// the allocator needs it (see [`create_with_options`](Self::create_with_options)),
    /// so a capacity larger than `/dev/shm` gives [`AllocError::OutOfMemory`] at the
    /// file system's limit, never a `SIGBUS`.
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
        Self::create_with_options(
            name,
            capacity,
            &FreeListOptions {
                cache_depth: depth,
                segment: opts.clone(),
                ..FreeListOptions::default()
            },
        )
    }

    /// Creates a segment `name` whose data region can grow **online** up to
    /// `maximum` bytes (rounded up to whole 4 KiB pages; at most 64 GiB), with
    /// `opts.initial` bytes committed at once.
    ///
    /// Every process maps the maximum once (address space only), so offsets never
    /// change and nothing is remapped. Pages of the shared-memory file are
    /// committed with `fallocate` before the allocator hands them out: when the
    /// page pool runs dry, the allocating process commits the next chunk (1 MiB, or
    /// what a large block needs), up to `maximum`. [`Stats::committed_bytes`] and
    /// [`Stats::capacity`] show how far it got. The maximum may be far beyond RAM:
    /// untouched, uncommitted pages cost nothing.
    ///
    /// **At the file system's limit** (a `/dev/shm` smaller than the maximum, as in
    /// a container, or memory exhausted): the commit fails, and the allocation that
    /// needed it returns [`AllocError::OutOfMemory`], never a `SIGBUS`; everything
    /// already allocated stays usable, and freed memory is reused as usual.
    ///
    /// # Errors
    /// As [`create`](Self::create); [`SegmentError::Os`] with `op: "fallocate"`
    /// (`ENOSPC`) if even the metadata and `opts.initial` bytes cannot be committed.
    pub fn create_with_options(
        name: &str,
        maximum: u64,
        opts: &FreeListOptions,
    ) -> Result<Self, SegmentError> {
        let depth = opts.cache_depth;
        if depth > MAX_CACHE_DEPTH {
            return Err(SegmentError::InvalidParameter {
                what: "free-list cache depth",
                value: depth,
            });
        }
        let pages = maximum.div_ceil(PAGE);
        if pages == 0 || pages > MAX_PAGES {
            return Err(SegmentError::InvalidParameter {
                what: "free-list capacity",
                value: maximum,
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
        let seg = Segment::create_attaching(name, layout, &opts.segment)?;
        let fail = |e| {
            let _ = crate::segment::unlink(name);
            e
        };
        // The fixed metadata (the leaf levels of the summary bitmaps and the page
        // lines come with their pages), then the initial pages.
        commit_fixed_meta(&seg, pages, depth).map_err(fail)?;
        let mut this = Self::from_segment(seg).map_err(fail)?;
        let initial = opts.initial.div_ceil(PAGE).clamp(1, pages);
        this.commit_pages(0, initial as usize).map_err(fail)?;
        let head = &this.meta()[H_COMMITTED];
        head.store(initial, Ordering::Release);
        this.local.store(initial as usize, Ordering::Release);
        this.seg.note_committed(initial * PAGE);
        this.free_pages().set_range(0, initial as usize);
        this.seg.publish();
        this.seg.attach_end(this.member.current())?;
        Ok(this)
    }

    /// Opens the free-list allocator `name`, or creates it with `capacity` bytes if no segment of that name
    /// exists: the common "whoever comes first" start. Returns the handle and
    /// whether this call created the segment. Race-free: of any number of
    /// processes calling it at once, exactly one creates and all end up on the one
    /// segment. A crashed creator's half-initialised object under the name is
    /// removed and created anew (see [`crate::segment::remove_if_stale`]); an
    /// existing segment is opened as it is (its parameters win over these).
    ///
    /// # Errors
    /// As [`create`](Self::create) and [`open`](Self::open) (not `AlreadyExists`).
    pub fn open_or_create(name: &str, capacity: u64) -> Result<(Self, bool), SegmentError> {
        Self::open_or_create_with(
            name,
            capacity,
            &CreateOptions::default(),
            &OpenOptions::default(),
        )
    }

    /// [`open_or_create`](Self::open_or_create) with options.
    ///
    /// # Errors
    /// As [`open_or_create`](Self::open_or_create).
    pub fn open_or_create_with(
        name: &str,
        capacity: u64,
        create: &CreateOptions,
        open: &OpenOptions,
    ) -> Result<(Self, bool), SegmentError> {
        crate::segment::open_or_create(
            name,
            open,
            || Self::create_with(name, capacity, create),
            || Self::open_with(name, open),
        )
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
        let this = Self::from_segment(Segment::open_attaching(
            name,
            AllocatorKind::FreeList,
            opts,
        )?)?;
        this.seg.attach_end(this.member.current())?;
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
            || pages > MAX_PAGES
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
        // Offsets into pages not committed yet are out of bounds (`data_relative`).
        seg.track_commit(l.meta_offset + H_COMMITTED as u64 * 8, PAGE_SHIFT);
        let joined = Membership::join(&seg)?;
        let this = FreeListAllocator {
            member: joined.membership,
            seg,
            pages: pages as usize,
            local: AtomicUsize::new(0),
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
            frontier: AtomicUsize::new(usize::MAX),
            room: AtomicU64::new(u64::MAX),
            room_read: AtomicU64::new(0),
            ino,
            lines_base: lines_start(pages, depth) as usize,
            ctr_base: counters_start(pages, depth) as usize,
            ctr_marked: AtomicUsize::new(0),
            shape: Shape::new(pages as usize, LINE),
            cache_base0: cache_start(pages) as usize,
            cache_stride: cache_stride(depth) as usize,
            data_addr,
            data_off: l.data_offset,
            data_end: l.data_end(),
            meta_addr,
            meta_words,
        };
        // Pages other processes committed: commit them here too (see `local`).
        this.refresh();
        if joined.found_dead {
            // We took over a dead handle's slot: first return what its cache held.
            if let Some(slot) = this.member.current() {
                cache::flush_dead(&this, slot, std::time::Instant::now() + cache::CLAIM_WAIT);
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
    /// the registry part by itself before reporting out-of-memory (and the sweep
    /// over the pages when that finished a dead handle's operations); call this to
    /// sweep now and see the numbers. O(committed pages + registry slots).
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

    /// Whether pages below `end` are committed (checking the shared count again
    /// when they were not, as far as this process knew).
    #[inline]
    fn within(&self, end: usize) -> bool {
        end <= self.committed() || end <= self.refresh()
    }

    /// This handle's counter words (see `CTR_STRIDE`); handles without a registry
    /// slot share the last block.
    #[inline]
    fn counters(&self) -> &[AtomicU64] {
        let slot = self.member.current().unwrap_or(process::SLOTS);
        if self.ctr_marked.load(Ordering::Relaxed) != slot + 1 {
            self.meta()[H_TOUCHED + slot / 64].fetch_or(1 << (slot % 64), Ordering::Relaxed);
            self.ctr_marked.store(slot + 1, Ordering::Relaxed);
        }
        let start = self.ctr_base + slot.min(process::SLOTS) * CTR_STRIDE as usize;
        &self.meta()[start..start + CTR_STRIDE as usize]
    }

    /// Counts `k` blocks of class `c` taken from (`k > 0`) or returned to the spans.
    #[inline]
    fn count_blocks(&self, c: usize, k: i64) {
        if let Some(w) = self.counters().get(c) {
            w.fetch_add(k as u64, Ordering::Relaxed);
        }
    }

    /// Counts pages and blocks of large blocks taken (`> 0`) or freed.
    fn count_large(&self, pages: i64, blocks: i64) {
        let ctr = self.counters();
        ctr[CTR_LARGE_PAGES].fetch_add(pages as u64, Ordering::Relaxed);
        ctr[CTR_LARGE_BLOCKS].fetch_add(blocks as u64, Ordering::Relaxed);
    }

    /// Counts a span of class `c` created (`k = 1`) or released (`k = -1`).
    fn count_span(&self, c: usize, k: i64) {
        if let Some(w) = self.meta().get(H_SPANS + c) {
            w.fetch_add(k as u64, Ordering::Relaxed);
        }
    }

    fn my_slot(&self) -> Result<usize, AllocError> {
        self.member
            .slot(&self.seg)
            .map_err(|e| AllocError::Registry(Box::new(e)))
    }

    fn intend(&self, intent: Intent) -> Result<process::IntentGuard<'_>, AllocError> {
        self.member
            .intend(&self.seg, intent)
            .map_err(|e| AllocError::Registry(Box::new(e)))
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
        // Past the committed pages nothing was ever handed out.
        let Some(line) = self.page_line(p) else {
            return Err(if within == 0 {
                FreeError::DoubleFree { offset: off }
            } else {
                FreeError::NotBlockStart { offset: off }
            });
        };
        let st = line[PM_STATE].load(Ordering::Acquire);
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

    /// The page and in-page offset of a data-region offset.
    #[inline]
    fn locate(&self, rel: u64) -> (usize, u64) {
        ((rel >> PAGE_SHIFT) as usize, rel & (PAGE - 1))
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
        self.release_own_spans();
        let (member, seg) = (&mut self.member, &self.seg);
        seg.close_with(member.current(), || member.leave(seg));
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
    fn allocate_block(
        &self,
        _: super::Internal,
        size: usize,
        align: usize,
    ) -> Result<Offset, AllocError> {
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
        let Some(line) = self.page_line(p) else {
            return Err(not_alloc);
        };
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
        let Some(line) = self.page_line(p) else {
            return Err(not_start);
        };
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
        self.counted().free_bytes
    }

    fn used_bytes(&self) -> u64 {
        self.counted().live_bytes
    }

    /// From counters kept as spans, blocks and pages change: O(registry slots that
    /// ever counted anything + size classes), whatever the capacity. Exact while no
    /// process died in the middle of an allocation or free (each such death can
    /// leave a counter off by the blocks that one operation moved); the exact
    /// numbers are [`FreeListAllocator::audit`]. `free_bytes` includes the free
    /// blocks of every span and the pages not committed yet, these only as far as
    /// the file system under the segment has room for them (`fstatvfs`, read at
    /// most every 10 ms): on a full `/dev/shm` it is what the committed pages still
    /// hold, not the maximum. `committed_bytes` and `capacity` (the maximum) say
    /// how far the segment grew.
    fn stats(&self) -> Stats {
        self.counted()
    }
}

impl FreeListAllocator {
    /// [`stats`](ShmAllocator::stats) from the counters; see there.
    fn counted(&self) -> Stats {
        let meta = self.meta();
        let signed = |v: u64| (v as i64).max(0) as u64;
        let mut live = [0u64; NCLASS + 2];
        let touched: [u64; 3] =
            std::array::from_fn(|i| meta[H_TOUCHED + i].load(Ordering::Relaxed));
        for slot in 0..=process::SLOTS {
            if touched[slot / 64] & (1 << (slot % 64)) == 0 {
                continue;
            }
            let start = self.ctr_base + slot * CTR_STRIDE as usize;
            for (i, l) in live.iter_mut().enumerate() {
                *l = l.wrapping_add(meta[start + i].load(Ordering::Relaxed));
            }
        }
        let mut cached = [0u64; NCLASS];
        if self.depth != 0 {
            for slot in 0..process::SLOTS {
                if process::listed_live(&self.seg, slot) {
                    for (c, n) in cached.iter_mut().enumerate() {
                        *n += self.mag(slot, c).len() as u64;
                    }
                }
            }
        }
        let (mut live_blocks, mut live_bytes, mut cached_bytes) = (0u64, 0u64, 0u64);
        let (mut span_pages, mut span_free) = (0u64, 0u64);
        let classes = (0..NCLASS)
            .map(|c| {
                let size = u64::from(SIZE_CLASSES[c]);
                let spans =
                    signed(meta[H_SPANS + c].load(Ordering::Relaxed)).min(self.pages as u64);
                let held = signed(live[c]).min(spans * cap_of(c));
                let cached = cached[c].min(held);
                let used = held - cached;
                span_pages += spans;
                span_free += (spans * cap_of(c) - used) * size;
                live_blocks += used;
                live_bytes += used * size;
                cached_bytes += cached * size;
                ClassStats {
                    block_size: size,
                    spans,
                    live_blocks: used,
                    free_blocks: spans * cap_of(c) - used,
                }
            })
            .collect();
        let large_pages = signed(live[CTR_LARGE_PAGES]).min(self.pages as u64);
        live_blocks += signed(live[CTR_LARGE_BLOCKS]).min(large_pages);
        live_bytes += large_pages * PAGE;
        let pages = self.pages as u64;
        let committed = (meta[H_COMMITTED].load(Ordering::Relaxed)).min(pages);
        // Pages not committed yet count as free only as far as the file system
        // has room to back them.
        // Each page also commits its line and leaf words (and up to one metadata
        // page per summary bitmap where a new leaf page starts): counted so that
        // what is reported can be allocated.
        let backable = self.fs_room().saturating_sub((2 + NCLASS as u64) * PAGE) / (PAGE + LINE * 8);
        let uncommitted = (pages - committed).min(backable);
        let free_pages = committed.saturating_sub(span_pages + large_pages) + uncommitted;
        Stats {
            capacity: self.seg.layout().data_len,
            committed_bytes: committed * PAGE,
            live_blocks: Some(live_blocks),
            live_bytes,
            free_bytes: (free_pages * PAGE + span_free).min(pages * PAGE),
            cached_bytes,
            classes,
        }
    }

    /// Bytes the file system under the segment has free (`fstatvfs`), read at most
    /// every 10 ms (`u64::MAX` where it cannot say). Lock-free: two threads may
    /// both read it at once, and either result stands.
    fn fs_room(&self) -> u64 {
        static ROOM_EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        let now = ROOM_EPOCH
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_nanos() as u64
            + 1;
        let read = self.room_read.load(Ordering::Relaxed);
        if read != 0 && now.saturating_sub(read) < 10_000_000 {
            return self.room.load(Ordering::Relaxed);
        }
        let bytes = nix::sys::statvfs::fstatvfs(self.seg.file())
            .map(|v| v.blocks_available().saturating_mul(v.fragment_size()))
            .unwrap_or(u64::MAX);
        self.room.store(bytes, Ordering::Relaxed);
        self.room_read.store(now, Ordering::Relaxed);
        bytes
    }

    /// The exact statistics, from a walk over every committed page's metadata and
    /// every cache: O(committed pages). For tests and tools (after processes were
    /// killed, the counters behind [`stats`](ShmAllocator::stats) may be off; this
    /// is not). An empty span counts as a whole free page (it is returned to the
    /// pool on demand); pages not committed yet count as free, up to the maximum
    /// (unlike `stats()`, not capped by what the file system has room for: this is
    /// the walk over the allocator's own metadata).
    pub fn audit(&self) -> Stats {
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
        let committed = self.refresh();
        let (mut live_blocks, mut live_bytes) = (0, 0);
        let mut free_bytes = (self.pages - committed) as u64 * PAGE;
        for p in 0..committed {
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
            committed_bytes: committed as u64 * PAGE,
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
    fn grow_block(&self, _: crate::alloc::Internal, offset: Offset, new_size: usize) -> bool {
        let Ok(rel) = data_relative(&self.seg, offset, 0) else {
            return false;
        };
        let (p, within) = self.locate(rel);
        let Some(line) = self.page_line(p) else {
            return false;
        };
        let st = line[PM_STATE].load(Ordering::Acquire);
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
