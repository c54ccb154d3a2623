//! `ShmCondvar`: a condition variable for [`ShmMutex`] in shared memory.
//!
//! It is the event protocol of [`ShmEvent`] used with a lock: the waiter registers
//! on the event *before* it unlocks the mutex, so a notification sent after the
//! unlock (by a process that changed the state under the lock) always reaches it.

use std::time::Duration;

use super::event::{ShmEvent, WaitOutcome};
use super::mutex::{relock, ShmMutexGuard};
use crate::error::LockError;
use crate::typed::MutexPayload;
use crate::typed::{fingerprint, ShmSafe};

/// A condition variable in shared memory, used with a [`ShmMutex`](super::ShmMutex).
///
/// Zeroed memory is a valid condvar. Wake-ups may be spurious: wait in a loop, or
/// use [`wait_while`](ShmCondvar::wait_while).
///
/// ```
/// use shared_allocator::prelude::*;
/// use shared_allocator::coord::{ShmCondvar, ShmMutex};
/// use std::time::Duration;
///
/// #[derive(ShmSafe)]
/// #[shm(shared)]
/// #[repr(C)]
/// struct Queue { lock: ShmMutex<u64>, changed: ShmCondvar }
///
/// # let name = format!("doc-condvar-{}", std::process::id());
/// # let _cleanup = shared_allocator::segment::UnlinkGuard::new(&name);
/// let alloc = FreeListAllocator::create(&name, 1 << 20)?;
/// let q = alloc.root::<Queue>("queue")?;
/// // A producer (normally another process):
/// *q.lock.lock().unwrap() += 1;
/// q.changed.notify_all();
/// // A consumer:
/// let (g, _) = q.changed.wait_timeout_while(q.lock.lock()?, Duration::from_secs(5), |n| *n == 0)?;
/// assert_eq!(*g, 1);
/// # Ok::<(), shared_allocator::Error>(())
/// ```
#[repr(C)]
#[derive(Debug, Default)]
pub struct ShmCondvar {
    event: ShmEvent,
}

// SAFETY: ShmCondvar is `repr(C)` around one `ShmEvent`, which is ShmSafe:
// - same size (8), alignment and bit validity, no padding;
// - no pointers, no Drop; only atomic access; Send + Sync + 'static.
unsafe impl ShmSafe for ShmCondvar {
    const FINGERPRINT: u64 = fingerprint::str(<ShmEvent as ShmSafe>::FINGERPRINT, "ShmCondvar");
}

impl ShmCondvar {
    /// A new condvar (the same as zeroed memory).
    pub const fn new() -> ShmCondvar {
        ShmCondvar {
            event: ShmEvent::new(),
        }
    }

    /// Unlocks `guard`'s mutex, sleeps until notified (or spuriously), relocks.
    ///
    /// # Errors
    /// [`LockError::OwnerDied`] if relocking found a dead holder's lock (the lock is
    /// released then: repair with [`ShmMutex::lock_or_repair`](super::ShmMutex::lock_or_repair)).
    ///
    /// # Panics
    /// If `guard` is a `fork` child's copy of its parent's guard (it holds nothing:
    /// see [`ShmMutexGuard`]); the wait forms below too.
    pub fn wait<'a, T: MutexPayload>(
        &self,
        guard: ShmMutexGuard<'a, T>,
    ) -> Result<ShmMutexGuard<'a, T>, LockError> {
        self.wait_for(guard, None).0
    }

    /// Like [`wait`](ShmCondvar::wait), sleeping at most `timeout` before
    /// relocking. Also returns whether a notification came (as std's
    /// `Condvar::wait_timeout`: the pair inside the `Result`, so `?` applies).
    ///
    /// # Errors
    /// As [`wait`](ShmCondvar::wait).
    pub fn wait_timeout<'a, T: MutexPayload>(
        &self,
        guard: ShmMutexGuard<'a, T>,
        timeout: Duration,
    ) -> Result<(ShmMutexGuard<'a, T>, WaitOutcome), LockError> {
        let (guard, outcome) = self.wait_for(guard, Some(timeout));
        Ok((guard?, outcome))
    }

    fn wait_for<'a, T: MutexPayload>(
        &self,
        guard: ShmMutexGuard<'a, T>,
        timeout: Option<Duration>,
    ) -> (Result<ShmMutexGuard<'a, T>, LockError>, WaitOutcome) {
        let listener = self.event.listen(); // before the unlock: no notify is missed
        let mutex = guard.unlock_for_wait();
        let outcome = listener.wait_for(timeout);
        (relock(mutex), outcome)
    }

    /// Waits while `cond(&mut data)` is true.
    ///
    /// # Errors
    /// [`LockError::OwnerDied`] as for [`wait`](ShmCondvar::wait); the condition is then not
    /// checked again (repair first).
    pub fn wait_while<'a, T: MutexPayload>(
        &self,
        mut guard: ShmMutexGuard<'a, T>,
        mut cond: impl FnMut(&mut T) -> bool,
    ) -> Result<ShmMutexGuard<'a, T>, LockError> {
        while cond(&mut guard) {
            guard = self.wait(guard)?;
        }
        Ok(guard)
    }

    /// Waits while `cond(&mut data)` is true, at most `timeout` in total. Returns
    /// [`WaitOutcome::TimedOut`] if the condition still held at the deadline.
    ///
    /// # Errors
    /// As [`wait_while`](ShmCondvar::wait_while).
    pub fn wait_timeout_while<'a, T: MutexPayload>(
        &self,
        mut guard: ShmMutexGuard<'a, T>,
        timeout: Duration,
        mut cond: impl FnMut(&mut T) -> bool,
    ) -> Result<(ShmMutexGuard<'a, T>, WaitOutcome), LockError> {
        let deadline = crate::sync::futex::Deadline::after(Some(timeout));
        loop {
            if !cond(&mut guard) {
                return Ok((guard, WaitOutcome::Notified));
            }
            let Some(left) = deadline.remaining().filter(|d| !d.is_zero()) else {
                return Ok((guard, WaitOutcome::TimedOut));
            };
            guard = self.wait_timeout(guard, left)?.0;
        }
    }

    /// Wakes one waiter.
    pub fn notify_one(&self) {
        self.event.notify_one();
    }

    /// Wakes every waiter.
    pub fn notify_all(&self) {
        self.event.notify_all();
    }
}

// SAFETY: every byte of a ShmCondvar is an atomic word (inside an UnsafeCell), and
// its shared API (wait, notify) is sound when other processes call it at once.
unsafe impl crate::typed::ShmSync for ShmCondvar {}

// SAFETY: `repr(C)` around one `ShmEvent`: one 8-byte word.
unsafe impl crate::typed::ChannelElement for ShmCondvar {}
// SAFETY: as above.
unsafe impl crate::typed::MutexPayload for ShmCondvar {}
