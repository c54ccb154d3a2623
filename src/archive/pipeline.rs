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

use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rkyv::rancor::{self, Source};
use rkyv::ser::allocator::ArenaHandle;
use rkyv::ser::{Positional, Writer};
use rkyv::{Archived, Serialize};
use thiserror::Error;

use super::writer::type_tag;
use super::{ArchiveError, ShmArchivable, ARCHIVE_ALIGN, HEADER_LEN};
use crate::alloc::{BumpAllocator, FreeListAllocator, Offset, ShmAllocator};
use crate::coord::ShmEvent;
use crate::error::SegmentError;
use crate::segment::Segment;
use crate::typed::{fingerprint, Root, ShmSafe, ShmSync};

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

/// What can go wrong in a pipeline.
#[derive(Debug, Error)]
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

/// The rkyv writer of a pipeline batch: copies each piece rkyv emits straight
/// to its place in the region (byte-wise atomic stores: the region is the
/// publisher's alone while it is written, see [`Publisher::publish`], but a stale
/// copy of it may still be in flight); bytes past the region's
/// capacity are only counted, so one pass also measures the size.
#[derive(Debug)]
pub struct PipeWriter<'s> {
    /// Start of the region's archive bytes (`cap` of them, inside a mapping that
    /// outlives `'s`).
    region: NonNull<u8>,
    cap: usize,
    pos: usize,
    _seg: PhantomData<&'s Segment>,
}

impl Positional for PipeWriter<'_> {
    #[inline]
    fn pos(&self) -> usize {
        self.pos
    }
}

impl<E: Source> Writer<E> for PipeWriter<'_> {
    #[inline]
    fn write(&mut self, bytes: &[u8]) -> Result<(), E> {
        let end = self.pos.saturating_add(bytes.len());
        if end <= self.cap {
            let dst = self.region.as_ptr().wrapping_add(self.pos);
            // SAFETY:
            // - `pos + len <= cap`, and `region..region + cap` lies inside the live
            //   mapping (`serialize_into` got it from `ptr_at`, and the segment
            //   outlives `'s`), so `dst..dst + len` is valid for writes;
            // - `bytes` is process-local memory, so the ranges do not overlap;
            // - no process reads or writes these bytes meanwhile: the publisher
            //   cleared the region's sequence number and checked that no live
            //   subscriber holds it (Every: cursors past its last batch; Latest: no
            //   pin on it, Dekker-ordered), so no subscriber of this API looks at
            //   it until the new sequence number is published;
            // - byte-wise atomic stores, not a plain copy: a process may be copying
            //   these bytes out (a stale subscriber's checked copy) at this moment,
            //   and its atomic loads must not race plain stores (crate `typed` docs,
            //   "No plain stores").
            unsafe { crate::segment::store_bytes(dst, bytes) };
        }
        self.pos = end;
        Ok(())
    }
}

/// Serialises `value` into the region at `block` (archive bytes at
/// `block + HEADER_LEN`, `cap` of them); returns the archive's length, which
/// exceeds `cap` if it did not fit (then the region holds nothing usable).
fn serialize_into<T: PipelineBatch>(
    seg: &Segment,
    block: Offset,
    cap: usize,
    value: &T,
) -> Result<usize, ArchiveError> {
    let region = seg
        .ptr_at(block.get() + HEADER_LEN, cap as u64, ARCHIVE_ALIGN)
        .ok_or(PipelineErrorInner::OutsideMapping)
        .map_err(|e| ArchiveError::Serialize {
            type_name: std::any::type_name::<T>(),
            reason: e.to_string(),
        })?;
    let w = PipeWriter {
        region,
        cap,
        pos: 0,
        _seg: PhantomData,
    };
    let w = rkyv::api::high::to_bytes_in::<_, rancor::Error>(value, w).map_err(|e| {
        ArchiveError::Serialize {
            type_name: std::any::type_name::<T>(),
            reason: e.to_string(),
        }
    })?;
    std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
    Ok(w.pos)
}

#[derive(Debug, Error)]
enum PipelineErrorInner {
    #[error("region outside the data segment")]
    OutsideMapping,
}

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

/// The writing end of a pipeline (one per pipeline). Dropping it closes the
/// stream (as [`close`](Publisher::close), ignoring errors).
pub struct Publisher<T: PipelineBatch> {
    ctl: Root<Control, Arc<FreeListAllocator>>,
    name: String,
    opts: PipelineOptions,
    regions: usize,
    data: Data,
    /// The previous data segment after a growth, until a batch of the new one is
    /// published (then its name is removed).
    retired: Option<Data>,
    closed: bool,
    _type: PhantomData<fn(&T)>,
}

impl<T: PipelineBatch> Publisher<T> {
    /// Creates the pipeline `name` (its control and first data segment).
    ///
    /// # Errors
    /// [`PipelineError::BadOption`], or segment errors (e.g. the name exists).
    pub fn create(name: &str, opts: PipelineOptions) -> Result<Self, PipelineError> {
        if !(1..=MAX_SUBSCRIBERS).contains(&opts.max_subscribers) {
            return Err(PipelineError::BadOption("max_subscribers"));
        }
        let regions = match opts.delivery {
            Delivery::Every if (2..=MAX_REGIONS).contains(&opts.regions) => opts.regions,
            Delivery::Every => return Err(PipelineError::BadOption("regions")),
            Delivery::Latest => opts.max_subscribers + 2,
        };
        let ctl_seg = Arc::new(FreeListAllocator::create(name, 256 << 10)?);
        let ctl = Root::<Control, _>::new_in(ctl_seg, ROOT)?;
        let name = name.to_owned();
        let data = match Self::new_data(&name, 1, regions, opts.region_capacity.max(64)) {
            Ok(d) => d,
            Err(e) => {
                let _ = ctl.allocator().unlink();
                return Err(e);
            }
        };
        let c: &Control = &ctl;
        c.tag.store(type_tag::<T>(), SeqCst);
        c.mode.store(opts.delivery as u64, SeqCst);
        c.regions.store(regions as u64, SeqCst);
        c.max_subs.store(opts.max_subscribers as u64, SeqCst);
        c.gen.store(1, SeqCst);
        c.writer
            .store(ctl.allocator().liveness_token().into(), SeqCst);
        c.magic.store(MAGIC, SeqCst); // last: subscribers accept the block from here on
        Ok(Publisher {
            ctl,
            name,
            opts,
            regions,
            data,
            retired: None,
            closed: false,
            _type: PhantomData,
        })
    }

    fn new_data(name: &str, gen: u64, regions: usize, cap: usize) -> Result<Data, PipelineError> {
        let block = block_len(cap);
        let size = (block * regions + (64 << 10)) as u64;
        let bump = BumpAllocator::create(&data_name(name, gen), size)?;
        let blocks = (0..regions)
            .map(|_| Ok(bump.allocate_with_epoch(block, ARCHIVE_ALIGN)?.0))
            .collect::<Result<Vec<_>, crate::Error>>();
        match blocks {
            Ok(blocks) => Ok(Data {
                gen,
                bump,
                blocks,
                cap,
            }),
            Err(e) => {
                let _ = bump.unlink();
                Err(e.into())
            }
        }
    }

    fn control(&self) -> &Control {
        &self.ctl
    }

    /// Number of batches published so far (the last one's sequence number).
    pub fn published(&self) -> u64 {
        self.control().published.load(SeqCst)
    }

    /// How many subscribers are subscribed now (dead ones are not counted).
    pub fn subscribers(&self) -> usize {
        (0..MAX_SUBSCRIBERS).filter(|&i| !self.gone(i)).count()
    }

    /// Current bytes per region (grows when a batch does not fit).
    pub fn region_capacity(&self) -> usize {
        self.data.cap
    }

    /// Whether subscriber slot `i` is free or dead (then it is freed), so it does
    /// not hold the publisher up.
    fn gone(&self, i: usize) -> bool {
        let s = &self.control().subs[i];
        let tok = s[S_TOKEN].load(SeqCst);
        if tok == 0 {
            return true;
        }
        if u32::try_from(tok).is_ok_and(|t| self.ctl.allocator().token_alive(t)) {
            return false;
        }
        let _ = s[S_TOKEN].compare_exchange(tok, 0, SeqCst, SeqCst);
        true
    }

    /// Waits until every live subscriber has released batch `seq` (Every mode).
    fn wait_released(&self, seq: u64) -> Result<(), PipelineError> {
        let c = self.control();
        let ok =
            || (0..MAX_SUBSCRIBERS).all(|i| c.subs[i][S_DONE].load(SeqCst) >= seq || self.gone(i));
        if seq == 0 || ok() {
            return Ok(());
        }
        let deadline = Instant::now() + self.opts.timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if c.space.wait_timeout_until(left.min(LIVENESS_SLICE), ok) {
                return Ok(());
            }
            if left.is_zero() {
                return Err(PipelineError::Timeout(self.opts.timeout));
            }
        }
    }

    /// A region to write batch `seq` into, its descriptor invalidated.
    fn claim_region(&self, seq: u64) -> Result<usize, PipelineError> {
        let c = self.control();
        match self.opts.delivery {
            Delivery::Every => {
                let r = ((seq - 1) % self.regions as u64) as usize;
                self.wait_released(seq.saturating_sub(self.regions as u64))?;
                c.region[r][R_SEQ].store(0, SeqCst);
                Ok(r)
            }
            Delivery::Latest => {
                let latest = c.published.load(SeqCst);
                for r in 0..self.regions {
                    let old = c.region[r][R_SEQ].load(SeqCst);
                    if old != 0 && old == latest {
                        continue;
                    }
                    // Dekker with the subscribers: clear, then look at the pins.
                    c.region[r][R_SEQ].store(0, SeqCst);
                    let pinned = old != 0
                        && (0..MAX_SUBSCRIBERS)
                            .any(|i| c.subs[i][S_PIN].load(SeqCst) == old && !self.gone(i));
                    if !pinned {
                        return Ok(r);
                    }
                    c.region[r][R_SEQ].store(old, SeqCst); // untouched: still valid
                }
                // Each subscriber pins one region, one is the newest: cannot happen
                // unless the control block was damaged.
                Err(PipelineError::Corrupt("no free region"))
            }
        }
    }

    /// Serialises `value` straight into a free region and publishes it. In
    /// `Every` mode this first waits (up to the timeout) until the region's
    /// previous batch is released by every live subscriber; a batch larger than
    /// the regions moves the pipeline to a larger data segment.
    ///
    /// # Errors
    /// [`PipelineError::Timeout`] (nothing published; retry or give up),
    /// serialisation or segment errors.
    pub fn publish(&mut self, value: &T) -> Result<u64, PipelineError> {
        let c: &Control = &self.ctl;
        let seq = c.published.load(SeqCst) + 1;
        let r = self.claim_region(seq)?;
        crate::fail_point!("pipeline.publish.claimed");
        let seg = self.data.bump.segment();
        let mut len = serialize_into(seg, self.data.blocks[r], self.data.cap, value)?;
        if len > self.data.cap {
            self.grow(seq, len)?;
            let seg = self.data.bump.segment();
            let again = serialize_into(seg, self.data.blocks[r], self.data.cap, value)?;
            if again > self.data.cap {
                return Err(super::writer::nondeterministic::<T>(len).into());
            }
            len = again;
        }
        let c: &Control = &self.ctl;
        let w = &c.region[r];
        w[R_GEN].store(self.data.gen, SeqCst);
        w[R_OFF].store(self.data.blocks[r].get() + HEADER_LEN, SeqCst);
        w[R_LEN].store(len as u64, SeqCst);
        w[R_SEQ].store(seq, SeqCst);
        c.published.store(seq, SeqCst);
        c.data.notify_all();
        if let Some(old) = self.retired.take() {
            // Subscribers that mapped it keep their mapping; the others now find a
            // newer batch than any of its own.
            let _ = old.bump.unlink();
        }
        Ok(seq)
    }

    /// Moves to a data segment whose regions hold `len` bytes.
    fn grow(&mut self, seq: u64, len: usize) -> Result<(), PipelineError> {
        if self.opts.delivery == Delivery::Every {
            // Nobody may still need a batch of the old segment.
            self.wait_released(seq - 1)?;
        }
        let cap = len.max(self.data.cap.saturating_mul(2));
        let gen = self.data.gen + 1;
        let data = Self::new_data(&self.name, gen, self.regions, cap)?;
        let old = std::mem::replace(&mut self.data, data);
        self.control().gen.store(gen, SeqCst);
        if let Some(older) = self.retired.replace(old) {
            let _ = older.bump.unlink();
        }
        Ok(())
    }

    /// Waits (up to the timeout) until every live subscriber has released the
    /// last batch published (`Every`: every batch).
    ///
    /// # Errors
    /// [`PipelineError::Timeout`].
    pub fn flush(&self) -> Result<(), PipelineError> {
        self.wait_released(self.published())
    }

    /// Ends the stream: waits (up to the timeout) until every live subscriber has
    /// released the last batch (`Every`: every batch), then marks the pipeline
    /// closed and removes its names. Subscribers' `recv` then returns `None`.
    ///
    /// # Errors
    /// [`PipelineError::Timeout`] if a subscriber did not drain in time (the
    /// pipeline is closed anyway).
    pub fn close(mut self) -> Result<(), PipelineError> {
        self.finish()
    }

    fn finish(&mut self) -> Result<(), PipelineError> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        // Both modes: every live subscriber gets the last batch before the end.
        let drained = self.wait_released(self.published());
        let c = self.control();
        c.closed.store(1, SeqCst);
        c.data.notify_all();
        let _ = self.data.bump.unlink();
        if let Some(old) = self.retired.take() {
            let _ = old.bump.unlink();
        }
        let _ = self.ctl.allocator().unlink();
        drained
    }
}

impl<T: PipelineBatch> Drop for Publisher<T> {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

impl<T: PipelineBatch> std::fmt::Debug for Publisher<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("name", &self.name)
            .field("delivery", &self.opts.delivery)
            .field("regions", &self.regions)
            .field("region_capacity", &self.data.cap)
            .field("published", &self.published())
            .finish()
    }
}

/// A reading end of a pipeline, in any process. Holds a subscriber slot (named
/// by its registry liveness token) until dropped.
pub struct Subscriber<T: ShmArchivable> {
    ctl: Root<Control, Arc<FreeListAllocator>>,
    name: String,
    slot: usize,
    /// The process that opened it (its slot is that process's).
    pid: u32,
    delivery: Delivery,
    regions: usize,
    /// Last sequence number handed out (Latest) or released (Every).
    seen: u64,
    data: Option<Data>,
    _type: PhantomData<fn() -> T>,
}

impl<T: ShmArchivable> Subscriber<T> {
    /// Subscribes to the pipeline `name`; the first batch received is the first
    /// one published after this call.
    ///
    /// # Errors
    /// Segment errors (e.g. no such pipeline), [`PipelineError::TypeMismatch`],
    /// [`PipelineError::Full`], [`PipelineError::Corrupt`].
    pub fn open(name: &str) -> Result<Self, PipelineError> {
        let ctl_seg = Arc::new(FreeListAllocator::open(name)?);
        let ctl = Root::<Control, _>::new_in(ctl_seg, ROOT)?;
        let c: &Control = &ctl;
        if c.magic.load(SeqCst) != MAGIC {
            return Err(PipelineError::Corrupt("control block not initialised"));
        }
        if c.tag.load(SeqCst) != type_tag::<T>() {
            return Err(PipelineError::TypeMismatch(std::any::type_name::<T>()));
        }
        let delivery = match c.mode.load(SeqCst) {
            x if x == Delivery::Every as u64 => Delivery::Every,
            x if x == Delivery::Latest as u64 => Delivery::Latest,
            _ => return Err(PipelineError::Corrupt("mode")),
        };
        let regions = c.regions.load(SeqCst) as usize;
        let max_subs = c.max_subs.load(SeqCst) as usize;
        if !(2..=MAX_REGIONS).contains(&regions) || !(1..=MAX_SUBSCRIBERS).contains(&max_subs) {
            return Err(PipelineError::Corrupt("regions"));
        }
        let me = u64::from(ctl.allocator().liveness_token());
        let slot = (0..max_subs)
            .find(|&i| {
                let s = &c.subs[i];
                s[S_PIN].load(SeqCst) == 0 && {
                    let tok = s[S_TOKEN].load(SeqCst);
                    let free = tok == 0
                        || !u32::try_from(tok).is_ok_and(|t| ctl.allocator().token_alive(t));
                    free && s[S_TOKEN].compare_exchange(tok, me, SeqCst, SeqCst).is_ok()
                }
            })
            .or_else(|| {
                // A dead subscriber's pin: take the slot and clear it.
                (0..max_subs).find(|&i| {
                    let tok = c.subs[i][S_TOKEN].load(SeqCst);
                    (tok == 0 || !u32::try_from(tok).is_ok_and(|t| ctl.allocator().token_alive(t)))
                        && c.subs[i][S_TOKEN]
                            .compare_exchange(tok, me, SeqCst, SeqCst)
                            .is_ok()
                })
            })
            .ok_or(PipelineError::Full(max_subs))?;
        let s = &c.subs[slot];
        s[S_PIN].store(0, SeqCst);
        // Late joiner: start after the newest batch. Re-read until stable, so the
        // publisher either saw this cursor or published nothing we need since.
        let mut seen = c.published.load(SeqCst);
        loop {
            s[S_DONE].store(seen, SeqCst);
            let now = c.published.load(SeqCst);
            if now == seen {
                break;
            }
            seen = now;
        }
        let mut sub = Subscriber {
            name: name.to_owned(),
            slot,
            pid: std::process::id(),
            delivery,
            regions,
            seen,
            data: None,
            ctl,
            _type: PhantomData,
        };
        let gen = sub.control().gen.load(SeqCst);
        // The current generation, mapped now (the publisher may replace it later).
        let _ = Self::map(&mut sub.data, &sub.name, gen);
        Ok(sub)
    }

    fn control(&self) -> &Control {
        &self.ctl
    }

    fn map<'d>(
        data: &'d mut Option<Data>,
        name: &str,
        gen: u64,
    ) -> Result<&'d BumpAllocator, PipelineError> {
        if data.as_ref().is_none_or(|d| d.gen != gen) {
            let bump = BumpAllocator::open(&data_name(name, gen))?;
            *data = Some(Data {
                gen,
                bump,
                blocks: Vec::new(),
                cap: 0,
            });
        }
        Ok(&data.as_ref().expect("just mapped").bump)
    }

    /// The next batch: in `Every` mode the one after the last received, in
    /// `Latest` mode the newest one not yet received. Blocks (futex, no polling)
    /// until there is one. The batch stays valid, and its region reserved, until
    /// the returned guard is dropped.
    ///
    /// # Errors
    /// `Ok(None)` when the publisher closed the stream (after the last batch);
    /// [`PipelineError::PublisherGone`] when it died;
    /// [`PipelineError::Forked`] in a fork child of the process that opened it;
    /// [`PipelineError::Archive`] if a batch fails validation.
    pub fn recv(&mut self) -> Result<Option<Batch<'_, T>>, PipelineError> {
        self.recv_inner(None)
    }

    /// As [`recv`](Self::recv), waiting at most `timeout`.
    ///
    /// # Errors
    /// As [`recv`](Self::recv), and [`PipelineError::RecvTimeout`].
    pub fn recv_timeout(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<Batch<'_, T>>, PipelineError> {
        self.recv_inner(Some(timeout))
    }

    fn recv_inner(
        &mut self,
        timeout: Option<Duration>,
    ) -> Result<Option<Batch<'_, T>>, PipelineError> {
        if self.pid != std::process::id() {
            return Err(PipelineError::Forked(self.pid));
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut slept_in_vain = false;
        loop {
            let c: &Control = &self.ctl;
            let want = self.seen + 1;
            let published = c.published.load(SeqCst);
            if published < want {
                if c.closed.load(SeqCst) != 0 {
                    return Ok(None);
                }
                // Liveness costs a system call: only after a slice passed in vain.
                if slept_in_vain {
                    let tok = c.writer.load(SeqCst);
                    if !u32::try_from(tok).is_ok_and(|t| self.ctl.allocator().token_alive(t)) {
                        // Published just before dying?
                        if c.published.load(SeqCst) < want {
                            return Err(PipelineError::PublisherGone);
                        }
                        continue;
                    }
                }
                let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                if left.is_some_and(|l| l.is_zero()) {
                    return Err(PipelineError::RecvTimeout(timeout.unwrap_or_default()));
                }
                let slice = left.map_or(LIVENESS_SLICE, |l| l.min(LIVENESS_SLICE));
                slept_in_vain = !c.data.wait_timeout_until(slice, || {
                    c.published.load(SeqCst) >= want || c.closed.load(SeqCst) != 0
                });
                continue;
            }
            let (seq, r) = match self.delivery {
                Delivery::Every => (want, ((want - 1) % self.regions as u64) as usize),
                Delivery::Latest => {
                    // Pin the newest batch, then check that its region still holds it.
                    let s = &c.subs[self.slot];
                    s[S_PIN].store(published, SeqCst);
                    match (0..self.regions).find(|&r| c.region[r][R_SEQ].load(SeqCst) == published)
                    {
                        Some(r) => (published, r),
                        None => {
                            s[S_PIN].store(0, SeqCst);
                            continue; // replaced meanwhile: a newer one is published
                        }
                    }
                }
            };
            let w = &c.region[r];
            let (gen, off, len) = (
                w[R_GEN].load(SeqCst),
                w[R_OFF].load(SeqCst),
                w[R_LEN].load(SeqCst),
            );
            if w[R_SEQ].load(SeqCst) != seq {
                c.subs[self.slot][S_PIN].store(0, SeqCst);
                return Err(PipelineError::Corrupt(
                    "region does not hold the published batch",
                ));
            }
            let bytes = match Self::map(&mut self.data, &self.name, gen) {
                Ok(bump) => bump
                    .segment()
                    .ptr_at(off, len, ARCHIVE_ALIGN)
                    .map(|p| (p, len)),
                // The publisher replaced that segment (Latest): take a newer batch.
                Err(PipelineError::Segment(SegmentError::NotFound { .. }))
                    if self.delivery == Delivery::Latest =>
                {
                    c.subs[self.slot][S_PIN].store(0, SeqCst);
                    if c.closed.load(SeqCst) != 0 {
                        return Ok(None); // its segment went with the close
                    }
                    // Removed only once a newer batch is published.
                    c.data.wait_timeout_until(LIVENESS_SLICE, || {
                        c.published.load(SeqCst) != seq || c.closed.load(SeqCst) != 0
                    });
                    continue;
                }
                Err(e) => {
                    c.subs[self.slot][S_PIN].store(0, SeqCst);
                    return Err(e);
                }
            };
            let Some((ptr, len)) = bytes else {
                c.subs[self.slot][S_PIN].store(0, SeqCst);
                return Err(PipelineError::Corrupt("region outside the data segment"));
            };
            // SAFETY:
            // - `ptr_at` checked that `len` bytes at `ptr` lie inside the mapping,
            //   which `self.data` keeps alive while the returned `Batch` borrows `self`;
            // - the publisher does not write this region until this subscriber
            //   releases it (Every: its cursor is below `seq`; Latest: its pin, set
            //   before the region was seen holding `seq`), so no process writes
            //   these bytes while the slice lives.
            let bytes = unsafe { std::slice::from_raw_parts(ptr.as_ptr(), len as usize) };
            let archived = match rkyv::access::<Archived<T>, rancor::Error>(bytes) {
                Ok(a) => a,
                Err(e) => {
                    c.subs[self.slot][S_PIN].store(0, SeqCst);
                    return Err(ArchiveError::Invalid {
                        offset: off,
                        len,
                        reason: e.to_string(),
                    }
                    .into());
                }
            };
            self.seen = seq;
            return Ok(Some(Batch {
                archived,
                seq,
                len: len as usize,
                ctl: &self.ctl,
                slot: self.slot,
                delivery: self.delivery,
            }));
        }
    }
}

impl<T: ShmArchivable> Drop for Subscriber<T> {
    fn drop(&mut self) {
        if self.pid != std::process::id() {
            return; // a fork child's copy: the slot is the parent's
        }
        let c = self.control();
        let s = &c.subs[self.slot];
        s[S_PIN].store(0, SeqCst);
        s[S_TOKEN].store(0, SeqCst);
        c.space.notify_all();
    }
}

impl<T: ShmArchivable> std::fmt::Debug for Subscriber<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriber")
            .field("name", &self.name)
            .field("slot", &self.slot)
            .field("delivery", &self.delivery)
            .field("seen", &self.seen)
            .finish()
    }
}

/// One received batch: derefs to the validated `&Archived<T>`, zero-copy. Its
/// region is released (the publisher may reuse it) when this guard is dropped.
pub struct Batch<'s, T: ShmArchivable> {
    archived: &'s Archived<T>,
    seq: u64,
    len: usize,
    ctl: &'s Control,
    slot: usize,
    delivery: Delivery,
}

impl<T: ShmArchivable> Batch<'_, T> {
    /// The batch's sequence number (1 for the first batch published).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Archive length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the archive has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<T: ShmArchivable> std::ops::Deref for Batch<'_, T> {
    type Target = Archived<T>;
    fn deref(&self) -> &Archived<T> {
        self.archived
    }
}

impl<T: ShmArchivable> Drop for Batch<'_, T> {
    fn drop(&mut self) {
        let s = &self.ctl.subs[self.slot];
        s[S_DONE].store(self.seq, SeqCst);
        if self.delivery == Delivery::Latest {
            s[S_PIN].store(0, SeqCst);
        }
        self.ctl.space.notify_all();
    }
}

impl<T: ShmArchivable> std::fmt::Debug for Batch<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("type", &std::any::type_name::<T>())
            .field("seq", &self.seq)
            .field("len", &self.len)
            .finish()
    }
}
