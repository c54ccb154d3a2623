//! The process registry: one slot per attached handle, liveness without pids.
//!
//! Every handle that creates or opens a segment (every `FreeListAllocator`,
//! `SlabAllocator` and `BumpAllocator` value) joins the segment's registry and holds
//! one of its [`SLOTS`] slots for as long as it lives. A slot is *held* through an
//! open-file-description lock (`fcntl(F_OFD_SETLK)`) on one byte of the segment's own
//! file, taken on the handle's own `shm_open` descriptor. The kernel drops that lock
//! when the last descriptor of the open file description closes, which happens when
//! the process dies, however it dies. So:
//!
//! - **Liveness never uses pid numbers.** A slot is live iff its byte is locked by
//!   another open file description; that holds across pid namespaces and is immune to
//!   pid reuse. The pid in a slot is for people (see [`ProcessInfo`]).
//! - **A thread that opened a handle may exit**: OFD locks belong to the open file
//!   description, not to a thread, so the slot stays live while the handle does.
//! - **Several handles in one process** each get their own slot (each has its own
//!   open file description, and OFD locks of two descriptions conflict).
//! - **`fork`**: the child inherits the parent's descriptors, and with them the
//!   parent's locks. A `pthread_atfork` child handler re-opens each registered
//!   descriptor through `/proc/self/fd` and `dup3`s the fresh description over the
//!   inherited one, so the child never keeps the parent's slot alive; the child's
//!   handles join slots of their own on first use.
//! - **Exactly one reclaimer**: whoever wins the lock of a slot whose status is still
//!   `LIVE` found a dead holder and is the only process that reclaims it. It runs the
//!   allocator's repair (which reads the dead slot's intent records), then marks the
//!   slot free and unlocks it. A reclaimer that dies mid-way leaves the slot `LIVE`
//!   and unlocked, so the next one starts over; every repair step is idempotent.
//!
//! A slot also holds **intent records**: before a multi-step operation on shared
//! pages (a span being created or released, a run of pages being claimed) the handle
//! writes which pages it is working on and the state it is about to install. Live
//! intents tell a repair pass "hands off, in flight"; a dead slot's intents tell the
//! reclaimer exactly what to finish or roll back.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg};
use nix::libc;

use crate::error::SegmentError;
use crate::segment::Segment;

/// Slots in every registry: at most this many handles can be attached at once.
pub const SLOTS: usize = 128;
/// Words (8 bytes) per slot.
pub const SLOT_WORDS: usize = 32;
/// Parked intent records of dead handles (pairs of words) after the slots.
const ORPHAN_WORDS: usize = 64;
/// Bytes of the registry: the slots, then the parked (orphan) intent records.
pub const REGISTRY_BYTES: u64 = ((SLOTS * SLOT_WORDS + ORPHAN_WORDS) * 8) as u64;
const _: () = assert!(REGISTRY_BYTES <= crate::segment::REGISTRY_REGION);
/// Intent records per slot (threads of one process that use one handle share them).
pub const INTENTS: usize = 12;

/// Where the per-slot lock bytes start in the segment file (far past any data, so
/// the locks never look like they guard data; `fcntl` locks may lie beyond EOF).
const LOCK_BASE: i64 = 1 << 40;

const W_STATUS: usize = 0; // [generation: 32 | status: 32]
const W_PID: usize = 1;
const W_START: usize = 2;
const W_PINS: usize = 3; // views this handle holds (reader pins)
const W_INTENT: usize = 8; // INTENTS pairs (descriptor, expected state)

const STATUS_FREE: u64 = 0;
const STATUS_LIVE: u64 = 1;

/// What a person needs to see about one attached handle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    /// Slot index in the registry.
    pub slot: usize,
    /// Incremented each time the slot is taken: tells successive holders apart.
    pub generation: u32,
    /// The holder's pid *as seen in the holder's own pid namespace* (for people:
    /// liveness never uses it).
    pub pid: u32,
    /// When the holder joined, in nanoseconds since the Unix epoch.
    pub start_time_ns: u64,
    /// Whether the holder's lock is held right now (false: it died and awaits its reclaimer).
    pub alive: bool,
    /// Whether this is the calling handle's own slot.
    pub is_self: bool,
}

/// One intent record of a slot: "pages `page..page + pages` are in flight; the
/// operation's first step installs `expected` in page `page`'s state word".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Intent {
    pub kind: u8,
    pub page: u32,
    pub pages: u32,
    pub expected: u64,
}

impl Intent {
    fn encode(&self) -> u64 {
        (1 << 63)
            | (u64::from(self.kind & 0x7F) << 56)
            | (u64::from(self.pages & 0xFF_FFFF) << 32)
            | u64::from(self.page)
    }

    fn decode(desc: u64, expected: u64) -> Option<Intent> {
        (desc >> 63 == 1).then_some(Intent {
            kind: ((desc >> 56) & 0x7F) as u8,
            pages: ((desc >> 32) & 0xFF_FFFF) as u32,
            page: desc as u32,
            expected,
        })
    }

    /// Whether page `p` lies in this record's range.
    pub fn covers(&self, p: usize) -> bool {
        (self.page as usize..self.page as usize + self.pages as usize).contains(&p)
    }
}

// ------------------------------------------------------------------ fork handling

/// Bumped in every forked child: a handle whose recorded epoch differs is in a child
/// of the process that joined, and must join a slot of its own.
static FORK_EPOCH: AtomicU64 = AtomicU64::new(0);
/// Registered lock descriptors (+1; 0 = empty), for the atfork child handler.
static LOCK_FDS: [AtomicI32; 256] = [const { AtomicI32::new(0) }; 256];

/// How many forks this process's lineage went through: state recorded with one
/// value is stale in a child, which sees a larger one.
#[inline]
pub(crate) fn fork_epoch() -> u64 {
    FORK_EPOCH.load(Ordering::Relaxed)
}

/// [`AccessError::Forked`](crate::AccessError::Forked) if state recorded in fork
/// epoch `recorded` is a copy in a fork child.
#[inline]
pub(crate) fn check_fork(recorded: u64) -> Result<(), crate::AccessError> {
    let now = fork_epoch();
    if recorded != now {
        return Err(crate::AccessError::Forked {
            handle_epoch: recorded,
            current_epoch: now,
        });
    }
    Ok(())
}

extern "C" fn after_fork_in_child() {
    FORK_EPOCH.fetch_add(1, Ordering::Relaxed);
    for entry in &LOCK_FDS {
        let fd = entry.load(Ordering::Relaxed) - 1;
        if fd < 0 {
            continue;
        }
        // "/proc/self/fd/" + decimal fd + NUL, built without allocating (this runs
        // between fork and exec, where only async-signal-safe calls are allowed).
        let mut path = [0u8; 40];
        let prefix = b"/proc/self/fd/";
        path[..prefix.len()].copy_from_slice(prefix);
        let mut digits = [0u8; 12];
        let (mut n, mut k) = (fd as u32, 0);
        loop {
            digits[k] = b'0' + (n % 10) as u8;
            k += 1;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        for (j, d) in digits[..k].iter().rev().enumerate() {
            path[prefix.len() + j] = *d;
        }
        // SAFETY:
        // - `path` is NUL-terminated (zero-initialised, at most 14 + 10 bytes written);
        // - open is async-signal-safe, as calls after fork in a child must be.
        let fresh = unsafe { libc::open(path.as_ptr().cast(), libc::O_RDWR | libc::O_CLOEXEC) };
        if fresh < 0 {
            continue; // no /proc: the child keeps sharing the parent's description
        }
        // SAFETY:
        // - `fresh` and `fd` are open descriptors of this process; dup3 atomically
        //   replaces `fd` (dropping the child's reference to the parent's description,
        //   not the description itself) and is async-signal-safe.
        unsafe { libc::dup3(fresh, fd, libc::O_CLOEXEC) };
        // SAFETY: `fresh` is a descriptor this handler opened and owns; close is
        // async-signal-safe.
        unsafe { libc::close(fresh) };
    }
}

fn install_fork_handler() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY:
        // - pthread_atfork only records the handler pointers;
        // - `after_fork_in_child` is an `extern "C" fn()` that makes only
        //   async-signal-safe calls, as a child handler must.
        let rc = unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
        debug_assert_eq!(rc, 0);
    });
}

fn register_fd(fd: RawFd) -> Option<usize> {
    install_fork_handler();
    LOCK_FDS.iter().position(|e| {
        e.compare_exchange(0, fd + 1, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    })
}

// ------------------------------------------------------------------ OFD locks

fn lock_cmd(
    fd: BorrowedFd<'_>,
    slot: usize,
    kind: i16,
    cmd: LockCmd,
) -> Result<libc::flock, Errno> {
    let mut fl = libc::flock {
        l_type: kind,
        l_whence: libc::SEEK_SET as i16,
        l_start: LOCK_BASE + slot as i64,
        l_len: 1,
        l_pid: 0,
    };
    let arg = match cmd {
        LockCmd::Set => FcntlArg::F_OFD_SETLK(&fl),
        LockCmd::Get => FcntlArg::F_OFD_GETLK(&mut fl),
    };
    fcntl(fd, arg)?;
    Ok(fl)
}

#[derive(Clone, Copy)]
enum LockCmd {
    Set,
    Get,
}

/// Tries to take slot `i`'s lock. `Ok(true)`: taken (it was free or its holder is dead).
fn try_lock(fd: BorrowedFd<'_>, i: usize) -> Result<bool, SegmentError> {
    match lock_cmd(fd, i, libc::F_WRLCK as i16, LockCmd::Set) {
        Ok(_) => Ok(true),
        Err(Errno::EAGAIN | Errno::EACCES) => Ok(false),
        Err(errno) => Err(SegmentError::Os {
            op: "fcntl(F_OFD_SETLK)",
            errno,
        }),
    }
}

fn unlock(fd: BorrowedFd<'_>, i: usize) {
    let _ = lock_cmd(fd, i, libc::F_UNLCK as i16, LockCmd::Set);
}

/// Whether another open file description holds slot `i`'s lock.
fn locked_by_other(fd: BorrowedFd<'_>, i: usize) -> bool {
    match lock_cmd(fd, i, libc::F_WRLCK as i16, LockCmd::Get) {
        Ok(fl) => fl.l_type != libc::F_UNLCK as i16,
        Err(_) => true, // cannot tell: never treat a maybe-live holder as dead
    }
}

// ------------------------------------------------------------------ membership

/// A handle's place in a segment's registry. Owned by each allocator value.
#[derive(Debug)]
pub(crate) struct Membership {
    /// The slot state, shared with this process's attachment table (so that an
    /// owner token asked for in a fork child re-joins this very membership).
    shared: Arc<MemberState>,
    /// This handle's entry in the atfork descriptor table.
    fd_entry: Option<usize>,
    /// This handle's entry in the attachment table.
    attach_id: u64,
}

#[derive(Debug)]
struct MemberState {
    /// `[fork epoch: 24 | generation: 32 | slot: 8]`.
    packed: AtomicU64,
    /// Serialises re-joining after a fork.
    rejoin: Mutex<()>,
}

// The lock guards no data (only the order of re-joins), and `packed` is one atomic
// word, old or new: a panic anywhere leaves the state consistent, as std's
// `Mutex<()>` (which this replaced) declared.
impl std::panic::RefUnwindSafe for MemberState {}

impl MemberState {
    #[inline]
    fn slot(&self, seg: &(impl Reg + ?Sized)) -> Result<usize, SegmentError> {
        let p = self.packed.load(Ordering::Relaxed);
        if p >> 40 == FORK_EPOCH.load(Ordering::Relaxed) & 0xFF_FFFF {
            return Ok((p & 0xFF) as usize);
        }
        self.rejoin_after_fork(seg)
    }

    #[cold]
    fn rejoin_after_fork(&self, seg: &(impl Reg + ?Sized)) -> Result<usize, SegmentError> {
        let _g = self.rejoin.lock();
        let epoch = FORK_EPOCH.load(Ordering::Relaxed) & 0xFF_FFFF;
        let p = self.packed.load(Ordering::Relaxed);
        if p >> 40 == epoch {
            return Ok((p & 0xFF) as usize);
        }
        crate::fail_point!("registry.fork_rejoin");
        // Only a free slot: a dead one's leftovers (its caches) need the
        // allocator's reclaim, which runs through `reclaim_dead`.
        let (slot, gen, _) = take_slot(seg, false)?;
        self.packed.store(pack(epoch, gen, slot), Ordering::Relaxed);
        Ok(slot)
    }

    /// The slot index if it was joined in this very process (no re-join).
    fn own_slot(&self) -> Option<usize> {
        let p = self.packed.load(Ordering::Relaxed);
        (p >> 40 == FORK_EPOCH.load(Ordering::Relaxed) & 0xFF_FFFF).then_some((p & 0xFF) as usize)
    }
}

fn pack(epoch: u64, gen: u32, slot: usize) -> u64 {
    ((epoch & 0xFF_FFFF) << 40) | (u64::from(gen) << 8) | slot as u64
}

/// What the registry functions need of a segment: its registry words and a
/// descriptor to take locks on. A [`Segment`], or a view kept by the attachment
/// table (for the owner tokens of locks that live in a segment).
pub(crate) trait Reg {
    fn registry_words(&self) -> &[AtomicU64];
    fn lock_fd(&self) -> BorrowedFd<'_>;
}

impl Reg for Segment {
    fn registry_words(&self) -> &[AtomicU64] {
        Segment::registry_words(self)
    }
    fn lock_fd(&self) -> BorrowedFd<'_> {
        self.file().as_fd()
    }
}

/// The registry region of a segment, as words.
fn registry(seg: &(impl Reg + ?Sized)) -> &[AtomicU64] {
    seg.registry_words()
}

fn slot_words(seg: &(impl Reg + ?Sized), i: usize) -> &[AtomicU64] {
    &registry(seg)[i * SLOT_WORDS..(i + 1) * SLOT_WORDS]
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The result of joining: the slot, and whether a dead holder's leftovers were found
/// (then the allocator must run its repair before relying on its metadata).
pub(crate) struct Joined {
    pub membership: Membership,
    pub found_dead: bool,
}

impl Membership {
    /// Takes a free (or dead) slot of `seg`'s registry.
    ///
    /// # Errors
    /// [`SegmentError::RegistryFull`] when every slot is held by a live handle, or an
    /// OS error from `fcntl`.
    pub fn join(seg: &Segment) -> Result<Joined, SegmentError> {
        let (slot, gen, found_dead) = take_slot(seg, true)?;
        let shared = Arc::new(MemberState {
            packed: AtomicU64::new(pack(FORK_EPOCH.load(Ordering::Relaxed), gen, slot)),
            rejoin: Mutex::new(()),
        });
        let attach_id = attach(seg, &shared);
        Ok(Joined {
            membership: Membership {
                shared,
                fd_entry: register_fd(seg.lock_fd().as_raw_fd()),
                attach_id,
            },
            found_dead,
        })
    }

    /// This handle's slot, joining a new one first if this is a forked child of the
    /// process that joined.
    ///
    /// # Errors
    /// As [`Membership::join`], when a fork child must join and cannot.
    #[inline]
    pub fn slot(&self, seg: &Segment) -> Result<usize, SegmentError> {
        self.shared.slot(seg)
    }

    /// The slot index if this handle joined it in this very process (no re-join).
    fn own_slot(&self) -> Option<usize> {
        self.shared.own_slot()
    }

    /// Leaves the slot (the handle is being dropped): clears it and unlocks it. A
    /// handle in a forked child that never re-joined owns no slot and leaves nothing.
    pub fn leave(&mut self, seg: &Segment) {
        detach(self.attach_id);
        if let Some(e) = self.fd_entry.take() {
            LOCK_FDS[e].store(0, Ordering::Release);
        }
        let Some(i) = self.own_slot() else { return };
        let w = slot_words(seg, i);
        crate::fail_point!("registry.leave.before_clear");
        for k in 0..INTENTS * 2 {
            w[W_INTENT + k].store(0, Ordering::Relaxed);
        }
        let st = w[W_STATUS].load(Ordering::Relaxed);
        w[W_STATUS].store((st & !0xFFFF_FFFF) | STATUS_FREE, Ordering::Release);
        crate::fail_point!("registry.leave.before_unlock");
        unlock(seg.lock_fd(), i);
    }

    /// Records an intent in this handle's slot; the guard clears it when dropped.
    ///
    /// # Errors
    /// As [`Membership::slot`].
    pub fn intend<'s>(
        &self,
        seg: &'s Segment,
        intent: Intent,
    ) -> Result<IntentGuard<'s>, SegmentError> {
        let w = slot_words(seg, self.slot(seg)?);
        // Threads of this process share the slot: each takes a free record.
        for _round in 0..1 << 16 {
            for k in 0..INTENTS {
                let desc = &w[W_INTENT + 2 * k];
                if desc.load(Ordering::Relaxed) != 0 {
                    continue;
                }
                // Claim the record with a placeholder, then write it in full. SeqCst:
                // a repair pass that sees the pages this operation changes must see
                // this record (it loads intents after loading those pages).
                if desc
                    .compare_exchange(0, 1, Ordering::SeqCst, Ordering::Relaxed)
                    .is_ok()
                {
                    w[W_INTENT + 2 * k + 1].store(intent.expected, Ordering::SeqCst);
                    desc.store(intent.encode(), Ordering::SeqCst);
                    return Ok(IntentGuard { desc });
                }
            }
            std::thread::yield_now();
        }
        Err(SegmentError::RegistryFull { slots: INTENTS })
    }
}

/// Clears its intent record when dropped (after the operation's last step).
pub(crate) struct IntentGuard<'s> {
    desc: &'s AtomicU64,
}

impl Drop for IntentGuard<'_> {
    fn drop(&mut self) {
        self.desc.store(0, Ordering::SeqCst);
    }
}

/// Takes a slot: the first whose lock this description wins. A slot still marked
/// live under a lock we won belonged to a dead handle.
fn take_slot(
    seg: &(impl Reg + ?Sized),
    allow_dead: bool,
) -> Result<(usize, u32, bool), SegmentError> {
    let start = (std::process::id() as usize).wrapping_mul(0x9E37_79B9) % SLOTS;
    let mut found_dead = false;
    // Free slots first; a dead holder's slot only when no free one is left (its
    // leftovers are then reclaimed here, by us, its one reclaimer).
    let rounds = if allow_dead { 2 * SLOTS } else { SLOTS };
    for k in 0..rounds {
        let i = (start + k) % SLOTS;
        let w = slot_words(seg, i);
        if k < SLOTS && w[W_STATUS].load(Ordering::Acquire) & 0xFFFF_FFFF != STATUS_FREE {
            continue;
        }
        if !try_lock(seg.lock_fd(), i)? {
            continue;
        }
        crate::fail_point!("registry.join.locked");
        let st = w[W_STATUS].load(Ordering::Acquire);
        if st & 0xFFFF_FFFF != STATUS_FREE {
            // Its holder died: its intents stay readable for the repair pass the
            // caller runs (the repair does not need them to be in this slot: it
            // handles dead intents found in any slot it reclaims, and everything
            // else through the global rules). Reclaim it here, as its one reclaimer.
            found_dead = true;
            if !reclaim_intents_into_orphans(seg, i) {
                // The orphan list is full: the slot keeps its records (and stays
                // dead) until a repair has drained the list; take another.
                unlock(seg.lock_fd(), i);
                continue;
            }
        }
        let gen = ((st >> 32) as u32).wrapping_add(1);
        w[W_PID].store(u64::from(std::process::id()), Ordering::Relaxed);
        w[W_START].store(now_ns(), Ordering::Relaxed);
        // A dead holder's views died with it: its pins never hold memory.
        w[W_PINS].store(0, Ordering::Relaxed);
        crate::fail_point!("registry.join.before_live");
        w[W_STATUS].store((u64::from(gen) << 32) | STATUS_LIVE, Ordering::Release);
        return Ok((i, gen, found_dead));
    }
    Err(SegmentError::RegistryFull { slots: SLOTS })
}

// ------------------------------------------------------------------ reclaiming

/// The parked intent records after the slots.
fn orphan_intents(seg: &(impl Reg + ?Sized)) -> &[AtomicU64] {
    &registry(seg)[SLOTS * SLOT_WORDS..SLOTS * SLOT_WORDS + ORPHAN_WORDS]
}

/// Moves a dead slot's intent records to the registry-wide orphan list, so the slot
/// can be taken over at once and the allocator's repair pass still finds them.
/// Returns false if the list was full for some: those stay in the slot, which must
/// stay dead (not freed, not taken over) until a later pass parks them.
fn reclaim_intents_into_orphans(seg: &(impl Reg + ?Sized), i: usize) -> bool {
    let w = slot_words(seg, i);
    let orphans = orphan_intents(seg);
    let mut all = true;
    for k in 0..INTENTS {
        let desc = w[W_INTENT + 2 * k].load(Ordering::Acquire);
        if desc >> 63 == 0 {
            // Empty, or a record the dead handle had claimed but not yet written
            // (the placeholder 1): nothing started, so nothing to park. Clear it, or
            // the record would stay taken for every later holder of the slot.
            if desc != 0 {
                w[W_INTENT + 2 * k].store(0, Ordering::Release);
            }
            continue;
        }
        let exp = w[W_INTENT + 2 * k + 1].load(Ordering::Acquire);
        // Park it in a free orphan record (pairs). If all are taken, it stays here:
        // dropping it would lose what only it names (a span whose words its
        // creator never opened, a claimed run), for good. The record is claimed
        // with a placeholder (not a valid record: bit 63 clear), its expected word
        // written, and only then published, so a drain never reads half of it.
        let parked = orphans.chunks_exact(2).any(|pair| {
            pair[0]
                .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
                && {
                    pair[1].store(exp, Ordering::Release);
                    pair[0].store(desc, Ordering::Release);
                    true
                }
        });
        if parked {
            w[W_INTENT + 2 * k].store(0, Ordering::Release);
        } else {
            all = false;
        }
    }
    all
}

/// Finds slots whose holders died, takes each one's lock (becoming its one
/// reclaimer), lets `on_dead` return what the allocator keeps in the slot (its
/// caches), parks its intents as orphans, and frees the slot. Returns how many,
/// and whether a dead slot is left for later: its records did not fit the orphan
/// list (drain the list, then call again), or `on_dead` returned false (its
/// caches were busy).
pub(crate) fn reclaim_dead(
    seg: &Segment,
    me: Option<usize>,
    on_dead: &mut dyn FnMut(usize) -> bool,
) -> (usize, bool) {
    let (mut n, mut pending) = (0, false);
    for i in 0..SLOTS {
        if Some(i) == me {
            continue;
        }
        let w = slot_words(seg, i);
        if w[W_STATUS].load(Ordering::Acquire) & 0xFFFF_FFFF == STATUS_FREE {
            continue;
        }
        if !matches!(try_lock(seg.lock_fd(), i), Ok(true)) {
            continue; // live
        }
        crate::fail_point!("registry.reclaim.locked");
        // Re-check under the lock: a joiner may have freed and re-taken it meanwhile.
        let st = w[W_STATUS].load(Ordering::Acquire);
        if st & 0xFFFF_FFFF != STATUS_FREE {
            if !on_dead(i) {
                // Its caches are busy (another process is emptying them): later.
                pending = true;
            } else if reclaim_intents_into_orphans(seg, i) {
                crate::fail_point!("registry.reclaim.before_free");
                w[W_STATUS].store(st & !0xFFFF_FFFF, Ordering::Release);
                n += 1;
            } else {
                pending = true;
            }
        }
        unlock(seg.lock_fd(), i);
    }
    (n, pending)
}

/// Every intent record of a live slot (including this handle's own).
pub(crate) fn live_intents(seg: &Segment, me: Option<usize>) -> Vec<Intent> {
    let mut out = Vec::new();
    for i in 0..SLOTS {
        let w = slot_words(seg, i);
        if w[W_STATUS].load(Ordering::SeqCst) & 0xFFFF_FFFF == STATUS_FREE {
            continue;
        }
        if Some(i) != me && !locked_by_other(seg.lock_fd(), i) {
            continue; // dead: its records are the reclaimer's
        }
        for k in 0..INTENTS {
            let desc = w[W_INTENT + 2 * k].load(Ordering::SeqCst);
            if let Some(it) = Intent::decode(desc, w[W_INTENT + 2 * k + 1].load(Ordering::SeqCst)) {
                out.push(it);
            }
        }
    }
    out
}

/// Takes the parked intents of dead handles, one at a time: `f` finishes or rolls
/// back each and says whether it is done; a done record is cleared after `f`
/// returns (a reclaimer that dies inside `f` leaves it for the next one).
pub(crate) fn drain_orphans(seg: &Segment, mut f: impl FnMut(Intent) -> bool) {
    for pair in orphan_intents(seg).chunks_exact(2) {
        let desc = pair[0].load(Ordering::Acquire);
        if let Some(it) = Intent::decode(desc, pair[1].load(Ordering::Acquire)) {
            if f(it) {
                let _ = pair[0].compare_exchange(desc, 0, Ordering::AcqRel, Ordering::Relaxed);
            }
        }
    }
}

/// Who is attached to `seg` right now.
pub(crate) fn processes(seg: &Segment, me: Option<usize>) -> Vec<ProcessInfo> {
    (0..SLOTS)
        .filter_map(|i| {
            let w = slot_words(seg, i);
            let st = w[W_STATUS].load(Ordering::Acquire);
            if st & 0xFFFF_FFFF == STATUS_FREE {
                return None;
            }
            let is_self = Some(i) == me;
            Some(ProcessInfo {
                slot: i,
                generation: (st >> 32) as u32,
                pid: w[W_PID].load(Ordering::Relaxed) as u32,
                start_time_ns: w[W_START].load(Ordering::Relaxed),
                alive: is_self || locked_by_other(seg.lock_fd(), i),
                is_self,
            })
        })
        .collect()
}

impl Membership {
    /// This handle's slot if it holds one in this process (no re-join).
    pub fn current(&self) -> Option<usize> {
        self.own_slot()
    }

    /// This registration's [`token`] in `seg` (re-joining first in a fork child;
    /// 0 if it has no slot): what an allocator's `liveness_token` returns.
    pub fn token(&self, seg: &Segment) -> u32 {
        self.slot(seg).map_or(0, |slot| token(seg, slot))
    }

    /// Whether the registration named by `tok` is alive, as this one sees it
    /// ([`token_alive`]): what an allocator's `token_alive` returns.
    pub fn is_alive(&self, seg: &Segment, tok: u32) -> bool {
        token_alive(seg, self.current(), tok)
    }
}

// ------------------------------------------------------------------ liveness tokens

/// A nonzero 29-bit name for "this handle's registration": `[generation: 21 |
/// slot + 1: 8]`. Stored in shared words that record who holds a claim (a root
/// being created, a lock), and checked with [`token_alive`]: never a pid.
pub(crate) fn token(seg: &(impl Reg + ?Sized), slot: usize) -> u32 {
    let gen = (slot_words(seg, slot)[W_STATUS].load(Ordering::Acquire) >> 32) as u32;
    ((gen & TOKEN_GEN_MASK) << 8) | (slot as u32 + 1)
}

const TOKEN_GEN_MASK: u32 = 0x1F_FFFF;

/// Whether the registration named by `token` is still alive: its slot holds the
/// same generation and is held by a live handle (this one, or one whose lock
/// another open file description holds).
pub(crate) fn token_alive(seg: &(impl Reg + ?Sized), me: Option<usize>, token: u32) -> bool {
    let Some(slot) = ((token & 0xFF) as usize)
        .checked_sub(1)
        .filter(|&s| s < SLOTS)
    else {
        return false;
    };
    let st = slot_words(seg, slot)[W_STATUS].load(Ordering::Acquire);
    if st & 0xFFFF_FFFF != STATUS_LIVE || ((st >> 32) as u32 & TOKEN_GEN_MASK) != token >> 8 {
        return false; // left, or died and the slot was taken by someone else
    }
    Some(slot) == me || locked_by_other(seg.lock_fd(), slot)
}

/// Whether slot `slot` is marked live (cheap: no lock probe; a dead holder not yet
/// reclaimed also reads as live).
pub(crate) fn listed_live(seg: &Segment, slot: usize) -> bool {
    slot < SLOTS
        && slot_words(seg, slot)[W_STATUS].load(Ordering::Acquire) & 0xFFFF_FFFF == STATUS_LIVE
}

// ------------------------------------------------------------------ reader pins

/// A reader pin: while it lives, the handle's slot counts one more view into the
/// segment's shared-immutable memory (arena data, arena archives), and a reclaimer
/// (a bump `reset`) waits for it or reports `Busy` (see [`pinned_by_others`]).
///
/// The count lives in the holder's registry slot, so a reader that dies pins
/// nothing: its slot reads as dead (the kernel dropped its lock) and is ignored.
/// Protocol (Dekker): a reader increments, fences SeqCst, then loads the
/// reclaimer's state word; a reclaimer publishes its intent in that word, fences
/// SeqCst, then loads the pin counts. One of the two sees the other (a loom model
/// is in `alloc::bump`).
#[derive(Debug)]
pub(crate) struct Pin {
    count: *const AtomicU64,
    /// The fork epoch the pin was taken in: a copy of the guard in a fork child
    /// does not touch the parent's count.
    fork: u64,
}

// SAFETY: `count` points at an atomic word in a mapping the guard's owner borrows
// for the guard's lifetime (`Pin` is only created by `pin`, whose callers keep
// the segment borrowed); atomics may be used from any thread.
unsafe impl Send for Pin {}
// SAFETY: as for Send; `Pin` has no `&self` methods that touch the word.
unsafe impl Sync for Pin {}

impl Pin {
    /// Whether the pin still protects this process (false in a fork child).
    #[inline]
    pub(crate) fn valid(&self) -> bool {
        self.fork == fork_epoch()
    }

    /// The fork epoch the pin was taken in.
    #[inline]
    #[cfg_attr(not(feature = "rkyv"), allow(dead_code))] // (arena archive readers)
    pub(crate) fn fork(&self) -> u64 {
        self.fork
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        if self.valid() {
            // SAFETY: see the Send impl: the word outlives the guard.
            // Release: this view's reads happen-before the reclaimer's reuse (it
            // loads the count with SeqCst, which includes Acquire).
            unsafe { &*self.count }.fetch_sub(1, Ordering::Release);
        }
    }
}

/// Pins a view for this handle (`membership`'s slot). The caller must keep `seg`
/// borrowed while the returned guard lives, and must check the reclaimer's state
/// word (with SeqCst) after this returns.
///
/// # Errors
/// As [`Membership::slot`] (a fork child that cannot re-join).
pub(crate) fn pin(seg: &Segment, membership: &Membership) -> Result<Pin, SegmentError> {
    let fork = fork_epoch();
    let w = &slot_words(seg, membership.slot(seg)?)[W_PINS];
    w.fetch_add(1, Ordering::SeqCst);
    std::sync::atomic::fence(Ordering::SeqCst);
    Ok(Pin {
        count: w as *const AtomicU64,
        fork,
    })
}

/// The live handles other than `me` that hold views now (their pin counts are
/// nonzero and their holders are alive). Fences SeqCst first: call it after
/// publishing the intent to reclaim (see [`Pin`]).
pub(crate) fn pinned_by_others(seg: &Segment, me: Option<usize>) -> u32 {
    std::sync::atomic::fence(Ordering::SeqCst);
    let mut n = 0;
    for slot in 0..SLOTS {
        if Some(slot) == me {
            continue;
        }
        let w = slot_words(seg, slot);
        if w[W_PINS].load(Ordering::SeqCst) == 0 {
            continue;
        }
        let st = w[W_STATUS].load(Ordering::Acquire);
        if st & 0xFFFF_FFFF == STATUS_LIVE && locked_by_other(seg.lock_fd(), slot) {
            n += 1;
        }
    }
    n
}

// ------------------------------------------------------------------ attachments

/// One handle of this process: where its segment is mapped, the descriptor it
/// locks on, and its slot state. Lets code that only has an address inside a
/// segment (a lock word in a struct) name this process's registration there.
struct Attached {
    id: u64,
    base: usize,
    len: usize,
    fd: RawFd,
    state: Arc<MemberState>,
}

static ATTACHED: Mutex<Vec<Attached>> = Mutex::new(Vec::new());
/// Bumped on every attach and detach: per-thread caches of a lookup compare it.
static ATTACHED_GEN: AtomicU64 = AtomicU64::new(1);
static NEXT_ATTACH: AtomicU64 = AtomicU64::new(1);

fn attach(seg: &Segment, state: &Arc<MemberState>) -> u64 {
    let id = NEXT_ATTACH.fetch_add(1, Ordering::Relaxed);
    let mut t = ATTACHED.lock();
    t.push(Attached {
        id,
        base: seg.base_addr(),
        len: seg.len() as usize,
        fd: seg.lock_fd().as_raw_fd(),
        state: Arc::clone(state),
    });
    ATTACHED_GEN.fetch_add(1, Ordering::Release);
    id
}

fn detach(id: u64) {
    let mut t = ATTACHED.lock();
    t.retain(|a| a.id != id);
    ATTACHED_GEN.fetch_add(1, Ordering::Release);
}

/// A registry view through an attachment (valid while the table lock is held).
struct View<'a> {
    words: &'a [AtomicU64],
    fd: BorrowedFd<'a>,
}

impl Reg for View<'_> {
    fn registry_words(&self) -> &[AtomicU64] {
        self.words
    }
    fn lock_fd(&self) -> BorrowedFd<'_> {
        self.fd
    }
}

impl Attached {
    fn view(&self) -> View<'_> {
        // SAFETY:
        // - `base..base + len` is the live mapping of the handle that attached this
        //   entry: the handle detaches (under the table lock, which the caller
        //   holds) before it unmaps, and its layout was validated at open, so the
        //   registry region `HEADER_REGION..+REGISTRY_REGION` lies inside it, 8-aligned;
        // - the words are AtomicU64s, valid for any bit pattern, only accessed
        //   atomically, and the slice is tied to `&self` (the table guard).
        let words = unsafe {
            std::slice::from_raw_parts(
                (self.base + crate::segment::HEADER_REGION as usize) as *const AtomicU64,
                (crate::segment::REGISTRY_REGION / 8) as usize,
            )
        };
        // SAFETY: `fd` is the handle's lock descriptor, open until the handle drops,
        // which detaches first (under the table lock the caller holds).
        let fd = unsafe { BorrowedFd::borrow_raw(self.fd) };
        View { words, fd }
    }
}

/// This process's registry token in the segment whose mapping contains `addr`
/// (re-joining first in a fork child), with that mapping's base and length; `None`
/// if no handle of this process maps `addr`.
pub(crate) fn token_at(addr: usize) -> Option<(u32, usize, usize)> {
    let t = ATTACHED.lock();
    let a = t
        .iter()
        .find(|a| (a.base..a.base + a.len).contains(&addr))?;
    let v = a.view();
    let slot = a.state.slot(&v).ok()?;
    Some((token(&v, slot), a.base, a.len))
}

/// Whether the registration named by `token`, in the segment whose mapping
/// contains `addr`, is alive. `true` when no handle of this process maps `addr`
/// (never call a holder dead without evidence).
pub(crate) fn token_alive_at(addr: usize, tok: u32) -> bool {
    let t = ATTACHED.lock();
    let Some(a) = t.iter().find(|a| (a.base..a.base + a.len).contains(&addr)) else {
        return true;
    };
    let v = a.view();
    token_alive(&v, a.state.own_slot(), tok)
}

/// The attachment table's generation and this process's fork epoch: a cached
/// [`token_at`] answer stays right while both are unchanged.
pub(crate) fn attachment_epoch() -> (u64, u64) {
    (
        ATTACHED_GEN.load(Ordering::Acquire),
        FORK_EPOCH.load(Ordering::Relaxed),
    )
}
