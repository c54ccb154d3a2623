//! `ShmEvent`: a futex-based notification that lives in shared memory.
//!
//! The protocol (an "eventcount"): two 32-bit words, `seq` (a sequence number in
//! steps of 2; bit 0 says "someone may be asleep on this value") and a count of
//! registered `waiters`.
//!
//! - A waiter registers (`waiters += 1`), issues a `SeqCst` fence, and reads `seq`
//!   as its ticket; then it checks its condition; if the condition is still false it
//!   sets the sleeper bit (`fetch_or`, which also re-reads `seq`: if it moved, the
//!   waiter returns) and sleeps with `FUTEX_WAIT(ticket | 1)`, which returns at once
//!   if `seq` moved since.
//! - A notifier makes its condition true (any stores), issues a `SeqCst` fence, and
//!   reads `waiters`. If it is zero, nobody can be between "check" and "sleep" (any
//!   later waiter's fence orders after ours, so its check sees the new state) and it
//!   returns without touching `seq`. Otherwise it advances `seq` by 2 (Release) with
//!   one CAS and makes the `FUTEX_WAKE` system call only if the sleeper bit was set.
//!   The new value keeps the bit only when a `notify_one` may leave other sleepers
//!   behind (more than one waiter registered).
//!
//! So a notify that lands between a waiter's check and its sleep changes `seq` first
//! and the sleep returns at once: no lost wake-ups; and a burst of notifications
//! while the woken waiter is still on its way pays for one wake-up, not one each.
//! The protocol is model-checked with loom (`loom_event_*` below) over the same
//! generic functions.
//!
//! A process that dies while registered leaves `waiters` one too high for good:
//! notifiers then may pay a wake system call they did not need: slower, still
//! correct. `seq` wraps after 2^31 notifications; a waiter whose ticket is exactly
//! that many notifications old would sleep until the next one or its timeout.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::futex::{Deadline, FutexWord};
use crate::typed::{fingerprint, ShmSafe};

/// The wake count meaning "everyone". FUTEX_WAKE takes a signed count, so
/// `u32::MAX` would be -1 to the kernel, which wakes only one sleeper.
pub(crate) const WAKE_ALL: u32 = i32::MAX as u32;

/// Bit 0 of `seq`: a waiter may be asleep on the current value.
const SLEEPER: u32 = 1;
/// `seq` advances by this much per notification.
const STEP: u32 = 2;

/// Registers a waiter; returns its ticket. The caller checks its condition after this.
#[inline]
pub(crate) fn listen<F: FutexWord>(seq: &F, waiters: &F) -> u32 {
    waiters.fetch_add(1, Ordering::Relaxed);
    F::fence_seq_cst();
    seq.load(Ordering::Acquire) & !SLEEPER
}

/// Unregisters a waiter that did not sleep (its condition held).
#[inline]
pub(crate) fn cancel<F: FutexWord>(waiters: &F) {
    waiters.fetch_sub(1, Ordering::Relaxed);
}

/// Sleeps until `seq` moves past `ticket` or `deadline` passes, then unregisters.
/// Returns whether a notification came (`seq` moved).
pub(crate) fn wait<F: FutexWord>(seq: &F, waiters: &F, ticket: u32, deadline: Deadline) -> bool {
    let notified = loop {
        if seq.load(Ordering::Acquire) & !SLEEPER != ticket {
            break true;
        }
        let left = deadline.remaining();
        if left == Some(Duration::ZERO) {
            break false;
        }
        // Announce a sleeper; the RMW also orders us against the notifier's CAS.
        if seq.fetch_or(SLEEPER, Ordering::Acquire) & !SLEEPER != ticket {
            break true;
        }
        seq.wait(ticket | SLEEPER, left);
    };
    waiters.fetch_sub(1, Ordering::Relaxed);
    notified
}

/// Publishes a notification (the caller's stores before it are visible to every
/// waiter woken or checking after it) and wakes up to `count` sleepers. Returns
/// whether anyone was registered.
#[inline]
pub(crate) fn notify<F: FutexWord>(seq: &F, waiters: &F, count: u32) -> bool {
    F::fence_seq_cst();
    if waiters.load(Ordering::Relaxed) == 0 {
        return false;
    }
    let mut cur = seq.load(Ordering::Relaxed);
    loop {
        let asleep = cur & SLEEPER != 0;
        // A single wake may leave other sleepers on the old value: keep the bit so the
        // next notification wakes one of them too.
        let keep = asleep && count == 1 && waiters.load(Ordering::Relaxed) > 1;
        let new = (cur & !SLEEPER).wrapping_add(STEP) | if keep { SLEEPER } else { 0 };
        match seq.compare_exchange_weak(cur, new, Ordering::Release, Ordering::Relaxed) {
            Ok(_) => {
                if asleep {
                    seq.wake(count);
                }
                return true;
            }
            Err(now) => cur = now,
        }
    }
}

/// A notification that processes wait on and send, in shared memory.
///
/// Zeroed memory is a valid, idle event, so it works as a root, inside a
/// `#[derive(ShmSafe)]` struct or in any zeroed block. It holds no pointer and no
/// pthread object: processes that map the segment at different addresses use it
/// through the same shared futex.
///
/// To wait for a condition without missing a notification sent between the check
/// and the sleep, use [`wait_until`](ShmEvent::wait_until), or [`listen`](ShmEvent::listen)
/// *before* checking:
///
/// ```
/// use shared_allocator::prelude::*;
/// use shared_allocator::sync::ShmEvent;
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use std::time::Duration;
///
/// #[derive(ShmSafe)]
/// #[shm(sync)]
/// #[repr(C)]
/// struct Mailbox {
///     ready: ShmEvent,
///     value: AtomicU64,
/// }
///
/// # let name = format!("doc-event-{}", std::process::id());
/// # let _cleanup = shared_allocator::segment::UnlinkGuard::new(&name);
/// let alloc = FreeListAllocator::create(&name, 1 << 20)?;
/// let mbox: &Mailbox = alloc.root("mailbox")?;
/// // Another process would do this part:
/// mbox.value.store(42, Ordering::Release);
/// mbox.ready.notify_all();
/// // The waiter:
/// let got = mbox.ready.wait_until(Some(Duration::from_secs(5)), || {
///     mbox.value.load(Ordering::Acquire) != 0
/// });
/// assert!(got);
/// # Ok::<(), shared_allocator::Error>(())
/// ```
#[repr(C)]
#[derive(Debug, Default)]
pub struct ShmEvent {
    seq: AtomicU32,
    waiters: AtomicU32,
}

// SAFETY: ShmEvent is `repr(C)` with two `AtomicU32` fields:
// - every bit pattern of both words is a valid state (zeros: idle, no waiters);
// - 8 bytes, alignment 4, no padding; no pointers; no Drop;
// - only accessed atomically (and through the kernel's futex calls), so writes by
//   other processes are not data races;
// - `Send + Sync + 'static` like its atomics.
unsafe impl ShmSafe for ShmEvent {
    const FINGERPRINT: u64 = fingerprint::name(
        fingerprint::field(
            fingerprint::field(
                fingerprint::START,
                "seq",
                <AtomicU32 as ShmSafe>::FINGERPRINT,
                4,
                4,
            ),
            "waiters",
            <AtomicU32 as ShmSafe>::FINGERPRINT,
            4,
            4,
        ),
        "ShmEvent",
    );
}

const _: () = assert!(std::mem::size_of::<ShmEvent>() == 8);

/// Whether a wait ended by a notification or by its timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitOutcome {
    /// A notification was sent after the listener registered.
    Notified,
    /// The timeout passed first.
    TimedOut,
}

/// A registration on a [`ShmEvent`] taken before checking a condition
/// (see [`ShmEvent::listen`]). Dropping it without waiting unregisters.
#[derive(Debug)]
#[must_use = "a listener does nothing unless waited on"]
pub struct EventListener<'a> {
    event: &'a ShmEvent,
    ticket: u32,
    done: bool,
}

impl EventListener<'_> {
    /// Sleeps until a notification sent after [`ShmEvent::listen`] returned, or until
    /// `timeout` passes (`None`: no limit). Returns at once if one was already sent.
    pub fn wait(mut self, timeout: Option<Duration>) -> WaitOutcome {
        self.done = true;
        let e = self.event;
        if wait(&e.seq, &e.waiters, self.ticket, Deadline::after(timeout)) {
            WaitOutcome::Notified
        } else {
            WaitOutcome::TimedOut
        }
    }

    pub(crate) fn wait_deadline(mut self, deadline: Deadline) -> bool {
        self.done = true;
        let e = self.event;
        wait(&e.seq, &e.waiters, self.ticket, deadline)
    }
}

impl Drop for EventListener<'_> {
    fn drop(&mut self) {
        if !self.done {
            cancel(&self.event.waiters);
        }
    }
}

impl ShmEvent {
    /// A new idle event (the same as zeroed memory).
    pub const fn new() -> ShmEvent {
        ShmEvent {
            seq: AtomicU32::new(0),
            waiters: AtomicU32::new(0),
        }
    }

    /// Registers as a waiter: every notification sent after this returns ends the
    /// listener's [`wait`](EventListener::wait). Check the condition *after* calling
    /// this and wait only if it is still false.
    pub fn listen(&self) -> EventListener<'_> {
        EventListener {
            event: self,
            ticket: listen(&self.seq, &self.waiters),
            done: false,
        }
    }

    /// Waits for the next notification sent after this call, at most `timeout`.
    pub fn wait(&self, timeout: Option<Duration>) -> WaitOutcome {
        self.listen().wait(timeout)
    }

    /// Waits until `cond()` is true, sleeping between notifications, at most
    /// `timeout` in total (`None`: no limit). Returns the final value of `cond()`.
    /// A notification sent between a check of `cond` and the sleep is never missed.
    pub fn wait_until(&self, timeout: Option<Duration>, mut cond: impl FnMut() -> bool) -> bool {
        let deadline = Deadline::after(timeout);
        loop {
            if cond() {
                return true;
            }
            let l = self.listen();
            if cond() {
                return true;
            }
            if deadline.expired() {
                return false;
            }
            l.wait_deadline(deadline);
        }
    }

    /// Wakes one waiter (and makes every listener registered before this call
    /// return from its wait, sleeping or not). Stores made before this call are
    /// visible to the waiters it wakes. Cheap when nobody waits: a fence and a load.
    pub fn notify_one(&self) {
        notify(&self.seq, &self.waiters, 1);
    }

    /// Wakes every waiter.
    pub fn notify_all(&self) {
        notify(&self.seq, &self.waiters, WAKE_ALL);
    }

    /// How many waiters are registered right now (including any that died while
    /// waiting). For diagnostics.
    pub fn waiters(&self) -> u32 {
        self.waiters.load(Ordering::Relaxed)
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use loom::sync::atomic::{AtomicBool, AtomicU32};
    use loom::sync::Arc;
    use std::sync::atomic::Ordering;

    use super::{listen, notify, wait};
    use crate::sync::futex::Deadline;

    struct Ev {
        seq: AtomicU32,
        waiters: AtomicU32,
        flag: AtomicBool,
    }

    /// A model with a preemption bound, so the run stays short enough for CI.
    fn model(f: impl Fn() + Sync + Send + 'static) {
        let mut b = loom::model::Builder::new();
        b.preemption_bound = Some(3);
        b.check(f);
    }

    fn new_ev() -> Arc<Ev> {
        Arc::new(Ev {
            seq: AtomicU32::new(0),
            waiters: AtomicU32::new(0),
            flag: AtomicBool::new(false),
        })
    }

    /// The waiter's loop of `wait_until`, with untimed sleeps: a lost wake-up
    /// leaves it asleep forever, which loom reports as a deadlock.
    fn wait_for_flag(e: &Ev) {
        loop {
            if e.flag.load(Ordering::Relaxed) {
                return;
            }
            let t = listen(&e.seq, &e.waiters);
            if e.flag.load(Ordering::Relaxed) {
                super::cancel(&e.waiters);
                return;
            }
            wait(&e.seq, &e.waiters, t, Deadline::after(None));
        }
    }

    #[test]
    fn loom_event_no_lost_wakeup() {
        model(|| {
            let e = new_ev();
            let e2 = e.clone();
            let w = loom::thread::spawn(move || wait_for_flag(&e2));
            e.flag.store(true, Ordering::Relaxed);
            notify(&e.seq, &e.waiters, 1);
            w.join().unwrap();
            assert_eq!(e.waiters.load(Ordering::Relaxed), 0);
        });
    }

    #[test]
    fn loom_event_two_waiters_notify_all() {
        model(|| {
            let e = new_ev();
            let ws: Vec<_> = (0..2)
                .map(|_| {
                    let e2 = e.clone();
                    loom::thread::spawn(move || wait_for_flag(&e2))
                })
                .collect();
            e.flag.store(true, Ordering::Relaxed);
            notify(&e.seq, &e.waiters, super::WAKE_ALL);
            for w in ws {
                w.join().unwrap();
            }
        });
    }
}

// SAFETY: every byte of a ShmEvent is an atomic word (inside an UnsafeCell), and its
// shared API (wait, notify) is sound when other processes call it at once.
unsafe impl crate::typed::ShmSync for ShmEvent {}
