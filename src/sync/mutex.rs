//! `ShmMutex<T>`: a futex lock in shared memory that survives its holder's death.
//!
//! One 32-bit lock word: 0 when free, else the holder's owner identity
//! ([`owner::current_owner`](super::owner)) with bit 31 set when someone may be
//! asleep on it. A second word records that a holder died (or panicked) and the data
//! has not been marked consistent since.
//!
//! - lock: one `compare_exchange(0 → me)`; on failure spin briefly, then set the
//!   waiters bit and `FUTEX_WAIT` on the word in bounded slices. Before every sleep
//!   the waiter asks [`owner_alive`](super::owner) about the holder recorded in the
//!   word: a dead holder's word is taken over with one `compare_exchange`, and the
//!   taker gets [`OwnerDied`].
//! - unlock: one `swap(0)`; `FUTEX_WAKE(1)` only if the waiters bit was set.
//!
//! Identity and liveness come only from `owner.rs`, never from pid numbers here.

use std::cell::UnsafeCell;
use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::futex::{Deadline, FutexWord};
use super::owner::{self, OWNER_LIMIT};
use crate::error::AccessError;
use crate::typed::{fingerprint, ShmSafe};

const WAITERS: u32 = 1 << 31;
const OWNER_MASK: u32 = OWNER_LIMIT - 1;
/// How long a waiter sleeps before it checks again whether the holder is alive.
pub(crate) const LIVENESS_SLICE: Duration = Duration::from_millis(50);
/// Spins on a held lock before sleeping (a short critical section often ends first).
const SPINS: u32 = 100;

/// A mutual-exclusion lock over a `T` in shared memory, for threads of any number of
/// processes. If a holder dies, the next locker gets [`OwnerDied`] carrying the
/// guard, repairs the data and calls [`ShmMutexGuard::mark_consistent`].
///
/// Zeroed memory is an unlocked, consistent mutex over a zeroed `T`, so it works as
/// a root or a field of a `#[derive(ShmSafe)]` struct. `T` must not need padding
/// after the 8-byte lock header: its alignment is at most 8 and its size a multiple
/// of 4 (a compile error otherwise).
///
/// ```
/// use shared_allocator::prelude::*;
/// use shared_allocator::sync::ShmMutex;
///
/// #[derive(ShmSafe, Clone, Copy)]
/// #[repr(C)]
/// struct Account { balance: u64, updates: u64 }
///
/// # let name = format!("doc-mutex-{}", std::process::id());
/// # let _cleanup = shared_allocator::segment::UnlinkGuard::new(&name);
/// let alloc = FreeListAllocator::create(&name, 1 << 20)?;
/// let acct: &ShmMutex<Account> = alloc.root("account")?;
/// let mut g = match acct.lock() {
///     Ok(g) => g,
///     Err(died) => {
///         // A holder was killed mid-update: repair, then mark consistent.
///         let mut g = died.into_inner();
///         g.updates = g.balance / 10;
///         g.mark_consistent();
///         g
///     }
/// };
/// g.balance += 10;
/// g.updates += 1;
/// drop(g);
/// assert_eq!(acct.lock().unwrap().balance, 10);
/// # Ok::<(), shared_allocator::Error>(())
/// ```
#[repr(C)]
pub struct ShmMutex<T> {
    state: AtomicU32,
    inconsistent: AtomicU32,
    data: UnsafeCell<T>,
}

// SAFETY: the lock hands out `&mut T` to one holder at a time, in whatever thread or
// process, so sharing the mutex needs `T: Send` (a `T: ShmSafe` is Send + Sync).
unsafe impl<T: ShmSafe> Sync for ShmMutex<T> {}

// SAFETY: ShmMutex<T> is `repr(C)`: two `AtomicU32` then an `UnsafeCell<T>`, which has
// `T`'s layout:
// - every bit pattern is valid: the lock words accept any value (an unknown owner is
//   checked with owner_alive, so a scribbled word is at worst "held by a dead owner"),
//   and `T: ShmSafe` is valid for every bit pattern;
// - no padding: FINGERPRINT asserts size == 8 + size_of::<T>() for each instantiation
//   (evaluated by roots and by `new`);
// - no pointers, no Drop beyond `T`'s (none, `T: ShmSafe`);
// - other processes access `data` only while holding the lock (Acquire/Release on the
//   lock word), so there is no data race in the cooperating-process model;
// - `Send + Sync + 'static` because `T` is (the Sync impl above).
unsafe impl<T: ShmSafe> ShmSafe for ShmMutex<T> {
    const FINGERPRINT: u64 = {
        assert!(
            std::mem::size_of::<ShmMutex<T>>() == 8 + std::mem::size_of::<T>(),
            "ShmMutex<T> would have padding: T needs alignment <= 8 and a size that is a multiple of 4"
        );
        fingerprint::str(T::FINGERPRINT, "ShmMutex")
    };
}

impl<T: fmt::Debug> fmt::Debug for ShmMutex<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.state.load(Ordering::Relaxed);
        f.debug_struct("ShmMutex")
            .field("owner", &(s & OWNER_MASK))
            .field("waiters", &(s & WAITERS != 0))
            .field(
                "consistent",
                &(self.inconsistent.load(Ordering::Relaxed) == 0),
            )
            .finish_non_exhaustive()
    }
}

/// The lock was taken over from a holder that died (or from a holder that panicked,
/// or one whose successor did not mark the data consistent). Carries the guard: the
/// lock *is* held. Repair the data, call [`ShmMutexGuard::mark_consistent`], and go on.
pub struct OwnerDied<G> {
    guard: G,
}

impl<G> OwnerDied<G> {
    /// The guard: the lock is held.
    pub fn into_inner(self) -> G {
        self.guard
    }
    /// The guard, borrowed.
    pub fn get_ref(&self) -> &G {
        &self.guard
    }
    /// The guard, mutably borrowed.
    pub fn get_mut(&mut self) -> &mut G {
        &mut self.guard
    }
}

impl<G> fmt::Debug for OwnerDied<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnerDied").finish_non_exhaustive()
    }
}

impl<G> fmt::Display for OwnerDied<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a previous holder of the shared mutex died (or panicked) while holding it; the data may need repair")
    }
}

impl<G> std::error::Error for OwnerDied<G> {}

/// Why [`ShmMutex::try_lock`] or [`ShmMutex::lock_timeout`] did not return a clean guard.
pub enum TryLockError<G> {
    /// The lock is held (by a live owner) and `try_lock` does not wait.
    WouldBlock,
    /// The timeout of `lock_timeout` passed while a live owner held the lock.
    TimedOut,
    /// Acquired, but a previous holder died: see [`OwnerDied`].
    OwnerDied(OwnerDied<G>),
}

impl<G> fmt::Debug for TryLockError<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TryLockError::WouldBlock => f.write_str("WouldBlock"),
            TryLockError::TimedOut => f.write_str("TimedOut"),
            TryLockError::OwnerDied(e) => e.fmt(f),
        }
    }
}

impl<G> fmt::Display for TryLockError<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TryLockError::WouldBlock => f.write_str("the shared mutex is held by a live owner"),
            TryLockError::TimedOut => {
                f.write_str("timed out waiting for the shared mutex (held by a live owner)")
            }
            TryLockError::OwnerDied(e) => e.fmt(f),
        }
    }
}

impl<G> std::error::Error for TryLockError<G> {}

impl<G> From<OwnerDied<G>> for TryLockError<G> {
    fn from(e: OwnerDied<G>) -> Self {
        TryLockError::OwnerDied(e)
    }
}

/// The result of [`ShmMutex::lock`]: the guard, or the guard wrapped in [`OwnerDied`].
pub type LockResult<G> = Result<G, OwnerDied<G>>;

/// Holds a [`ShmMutex`] locked; unlocks on drop. Dereferences to the data.
///
/// # Fork
/// A guard copied into a `fork` child is no holder: the lock belongs to the
/// parent, which may be writing the data. The child's copy gives no access
/// ([`try_get`](Self::try_get) is [`AccessError::Forked`]), and its drop neither
/// unlocks nor marks anything ([`is_holder`](Self::is_holder) is false).
///
/// # Panics
/// `Deref`, `DerefMut`, [`mark_consistent`](Self::mark_consistent) and
/// [`ShmCondvar::wait`](super::ShmCondvar::wait) panic on a fork child's copy
/// (they cannot return an error).
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct ShmMutexGuard<'a, T: ShmSafe> {
    mutex: &'a ShmMutex<T>,
    /// The fork epoch of the process that took the lock (see "Fork" above).
    fork: u64,
    // Not Send: the unlock must run where the lock was taken only in spirit (the
    // owner is per process), but keeping guards on their thread is the std contract.
    _not_send: PhantomData<*const ()>,
}

// SAFETY: a guard only gives `&T` to other threads when shared; `T: ShmSafe` is Sync.
unsafe impl<T: ShmSafe> Sync for ShmMutexGuard<'_, T> {}

/// How a lock was acquired.
enum Acquired {
    Clean,
    /// From a dead owner, or the data was already marked inconsistent.
    Inconsistent,
}

impl<T: ShmSafe> ShmMutex<T> {
    /// A new unlocked, consistent mutex over `value`.
    pub const fn new(value: T) -> ShmMutex<T> {
        let _ = const { <Self as ShmSafe>::FINGERPRINT }; // the layout check
        ShmMutex {
            state: AtomicU32::new(0),
            inconsistent: AtomicU32::new(0),
            data: UnsafeCell::new(value),
        }
    }

    #[inline]
    fn addr(&self) -> *const u8 {
        (self as *const Self).cast()
    }

    #[inline]
    fn guard(&self, how: Acquired) -> LockResult<ShmMutexGuard<'_, T>> {
        let g = ShmMutexGuard {
            mutex: self,
            fork: crate::process::fork_epoch(),
            _not_send: PhantomData,
        };
        match how {
            Acquired::Clean if self.inconsistent.load(Ordering::Relaxed) == 0 => Ok(g),
            _ => Err(OwnerDied { guard: g }),
        }
    }

    /// Takes the word from a dead holder seen as `seen`; keeps the waiters bit.
    #[cold]
    fn take_over(&self, seen: u32, me: u32) -> bool {
        if self
            .state
            .compare_exchange(
                seen,
                me | (seen & WAITERS),
                Ordering::Acquire,
                Ordering::Relaxed,
            )
            .is_ok()
        {
            self.inconsistent.store(1, Ordering::Relaxed);
            true
        } else {
            false
        }
    }

    fn holder_dead(&self, seen: u32) -> bool {
        !owner::owner_alive(self.addr(), seen & OWNER_MASK)
    }

    /// Acquires the lock, waiting as long as it takes (a dead holder is detected
    /// within about 50 ms of its death).
    ///
    /// # Errors
    /// [`OwnerDied`] (holding the lock) if a holder died or panicked and the data has
    /// not been marked consistent since.
    #[inline]
    pub fn lock(&self) -> LockResult<ShmMutexGuard<'_, T>> {
        let me = owner::current_owner(self.addr());
        if self
            .state
            .compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            return self.guard(Acquired::Clean);
        }
        match self.lock_slow(me, Deadline::after(None)) {
            Some(how) => self.guard(how),
            None => unreachable!("no deadline"),
        }
    }

    /// Acquires the lock only if that needs no waiting (a dead holder's lock is taken
    /// over at once).
    ///
    /// # Errors
    /// [`TryLockError::WouldBlock`] if a live owner holds it; [`TryLockError::OwnerDied`]
    /// (holding the lock) as for [`lock`](ShmMutex::lock).
    pub fn try_lock(&self) -> Result<ShmMutexGuard<'_, T>, TryLockError<ShmMutexGuard<'_, T>>> {
        let me = owner::current_owner(self.addr());
        let s = match self
            .state
            .compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed)
        {
            Ok(_) => return Ok(self.guard(Acquired::Clean)?),
            Err(s) => s,
        };
        if self.holder_dead(s) && self.take_over(s, me) {
            return Ok(self.guard(Acquired::Inconsistent)?);
        }
        Err(TryLockError::WouldBlock)
    }

    /// Acquires the lock, waiting at most `timeout`.
    ///
    /// # Errors
    /// [`TryLockError::TimedOut`] if a live owner held it all along;
    /// [`TryLockError::OwnerDied`] (holding the lock) as for [`lock`](ShmMutex::lock).
    pub fn lock_timeout(
        &self,
        timeout: Duration,
    ) -> Result<ShmMutexGuard<'_, T>, TryLockError<ShmMutexGuard<'_, T>>> {
        let me = owner::current_owner(self.addr());
        if self
            .state
            .compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            return Ok(self.guard(Acquired::Clean)?);
        }
        match self.lock_slow(me, Deadline::after(Some(timeout))) {
            Some(how) => Ok(self.guard(how)?),
            None => Err(TryLockError::TimedOut),
        }
    }

    #[cold]
    fn lock_slow(&self, me: u32, deadline: Deadline) -> Option<Acquired> {
        let mut slept = false;
        let mut spins = 0;
        loop {
            let s = self.state.load(Ordering::Relaxed);
            if s == 0 {
                // After sleeping, keep the waiters bit: others may still be asleep.
                let mine = if slept { me | WAITERS } else { me };
                if self
                    .state
                    .compare_exchange(0, mine, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    return Some(Acquired::Clean);
                }
                continue;
            }
            if spins < SPINS && s & WAITERS == 0 {
                spins += 1;
                std::hint::spin_loop();
                continue;
            }
            if self.holder_dead(s) {
                if self.take_over(s, me) {
                    return Some(Acquired::Inconsistent);
                }
                continue;
            }
            if deadline.expired() {
                return None;
            }
            if s & WAITERS == 0
                && self
                    .state
                    .compare_exchange(s, s | WAITERS, Ordering::Relaxed, Ordering::Relaxed)
                    .is_err()
            {
                continue;
            }
            self.state
                .wait(s | WAITERS, Some(deadline.slice(LIVENESS_SLICE)));
            slept = true;
        }
    }

    /// Releases the lock held by a guard that is being consumed.
    #[inline]
    fn unlock(&self) {
        if self.state.swap(0, Ordering::Release) & WAITERS != 0 {
            self.state.wake(1);
        }
    }

    /// Whether the data is marked consistent (no holder died since the last
    /// [`ShmMutexGuard::mark_consistent`]). A snapshot.
    pub fn is_consistent(&self) -> bool {
        self.inconsistent.load(Ordering::Relaxed) == 0
    }

    /// The data, through exclusive access (no locking needed).
    pub fn get_mut(&mut self) -> &mut T {
        self.data.get_mut()
    }

    /// Consumes the mutex, returning the data.
    pub fn into_inner(self) -> T {
        self.data.into_inner()
    }
}

impl<T: ShmSafe> ShmMutexGuard<'_, T> {
    /// Marks the data consistent again after an [`OwnerDied`]: later lockers get
    /// clean guards.
    ///
    /// # Panics
    /// On a fork child's copy of a parent's guard (see [`ShmMutexGuard`]).
    pub fn mark_consistent(&mut self) {
        self.assert_holder();
        self.mutex.inconsistent.store(0, Ordering::Relaxed);
    }

    /// Whether this process holds the lock through this guard: false for a `fork`
    /// child's copy of its parent's guard.
    #[inline]
    pub fn is_holder(&self) -> bool {
        self.fork == crate::process::fork_epoch()
    }

    #[inline]
    fn assert_holder(&self) {
        if !self.is_holder() {
            forked_guard();
        }
    }

    /// The data, or [`AccessError::Forked`] on a fork child's copy of a parent's
    /// guard (the fallible form of `Deref`).
    pub fn try_get(&self) -> Result<&T, AccessError> {
        crate::process::check_fork(self.fork)?;
        Ok(self)
    }

    /// The data mutably, or [`AccessError::Forked`] as [`try_get`](Self::try_get).
    pub fn try_get_mut(&mut self) -> Result<&mut T, AccessError> {
        crate::process::check_fork(self.fork)?;
        Ok(self)
    }
}

#[cold]
#[inline(never)]
fn forked_guard() -> ! {
    panic!(
        "a ShmMutexGuard copied into a fork child holds nothing: the parent holds the \
         lock (lock the mutex again in the child)"
    )
}

impl<'a, T: ShmSafe> ShmMutexGuard<'a, T> {
    /// Unlocks without the guard's drop; returns the mutex (for the condvar).
    ///
    /// # Panics
    /// On a fork child's copy of a parent's guard (it must not unlock).
    pub(crate) fn unlock_for_wait(self) -> &'a ShmMutex<T> {
        self.assert_holder();
        let m = self.mutex;
        std::mem::forget(self);
        m.unlock();
        m
    }
}

/// Relocks `m` for a condvar waiter.
pub(crate) fn relock<T: ShmSafe>(m: &ShmMutex<T>) -> LockResult<ShmMutexGuard<'_, T>> {
    m.lock()
}

impl<T: ShmSafe> Deref for ShmMutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.assert_holder();
        // SAFETY:
        // - `assert_holder`: this guard was made in this process (not a fork
        //   child's copy of a parent's guard, whose lock the parent holds);
        // - the guard exists only while this process holds the lock (Acquire on the
        //   lock word made the previous holder's writes visible);
        // - holders in other processes touch `data` only while holding the lock, so
        //   nothing writes it while this `&T` lives (the guard outlives it).
        unsafe { &*self.mutex.data.get() }
    }
}

impl<T: ShmSafe> DerefMut for ShmMutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        self.assert_holder();
        // SAFETY:
        // - as in `deref` (made in this process), this guard is the only holder of the lock anywhere;
        // - `&mut self` makes this the only reference derived from the guard.
        unsafe { &mut *self.mutex.data.get() }
    }
}

impl<T: ShmSafe> Drop for ShmMutexGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        if !self.is_holder() {
            // A fork child's copy: the parent holds the lock; leave it alone.
            return;
        }
        if std::thread::panicking() {
            // Like poisoning: the update may be half done.
            self.mutex.inconsistent.store(1, Ordering::Relaxed);
        }
        self.mutex.unlock();
    }
}

impl<T: ShmSafe + fmt::Debug> fmt::Debug for ShmMutexGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

// SAFETY: the lock word is atomic and the value is inside an UnsafeCell that only
// the holder of the lock (one handle in one process at a time) touches, so the
// shared API is sound when other processes call it at once.
unsafe impl<T: ShmSafe> crate::typed::ShmShared for ShmMutex<T> {
    const ATOMIC_ONLY: bool = false;
}
