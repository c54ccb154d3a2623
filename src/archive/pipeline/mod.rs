//! Batch pipelines: one [`Publisher`] process publishes rkyv-serialised batches,
//! any number of [`Subscriber`] processes read each one zero-copy, with no
//! protocol written by the user.
//!
//! ```
//! use shared_allocator::archive::{Delivery, PipelineOptions, Publisher, Subscriber};
//! # let name = format!("doc-pipeline-{}", std::process::id());
//! let mut publisher = Publisher::<Vec<u64>>::create(&name, PipelineOptions::new(Delivery::Every))?;
//! // In a reader process (here: the same one):
//! let mut subscriber = Subscriber::<Vec<u64>>::open(&name)?;
//! publisher.publish(&vec![1, 2, 3])?; // serialised once, in place
//! let batch = subscriber.recv()?.expect("not closed");
//! assert_eq!(batch[2].to_native(), 3); // a validated `&Archived<Vec<u64>>`
//! drop(batch); // releases the region: the publisher may reuse it
//! publisher.close()?; // the subscriber sees the end of the stream
//! assert!(subscriber.recv()?.is_none());
//! # Ok::<(), shared_allocator::archive::PipelineError>(())
//! ```
//!
//! # Layout
//! The publisher creates two segments under the name: a small control segment
//! (`name`: a free-list allocator holding one control block of atomics and two
//! [`ShmEvent`]s) and a data segment (`name-d<generation>`: a bump allocator with
//! K regions). Every batch is serialised straight into a free region, then its
//! sequence number is published; subscribers wait on a futex (no polling; they
//! wake a few times a second to see whether the publisher died) and validate each
//! batch once (bytecheck) before handing out `&Archived<T>`.
//!
//! # Delivery
//! - [`Delivery::Every`]: every subscriber gets every batch, in order, from a
//!   queue of K = [`PipelineOptions::regions`] batches; the publisher fills batch
//!   `n + 1` while subscribers read `n` (K >= 2). What happens to a subscriber K
//!   batches behind is the [`Backpressure`] policy:
//!   - [`Backpressure::Block`] (default): batch `n` goes to region `n mod K`; **the
//!     publisher blocks** while a live subscriber has not released batch `n - K`,
//!     for at most [`PipelineOptions::timeout`], then fails with
//!     [`PipelineError::Timeout`] (nothing is published; the batch can be retried).
//!   - [`Backpressure::DropOldest`]: **the publisher never waits**; the K newest
//!     batches are kept, and a subscriber that fell further behind loses the older
//!     ones: its next batch is the oldest one kept, and [`Batch::skipped`] (and the
//!     running total [`Subscriber::skipped`]) tells it how many it lost. Like
//!     tokio's broadcast channel, but the loss is reported on the batch, not as an
//!     error. There are `K + max_subscribers + 1` regions: K hold the newest
//!     batches, each subscriber pins at most one older one, one is free to write.
//! - [`Delivery::Latest`]: subscribers always get the newest complete batch and
//!   skip the ones they missed ([`Batch::skipped`] counts them); the publisher
//!   never waits. This is drop-oldest with K = 1: `max_subscribers + 2` regions.
//!
//! # Sizing
//! Regions start at [`PipelineOptions::region_capacity`] bytes. A batch that does
//! not fit (measured in the same serialisation pass) makes the publisher create a
//! new data segment with regions at least twice as large and serialise there; the
//! old segment's name is removed (mappings stay valid). In `Every` mode the switch
//! waits until every subscriber has released the old segment's batches.
//!
//! # Failures
//! - A subscriber that dies (even while holding a batch) is recognised through the
//!   control segment's process registry (its liveness token): its cursor and pin
//!   stop counting and its slot is reused.
//! - A subscriber that joins late starts at the next batch published after it joined.
//! - A publisher that dies never exposes a half-written batch (a region's
//!   sequence number is cleared before it is written and set after): subscribers
//!   get the complete batches already published, then [`PipelineError::PublisherGone`].
//!   [`Publisher::close`] (or drop) ends the stream cleanly: it first waits (up to
//!   the timeout) until every live subscriber has released the last batch, then
//!   `recv` returns `None`.
//! - A subscriber or publisher copied into a fork child answers
//!   [`PipelineError::Forked`] there (its slot, or its stream, is the parent's),
//!   and dropping it there changes nothing; the child opens its own.
//! - A publisher that is killed runs no code, so its segments' names (`name`,
//!   `name-d<generation>`) are removed by its subscribers: every segment is
//!   created with [remove on last close](crate::Segment::set_remove_on_last_close),
//!   and a subscriber that sees [`PipelineError::PublisherGone`] maps the current
//!   data segment (so the last subscriber to close removes it) and removes the
//!   names only a dead publisher could still use (the previous and the next
//!   generation). A publisher killed before any subscriber attached leaves its
//!   names until [`unlink`](crate::unlink) or `shm-alloc gc` removes them.
//!
//! # Why no subscriber reads a region being written
//! The publisher writes a batch ([`PipeWriter`], byte-wise atomic stores, so a
//! stray checked copy never races it), and zero-copy readers must not see it
//! change, so it must own the region's bytes. It writes only into a region it has *claimed* for the
//! new sequence number `seq` (greater than every published one; numbers are never
//! reused), and a subscriber reads a region's bytes only while it holds a
//! [`Batch`] (and while validating it in `recv`). All control words are `SeqCst`.
//! - **`Every` + `Block`**: batch `n` lives in region `(n - 1) mod K`. The
//!   publisher claims region `r` for `seq` only after every live subscriber's
//!   cursor (`S_DONE`, stored when it drops a `Batch`) is at least `seq - K`, the
//!   batch that region last held. A subscriber reads region `r` for batch `want`
//!   only if `want <= published < seq` and `want ≡ seq (mod K)`, so
//!   `want <= seq - K <= S_DONE`: it already dropped that batch, and its later
//!   batches are numbered above its cursor. A subscriber that joins later starts
//!   at `published + 1 >= seq`, published only after the write.
//! - **Pinned modes** (`Latest`, `Every` + `DropOldest`): a Dekker handshake. The
//!   publisher (P1) clears the region's number, then (P2) reads every pin and
//!   restores the number if a live subscriber pinned it. A subscriber (S1) pins
//!   `s`, then (S2) looks for the region holding `s`. In the single `SeqCst`
//!   order, either P1 comes before S2 (the subscriber does not find `s` there,
//!   and `s` is never written to a region again) or S1 < S2 < P1 < P2 (the
//!   publisher sees the pin and leaves the region alone). A subscriber clears its
//!   pin only when it drops the `Batch`.
//! - **Dead subscribers** (their registry token no longer alive) are not waited
//!   for: a dead process reads nothing. A subscriber's slot is freed only when
//!   the `Subscriber` drops, which no `Batch` outlives (it borrows it).
//! - **Fork**: a `Batch` copied into a fork child releases nothing there and
//!   panics if dereferenced (its pin is the parent's), and the child's copy of the
//!   `Subscriber` answers [`PipelineError::Forked`]. A plain `&Archived<T>` taken
//!   from a batch *before* `fork` (itself `unsafe`) is the caller's to not use in
//!   the child after the parent released it.
//! - **Growth** writes only into the new data segment's fresh regions (never
//!   published before), claimed as above; the old segment is not written again.
//!
//! # Trust
//! Subscribers validate every batch (bytecheck) before reading it. A [`Batch`]
//! is a zero-copy view, and like every zero-copy view of this crate it trusts
//! every process with write access to the pipeline's segments (control segment
//! included): a process that scribbles a region, or a cursor, pin or region word
//! of the control block (which can make the honest publisher rewrite a region a
//! subscriber holds), is outside what `recv` protects against, as for
//! [`ArenaArchiveReader::access`](super::ArenaArchiveReader::access). A reader
//! that does not trust every such process uses the **checked copy path**
//! [`Subscriber::recv_copied`]: the batch is copied out with byte-wise atomic
//! loads, validated in the private copy and deserialised, so a scribbler gets it
//! an error or a wrong-but-valid value, never undefined behaviour.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::Serialize;
use thiserror::Error;

use super::{ArchiveError, ShmArchivable, ARCHIVE_ALIGN, HEADER_LEN};
use crate::alloc::{BumpAllocator, Offset};
use crate::coord::ShmEvent;
use crate::error::SegmentError;
use crate::typed::{fingerprint, ShmSafe, ShmSync};

mod publisher;
mod subscriber;
mod writer;

pub use publisher::Publisher;
pub use subscriber::{Batch, Subscriber};
pub use writer::PipeWriter;

/// Most subscribers a pipeline can have at once.
pub const MAX_SUBSCRIBERS: usize = 32;
/// Regions: `Every` + drop-oldest needs `K + max_subscribers + 1`.
const MAX_REGIONS: usize = 2 * MAX_SUBSCRIBERS + 2;
const MAGIC: u64 = u64::from_le_bytes(*b"SApipe02");
const ROOT: &str = "pipeline";
/// How often a waiting side wakes to check the other side's liveness.
const LIVENESS_SLICE: Duration = Duration::from_millis(100);

// Region words.
const R_SEQ: usize = 0; // batch sequence number (0: being written / empty)
const R_GEN: usize = 1; // data segment generation
const R_OFF: usize = 2; // block offset in that segment
const R_LEN: usize = 3; // archive length
                        // Subscriber words.
const S_TOKEN: usize = 0; // liveness token (0: free slot)
const S_DONE: usize = 1; // last released sequence number
const S_PIN: usize = 2; // pinned modes: pinned sequence number (0: none)

/// How batches reach subscribers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Every batch to every subscriber, in order, from a queue of K batches; a
    /// subscriber K batches behind is handled by the [`Backpressure`] policy.
    Every,
    /// Subscribers see the newest complete batch; the publisher never blocks.
    Latest,
}

/// What [`Delivery::Every`] does about a subscriber that is K batches behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backpressure {
    /// The publisher waits (up to [`PipelineOptions::timeout`], then
    /// [`PipelineError::Timeout`]) until the slow subscriber releases the batch.
    #[default]
    Block,
    /// The publisher never waits: the slow subscriber loses the oldest batches
    /// (only the K newest are kept) and learns how many from [`Batch::skipped`].
    DropOldest,
}

/// How a pipeline is created.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    /// The delivery mode.
    pub delivery: Delivery,
    /// Queue length K for [`Delivery::Every`] (default 3): how many batches a
    /// subscriber may lag before the back-pressure policy applies. `Block`:
    /// 2..=66 regions; `DropOldest`: 1..=65 and `K + max_subscribers + 1 <= 66`.
    /// `Latest` always uses `max_subscribers + 2` regions.
    pub regions: usize,
    /// What `Every` does about a subscriber K batches behind (default: block).
    pub backpressure: Backpressure,
    /// Most subscribers at once (1..=32, default 8).
    pub max_subscribers: usize,
    /// Initial bytes per region (default 1 MiB); grows on demand.
    pub region_capacity: usize,
    /// How long [`Publisher::publish`] blocks for a slow subscriber (`Every`), and
    /// how long [`Publisher::close`] waits for subscribers to drain.
    pub timeout: Duration,
}

impl PipelineOptions {
    /// Defaults for `delivery`.
    pub fn new(delivery: Delivery) -> Self {
        PipelineOptions {
            delivery,
            regions: 3,
            backpressure: Backpressure::Block,
            max_subscribers: 8,
            region_capacity: 1 << 20,
            timeout: Duration::from_secs(10),
        }
    }
}

/// What can go wrong in a pipeline. Converts into [`crate::Error`] (so `?` works
/// into it, `Box<dyn Error + Send + Sync>` and `anyhow`).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PipelineError {
    /// A segment could not be created or opened.
    #[error(transparent)]
    Segment(#[from] SegmentError),
    /// The control block or a data block could not be set up.
    #[error(transparent)]
    Shm(#[from] crate::Error),
    /// Serialisation or validation failed.
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// A subscriber held the publisher up longer than the timeout (nothing published).
    #[error("a subscriber did not release a batch within {0:?}")]
    Timeout(Duration),
    /// No batch arrived within the subscriber's timeout.
    #[error("no batch within {0:?}")]
    RecvTimeout(Duration),
    /// The publisher died without closing the stream.
    #[error("the publisher died without closing the pipeline")]
    PublisherGone,
    /// Every subscriber slot is held by a live subscriber.
    #[error("the pipeline already has its maximum of {0} subscribers")]
    Full(usize),
    /// The pipeline under this name carries another type.
    #[error("the pipeline carries another type than {0}")]
    TypeMismatch(&'static str),
    /// The control block or a region descriptor holds impossible values.
    #[error("bad pipeline control block: {0}")]
    Corrupt(&'static str),
    /// An option is out of range.
    #[error("pipeline option {0} out of range")]
    BadOption(&'static str),
    /// The subscriber or publisher was made in another process (this one is a
    /// fork child): its slot, releases and stream belong to the parent. Open (or
    /// create) a new one.
    #[error("this pipeline end belongs to process {0}; open a new one after fork")]
    Forked(u32),
}

/// The shared control block (a root of the control segment).
#[repr(C)]
struct Control {
    magic: AtomicU64,
    tag: AtomicU64,
    mode: AtomicU64,
    regions: AtomicU64,
    max_subs: AtomicU64,
    gen: AtomicU64,
    published: AtomicU64,
    closed: AtomicU64,
    writer: AtomicU64,
    /// Pinned modes: how many newest batches are kept (Latest 1, drop-oldest K);
    /// 0: `Every` + `Block` (batch `n` in region `n mod K`, cursors).
    keep: AtomicU64,
    data: ShmEvent,
    space: ShmEvent,
    region: [[AtomicU64; 4]; MAX_REGIONS],
    subs: [[AtomicU64; 4]; MAX_SUBSCRIBERS],
}

// SAFETY: every field is an atomic or a `ShmEvent` (both `ShmSync`): all bytes are
// inside `UnsafeCell`s and only accessed atomically.
unsafe impl ShmSync for Control {}
// SAFETY:
// - repr(C) of 8-byte atomics and two 8-byte `ShmEvent`s: no padding, all-zero and
//   every other bit pattern valid (values are validated where used);
// - no pointers (offsets are numbers), no Drop, Send + Sync + 'static.
unsafe impl ShmSafe for Control {
    const FINGERPRINT: u64 =
        fingerprint::primitive("PipelineControl/2", std::mem::size_of::<Control>(), 8);
}

/// What a [`Publisher`] can publish: an rkyv type whose archive validates
/// ([`ShmArchivable`]) and that serialises through a [`PipeWriter`]. Every type
/// with `#[derive(Archive, Serialize)]` (and `CheckBytes`, rkyv's default) is one.
pub trait PipelineBatch:
    ShmArchivable
    + for<'w, 'a> Serialize<HighSerializer<PipeWriter<'w>, ArenaHandle<'a>, rancor::Error>>
{
}

impl<T> PipelineBatch for T where
    T: ShmArchivable
        + for<'w, 'a> Serialize<HighSerializer<PipeWriter<'w>, ArenaHandle<'a>, rancor::Error>>
{
}

type HighSerializer<W, A, E> = rkyv::api::high::HighSerializer<W, A, E>;
fn data_name(name: &str, gen: u64) -> String {
    format!("{name}-d{gen}")
}

/// One generation of the data segment, mapped.
struct Data {
    gen: u64,
    bump: BumpAllocator,
    /// Block offsets of the regions (publisher side only).
    blocks: Vec<Offset>,
    /// Archive bytes per region (publisher side only).
    cap: usize,
}

/// Bytes of a region's block for `cap` archive bytes (`None` on overflow).
fn block_len(cap: usize) -> Option<usize> {
    Some(cap.checked_add(HEADER_LEN as usize + ARCHIVE_ALIGN - 1)? & !(ARCHIVE_ALIGN - 1))
}
