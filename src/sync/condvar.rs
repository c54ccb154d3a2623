//! `ShmCondvar`: a condition variable for [`ShmMutex`] in shared memory.
//!
//! It is the event protocol of [`ShmEvent`] used with a lock: the waiter registers
//! on the event *before* it unlocks the mutex, so a notification sent after the
//! unlock (by a process that changed the state under the lock) always reaches it.

use std::time::Duration;

use super::event::{ShmEvent, WaitOutcome};
use super::mutex::{relock, LockResult, ShmMutexGuard};
use crate::typed::{fingerprint, ShmSafe};

/// A condition variable in shared memory, used with a [`ShmMutex`](super::ShmMutex).
///
/// Zeroed memory is a valid condvar. Wake-ups may be spurious: wait in a loop, or
/// use [`wait_while`](ShmCondvar::wait_while).
///
/// ```
/// use shared_allocator::prelude::*;
/// use shared_allocator::sync::{ShmCondvar, ShmMutex};
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
/// let q: &Queue = alloc.root("queue")?;
/// // A producer (normally another process):
/// *q.lock.lock().unwrap() += 1;
/// q.changed.notify_all();
/// // A consumer:
/// let (g, _) = q.changed.wait_timeout_while(q.lock.lock().unwrap(), Duration::from_secs(5), |n| *n == 0);
/// assert_eq!(*g.unwrap(), 1);
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
    /// [`OwnerDied`](super::OwnerDied) (holding the lock) if relocking found a dead holder's lock.
    ///
    /// # Panics
    /// If `guard` is a `fork` child's copy of its parent's guard (it holds nothing:
    /// see [`ShmMutexGuard`]); the wait forms below too.
    pub fn wait<'a, T: ShmSafe>(
        &self,
        guard: ShmMutexGuard<'a, T>,
    ) -> LockResult<ShmMutexGuard<'a, T>> {
        self.wait_timeout(guard, None).0
    }

    /// Like [`wait`](ShmCondvar::wait), sleeping at most `timeout` (`None`: no limit)
    /// before relocking. Also returns whether a notification came.
    pub fn wait_timeout<'a, T: ShmSafe>(
        &self,
        guard: ShmMutexGuard<'a, T>,
        timeout: Option<Duration>,
    ) -> (LockResult<ShmMutexGuard<'a, T>>, WaitOutcome) {
        let listener = self.event.listen(); // before the unlock: no notify is missed
        let mutex = guard.unlock_for_wait();
        let outcome = listener.wait(timeout);
        (relock(mutex), outcome)
    }

    /// Waits while `cond(&mut data)` is true.
    ///
    /// # Errors
    /// [`OwnerDied`](super::OwnerDied) as for [`wait`](ShmCondvar::wait); the condition is then not
    /// checked again (repair first).
    pub fn wait_while<'a, T: ShmSafe>(
        &self,
        mut guard: ShmMutexGuard<'a, T>,
        mut cond: impl FnMut(&mut T) -> bool,
    ) -> LockResult<ShmMutexGuard<'a, T>> {
        while cond(&mut guard) {
            guard = self.wait(guard)?;
        }
        Ok(guard)
    }

    /// Waits while `cond(&mut data)` is true, at most `timeout` in total. Returns
    /// [`WaitOutcome::TimedOut`] if the condition still held at the deadline.
    pub fn wait_timeout_while<'a, T: ShmSafe>(
        &self,
        mut guard: ShmMutexGuard<'a, T>,
        timeout: Duration,
        mut cond: impl FnMut(&mut T) -> bool,
    ) -> (LockResult<ShmMutexGuard<'a, T>>, WaitOutcome) {
        let deadline = super::futex::Deadline::after(Some(timeout));
        loop {
            if !cond(&mut guard) {
                return (Ok(guard), WaitOutcome::Notified);
            }
            let Some(left) = deadline.remaining().filter(|d| !d.is_zero()) else {
                return (Ok(guard), WaitOutcome::TimedOut);
            };
            match self.wait_timeout(guard, Some(left)).0 {
                Ok(g) => guard = g,
                Err(died) => return (Err(died), WaitOutcome::Notified),
            }
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
