//! `ShmChannel<T, N>`: a bounded multi-producer multi-consumer queue in shared
//! memory, for offsets, `RelPtr`s and ownership tokens.
//!
//! The ring is Dmitry Vyukov's bounded MPMC queue with a robust slot protocol
//! (see `ring.rs`): lock-free, one CAS on a slot and one on a counter per operation,
//! and a process killed in the middle of a send or a receive loses at most the one
//! message it held, never blocking the others. An endpoint that finds the ring empty
//! (or full) first spins briefly, then yields the CPU a few times (with more busy
//! endpoints than cores, the peer it waits for is often queued behind it), and only
//! then sleeps on one of two [`ShmEvent`]s (not-empty, not-full) in bounded slices,
//! so dead peers are noticed. A send or receive wakes a peer only if one is
//! registered there (otherwise the notification is a fence and a load).
//!
//! Endpoints ([`Sender`], [`Receiver`]) register in a table inside the channel with
//! their owner identity (from `sync/owner.rs`): receivers get
//! [`RecvError::Disconnected`] once the queue is empty and no sender is alive,
//! senders get [`SendError::Disconnected`] once no receiver is alive; an
//! endpoint whose process died counts as gone.

mod error;
pub(crate) mod ring;

use std::cell::{Cell, UnsafeCell};
use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub use error::{
    EndpointError, RecvError, RecvTimeoutError, SendError, SendTimeoutError, TryRecvError,
    TrySendError,
};
use ring::{PopFail, PushFail, Role};

use crate::alloc::ShmAllocator;
use crate::coord::ShmEvent;
use crate::sync::futex::Deadline;
use crate::sync::owner;
use crate::typed::{fingerprint, ChannelElement, Root, ShmSafe};

/// How many endpoints (senders plus receivers, in all processes) one channel holds.
pub const MAX_ENDPOINTS: usize = 64;

/// How long a blocked endpoint sleeps before it checks for dead peers.
const SLICE: Duration = Duration::from_millis(50);
/// Spins on an empty or full ring before yielding (a streaming peer on the other
/// core usually makes progress within a few microseconds; sleeping and waking
/// costs more).
const SPINS: u32 = 64;
/// Then `sched_yield`s before sleeping: with more endpoints than cores, the peer
/// that would fill or drain the ring is often waiting for this very core, and a
/// yield hands it over for far less than a futex sleep and wake-up.
const YIELDS: u32 = 16;

/// The back-off before sleeping. Returns `false` once the caller should sleep.
#[inline]
fn back_off(step: &mut u32) -> bool {
    if *step < SPINS {
        std::hint::spin_loop();
    } else if *step < SPINS + YIELDS {
        std::thread::yield_now();
    } else {
        return false;
    }
    *step += 1;
    true
}

const SENDER_SEEN: u32 = 1;
const RECEIVER_SEEN: u32 = 2;

/// One entry of the endpoint table, a cache line of its own: every operation
/// stores into its endpoint's `inflight` twice, and entries that shared a line
/// made a sender and a receiver bounce it between cores on every message.
#[repr(C)]
struct Endpoint {
    /// `role << 32 | owner`, 0 when free.
    ident: AtomicU64,
    /// `position + 1` of the slot this endpoint is claiming or holds, else 0.
    inflight: AtomicU64,
    _pad: [u64; 6],
}

#[repr(C)]
struct Slot<T> {
    state: AtomicU64,
    value: UnsafeCell<T>,
}

/// A bounded MPMC channel of `N` slots of `T`, in shared memory.
///
/// Zeroed memory is an empty channel with no endpoints, so it works as a root
/// (`alloc.root::<ShmChannel<u64, 1024>>("jobs")`) or inside a zeroed block. `T` is
/// a small `Copy` value: an offset, a [`RelPtr`](crate::RelPtr), an archive token,
/// an id; its size must be a multiple of 8 bytes and its alignment at most 8 (a
/// compile error otherwise). Values are copied in and out; when a value is an
/// ownership token, the sender gives up the handle (`into_token`) and the receiver
/// takes it (`from_token`), so ownership moves with the message.
///
/// `Disconnected` is about the endpoints registered *now*: a receiver gets it once
/// nothing is queued and no sender is registered and alive (while no sender ever
/// registered, receivers just wait). A sender that registers later reconnects the
/// channel. So when peers come and go one after another, keep an endpoint registered
/// until the exchange is over (the `quickstart` example has children wait for the
/// parent's goodbye before they drop their senders).
///
/// ```
/// use shared_allocator::prelude::*;
/// use shared_allocator::channel::ShmChannel;
/// use std::time::Duration;
///
/// # let name = format!("doc-channel-{}", std::process::id());
/// # let _cleanup = shared_allocator::segment::UnlinkGuard::new(&name);
/// let alloc = FreeListAllocator::create(&name, 1 << 20)?;
/// let jobs = alloc.root::<ShmChannel<u64, 64>>("jobs")?;
/// // In the producer process:
/// let tx = jobs.sender()?;
/// tx.send_timeout(42, Duration::from_secs(1))?;
/// // In a consumer process:
/// let rx = jobs.receiver()?;
/// assert_eq!(rx.recv_timeout(Duration::from_secs(1))?, 42);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[repr(C)]
pub struct ShmChannel<T: ChannelElement, const N: usize> {
    head: AtomicU64,
    _pad_head: [u64; 7],
    tail: AtomicU64,
    _pad_tail: [u64; 7],
    not_empty: ShmEvent,
    not_full: ShmEvent,
    senders: AtomicU32,
    receivers: AtomicU32,
    seen: AtomicU32,
    _pad_seen: u32,
    lost_in_send: AtomicU64,
    lost_in_recv: AtomicU64,
    _pad_meta: [u64; 2],
    endpoints: [Endpoint; MAX_ENDPOINTS],
    slots: [Slot<T>; N],
}

// SAFETY: values move between threads only by copy under the slot protocol, which
// gives each slot's value to one claimant at a time; `T: ChannelElement` is Send + Sync.
unsafe impl<T: ChannelElement, const N: usize> Sync for ShmChannel<T, N> {}

const fn layout_ok<T: ChannelElement, const N: usize>() -> bool {
    use std::mem::{align_of, size_of};
    size_of::<T>() % 8 == 0
        && align_of::<T>() <= 8
        && size_of::<Slot<T>>() == 8 + size_of::<T>()
        && size_of::<ShmChannel<T, N>>()
            == 16 * 8 + 8 * 8 + MAX_ENDPOINTS * 64 + N * size_of::<Slot<T>>()
        && N > 0
}

// SAFETY: ShmChannel<T, N> is `repr(C)`: atomics, plain `u64` padding words, an
// endpoint table of atomics, and `N` slots of an `AtomicU64` and an `UnsafeCell<T>`:
// - every bit pattern is valid: the atomics and padding accept any value (the
//   protocol treats unknown states as stale or corrupt, never as an index: slot
//   indices are positions modulo N), and `T: ChannelElement` is valid for every pattern;
// - no padding: FINGERPRINT asserts the exact size for each instantiation (T a
//   multiple of 8 bytes, alignment <= 8);
// - no pointers, no Drop;
// - values are read and written only by the claimant of their slot (CAS on the slot
//   word with Acquire/Release), so there is no data race among cooperating processes;
// - Send + Sync + 'static because `T` is (the Sync impl above).
unsafe impl<T: ChannelElement, const N: usize> ShmSafe for ShmChannel<T, N> {
    const FINGERPRINT: u64 = {
        assert!(
            layout_ok::<T, N>(),
            "ShmChannel<T, N>: T must be a multiple of 8 bytes with alignment <= 8, and N > 0"
        );
        // "/2": the endpoint entries are 64 bytes (they were 16).
        fingerprint::u64(fingerprint::str(T::FINGERPRINT, "ShmChannel/2"), N as u64)
    };
}

impl<T: ChannelElement + Copy, const N: usize> ring::Ring for ShmChannel<T, N> {
    type W = AtomicU64;
    type T = T;
    #[inline]
    fn cap(&self) -> u64 {
        N as u64
    }
    #[inline]
    fn head(&self) -> &AtomicU64 {
        &self.head
    }
    #[inline]
    fn tail(&self) -> &AtomicU64 {
        &self.tail
    }
    #[inline]
    fn slot(&self, i: usize) -> &AtomicU64 {
        &self.slots[i].state
    }
    #[inline]
    unsafe fn write(&self, i: usize, value: T) {
        // SAFETY:
        // - the caller claimed slot i (WRITING), so no other endpoint reads or
        //   writes this value until the caller publishes FULL with Release;
        // - the cell is inside the live, aligned slot array borrowed from `self`;
        // - a byte-wise atomic store, not a plain one: a process may be copying the
        //   channel's block out (`RelPtr::read`) at this moment, and its atomic loads
        //   must not race a plain store (crate `typed` docs, "No plain stores");
        //   the old bytes are a T without drop glue (ShmSafe), so not dropping is right.
        unsafe { atomic_memcpy::atomic_store(self.slots[i].value.get(), value, Ordering::Relaxed) }
    }
    #[inline]
    unsafe fn read(&self, i: usize) -> T {
        // SAFETY:
        // - the caller claimed slot i (FULL -> READING with Acquire after the writer's
        //   Release), so the value is complete and no endpoint writes it until released;
        // - the cell is inside the live, aligned slot array borrowed from `self`;
        // - a byte-wise atomic load, not a plain one: in a raw segment a
        //   `RelPtr::<AtomicU64>::get` view may write these bytes atomically at any
        //   time (red-team attack a15), which must not race this copy.
        let v = unsafe { atomic_memcpy::atomic_load(self.slots[i].value.get().cast_const(), Ordering::Relaxed) };
        // SAFETY: every byte came from initialised shared memory and every bit
        // pattern is a valid `T` (ShmSafe).
        unsafe { v.assume_init() }
    }
    fn claimant_alive(&self, role: Role, pos: u64) -> bool {
        let want = role_bits(role);
        self.endpoints.iter().any(|e| {
            let id = e.ident.load(Ordering::Acquire);
            id >> 32 == want
                && e.inflight.load(Ordering::Acquire) == pos.wrapping_add(1)
                && owner::owner_alive(self.addr(), id as u32)
        })
    }
    fn count_lost(&self, role: Role) {
        match role {
            Role::Sender => &self.lost_in_send,
            Role::Receiver => &self.lost_in_recv,
        }
        .fetch_add(1, Ordering::Relaxed);
    }
}

fn role_bits(role: Role) -> u64 {
    match role {
        Role::Sender => 1,
        Role::Receiver => 2,
    }
}

/// A snapshot of a channel's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelStats {
    /// Messages queued (written and not yet taken).
    pub queued: u64,
    /// Slots.
    pub capacity: u64,
    /// Messages lost because their sender died in the middle of sending them.
    pub lost_in_send: u64,
    /// Messages lost because their receiver died in the middle of taking them.
    pub lost_in_recv: u64,
    /// Registered senders (including any whose process died and was not yet noticed).
    pub senders: u32,
    /// Registered receivers (likewise).
    pub receivers: u32,
    /// Receivers registered to sleep until a message arrives (a hint; one whose
    /// process died asleep is forgotten by the next send).
    pub waiting_receivers: u32,
    /// Senders registered to sleep until a slot frees (likewise).
    pub waiting_senders: u32,
}

impl<T: ChannelElement + Copy, const N: usize> ShmChannel<T, N> {
    const LAYOUT: () = assert!(
        layout_ok::<T, N>(),
        "ShmChannel<T, N>: T must be a multiple of 8 bytes with alignment <= 8, and N > 0"
    );

    #[inline]
    fn addr(&self) -> *const u8 {
        (self as *const Self).cast()
    }

    fn register(&self, role: Role) -> Result<usize, EndpointError> {
        let me = owner::current_owner(self.addr());
        let ident = role_bits(role) << 32 | u64::from(me);
        for (i, e) in self.endpoints.iter().enumerate() {
            let cur = e.ident.load(Ordering::Acquire);
            let free = cur == 0;
            if !free && owner::owner_alive(self.addr(), cur as u32) {
                continue;
            }
            if e.ident
                .compare_exchange(cur, ident, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
            {
                continue;
            }
            if !free {
                // A dead process's endpoint: it never deregistered.
                match cur >> 32 {
                    1 => self.senders.fetch_sub(1, Ordering::AcqRel),
                    2 => self.receivers.fetch_sub(1, Ordering::AcqRel),
                    _ => 0,
                };
            }
            e.inflight.store(0, Ordering::Release);
            let (count, bit) = match role {
                Role::Sender => (&self.senders, SENDER_SEEN),
                Role::Receiver => (&self.receivers, RECEIVER_SEEN),
            };
            count.fetch_add(1, Ordering::AcqRel);
            self.seen.fetch_or(bit, Ordering::AcqRel);
            return Ok(i);
        }
        Err(EndpointError::TooManyEndpoints { max: MAX_ENDPOINTS })
    }

    fn deregister(&self, entry: usize, role: Role) {
        let e = &self.endpoints[entry];
        e.inflight.store(0, Ordering::Relaxed);
        e.ident.store(0, Ordering::Release);
        match role {
            Role::Sender => {
                self.senders.fetch_sub(1, Ordering::AcqRel);
                self.not_empty.notify_all();
            }
            Role::Receiver => {
                self.receivers.fetch_sub(1, Ordering::AcqRel);
                self.not_full.notify_all();
            }
        }
    }

    /// Whether any endpoint of `role` is registered by a live process.
    fn any_alive(&self, role: Role) -> bool {
        let want = role_bits(role);
        self.endpoints.iter().any(|e| {
            let id = e.ident.load(Ordering::Acquire);
            id >> 32 == want && owner::owner_alive(self.addr(), id as u32)
        })
    }

    /// Whether every endpoint of `role` is gone: there was one, and none is
    /// registered (or, with `scan`, none is alive).
    fn gone(&self, role: Role, scan: bool) -> bool {
        let (count, bit) = match role {
            Role::Sender => (&self.senders, SENDER_SEEN),
            Role::Receiver => (&self.receivers, RECEIVER_SEEN),
        };
        if self.seen.load(Ordering::Acquire) & bit == 0 {
            return false;
        }
        count.load(Ordering::Acquire) == 0 || (scan && !self.any_alive(role))
    }

    /// Number of slots.
    pub const fn capacity(&self) -> usize {
        N
    }

    /// Messages queued right now (a snapshot).
    pub fn len(&self) -> usize {
        ring::len(self) as usize
    }

    /// Whether nothing is queued right now (a snapshot).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A snapshot of queue length, losses and endpoints.
    pub fn stats(&self) -> ChannelStats {
        ChannelStats {
            queued: ring::len(self),
            capacity: N as u64,
            lost_in_send: self.lost_in_send.load(Ordering::Relaxed),
            lost_in_recv: self.lost_in_recv.load(Ordering::Relaxed),
            senders: self.senders.load(Ordering::Relaxed),
            receivers: self.receivers.load(Ordering::Relaxed),
            waiting_receivers: self.not_empty.waiters(),
            waiting_senders: self.not_full.waiters(),
        }
    }
}

impl<T: ChannelElement, const N: usize> fmt::Debug for ShmChannel<T, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShmChannel")
            .field("capacity", &N)
            .field("head", &self.head.load(Ordering::Relaxed))
            .field("tail", &self.tail.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Endpoints are made from the channel's [`Root`]: it holds the allocator that
/// keeps the channel's mapping alive, and each endpoint holds a clone of it (a
/// reference, or an `Arc` for endpoints that live anywhere).
impl<T: ChannelElement + Copy, const N: usize, A: ShmAllocator + Clone> Root<ShmChannel<T, N>, A> {
    /// Registers a new sender in this process.
    ///
    /// # Errors
    /// [`EndpointError::TooManyEndpoints`] if all [`MAX_ENDPOINTS`] entries are held
    /// by live endpoints.
    pub fn sender(&self) -> Result<Sender<T, N, A>, EndpointError> {
        let () = ShmChannel::<T, N>::LAYOUT;
        let entry = self.register(Role::Sender)?;
        Ok(Sender {
            chan: self.clone(),
            entry,
            _not_sync: PhantomData,
        })
    }

    /// Registers a new receiver in this process.
    ///
    /// # Errors
    /// As [`sender`](Root::sender).
    pub fn receiver(&self) -> Result<Receiver<T, N, A>, EndpointError> {
        let () = ShmChannel::<T, N>::LAYOUT;
        let entry = self.register(Role::Receiver)?;
        Ok(Receiver {
            chan: self.clone(),
            entry,
            last_scan: Cell::new(None),
            _not_sync: PhantomData,
        })
    }
}

/// The sending side of a [`ShmChannel`], registered in the channel's endpoint
/// table until dropped. `Send`, not `Sync`: one per thread (clone for more).
pub struct Sender<T: ChannelElement + Copy, const N: usize, A: ShmAllocator> {
    chan: Root<ShmChannel<T, N>, A>,
    entry: usize,
    _not_sync: PhantomData<Cell<()>>,
}

/// The receiving side of a [`ShmChannel`], registered until dropped. `Send`, not `Sync`.
pub struct Receiver<T: ChannelElement + Copy, const N: usize, A: ShmAllocator> {
    chan: Root<ShmChannel<T, N>, A>,
    entry: usize,
    /// When `try_recv` last scanned for dead senders (a system call per sender).
    last_scan: Cell<Option<Instant>>,
    _not_sync: PhantomData<Cell<()>>,
}

impl<T: ChannelElement + Copy, const N: usize, A: ShmAllocator> fmt::Debug for Sender<T, N, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender")
            .field("entry", &self.entry)
            .finish()
    }
}

impl<T: ChannelElement + Copy, const N: usize, A: ShmAllocator> fmt::Debug for Receiver<T, N, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver")
            .field("entry", &self.entry)
            .finish()
    }
}

impl<T: ChannelElement + Copy, const N: usize, A: ShmAllocator> Sender<T, N, A> {
    #[inline]
    fn inflight(&self) -> &AtomicU64 {
        &self.chan.endpoints[self.entry].inflight
    }

    /// The channel this sender belongs to.
    pub fn channel(&self) -> &Root<ShmChannel<T, N>, A> {
        &self.chan
    }

    /// One push; `Ok(true)` once sent (and a sleeping receiver notified),
    /// `Ok(false)` if the ring is full.
    #[inline]
    fn push_once(&self, value: T, repair: bool) -> Result<bool, SendTimeoutError<T>> {
        match ring::push(&*self.chan, self.inflight(), value, repair) {
            Ok(()) => {
                self.chan.not_empty.notify_one();
                Ok(true)
            }
            Err(PushFail::Corrupted) => Err(SendTimeoutError::Corrupted(value)),
            Err(PushFail::Full) => Ok(false),
        }
    }

    /// Sends `value` if a slot is free right now.
    ///
    /// # Errors
    /// [`TrySendError::Full`], [`TrySendError::Disconnected`] (every receiver dropped
    /// or dead; checked with a liveness scan only when the channel is full), or
    /// [`TrySendError::Corrupted`]; each carries the value back.
    pub fn try_send(&self, value: T) -> Result<(), TrySendError<T>> {
        let c: &ShmChannel<T, N> = &self.chan;
        if c.gone(Role::Receiver, false) {
            return Err(TrySendError::Disconnected(value));
        }
        match ring::push(c, self.inflight(), value, true) {
            Ok(()) => {
                c.not_empty.notify_one();
                Ok(())
            }
            Err(PushFail::Full) if c.gone(Role::Receiver, true) => {
                Err(TrySendError::Disconnected(value))
            }
            Err(PushFail::Full) => Err(TrySendError::Full(value)),
            Err(PushFail::Corrupted) => Err(TrySendError::Corrupted(value)),
        }
    }

    /// Sends `value`, waiting while the channel is full, until a slot frees or every
    /// receiver is gone. Waiting sleeps on a futex.
    ///
    /// # Errors
    /// [`SendError::Disconnected`] (every receiver dropped or dead),
    /// [`SendError::Corrupted`]; each carries the value back.
    #[inline]
    pub fn send(&self, value: T) -> Result<(), SendError<T>> {
        self.send_deadline(value, None).map_err(|e| match e {
            SendTimeoutError::Disconnected(v) => SendError::Disconnected(v),
            SendTimeoutError::Corrupted(v) => SendError::Corrupted(v),
            // No deadline: never reached (`Deadline::after(None)` never expires).
            SendTimeoutError::Timeout(v) => SendError::Corrupted(v),
        })
    }

    /// Sends `value`, waiting while the channel is full, at most `timeout`.
    ///
    /// # Errors
    /// [`SendTimeoutError::Timeout`], [`SendTimeoutError::Disconnected`] (every
    /// receiver dropped or dead), [`SendTimeoutError::Corrupted`]; each carries the
    /// value back.
    #[inline]
    pub fn send_timeout(&self, value: T, timeout: Duration) -> Result<(), SendTimeoutError<T>> {
        self.send_deadline(value, Some(timeout))
    }

    #[inline]
    fn send_deadline(
        &self,
        value: T,
        timeout: Option<Duration>,
    ) -> Result<(), SendTimeoutError<T>> {
        let c: &ShmChannel<T, N> = &self.chan;
        // The first attempt reads no clock (the deadline costs a clock read, ~20 ns,
        // as much as the push itself); it is the loop's first round otherwise.
        if c.gone(Role::Receiver, false) {
            return Err(SendTimeoutError::Disconnected(value));
        }
        if self.push_once(value, false)? {
            return Ok(());
        }
        let deadline = Deadline::after(timeout);
        let mut spins = 0;
        let mut blocked_since: Option<Instant> = None;
        loop {
            let scan = blocked_since.is_some_and(|t| t.elapsed() >= SLICE);
            if c.gone(Role::Receiver, scan) {
                return Err(SendTimeoutError::Disconnected(value));
            }
            if scan {
                blocked_since = Some(Instant::now()); // checked this round
            }
            if self.push_once(value, scan)? {
                return Ok(());
            }
            if back_off(&mut spins) {
                continue;
            }
            let listener = c.not_full.listen();
            if self.push_once(value, false)? {
                drop(listener);
                return Ok(());
            }
            if deadline.expired() {
                return Err(SendTimeoutError::Timeout(value));
            }
            blocked_since.get_or_insert_with(Instant::now);
            listener.wait_deadline(Deadline::after(Some(deadline.slice(SLICE))));
        }
    }
}

impl<T: ChannelElement + Copy, const N: usize, A: ShmAllocator> Receiver<T, N, A> {
    #[inline]
    fn inflight(&self) -> &AtomicU64 {
        &self.chan.endpoints[self.entry].inflight
    }

    /// The channel this receiver belongs to.
    pub fn channel(&self) -> &Root<ShmChannel<T, N>, A> {
        &self.chan
    }

    #[inline]
    fn take(&self, repair: bool) -> Result<Option<T>, PopFail> {
        match ring::pop(&*self.chan, self.inflight(), repair) {
            Ok(v) => {
                self.chan.not_full.notify_one();
                Ok(Some(v))
            }
            Err(PopFail::Empty) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Takes a message if one is queued. A slot left half-written by a dead sender
    /// is skipped (that message is lost with its sender).
    ///
    /// # Errors
    /// [`TryRecvError::Empty`]; [`TryRecvError::Disconnected`] if nothing is queued
    /// and every sender is gone: at once when the last one dropped its endpoint;
    /// when senders died instead, the first `try_recv` that finds nothing queued
    /// at least 50 ms after this receiver's previous scan notices (the liveness
    /// scan costs a system call per registered sender, so a polling loop pays it
    /// at most 20 times a second); [`TryRecvError::Corrupted`].
    pub fn try_recv(&self) -> Result<T, TryRecvError> {
        match self.take(true) {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(_) => return Err(TryRecvError::Corrupted),
        }
        let scan = match self.last_scan.get() {
            Some(t) if t.elapsed() < SLICE => false,
            _ => {
                self.last_scan.set(Some(Instant::now()));
                true
            }
        };
        if self.chan.gone(Role::Sender, scan) {
            // The last sends happened before the senders left: look once more.
            return match self.take(true) {
                Ok(Some(v)) => Ok(v),
                Ok(None) => Err(TryRecvError::Disconnected),
                Err(_) => Err(TryRecvError::Corrupted),
            };
        }
        Err(TryRecvError::Empty)
    }

    /// Takes a message, waiting until one arrives or every sender is gone. Waiting
    /// sleeps on a futex; every 50 ms of quiet it checks for dead senders and for
    /// slots a dead sender left half-written.
    ///
    /// # Errors
    /// [`RecvError::Disconnected`] once nothing is queued and every sender is
    /// gone (dropped or dead); [`RecvError::Corrupted`].
    #[inline]
    pub fn recv(&self) -> Result<T, RecvError> {
        self.recv_deadline(None).map_err(|e| match e {
            RecvTimeoutError::Disconnected => RecvError::Disconnected,
            RecvTimeoutError::Corrupted => RecvError::Corrupted,
            // No deadline: never reached (`Deadline::after(None)` never expires).
            RecvTimeoutError::Timeout => RecvError::Corrupted,
        })
    }

    /// Takes a message, waiting at most `timeout`; otherwise as [`recv`](Self::recv).
    ///
    /// # Errors
    /// [`RecvTimeoutError::Timeout`], [`RecvTimeoutError::Disconnected`],
    /// [`RecvTimeoutError::Corrupted`].
    #[inline]
    pub fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        self.recv_deadline(Some(timeout))
    }

    #[inline]
    fn recv_deadline(&self, timeout: Option<Duration>) -> Result<T, RecvTimeoutError> {
        let c: &ShmChannel<T, N> = &self.chan;
        // The first attempt reads no clock (as in `send`).
        match self.take(false) {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(_) => return Err(RecvTimeoutError::Corrupted),
        }
        let deadline = Deadline::after(timeout);
        let mut spins = 0;
        let mut blocked_since: Option<Instant> = None;
        loop {
            let repair = blocked_since.is_some_and(|t| t.elapsed() >= SLICE);
            match self.take(repair) {
                Ok(Some(v)) => return Ok(v),
                Ok(None) => {}
                Err(_) => return Err(RecvTimeoutError::Corrupted),
            }
            if c.gone(Role::Sender, repair) {
                return match self.take(true) {
                    Ok(Some(v)) => Ok(v),
                    Ok(None) => Err(RecvTimeoutError::Disconnected),
                    Err(_) => Err(RecvTimeoutError::Corrupted),
                };
            }
            if repair {
                blocked_since = Some(Instant::now()); // checked this round
            }
            if back_off(&mut spins) {
                continue;
            }
            let listener = c.not_empty.listen();
            match self.take(false) {
                Ok(Some(v)) => return Ok(v),
                Ok(None) => {}
                Err(_) => return Err(RecvTimeoutError::Corrupted),
            }
            if deadline.expired() {
                return Err(RecvTimeoutError::Timeout);
            }
            blocked_since.get_or_insert_with(Instant::now);
            listener.wait_deadline(Deadline::after(Some(deadline.slice(SLICE))));
        }
    }
}

impl<T: ChannelElement + Copy, const N: usize, A: ShmAllocator + Clone> Clone for Sender<T, N, A> {
    /// Registers another sender.
    ///
    /// # Panics
    /// If the endpoint table is full (use [`Root::sender`] to handle that).
    fn clone(&self) -> Self {
        self.chan.sender().expect("channel endpoint table full")
    }
}

impl<T: ChannelElement + Copy, const N: usize, A: ShmAllocator + Clone> Clone
    for Receiver<T, N, A>
{
    /// Registers another receiver.
    ///
    /// # Panics
    /// If the endpoint table is full (use [`Root::receiver`] to handle that).
    fn clone(&self) -> Self {
        self.chan.receiver().expect("channel endpoint table full")
    }
}

impl<T: ChannelElement + Copy, const N: usize, A: ShmAllocator> Drop for Sender<T, N, A> {
    fn drop(&mut self) {
        self.chan.deregister(self.entry, Role::Sender);
    }
}

impl<T: ChannelElement + Copy, const N: usize, A: ShmAllocator> Drop for Receiver<T, N, A> {
    fn drop(&mut self) {
        self.chan.deregister(self.entry, Role::Receiver);
    }
}

// SAFETY: the ring's words are atomics and each slot's value sits in an UnsafeCell
// that the slot protocol gives to one endpoint at a time, so the shared API is
// sound when other processes call it at once.
unsafe impl<T: ChannelElement, const N: usize> crate::typed::ShmShared for ShmChannel<T, N> {
    const ATOMIC_ONLY: bool = false;
}
