//! The mapped POSIX shared-memory object: create, open, unlink, and the only
//! place where offsets become pointers.
//!
//! A [`Segment`] is one `shm_open`ed object mapped shared read-write. It starts
//! with a header (see [`Layout`]); the rest belongs to the allocator that created
//! it. Closing is dropping the `Segment` (unmap); removing the name is
//! [`unlink`], separate and explicit, as in the seed package.
//! [`lifecycle`] adds `open_or_create`, the opt-in *remove on last close*
//! policy and the removal of dead segments; [`peek`] looks at `/dev/shm` without
//! opening anything.

mod header;
pub mod lifecycle;
mod name;
pub mod peek;
pub(crate) mod roots_table;

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{AccessError, WrongMode};
use std::time::{Duration, Instant};

use memmap2::MmapRaw;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::mman::{shm_open, shm_unlink};
use nix::sys::stat::Mode;

pub use header::{AllocatorKind, Layout};
pub(crate) use header::{RawHeader, STATE_INIT, STATE_READY};
pub(crate) use lifecycle::open_or_create;
pub use lifecycle::{
    remove_if_stale, set_observer_mode, would_remove_if_stale, Staleness, STALE_GRACE,
};
pub(crate) use header::{
    ALLOC_REGION_START, HEADER_REGION, LAYOUT_VERSION, MAGIC, REGISTRY_REGION, ROOTS_LEN,
    ROOTS_OFFSET,
};
pub use name::MAX_NAME_LEN;

/// Chunk size of the byte-wise atomic copies in `write_bytes` / `read_bytes`.
const BYTE_CHUNK: usize = 256;

/// Stores `data` at `dst` with byte-wise atomic stores (Relaxed), in chunks: the
/// copy every safe write into shared memory uses (crate `typed` docs, "No plain
/// stores").
///
/// # Safety
/// `dst` is valid for writes of `data.len()` bytes of a shared mapping that no
/// Rust reference of this process covers.
#[inline]
pub(crate) unsafe fn store_bytes(dst: *mut u8, data: &[u8]) {
    use std::sync::atomic::{AtomicU64, AtomicU8};
    // Bytes up to the first 8-aligned address, then whole aligned words (one
    // relaxed 8-byte atomic store each: a plain `mov`, so large copies run at
    // memory speed), then the tail: the same sizes `atomic-memcpy` uses.
    let head = dst.align_offset(8).min(data.len());
    let (front, rest) = data.split_at(head);
    for (i, &b) in front.iter().enumerate() {
        // SAFETY: `dst + i` is within the caller's `data.len()` bytes; any
        // address is aligned for AtomicU8; the store is atomic.
        unsafe { AtomicU8::from_ptr(dst.wrapping_add(i)) }.store(b, Ordering::Relaxed);
    }
    let words = rest.chunks_exact(8);
    let tail = words.remainder();
    let mut at = head;
    for w in words {
        let v = u64::from_ne_bytes(w.try_into().expect("chunks of 8"));
        // SAFETY: `dst + at` is 8-aligned (`head` aligned it and `at` advances
        // by 8) and its 8 bytes are within the caller's range; the store is atomic.
        unsafe { AtomicU64::from_ptr(dst.wrapping_add(at).cast::<u64>()) }.store(v, Ordering::Relaxed);
        at += 8;
    }
    for (i, &b) in tail.iter().enumerate() {
        // SAFETY: within the caller's range, as above.
        unsafe { AtomicU8::from_ptr(dst.wrapping_add(at + i)) }.store(b, Ordering::Relaxed);
    }
}

/// Loads `N` bytes at `src` into `dst[..N]` with byte-wise atomic loads (Relaxed).
///
/// # Safety
/// `src` is valid for reads of `N` bytes of a live mapping; `dst.len() >= N`.
#[inline(always)]
unsafe fn load_chunk<const N: usize>(src: *const u8, dst: &mut [u8]) {
    // SAFETY: the caller's guarantee; alignment 1; the loads are atomic.
    let c = unsafe { atomic_memcpy::atomic_load(src as *const [u8; N], Ordering::Relaxed) };
    // SAFETY: every byte came from initialised shared memory (the segment is
    // zero-filled at creation); any byte is a valid u8.
    dst[..N].copy_from_slice(&unsafe { c.assume_init() });
}

/// Offset of the segment's mode word: control word 2 of the typed layer's control
/// words at the start of the roots area (0 is the nonce counter, 1 the overflow).
pub(crate) const MODE_WORD: u64 = ROOTS_OFFSET + 16;

pub use crate::mode::SegmentMode;

use crate::error::SegmentError;

/// How a new segment is created.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// Permission bits of the object; applied with `fchmod`, so the umask cannot widen
    /// or narrow them. Default `0o600`: only this user may open the segment.
    pub mode: u32,
    /// What the segment's data is for, fixed at creation: [`SegmentMode::Raw`]
    /// (the raw offset API) or [`SegmentMode::Typed`] (typed handles), so that a
    /// use of the other kind is refused from the first call, in every process.
    /// [`SegmentMode::Unset`] (the default) leaves it to the first use.
    pub segment_mode: SegmentMode,
}

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions {
            mode: 0o600,
            segment_mode: SegmentMode::Unset,
        }
    }
}

impl CreateOptions {
    /// The defaults, with the segment fixed to typed handles
    /// ([`SegmentMode::Typed`]): `ShmBox`, `ShmVec`, archives, arenas, locks and
    /// channels; raw `write`/`free` are refused.
    pub fn typed() -> CreateOptions {
        CreateOptions {
            segment_mode: SegmentMode::Typed,
            ..CreateOptions::default()
        }
    }

    /// The defaults, with the segment fixed to the raw offset API
    /// ([`SegmentMode::Raw`]): `allocate`/`write`/`free` and `RelPtr::get` of
    /// atomics; typed handles are refused.
    pub fn raw() -> CreateOptions {
        CreateOptions {
            segment_mode: SegmentMode::Raw,
            ..CreateOptions::default()
        }
    }
}

/// How an existing segment is opened.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// How long `open` waits for a creator that is still initialising.
    pub timeout: Duration,
    /// Accept an object owned by another user. Off by default: in the
    /// world-writable `/dev/shm`, another user could have created the name first
    /// (squatting) and would control everything this process reads from it.
    pub allow_foreign_owner: bool,
    /// Accept an object whose mode lets users other than the owner's group write
    /// it (`o+w`). Off by default, for the same reason.
    pub allow_world_writable: bool,
    /// The mode the opener expects ([`SegmentMode::Raw`] or [`SegmentMode::Typed`]):
    /// a segment already in the other mode is [`SegmentError::WrongMode`] at
    /// `open`, one still undecided is fixed to it. `None` (the default) accepts
    /// either.
    pub segment_mode: Option<SegmentMode>,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            timeout: Duration::from_secs(2),
            allow_foreign_owner: false,
            allow_world_writable: false,
            segment_mode: None,
        }
    }
}

/// A mapped shared-memory object. Unmapped on drop; the name stays until [`unlink`].
///
/// The segment keeps a descriptor of its own for the process registry's liveness
/// locks (`crate::process`): a second open of the object, *not* the one that was
/// mapped. A mapping holds a reference to the open file description it was made
/// from, and a `fork` child inherits the mapping; if the locks were on that
/// description, a child would keep its dead parent's locks alive.
pub struct Segment {
    name: String,
    map: MmapRaw,
    layout: Layout,
    file: File,
    /// The creator's `shm_open` descriptor, whose open file description holds the
    /// init lock from right after `shm_open` until [`Segment::publish`] (then, and
    /// for opened segments, `None`).
    init: Option<File>,
    /// The mode this handle saw decided (`SegmentMode as u8`; 0: not yet). A
    /// decided mode never changes, so one local load answers later checks.
    mode_seen: std::sync::atomic::AtomicU8,
    /// Bytes of the data region this process has committed itself (`u64::MAX`: the
    /// allocator commits everything at create, or tracks nothing). Only bytes below
    /// it are touched through offsets (see [`Segment::data_usable`]).
    committed: AtomicU64,
    /// Where the allocator publishes how much of the data region is committed:
    /// `(offset of the shared word, shift to bytes)`; `None` for allocators that
    /// commit everything at create.
    commit_word: std::sync::OnceLock<(u64, u32)>,
    /// The segment's secret key (see [`Segment::archive_key`]): drawn by the
    /// creator, read once at open (a later scribble on the header changes nothing
    /// here).
    key: [u64; 2],
    /// [`Segment::id`], computed once from the key.
    id: u64,
}

/// A fresh open file description of the object behind `file` (never shared with the
/// mapping). Through `/proc/self/fd`, which names the same object even if it was
/// unlinked or its name re-used meanwhile.
/// Byte of the object that its creator locks (OFD write lock) from `shm_open` until
/// the header is published: an opener that finds the header unpublished and this
/// byte unlocked knows nobody is initialising the object (not one of ours, or its
/// creator died) and fails at once instead of waiting. Just below the registry's
/// liveness lock bytes (`crate::process`); `fcntl` locks may lie beyond EOF.
const INIT_LOCK_BYTE: i64 = (1 << 40) - 1;

/// How long `open` still waits for a header while nobody holds the init lock: only
/// the few instructions between a creator's `shm_open` and its taking the lock.
const UNLOCKED_GRACE: Duration = Duration::from_millis(100);

/// Sets (`F_WRLCK`), releases (`F_UNLCK`) or, with `get`, queries the init lock.
/// Returns the lock type found by a query (`F_UNLCK` when nobody holds it).
fn init_lock(file: &File, l_type: i16, get: bool) -> Result<i16, Errno> {
    use nix::fcntl::{fcntl, FcntlArg};
    use std::os::fd::AsFd;
    let mut fl = nix::libc::flock {
        l_type,
        l_whence: nix::libc::SEEK_SET as i16,
        l_start: INIT_LOCK_BYTE,
        l_len: 1,
        l_pid: 0,
    };
    if get {
        fcntl(file.as_fd(), FcntlArg::F_OFD_GETLK(&mut fl))?;
    } else {
        fcntl(file.as_fd(), FcntlArg::F_OFD_SETLK(&fl))?;
    }
    Ok(fl.l_type)
}

/// Whether some process holds the init lock of the object behind `file`. An error
/// of the query counts as held (keep waiting, bounded by the open timeout).
fn being_initialised(file: &File) -> bool {
    !matches!(
        init_lock(file, nix::libc::F_WRLCK as i16, true),
        Ok(t) if t == nix::libc::F_UNLCK as i16
    )
}

/// Whether `open` should give up on an unpublished object: nobody holds its init
/// lock, after the grace period, on two passes in a row (`seen` carries the first).
fn nobody_initialising(file: &File, start: Instant, seen: &mut bool) -> bool {
    if start.elapsed() < UNLOCKED_GRACE || being_initialised(file) {
        *seen = false;
        return false;
    }
    std::mem::replace(seen, true)
}

fn lock_description(file: &File) -> Result<File, SegmentError> {
    use std::os::fd::AsRawFd;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .map_err(|e| io_err("open(/proc/self/fd)", e))
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment")
            .field("name", &self.name)
            .field("len", &self.map.len())
            .field("layout", &self.layout)
            .finish()
    }
}

fn os_err(op: &'static str, name: &str, errno: Errno) -> SegmentError {
    match errno {
        Errno::EEXIST => SegmentError::AlreadyExists {
            name: name.to_owned(),
        },
        Errno::ENOENT => SegmentError::NotFound {
            name: name.to_owned(),
        },
        Errno::EACCES | Errno::EPERM => SegmentError::PermissionDenied {
            name: name.to_owned(),
        },
        errno => SegmentError::Os { op, errno },
    }
}

fn io_err(op: &'static str, e: std::io::Error) -> SegmentError {
    SegmentError::Os {
        op,
        errno: Errno::from_raw(e.raw_os_error().unwrap_or(0)),
    }
}

/// The owner uid of the object `name` in /dev/shm, if it can be seen.
fn owner_of(name: &str) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/dev/shm{name}"))
        .ok()
        .map(|m| m.uid())
}

/// Refuses objects owned by another user or writable by everyone, unless asked to accept them.
fn check_owner_and_mode(file: &File, name: &str, opts: &OpenOptions) -> Result<(), SegmentError> {
    use std::os::unix::fs::MetadataExt;
    let meta = file.metadata().map_err(|e| io_err("fstat", e))?;
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me && !opts.allow_foreign_owner {
        return Err(SegmentError::ForeignOwner {
            name: name.to_owned(),
            owner: meta.uid(),
            expected: me,
        });
    }
    if meta.mode() & 0o002 != 0 && !opts.allow_world_writable {
        return Err(SegmentError::InsecureMode {
            name: name.to_owned(),
            mode: meta.mode() & 0o7777,
        });
    }
    Ok(())
}

/// Removes the name `name` from the system. Mappings that are open stay valid
/// until they are dropped; new `open`s fail with [`SegmentError::NotFound`].
///
/// # Errors
/// [`SegmentError::InvalidName`], [`SegmentError::NotFound`], or an OS error.
pub fn unlink(name: &str) -> Result<(), SegmentError> {
    let name = name::normalize(name)?;
    shm_unlink(name.as_str()).map_err(|e| os_err("shm_unlink", &name, e))
}

/// Removes a segment's name when dropped, also while a panic unwinds: the way to
/// make sure a program or test leaves nothing behind in `/dev/shm`.
///
/// ```
/// use shared_allocator::prelude::*;
/// use shared_allocator::segment::UnlinkGuard;
/// # let name = format!("doc-guard-{}", std::process::id());
/// let alloc = FreeListAllocator::create(&name, 1 << 20)?;
/// let _cleanup = UnlinkGuard::new(&name); // removed at the end of scope, whatever happens
/// # Ok::<(), shared_allocator::Error>(())
/// ```
#[derive(Debug)]
pub struct UnlinkGuard(String);

impl UnlinkGuard {
    /// Guards the segment `name`.
    pub fn new(name: impl Into<String>) -> UnlinkGuard {
        UnlinkGuard(name.into())
    }
}

impl Drop for UnlinkGuard {
    fn drop(&mut self) {
        // Already removed (an explicit unlink ran first) is fine.
        let _ = unlink(&self.0);
    }
}

/// 128 unpredictable bits: SipHash outputs under the standard library's randomly
/// seeded (per thread, from the OS) `RandomState` keys.
fn random_key() -> [u64; 2] {
    use std::hash::BuildHasher;
    let s = std::collections::hash_map::RandomState::new();
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    [
        s.hash_one((0u8, t, std::process::id())),
        s.hash_one((1u8, t, std::process::id())),
    ]
}

/// The segment id for `key`: a keyed hash (reveals nothing of the key), never 0.
fn segment_id(key: [u64; 2]) -> u64 {
    use std::hash::Hasher;
    #[allow(deprecated)] // SipHash-2-4, see `archive::writer::checksum`
    let mut h = std::hash::SipHasher::new_with_keys(key[0], key[1]);
    h.write(b"segment id");
    h.finish() | 1
}

impl Segment {
    /// Creates a new object `name` of `layout.total_size` bytes with `O_EXCL`, maps it,
    /// and returns it still in the INIT state: the caller writes its metadata and then
    /// calls [`Segment::publish`]. On any failure the name is removed again.
    pub(crate) fn create(
        name: &str,
        layout: Layout,
        opts: &CreateOptions,
    ) -> Result<Segment, SegmentError> {
        let name = name::normalize(name)?;
        layout.validate()?;
        let key = random_key();
        if opts.mode & !0o777 != 0 {
            return Err(SegmentError::InvalidParameter {
                what: "mode",
                value: u64::from(opts.mode),
            });
        }
        let mode = Mode::from_bits_truncate(opts.mode as nix::libc::mode_t);
        let fd = shm_open(
            name.as_str(),
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR,
            mode,
        )
        .map_err(|e| match e {
            // Someone else's object under this name is squatting, not "ours, exists".
            Errno::EEXIST => match owner_of(&name) {
                Some(uid) if uid != nix::unistd::geteuid().as_raw() => SegmentError::ForeignOwner {
                    name: name.clone(),
                    owner: uid,
                    expected: nix::unistd::geteuid().as_raw(),
                },
                _ => os_err("shm_open", &name, e),
            },
            e => os_err("shm_open", &name, e),
        })?;
        let file = File::from(fd);
        let result = (|| {
            // First, before the object has a size: openers wait while this is held.
            init_lock(&file, nix::libc::F_WRLCK as i16, false).map_err(|errno| {
                SegmentError::Os {
                    op: "fcntl(F_OFD_SETLK)",
                    errno,
                }
            })?;
            // The umask may have narrowed (or a strange one widened) the mode: set it exactly.
            file.set_permissions(std::fs::Permissions::from_mode(opts.mode))
                .map_err(|e| io_err("fchmod", e))?;
            file.set_len(layout.total_size)
                .map_err(|e| io_err("ftruncate", e))?;
            let map = MmapRaw::map_raw(&file).map_err(|e| io_err("mmap", e))?;
            Ok((map, lock_description(&file)?))
        })();
        let result = result.and_then(|(map, lock_file)| {
            let seg = Segment {
                name: name.clone(),
                map,
                layout,
                file: lock_file,
                init: Some(file),
                mode_seen: Default::default(),
                committed: AtomicU64::new(u64::MAX),
                commit_word: Default::default(),
                key,
                id: segment_id(key),
            };
            // The header and the registry are touched at once: commit them now, so
            // a full file system is an error here and never a SIGBUS later.
            seg.commit(0, ALLOC_REGION_START.min(layout.total_size))?;
            match opts.segment_mode {
                SegmentMode::Unset => Ok(seg),
                // A fresh, unpublished segment: the mode word is still 0.
                m @ (SegmentMode::Raw | SegmentMode::Typed) => {
                    seg.claim_mode(m)
                        .map_err(|_| SegmentError::InvalidParameter {
                            what: "segment_mode",
                            value: m as u64,
                        })?;
                    Ok(seg)
                }
                SegmentMode::Corrupted => Err(SegmentError::InvalidParameter {
                    what: "segment_mode",
                    value: SegmentMode::Corrupted as u64,
                }),
            }
        });
        match result {
            Ok(seg) => Ok(seg),
            Err(e) => {
                let _ = shm_unlink(name.as_str());
                Err(e)
            }
        }
    }

    /// Commits the bytes `offset..offset + len` of the object (whole pages around
    /// them) with `fallocate`: afterwards the file system backs them, so touching
    /// them cannot raise `SIGBUS`. Idempotent and cheap where pages are already
    /// backed. A file system without `fallocate` (`EOPNOTSUPP`) commits nothing and
    /// reports success: there, as with any sparse file, a page it cannot back later
    /// still faults.
    ///
    /// # Errors
    /// [`SegmentError::Os`] with `op: "fallocate"` (`ENOSPC`: the file system is full,
    /// e.g. a small `/dev/shm`), or [`SegmentError::InvalidParameter`] for a range
    /// past the mapping.
    pub(crate) fn commit(&self, offset: u64, len: u64) -> Result<(), SegmentError> {
        use nix::fcntl::{fallocate, FallocateFlags};
        if len == 0 {
            return Ok(());
        }
        let end = offset.checked_add(len).filter(|&e| e <= self.len()).ok_or(
            SegmentError::InvalidParameter {
                what: "commit range",
                value: offset,
            },
        )?;
        let start = offset / 4096 * 4096;
        let end = end.div_ceil(4096).saturating_mul(4096).min(self.len());
        for _ in 0..64 {
            let r = fallocate(
                &self.file,
                FallocateFlags::empty(),
                start as i64,
                (end - start) as i64,
            );
            match r {
                Ok(()) | Err(Errno::EOPNOTSUPP) => return Ok(()),
                Err(Errno::EINTR) => continue,
                Err(errno) => {
                    return Err(SegmentError::Os {
                        op: "fallocate",
                        errno,
                    })
                }
            }
        }
        Err(SegmentError::Os {
            op: "fallocate",
            errno: Errno::EINTR,
        })
    }

    /// Makes offsets into the data region usable only up to what the allocator
    /// committed: the shared word at `word` (in the metadata region) holds the
    /// committed length of the data region in units of `1 << shift` bytes. The
    /// allocator calls this once, before it hands out anything.
    pub(crate) fn track_commit(&self, word: u64, shift: u32) {
        if self.commit_word.set((word, shift)).is_ok() {
            self.committed.store(0, Ordering::Release);
        }
    }

    /// Records that this process committed the data region up to byte `end`
    /// (relative to the data region).
    pub(crate) fn note_committed(&self, end: u64) {
        if self.commit_word.get().is_some() {
            self.committed.fetch_max(end, Ordering::AcqRel);
        }
    }

    /// Whether data-region bytes below `end` (relative) may be touched: committed by
    /// this process, or committed by another one (the shared word says so), which
    /// this process then commits too (cheap: the pages are backed already), so that
    /// a scribbled word can never make it touch a page the file system may not back.
    #[inline]
    pub(crate) fn data_usable(&self, end: u64) -> bool {
        end <= self.committed.load(Ordering::Acquire) || self.data_usable_slow(end)
    }

    #[cold]
    fn data_usable_slow(&self, end: u64) -> bool {
        let Some(&(word, shift)) = self.commit_word.get() else {
            return true;
        };
        let l = self.layout;
        let Some(w) = self.words(word, 1) else {
            return false;
        };
        let shared = w[0]
            .load(Ordering::Acquire)
            .checked_shl(shift)
            .unwrap_or(u64::MAX)
            .min(l.data_len);
        let have = self.committed.load(Ordering::Acquire).min(shared);
        if end > shared || self.commit(l.data_offset + have, shared - have).is_err() {
            return false;
        }
        self.committed.fetch_max(shared, Ordering::AcqRel);
        true
    }

    /// Publishes the header: after this, `open` in any process succeeds.
    pub(crate) fn publish(&mut self) {
        let h = self.header();
        for (slot, k) in h.archive_key.iter().zip(self.key) {
            slot.store(k, Ordering::Relaxed);
        }
        // (`write_to` publishes READY with Release: openers see the key too.)
        self.layout.write_to(h);
        if let Some(f) = self.init.take() {
            // Released after the header is written: an opener that sees the lock
            // free re-reads the header and finds it published. (Closing `f` would
            // not release it: the mapping keeps the open file description.)
            let _ = init_lock(&f, nix::libc::F_UNLCK as i16, false);
        }
    }

    /// The secret key of this segment's arena archive checksums: unknown to
    /// every process that reaches the segment only through this crate's API
    /// (see `crate::archive`, "Arena archives from numbers").
    #[cfg_attr(not(feature = "rkyv"), allow(dead_code))] // (archives)
    pub(crate) fn archive_key(&self) -> [u64; 2] {
        self.key
    }

    /// A number that tells this segment from every other (a keyed hash: it
    /// reveals nothing of the key); never 0. The same in every handle and process.
    #[inline]
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Opens the object `name`, waits (bounded) until its creator published it, and
    /// validates the header against `kind` and the object's real size.
    pub(crate) fn open(
        name: &str,
        kind: AllocatorKind,
        opts: &OpenOptions,
    ) -> Result<Segment, SegmentError> {
        let name = name::normalize(name)?;
        let fd = shm_open(name.as_str(), OFlag::O_RDWR, Mode::empty())
            .map_err(|e| os_err("shm_open", &name, e))?;
        let mut file = File::from(fd);
        check_owner_and_mode(&file, &name, opts)?;
        let start = Instant::now();
        let mut pause = Duration::from_micros(50);
        // Set when a pass found the init lock free: the next pass (which re-reads the
        // header, published before the lock is released) decides.
        let mut unlocked_seen = false;
        loop {
            let size = file.metadata().map_err(|e| io_err("fstat", e))?.len();
            if size >= HEADER_REGION {
                crate::fail_point!("segment.open.before_map");
                let map = MmapRaw::map_raw(&file).map_err(|e| io_err("mmap", e))?;
                let mapped = map.len() as u64;
                // A peer may have truncated the object between the fstat and the
                // mapping: never read a header the mapping does not hold.
                if mapped < HEADER_REGION {
                    return Err(SegmentError::Truncated {
                        name,
                        size: mapped,
                        needed: HEADER_REGION,
                    });
                }
                let provisional = Segment {
                    name: name.clone(),
                    map,
                    file,
                    init: None,
                    mode_seen: Default::default(),
                    committed: AtomicU64::new(u64::MAX),
                    commit_word: Default::default(),
                    key: [0; 2],
                    id: 0,
                    layout: Layout {
                        kind,
                        total_size: mapped,
                        meta_offset: HEADER_REGION,
                        meta_len: 0,
                        data_offset: HEADER_REGION,
                        data_len: 0,
                        params: [0; 4],
                    },
                };
                let h = provisional.header();
                let magic = h.magic.load(Ordering::Relaxed);
                let state = h.state.load(Ordering::Acquire);
                if magic != 0 && magic != MAGIC {
                    return Err(SegmentError::BadMagic { name, found: magic });
                }
                if state == STATE_READY && magic == MAGIC {
                    let layout = Layout::read_from(h, kind, mapped)?;
                    let file = lock_description(&provisional.file)?;
                    // (Published before READY, which the Acquire above saw.)
                    let key = h.archive_key.each_ref().map(|k| k.load(Ordering::Relaxed));
                    let seg = Segment {
                        layout,
                        file,
                        key,
                        id: segment_id(key),
                        ..provisional
                    };
                    seg.expect_mode(opts)?;
                    return Ok(seg);
                }
                if state != STATE_INIT && state != STATE_READY {
                    return Err(SegmentError::CorruptHeader {
                        reason: "unknown init state",
                    });
                }
                if start.elapsed() >= opts.timeout {
                    return Err(SegmentError::InitTimeout {
                        name,
                        waited_ms: start.elapsed().as_millis() as u64,
                        creator_pid: h.creator_pid.load(Ordering::Relaxed),
                        size,
                    });
                }
                file = provisional.file;
                if nobody_initialising(&file, start, &mut unlocked_seen) {
                    return Err(SegmentError::Uninitialized { name, size });
                }
            } else if nobody_initialising(&file, start, &mut unlocked_seen) {
                return Err(SegmentError::Uninitialized { name, size });
            } else if start.elapsed() >= opts.timeout {
                return Err(SegmentError::InitTimeout {
                    name,
                    waited_ms: start.elapsed().as_millis() as u64,
                    creator_pid: 0,
                    size,
                });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(10));
        }
    }

    /// Checks (and, if undecided, fixes) the mode `opts` expects, at `open`.
    pub(crate) fn expect_mode(&self, opts: &OpenOptions) -> Result<(), SegmentError> {
        let Some(want) = opts.segment_mode else {
            return Ok(());
        };
        let wrong = |found| SegmentError::WrongMode(WrongMode {
            expected: want,
            found,
        });
        if !matches!(want, SegmentMode::Raw | SegmentMode::Typed) {
            return Err(SegmentError::InvalidParameter {
                what: "segment_mode",
                value: want as u64,
            });
        }
        self.claim_mode(want).map_err(|_| wrong(self.mode()))
    }

    /// The normalised name (`/name`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The validated layout of this segment (not public API: the regions are the
    /// allocators' business; sizes are in `stats()`).
    #[doc(hidden)]
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Size of the mapping in bytes.
    pub fn len(&self) -> u64 {
        self.map.len() as u64
    }

    /// Always false: a segment holds at least its header.
    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }

    /// Removes this segment's name (see [`unlink`]). The mapping stays valid.
    ///
    /// # Errors
    /// [`SegmentError::NotFound`] if it was already removed.
    pub fn unlink(&self) -> Result<(), SegmentError> {
        unlink(&self.name)
    }

    /// The address of the mapping in this process.
    pub(crate) fn base_addr(&self) -> usize {
        self.map.as_ptr() as usize
    }

    /// The segment's own descriptor (the registry locks bytes of it).
    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// The process registry region (validated at create/open to lie inside the
    /// mapping: every layout starts allocator metadata after it).
    pub(crate) fn registry_words(&self) -> &[AtomicU64] {
        self.words(HEADER_REGION, REGISTRY_REGION / 8)
            .expect("layout validation keeps the registry inside the mapping")
    }

    pub(crate) fn header(&self) -> &RawHeader {
        const _: () = assert!(std::mem::align_of::<RawHeader>() <= 4096);
        // SAFETY:
        // - every Segment maps at least HEADER_REGION bytes (create validates the layout,
        //   open checks the size first), which holds a RawHeader (asserted in header.rs);
        // - the mapping is page-aligned, so offset 0 satisfies RawHeader's alignment;
        // - RawHeader is all atomics, valid for every bit pattern, and only ever accessed
        //   atomically, so concurrent writes by other processes are not data races;
        // - the reference borrows `self`, so the mapping outlives it.
        unsafe { &*(self.map.as_ptr() as *const RawHeader) }
    }

    /// Returns the pointer to `len` bytes at `offset`, if they lie inside the mapping
    /// and `offset` is a multiple of `align` (a power of two).
    #[inline]
    pub(crate) fn ptr_at(&self, offset: u64, len: u64, align: usize) -> Option<NonNull<u8>> {
        debug_assert!(align.is_power_of_two());
        let end = offset.checked_add(len)?;
        if end > self.len() || offset & (align as u64 - 1) != 0 {
            return None;
        }
        // `offset < len()` fits in usize because the mapping does.
        NonNull::new(self.map.as_mut_ptr().wrapping_add(offset as usize))
    }

    /// The `count` atomic words starting at `offset`, if inside the mapping and 8-aligned.
    #[inline]
    pub(crate) fn words(&self, offset: u64, count: u64) -> Option<&[AtomicU64]> {
        let len = count.checked_mul(8)?;
        let p = self.ptr_at(offset, len, 8)?;
        // SAFETY:
        // - `ptr_at` checked that `count * 8` bytes at `offset` are inside the mapping
        //   and 8-aligned; AtomicU64 has the size and alignment of u64;
        // - any bit pattern is a valid AtomicU64, and these words are only accessed
        //   atomically (by every process running this library), so sharing is sound;
        // - the slice borrows `self`, so the mapping outlives it.
        Some(unsafe { std::slice::from_raw_parts(p.as_ptr() as *const AtomicU64, count as usize) })
    }

    /// Copies `data` into the mapping at `offset` with byte-wise atomic stores
    /// (after a Release fence): two processes writing, or one writing while another
    /// copies out, are never a data race. Bounds are checked against the mapping;
    /// the caller checks against the block.
    #[inline]
    pub(crate) fn write_bytes(&self, offset: u64, data: &[u8]) -> bool {
        let Some(p) = self.ptr_at(offset, data.len() as u64, 1) else {
            return false;
        };
        std::sync::atomic::fence(Ordering::Release);
        // SAFETY: `ptr_at` checked `data.len()` bytes at `p` inside the live mapping.
        unsafe { store_bytes(p.as_ptr(), data) };
        true
    }

    /// Copies `buf.len()` bytes at `offset` out of the mapping with byte-wise
    /// atomic loads, then an Acquire fence.
    pub(crate) fn read_bytes(&self, offset: u64, buf: &mut [u8]) -> bool {
        let Some(p) = self.ptr_at(offset, buf.len() as u64, 1) else {
            return false;
        };
        let (mut src, mut dst) = (p.as_ptr() as *const u8, buf);
        while dst.len() >= BYTE_CHUNK {
            // SAFETY: `src..src + dst.len()` lies within the checked bytes.
            unsafe { load_chunk::<BYTE_CHUNK>(src, dst) };
            (src, dst) = (src.wrapping_add(BYTE_CHUNK), &mut dst[BYTE_CHUNK..]);
        }
        macro_rules! tail {
            ($($n:literal)*) => {$(
                if dst.len() >= $n {
                    // SAFETY: as above; `dst.len() >= $n`.
                    unsafe { load_chunk::<$n>(src, dst) };
                    (src, dst) = (src.wrapping_add($n), &mut dst[$n..]);
                }
            )*};
        }
        tail!(128 64 32 16 8 4 2 1);
        let _ = (src, dst);
        std::sync::atomic::fence(Ordering::Acquire);
        true
    }

    /// What this segment's data is used for: decided by its first use, never
    /// changed; see [`SegmentMode`].
    pub fn mode(&self) -> SegmentMode {
        match self
            .words(MODE_WORD, 1)
            .map(|w| w[0].load(Ordering::Acquire))
        {
            Some(0) => SegmentMode::Unset,
            Some(1) => SegmentMode::Raw,
            Some(2) => SegmentMode::Typed,
            _ => SegmentMode::Corrupted,
        }
    }

    /// Decides the segment's mode as [`SegmentMode::Raw`] if it is unset; an error
    /// in a segment of typed handles. What every access to a block's bytes outside
    /// the typed API checks first (raw `write` and `free`, and bindings that hand out
    /// views of raw bytes, such as the Python package's `view()`, read-only ones
    /// included: a typed segment's blocks are not plain memory).
    ///
    /// # Errors
    /// [`AccessError::WrongMode`] in a typed segment.
    pub(crate) fn require_raw(&self) -> Result<(), AccessError> {
        self.claim_mode(SegmentMode::Raw)
    }

    /// Decides the segment's mode as `want` if it is unset; errors if it was
    /// decided otherwise.
    #[inline]
    pub(crate) fn claim_mode(&self, want: SegmentMode) -> Result<(), AccessError> {
        if self.mode_seen.load(Ordering::Relaxed) == want as u8 {
            return Ok(());
        }
        self.claim_mode_slow(want)
    }

    #[cold]
    fn claim_mode_slow(&self, want: SegmentMode) -> Result<(), AccessError> {
        let r = self.claim_mode_shared(want);
        if r.is_ok() {
            self.mode_seen.store(want as u8, Ordering::Relaxed);
        }
        r
    }

    fn claim_mode_shared(&self, want: SegmentMode) -> Result<(), AccessError> {
        let Some(w) = self.words(MODE_WORD, 1) else {
            return Err(AccessError::Corrupted {
                what: "segment mode word outside the mapping",
            });
        };
        let want_word = want as u64;
        let found = match w[0].load(Ordering::Acquire) {
            v if v == want_word => return Ok(()),
            0 => match w[0].compare_exchange(0, want_word, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok(()),
                Err(v) if v == want_word => return Ok(()),
                Err(_) => self.mode(),
            },
            _ => self.mode(),
        };
        if found == SegmentMode::Corrupted {
            return Err(AccessError::Corrupted {
                what: "segment mode word",
            });
        }
        Err(AccessError::WrongMode(WrongMode {
            expected: want,
            found,
        }))
    }
}
