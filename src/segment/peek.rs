//! What is in `/dev/shm`, without opening anything: each object's owner, mode and
//! size, and for objects this user owns and nobody else may write, the header
//! fields that tell whether it is one of ours (for `shm-alloc list` and `gc`).
//!
//! Reading a header here is a `pread` of its first bytes through a read-only
//! descriptor: nothing is mapped, no registry slot is taken, nothing is written.
//! Objects owned by another user or writable by everyone are reported from
//! `fstat` alone and never read.

use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::time::{Duration, SystemTime};

use super::{io_err, name, AllocatorKind, MAGIC, STATE_READY};
use crate::error::SegmentError;

/// Where POSIX shared-memory objects live on Linux.
pub const SHM_DIR: &str = "/dev/shm";

/// What [`peek`] could tell about an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeekKind {
    /// Owned by another user: not read (it could be anything, and its owner
    /// controls every byte of it).
    ForeignOwner,
    /// Writable by every user: not read (any user could have forged it).
    WorldWritable,
    /// Readable and not one of ours (no magic), or unreadable.
    NotOurs,
    /// Starts with our magic.
    Ours(HeaderPeek),
}

/// The header fields of one of our objects, as read (not validated beyond the magic).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderPeek {
    /// Layout version in the header (this build opens its own `LAYOUT_VERSION` only).
    pub version: u32,
    /// Allocator kind, if known to this build.
    pub kind: Option<AllocatorKind>,
    /// Whether the creator published the header (false: being created, or its
    /// creator died half-way: see [`super::remove_if_stale`]).
    pub ready: bool,
    /// The creator's pid, in its own pid namespace (for people).
    pub creator_pid: u64,
}

/// One object in `/dev/shm`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peek {
    /// Its name in the `/name` form.
    pub name: String,
    /// Owner uid.
    pub uid: u32,
    /// Permission bits.
    pub mode: u32,
    /// Size in bytes.
    pub size: u64,
    /// Time since its status last changed (creation, resize, chmod).
    pub age: Duration,
    /// What it is.
    pub kind: PeekKind,
}

/// Looks at the object `name` without opening it as a segment.
///
/// # Errors
/// [`SegmentError::InvalidName`], [`SegmentError::NotFound`], OS errors.
pub fn peek(name: &str) -> Result<Peek, SegmentError> {
    let name = name::normalize(name)?;
    let path = format!("{SHM_DIR}{name}");
    let meta = std::fs::symlink_metadata(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => SegmentError::NotFound { name: name.clone() },
        _ => io_err("lstat", e),
    })?;
    let me = nix::unistd::geteuid().as_raw();
    let changed = SystemTime::UNIX_EPOCH
        + Duration::new(meta.ctime().max(0) as u64, meta.ctime_nsec() as u32);
    let mut p = Peek {
        name,
        uid: meta.uid(),
        mode: meta.mode() & 0o7777,
        size: meta.len(),
        age: SystemTime::now()
            .duration_since(changed)
            .unwrap_or_default(),
        kind: PeekKind::NotOurs,
    };
    if !meta.file_type().is_file() {
        return Ok(p);
    }
    if meta.uid() != me {
        p.kind = PeekKind::ForeignOwner;
        return Ok(p);
    }
    if meta.mode() & 0o002 != 0 {
        p.kind = PeekKind::WorldWritable;
        return Ok(p);
    }
    let Ok(file) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(&path)
    else {
        return Ok(p);
    };
    // magic (0), version (8), kind (12), state (16), total_size (24), creator_pid (32).
    let mut b = [0u8; 40];
    if !matches!(file.read_at(&mut b, 0), Ok(40)) {
        return Ok(p);
    }
    let word = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
    let half = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
    if word(0) != MAGIC {
        return Ok(p);
    }
    p.kind = PeekKind::Ours(HeaderPeek {
        version: half(8),
        kind: AllocatorKind::from_raw(half(12)),
        ready: half(16) == STATE_READY,
        creator_pid: word(32),
    });
    Ok(p)
}

/// Every object in `/dev/shm` whose name starts with `prefix` (without the
/// leading `/`), sorted by name; see [`peek`]. Objects that vanish while listing
/// are left out.
///
/// # Errors
/// An OS error reading the directory.
pub fn list(prefix: &str) -> Result<Vec<Peek>, SegmentError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(SHM_DIR).map_err(|e| io_err("readdir(/dev/shm)", e))? {
        let Ok(entry) = entry else { continue };
        let Some(n) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if !n.starts_with(prefix) {
            continue;
        }
        if let Ok(p) = peek(&n) {
            out.push(p);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}
