//! A segment's lifecycle: `open_or_create`, the opt-in "last handle out removes
//! the name" policy, and the removal of dead segments, all decided through the
//! process registry and one **lifecycle lock**, so none of them races an `open`.
//!
//! The lifecycle lock is an open-file-description lock (`F_OFD_SETLK`) on one byte
//! of the segment file, beside the registry's slot locks:
//!
//! - a handle **attaching** (creating or opening) holds it *shared* from before it
//!   joins the registry until it has joined and checked that the name still names
//!   the object it mapped (if not, the object was removed meanwhile: `open` reports
//!   [`SegmentError::NotFound`] and `open_or_create` starts over);
//! - a **remover** (the last handle closing under the policy, `shm-alloc rm` and
//!   `gc`, the removal of a stale half-initialised object) holds it *exclusive*
//!   while it checks that no live handle is attached, that the name still names
//!   this object, and removes the name.
//!
//! So a remover either sees the attaching handle's live slot (and keeps the name),
//! or finished before the handle checked the name (and the handle retries). The
//! kernel releases the lock of a process that dies, so a crash never blocks anyone;
//! every wait for it is bounded.
//!
//! **Remove on last close** ([`Segment::set_remove_on_last_close`]) is a flag in the
//! segment's header, so it holds for every handle in every process. A handle
//! dropping with the flag set removes the name when no other live handle is
//! attached. A process that is SIGKILLed runs no code: if it was the last one, the
//! name stays, with no live process attached, until `open_or_create` reuses it or
//! `shm-alloc gc` removes it. A tool that attaches to look (`shm-alloc info`) is a
//! handle like any other: if every other holder of a flagged segment is dead,
//! closing the tool's handle removes the name, as the policy says.
//!
//! **A crashed creator's half-initialised object** (the creator died between
//! `shm_open` and publishing the header) is *stale* when its header is not
//! published, it is older than [`STALE_GRACE`], no process holds its lifecycle lock
//! (a creator holds it shared until it has published and joined) and no registry
//! slot is held. [`remove_if_stale`] removes it; `open_or_create` does so by itself.

use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::time::{Duration, Instant, SystemTime};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::libc;
use nix::sys::mman::{shm_open, shm_unlink};
use nix::sys::stat::Mode;

use super::{
    check_owner_and_mode, io_err, name, os_err, AllocatorKind, CreateOptions, Layout, OpenOptions,
    RawHeader, Segment, MAGIC, ROOTS_OFFSET, STATE_READY,
};
use crate::error::SegmentError;

/// Offset of the lifecycle flags word: in the header block, after [`RawHeader`] and
/// before the named-roots area.
pub(crate) const FLAGS_WORD: u64 = 448;
const _: () = assert!(std::mem::size_of::<RawHeader>() as u64 <= FLAGS_WORD);
const _: () = assert!(FLAGS_WORD + 8 <= ROOTS_OFFSET);
const FLAG_REMOVE_ON_LAST_CLOSE: u64 = 1;

/// Whether handles this process opens from now on attach as observers.
static OBSERVER_MODE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// For tools that look at segments (`shm-alloc`): every handle this process
/// creates or opens afterwards is an **observer**. Observers hold a registry slot
/// like any handle (so they are safe to use), but the remove-on-last-close policy
/// neither counts them as attached nor lets them apply it: looking at a segment
/// never keeps its name alive, and never removes it.
#[doc(hidden)]
pub fn set_observer_mode(on: bool) {
    OBSERVER_MODE.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// The byte of the segment file whose OFD lock is the lifecycle lock (below the
/// registry's slot-lock bytes at 2^40; locks may lie beyond the end of the file).
const LIFECYCLE_LOCK: i64 = (1 << 40) - 4096;

/// How long a closing handle waits for the lifecycle lock before it gives up on
/// removing the name (it then stays, for `gc`).
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// A half-initialised object is never called stale before it is this old: the
/// creator takes the lifecycle lock a few microseconds after `shm_open`.
pub const STALE_GRACE: Duration = Duration::from_secs(1);

/// Takes (`kind` = `F_RDLCK` / `F_WRLCK`) or releases (`F_UNLCK`) the lifecycle
/// lock on `fd`'s open file description, retrying until `wait` has passed.
/// `Ok(false)`: another description holds a conflicting lock.
fn lifecycle_lock(fd: BorrowedFd<'_>, kind: i32, wait: Duration) -> Result<bool, SegmentError> {
    let fl = libc::flock {
        l_type: kind as i16,
        l_whence: libc::SEEK_SET as i16,
        l_start: LIFECYCLE_LOCK,
        l_len: 1,
        l_pid: 0,
    };
    let start = Instant::now();
    let mut pause = Duration::from_micros(50);
    loop {
        match fcntl(fd, FcntlArg::F_OFD_SETLK(&fl)) {
            Ok(_) => return Ok(true),
            Err(Errno::EAGAIN | Errno::EACCES) if start.elapsed() < wait => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(5));
            }
            Err(Errno::EAGAIN | Errno::EACCES) => return Ok(false),
            Err(errno) => {
                return Err(SegmentError::Os {
                    op: "fcntl(F_OFD_SETLK)",
                    errno,
                })
            }
        }
    }
}

fn lifecycle_unlock(fd: BorrowedFd<'_>) {
    let _ = lifecycle_lock(fd, libc::F_UNLCK, Duration::ZERO);
}

/// Whether the name `name` (normalised) names the object with inode `ino` now.
fn name_names(name: &str, ino: u64) -> bool {
    std::fs::metadata(format!("/dev/shm{name}")).is_ok_and(|m| m.ino() == ino)
}

impl Segment {
    /// Sets or clears the **remove on last close** policy for this segment (in
    /// every process): with it, the handle that closes while no other live handle
    /// is attached removes the name. Decided under the lifecycle lock, so it never
    /// races an `open` (see the [module docs](crate::segment::lifecycle)).
    ///
    /// ```
    /// use shared_allocator::prelude::*;
    /// # let name = format!("doc-lastclose-{}", std::process::id());
    /// let a = FreeListAllocator::create(&name, 1 << 20)?;
    /// a.segment().set_remove_on_last_close(true);
    /// let b = FreeListAllocator::open(&name)?;
    /// drop(a);
    /// assert!(FreeListAllocator::open(&name).is_ok()); // b is still attached
    /// drop(b);                                          // the last one out
    /// assert!(FreeListAllocator::open(&name).is_err());
    /// # Ok::<(), shared_allocator::Error>(())
    /// ```
    pub fn set_remove_on_last_close(&self, on: bool) {
        if let Some(w) = self.words(FLAGS_WORD, 1) {
            if on {
                w[0].fetch_or(
                    FLAG_REMOVE_ON_LAST_CLOSE,
                    std::sync::atomic::Ordering::AcqRel,
                );
            } else {
                w[0].fetch_and(
                    !FLAG_REMOVE_ON_LAST_CLOSE,
                    std::sync::atomic::Ordering::AcqRel,
                );
            }
        }
    }

    /// Whether the **remove on last close** policy is set; see
    /// [`set_remove_on_last_close`](Self::set_remove_on_last_close).
    pub fn removes_on_last_close(&self) -> bool {
        self.words(FLAGS_WORD, 1).is_some_and(|w| {
            w[0].load(std::sync::atomic::Ordering::Acquire) & FLAG_REMOVE_ON_LAST_CLOSE != 0
        })
    }

    /// Whether registry slot `slot` is held by an observer (see [`set_observer_mode`]).
    pub(crate) fn is_observer(&self, slot: usize) -> bool {
        crate::process::is_observer(self, slot)
    }

    /// The inode of the object this handle mapped: tells it from a later object
    /// under the same name. For tools and bindings.
    #[doc(hidden)]
    pub fn inode(&self) -> Option<u64> {
        self.ino()
    }

    /// The inode of the object this handle mapped.
    fn ino(&self) -> Option<u64> {
        self.file().metadata().ok().map(|m| m.ino())
    }

    /// Takes the lifecycle lock shared, before this handle joins the registry.
    pub(crate) fn attach_begin(&self, wait: Duration) -> Result<(), SegmentError> {
        if lifecycle_lock(self.file().as_fd(), libc::F_RDLCK, wait)? {
            crate::fail_point!("lifecycle.attach.before_join");
            Ok(())
        } else {
            Err(SegmentError::InitTimeout {
                name: self.name.clone(),
                waited_ms: wait.as_millis() as u64,
                creator_pid: 0,
                size: self.len(),
            })
        }
    }

    /// After joining: checks that the name still names this object (a remover
    /// finished before this handle joined, if not) and releases the lifecycle lock.
    ///
    /// # Errors
    /// [`SegmentError::NotFound`] when the object was removed meanwhile.
    pub(crate) fn attach_end(&self, slot: Option<usize>) -> Result<(), SegmentError> {
        // Under the shared lock, so no remover sees the slot live but unmarked.
        // (A mark names the slot's generation: whoever takes the slot next, by
        // any path, is no observer.)
        if let Some(s) = slot {
            if OBSERVER_MODE.load(std::sync::atomic::Ordering::Relaxed) {
                crate::process::mark_observer(self, s);
            }
        }
        let ok = self.ino().is_some_and(|ino| name_names(&self.name, ino));
        lifecycle_unlock(self.file().as_fd());
        if ok {
            Ok(())
        } else {
            Err(SegmentError::NotFound {
                name: self.name.clone(),
            })
        }
    }

    /// Opens `name` and takes the lifecycle lock shared (see [`attach_begin`]).
    pub(crate) fn open_attaching(
        name: &str,
        kind: AllocatorKind,
        opts: &OpenOptions,
    ) -> Result<Segment, SegmentError> {
        let seg = Segment::open(name, kind, opts)?;
        seg.attach_begin(opts.timeout)?;
        Ok(seg)
    }

    /// Creates `name` (see `Segment::create`) and takes the lifecycle lock shared
    /// until [`attach_end`](Self::attach_end): a creator that dies before it
    /// published is recognised as dead by [`remove_if_stale`].
    pub(crate) fn create_attaching(
        name: &str,
        layout: Layout,
        opts: &CreateOptions,
    ) -> Result<Segment, SegmentError> {
        let seg = Segment::create(name, layout, opts)?;
        if let Err(e) = seg.attach_begin(Duration::from_millis(100)) {
            let _ = shm_unlink(seg.name.as_str());
            return Err(e);
        }
        // Our magic and version at once (the state stays INIT until `publish`):
        // a creator that dies from here on leaves an object that tools recognise
        // as a half-initialised one of ours (`shm-alloc list`, `gc`).
        let h = seg.header();
        h.version
            .store(super::LAYOUT_VERSION, std::sync::atomic::Ordering::Relaxed);
        h.magic.store(MAGIC, std::sync::atomic::Ordering::Release);
        Ok(seg)
    }

    /// How a handle leaves: `leave` frees its registry slot `me`; with the policy
    /// set, under the lifecycle lock, and the name is removed if no live handle
    /// (observers aside) is left. An observer only leaves.
    pub(crate) fn close_with(&self, me: Option<usize>, leave: impl FnOnce()) {
        if !self.removes_on_last_close() || me.is_some_and(|s| self.is_observer(s)) {
            leave();
            return;
        }
        let locked =
            lifecycle_lock(self.file().as_fd(), libc::F_WRLCK, CLOSE_WAIT).unwrap_or(false);
        leave();
        if locked {
            if !crate::process::any_live(self, None, &|s| self.is_observer(s))
                && self.ino().is_some_and(|ino| name_names(&self.name, ino))
            {
                let _ = shm_unlink(self.name.as_str());
            }
            lifecycle_unlock(self.file().as_fd());
        }
    }

    /// Removes the name if no live handle (observers aside) other than the
    /// caller's own registry slot `me` is attached, under the lifecycle lock (so no `open` can attach between
    /// the check and the removal). Returns whether it removed the name.
    ///
    /// This is what `shm-alloc rm` (without `--force`) and `gc` use.
    ///
    /// # Errors
    /// An OS error from `fcntl` or `shm_unlink`; [`SegmentError::InitTimeout`] if the
    /// lifecycle lock stays taken for 2 s (handles are attaching or closing).
    #[doc(hidden)]
    pub fn remove_if_unattached(&self, me: Option<usize>) -> Result<bool, SegmentError> {
        self.remove_if_unattached_except(me, &|_| false)
    }

    /// [`remove_if_unattached`](Self::remove_if_unattached), also not counting the
    /// registry slots for which `skip` is true: for the Python package's `close()`,
    /// whose closed handles keep their slots until they are dropped.
    ///
    /// # Errors
    /// As [`remove_if_unattached`](Self::remove_if_unattached).
    #[doc(hidden)]
    pub fn remove_if_unattached_except(
        &self,
        me: Option<usize>,
        skip: &dyn Fn(usize) -> bool,
    ) -> Result<bool, SegmentError> {
        if !lifecycle_lock(self.file().as_fd(), libc::F_WRLCK, CLOSE_WAIT)? {
            return Err(SegmentError::InitTimeout {
                name: self.name.clone(),
                waited_ms: CLOSE_WAIT.as_millis() as u64,
                creator_pid: 0,
                size: self.len(),
            });
        }
        let result = (|| {
            if crate::process::any_live(self, me, &|s| skip(s) || self.is_observer(s)) {
                return Ok(false);
            }
            if !self.ino().is_some_and(|ino| name_names(&self.name, ino)) {
                return Ok(false); // removed or replaced meanwhile: not ours to remove
            }
            shm_unlink(self.name.as_str()).map_err(|e| os_err("shm_unlink", &self.name, e))?;
            Ok(true)
        })();
        lifecycle_unlock(self.file().as_fd());
        result
    }
}

impl Segment {
    /// [`remove_if_unattached`](Self::remove_if_unattached), not counting any
    /// handle of this very process: for an exit hook (the Python package's
    /// default), when this process's own handles are about to go anyway.
    ///
    /// # Errors
    /// As [`remove_if_unattached`](Self::remove_if_unattached).
    #[doc(hidden)]
    pub fn remove_unless_others_attached(&self) -> Result<bool, SegmentError> {
        let Some(ino) = self.ino() else {
            return Ok(false);
        };
        let mine = crate::process::own_slots(ino);
        if !lifecycle_lock(self.file().as_fd(), libc::F_WRLCK, CLOSE_WAIT)? {
            return Ok(false);
        }
        let removed =
            !crate::process::any_live(self, None, &|s| mine.contains(&s) || self.is_observer(s))
                && name_names(&self.name, ino)
                && shm_unlink(self.name.as_str()).is_ok();
        lifecycle_unlock(self.file().as_fd());
        Ok(removed)
    }
}

/// What [`remove_if_stale`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Staleness {
    /// A published segment (READY): never stale, whoever is attached.
    Published,
    /// Half-initialised and in use or too young to judge: left alone.
    Initialising,
    /// Half-initialised, its creator dead: the name was removed.
    Removed,
    /// The name no longer names the object that was examined (someone removed
    /// or replaced it meanwhile): look again.
    Changed,
}

/// Removes `name` if it is a crashed creator's half-initialised object: its header
/// is not published, it is older than [`STALE_GRACE`], no creator or opener holds
/// its lifecycle lock, and no registry slot of it is held. Decided under the
/// lifecycle lock, exclusive, so two callers never remove two different objects.
///
/// Only objects owned by this user and not writable by others are touched
/// ([`SegmentError::ForeignOwner`], [`SegmentError::InsecureMode`] otherwise);
/// an object that is not ours ([`SegmentError::BadMagic`]) is left alone.
///
/// # Errors
/// Those above, [`SegmentError::NotFound`], [`SegmentError::InvalidName`], OS errors.
pub fn remove_if_stale(name: &str) -> Result<Staleness, SegmentError> {
    stale(name, true)
}

/// What [`remove_if_stale`] would do now, without removing anything: `Removed`
/// means it would remove the name. The same checks under the same lock (taken and
/// released), so a live creator stopped mid-initialisation reads as
/// `Initialising` here as it does there. For `shm-alloc gc --dry-run`.
///
/// # Errors
/// As [`remove_if_stale`].
#[doc(hidden)]
pub fn would_remove_if_stale(name: &str) -> Result<Staleness, SegmentError> {
    stale(name, false)
}

fn stale(name: &str, remove: bool) -> Result<Staleness, SegmentError> {
    let name = name::normalize(name)?;
    let fd = shm_open(name.as_str(), OFlag::O_RDWR, Mode::empty())
        .map_err(|e| os_err("shm_open", &name, e))?;
    let file = std::fs::File::from(fd);
    check_owner_and_mode(&file, &name, &OpenOptions::default())?;
    let header = |file: &std::fs::File| -> Result<(u64, u32), SegmentError> {
        // magic at 0, state at 16 (see RawHeader); an object shorter than a header
        // reads as zeros.
        let mut b = [0u8; 24];
        let n = file.read_at(&mut b, 0).map_err(|e| io_err("pread", e))?;
        if n < b.len() {
            return Ok((0, 0));
        }
        let magic = u64::from_le_bytes(b[0..8].try_into().expect("8 bytes"));
        let state = u32::from_le_bytes(b[16..20].try_into().expect("4 bytes"));
        Ok((magic, state))
    };
    let (magic, state) = header(&file)?;
    if magic != 0 && magic != MAGIC {
        return Err(SegmentError::BadMagic { name, found: magic });
    }
    if magic == MAGIC && state == STATE_READY {
        return Ok(Staleness::Published);
    }
    let meta = file.metadata().map_err(|e| io_err("fstat", e))?;
    let changed =
        SystemTime::UNIX_EPOCH + Duration::new(meta.ctime() as u64, meta.ctime_nsec() as u32);
    if SystemTime::now()
        .duration_since(changed)
        .is_ok_and(|age| age < STALE_GRACE)
        || SystemTime::now() < changed
    {
        return Ok(Staleness::Initialising);
    }
    if !lifecycle_lock(file.as_fd(), libc::F_WRLCK, Duration::from_millis(200))? {
        return Ok(Staleness::Initialising);
    }
    let result = (|| {
        if !name_names(&name, meta.ino()) {
            return Ok(Staleness::Changed);
        }
        let (magic, state) = header(&file)?;
        if magic == MAGIC && state == STATE_READY {
            return Ok(Staleness::Published);
        }
        if crate::process::any_slot_locked(file.as_fd()) {
            return Ok(Staleness::Initialising);
        }
        if remove {
            shm_unlink(name.as_str()).map_err(|e| os_err("shm_unlink", &name, e))?;
        }
        Ok(Staleness::Removed)
    })();
    lifecycle_unlock(file.as_fd());
    result
}

/// The shared loop of every allocator's `open_or_create`: create; if the name
/// exists, remove it if stale, else open; if it vanished meanwhile, start over.
/// Returns the handle and whether this call created it.
pub(crate) fn open_or_create<A>(
    name: &str,
    opts: &OpenOptions,
    mut create: impl FnMut() -> Result<A, SegmentError>,
    mut open: impl FnMut() -> Result<A, SegmentError>,
) -> Result<(A, bool), SegmentError> {
    // Each round either returns or saw the name change (removed, replaced, stale):
    // a bound only against a peer that keeps removing it.
    let deadline = Instant::now() + opts.timeout * 4 + STALE_GRACE + Duration::from_secs(1);
    let mut last = None;
    loop {
        if Instant::now() >= deadline {
            return Err(last.unwrap_or(SegmentError::NotFound {
                name: name.to_owned(),
            }));
        }
        match create() {
            Ok(a) => return Ok((a, true)),
            Err(SegmentError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e),
        }
        match remove_if_stale(name) {
            Ok(Staleness::Removed | Staleness::Changed) | Err(SegmentError::NotFound { .. }) => {
                continue
            }
            Ok(Staleness::Published | Staleness::Initialising) => {}
            Err(e) => return Err(e),
        }
        match open() {
            Ok(a) => return Ok((a, false)),
            // Removed meanwhile (a last close, gc), or a crashed creator's object
            // that `remove_if_stale` removes on the next round.
            Err(e @ (SegmentError::NotFound { .. } | SegmentError::InitTimeout { .. })) => {
                last = Some(e);
            }
            // A creator died mid-initialisation and its object is younger than
            // STALE_GRACE: `remove_if_stale` removes it once the grace is over, so
            // wait it out (bounded by the deadline) instead of giving up.
            Err(e @ SegmentError::Uninitialized { .. }) => {
                last = Some(e);
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e),
        }
    }
}
