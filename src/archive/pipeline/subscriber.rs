//! The reading ends: subscribers and their received batches.

use std::marker::PhantomData;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rkyv::rancor;
use rkyv::Archived;

use super::*;
use crate::alloc::{BumpAllocator, FreeListAllocator, ShmAllocator};
use crate::archive::writer::type_tag;
use crate::process::fork_epoch;
use crate::typed::Root;

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
    /// Pinned modes: newest batches kept (see `Control::keep`); 0: Every + Block.
    keep: u64,
    /// Last sequence number handed out.
    seen: u64,
    /// Batches lost before the next one handed out (their segment was gone).
    lost: u64,
    /// Batches skipped in all.
    skipped: u64,
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
        let keep = c.keep.load(SeqCst);
        let keep_ok = match (delivery, keep) {
            (Delivery::Every, 0) => true,
            (Delivery::Latest, 0) | (Delivery::Latest, 2..) => false,
            (_, k) => k.saturating_add(max_subs as u64 + 1) <= regions as u64,
        };
        if !(2..=MAX_REGIONS).contains(&regions)
            || !(1..=MAX_SUBSCRIBERS).contains(&max_subs)
            || !keep_ok
        {
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
            keep,
            seen,
            lost: 0,
            skipped: 0,
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

    /// The next batch: in `Every` mode the one after the last received (with
    /// [`Backpressure::DropOldest`]: the oldest one kept, if that one is gone), in
    /// `Latest` mode the newest one not yet received; [`Batch::skipped`] tells
    /// how many were skipped before it. Blocks (futex, no polling) until there is
    /// one. The batch stays valid, and its region reserved, until the returned
    /// guard is dropped.
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
        let Some(f) = self.locate(timeout)? else {
            return Ok(None);
        };
        let c: &Control = &self.ctl;
        // SAFETY:
        // - `locate` checked (`ptr_at`) that `len` bytes at `ptr` lie inside the
        //   mapping, which `self.data` keeps alive while the returned `Batch`
        //   borrows `self`;
        // - no process writes these bytes while the slice lives: see "Why no
        //   subscriber reads a region being written" in the module docs (Every +
        //   Block: this subscriber's cursor is below `seq`; pinned modes: its pin,
        //   set before the region was seen holding `seq`).
        let bytes = unsafe { std::slice::from_raw_parts(f.ptr.as_ptr(), f.len) };
        let archived = match rkyv::access::<Archived<T>, rancor::Error>(bytes) {
            Ok(a) => a,
            Err(e) => {
                c.subs[self.slot][S_PIN].store(0, SeqCst);
                return Err(ArchiveError::Invalid {
                    offset: f.off,
                    len: f.len as u64,
                    reason: e.to_string(),
                }
                .into());
            }
        };
        let skipped = self.hand_out(f.seq);
        Ok(Some(Batch {
            archived,
            seq: f.seq,
            skipped,
            len: f.len,
            ctl: &self.ctl,
            slot: self.slot,
            pinned: self.keep != 0,
            fork: fork_epoch(),
        }))
    }

    /// The next batch (as [`recv`](Self::recv)), **copied out** of shared memory
    /// with byte-wise atomic loads, validated in the private copy and
    /// deserialised: the checked copy path, for a reader that does not trust
    /// every process with write access to the pipeline's segments (a scribbled
    /// control block can make the publisher rewrite a batch under a zero-copy
    /// view; here it gives an error or a wrong-but-valid `T`, never undefined
    /// behaviour). The batch is released before this returns. Returns the
    /// sequence number, the number skipped before it, and the value.
    ///
    /// # Errors
    /// As [`recv_timeout`](Self::recv_timeout), and [`PipelineError::Archive`]
    /// if the copy does not validate or deserialise.
    pub fn recv_copied(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<(u64, u64, T)>, PipelineError>
    where
        Archived<T>: rkyv::Deserialize<T, rkyv::api::high::HighDeserializer<rancor::Error>>,
    {
        let Some(f) = self.locate(Some(timeout))? else {
            return Ok(None);
        };
        let mut copy = rkyv::util::AlignedVec::<ARCHIVE_ALIGN>::with_capacity(f.len);
        copy.resize(f.len, 0);
        let copied = match self.data.as_ref() {
            Some(d) => crate::typed::raw::copy_bytes_out(&d.bump, Offset::new(f.off), &mut copy)
                .map_err(|e| PipelineError::Shm(e.into())),
            None => Err(PipelineError::Corrupt("no data segment mapped")),
        };
        // Released: the copy is private from here on.
        let skipped = self.hand_out(f.seq);
        release(&self.ctl, self.slot, f.seq, self.keep != 0);
        copied?;
        let value = rkyv::from_bytes::<T, rancor::Error>(&copy).map_err(|e| {
            PipelineError::Archive(ArchiveError::Invalid {
                offset: f.off,
                len: f.len as u64,
                reason: e.to_string(),
            })
        })?;
        Ok(Some((f.seq, skipped, value)))
    }

    /// Accounts batch `seq` as handed out; returns how many were skipped before it.
    fn hand_out(&mut self, seq: u64) -> u64 {
        let skipped = self.lost + (seq - self.seen - 1);
        self.lost = 0;
        self.skipped += skipped;
        self.seen = seq;
        skipped
    }

    /// Finds the next batch and reserves it (cursor below it, or pinned): its
    /// bytes are checked to lie inside the mapped data segment.
    fn locate(&mut self, timeout: Option<Duration>) -> Result<Option<Found>, PipelineError> {
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
                            self.publisher_gone();
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
            let (seq, r) = match self.keep {
                0 => {
                    let r = ((want - 1) % self.regions as u64) as usize;
                    // Its region is this subscriber's to read until it releases
                    // `want` (the publisher waits for its cursor).
                    if c.region[r][R_SEQ].load(SeqCst) != want {
                        return Err(PipelineError::Corrupt(
                            "region does not hold the published batch",
                        ));
                    }
                    (want, r)
                }
                keep => {
                    // The oldest batch kept, or `want` if it is newer. Pin it, then
                    // check that a region still holds it (Dekker with the publisher,
                    // which clears a region's number, then looks at the pins).
                    let seq = want.max(published.saturating_sub(keep - 1));
                    let s = &c.subs[self.slot];
                    s[S_PIN].store(seq, SeqCst);
                    match (0..self.regions).find(|&r| c.region[r][R_SEQ].load(SeqCst) == seq) {
                        Some(r) => (seq, r),
                        None => {
                            s[S_PIN].store(0, SeqCst);
                            continue; // replaced meanwhile: newer ones are published
                        }
                    }
                }
            };
            // Written before the region's number was published; stable while the
            // cursor (Every + Block) or the pin (seen after it) holds the region.
            let w = &c.region[r];
            let (gen, off, len) = (
                w[R_GEN].load(SeqCst),
                w[R_OFF].load(SeqCst),
                w[R_LEN].load(SeqCst),
            );
            let bytes = match Self::map(&mut self.data, &self.name, gen) {
                Ok(bump) => bump
                    .segment()
                    .ptr_at(off, len, ARCHIVE_ALIGN)
                    .map(|p| (p, len)),
                // The publisher replaced that segment (pinned modes): its batches
                // are lost to this subscriber (counted); go on with newer ones.
                Err(PipelineError::Segment(SegmentError::NotFound { .. })) if self.keep != 0 => {
                    c.subs[self.slot][S_PIN].store(0, SeqCst);
                    self.lost += seq - self.seen;
                    self.seen = seq;
                    continue;
                }
                Err(e) => {
                    c.subs[self.slot][S_PIN].store(0, SeqCst);
                    let tok = c.writer.load(SeqCst);
                    if matches!(e, PipelineError::Segment(SegmentError::NotFound { .. }))
                        && !u32::try_from(tok).is_ok_and(|t| self.ctl.allocator().token_alive(t))
                    {
                        // A dead publisher's segment, removed by the last
                        // subscriber out: the stream ends here.
                        self.publisher_gone();
                        return Err(PipelineError::PublisherGone);
                    }
                    return Err(e);
                }
            };
            let Some((ptr, len)) = bytes else {
                c.subs[self.slot][S_PIN].store(0, SeqCst);
                return Err(PipelineError::Corrupt("region outside the data segment"));
            };
            return Ok(Some(Found {
                seq,
                ptr,
                off,
                len: len as usize,
            }));
        }
    }
}

/// A batch located and reserved by [`Subscriber::locate`].
struct Found {
    seq: u64,
    ptr: std::ptr::NonNull<u8>,
    /// Offset of the archive bytes in the data segment.
    off: u64,
    len: usize,
}

/// Releases batch `seq` of subscriber slot `slot`: its cursor moves past it, and
/// in the pinned modes the pin is cleared.
fn release(ctl: &Control, slot: usize, seq: u64, pinned: bool) {
    let s = &ctl.subs[slot];
    s[S_DONE].store(seq, SeqCst);
    if pinned {
        s[S_PIN].store(0, SeqCst);
    }
    ctl.space.notify_all();
}

impl<T: ShmArchivable> Subscriber<T> {
    /// The publisher died: leave nothing of the pipeline behind. Every segment
    /// removes its name on last close, so this subscriber attaches to the current
    /// data segment (the last subscriber to close then removes it, with the
    /// control segment), and removes the names only a dead publisher could still
    /// use: the generation before the current one (no subscriber needs its
    /// batches any more, or has it mapped) and the one after (created, never
    /// announced).
    fn publisher_gone(&mut self) {
        let gen = self.control().gen.load(SeqCst);
        let _ = Self::map(&mut self.data, &self.name, gen);
        for g in [gen.wrapping_sub(1), gen.wrapping_add(1)] {
            if g != 0 {
                let _ = crate::unlink(&data_name(&self.name, g));
            }
        }
    }

    /// How many batches this subscriber skipped in all: lost to
    /// [`Backpressure::DropOldest`] or passed over by [`Delivery::Latest`]
    /// (always 0 for `Every` + `Block`).
    pub fn skipped(&self) -> u64 {
        self.skipped
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
            .field("skipped", &self.skipped)
            .finish()
    }
}

/// One received batch: derefs to the validated `&Archived<T>`, zero-copy. Its
/// region is released (the publisher may reuse it) when this guard is dropped.
///
/// A copy of a batch in a `fork` child protects nothing there (the pin is the
/// parent's): dereferencing it panics, and dropping it releases nothing.
pub struct Batch<'s, T: ShmArchivable> {
    archived: &'s Archived<T>,
    seq: u64,
    skipped: u64,
    len: usize,
    ctl: &'s Control,
    slot: usize,
    /// Released by clearing the pin (pinned modes), not only the cursor.
    pinned: bool,
    /// The fork epoch it was received in.
    fork: u64,
}

impl<T: ShmArchivable> Batch<'_, T> {
    /// The batch's sequence number (1 for the first batch published).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// How many batches this subscriber skipped right before this one: lost to
    /// [`Backpressure::DropOldest`], or passed over by [`Delivery::Latest`]
    /// (always 0 for `Every` + `Block`).
    pub fn skipped(&self) -> u64 {
        self.skipped
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
    #[inline]
    fn deref(&self) -> &Archived<T> {
        if self.fork != fork_epoch() {
            forked_batch();
        }
        self.archived
    }
}

#[cold]
#[inline(never)]
fn forked_batch() -> ! {
    panic!(
        "a pipeline batch copied into a fork child is not pinned there (the publisher \
         may overwrite it): open a subscriber in the child"
    )
}

impl<T: ShmArchivable> Drop for Batch<'_, T> {
    fn drop(&mut self) {
        if self.fork != fork_epoch() {
            return; // a fork child's copy: the cursor and pin are the parent's
        }
        release(self.ctl, self.slot, self.seq, self.pinned);
    }
}

impl<T: ShmArchivable> std::fmt::Debug for Batch<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("type", &std::any::type_name::<T>())
            .field("seq", &self.seq)
            .field("skipped", &self.skipped)
            .field("len", &self.len)
            .finish()
    }
}
