//! The general-purpose allocator: size classes over a shared page pool.
//!
//! The data region is cut into 4 KiB pages. A page bitmap (1 = in use) hands out
//! runs of pages. Requests up to 2 KiB go to one of [`SIZE_CLASSES`]: each class
//! owns whole pages ("spans") carved into equal blocks, tracked by a per-span
//! bitmap, and keeps the spans that have free blocks on a lock-free tagged stack.
//! Larger requests take a run of whole pages. A span whose last block is freed
//! goes back to the page pool, so memory freed at one size serves every other
//! size later.
//!
//! Per page, one metadata line holds the span state word
//! `[gen: 24 | kind: 2 | listed: 1 | class: 5 | count: 32]`, the stack link and
//! the span's block bitmap. The rules that make it safe without locks:
//!
//! - A block is taken by first reserving a slot (CAS `count + 1` on the state,
//!   which fails if the span was released: the generation changed) and then
//!   setting a bitmap bit; freed by clearing the bit, then CAS `count - 1`. So
//!   the set bits never outnumber `count`, and `count == 0` means no bit is set.
//! - A span is on its class stack iff `listed` is set (modulo the instant between
//!   a pop and the popper's follow-up). Only the thread that sets `listed`
//!   pushes; only a popper clears it. A span is released to the page pool only by
//!   the CAS that takes `count` to 0 while not listed, or by a popper that holds it.
//! - Stack heads carry a 32-bit tag against ABA.
//!
//! A process killed between two of these steps leaves at worst one slot or one
//! span unusable (it may leak); no other process ever waits for it. A process
//! that takes spans off a stack marks them held with its pid (in the link word,
//! unused off the stack); when the page pool runs dry, spans held by dead pids are
//! adopted and returned, so even the reclaim pass leaks nothing when killed.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use super::{check_request, data_relative, ClassStats, Offset, ShmAllocator, ShmFree, Stats};
use crate::error::{AccessError, AllocError, FreeError, SegmentError};
use crate::segment::{
    current_pid, pid_alive, AllocatorKind, CreateOptions, Layout, OpenOptions, Segment,
    HEADER_REGION,
};
use crate::sync::{bitmap, tagged_stack};

const PAGE: u64 = 4096;
const PAGE_SHIFT: u32 = 12;

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

// State word fields.
const COUNT_MASK: u64 = 0xFFFF_FFFF;
const CLASS_SHIFT: u32 = 32;
const LISTED: u64 = 1 << 37;
const KIND_SHIFT: u32 = 38;
const GEN_SHIFT: u32 = 40;
const KIND_FREE: u64 = 0;
const KIND_SMALL: u64 = 1;
const KIND_LARGE: u64 = 2;
const KIND_INTERIOR: u64 = 3;

#[inline]
fn kind(st: u64) -> u64 {
    (st >> KIND_SHIFT) & 3
}
#[inline]
fn count(st: u64) -> u64 {
    st & COUNT_MASK
}
#[inline]
fn class(st: u64) -> usize {
    ((st >> CLASS_SHIFT) & 0x1F) as usize
}
#[inline]
fn next_gen(st: u64) -> u64 {
    ((st >> GEN_SHIFT) + 1) << GEN_SHIFT
}
#[inline]
fn cap_of(c: usize) -> u64 {
    PAGE / u64::from(SIZE_CLASSES[c])
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

// Metadata region, in words from meta_offset.
const LINE: u64 = 8; // words per cache line
/// Stacks per class. Each process lists spans on its own shard (assigned round-robin
/// when it opens the allocator), so processes allocating the same size do not all
/// contend on one head and one span; a process whose shard is empty takes spans
/// from the others before taking a fresh page.
const SHARDS: usize = 4;
const HEADS: u64 = 0; // NCLASS * SHARDS lines, word 0 of each = stack head
/// One line; word 0 is set when a span became empty while on a class stack since the
/// last reclaim (a hint: reclaim pops spans only when it is non-zero).
const EMPTY_SPANS: u64 = (NCLASS * SHARDS) as u64 * LINE;
/// Word 1 of that line: the shard counter, incremented by each process that opens.
const NEXT_SHARD: u64 = EMPTY_SPANS + 1;
const PAGE_BITS: u64 = EMPTY_SPANS + LINE;
// Per-page line: [state, link, bits0..bits3, -, -]
const PM_STATE: u64 = 0;
const PM_LINK: u64 = 1;
const PM_BITS: u64 = 2;
/// Link-word flag: the span is off its stack, held by the pid in the low 32 bits.
const HELD: u64 = 1 << 63;
const SPAN_BIT_WORDS: usize = 4; // PAGE / min class = 256 blocks

/// Give up on a CAS retry loop after this many rounds and report corruption.
/// Real contention makes progress long before; only a peer rewriting a word
/// forever (hostile) gets here.
const RETRY_LIMIT: u32 = 1 << 20;

fn bitmap_words(pages: u64) -> u64 {
    pages.div_ceil(64).div_ceil(LINE) * LINE
}

fn page_meta_start(pages: u64) -> u64 {
    PAGE_BITS + bitmap_words(pages)
}

/// The general-purpose allocator: any size from 1 byte to the capacity, alignment up
/// to 4096, individual [`free`](ShmFree::free), memory freed at one size reusable at
/// any other. Lock-free; safe against processes dying at any instant.
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
    seg: Segment,
    pages: usize,
    /// Where this process starts looking for a free page (spreads processes apart).
    hint: AtomicUsize,
    /// The class stacks this process lists spans on.
    shard: usize,
    /// The metadata region, resolved once at open (`Segment::words` checked it):
    /// address and length in words. Kept as a number so the type stays Send + Sync.
    meta_addr: usize,
    meta_words: usize,
}

impl FreeListAllocator {
    /// Creates a segment `name` with `capacity` bytes of data region (rounded up to
    /// whole 4 KiB pages).
    ///
    /// # Errors
    /// [`SegmentError::AlreadyExists`], [`SegmentError::InvalidName`],
    /// [`SegmentError::InvalidParameter`], or an OS error.
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
        let pages = capacity.div_ceil(PAGE);
        if pages == 0 || pages >= (1 << 31) {
            return Err(SegmentError::InvalidParameter {
                what: "free-list capacity",
                value: capacity,
            });
        }
        let meta_words = page_meta_start(pages) + pages * LINE;
        let meta_len = (meta_words * 8).div_ceil(PAGE) * PAGE;
        let layout = Layout {
            kind: AllocatorKind::FreeList,
            total_size: HEADER_REGION + meta_len + pages * PAGE,
            meta_offset: HEADER_REGION,
            meta_len,
            data_offset: HEADER_REGION + meta_len,
            data_len: pages * PAGE,
            params: [pages, 0, 0, 0],
        };
        let seg = Segment::create(name, layout, opts)?;
        let this = Self::from_segment(seg).inspect_err(|_| {
            let _ = crate::segment::unlink(name);
        })?;
        // Pages past the end of the last bitmap word are permanently "in use".
        let bits = this.page_bits();
        let tail = pages % 64;
        if tail != 0 {
            bits[(pages / 64) as usize].store(!0 << tail, Ordering::Relaxed);
        }
        for w in bits.iter().skip(pages.div_ceil(64) as usize) {
            w.store(!0, Ordering::Relaxed);
        }
        this.seg.publish();
        Ok(this)
    }

    /// Opens the free-list allocator `name` created by any process.
    ///
    /// # Errors
    /// [`SegmentError::NotFound`], [`SegmentError::WrongKind`],
    /// [`SegmentError::VersionMismatch`], [`SegmentError::InitTimeout`],
    /// [`SegmentError::CorruptHeader`], ...
    pub fn open(name: &str) -> Result<Self, SegmentError> {
        Self::open_with(name, &OpenOptions::default())
    }

    /// [`open`](Self::open) with options (init timeout).
    ///
    /// # Errors
    /// As [`open`](Self::open).
    pub fn open_with(name: &str, opts: &OpenOptions) -> Result<Self, SegmentError> {
        Self::from_segment(Segment::open(name, AllocatorKind::FreeList, opts)?)
    }

    fn from_segment(seg: Segment) -> Result<Self, SegmentError> {
        let l = *seg.layout();
        let pages = l.params[0];
        let corrupt = |reason| Err(SegmentError::CorruptHeader { reason });
        if pages == 0
            || pages >= (1 << 31)
            || l.data_len != pages * PAGE
            || l.data_offset % PAGE != 0
        {
            return corrupt("free-list page count disagrees with the data region");
        }
        if (page_meta_start(pages) + pages * LINE) * 8 > l.meta_len {
            return corrupt("free-list metadata region too small");
        }
        let hint = (std::process::id() as usize).wrapping_mul(0x9E37_79B9) % pages as usize;
        let meta = seg
            .words(l.meta_offset, l.meta_len / 8)
            .ok_or(SegmentError::CorruptHeader {
                reason: "free-list metadata outside the mapping",
            })?;
        let (meta_addr, meta_words) = (meta.as_ptr() as usize, meta.len());
        let mut this = FreeListAllocator {
            seg,
            pages: pages as usize,
            hint: AtomicUsize::new(hint / 64),
            shard: 0,
            meta_addr,
            meta_words,
        };
        this.shard =
            this.meta()[NEXT_SHARD as usize].fetch_add(1, Ordering::Relaxed) as usize % SHARDS;
        Ok(this)
    }

    /// Removes the segment's name; see [`crate::segment::unlink`].
    ///
    /// # Errors
    /// [`SegmentError::NotFound`] if already removed.
    pub fn unlink(&self) -> Result<(), SegmentError> {
        self.seg.unlink()
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
    fn head(&self, c: usize) -> &AtomicU64 {
        self.head_in(c, self.shard)
    }

    #[inline]
    fn head_in(&self, c: usize, shard: usize) -> &AtomicU64 {
        &self.meta()[(HEADS + (c * SHARDS + shard) as u64 * LINE) as usize]
    }

    /// Takes one span of class `c` from another process's shard and lists it on
    /// ours (or unlists/releases it, as after any pop). Returns whether it found one.
    fn steal_span(&self, c: usize) -> bool {
        for k in 1..SHARDS {
            let other = self.head_in(c, (self.shard + k) % SHARDS);
            if let Ok(Some(s)) = tagged_stack::pop(other, |i| self.link_of(i)) {
                self.mark_held(s);
                self.after_pop(s, c, false);
                return true;
            }
        }
        false
    }

    fn empty_spans(&self) -> &AtomicU64 {
        &self.meta()[EMPTY_SPANS as usize]
    }

    #[inline]
    fn page_bits(&self) -> &[AtomicU64] {
        let start = PAGE_BITS as usize;
        &self.meta()[start..start + (self.pages as u64).div_ceil(64) as usize]
    }

    /// Page `p`'s metadata line (p < pages, checked by callers; `None` otherwise).
    #[inline]
    fn page_line(&self, p: usize) -> Option<&[AtomicU64]> {
        if p >= self.pages {
            return None;
        }
        let start = (page_meta_start(self.pages as u64) + p as u64 * LINE) as usize;
        self.meta().get(start..start + LINE as usize)
    }

    #[inline]
    fn line(&self, p: usize) -> &[AtomicU64] {
        // Callers pass p < pages; the region was sized for all pages at open.
        self.page_line(p).expect("page index checked by caller")
    }

    #[inline]
    fn page_offset(&self, p: usize) -> u64 {
        self.seg.layout().data_offset + ((p as u64) << PAGE_SHIFT)
    }

    fn link_of(&self, p: usize) -> Option<&AtomicU64> {
        self.page_line(p).map(|l| &l[PM_LINK as usize])
    }

    // ---------------------------------------------------------------- pages

    fn try_claim_pages(&self, n: usize) -> Result<Option<usize>, AllocError> {
        let bits = self.page_bits();
        let found = if n == 1 {
            let start = self.hint.load(Ordering::Relaxed) % bits.len();
            bitmap::claim_one(bits, start).inspect(|&p| self.hint.store(p / 64, Ordering::Relaxed))
        } else {
            let mut found = None;
            for _ in 0..64 {
                match bitmap::find_clear_run(bits, n) {
                    None => break,
                    Some(s) if bitmap::claim_run(bits, s, n) => {
                        found = Some(s);
                        break;
                    }
                    Some(_) => continue,
                }
            }
            found
        };
        match found {
            Some(p) if p + n <= self.pages => Ok(Some(p)),
            Some(_) => Err(AllocError::Corrupted {
                what: "page bitmap marks pages past the end as free",
            }),
            None => Ok(None),
        }
    }

    fn claim_pages(&self, n: usize, requested: u64) -> Result<usize, AllocError> {
        if let Some(p) = self.try_claim_pages(n)? {
            return Ok(p);
        }
        // Empty spans cached on the class stacks are free memory too: return them.
        if self.reclaim_empty_spans() > 0 {
            if let Some(p) = self.try_claim_pages(n)? {
                return Ok(p);
            }
        }
        Err(AllocError::OutOfMemory {
            requested,
            available: self.available_bytes(),
        })
    }

    fn release_pages(&self, p: usize, n: usize) {
        bitmap::release_run(self.page_bits(), p, n);
    }

    // ---------------------------------------------------------------- spans

    fn push_span(&self, c: usize, s: usize) {
        tagged_stack::push(self.head(c), s, &self.line(s)[PM_LINK as usize]);
    }

    /// Allocates a block of class `c`.
    fn alloc_small(&self, c: usize, requested: u64) -> Result<Offset, AllocError> {
        let head = self.head(c);
        let cap = cap_of(c);
        let mut retried_after_reclaim = false;
        for _ in 0..RETRY_LIMIT {
            let h = head.load(Ordering::Acquire);
            let Some(s) = tagged_stack::top(h) else {
                if self.steal_span(c) {
                    continue;
                }
                match self.new_span(c, requested) {
                    // The page pool ran dry; reclaiming may have put spans with free
                    // blocks (adopted from dead processes) back on this stack.
                    Err(AllocError::OutOfMemory { .. }) if !retried_after_reclaim => {
                        retried_after_reclaim = true;
                        continue;
                    }
                    r => return r,
                }
            };
            let Some(line) = self.page_line(s) else {
                return Err(AllocError::Corrupted {
                    what: "class stack holds a page index out of range",
                });
            };
            let state = &line[PM_STATE as usize];
            let st = state.load(Ordering::Acquire);
            if kind(st) != KIND_SMALL || class(st) != c || st & LISTED == 0 {
                if head.load(Ordering::Acquire) != h {
                    continue; // the span left the stack meanwhile
                }
                return Err(AllocError::Corrupted {
                    what: "class stack holds a page that is not a listed span of its class",
                });
            }
            if count(st) < cap {
                if state
                    .compare_exchange_weak(st, st + 1, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    return self.take_reserved_block(s, c);
                }
                continue;
            }
            // Full: take it off the stack; a later free lists it again.
            match tagged_stack::pop_if(head, h, |i| self.link_of(i)) {
                Ok(Some(_)) => {
                    self.mark_held(s);
                    self.after_pop(s, c, false);
                }
                Ok(None) => {}
                Err(tagged_stack::CorruptLink) => {
                    return Err(AllocError::Corrupted {
                        what: "class stack link out of range",
                    })
                }
            }
        }
        Err(AllocError::Corrupted {
            what: "allocation retried too often",
        })
    }

    /// With one slot of span `s` reserved, sets a clear bit and returns its block.
    fn take_reserved_block(&self, s: usize, c: usize) -> Result<Offset, AllocError> {
        let cap = cap_of(c) as usize;
        let bits = &self.line(s)[PM_BITS as usize..PM_BITS as usize + SPAN_BIT_WORDS];
        // The reservation guarantees a clear bit below `cap` (set bits <= count);
        // each failed attempt means another reserver took one. Bounded for safety.
        for _ in 0..256 {
            for (w, word) in bits.iter().enumerate().take(cap.div_ceil(64)) {
                let valid = bitmap::mask(0, (cap - w * 64).min(64) as u32);
                let mut v = word.load(Ordering::Relaxed);
                while !v & valid != 0 {
                    let b = (!v & valid).trailing_zeros();
                    let prev = word.fetch_or(1 << b, Ordering::AcqRel);
                    if prev & (1 << b) == 0 {
                        let i = (w * 64 + b as usize) as u64;
                        return Ok(Offset::new(
                            self.page_offset(s) + i * u64::from(SIZE_CLASSES[c]),
                        ));
                    }
                    v = prev;
                }
            }
        }
        let _ = self.return_slot(s, c);
        Err(AllocError::Corrupted {
            what: "span bitmap full although its count has room",
        })
    }

    /// Takes a fresh page as a span of class `c`, keeps block 0 and lists the span.
    fn new_span(&self, c: usize, requested: u64) -> Result<Offset, AllocError> {
        let s = self.claim_pages(1, requested)?;
        let line = self.line(s);
        line[PM_BITS as usize].store(1, Ordering::Relaxed);
        for w in &line[PM_BITS as usize + 1..PM_BITS as usize + SPAN_BIT_WORDS] {
            w.store(0, Ordering::Relaxed);
        }
        let old = line[PM_STATE as usize].load(Ordering::Relaxed);
        let st =
            next_gen(old) | (KIND_SMALL << KIND_SHIFT) | LISTED | ((c as u64) << CLASS_SHIFT) | 1;
        line[PM_STATE as usize].store(st, Ordering::Release);
        self.push_span(c, s);
        Ok(Offset::new(self.page_offset(s)))
    }

    /// After popping span `s` (state still `listed`): release it if empty, unlist it
    /// if full, otherwise push it back. With `release_empty_only`, a non-empty span
    /// is always pushed back (used when draining).
    fn after_pop(&self, s: usize, c: usize, release_empty_only: bool) -> bool {
        let state = &self.line(s)[PM_STATE as usize];
        let cap = cap_of(c);
        for _ in 0..RETRY_LIMIT {
            let st = state.load(Ordering::Acquire);
            if kind(st) != KIND_SMALL || class(st) != c || st & LISTED == 0 {
                return false; // corrupt: leave the span alone (it leaks, nothing else breaks)
            }
            if count(st) == 0 {
                if state
                    .compare_exchange(st, next_gen(st), Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
                {
                    self.release_pages(s, 1);
                    return true;
                }
            } else if count(st) >= cap && !release_empty_only {
                if state
                    .compare_exchange(st, st & !LISTED, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
                {
                    return false;
                }
            } else {
                self.push_span(c, s);
                return false;
            }
        }
        false
    }

    /// Gives back one reserved slot of span `s` (its bit already clear): lists the
    /// span if it was unlisted, or releases it if it was unlisted and this was the
    /// last slot.
    fn return_slot(&self, s: usize, c: usize) -> Result<(), &'static str> {
        let state = &self.line(s)[PM_STATE as usize];
        for _ in 0..RETRY_LIMIT {
            let st = state.load(Ordering::Acquire);
            if kind(st) != KIND_SMALL || class(st) != c || count(st) == 0 {
                return Err("span state changed under a live block");
            }
            let (new, then) = if st & LISTED != 0 {
                (st - 1, if count(st) == 1 { 3 } else { 0 })
            } else if count(st) == 1 {
                (next_gen(st), 1)
            } else {
                ((st - 1) | LISTED, 2)
            };
            if state
                .compare_exchange_weak(st, new, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                match then {
                    1 => self.release_pages(s, 1),
                    2 => self.push_span(c, s),
                    3 => {
                        // Only a hint: skip the locked write when it is already set.
                        let hint = self.empty_spans();
                        if hint.load(Ordering::Relaxed) == 0 {
                            hint.store(1, Ordering::Relaxed);
                        }
                    }
                    _ => {}
                }
                return Ok(());
            }
        }
        Err("free retried too often")
    }

    /// Records in span `s`'s link word (unused while the span is off its stack) that
    /// this process holds it. If this process dies before putting the span back, the
    /// mark tells [`adopt_orphans`](Self::adopt_orphans) the span belongs to nobody.
    fn mark_held(&self, s: usize) {
        self.line(s)[PM_LINK as usize].store(HELD | u64::from(current_pid()), Ordering::Relaxed);
    }

    /// If spans went empty on their stacks, pops every span off every class stack,
    /// releases the empty ones and pushes the rest back; then adopts spans orphaned by
    /// dead processes. Returns how many
    /// pages were released. Runs only when the page pool is exhausted.
    fn reclaim_empty_spans(&self) -> usize {
        let mut released = 0;
        let mut held = Vec::new();
        // Popping every span is only worth it (and only exposes spans to this process
        // dying with them in hand) when some span went empty while listed.
        let classes = if self.empty_spans().swap(0, Ordering::AcqRel) == 0 {
            0
        } else {
            NCLASS
        };
        for c in 0..classes {
            for shard in 0..SHARDS {
                held.clear();
                while held.len() < self.pages {
                    match tagged_stack::pop(self.head_in(c, shard), |i| self.link_of(i)) {
                        Ok(Some(s)) => {
                            self.mark_held(s);
                            held.push(s);
                        }
                        _ => break,
                    }
                }
                // Non-empty spans go back on this process's shard.
                for &s in &held {
                    released += usize::from(self.after_pop(s, c, true));
                }
            }
        }
        released + self.adopt_orphans()
    }

    /// Finds spans that a dead process had taken off a stack (still `listed`, link
    /// word marked held by a pid that no longer exists), takes them over and puts
    /// them back: released if empty, pushed back otherwise. O(pages).
    fn adopt_orphans(&self) -> usize {
        let me = HELD | u64::from(current_pid());
        let mut released = 0;
        for p in 0..self.pages {
            let line = self.line(p);
            let st = line[PM_STATE as usize].load(Ordering::Acquire);
            if kind(st) != KIND_SMALL || st & LISTED == 0 || class(st) >= NCLASS {
                continue;
            }
            let link = line[PM_LINK as usize].load(Ordering::Acquire);
            if link & HELD == 0 || link == me || pid_alive(link as u32) {
                continue;
            }
            if line[PM_LINK as usize]
                .compare_exchange(link, me, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                released += usize::from(self.after_pop(p, class(st), true));
            }
        }
        released
    }

    // ---------------------------------------------------------------- large

    fn alloc_large(&self, size: usize) -> Result<Offset, AllocError> {
        let n = (size as u64).div_ceil(PAGE);
        if n > self.pages as u64 {
            return Err(AllocError::TooLarge {
                requested: size as u64,
                max: self.pages as u64 * PAGE,
            });
        }
        let n = n as usize;
        let s = self.claim_pages(n, size as u64)?;
        for (d, p) in (s + 1..s + n).enumerate() {
            let state = &self.line(p)[PM_STATE as usize];
            let old = state.load(Ordering::Relaxed);
            state.store(
                next_gen(old) | (KIND_INTERIOR << KIND_SHIFT) | (d as u64 + 1),
                Ordering::Relaxed,
            );
        }
        let state = &self.line(s)[PM_STATE as usize];
        let old = state.load(Ordering::Relaxed);
        state.store(
            next_gen(old) | (KIND_LARGE << KIND_SHIFT) | n as u64,
            Ordering::Release,
        );
        Ok(Offset::new(self.page_offset(s)))
    }

    /// Extends the large block at page `s` over the free pages right after it.
    fn grow_large_in_place(&self, s: usize, new_size: usize) -> bool {
        let state = &self.line(s)[PM_STATE as usize];
        let st = state.load(Ordering::Acquire);
        let n = count(st) as usize;
        if kind(st) != KIND_LARGE || n == 0 || s + n > self.pages {
            return false;
        }
        let want = (new_size as u64).div_ceil(PAGE) as usize;
        if want <= n {
            return true;
        }
        if s + want > self.pages || !bitmap::claim_run(self.page_bits(), s + n, want - n) {
            return false;
        }
        for p in s + n..s + want {
            let ps = &self.line(p)[PM_STATE as usize];
            let old = ps.load(Ordering::Relaxed);
            ps.store(
                next_gen(old) | (KIND_INTERIOR << KIND_SHIFT) | (p - s) as u64,
                Ordering::Relaxed,
            );
        }
        let grown = (st & !COUNT_MASK) | want as u64;
        if state
            .compare_exchange(st, grown, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            // The block changed under its owner (freed by someone else): give back.
            for p in s + n..s + want {
                let ps = &self.line(p)[PM_STATE as usize];
                let old = ps.load(Ordering::Relaxed);
                ps.store(next_gen(old), Ordering::Relaxed);
            }
            self.release_pages(s + n, want - n);
            return false;
        }
        true
    }

    fn free_large(&self, s: usize, st: u64, offset: u64) -> Result<(), FreeError> {
        let n = count(st) as usize;
        if n == 0 || s + n > self.pages {
            return Err(FreeError::Corrupted {
                what: "large block length out of range",
            });
        }
        let state = &self.line(s)[PM_STATE as usize];
        // Only one of two racing frees wins this CAS: the other sees a double free.
        if state
            .compare_exchange(st, next_gen(st), Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return Err(FreeError::DoubleFree { offset });
        }
        for p in s + 1..s + n {
            let ps = &self.line(p)[PM_STATE as usize];
            let old = ps.load(Ordering::Relaxed);
            ps.store(next_gen(old), Ordering::Relaxed);
        }
        self.release_pages(s, n);
        Ok(())
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

impl ShmAllocator for FreeListAllocator {
    const KIND: AllocatorKind = AllocatorKind::FreeList;

    fn segment(&self) -> &Segment {
        &self.seg
    }

    fn allocate_aligned(&self, size: usize, align: usize) -> Result<Offset, AllocError> {
        check_request(size, align)?;
        if size <= SMALL_MAX {
            if let Some(c) = Self::class_for(size, align) {
                return self.alloc_small(c, size as u64);
            }
        }
        self.alloc_large(size)
    }

    #[inline]
    fn check_range(&self, offset: Offset, len: u64) -> Result<(), AccessError> {
        let rel = data_relative(&self.seg, offset, len)?;
        let not_alloc = AccessError::NotAllocated {
            offset: offset.get(),
            len,
        };
        let (p, within) = self.locate(rel);
        let line = self.line(p);
        let st = line[PM_STATE as usize].load(Ordering::Acquire);
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
                let word = line[PM_BITS as usize + (i / 64) as usize].load(Ordering::Acquire);
                if word & (1 << (i % 64)) == 0 {
                    return Err(not_alloc);
                }
                Ok(())
            }
            KIND_LARGE | KIND_INTERIOR => {
                let (start, dist) = if kind(st) == KIND_LARGE {
                    (p, 0)
                } else {
                    let d = count(st) as usize;
                    (p.checked_sub(d).ok_or(not_alloc.clone())?, d)
                };
                let st0 = self.line(start)[PM_STATE as usize].load(Ordering::Acquire);
                let n = count(st0);
                if kind(st0) != KIND_LARGE || (dist as u64) >= n {
                    return Err(not_alloc);
                }
                if (dist as u64) * PAGE + within + len > n * PAGE {
                    return Err(not_alloc);
                }
                Ok(())
            }
            _ => Err(not_alloc),
        }
    }

    fn available_bytes(&self) -> u64 {
        self.stats().free_bytes
    }

    fn used_bytes(&self) -> u64 {
        self.stats().live_bytes
    }

    /// Scans the page metadata: O(pages). Not for hot paths.
    fn stats(&self) -> Stats {
        let mut classes: Vec<ClassStats> = SIZE_CLASSES
            .iter()
            .map(|&s| ClassStats {
                block_size: u64::from(s),
                ..ClassStats::default()
            })
            .collect();
        let (mut live_blocks, mut live_bytes, mut free_bytes) = (0, 0, 0);
        let bits = self.page_bits();
        for p in 0..self.pages {
            let st = self.line(p)[PM_STATE as usize].load(Ordering::Relaxed);
            match kind(st) {
                KIND_SMALL if class(st) < NCLASS => {
                    let c = class(st);
                    let size = u64::from(SIZE_CLASSES[c]);
                    let used = count(st).min(cap_of(c));
                    let cs = &mut classes[c];
                    cs.spans += 1;
                    cs.live_blocks += used;
                    cs.free_blocks += cap_of(c) - used;
                    live_blocks += used;
                    live_bytes += used * size;
                    free_bytes += (cap_of(c) - used) * size;
                }
                KIND_LARGE => {
                    live_blocks += 1;
                    live_bytes += count(st).min(self.pages as u64) * PAGE;
                }
                KIND_FREE if !bitmap::is_set(bits, p) => free_bytes += PAGE,
                _ => {}
            }
        }
        Stats {
            capacity: self.seg.layout().data_len,
            live_blocks: Some(live_blocks),
            live_bytes,
            free_bytes,
            classes,
        }
    }
}

impl ShmFree for FreeListAllocator {
    fn free(&self, offset: Offset) -> Result<(), FreeError> {
        if offset.is_null() {
            return Err(FreeError::Null);
        }
        let rel = data_relative(&self.seg, offset, 0).map_err(|_| FreeError::OutOfRange {
            offset: offset.get(),
        })?;
        let (p, within) = self.locate(rel);
        let line = self.line(p);
        let st = line[PM_STATE as usize].load(Ordering::Acquire);
        let off = offset.get();
        match kind(st) {
            KIND_SMALL => {
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
                let word = &line[PM_BITS as usize + (i / 64) as usize];
                let bit = 1u64 << (i % 64);
                if word.fetch_and(!bit, Ordering::AcqRel) & bit == 0 {
                    return Err(FreeError::DoubleFree { offset: off });
                }
                self.return_slot(p, c)
                    .map_err(|what| FreeError::Corrupted { what })
            }
            KIND_LARGE if within == 0 => self.free_large(p, st, off),
            KIND_FREE if within == 0 => Err(FreeError::DoubleFree { offset: off }),
            _ => Err(FreeError::NotBlockStart { offset: off }),
        }
    }

    /// Large blocks (whole pages) grow over free pages right after them; blocks of
    /// a size class grow only within their class size.
    fn grow_in_place(&self, offset: Offset, new_size: usize) -> bool {
        let Ok(rel) = data_relative(&self.seg, offset, 0) else {
            return false;
        };
        let (p, within) = self.locate(rel);
        let st = self.line(p)[PM_STATE as usize].load(Ordering::Acquire);
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
}
