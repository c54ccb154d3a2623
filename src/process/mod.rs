//! The process registry: one slot per attached handle, liveness without pids.
//!
//! Every handle that creates or opens a segment (every `FreeListAllocator`,
//! `SlabAllocator` and `BumpAllocator` value) joins the segment's registry and holds
//! one of its `SLOTS` slots for as long as it lives. A slot is *held* through an
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
//!   parent's locks. A `pthread_atfork` child handler gives each registered handle a
//!   lock description of its own, even with a full descriptor table (each handle
//!   keeps a spare description whose number the child reuses; see `fork.rs`), so the
//!   child never keeps the parent's slot alive and never reads it as dead; the
//!   child's handles join slots of their own on first use. If the child cannot get
//!   one (no `/proc`), its handles refuse with [`SegmentError::LockLost`] and every
//!   lock question it asks reads "alive". The atfork handlers also hold this
//!   process's local tables across the fork, so a fork from a busy multi-threaded
//!   process never leaves them locked in the child.
//! - **Descriptors must stay open.** A handle holds two descriptors (the lock
//!   description and the spare). A process that closes them (`close_range`,
//!   `closefrom`) drops its lock: its slot reads dead, and a peer reclaims it. The
//!   handle notices (its slot's generation changed, or the spare's `F_OFD_GETLK`
//!   finds no holder): it stops using its cache at once and refuses multi-step
//!   operations with [`SegmentError::LockLost`].
//! - **`exec`**: both descriptors are close-on-exec, so `exec` ends the slot as death
//!   does. A program that clears `FD_CLOEXEC` on them and execs keeps the slot
//!   alive, unused, for the new image's lifetime (its caches come back only when
//!   that image exits).
//! - **`/proc` is required**: joining opens the spare through `/proc/self/fd`
//!   (without `/proc`, `create` and `open` fail with an OS error naming it).
//!
//! Limits: 128 (`SLOTS`) handles per segment ([`SegmentError::RegistryFull`]),
//! [`MAX_HANDLES`] per process ([`SegmentError::HandleLimit`]), 12 (`INTENTS`) intent
//! records per handle ([`SegmentError::IntentsBusy`] past a 20 ms wait). An intent
//! record that no thread of this process claimed (a scribble) is overwritten at
//! once, never waited for.
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

mod attach;
mod fork;
mod intent;
mod lock;
mod membership;
mod pin;
mod reclaim;
mod token;

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::AtomicU64;

#[allow(unused_imports)] // doc links
use crate::error::SegmentError;
use crate::segment::Segment;

mod inspect;
pub(crate) use inspect::{
    any_live, any_slot_locked, check_registry, dead_slot, is_observer, mark_observer, own_slots,
    registry_info,
};
pub use inspect::{IntentInfo, RegistryInfo, SlotInfo};
#[allow(unused_imports)]
use {attach::*, fork::*, intent::*, lock::*, membership::*, pin::*, reclaim::*, token::*};

pub(crate) use attach::{attachment_epoch, token_alive_at, token_at, OwnedCache, LOCAL_CACHES};
pub use fork::MAX_HANDLES;
pub(crate) use fork::{check_fork, fork_epoch, ForkLock};
pub(crate) use intent::Intent;
pub(crate) use membership::{IntentGuard, Membership};
pub(crate) use pin::{pin, pinned_by_others, Pin};
pub(crate) use reclaim::{drain_orphans, live_intents, reclaim_dead};
pub(crate) use token::{listed_live, processes, slot_generation, token, token_alive};

/// Slots in every registry: at most this many handles can be attached at once.
pub(crate) const SLOTS: usize = 128;
/// Words (8 bytes) per slot.
pub(crate) const SLOT_WORDS: usize = 32;
/// Parked intent records of dead handles (pairs of words) after the slots.
const ORPHAN_WORDS: usize = 64;
/// Bytes of the registry: the slots, then the parked (orphan) intent records.
pub(crate) const REGISTRY_BYTES: u64 = ((SLOTS * SLOT_WORDS + ORPHAN_WORDS) * 8) as u64;
const _: () = assert!(REGISTRY_BYTES <= crate::segment::REGISTRY_REGION);
/// Intent records per slot (threads of one process that use one handle share them).
pub(crate) const INTENTS: usize = 12;

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
