//! What the per-handle caches of the free list and the slab share: the owner
//! thread's identity, the marks written into cached blocks, and the table of caches
//! that this process's threads own (so a thread that runs out of memory can empty
//! its own caches in its other handles, which cannot honour a flush request while
//! it waits).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use super::in_flight::{Batch, InFlight};
use super::{Offset, ShmAllocator};
use crate::error::AllocError;
use crate::process::{self, Membership};
use crate::segment::Segment;

/// Blocks taken or returned by one read-modify-write of a block word, at most.
pub(crate) const BATCH: u32 = 8;

/// A per-segment random key for the marks written into cached blocks.
pub(crate) fn cache_key() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    (t ^ (u64::from(std::process::id()) << 32)).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1
}

// Caches owned by threads of this process, by segment object (inode), slot and
// owner thread (`process::LOCAL_CACHES`): a thread that runs out of memory empties
// the caches it owns in its other handles itself (they cannot honour a flush
// request while it waits).
use process::{OwnedCache, LOCAL_CACHES};

/// A number unique among this process's live threads (never 0): the address of a
/// thread-local. A thread that starts after another ended may get the same number,
/// which is fine here: the ended thread no longer uses the cache it owned.
#[inline]
pub(crate) fn thread_id() -> u64 {
    thread_local!(static ANCHOR: u8 = const { 0 });
    ANCHOR.with(|a| a as *const u8 as u64)
}

/// Records that thread `tid` owns slot `slot`'s cache of the segment object `ino`.
pub(crate) fn register_local(ino: u64, slot: usize, tid: u64) {
    LOCAL_CACHES.lock().push(OwnedCache {
        ino,
        slot,
        tid,
        fork_epoch: process::fork_epoch(),
    });
}

/// Forgets that record (the handle is dropped).
pub(crate) fn unregister_local(ino: u64, slot: usize, tid: u64) {
    LOCAL_CACHES
        .lock()
        .retain(|l| !(l.ino == ino && l.slot == slot && l.tid == tid));
}

/// Whether the calling thread owns slot `slot`'s cache of object `ino` (through
/// any handle of this process, since the last fork).
pub(crate) fn owned_here(ino: u64, slot: usize) -> bool {
    let tid = thread_id();
    LOCAL_CACHES.lock().iter().any(|l| {
        l.ino == ino && l.slot == slot && l.tid == tid && l.fork_epoch == process::fork_epoch()
    })
}

/// Which thread of this process uses a handle's cache: the first one that
/// allocates or frees through the handle. Other threads take the shared path.
#[derive(Debug)]
pub(crate) struct CacheOwner {
    owner: AtomicU64,
    /// The owner's slot as `[fork epoch + 1: 56 | slot: 8]` (0: not known yet): the
    /// fast path's copy of the membership's slot, valid in this fork epoch only.
    slot: AtomicU64,
    /// The address of that slot's cache words (`cache0 + slot * stride`), written
    /// with `slot` by the owner thread, read only by it.
    base: AtomicUsize,
    /// The slot's gate word that lets this handle in ([`open_word`] of its
    /// registry generation), written with `slot`.
    open: AtomicU64,
    /// Address of registry slot 0's cache words in this mapping, and bytes per
    /// slot: the allocator checked at open that all [`process::SLOTS`] fit in its
    /// metadata region.
    cache0: usize,
    stride: usize,
}

impl CacheOwner {
    /// An owner record for caches laid out from address `cache0`, `stride` bytes
    /// per registry slot (all [`process::SLOTS`] of them inside the mapping).
    pub fn new(cache0: usize, stride: usize) -> CacheOwner {
        CacheOwner {
            owner: AtomicU64::new(0),
            slot: AtomicU64::new(0),
            base: AtomicUsize::new(0),
            open: AtomicU64::new(0),
            cache0,
            stride,
        }
    }

    /// The handle's registry slot, if the calling thread owns its cache (claiming
    /// the cache if nobody does yet).
    #[inline(always)]
    pub fn slot(&self, member: &Membership, seg: &Segment, ino: u64) -> Option<usize> {
        if self.owner.load(Ordering::Relaxed) == thread_id() {
            let s = self.slot.load(Ordering::Relaxed);
            if s >> 8 == process::fork_epoch() + 1 {
                return Some((s & 0xFF) as usize);
            }
            return self.refresh(member, seg);
        }
        self.claim(member, seg, ino)
    }

    /// The fast paths' question: if the calling thread owns the cache and its slot
    /// is known in this fork epoch, the address of the slot's cache words (the
    /// `stride` bytes from `cache0 + slot * stride`, inside the mapping). `None`
    /// sends the caller to the full path, which claims or refreshes.
    #[inline(always)]
    pub fn base(&self) -> Option<*const AtomicU64> {
        if self.owner.load(Ordering::Relaxed) != thread_id()
            || self.slot.load(Ordering::Relaxed) >> 8 != process::fork_epoch() + 1
        {
            return None;
        }
        Some(self.base.load(Ordering::Relaxed) as *const AtomicU64)
    }

    /// The gate word that lets this handle in (valid when [`base`](Self::base)
    /// returned `Some`).
    #[inline(always)]
    pub fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    /// The slot after a fork (the membership re-joins), remembered for the fast path.
    #[cold]
    fn refresh(&self, member: &Membership, seg: &Segment) -> Option<usize> {
        // Once per thread and handle (and after a fork): the kernel-level check
        // that this handle still holds its lock.
        let slot = member.verified_slot(seg).ok()?;
        if slot >= process::SLOTS {
            return None;
        }
        self.base
            .store(self.cache0 + slot * self.stride, Ordering::Relaxed);
        self.open.store(
            open_word(process::slot_generation(seg, slot)),
            Ordering::Relaxed,
        );
        self.slot.store(
            ((process::fork_epoch() + 1) << 8) | slot as u64,
            Ordering::Relaxed,
        );
        Some(slot)
    }

    #[cold]
    fn claim(&self, member: &Membership, seg: &Segment, ino: u64) -> Option<usize> {
        let me = thread_id();
        if self
            .owner
            .compare_exchange(0, me, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return None;
        }
        let slot = self.refresh(member, seg)?;
        register_local(ino, slot, me);
        Some(slot)
    }

    /// Forgets the owner record of `slot` (the handle is being dropped).
    pub fn release(&self, ino: u64, slot: usize) {
        unregister_local(ino, slot, self.owner.load(Ordering::Relaxed));
    }
}

// ------------------------------------------------------------------ magazines

/// One class's cache in a registry slot, `[count, entries ...]`: the entries are
/// block offsets, the count says how many of them (from the first) are cached.
/// Only the owner inside the gate, or the gate's claimant, changes it. Every
/// change keeps it consistent at each store, in the order that makes a crash leak
/// at most the blocks in hand and never list a block twice.
#[derive(Clone, Copy)]
pub(crate) struct Mag<'a>(&'a [AtomicU64]);

impl<'a> Mag<'a> {
    /// The cache in `words` (`depth + 1` of them).
    #[inline(always)]
    pub fn new(words: &'a [AtomicU64]) -> Mag<'a> {
        debug_assert!(!words.is_empty());
        Mag(words)
    }

    /// Entries it can hold.
    #[inline(always)]
    pub fn depth(&self) -> usize {
        self.0.len() - 1
    }

    /// Entries it holds (a count past the depth, a scribble, reads as full).
    #[inline(always)]
    pub fn len(&self) -> usize {
        (self.0[0].load(Ordering::Relaxed) as usize).min(self.depth())
    }

    /// The cached entries (as read now).
    pub fn entries(&self) -> impl Iterator<Item = u64> + 'a {
        let words = self.0;
        words[1..=self.len()]
            .iter()
            .map(|e| e.load(Ordering::Relaxed))
    }

    /// Takes the top entry. The count drops first: a crash after that store leaks
    /// the block (its code may have had it), before it the reclaimer returns it.
    /// Then the block's cache mark, `mark(entry)`, is cleared. An entry that
    /// `mark` refuses (no block of this allocator: a scribble) is dropped, and
    /// `None` returned; `fail_point` runs before the count drops.
    #[inline(always)]
    pub fn pop<'m>(
        &self,
        mark: impl FnOnce(u64) -> Option<&'m AtomicU64>,
        fail_point: impl FnOnce(),
    ) -> Option<u64> {
        let n = self.0[0].load(Ordering::Relaxed) as usize;
        if n == 0 || n > self.depth() {
            return None;
        }
        let off = self.0[n].load(Ordering::Relaxed);
        let m = mark(off);
        fail_point();
        self.0[0].store(n as u64 - 1, Ordering::Relaxed);
        m?.store(0, Ordering::Relaxed);
        Some(off)
    }

    /// Puts `off` on top if there is room: the entry first, then the count (a
    /// crash in between leaks this one block, which still reads as allocated),
    /// then its mark `key ^ off` in `mark`. `fail_point` runs before the count.
    #[inline(always)]
    pub fn push(&self, off: u64, mark: &AtomicU64, key: u64, fail_point: impl FnOnce()) -> bool {
        let n = self.0[0].load(Ordering::Relaxed) as usize;
        if n >= self.depth() {
            return false;
        }
        self.0[n + 1].store(off, Ordering::Relaxed);
        fail_point();
        self.0[0].store(n as u64 + 1, Ordering::Relaxed);
        mark.store(key ^ off, Ordering::Relaxed);
        true
    }

    /// Puts blocks just taken from the shared words on top, as many as fit: the
    /// entries, then the count (a crash in between leaks them: taken, and in no
    /// cache), then their marks. Returns how many it cached; the caller took no
    /// more than there was room for.
    pub fn append<'m>(
        &self,
        offs: impl Iterator<Item = u64>,
        mark: impl Fn(u64) -> Option<&'m AtomicU64>,
        key: u64,
    ) -> usize {
        let from = self.len();
        let mut n = from;
        for off in offs.take(self.depth() - from) {
            n += 1;
            self.0[n].store(off, Ordering::Relaxed);
        }
        self.0[0].store(n as u64, Ordering::Relaxed);
        for e in &self.0[from + 1..=n] {
            let off = e.load(Ordering::Relaxed);
            if let Some(m) = mark(off) {
                m.store(key ^ off, Ordering::Relaxed);
            }
        }
        n - from
    }

    /// Lists entries `lo..=hi` again after a flush that died between dropping
    /// the count below them and giving them back (its record says `GIVING`): the
    /// flush never rewrites entries, so they are still there. Only if the count
    /// stands right below them (else they are listed already, or the record is
    /// stale or scribbled).
    pub fn relist(&self, lo: usize, hi: usize) {
        if lo >= 1 && lo <= hi && hi <= self.depth() && self.len() == lo - 1 {
            self.0[0].store(hi as u64, Ordering::Relaxed);
        }
    }

    /// Gives back the entries above the first `keep`; returns the new count. From
    /// the top, for each run of at most [`BATCH`] consecutive entries of one shared
    /// word (the same `word_of`): their marks are cleared (a block still counted in
    /// the cache needs none), the run is recorded in `rec` as `GIVING`, the count
    /// drops below it, `give_back(run, rec)` returns them (arming the record right
    /// before its one read-modify-write), and the record is cleared. Entries are
    /// never rewritten (no reordering): every entry the count covers is one the
    /// cache held, exactly once, at every instant, so a crash anywhere never lists
    /// a block twice; a crash between the count and the give-back leaves the run
    /// to the record, which the next gate holder lists again (see
    /// [`super::in_flight`]). `fail_point(false)` runs after the count dropped,
    /// `fail_point(true)` after the record was cleared.
    #[allow(clippy::too_many_arguments)]
    pub fn flush<'m, K: PartialEq>(
        &self,
        keep: usize,
        class: usize,
        rec: InFlight<'_>,
        word_of: impl Fn(u64) -> K,
        mark: impl Fn(u64) -> Option<&'m AtomicU64>,
        mut give_back: impl FnMut(&[u64], InFlight<'_>),
        fail_point: impl Fn(bool),
    ) -> usize {
        let n = self.len();
        if n <= keep {
            return n;
        }
        let mut run = [0u64; BATCH as usize];
        let mut count = n;
        while count > keep {
            // The run: entries count, count - 1, ... of the top entry's word.
            let top = self.0[count].load(Ordering::Relaxed);
            let w = word_of(top);
            let mut len = 1;
            run[0] = top;
            while len < BATCH as usize && count - len > keep {
                let e = self.0[count - len].load(Ordering::Relaxed);
                if word_of(e) != w {
                    break;
                }
                run[len] = e;
                len += 1;
            }
            for &off in &run[..len] {
                if let Some(m) = mark(off) {
                    m.store(0, Ordering::Relaxed);
                }
            }
            rec.giving(class, count - len + 1, count);
            count -= len;
            self.0[0].store(count as u64, Ordering::Relaxed);
            fail_point(false);
            give_back(&run[..len], rec);
            rec.clear();
            fail_point(true);
        }
        count
    }
}

// ------------------------------------------------------------------ the gate

/// Word 0 of a registry slot's cache words: the gate. [`open_word`]`(gen)` (open
/// for the slot's holder of generation `gen`: only that holder's fast path
/// enters), `0` (open, not yet stamped: a clean leave), [`REQUEST`] (the owner is
/// asked to empty its cache), [`RECLAIMED`] (a reclaimer emptied a dead holder's
/// cache), or a claim by another thread, `CLAIM | token << 1`, that is emptying it.
///
/// The generation in the open word is what keeps a handle that lost its slot (its
/// lock descriptor was closed, a reclaimer freed the slot, another handle took it)
/// out of the next holder's cache: its fast path compares the word with its own
/// generation's, and its slow path checks the slot first (`Caches::holds`).
const GATE_CTL: usize = 0;
/// Word 1: non-zero while the owner thread is inside an operation on its cache.
const GATE_ACTIVE: usize = 1;
const REQUEST: u64 = 1;
const RECLAIMED: u64 = 2;
const CLAIM: u64 = 1 << 63;

/// The gate word that lets the holder of registry generation `gen` in (never 0,
/// [`REQUEST`], [`RECLAIMED`] or a claim).
#[inline(always)]
pub(crate) fn open_word(gen: u32) -> u64 {
    (u64::from(gen) << 2) | 3
}

/// Whether `c` is some holder's open word.
#[inline(always)]
fn is_open_word(c: u64) -> bool {
    c & CLAIM == 0 && c & 3 == 3
}

/// How long a thief waits for an owner to leave its cache, and a reclaimer for a
/// thief to finish, before giving up on that cache for now.
const STEAL_WAIT: std::time::Duration = std::time::Duration::from_millis(10);
/// CAS rounds of one [`Gate::claim`] before it gives up on a word that keeps changing.
const CLAIM_ROUNDS: u32 = 64;
pub(crate) const CLAIM_WAIT: std::time::Duration = std::time::Duration::from_millis(50);

/// Who may touch a registry slot's cache: its owner thread, or one other thread
/// that claimed it (a *thief* emptying an idle owner's cache under memory
/// pressure, or the reclaimer of a dead owner).
///
/// The owner's side costs two plain stores and a load per operation: it marks
/// itself active, then reads the gate. A thief claims the gate, then runs
/// `membarrier(MEMBARRIER_CMD_GLOBAL)`, which puts a full memory barrier into
/// every running thread of the machine, then reads the owner's mark. Either the
/// owner's mark reaches the thief, which then waits until the owner leaves, or the
/// owner's read of the gate comes after the barrier and sees the claim, and the
/// owner stays out (Dekker's handshake with the heavy fence on the rare side, as
/// in folly's `asymmetricHeavyBarrier` and the kernel's RCU).
///
/// Every change to a cache's words keeps it consistent at each store (the count
/// drops before blocks go back), so a thief or owner that dies mid-way leaves a
/// cache that the next one continues from: the gate of a dead claimant is
/// reopened by whoever finds it.
#[derive(Clone, Copy)]
pub(crate) struct Gate<'a> {
    ctl: &'a AtomicU64,
    active: &'a AtomicU64,
}

fn claim_word(token: u32) -> u64 {
    CLAIM | u64::from(token) << 1
}

impl<'a> Gate<'a> {
    /// The gate in a slot's cache words (at least two words).
    #[inline(always)]
    pub fn new(words: &'a [AtomicU64]) -> Gate<'a> {
        Gate {
            ctl: &words[GATE_CTL],
            active: &words[GATE_ACTIVE],
        }
    }

    /// The gate whose two words start at `base`.
    ///
    /// # Safety
    /// `base` must point at two 8-aligned words that stay mapped for `'a` and are
    /// only accessed atomically.
    #[inline(always)]
    pub unsafe fn at(base: *const AtomicU64) -> Gate<'a> {
        // SAFETY: two valid AtomicU64s live for `'a` at `base` (caller's contract).
        Gate::new(unsafe { std::slice::from_raw_parts(base, 2) })
    }

    /// The owner's entry on its fast path: true if the gate is open for the
    /// holder whose open word is `open` (the owner is now inside and must
    /// [`leave`](Self::leave)); false sends it to [`enter`](Self::enter) on its
    /// slow path.
    #[inline(always)]
    pub fn enter_fast(&self, open: u64) -> bool {
        self.active.store(1, Ordering::Relaxed);
        // Orders the mark before the read of the gate in this thread's program;
        // the thief's membarrier makes the order hold between processors.
        std::sync::atomic::compiler_fence(Ordering::SeqCst);
        if self.ctl.load(Ordering::Acquire) == open {
            return true;
        }
        self.active.store(0, Ordering::Release);
        false
    }

    /// The owner leaves its cache: every store it made inside is published to
    /// the next thief.
    #[inline(always)]
    pub fn leave(&self) {
        self.active.store(0, Ordering::Release);
    }

    /// The owner's full entry, as the slot's current holder, whose open word is
    /// `open` (the caller checked that the slot is still its own). `Some(flush)`:
    /// the owner is inside (it must [`leave`](Self::leave)), and if `flush`, a
    /// flush was requested (the request is taken: the caller empties its cache).
    /// `None`: a live thread has claimed the cache, and the owner uses the shared
    /// path until it is done. An unstamped gate, a reclaimed one, a dead
    /// claimant's, or an earlier holder's open word (or a scribble) is stamped with
    /// `open`.
    #[cold]
    pub fn enter(&self, open: u64, alive: &dyn Fn(u32) -> bool) -> Option<bool> {
        for _ in 0..64 {
            self.active.store(1, Ordering::Relaxed);
            std::sync::atomic::compiler_fence(Ordering::SeqCst);
            let c = self.ctl.load(Ordering::Acquire);
            if c == open {
                return Some(false);
            }
            if c == REQUEST {
                if self
                    .ctl
                    .compare_exchange(REQUEST, open, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
                {
                    return Some(true);
                }
                continue;
            }
            self.active.store(0, Ordering::Release);
            if c & CLAIM != 0 && alive(((c & !CLAIM) >> 1) as u32) {
                return None;
            }
            let _ = self
                .ctl
                .compare_exchange(c, open, Ordering::AcqRel, Ordering::Relaxed);
        }
        self.active.store(0, Ordering::Release);
        None
    }

    /// Asks the owner to empty its cache on its next slow path (no effect while
    /// the gate is claimed).
    pub fn request(&self) {
        let c = self.ctl.load(Ordering::Acquire);
        if c == 0 || is_open_word(c) {
            let _ = self
                .ctl
                .compare_exchange(c, REQUEST, Ordering::AcqRel, Ordering::Relaxed);
        }
    }

    /// The owner's cache is empty and the handle is being dropped: the gate
    /// goes back to unstamped (the slot's next holder stamps its own).
    pub fn unstamp(&self, open: u64) {
        let _ = self
            .ctl
            .compare_exchange(open, 0, Ordering::AcqRel, Ordering::Relaxed);
    }

    /// Claims the cache for the thread of registration `token` (not the owner).
    /// False if another live thread holds it, or if the gate word kept changing
    /// under this thread for [`CLAIM_ROUNDS`] rounds (a peer rewriting it).
    pub fn claim(&self, token: u32, alive: &dyn Fn(u32) -> bool) -> bool {
        let me = claim_word(token);
        let mut c = self.ctl.load(Ordering::Acquire);
        for _ in 0..CLAIM_ROUNDS {
            if c & CLAIM != 0 && c != me && alive(((c & !CLAIM) >> 1) as u32) {
                return false;
            }
            match self
                .ctl
                .compare_exchange(c, me, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return true,
                Err(now) => c = now,
            }
        }
        false
    }

    /// [`claim`](Self::claim), waiting until `deadline` for a live claimant to finish.
    pub fn claim_waiting(
        &self,
        token: u32,
        alive: &dyn Fn(u32) -> bool,
        deadline: std::time::Instant,
    ) -> bool {
        loop {
            if self.claim(token, alive) {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::yield_now();
        }
    }

    /// After [`claim`](Self::claim) and [`heavy_barrier`]: waits until the owner is
    /// outside its cache, or until `deadline`. False if it stayed inside.
    pub fn owner_left(&self, deadline: std::time::Instant) -> bool {
        while self.active.load(Ordering::Acquire) != 0 {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::yield_now();
        }
        true
    }

    /// Ends a claim of `token`, leaving `to` behind: the owner's open word (its
    /// fast path goes on), [`REQUEST`] (the owner never left, so it empties its
    /// cache itself), or [`RECLAIMED`] (a dead owner's reclaimer).
    pub fn release(&self, token: u32, to: u64) {
        let _ =
            self.ctl
                .compare_exchange(claim_word(token), to, Ordering::AcqRel, Ordering::Relaxed);
    }

    /// A dead owner's reclaimer, holding the claim: clears the owner's mark,
    /// which may have died set, so the slot's next owner starts clean.
    pub fn clear_owner(&self) {
        self.active.store(0, Ordering::Release);
    }
}

/// A full memory barrier in every running thread of the machine
/// (`membarrier(MEMBARRIER_CMD_GLOBAL)`, a few milliseconds). False if the kernel
/// refuses it (no `CONFIG_MEMBARRIER`, `nohz_full` CPUs, a seccomp filter): then no
/// cache is ever taken from a live owner, and flush requests alone remain.
pub(crate) fn heavy_barrier() -> bool {
    #[cfg(not(loom))]
    {
        use std::sync::atomic::AtomicU8;
        // 0: unknown, 1: works, 2: refused.
        static STATE: AtomicU8 = AtomicU8::new(0);
        if STATE.load(Ordering::Relaxed) == 2 {
            return false;
        }
        let ok = rustix::thread::membarrier(rustix::thread::MembarrierCommand::Global).is_ok();
        STATE.store(if ok { 1 } else { 2 }, Ordering::Relaxed);
        ok
    }
    #[cfg(loom)]
    {
        false
    }
}

// ------------------------------------------------------------------ whole caches

/// What the free list and the slab give the cache protocol: per registry slot, a
/// gate and a cache that can be counted and emptied (their registry token and
/// segment come from [`ShmAllocator`]).
pub(crate) trait Caches: ShmAllocator {
    /// Slot `slot`'s gate.
    fn gate(&self, slot: usize) -> Gate<'_>;
    /// Blocks held in slot `slot`'s cache, as its counts say.
    fn cached_in(&self, slot: usize) -> u64;
    /// Returns every block of slot `slot`'s cache to the shared structures (the
    /// caller is inside the gate, or holds its claim). Returns how many.
    fn flush_cache(&self, slot: usize) -> usize;
    /// The segment object's inode (the key of [`owned_here`]).
    fn cache_ino(&self) -> u64;
    /// The first word of the block at `off` (its cache mark), if `off` is a block
    /// start of this allocator; and the segment's mark key.
    fn mark(&self, off: u64) -> Option<&AtomicU64>;
    fn mark_key(&self) -> u64;
    /// Whether slot `slot` is still this handle's (see `Membership::holds`).
    fn holds(&self, slot: usize) -> bool;
    /// Slot `slot`'s batch record (see [`super::in_flight`]).
    fn in_flight(&self, slot: usize) -> InFlight<'_>;
    /// Slot `slot`'s cache of class `class`, if there is such a class.
    fn class_mag(&self, slot: usize, class: usize) -> Option<Mag<'_>>;
    /// The blocks of a `TAKEN` record (`word` as the allocator wrote it, `mask`
    /// the bits taken), as offsets: only bits of a word that is still what the
    /// record names and that are still set (anything else is a scribble and
    /// is skipped), at most 64.
    fn taken_blocks(&self, class: usize, word: u64, mask: u64) -> Vec<u64>;

    /// Whether the block at `off` sits in some handle's cache (free to its users,
    /// though taken in the shared words): it carries the mark `key ^ off`.
    fn is_cached(&self, off: u64) -> bool {
        self.mark(off)
            .is_some_and(|m| m.load(Ordering::Relaxed) == self.mark_key() ^ off)
    }
}

/// Settles the batch that a gate holder of slot `slot` left in flight when it
/// died (the caller holds the gate now; see [`super::in_flight`]): the blocks a
/// refill took and did not list yet are listed in the cache, a run a flush
/// unlisted and did not give back yet is listed again. Then the record is
/// cleared, and the cache (flushed or used on) holds every block exactly once.
/// A settler that dies half-way leaves a record that settles to the same end.
#[inline(always)]
pub(crate) fn settle<C: Caches + ?Sized>(c: &C, slot: usize) {
    if c.in_flight(slot).is_set() {
        settle_set(c, slot);
    }
}

#[cold]
#[inline(never)]
fn settle_set<C: Caches + ?Sized>(c: &C, slot: usize) {
    let rec = c.in_flight(slot);
    match rec.read() {
        Batch::Taken { class, word, mask } => {
            if let Some(m) = c.class_mag(slot, class) {
                let listed: Vec<u64> = m.entries().collect();
                let missing: Vec<u64> = c
                    .taken_blocks(class, word, mask)
                    .into_iter()
                    .filter(|o| !listed.contains(o))
                    .collect();
                m.append(missing.into_iter(), |o| c.mark(o), c.mark_key());
            }
        }
        Batch::Giving { class, lo, hi } => {
            if let Some(m) = c.class_mag(slot, class) {
                m.relist(lo, hi);
            }
        }
        Batch::Nothing => {}
    }
    rec.clear();
}

/// Runs `f` inside slot `slot`'s gate, as the owner of its cache (emptying the
/// cache first if a flush was requested); `None` (without running it) while
/// another thread is emptying the cache.
pub(crate) fn inside<C: Caches + ?Sized, R>(
    c: &C,
    slot: usize,
    f: impl FnOnce() -> R,
) -> Option<R> {
    // A handle whose slot was reclaimed (its lock descriptor was closed) or taken
    // over never touches the slot's cache words again.
    if !c.holds(slot) {
        return None;
    }
    let gate = c.gate(slot);
    let open = open_word(process::slot_generation(c.segment(), slot));
    let flush = gate.enter(open, &|t| c.token_alive(t))?;
    // A thief that died inside our cache may have left a batch in flight.
    settle(c, slot);
    if flush {
        c.flush_cache(slot);
    }
    let r = f();
    gate.leave();
    Some(r)
}

/// The owner's allocation past the fast path: `pop` inside the gate; if the
/// cache had nothing, `shared` outside it (running out of memory empties
/// caches, ours included), then `refill` inside it again with the block that
/// `shared` returned.
pub(crate) fn alloc_through<C: Caches + ?Sized>(
    c: &C,
    slot: usize,
    pop: impl FnOnce() -> Option<u64>,
    shared: impl FnOnce() -> Result<Offset, AllocError>,
    refill: impl FnOnce(Offset),
) -> Result<Offset, AllocError> {
    match inside(c, slot, pop) {
        Some(Some(off)) => Ok(Offset::new(off)),
        Some(None) => {
            let first = shared()?;
            inside(c, slot, || refill(first));
            Ok(first)
        }
        None => shared(), // another thread is emptying our cache
    }
}

/// A handle with a cache is dropped: its cache goes back (dropping needs `&mut`,
/// so no thread uses it), and its owner record is forgotten.
pub(crate) fn drop_own<C: Caches + ?Sized>(c: &C, owner: &CacheOwner, slot: usize) {
    flush_own(c, slot);
    if c.holds(slot) {
        c.gate(slot)
            .unstamp(open_word(process::slot_generation(c.segment(), slot)));
    }
    owner.release(c.cache_ino(), slot);
}

/// Empties the cache of slot `slot`, which the calling thread owns (through this
/// handle or another); nothing if another thread is emptying it already.
pub(crate) fn flush_own<C: Caches + ?Sized>(c: &C, slot: usize) -> usize {
    inside(c, slot, || c.flush_cache(slot)).unwrap_or(0)
}

/// Empties the cache of a dead handle's slot, whose slot lock we hold (or that
/// we just joined). Claims it first, since a thief may be emptying it, waiting for
/// a live claimant until `deadline` (one deadline for a whole reclaim pass, see
/// [`CLAIM_WAIT`], so claims scribbled into many gates cost one wait): `false` if a
/// live thief kept it past the deadline (a later reclaim finishes), with the count
/// of blocks returned.
pub(crate) fn flush_dead<C: Caches + ?Sized>(
    c: &C,
    slot: usize,
    deadline: std::time::Instant,
) -> (bool, usize) {
    let gate = c.gate(slot);
    let token = c.liveness_token();
    if !gate.claim_waiting(token, &|t| c.token_alive(t), deadline) {
        return (false, 0);
    }
    crate::fail_point!("cache.dead.claimed");
    settle(c, slot);
    let n = c.flush_cache(slot);
    gate.clear_owner();
    gate.release(token, RECLAIMED);
    (true, n)
}

/// Out of memory: asks every other live handle that holds cached blocks to empty
/// its cache on its next call (a cache this thread owns through another handle is
/// emptied here: its owner is the one waiting). True if any held blocks.
pub(crate) fn request_flushes<C: Caches + ?Sized>(c: &C, me: Option<usize>) -> bool {
    let (seg, ino) = (c.segment(), c.cache_ino());
    let mut any = false;
    for slot in 0..process::SLOTS {
        // Only handles that can answer: dead ones are reclaimed by repair, and
        // counts in free slots are leftovers (or scribbles).
        if Some(slot) == me || !process::listed_live(seg, slot) || c.cached_in(slot) == 0 {
            continue;
        }
        if owned_here(ino, slot) {
            flush_own(c, slot);
        } else {
            c.gate(slot).request();
        }
        any = true;
    }
    any
}

/// Out of memory: takes the cached blocks of live handles in other threads that
/// are not inside a cache operation right now (idle owners never come to honour a
/// request). One [`heavy_barrier`] for all of them; an owner that stays inside
/// past the wait keeps its cache, with a flush request. Returns how many blocks
/// went back.
pub(crate) fn steal_idle<C: Caches + ?Sized>(c: &C, me: Option<usize>) -> usize {
    let (seg, ino) = (c.segment(), c.cache_ino());
    let token = c.liveness_token();
    let alive = |t| c.token_alive(t);
    let claimed: Vec<usize> = (0..process::SLOTS)
        .filter(|&s| Some(s) != me && process::listed_live(seg, s))
        .filter(|&s| c.cached_in(s) != 0 && !owned_here(ino, s))
        .filter(|&s| c.gate(s).claim(token, &alive))
        .collect();
    if claimed.is_empty() {
        return 0;
    }
    let barrier = heavy_barrier();
    crate::fail_point!("cache.steal.claimed");
    let mut n = 0;
    // One wait for all of them (10 ms): owners that stay inside (or peers that
    // scribbled their marks) cost that once, not once per slot.
    let deadline = std::time::Instant::now() + STEAL_WAIT;
    for s in claimed {
        let gate = c.gate(s);
        let took = barrier && gate.owner_left(deadline);
        if took {
            settle(c, s);
            n += c.flush_cache(s);
        }
        let to = if took {
            open_word(process::slot_generation(seg, s))
        } else {
            REQUEST
        };
        gate.release(token, to);
    }
    n
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// Issue 16, 4: at every step of a flush (each `fail_point`, where a crash may
    /// land), the entries the count covers are distinct blocks of the cache, and
    /// together with the blocks given back so far they are exactly the cache: no
    /// block listed twice, none lost from the list. (The sort that flush used to
    /// do in place broke this: a crash in the middle listed one block twice.)
    #[test]
    fn a_flush_never_lists_a_block_twice_or_loses_one() {
        for seed in 0..200u64 {
            let depth = 32;
            let words: Vec<AtomicU64> = (0..=depth).map(|_| AtomicU64::new(0)).collect();
            let m = Mag::new(&words);
            let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let mut all = Vec::new();
            while all.len() < depth {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // Blocks of 4 "words" (offset / 1000), interleaved at random.
                let off = (x % 4) * 1000 + 16 * (all.len() as u64 + 1);
                all.push(off);
            }
            for (k, &off) in all.iter().enumerate() {
                words[k + 1].store(off, Ordering::Relaxed);
            }
            words[0].store(depth as u64, Ordering::Relaxed);
            let keep = (seed % 5) as usize;
            let given = std::cell::RefCell::new(Vec::new());
            let rec_words: Vec<AtomicU64> = (0..8).map(|_| AtomicU64::new(0)).collect();
            let rec = InFlight::new(&rec_words);
            // Listed + given back + the run the record names (entries lo..=hi,
            // which a settler lists again) == the cache, each exactly once.
            let check = |given: &Vec<u64>| {
                let recorded: Vec<u64> = match rec.read() {
                    Batch::Giving { lo, hi, .. } => {
                        assert_eq!(m.len(), lo - 1, "seed {seed}: the count right below");
                        (lo..=hi).map(|k| words[k].load(Ordering::Relaxed)).collect()
                    }
                    Batch::Nothing => Vec::new(),
                    b => panic!("seed {seed}: {b:?}"),
                };
                assert!(recorded.len() <= BATCH as usize);
                let mut seen: Vec<u64> = m
                    .entries()
                    .chain(given.iter().copied())
                    .chain(recorded)
                    .collect();
                seen.sort_unstable();
                let len = seen.len();
                seen.dedup();
                assert_eq!(seen.len(), len, "seed {seed}: a block listed twice");
                let mut sorted = all.clone();
                sorted.sort_unstable();
                assert_eq!(seen, sorted, "seed {seed}: a block lost");
            };
            let n = m.flush(
                keep,
                0,
                rec,
                |o| o / 1000,
                |_| None,
                |run, _| {
                    assert!(run.len() <= BATCH as usize);
                    assert!(run.iter().all(|o| o / 1000 == run[0] / 1000));
                    given.borrow_mut().extend_from_slice(run);
                },
                |after| {
                    check(&given.borrow());
                    // Settling mid-flush lists the run again: a copy settles.
                    if !after {
                        let copy: Vec<AtomicU64> = words
                            .iter()
                            .map(|w| AtomicU64::new(w.load(Ordering::Relaxed)))
                            .collect();
                        let cm = Mag::new(&copy);
                        if let Batch::Giving { lo, hi, .. } = rec.read() {
                            cm.relist(lo, hi);
                            assert_eq!(cm.len(), hi, "seed {seed}");
                        }
                    }
                },
            );
            assert_eq!(n, keep);
            check(&given.borrow());
        }
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use loom::cell::UnsafeCell;
    use loom::sync::atomic::{fence, AtomicU64, Ordering};
    use loom::sync::Arc;

    const CLAIM: u64 = 1 << 63;

    /// The gate's handshake: `Gate::enter_fast` / `leave` in the owner against
    /// `Gate::claim`, `heavy_barrier` and `owner_left` in a thief, over a cache of 3
    /// blocks that is an `UnsafeCell`, so loom reports any access of both sides
    /// that is not ordered. loom has no `membarrier`: its guarantee (every running
    /// thread executes a full fence at some point during the call) is modelled by
    /// making the owner's compiler fence and the thief's barrier SeqCst fences.
    /// The owner pops twice; the thief takes everything once. Checked: with the
    /// owner's fence removed, loom finds an interleaving where both take blocks
    /// (the `assert` below, or a causality violation on the cell).
    #[test]
    fn loom_gate_owner_and_thief_never_both_in_the_cache() {
        loom::model(|| {
            let m = Arc::new((AtomicU64::new(0), AtomicU64::new(0), UnsafeCell::new(3u64)));
            let owner = {
                let m = m.clone();
                loom::thread::spawn(move || {
                    let (ctl, active, cache) = &*m;
                    let mut popped = 0;
                    for _ in 0..2 {
                        active.store(1, Ordering::Relaxed);
                        fence(Ordering::SeqCst);
                        if ctl.load(Ordering::Acquire) == 0 {
                            // SAFETY: inside an open gate: no thief is in the cache
                            // (what loom checks).
                            cache.with_mut(|p| unsafe {
                                if *p > 0 {
                                    *p -= 1;
                                    popped += 1;
                                }
                            });
                        }
                        active.store(0, Ordering::Release);
                    }
                    popped
                })
            };
            let (ctl, active, cache) = &*m;
            let mut stolen = 0;
            if ctl
                .compare_exchange(0, CLAIM | 2, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                fence(Ordering::SeqCst);
                // One look (the real thief waits a while for the owner to leave).
                if active.load(Ordering::Acquire) == 0 {
                    // SAFETY: claimed, and the owner is outside: it stays out
                    // until the claim ends (what loom checks).
                    stolen = cache.with_mut(|p| unsafe { std::mem::replace(&mut *p, 0) });
                }
                ctl.store(0, Ordering::Release);
            }
            let popped = owner.join().unwrap();
            assert!(popped + stolen <= 3, "a block taken twice");
            // SAFETY: both sides are done.
            let left = cache.with(|p| unsafe { *p });
            assert_eq!(popped + stolen + left, 3, "a block lost");
        });
    }
}
