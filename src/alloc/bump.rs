//! The bump allocator: one 128-bit atomic word holds
//! `[epoch: 64 | resetter: 29 | cursor: 35]`.
//!
//! Allocation is one 128-bit compare-and-swap that advances the cursor; `reset` is
//! one that rewinds it and increments the epoch. Because epoch and cursor share a
//! word, every allocation is tied to exactly one epoch: an allocation racing a
//! reset either lands before it or retries after it. The epoch is a full 64 bits:
//! at 10^9 resets per second it wraps after 584 years, so an old handle can never
//! match a new epoch.
//!
//! **Resets wait for readers.** Views into the region (arena values, arena
//! archives) pin it through the process registry ([`crate::process`]). A reset
//! first publishes itself in the word (the `resetter` field, its registry token),
//! which stops new allocations and new views, then waits until no other live
//! handle holds a pin, and only then rewinds. If views outlast its timeout it
//! withdraws and returns [`AccessError::Busy`]; nothing changed. A resetter that
//! dies mid-wait is noticed by the next one to find its token dead, which
//! withdraws it. A reader that dies pins nothing (its registry slot is dead).
//!
//! Orderings: `reset` publishes with Release (AcqRel CAS); an allocation's
//! successful CAS is Acquire, so everything before the reset (in the resetting
//! process, and whatever happened-before it) happens-before the new epoch's writes.
//! The pin handshake is SeqCst on both sides (see [`crate::process`]).
//!
//! The 128-bit CAS is `cmpxchg16b` on x86_64 (portable-atomic, detected at run
//! time). A CPU without it would get portable-atomic's lock-based fallback, whose
//! lock is per process and so useless in shared memory: `create` and `open`
//! refuse such a CPU with [`SegmentError::Unsupported`].

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use portable_atomic::AtomicU128;

use super::{check_request, data_relative, Offset, ShmAllocator, Stats};
use crate::error::{AccessError, AllocError, SegmentError};
use crate::process::{self, Membership, ProcessInfo};
use crate::segment::{
    AllocatorKind, CreateOptions, Layout, OpenOptions, Segment, ALLOC_REGION_START,
};

/// One page of metadata: the state word.
const META_LEN: u64 = 4096;
/// Give up on a CAS retry loop after this many rounds: real contention makes
/// progress long before; only a peer rewriting the word forever gets here.
const RETRY_LIMIT: u32 = 1 << 20;

const CURSOR_BITS: u32 = 35;
const CURSOR_MASK: u128 = (1 << CURSOR_BITS) - 1;
const RESETTER_MASK: u128 = ((1 << 29) - 1) << CURSOR_BITS;
/// Largest data region a bump allocator can have (32 GiB - 1).
pub const BUMP_MAX_CAPACITY: u64 = (1 << CURSOR_BITS) - 1;
/// How long [`BumpAllocator::reset`] waits for other handles' views.
pub const DEFAULT_RESET_WAIT: Duration = Duration::from_secs(10);
/// The longest an allocation or a new view waits for a reset in progress (a live
/// resetter withdraws within its own timeout; this bounds a scribbled word).
const MAX_DRAIN_WAIT: Duration = Duration::from_secs(120);

fn require_lock_free_u128() -> Result<(), SegmentError> {
    if AtomicU128::is_lock_free() {
        Ok(())
    } else {
        Err(SegmentError::Unsupported {
            what: "the bump allocator needs a lock-free 128-bit compare-and-swap (cmpxchg16b)",
        })
    }
}

/// Orderings of the bump word, shared with the loom model below so that the model
/// checks exactly these: an allocation loads and succeeds with Acquire, a reset
/// publishes with AcqRel.
const ALLOC_ORDER: Ordering = Ordering::Acquire;
const RESET_ORDER: Ordering = Ordering::AcqRel;

/// Where an allocation of `size` bytes aligned to `mask + 1` lands when `used` bytes
/// of `cap` are taken: `(start, end)` relative to the data region, or `None` if it
/// does not fit (also for a scribbled cursor near `u64::MAX`: no overflow).
fn place(used: u64, size: u64, mask: u64, cap: u64) -> Option<(u64, u64)> {
    let start = used.checked_add(mask)? & !mask;
    let end = start.checked_add(size).filter(|&e| e <= cap)?;
    Some((start, end))
}

fn split(word: u128) -> (u64, u64) {
    ((word >> 64) as u64, (word & CURSOR_MASK) as u64)
}

/// The registry token of the handle resetting now (0: none).
fn resetter(word: u128) -> u32 {
    ((word & RESETTER_MASK) >> CURSOR_BITS) as u32
}

/// Waits with a growing pause (spin, then yield, then sleep up to 1 ms).
fn backoff(round: &mut u32) {
    *round += 1;
    match *round {
        0..=16 => std::hint::spin_loop(),
        17..=64 => std::thread::yield_now(),
        r => std::thread::sleep(Duration::from_micros(u64::from(r.min(1000)))),
    }
}

/// A bump allocator in shared memory: allocation is one atomic compare-and-swap,
/// there is no individual free, and [`reset`](BumpAllocator::reset) releases
/// everything at once and advances the epoch.
///
/// ```
/// use shared_allocator::prelude::*;
/// # let name = format!("doc-bump-{}", std::process::id());
/// # let _cleanup = shared_allocator::segment::UnlinkGuard::new(&name);
/// let mut bump = BumpAllocator::create(&name, 1 << 20)?;
/// let a = bump.allocate(128)?;
/// bump.write(a, b"temporary")?;
/// assert_eq!(bump.read(a, 9)?, b"temporary");
/// bump.reset()?;
/// assert_eq!(bump.available_bytes(), 1 << 20);
/// bump.unlink()?;
/// # Ok::<(), shared_allocator::Error>(())
/// ```
#[derive(Debug)]
pub struct BumpAllocator {
    member: Membership,
    seg: Segment,
    /// Bytes of the data region this process has committed (`fallocate`d) itself:
    /// an allocation ending past it commits up to its end first (see `commit_to`).
    local: std::sync::atomic::AtomicU64,
}

mod inspect;
/// Byte offset, in the metadata region, of the shared word that says how many data
/// bytes were committed (for `stats`, and for views into blocks other processes
/// allocated: a process commits up to it itself before touching them, so a
/// scribbled word cannot make it touch a page the file system may not back).
const COMMITTED_AT: u64 = 32;
/// Bytes committed at a time as the cursor advances.
const COMMIT_CHUNK: u64 = 1 << 20;

impl Drop for BumpAllocator {
    fn drop(&mut self) {
        let (member, seg) = (&mut self.member, &self.seg);
        seg.close_with(member.current(), || member.leave(seg));
    }
}

impl BumpAllocator {
    /// Creates a segment `name` with `capacity` bytes of data region.
    ///
    /// # Errors
    /// [`SegmentError::AlreadyExists`], [`SegmentError::InvalidName`],
    /// [`SegmentError::InvalidParameter`] (capacity 0 or over 32 GiB), or an OS error.
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
        require_lock_free_u128()?;
        if capacity == 0 || capacity > BUMP_MAX_CAPACITY {
            return Err(SegmentError::InvalidParameter {
                what: "bump capacity",
                value: capacity,
            });
        }
        let layout = Layout {
            kind: AllocatorKind::Bump,
            total_size: ALLOC_REGION_START + META_LEN + capacity,
            meta_offset: ALLOC_REGION_START,
            meta_len: META_LEN,
            data_offset: ALLOC_REGION_START + META_LEN,
            data_len: capacity,
            params: [0; 4],
        };
        let seg = Segment::create_attaching(name, layout, opts)?;
        // The metadata page, then the first chunk (committed here, so a file system
        // that cannot hold even that fails `create` at once).
        let first = seg
            .commit(layout.meta_offset, META_LEN)
            .and_then(|()| Self::from_segment(seg))
            .and_then(|this| {
                this.commit_to(COMMIT_CHUNK.min(capacity))
                    .map_err(|errno| SegmentError::Os {
                        op: "fallocate",
                        errno,
                    })?;
                Ok(this)
            });
        let mut this = first.inspect_err(|_| {
            let _ = crate::segment::unlink(name);
        })?;
        // The metadata region is zero (fresh ftruncate): epoch 0, cursor 0.
        this.seg.publish();
        this.seg.attach_end(this.member.current())?;
        Ok(this)
    }

    /// Opens the bump allocator `name`, or creates it with `capacity` bytes if no segment of that name
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

    /// Commits the data region up to byte `end` (relative), in this process, in
    /// chunks of 1 MiB: pages are backed before any allocation hands them out.
    fn commit_to(&self, end: u64) -> Result<(), nix::errno::Errno> {
        let l = self.seg.layout();
        let have = self.local.load(Ordering::Acquire);
        if end <= have {
            return Ok(());
        }
        let to = end.next_multiple_of(COMMIT_CHUNK).min(l.data_len);
        self.seg
            .commit(l.data_offset + have, to - have)
            .map_err(|e| match e {
                SegmentError::Os { errno, .. } => errno,
                _ => nix::errno::Errno::EINVAL,
            })?;
        self.local.fetch_max(to, Ordering::AcqRel);
        self.seg.note_committed(to);
        if let Some(w) = self.seg.words(l.meta_offset + COMMITTED_AT, 1) {
            w[0].fetch_max(to, Ordering::Release);
        }
        Ok(())
    }

    /// Opens the bump allocator `name` created by any process.
    ///
    /// # Errors
    /// [`SegmentError::NotFound`], [`SegmentError::WrongKind`],
    /// [`SegmentError::VersionMismatch`], [`SegmentError::InitTimeout`], ...
    pub fn open(name: &str) -> Result<Self, SegmentError> {
        Self::open_with(name, &OpenOptions::default())
    }

    /// [`open`](Self::open) with options (init timeout).
    ///
    /// # Errors
    /// As [`open`](Self::open).
    pub fn open_with(name: &str, opts: &OpenOptions) -> Result<Self, SegmentError> {
        require_lock_free_u128()?;
        let seg = Segment::open_attaching(name, AllocatorKind::Bump, opts)?;
        let l = *seg.layout();
        if l.meta_len < COMMITTED_AT + 8
            || l.meta_offset % 16 != 0
            || l.data_len > BUMP_MAX_CAPACITY
        {
            return Err(SegmentError::CorruptHeader {
                reason: "bump layout out of range",
            });
        }
        let this = Self::from_segment(seg)?;
        this.seg.attach_end(this.member.current())?;
        Ok(this)
    }

    fn from_segment(seg: Segment) -> Result<Self, SegmentError> {
        // Offsets past what was committed are out of bounds (`data_relative`).
        seg.track_commit(seg.layout().meta_offset + COMMITTED_AT, 0);
        let member = Membership::join(&seg)?.membership;
        Ok(BumpAllocator {
            member,
            seg,
            local: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The handles attached to this segment, from the process registry.
    pub fn processes(&self) -> Vec<ProcessInfo> {
        process::processes(&self.seg, self.member.current())
    }

    /// Removes the segment's name; see [`crate::segment::unlink`].
    ///
    /// # Errors
    /// [`SegmentError::NotFound`] if already removed.
    pub fn unlink(&self) -> Result<(), SegmentError> {
        self.seg.unlink()
    }

    fn state(&self) -> &AtomicU128 {
        // Validated at create/open: meta_len >= 16, 16-aligned, inside the mapping.
        let p = self
            .seg
            .ptr_at(self.seg.layout().meta_offset, 16, 16)
            .expect("validated layout");
        // SAFETY:
        // - `ptr_at` checked 16 bytes inside the mapping at a 16-aligned offset of a
        //   page-aligned mapping; AtomicU128 has the size and alignment of u128;
        // - every bit pattern is a valid AtomicU128, and the word is only accessed
        //   atomically (lock-free: checked at create/open) by every process;
        // - the reference borrows `self`, so the mapping outlives it.
        unsafe { &*(p.as_ptr() as *const AtomicU128) }
    }

    /// The reset epoch: how many resets completed since the segment was created.
    /// Arena handles carry the epoch they were made in.
    pub fn epoch(&self) -> u64 {
        split(self.state().load(Ordering::Acquire)).0
    }

    /// Releases every allocation at once and advances the epoch; returns the new
    /// epoch. Waits up to [`DEFAULT_RESET_WAIT`] for views held by other handles
    /// (in any process): see [`reset_timeout`](Self::reset_timeout).
    ///
    /// # Errors
    /// [`AccessError::Busy`] if views outlast the wait; nothing changed.
    pub fn reset(&mut self) -> Result<u64, AccessError> {
        self.reset_timeout(DEFAULT_RESET_WAIT)
    }

    /// [`reset`](Self::reset) without waiting: `Busy` at once if any other handle
    /// holds a view.
    ///
    /// # Errors
    /// As [`reset`](Self::reset).
    pub fn try_reset(&mut self) -> Result<u64, AccessError> {
        self.reset_timeout(Duration::ZERO)
    }

    /// Releases every allocation at once and advances the epoch, once no other
    /// handle holds a view into the region. O(1) plus the wait.
    ///
    /// Views are the guards of the safety model: [`ArenaRef`](crate::ArenaRef) from
    /// [`ArenaPtr::get`](crate::ArenaPtr::get), an
    /// [`ArenaArchiveReader`](crate::archive::ArenaArchiveReader), and a live
    /// [`Arena`](crate::Arena) (its values are views). They pin the region through
    /// the process registry; this call stops new allocations and views, waits until
    /// the pins of every other live handle are gone, then rewinds. Views of a dead
    /// process pin nothing. While the reset waits, allocations and new views wait
    /// for it (they then see the new epoch, or the old one if it withdrew).
    ///
    /// Handles that carry the epoch (arena handles) taken before this call resolve
    /// to [`AccessError::Stale`] afterwards, in every process. Raw offsets carry
    /// no epoch: reading one after a reset reads whatever was allocated there since.
    ///
    /// Takes `&mut self`: no view through this handle can be alive.
    ///
    /// # Errors
    /// [`AccessError::Busy`] with the number of handles still holding views when
    /// `timeout` passed: the reset withdrew and nothing changed.
    pub fn reset_timeout(&mut self, timeout: Duration) -> Result<u64, AccessError> {
        let token = self.member.token(&self.seg);
        let me = self.member.current();
        if token == 0 {
            return Err(AccessError::Busy { readers: 0 });
        }
        let deadline = Instant::now() + timeout;
        let state = self.state();
        let mut round = 0;
        // Publish the reset (SeqCst: the pin handshake), after any other resetter.
        let mut cur = state.load(Ordering::SeqCst);
        let mut published = None;
        for _ in 0..RETRY_LIMIT {
            if resetter(cur) != 0 {
                cur = self.wait_for_resetter(cur, deadline)?;
                continue;
            }
            let next = cur | (u128::from(token) << CURSOR_BITS);
            match state.compare_exchange(cur, next, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => {
                    published = Some(next);
                    break;
                }
                Err(now) => cur = now,
            }
        }
        let mine = published.ok_or(AccessError::Corrupted {
            what: "bump reset word retried too often",
        })?;
        crate::fail_point!("bump.reset.published");
        let withdraw = |readers| {
            // Only ours to undo; a scribbler's word is left alone.
            let _ = state.compare_exchange(
                mine,
                mine & !RESETTER_MASK,
                Ordering::AcqRel,
                Ordering::Relaxed,
            );
            Err(AccessError::Busy { readers })
        };
        loop {
            let readers = process::pinned_by_others(&self.seg, me);
            if readers == 0 {
                break;
            }
            if Instant::now() >= deadline {
                return withdraw(readers);
            }
            backoff(&mut round);
        }
        // 2^64 resets never happen; wrapping keeps a scribbled MAX from panicking.
        let epoch = split(mine).0.wrapping_add(1);
        match state.compare_exchange(
            mine,
            u128::from(epoch) << 64,
            RESET_ORDER,
            Ordering::Relaxed,
        ) {
            Ok(_) => Ok(epoch),
            // Someone took our reset for a dead one's (or scribbled): start over.
            Err(_) => withdraw(0),
        }
    }

    /// Waits until the reset published in `cur` ends (or withdraws a dead
    /// resetter's); returns the state word then.
    fn wait_for_resetter(&self, mut cur: u128, deadline: Instant) -> Result<u128, AccessError> {
        let state = self.state();
        let mut round = 0;
        while resetter(cur) != 0 {
            if !self.member.is_alive(&self.seg, resetter(cur)) {
                // Its holder died mid-reset: nothing was rewound yet, withdraw it.
                let _ = state.compare_exchange(
                    cur,
                    cur & !RESETTER_MASK,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                );
            } else if Instant::now() >= deadline {
                return Err(AccessError::Busy { readers: 0 });
            } else {
                backoff(&mut round);
            }
            cur = state.load(Ordering::SeqCst);
        }
        Ok(cur)
    }

    /// Pins the region for a view in this handle's slot, once no reset is in
    /// progress; returns the pin and the epoch it protects. The epoch cannot change
    /// while the pin lives.
    pub(crate) fn pin(&self) -> Result<(process::Pin, u64), AccessError> {
        let deadline = Instant::now() + MAX_DRAIN_WAIT;
        for _ in 0..RETRY_LIMIT {
            let pin = process::pin(&self.seg, &self.member)
                .map_err(|_| AccessError::Busy { readers: 0 })?;
            // SeqCst after the increment: the handshake with `reset_timeout`.
            let cur = self.state().load(Ordering::SeqCst);
            if resetter(cur) == 0 {
                return Ok((pin, split(cur).0));
            }
            drop(pin);
            self.wait_for_resetter(cur, deadline)?;
        }
        Err(AccessError::Corrupted {
            what: "bump reset word retried too often",
        })
    }

    /// Allocates and returns the offset together with the epoch it belongs to.
    ///
    /// # Errors
    /// As [`ShmAllocator::allocate_aligned`].
    #[inline]
    pub(crate) fn allocate_with_epoch(
        &self,
        size: usize,
        align: usize,
    ) -> Result<(Offset, u64), AllocError> {
        check_request(size, align)?;
        let l = self.seg.layout();
        let (base, cap) = (l.data_offset, l.data_len);
        let state = self.state();
        let mask = align as u64 - 1;
        let mut cur = state.load(ALLOC_ORDER);
        for _ in 0..RETRY_LIMIT {
            if resetter(cur) != 0 {
                // A reset waits for readers: allocate in the epoch after it.
                cur = self
                    .wait_for_resetter(cur, Instant::now() + MAX_DRAIN_WAIT)
                    .map_err(|_| AllocError::Busy)?;
                continue;
            }
            let (epoch, used) = split(cur);
            // data_offset is page-aligned, so aligning the relative cursor aligns the offset.
            let Some((start, end)) = place(used, size as u64, mask, cap) else {
                if size as u64 > cap {
                    return Err(AllocError::TooLarge {
                        requested: size as u64,
                        max: cap,
                    });
                }
                return Err(AllocError::OutOfMemory {
                    requested: size as u64,
                    available: cap.saturating_sub(used),
                });
            };
            // Back the pages before they can be handed out: a file system that
            // cannot is out-of-memory here, never a SIGBUS at the caller's write.
            if end > self.local.load(Ordering::Relaxed) && self.commit_to(end).is_err() {
                return Err(AllocError::OutOfMemory {
                    requested: size as u64,
                    available: self.local.load(Ordering::Relaxed).saturating_sub(used),
                });
            }
            let next = (cur & !(CURSOR_MASK | RESETTER_MASK)) | u128::from(end);
            // Acquire on success: the reset that began this epoch happens-before
            // this allocation's writes.
            match state.compare_exchange_weak(cur, next, ALLOC_ORDER, ALLOC_ORDER) {
                Ok(_) => return Ok((Offset::new(base + start), epoch)),
                Err(now) => cur = now,
            }
        }
        Err(AllocError::Corrupted {
            what: "bump cursor retried too often",
        })
    }

    fn used(&self) -> u64 {
        split(self.state().load(Ordering::Acquire))
            .1
            .min(self.seg.layout().data_len)
    }
}

// SAFETY: one atomic cursor hands out disjoint ranges; `check_range` admits only
// ranges below the cursor (written extent) of this epoch; no block starts are
// vouched for (the default `check_block_start`).
unsafe impl ShmAllocator for BumpAllocator {
    const KIND: AllocatorKind = AllocatorKind::Bump;

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
        self.allocate_with_epoch(size, align).map(|(o, _)| o)
    }

    /// The range must be inside the part handed out since the last reset.
    fn check_range(&self, offset: Offset, len: u64) -> Result<(), AccessError> {
        let rel = data_relative(&self.seg, offset, len)?;
        if rel + len > self.used() {
            return Err(AccessError::NotAllocated {
                offset: offset.get(),
                len,
            });
        }
        Ok(())
    }

    fn available_bytes(&self) -> u64 {
        self.seg.layout().data_len - self.used()
    }

    fn used_bytes(&self) -> u64 {
        self.used()
    }

    fn stats(&self) -> Stats {
        let used = self.used();
        let l = self.seg.layout();
        let committed = self
            .seg
            .words(l.meta_offset + COMMITTED_AT, 1)
            .map_or(0, |w| w[0].load(Ordering::Relaxed))
            .min(l.data_len);
        Stats {
            cached_bytes: 0,
            committed_bytes: committed,
            capacity: self.seg.layout().data_len,
            live_blocks: None,
            live_bytes: used,
            free_bytes: self.seg.layout().data_len - used,
            classes: Vec::new(),
        }
    }

    fn epoch(&self) -> u64 {
        BumpAllocator::epoch(self)
    }
}

/// A loom model of allocation against reset, with the orderings and the placement
/// function of the real code (`ALLOC_ORDER`, `RESET_ORDER`, `place`). loom has no
/// 128-bit atomic, so the model packs `[epoch: 32 | cursor: 32]` into a loom
/// `AtomicU64`; the protocol (one word, CAS for both operations) is the same.
/// Run: `RUSTFLAGS="--cfg loom" cargo test --release --lib loom_`.
#[cfg(all(test, loom))]
mod loom_tests {
    use super::{place, ALLOC_ORDER, RESET_ORDER};
    use loom::cell::UnsafeCell;
    use loom::sync::atomic::AtomicU64;
    use loom::sync::Arc;
    use std::sync::atomic::Ordering;

    const CAP: u64 = 8;

    struct Model {
        word: AtomicU64,
        /// The 8 data bytes at relative offset 0.
        slot: UnsafeCell<u64>,
    }

    fn pack(epoch: u64, cursor: u64) -> u64 {
        (epoch << 32) | cursor
    }

    fn allocate(m: &Model, size: u64) -> Option<(u64, u64)> {
        let mut cur = m.word.load(ALLOC_ORDER);
        loop {
            let (epoch, used) = (cur >> 32, cur & 0xffff_ffff);
            let (start, end) = place(used, size, 7, CAP)?;
            match m
                .word
                .compare_exchange_weak(cur, pack(epoch, end), ALLOC_ORDER, ALLOC_ORDER)
            {
                Ok(_) => return Some((start, epoch)),
                Err(now) => cur = now,
            }
        }
    }

    fn reset(m: &Model) {
        let mut cur = m.word.load(Ordering::Relaxed);
        loop {
            let next = pack((cur >> 32) + 1, 0);
            match m
                .word
                .compare_exchange_weak(cur, next, RESET_ORDER, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(now) => cur = now,
            }
        }
    }

    /// The last reader of epoch 0 reads the slot and then resets; an allocator that
    /// lands on the slot in epoch 1 writes it. loom proves the write happens after
    /// the read (checked: with `ALLOC_ORDER = Relaxed` loom reports "Causality
    /// violation: Concurrent read and write accesses to `UnsafeCell`").
    #[test]
    fn loom_bump_allocation_happens_after_reset() {
        loom::model(|| {
            let m = Arc::new(Model {
                word: AtomicU64::new(pack(0, CAP)), // epoch 0, the slot handed out
                slot: UnsafeCell::new(1),
            });
            let coordinator = {
                let m = m.clone();
                loom::thread::spawn(move || {
                    // SAFETY: epoch 0's data is only read; writers of epoch 1
                    // allocate after the reset below (what loom checks).
                    let v = m.slot.with(|p| unsafe { *p });
                    assert_eq!(v, 1);
                    reset(&m);
                })
            };
            // Wait (yielding) until an allocation succeeds: only in epoch 1.
            loop {
                match allocate(&m, 8) {
                    Some((0, 1)) => {
                        // SAFETY: the slot was handed to this allocation in epoch 1.
                        m.slot.with_mut(|p| unsafe { *p = 2 });
                        break;
                    }
                    Some(other) => panic!("unexpected allocation {other:?}"),
                    None => loom::thread::yield_now(), // still epoch 0: full
                }
            }
            coordinator.join().unwrap();
        });
    }

    /// Two allocations racing a reset never get the same bytes in the same epoch.
    #[test]
    fn loom_bump_allocations_never_overlap_across_a_reset() {
        loom::model(|| {
            let m = Arc::new(Model {
                word: AtomicU64::new(pack(0, 0)),
                slot: UnsafeCell::new(0),
            });
            let a = {
                let m = m.clone();
                loom::thread::spawn(move || allocate(&m, 8))
            };
            let r = {
                let m = m.clone();
                loom::thread::spawn(move || reset(&m))
            };
            let mine = allocate(&m, 8);
            let theirs = a.join().unwrap();
            r.join().unwrap();
            if let (Some(x), Some(y)) = (mine, theirs) {
                assert_ne!(x, y, "the same bytes twice in one epoch");
            }
        });
    }

    /// The reader-pin handshake of `reset_timeout` and `BumpAllocator::pin`: a
    /// reader increments its pin count, fences SeqCst and loads the state word; a
    /// resetter publishes itself in the state word, fences SeqCst and loads the pin
    /// counts. loom proves that a reader who saw no reset and a resetter who saw
    /// no pin never both go on: the reader's read and the reuse's write never race.
    /// (loom models SeqCst fences, not SeqCst accesses: with SeqCst loads and
    /// stores and no fences it reports the race, as it does for any Dekker
    /// handshake, tokio-rs/loom#180; the fences are what the real code uses.)
    #[test]
    fn loom_reader_pins_hold_off_a_reset() {
        loom::model(|| {
            let m = Arc::new((AtomicU64::new(0), AtomicU64::new(0), UnsafeCell::new(1u64)));
            let reader = {
                let m = m.clone();
                loom::thread::spawn(move || {
                    let (pins, state, data) = &*m;
                    pins.fetch_add(1, Ordering::SeqCst);
                    loom::sync::atomic::fence(Ordering::SeqCst);
                    if state.load(Ordering::SeqCst) == 0 {
                        // SAFETY: pinned and no reset published: the resetter
                        // cannot write until the pin is dropped (what loom checks).
                        let v = data.with(|p| unsafe { *p });
                        assert_eq!(v, 1);
                    }
                    pins.fetch_sub(1, Ordering::Release);
                })
            };
            let (pins, state, data) = &*m;
            state.fetch_or(1, Ordering::SeqCst);
            loom::sync::atomic::fence(Ordering::SeqCst);
            if pins.load(Ordering::SeqCst) == 0 {
                // SAFETY: no pin after publishing: no reader is in the data.
                data.with_mut(|p| unsafe { *p = 2 });
            }
            reader.join().unwrap();
        });
    }
}
