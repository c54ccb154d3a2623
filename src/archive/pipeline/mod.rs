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
//! - [`Delivery::Every`]: every subscriber gets every batch, in order. Batch `n`
//!   goes to region `n mod K`, so the publisher fills batch `n + 1` while
//!   subscribers read `n` (K >= 2). **Back-pressure: the publisher blocks** while
//!   a live subscriber has not released batch `n - K`, for at most
//!   [`PipelineOptions::timeout`], then fails with [`PipelineError::Timeout`]
//!   (nothing is published; the batch can be retried). Dropping the oldest for
//!   slow subscribers is not offered.
//! - [`Delivery::Latest`]: subscribers always get the newest complete batch and
//!   skip the ones they missed; the publisher never waits. There are
//!   `max_subscribers + 2` regions: each subscriber pins at most one, one holds the
//!   newest batch, so one is always free to write.
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
//! - A subscriber copied into a fork child answers [`PipelineError::Forked`] there
//!   (its slot is the parent's); the child opens its own.
//! - Left behind by a killed publisher: its segments' names (`name`,
//!   `name-d<generation>`); remove them with [`unlink`](crate::unlink) before
//!   creating the pipeline again.
//!
//! # Trust
//! Subscribers validate every batch (bytecheck) before reading it; the region
//! protocol assumes the publisher process follows it (a writer that scribbles
//! over a region while a subscriber reads it is outside this API's trust, as for
//! [`ArenaArchiveReader::access`](super::ArenaArchiveReader::access)).

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
const MAX_REGIONS: usize = MAX_SUBSCRIBERS + 2;
const MAGIC: u64 = u64::from_le_bytes(*b"SApipe01");
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
const S_PIN: usize = 2; // Latest: pinned sequence number (0: none)

/// How batches reach subscribers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Every batch to every subscriber, in order; the publisher blocks (bounded by
    /// the timeout) while the slowest live subscriber is K batches behind.
    Every,
    /// Subscribers see the newest complete batch; the publisher never blocks.
    Latest,
}

/// How a pipeline is created.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    /// The delivery mode.
    pub delivery: Delivery,
    /// Regions in rotation for [`Delivery::Every`] (2..=34, default 3): how many
    /// batches a subscriber may lag before the publisher blocks. `Latest` always
    /// uses `max_subscribers + 2`.
    pub regions: usize,
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
    /// The subscriber was opened in another process (this one is a fork child):
    /// its slot and releases belong to the parent. Open a new one.
    #[error("this subscriber belongs to process {0}; open a new one after fork")]
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
        fingerprint::primitive("PipelineControl/1", std::mem::size_of::<Control>(), 8);
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

fn block_len(cap: usize) -> usize {
    (cap + HEADER_LEN as usize + ARCHIVE_ALIGN - 1) & !(ARCHIVE_ALIGN - 1)
}
