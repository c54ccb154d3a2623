//! The futex word the blocking primitives are written against.
//!
//! In the library it is `std::sync::atomic::AtomicU32` inside the shared mapping,
//! waited on and woken through `rustix::thread::futex` with `Flags::empty()`: a
//! *shared* futex (no `FUTEX_PRIVATE_FLAG`), keyed by the kernel on the backing
//! object and offset, so processes that map the segment at different addresses
//! still meet on the same word.
//!
//! Under `--cfg loom` the same protocols also run over `loom`'s `AtomicU32`, with the
//! futex emulated by one loom mutex and condvar: `wait` checks the value and goes to
//! sleep under the mutex that `wake` takes, which is the atomicity the kernel gives
//! (the hash-bucket lock); `wake(n)` takes at most `n` sleepers of that word off the
//! queue and returns how many, and only those return. So a lost wake-up in a
//! protocol shows as a loom deadlock.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// The operations the event, mutex and channel protocols use on a 32-bit futex word.
pub trait FutexWord {
    /// `AtomicU32::load`.
    fn load(&self, order: Ordering) -> u32;
    /// `AtomicU32::store`.
    fn store(&self, value: u32, order: Ordering);
    /// `AtomicU32::fetch_add`.
    fn fetch_add(&self, value: u32, order: Ordering) -> u32;
    /// `AtomicU32::fetch_or`.
    fn fetch_or(&self, value: u32, order: Ordering) -> u32;
    /// `AtomicU32::compare_exchange_weak`.
    ///
    /// # Errors
    /// The current value, when it was not `current` (or spuriously).
    fn compare_exchange_weak(
        &self,
        current: u32,
        new: u32,
        success: Ordering,
        failure: Ordering,
    ) -> Result<u32, u32>;
    /// A `SeqCst` fence of the matching memory model (std or loom).
    fn fence_seq_cst();
    /// Sleeps while the word holds `expected`, at most `timeout` (`None`: no limit).
    /// Returns at once if it does not hold `expected`. May return spuriously; callers
    /// re-check their condition.
    fn wait(&self, expected: u32, timeout: Option<Duration>);
    /// Wakes at most `count` sleepers of this word; returns how many woke.
    fn wake(&self, count: u32) -> usize;
}

impl FutexWord for std::sync::atomic::AtomicU32 {
    #[inline]
    fn load(&self, order: Ordering) -> u32 {
        std::sync::atomic::AtomicU32::load(self, order)
    }
    #[inline]
    fn store(&self, value: u32, order: Ordering) {
        std::sync::atomic::AtomicU32::store(self, value, order)
    }
    #[inline]
    fn fetch_add(&self, value: u32, order: Ordering) -> u32 {
        std::sync::atomic::AtomicU32::fetch_add(self, value, order)
    }
    #[inline]
    fn fetch_or(&self, value: u32, order: Ordering) -> u32 {
        std::sync::atomic::AtomicU32::fetch_or(self, value, order)
    }
    #[inline]
    fn compare_exchange_weak(
        &self,
        current: u32,
        new: u32,
        success: Ordering,
        failure: Ordering,
    ) -> Result<u32, u32> {
        std::sync::atomic::AtomicU32::compare_exchange_weak(self, current, new, success, failure)
    }
    #[inline]
    fn fence_seq_cst() {
        std::sync::atomic::fence(Ordering::SeqCst);
    }
    fn wait(&self, expected: u32, timeout: Option<Duration>) {
        use rustix::thread::futex;
        let ts = timeout.map(|d| futex::Timespec {
            tv_sec: d.as_secs().min(i64::MAX as u64) as i64,
            tv_nsec: i64::from(d.subsec_nanos()),
        });
        // EAGAIN (value differs), EINTR (a signal), ETIMEDOUT: all mean "look again".
        // Flags::empty(): a shared futex, so other processes' wakes reach us.
        let _ = futex::wait(self, futex::Flags::empty(), expected, ts.as_ref());
    }
    #[inline]
    fn wake(&self, count: u32) -> usize {
        use rustix::thread::futex;
        futex::wake(self, futex::Flags::empty(), count).unwrap_or(0)
    }
}

#[cfg(loom)]
mod loom_futex {
    use super::*;
    use loom::sync::{Condvar, Mutex};

    /// The emulated kernel queue: every sleeper, by word address, with whether a
    /// wake has taken it off the queue.
    struct Queue {
        next_id: usize,
        sleepers: Vec<(usize, usize, bool)>,
    }

    loom::lazy_static! {
        /// One "hash bucket" for every emulated futex of a model.
        static ref BUCKET: (Mutex<Queue>, Condvar) = (
            Mutex::new(Queue { next_id: 0, sleepers: Vec::new() }),
            Condvar::new(),
        );
    }

    impl FutexWord for loom::sync::atomic::AtomicU32 {
        fn load(&self, order: Ordering) -> u32 {
            loom::sync::atomic::AtomicU32::load(self, order)
        }
        fn store(&self, value: u32, order: Ordering) {
            loom::sync::atomic::AtomicU32::store(self, value, order)
        }
        fn fetch_add(&self, value: u32, order: Ordering) -> u32 {
            loom::sync::atomic::AtomicU32::fetch_add(self, value, order)
        }
        fn fetch_or(&self, value: u32, order: Ordering) -> u32 {
            loom::sync::atomic::AtomicU32::fetch_or(self, value, order)
        }
        fn compare_exchange_weak(
            &self,
            current: u32,
            new: u32,
            success: Ordering,
            failure: Ordering,
        ) -> Result<u32, u32> {
            loom::sync::atomic::AtomicU32::compare_exchange_weak(
                self, current, new, success, failure,
            )
        }
        fn fence_seq_cst() {
            loom::sync::atomic::fence(Ordering::SeqCst);
        }
        fn wait(&self, expected: u32, timeout: Option<Duration>) {
            let mut q = BUCKET.0.lock().unwrap();
            // The kernel reads the word under the bucket lock; a SeqCst load stands in
            // for the full barrier of the system call.
            if loom::sync::atomic::AtomicU32::load(self, Ordering::SeqCst) != expected {
                return;
            }
            if timeout.is_some() {
                // A timed wait may end at any moment: model the earliest (a spurious
                // return), which protocols must tolerate anyway.
                return;
            }
            let addr = self as *const Self as usize;
            let id = q.next_id;
            q.next_id += 1;
            q.sleepers.push((addr, id, false));
            // Like the kernel: only a wake that picks this sleeper ends the sleep (a
            // wake of one never wakes two), so a protocol that wakes too few
            // deadlocks here and loom reports it.
            loop {
                q = BUCKET.1.wait(q).unwrap();
                if let Some(k) = q.sleepers.iter().position(|s| s.1 == id && s.2) {
                    q.sleepers.remove(k);
                    return;
                }
            }
        }
        fn wake(&self, count: u32) -> usize {
            let addr = self as *const Self as usize;
            let mut q = BUCKET.0.lock().unwrap();
            let mut woke = 0;
            for s in q.sleepers.iter_mut().filter(|s| s.0 == addr && !s.2) {
                if woke == count as usize {
                    break;
                }
                s.2 = true;
                woke += 1;
            }
            if woke > 0 {
                BUCKET.1.notify_all();
            }
            woke
        }
    }
}

/// A point in time an operation must finish by, or none.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline(Option<Instant>);

impl Deadline {
    /// `timeout` from now (`None`: never).
    pub(crate) fn after(timeout: Option<Duration>) -> Deadline {
        Deadline(timeout.map(|t| Instant::now().checked_add(t).unwrap_or_else(far_future)))
    }

    /// Time left, `Some(ZERO)` once expired; `None` without a deadline.
    pub(crate) fn remaining(&self) -> Option<Duration> {
        self.0.map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// Whether the deadline has passed.
    pub(crate) fn expired(&self) -> bool {
        self.remaining() == Some(Duration::ZERO)
    }

    /// The next sleep: at most `slice`, and no later than the deadline.
    pub(crate) fn slice(&self, slice: Duration) -> Duration {
        self.remaining().map_or(slice, |r| r.min(slice))
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365 * 30)
}
