//! `ShmEvent`: a futex-based notification that lives in shared memory.
//!
//! The protocol (an "eventcount") keeps its truth in one 32-bit futex word, `seq`:
//! a sequence number in steps of 4 and two flags, `LISTENED` (bit 0: a listener
//! may be registered on the current value) and `ASLEEP` (bit 1: a listener may be
//! asleep on it). A second word, `waiters`, is only a *hint* (how many listeners
//! are registered) that picks the cheaper of two correct ways to notify; no
//! decision that could lose a wake-up depends on it.
//!
//! - A waiter increments the hint, then sets `LISTENED` with a `SeqCst`
//!   `fetch_or`, whose result is its ticket, and issues a `SeqCst` fence; then it
//!   checks its condition. If the condition is still false it sets `ASLEEP`
//!   (`fetch_or`, which also re-reads `seq`: if it moved, the waiter returns) and
//!   sleeps with `FUTEX_WAIT(ticket | LISTENED | ASLEEP)`, which returns at once if
//!   `seq` moved since. Leaving, it decrements the hint (never below zero).
//! - A notifier makes its condition true (any stores), issues a `SeqCst` fence and
//!   reads `seq`. Without `LISTENED`, no listener can be between "check" and
//!   "sleep" (any later listener's fence orders after ours, so its check sees the
//!   new state): it returns, having cost a fence and a load. Otherwise it advances
//!   `seq` with one CAS (Release), either *clearing* both flags and waking every
//!   sleeper, or *keeping* them and waking one (`notify_one` while the hint says
//!   more than one listener is registered and someone is asleep). The wake system
//!   call is made only if `ASLEEP` was set.
//!
//! Flags are cleared only together with a wake of everyone asleep, so a sleeper is
//! never left behind on a value that no later notification would wake; a kept
//! flag only costs the next notification a CAS (and a wake call if `ASLEEP`).
//!
//! **Dead waiters.** A process killed while registered cannot unregister. Its only
//! traces are the flags and one unit of the hint, and the kernel drops it from the
//! futex queue. The next notification that finds nobody asleep (a keeping wake that
//! woke no one, or any clearing one) clears the flags and resets the hint to zero:
//! the dead registration costs at most one spare `FUTEX_WAKE`, once, and every
//! notification after that is a fence and a load again (`waiters()` reads 0,
//! [`ShmEvent::has_listeners`] false; see the test
//! `event_waiter_killed_while_waiting_is_forgotten`). A reset can undercount live
//! listeners that are still on their way; an undercount only makes a later
//! `notify_one` wake everyone (correct, a bit more work).
//!
//! So a notify that lands between a waiter's check and its sleep changes `seq` first
//! and the sleep returns at once: no lost wake-ups; and a burst of notifications
//! while the woken waiter is still on its way pays for one wake-up, not one each.
//! `wait_until` does not spin before it sleeps: measured on the 2-core VM, the
//! kernel wakes the peer on the notifier's own core, so every round of spinning
//! after a notification delayed the answer it waited for (8 rounds of
//! `spin_loop` cost the ping-pong 6%, 100 rounds doubled it). The protocol is model-checked
//! with loom (`loom_event_*` below) over the same generic functions, with a futex
//! emulation that wakes exactly as many sleepers as asked.
//!
//! `seq` wraps after 2^30 notifications that found a listener; a waiter whose
//! ticket is exactly that many such notifications old would sleep until the next
//! one or its timeout.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::sync::futex::{Deadline, FutexWord};
use crate::typed::{fingerprint, ShmSafe};

/// The wake count meaning "everyone". FUTEX_WAKE takes a signed count, so
/// `u32::MAX` would be -1 to the kernel, which wakes only one sleeper.
pub(crate) const WAKE_ALL: u32 = i32::MAX as u32;

/// Bit 0 of `seq`: a listener may be registered on the current value.
const LISTENED: u32 = 1;
/// Bit 1 of `seq`: a listener may be asleep on the current value.
const ASLEEP: u32 = 2;
const FLAGS: u32 = LISTENED | ASLEEP;
/// `seq` advances by this much per notification that found a listener.
const STEP: u32 = 4;

/// Registers a waiter; returns its ticket. The caller checks its condition after this.
#[inline]
pub(crate) fn listen<F: FutexWord>(seq: &F, waiters: &F) -> u32 {
    waiters.fetch_add(1, Ordering::Relaxed);
    let old = seq.fetch_or(LISTENED, Ordering::SeqCst);
    F::fence_seq_cst();
    old & !FLAGS
}

/// Unregisters a waiter that did not sleep (its condition held).
#[inline]
pub(crate) fn cancel<F: FutexWord>(waiters: &F) {
    unregister(waiters);
}

/// Decrements the hint, never below zero (a notification may have reset it).
#[inline]
fn unregister<F: FutexWord>(waiters: &F) {
    // Start from a guess, not a load: a plain load may return an older value
    // (zero) and skip the decrement; a failed CAS returns the current one.
    let mut cur = 1;
    while cur != 0 {
        match waiters.compare_exchange_weak(cur, cur - 1, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return,
            Err(now) => cur = now,
        }
    }
}

/// The longest one sleep lasts: a notifier killed between its CAS on `seq` and its
/// `FUTEX_WAKE` leaves sleepers that see the moved `seq` within this (a re-check
/// costs one wake-up per slice of an idle waiter, about nothing).
#[cfg(not(loom))]
const NOTIFIER_SLICE: Option<Duration> = Some(Duration::from_millis(500));
/// loom models every timed wait as a spurious return: untimed there.
#[cfg(loom)]
const NOTIFIER_SLICE: Option<Duration> = None;

/// Sleeps until `seq` moves past `ticket` or `deadline` passes, then unregisters.
/// Returns whether a notification came (`seq` moved).
pub(crate) fn wait<F: FutexWord>(seq: &F, waiters: &F, ticket: u32, deadline: Deadline) -> bool {
    let notified = loop {
        if seq.load(Ordering::Acquire) & !FLAGS != ticket {
            break true;
        }
        let left = deadline.remaining();
        if left == Some(Duration::ZERO) {
            break false;
        }
        if !announce_sleep(seq, ticket) {
            break true;
        }
        let sleep = match (left, NOTIFIER_SLICE) {
            (Some(l), Some(s)) => Some(l.min(s)),
            (l, s) => l.or(s),
        };
        seq.wait(ticket | FLAGS, sleep);
    };
    unregister(waiters);
    notified
}

/// Sets `ASLEEP` on `ticket`'s value; `false` if `seq` moved past `ticket` first.
/// A CAS, not a `fetch_or`: a stray `ASLEEP` on a newer value would cost a later
/// notifier a needless wake call. The RMW also orders us against notifiers' CAS.
#[inline]
pub(crate) fn announce_sleep<F: FutexWord>(seq: &F, ticket: u32) -> bool {
    // While the ticket is current, LISTENED is set too (only a bump clears it).
    let mut cur = ticket | LISTENED;
    loop {
        match seq.compare_exchange_weak(cur, ticket | FLAGS, Ordering::Acquire, Ordering::Acquire) {
            Ok(_) => return true,
            Err(now) if now == ticket | FLAGS => return true,
            Err(now) if now & !FLAGS != ticket => return false,
            Err(now) => cur = now, // spurious failure
        }
    }
}

/// Publishes a notification (the caller's stores before it are visible to every
/// waiter woken or checking after it) and wakes up to `count` sleepers (`1` or
/// [`WAKE_ALL`]). Returns whether a listener was registered.
#[inline]
pub(crate) fn notify<F: FutexWord>(seq: &F, waiters: &F, count: u32) -> bool {
    F::fence_seq_cst();
    let cur = seq.load(Ordering::Relaxed);
    if cur & LISTENED == 0 {
        return false;
    }
    advance(seq, waiters, count, cur);
    true
}

/// The slow half of [`notify`]: `seq` was `cur`, with a listener.
#[cold]
fn advance<F: FutexWord>(seq: &F, waiters: &F, count: u32, mut cur: u32) {
    let (asleep, keep) = loop {
        let asleep = cur & ASLEEP != 0;
        // Keeping the flags and waking one is right when others may stay asleep;
        // clearing them needs a wake of everyone (no sleeper may be left behind).
        let keep = count == 1 && asleep && waiters.load(Ordering::Relaxed) > 1;
        if !keep {
            // Everyone registered now returns from its wait (woken, or its ticket
            // is stale): the hint starts over, forgetting dead listeners.
            waiters.store(0, Ordering::Relaxed);
        }
        let new = (cur & !FLAGS).wrapping_add(STEP) | if keep { FLAGS } else { 0 };
        match seq.compare_exchange_weak(cur, new, Ordering::Release, Ordering::Relaxed) {
            Ok(_) => break (asleep, keep),
            // Another notifier cleared the flags after our load: it woke everyone
            // registered then, and later listeners see our stores.
            Err(now) if now & LISTENED == 0 => return,
            Err(now) => cur = now,
        }
    };
    // A notifier killed here moved `seq` without waking: sleepers notice within
    // one `NOTIFIER_SLICE`.
    crate::fail_point!("event.notify.before_wake");
    if asleep {
        let woke = seq.wake(if keep { 1 } else { WAKE_ALL });
        if keep && woke == 0 {
            // Nobody was asleep after all: the hint counts listeners that left or
            // died. Clear the flags now, so the next notifications are free again.
            let now = seq.load(Ordering::Relaxed);
            if now & LISTENED != 0 {
                advance(seq, waiters, WAKE_ALL, now);
            }
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
/// use shared_allocator::coord::ShmEvent;
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
/// let mbox = alloc.root::<Mailbox>("mailbox")?;
/// // Another process would do this part:
/// mbox.value.store(42, Ordering::Release);
/// mbox.ready.notify_all();
/// // The waiter:
/// let got = mbox.ready.wait_timeout_until(Duration::from_secs(5), || {
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
        // The protocol's version: the words mean something else than they did in
        // the first one (flags in `seq`, `waiters` a hint), so a process built with
        // the old protocol cannot open a root that holds the new one.
        "ShmEvent/2",
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
    /// Sleeps until a notification sent after [`ShmEvent::listen`] returned. Returns
    /// at once if one was already sent.
    pub fn wait(self) {
        self.wait_for(None);
    }

    /// Sleeps until a notification sent after [`ShmEvent::listen`] returned, or until
    /// `timeout` passes. Returns at once if one was already sent.
    pub fn wait_timeout(self, timeout: Duration) -> WaitOutcome {
        self.wait_for(Some(timeout))
    }

    pub(crate) fn wait_for(mut self, timeout: Option<Duration>) -> WaitOutcome {
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

    /// Waits for the next notification sent after this call.
    pub fn wait(&self) {
        self.listen().wait()
    }

    /// Waits for the next notification sent after this call, at most `timeout`.
    pub fn wait_timeout(&self, timeout: Duration) -> WaitOutcome {
        self.listen().wait_timeout(timeout)
    }

    /// Waits until `cond()` is true, sleeping between notifications. A notification
    /// sent between a check of `cond` and the sleep is never missed.
    pub fn wait_until(&self, cond: impl FnMut() -> bool) {
        self.wait_until_deadline(None, cond);
    }

    /// Waits until `cond()` is true, sleeping between notifications, at most
    /// `timeout` in total. Returns the final value of `cond()`.
    pub fn wait_timeout_until(&self, timeout: Duration, cond: impl FnMut() -> bool) -> bool {
        self.wait_until_deadline(Some(timeout), cond)
    }

    fn wait_until_deadline(
        &self,
        timeout: Option<Duration>,
        mut cond: impl FnMut() -> bool,
    ) -> bool {
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

    /// Wakes one waiter (and makes every listener registered before this call that
    /// is not asleep yet return from its wait). Stores made before this call are
    /// visible to the waiters it wakes. Cheap when nobody waits: a fence and a load.
    pub fn notify_one(&self) {
        notify(&self.seq, &self.waiters, 1);
    }

    /// Wakes every waiter.
    pub fn notify_all(&self) {
        notify(&self.seq, &self.waiters, WAKE_ALL);
    }

    /// How many waiters are registered right now, as far as the event knows: a
    /// hint, for diagnostics (0 whenever [`has_listeners`](ShmEvent::has_listeners)
    /// is false). A waiter whose process died while registered is forgotten by
    /// the first notification that finds nobody asleep; a count reset by a
    /// notification may miss waiters still on their way in.
    pub fn waiters(&self) -> u32 {
        if self.has_listeners() {
            self.waiters.load(Ordering::Relaxed)
        } else {
            0 // nobody can sleep on the current value without setting LISTENED
        }
    }

    /// Whether a listener may be registered on the current sequence value: a
    /// notification now would advance the shared word (and make a wake system
    /// call if one may be asleep). `false` means a notification costs a fence and
    /// a load. For diagnostics.
    pub fn has_listeners(&self) -> bool {
        self.seq.load(Ordering::Relaxed) & LISTENED != 0
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

    /// Takes one token (a counting semaphore over `tokens`), sleeping on the event
    /// while there is none.
    fn take_token(e: &Ev, tokens: &AtomicU32) {
        loop {
            let t = listen(&e.seq, &e.waiters);
            let n = tokens.load(Ordering::Relaxed);
            if n > 0 {
                super::cancel(&e.waiters);
                if tokens
                    .compare_exchange(n, n - 1, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
                {
                    return;
                }
                continue;
            }
            wait(&e.seq, &e.waiters, t, Deadline::after(None));
        }
    }

    /// Two sleepers, two `notify_one`s each for one token: both must wake (a
    /// notification that cleared the flags while waking only one would leave the
    /// other asleep for good: the emulated futex wakes exactly as many as asked).
    #[test]
    fn loom_event_two_waiters_two_notify_one() {
        model(|| {
            let e = new_ev();
            let tokens = Arc::new(AtomicU32::new(0));
            let ws: Vec<_> = (0..2)
                .map(|_| {
                    let (e2, t2) = (e.clone(), tokens.clone());
                    loom::thread::spawn(move || take_token(&e2, &t2))
                })
                .collect();
            for _ in 0..2 {
                tokens.fetch_add(1, Ordering::Relaxed);
                notify(&e.seq, &e.waiters, 1);
            }
            for w in ws {
                w.join().unwrap();
            }
        });
    }

    /// A listener that dies while registered (it stops after announcing its sleep,
    /// as a process killed in `FUTEX_WAIT` leaves things) next to a live waiter:
    /// the live one is woken, and once it is done one more notification leaves
    /// the event idle (no flags, a zero hint): the dead registration is forgotten.
    #[test]
    fn loom_event_dead_listener_forgotten() {
        model(|| {
            let e = new_ev();
            let e1 = e.clone();
            let dead = loom::thread::spawn(move || {
                let t = listen(&e1.seq, &e1.waiters);
                if !e1.flag.load(Ordering::Relaxed) {
                    super::announce_sleep(&e1.seq, t);
                }
                t // and never unregisters
            });
            let e2 = e.clone();
            let live = loom::thread::spawn(move || wait_for_flag(&e2));
            e.flag.store(true, Ordering::Relaxed);
            notify(&e.seq, &e.waiters, 1);
            live.join().unwrap();
            dead.join().unwrap();
            notify(&e.seq, &e.waiters, 1);
            // No flags: notifications are a fence and a load again, and
            // `waiters()` reads 0. (The hint word itself may still hold units of
            // registrations that overlapped the clearing notification: relaxed
            // and unordered against `seq`, it only picks how to wake, and the
            // next clearing notification resets it.)
            assert_eq!(e.seq.load(Ordering::Relaxed) & super::FLAGS, 0);
        });
    }
}

// SAFETY: every byte of a ShmEvent is an atomic word (inside an UnsafeCell), and its
// shared API (wait, notify) is sound when other processes call it at once.
unsafe impl crate::typed::ShmSync for ShmEvent {}

// SAFETY: one 8-byte word (asserted above).
unsafe impl crate::typed::ChannelElement for ShmEvent {}
// SAFETY: as above.
unsafe impl crate::typed::MutexPayload for ShmEvent {}
