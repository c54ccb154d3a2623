//! The writing end: region claims, growth, close.

use std::marker::PhantomData;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::time::Instant;

use super::writer::serialize_into;
use super::*;
use crate::alloc::{BumpAllocator, FreeListAllocator, ShmAllocator};
use crate::archive::writer::type_tag;
use crate::typed::Root;

/// The writing end of a pipeline (one per pipeline). Dropping it closes the
/// stream (as [`close`](Publisher::close), ignoring errors).
pub struct Publisher<T: PipelineBatch> {
    ctl: Root<Control, Arc<FreeListAllocator>>,
    name: String,
    opts: PipelineOptions,
    regions: usize,
    /// Pinned modes: newest batches kept (see `Control::keep`); 0: Every + Block.
    keep: u64,
    data: Data,
    /// The previous data segment after a growth and the last batch published in
    /// it, until no kept batch lives there (then its name is removed).
    retired: Option<(Data, u64)>,
    closed: bool,
    /// The process that created it (a fork child's copy must not act).
    pid: u32,
    _type: PhantomData<fn(&T)>,
}

impl<T: PipelineBatch> Publisher<T> {
    /// Creates the pipeline `name` (its control and first data segment).
    ///
    /// # Errors
    /// [`PipelineError::BadOption`] (also for a `region_capacity` whose regions
    /// overflow the address space), or segment errors (e.g. the name exists).
    pub fn create(name: &str, opts: PipelineOptions) -> Result<Self, PipelineError> {
        if !(1..=MAX_SUBSCRIBERS).contains(&opts.max_subscribers) {
            return Err(PipelineError::BadOption("max_subscribers"));
        }
        let (regions, keep) = match (opts.delivery, opts.backpressure) {
            (Delivery::Every, Backpressure::Block) if (2..=MAX_REGIONS).contains(&opts.regions) => {
                (opts.regions, 0)
            }
            (Delivery::Every, Backpressure::DropOldest)
                if opts.regions >= 1 && opts.regions + opts.max_subscribers < MAX_REGIONS =>
            {
                (opts.regions + opts.max_subscribers + 1, opts.regions as u64)
            }
            (Delivery::Every, _) => return Err(PipelineError::BadOption("regions")),
            (Delivery::Latest, _) => (opts.max_subscribers + 2, 1),
        };
        let ctl_seg = Arc::new(FreeListAllocator::create(name, 256 << 10)?);
        // A killed publisher runs no code: its subscribers remove the names.
        ctl_seg.segment().set_remove_on_last_close(true);
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
        c.keep.store(keep, SeqCst);
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
            keep,
            data,
            retired: None,
            closed: false,
            pid: std::process::id(),
            _type: PhantomData,
        })
    }

    fn new_data(name: &str, gen: u64, regions: usize, cap: usize) -> Result<Data, PipelineError> {
        let too_big = PipelineError::BadOption("region_capacity");
        let block = block_len(cap).ok_or(too_big.clone())?;
        let size = block
            .checked_mul(regions)
            .and_then(|b| b.checked_add(64 << 10))
            .and_then(|s| u64::try_from(s).ok())
            .filter(|&s| s <= i64::MAX as u64)
            .ok_or(too_big)?;
        let bump = BumpAllocator::create(&data_name(name, gen), size)?;
        bump.segment().set_remove_on_last_close(true);
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
        match self.keep {
            0 => {
                let r = ((seq - 1) % self.regions as u64) as usize;
                self.wait_released(seq.saturating_sub(self.regions as u64))?;
                c.region[r][R_SEQ].store(0, SeqCst);
                Ok(r)
            }
            keep => {
                let latest = c.published.load(SeqCst);
                for r in 0..self.regions {
                    let old = c.region[r][R_SEQ].load(SeqCst);
                    if old != 0 && old + keep > latest {
                        continue; // one of the `keep` newest batches
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
                // Each subscriber pins one region, `keep` hold the newest: cannot
                // happen unless the control block was damaged.
                Err(PipelineError::Corrupt("no free region"))
            }
        }
    }

    /// Serialises `value` straight into a free region and publishes it. In
    /// `Every` mode with [`Backpressure::Block`] this first waits (up to the
    /// timeout) until the region's previous batch is released by every live
    /// subscriber; the other modes never wait. A batch larger than the regions
    /// moves the pipeline to a larger data segment.
    ///
    /// # Errors
    /// [`PipelineError::Timeout`] (nothing published; retry or give up),
    /// [`PipelineError::Forked`] in a fork child's copy, serialisation or
    /// segment errors ([`PipelineError::BadOption`] if a region would outgrow
    /// the address space).
    pub fn publish(&mut self, value: &T) -> Result<u64, PipelineError> {
        self.check_fork()?;
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
                return Err(crate::archive::writer::nondeterministic::<T>(len).into());
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
        if self
            .retired
            .as_ref()
            .is_some_and(|(_, last)| seq >= last + self.keep.max(1))
        {
            // No kept batch lives there any more. Subscribers that mapped it keep
            // their mapping; the others now find newer batches than any of its own.
            if let Some((old, _)) = self.retired.take() {
                let _ = old.bump.unlink();
            }
        }
        Ok(seq)
    }

    /// Moves to a data segment whose regions hold `len` bytes.
    fn grow(&mut self, seq: u64, len: usize) -> Result<(), PipelineError> {
        if self.keep == 0 {
            // Nobody may still need a batch of the old segment.
            self.wait_released(seq - 1)?;
        }
        let cap = len.max(self.data.cap.saturating_mul(2));
        let gen = self.data.gen + 1;
        let data = Self::new_data(&self.name, gen, self.regions, cap)?;
        let old = std::mem::replace(&mut self.data, data);
        self.control().gen.store(gen, SeqCst);
        if let Some((older, _)) = self.retired.replace((old, seq - 1)) {
            let _ = older.bump.unlink();
        }
        Ok(())
    }

    /// Waits (up to the timeout) until every live subscriber has released the
    /// last batch published (`Every`: every batch).
    ///
    /// # Errors
    /// [`PipelineError::Timeout`], [`PipelineError::Forked`] in a fork child.
    pub fn flush(&self) -> Result<(), PipelineError> {
        self.check_fork()?;
        self.wait_released(self.published())
    }

    /// [`PipelineError::Forked`] in a fork child's copy: the stream is the
    /// parent's (two writers would overwrite batches subscribers hold).
    fn check_fork(&self) -> Result<(), PipelineError> {
        if self.pid != std::process::id() {
            return Err(PipelineError::Forked(self.pid));
        }
        Ok(())
    }

    /// Ends the stream: waits (up to the timeout) until every live subscriber has
    /// released the last batch (`Every`: every batch), then marks the pipeline
    /// closed and removes its names. Subscribers' `recv` then returns `None`.
    ///
    /// # Errors
    /// [`PipelineError::Forked`] in a fork child's copy (which closes nothing);
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
        // A fork child's copy closes and removes nothing of the parent's.
        self.check_fork()?;
        // Both modes: every live subscriber gets the last batch before the end.
        let drained = self.wait_released(self.published());
        let c = self.control();
        c.closed.store(1, SeqCst);
        c.data.notify_all();
        let _ = self.data.bump.unlink();
        if let Some((old, _)) = self.retired.take() {
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
