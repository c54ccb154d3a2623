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
use std::mem::ManuallyDrop;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::error::{AccessError, LockError};
use crate::sync::futex::{Deadline, FutexWord};
use crate::sync::owner::{self, OWNER_LIMIT};
use crate::typed::{fingerprint, MutexPayload, ShmSafe};

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
/// use shared_allocator::coord::ShmMutex;
///
/// #[derive(ShmSafe, Clone, Copy)]
/// #[repr(C)]
/// struct Account { balance: u64, updates: u64 }
///
/// # let name = format!("doc-mutex-{}", std::process::id());
/// # let _cleanup = shared_allocator::segment::UnlinkGuard::new(&name);
/// let alloc = FreeListAllocator::create(&name, 1 << 20)?;
/// let acct = alloc.root::<ShmMutex<Account>>("account")?;
/// // If a holder was killed mid-update, repair first (and mark consistent).
/// let mut g = acct.lock_or_repair(|a| a.updates = a.balance / 10);
/// g.balance += 10;
/// g.updates += 1;
/// drop(g);
/// assert_eq!(acct.lock()?.balance, 10); // `?`: a dead holder is `LockError::OwnerDied`
///
/// // Or repair with the guard in hand:
/// let g = match acct.lock_robust() {
///     Ok(g) => g,
///     Err(died) => {
///         let mut g = died.into_inner();
///         g.updates = g.balance / 10;
///         g.mark_consistent();
///         g
///     }
/// };
/// assert_eq!(g.updates, 1);
/// # Ok::<(), shared_allocator::Error>(())
/// ```
#[repr(C)]
pub struct ShmMutex<T: MutexPayload> {
    state: AtomicU32,
    inconsistent: AtomicU32,
    data: UnsafeCell<T>,
}

// SAFETY: the lock hands out `&mut T` to one holder at a time, in whatever thread or
// process, so sharing the mutex needs `T: Send` (a `T: MutexPayload` is Send + Sync).
unsafe impl<T: MutexPayload> Sync for ShmMutex<T> {}

// SAFETY: ShmMutex<T> is `repr(C)`: two `AtomicU32` then an `UnsafeCell<T>`, which has
// `T`'s layout:
// - every bit pattern is valid: the lock words accept any value (an unknown owner is
//   checked with owner_alive, so a scribbled word is at worst "held by a dead owner"),
//   and `T: MutexPayload` is valid for every bit pattern;
// - no padding: FINGERPRINT asserts size == 8 + size_of::<T>() for each instantiation
//   (evaluated by roots and by `new`);
// - no pointers, no Drop beyond `T`'s (none, `T: MutexPayload`);
// - other processes access `data` only while holding the lock (Acquire/Release on the
//   lock word), so there is no data race in the cooperating-process model;
// - `Send + Sync + 'static` because `T` is (the Sync impl above).
unsafe impl<T: MutexPayload> ShmSafe for ShmMutex<T> {
    const FINGERPRINT: u64 = {
        assert!(
            std::mem::size_of::<ShmMutex<T>>() == 8 + std::mem::size_of::<T>(),
            "ShmMutex<T> would have padding: T needs alignment <= 8 and a size that is a multiple of 4"
        );
        fingerprint::str(T::FINGERPRINT, "ShmMutex")
    };
}

impl<T: MutexPayload + fmt::Debug> fmt::Debug for ShmMutex<T> {
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

impl<G> OwnerDied<G> {
    /// The `Send + Sync + 'static` error value of this (for `?` after taking the
    /// guard out with [`into_inner`](OwnerDied::into_inner) or
    /// [`into_parts`](OwnerDied::into_parts)).
    pub fn error(&self) -> LockError {
        LockError::OwnerDied
    }

    /// The guard (the lock is held) and the `Send` error value.
    pub fn into_parts(self) -> (G, LockError) {
        (self.guard, LockError::OwnerDied)
    }
}

/// Drops the guard (releasing the lock; the data stays marked inconsistent).
impl<G> From<OwnerDied<G>> for LockError {
    fn from(_: OwnerDied<G>) -> LockError {
        LockError::OwnerDied
    }
}

/// Drops the guard (releasing the lock; the data stays marked inconsistent).
impl<G> From<OwnerDied<G>> for crate::Error {
    fn from(_: OwnerDied<G>) -> crate::Error {
        crate::Error::Lock(LockError::OwnerDied)
    }
}

/// The result of [`ShmMutex::lock_robust`]: the guard, or the guard wrapped in [`OwnerDied`].
pub type LockResult<G> = Result<G, OwnerDied<G>>;

/// Holds a [`ShmMutex`] locked; unlocks on drop. Dereferences to the data.
///
/// # Fork
/// A guard copied into a `fork` child is no holder: the lock belongs to the
/// parent, which may be writing the data. The child's copy gives no access
/// ([`try_get`](Self::try_get) is [`AccessError::Forked`]), and its drop neither
/// unlocks nor marks anything ([`is_holder`](Self::is_holder) is false).
///
/// # Copy in, copy out
/// The guard derefs to its own copy of the data: taken (byte-wise atomic loads)
/// when the lock is acquired, stored back (byte-wise atomic stores) when it is
/// released, if it was written through `DerefMut`. The shared bytes are never
/// written with plain stores, so a process that copies them out meanwhile (e.g.
/// [`RelPtr::read`](crate::RelPtr::read) of the block that holds the mutex) does
/// not race (crate `typed` module docs, "No plain stores"). For a holder, this is
/// the same as writing in place: only holders of the lock touch the data. A
/// holder killed before it unlocks leaves the data as the previous holder left it
/// (its copy dies with it), and the next locker still gets [`OwnerDied`] (the
/// holder may have acted on the data); a holder that panics stores its copy back
/// and marks the data inconsistent, as before.
///
/// # Panics
/// `Deref`, `DerefMut`, [`mark_consistent`](Self::mark_consistent) and
/// [`ShmCondvar::wait`](super::ShmCondvar::wait) panic on a fork child's copy
/// (they cannot return an error).
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct ShmMutexGuard<'a, T: MutexPayload> {
    mutex: &'a ShmMutex<T>,
    /// The fork epoch of the process that took the lock (see "Fork" above).
    fork: u64,
    /// The holder's copy of the data, taken when the lock was acquired and stored
    /// back (byte-wise atomic) on unlock if `DerefMut` was used: no plain store
    /// ever reaches the shared bytes (see "Copy in, copy out" above).
    value: ManuallyDrop<T>,
    dirty: bool,
    // Not Send: the unlock must run where the lock was taken only in spirit (the
    // owner is per process), but keeping guards on their thread is the std contract.
    _not_send: PhantomData<*const ()>,
}

// SAFETY: a guard only gives `&T` to other threads when shared; `T: MutexPayload` is Sync.
unsafe impl<T: MutexPayload> Sync for ShmMutexGuard<'_, T> {}

/// How a lock was acquired.
enum Acquired {
    Clean,
    /// From a dead owner, or the data was already marked inconsistent.
    Inconsistent,
}

impl<T: MutexPayload> ShmMutex<T> {
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
        // SAFETY:
        // - `data` is inside this mutex, which is borrowed for the guard's life
        //   (valid for reads of one T, aligned: `UnsafeCell<T>` has T's layout);
        // - this process holds the lock (the caller acquired it with Acquire), so
        //   no holder writes the data now, and copies by others are loads.
        let bytes =
            unsafe { atomic_memcpy::atomic_load(self.data.get().cast_const(), Ordering::Relaxed) };
        // SAFETY: every byte is initialised (shared memory is zero-filled, a local
        // mutex was made from a T, and every write is a whole T), and T: ShmSafe is
        // valid for any bit pattern.
        let value = unsafe { bytes.assume_init() };
        let g = ShmMutexGuard {
            mutex: self,
            fork: crate::process::fork_epoch(),
            value: ManuallyDrop::new(value),
            dirty: false,
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
    /// [`LockError::OwnerDied`] if a holder died or panicked and the data has not
    /// been marked consistent since: the lock is released again and the data stays
    /// marked inconsistent, so every `lock` reports it until someone repairs it
    /// with [`lock_or_repair`](ShmMutex::lock_or_repair) or
    /// [`lock_robust`](ShmMutex::lock_robust).
    #[inline]
    pub fn lock(&self) -> Result<ShmMutexGuard<'_, T>, LockError> {
        self.lock_robust().map_err(|died| died.error())
    }

    /// Acquires the lock; if a holder died (the data marked inconsistent), calls
    /// `repair` on the data first and marks it consistent. Never fails.
    pub fn lock_or_repair(&self, repair: impl FnOnce(&mut T)) -> ShmMutexGuard<'_, T> {
        match self.lock_robust() {
            Ok(g) => g,
            Err(died) => {
                let mut g = died.into_inner();
                repair(&mut g);
                g.mark_consistent();
                g
            }
        }
    }

    /// Acquires the lock like [`lock`](ShmMutex::lock), but a dead holder's lock
    /// comes as [`OwnerDied`] *holding the guard*: repair the data through it, call
    /// [`ShmMutexGuard::mark_consistent`], go on. (`OwnerDied` borrows the mutex:
    /// take the guard out with [`OwnerDied::into_parts`] before `?`.)
    ///
    /// # Errors
    /// [`OwnerDied`] (holding the lock).
    #[inline]
    pub fn lock_robust(&self) -> LockResult<ShmMutexGuard<'_, T>> {
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
    /// [`LockError::WouldBlock`] if a live owner holds it; [`LockError::OwnerDied`]
    /// as for [`lock`](ShmMutex::lock).
    pub fn try_lock(&self) -> Result<ShmMutexGuard<'_, T>, LockError> {
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
        Err(LockError::WouldBlock)
    }

    /// Acquires the lock, waiting at most `timeout`.
    ///
    /// # Errors
    /// [`LockError::TimedOut`] if a live owner held it all along;
    /// [`LockError::OwnerDied`] as for [`lock`](ShmMutex::lock).
    pub fn lock_timeout(&self, timeout: Duration) -> Result<ShmMutexGuard<'_, T>, LockError> {
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
            None => Err(LockError::TimedOut),
        }
    }

    /// [`lock_timeout`](ShmMutex::lock_timeout) that keeps the guard of a dead
    /// holder's data (`Some(Err(died))`) for a repair inside the crate (the
    /// collections); `None`: a live owner held it until `timeout`.
    pub(crate) fn lock_robust_timeout(
        &self,
        timeout: Duration,
    ) -> Option<LockResult<ShmMutexGuard<'_, T>>> {
        let me = owner::current_owner(self.addr());
        if self
            .state
            .compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            return Some(self.guard(Acquired::Clean));
        }
        self.lock_slow(me, Deadline::after(Some(timeout)))
            .map(|how| self.guard(how))
    }

    /// The lock word now (owner and flag bits), for callers that keep their own
    /// record of who holds the lock.
    pub(crate) fn state_word(&self) -> u32 {
        self.state.load(Ordering::Relaxed)
    }

    /// Takes the lock from a word `seen` that names this process, when the caller
    /// knows from its own bookkeeping that no thread of this process holds it (a
    /// word replayed or scribbled with this process's identity, which the liveness
    /// check cannot see through). The data is marked inconsistent, as after a dead
    /// holder. `None` if the word names another owner or is no longer `seen`.
    #[cold]
    pub(crate) fn take_from_self(&self, seen: u32) -> Option<ShmMutexGuard<'_, T>> {
        let me = owner::current_owner(self.addr());
        if seen & OWNER_MASK != me || !self.take_over(seen, me) {
            return None;
        }
        // The data is marked inconsistent, so `guard` answers `OwnerDied`; the
        // caller repairs through the guard either way.
        Some(match self.guard(Acquired::Clean) {
            Ok(g) => g,
            Err(died) => died.guard,
        })
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

impl<T: MutexPayload> ShmMutexGuard<'_, T> {
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

impl<'a, T: MutexPayload> ShmMutexGuard<'a, T> {
    /// Unlocks without the guard's drop; returns the mutex (for the condvar).
    ///
    /// # Panics
    /// On a fork child's copy of a parent's guard (it must not unlock).
    pub(crate) fn unlock_for_wait(mut self) -> &'a ShmMutex<T> {
        self.assert_holder();
        self.store_back();
        let m = self.mutex;
        std::mem::forget(self);
        m.unlock();
        m
    }
}

/// Relocks `m` for a condvar waiter.
pub(crate) fn relock<T: MutexPayload>(m: &ShmMutex<T>) -> Result<ShmMutexGuard<'_, T>, LockError> {
    m.lock()
}

impl<T: MutexPayload> Deref for ShmMutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.assert_holder();
        &self.value
    }
}

impl<T: MutexPayload> DerefMut for ShmMutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        self.assert_holder();
        self.dirty = true;
        &mut self.value
    }
}

impl<T: MutexPayload> ShmMutexGuard<'_, T> {
    /// Stores the holder's copy back into the shared data if it was written.
    fn store_back(&mut self) {
        if !self.dirty {
            return;
        }
        self.dirty = false;
        // SAFETY: `self.value` is an initialised T, read through a reference; the
        // bitwise copy is stored below and the original is never dropped
        // (ManuallyDrop; T: MutexPayload has no drop glue either).
        let v = unsafe { std::ptr::read(&*self.value) };
        // SAFETY:
        // - `data` is inside the mutex borrowed for the guard's life, aligned for T
        //   (`UnsafeCell<T>` has T's layout);
        // - this process still holds the lock (callers store back before they
        //   unlock), so no other holder reads or writes it; copies by others are
        //   byte-wise atomic loads, which an atomic store does not race.
        unsafe { atomic_memcpy::atomic_store(self.mutex.data.get(), v, Ordering::Relaxed) };
    }
}

impl<T: MutexPayload> Drop for ShmMutexGuard<'_, T> {
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
        self.store_back();
        self.mutex.unlock();
    }
}

impl<T: MutexPayload + fmt::Debug> fmt::Debug for ShmMutexGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

// SAFETY: the lock word is atomic and the value is inside an UnsafeCell that only
// the holder of the lock (one handle in one process at a time) touches, so the
// shared API is sound when other processes call it at once.
unsafe impl<T: MutexPayload> crate::typed::ShmShared for ShmMutex<T> {
    const ATOMIC_ONLY: bool = false;
}

// SAFETY: 8 bytes of lock words then `T` with no padding (the ShmSafe impl's
// assertion): whole 8-byte words when `T` is, alignment that of `T` (at most 8).
unsafe impl<T: crate::typed::ChannelElement + MutexPayload> crate::typed::ChannelElement
    for ShmMutex<T>
{
}
// SAFETY: as above, whole 4-byte words when `T` is.
unsafe impl<T: MutexPayload> MutexPayload for ShmMutex<T> {}
