//! Fork handling: the atfork handlers, the table of lock descriptors, and the
//! process-local locks that a fork cannot strand.
//!
//! **Lock descriptors.** Every membership registers its lock descriptor and a
//! *spare*: a second open file description of the same object, opened at join time,
//! that holds no lock. In a fork child the handler closes the inherited spare (the
//! child drops its reference to the parent's description), which frees one
//! descriptor number even when the table is full; re-opens the object through
//! `/proc/self/fd` into that number; `dup3`s the fresh description over the lock
//! descriptor; and opens one more description for the child's own spare. So a child
//! never keeps its parent's lock description. If that cannot be done (no `/proc` in
//! the child, the re-open refused, a descriptor that no longer names the object) the
//! entry is marked *lost*: both numbers are pointed at an `O_PATH` descriptor (on
//! which every lock call fails, so nothing in the child ever reads another holder as
//! dead), and the child's handles refuse with [`SegmentError::LockLost`].
//!
//! **Process-local locks.** The attachment table and the table of owned caches are
//! [`ForkLock`]s: the atfork *prepare* handler takes both (no other thread is then
//! half-way through changing them), the *parent* handler releases them, and in the
//! child they read as free because they are stamped with the fork epoch, which the
//! *child* handler bumps (glibc treats its malloc arenas the same way). A
//! membership's re-join lock is a `ForkLock` too; it guards no data, so it needs no
//! prepare step.
//!
//! [`SegmentError::LockLost`]: crate::error::SegmentError::LockLost

use std::cell::UnsafeCell;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, AtomicU64, AtomicU8, Ordering};

use nix::libc;

use crate::error::SegmentError;

/// Bumped in every forked child: a handle whose recorded epoch differs is in a child
/// of the process that joined, and must join a slot of its own.
pub(super) static FORK_EPOCH: AtomicU64 = AtomicU64::new(0);

/// Handles (memberships) this process can hold at once, over all segments: the
/// size of the atfork descriptor table. The next `join` gets
/// [`SegmentError::HandleLimit`].
pub const MAX_HANDLES: usize = 1024;

/// One entry of the descriptor table: lock descriptor + 1, spare + 1 (0: empty),
/// the object's device and inode (to check that a number still names it), and the
/// entry's state.
struct FdEntry {
    fd: AtomicI32,
    spare: AtomicI32,
    dev: AtomicU64,
    ino: AtomicU64,
    state: AtomicU8,
}

const ENTRY_OK: u8 = 0;
/// A fork child could not get a lock description of its own for this entry.
const ENTRY_LOST: u8 = 1;

static FDS: [FdEntry; MAX_HANDLES] = [const {
    FdEntry {
        fd: AtomicI32::new(0),
        spare: AtomicI32::new(0),
        dev: AtomicU64::new(0),
        ino: AtomicU64::new(0),
        state: AtomicU8::new(ENTRY_OK),
    }
}; MAX_HANDLES];

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

/// `/proc/self/fd/<fd>` as a NUL-terminated path, built without allocating (the
/// child handler may only make async-signal-safe calls).
fn proc_fd_path(fd: RawFd) -> [u8; 40] {
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
    path
}

/// Whether descriptor `fd` names the object `(dev, ino)` (async-signal-safe).
fn names_object(fd: RawFd, dev: u64, ino: u64) -> bool {
    // SAFETY: an all-zero `stat` is a valid value of this plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY:
    // - `st` is a valid, writable `stat`;
    // - fstat is async-signal-safe and fails cleanly on a closed descriptor.
    let rc = unsafe { libc::fstat(fd, &mut st) };
    rc == 0 && st.st_dev == dev && st.st_ino == ino
}

/// A fresh read-write description of the object behind `fd`, through
/// `/proc/self/fd` (async-signal-safe); -1 on failure.
fn reopen(fd: RawFd) -> RawFd {
    let path = proc_fd_path(fd);
    // SAFETY:
    // - `path` is NUL-terminated (zero-initialised, at most 14 + 10 bytes written);
    // - open is async-signal-safe.
    unsafe { libc::open(path.as_ptr().cast(), libc::O_RDWR | libc::O_CLOEXEC) }
}

/// Makes `to` a copy of `from` (async-signal-safe). No-op when they are equal.
fn dup_over(from: RawFd, to: RawFd) {
    if from != to {
        // SAFETY: `from` is an open descriptor of this process; dup3 atomically
        // (re)places `to` and is async-signal-safe.
        unsafe { libc::dup3(from, to, libc::O_CLOEXEC) };
    }
}

fn close(fd: RawFd) {
    // SAFETY: `fd` is a descriptor the caller owns here; close is async-signal-safe.
    unsafe { libc::close(fd) };
}

/// Gives the child its own lock description and spare for one entry, or marks
/// the entry lost (see the module docs).
fn fork_entry(e: &FdEntry) {
    let (fd, spare) = (
        e.fd.load(Ordering::Relaxed) - 1,
        e.spare.load(Ordering::Relaxed) - 1,
    );
    if fd < 0 || spare < 0 || e.state.load(Ordering::Relaxed) == ENTRY_LOST {
        return;
    }
    let (dev, ino) = (e.dev.load(Ordering::Relaxed), e.ino.load(Ordering::Relaxed));
    if !names_object(fd, dev, ino) || !names_object(spare, dev, ino) {
        // The process closed a number (and maybe reused it): touch neither.
        e.state.store(ENTRY_LOST, Ordering::Relaxed);
        return;
    }
    // Drops the child's reference to the parent's spare description and frees a
    // number for the re-open, even with a full descriptor table.
    close(spare);
    let fresh = reopen(fd);
    if fresh >= 0 {
        dup_over(fresh, fd);
        close(fresh);
        let own_spare = reopen(fd);
        if own_spare >= 0 {
            dup_over(own_spare, spare);
            if own_spare != spare {
                close(own_spare);
            }
            return;
        }
    }
    // No description of our own: neither number may keep the parent's. Point both
    // at an O_PATH descriptor, on which every lock call fails (EBADF).
    e.state.store(ENTRY_LOST, Ordering::Relaxed);
    // SAFETY: the path is a NUL-terminated literal; open is async-signal-safe.
    let p = unsafe { libc::open(c"/".as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
    if p >= 0 {
        dup_over(p, fd);
        dup_over(p, spare);
        if p != fd && p != spare {
            close(p);
        }
    }
}

extern "C" fn before_fork() {
    super::attach::ATTACHED.raw.lock();
    super::attach::LOCAL_CACHES.raw.lock();
}

extern "C" fn after_fork_in_parent() {
    super::attach::LOCAL_CACHES.raw.unlock();
    super::attach::ATTACHED.raw.unlock();
}

extern "C" fn after_fork_in_child() {
    // First: the locks the prepare handler took read as free from here on.
    FORK_EPOCH.fetch_add(1, Ordering::Relaxed);
    for e in &FDS {
        fork_entry(e);
    }
}

pub(super) fn install_fork_handler() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY:
        // - pthread_atfork only records the handler pointers;
        // - the child handler makes only async-signal-safe calls, as a child
        //   handler must; the prepare and parent handlers only take and release
        //   process-local locks that are never held across a fork by the caller.
        let rc = unsafe {
            libc::pthread_atfork(
                Some(before_fork),
                Some(after_fork_in_parent),
                Some(after_fork_in_child),
            )
        };
        debug_assert_eq!(rc, 0);
    });
}

/// Registers a lock descriptor and its spare (both open, naming object
/// `(dev, ino)`) for the atfork child handler.
///
/// # Errors
/// [`SegmentError::HandleLimit`] when [`MAX_HANDLES`] are registered already.
pub(super) fn register_fd(
    fd: RawFd,
    spare: RawFd,
    dev: u64,
    ino: u64,
) -> Result<usize, SegmentError> {
    install_fork_handler();
    // Under the attachment lock: the prepare handler holds it across a fork, so
    // a fork never copies a half-written entry.
    let _g = super::attach::ATTACHED.lock();
    let e = FDS
        .iter()
        .position(|e| e.fd.load(Ordering::Relaxed) == 0)
        .ok_or(SegmentError::HandleLimit { limit: MAX_HANDLES })?;
    let entry = &FDS[e];
    entry.spare.store(spare + 1, Ordering::Relaxed);
    entry.dev.store(dev, Ordering::Relaxed);
    entry.ino.store(ino, Ordering::Relaxed);
    entry.state.store(ENTRY_OK, Ordering::Relaxed);
    entry.fd.store(fd + 1, Ordering::Release);
    Ok(e)
}

/// Forgets entry `e` (the handle is dropped).
pub(super) fn unregister_fd(e: usize) {
    let _g = super::attach::ATTACHED.lock();
    FDS[e].fd.store(0, Ordering::Release);
    FDS[e].spare.store(0, Ordering::Relaxed);
}

/// Whether entry `e` lost its lock description in a fork child.
pub(super) fn entry_lost(e: usize) -> bool {
    FDS[e].state.load(Ordering::Relaxed) == ENTRY_LOST
}

// ------------------------------------------------------------------ fork-safe locks

/// The lock word of a [`ForkLock`]: 0 when free, else the holder's fork epoch + 1.
/// A word stamped with an older epoch was taken before a fork by a thread that
/// does not exist in this process: it reads as free.
pub(crate) struct ForkRaw(AtomicU64);

impl ForkRaw {
    const fn new() -> ForkRaw {
        ForkRaw(AtomicU64::new(0))
    }

    fn lock(&self) {
        let mine = fork_epoch() + 1;
        let mut spins = 0u32;
        loop {
            let cur = self.0.load(Ordering::Relaxed);
            if (cur == 0 || cur < mine)
                && self
                    .0
                    .compare_exchange(cur, mine, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                return;
            }
            spins += 1;
            if spins < 64 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }

    fn unlock(&self) {
        self.0.store(0, Ordering::Release);
    }
}

/// A process-local mutex that a `fork` from another thread never leaves locked in
/// the child (see the module docs). Held only briefly, so waiting spins and yields.
pub(crate) struct ForkLock<T> {
    raw: ForkRaw,
    data: UnsafeCell<T>,
}

// SAFETY: the lock gives one thread at a time access to `data` (as std's Mutex).
unsafe impl<T: Send> Sync for ForkLock<T> {}
// SAFETY: as for Sync: owning the lock owns the data.
unsafe impl<T: Send> Send for ForkLock<T> {}

impl<T> ForkLock<T> {
    /// A free lock around `data`.
    pub(crate) const fn new(data: T) -> ForkLock<T> {
        ForkLock {
            raw: ForkRaw::new(),
            data: UnsafeCell::new(data),
        }
    }

    /// Takes the lock (waiting while another thread of this process holds it).
    pub(crate) fn lock(&self) -> ForkGuard<'_, T> {
        self.raw.lock();
        ForkGuard { lock: self }
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for ForkLock<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ForkLock")
    }
}

/// Access to a [`ForkLock`]'s data; releases the lock when dropped.
pub(crate) struct ForkGuard<'a, T> {
    lock: &'a ForkLock<T>,
}

impl<T> std::ops::Deref for ForkGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard holds the lock: no other reference to the data exists.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T> std::ops::DerefMut for ForkGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard holds the lock, and `&mut self` makes this the only
        // reference through it.
        unsafe { &mut *self.lock.data.get() }
    }
}

impl<T> Drop for ForkGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.raw.unlock();
    }
}
