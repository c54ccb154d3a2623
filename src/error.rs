//! Error types, one per family of operations.
//!
//! Each enum says what failed and carries the numbers needed to act on it
//! (requested and available bytes, the offending offset, expected versus found).
//! [`enum@Error`] unites them for callers that just want `?` to work everywhere.

use thiserror::Error;

/// Creating, opening or removing a shared segment failed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SegmentError {
    /// The segment name is not a valid POSIX shared-memory name.
    #[error("invalid segment name {name:?}: {reason}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// `create` found an object with this name already (it is never silently reused).
    #[error("shared memory segment {name:?} already exists")]
    AlreadyExists {
        /// The normalised name (with its leading `/`).
        name: String,
    },
    /// `open` or `unlink` found no object with this name.
    #[error("shared memory segment {name:?} does not exist")]
    NotFound {
        /// The normalised name.
        name: String,
    },
    /// The object exists but this process may not open it.
    #[error("permission denied for shared memory segment {name:?}")]
    PermissionDenied {
        /// The normalised name.
        name: String,
    },
    /// A creation parameter is out of range.
    #[error("invalid parameter: {what} (got {value})")]
    InvalidParameter {
        /// Which parameter.
        what: &'static str,
        /// The rejected value.
        value: u64,
    },
    /// The object never became ready: its creator is slow, died while
    /// initialising, or the object is not one of ours.
    #[error("segment {name:?} not ready after {waited_ms} ms (creator pid {creator_pid}, size {size} bytes)")]
    InitTimeout {
        /// The normalised name.
        name: String,
        /// How long `open` waited.
        waited_ms: u64,
        /// The pid recorded by the creator, 0 if none was written.
        creator_pid: u64,
        /// The object's size when `open` gave up.
        size: u64,
    },
    /// The object has no published header and no process is initialising it: it
    /// is not a segment of this library (an all-zero or empty object), or its
    /// creator died before publishing it. Reported after a short grace period
    /// instead of the whole open timeout.
    #[error("segment {name:?} ({size} bytes) is not initialised and no process is initialising it: not a shared_allocator segment, or its creator died while creating it")]
    Uninitialized {
        /// The normalised name.
        name: String,
        /// The object's size in bytes.
        size: u64,
    },
    /// The object does not start with our magic number: not a segment of this library.
    #[error("segment {name:?} has bad magic {found:#018x}: not a shared_allocator segment")]
    BadMagic {
        /// The normalised name.
        name: String,
        /// The value found where the magic belongs.
        found: u64,
    },
    /// The segment was written by another layout version of this library.
    #[error("segment layout version mismatch: expected {expected}, found {found}")]
    VersionMismatch {
        /// The version this build understands.
        expected: u32,
        /// The version in the segment.
        found: u32,
    },
    /// The segment was created (or first used) for the other kind of API than
    /// [`OpenOptions::segment_mode`](crate::segment::OpenOptions) expects.
    #[error(transparent)]
    WrongMode(#[from] WrongMode),
    /// The segment holds another allocator kind than the one asked for.
    #[error("segment holds a {found} allocator, not a {expected} allocator")]
    WrongKind {
        /// The kind asked for.
        expected: &'static str,
        /// The kind in the header (or `"unknown"`).
        found: &'static str,
    },
    /// The object's real size disagrees with the size in its header (truncated or grown).
    #[error("segment size mismatch: header says {header} bytes, object has {actual} bytes")]
    SizeMismatch {
        /// Size recorded in the header.
        header: u64,
        /// Size reported by `fstat`.
        actual: u64,
    },
    /// A header field is inconsistent (regions overlap, out of range, misaligned).
    #[error("corrupt segment header: {reason}")]
    CorruptHeader {
        /// Which check failed.
        reason: &'static str,
    },
    /// The object belongs to another user: someone else may have created the name
    /// first (squatting in the world-writable `/dev/shm`). Opening it anyway needs
    /// `OpenOptions::allow_foreign_owner`.
    #[error("segment {name:?} is owned by uid {owner}, not by this user (uid {expected})")]
    ForeignOwner {
        /// The normalised name.
        name: String,
        /// The object's owner.
        owner: u32,
        /// This process's effective uid.
        expected: u32,
    },
    /// The object is writable by every user (`o+w`). Opening it anyway needs
    /// `OpenOptions::allow_world_writable`.
    #[error("segment {name:?} has mode {mode:#o}, writable by every user")]
    InsecureMode {
        /// The normalised name.
        name: String,
        /// The object's permission bits.
        mode: u32,
    },
    /// The object is shorter than a segment header (a peer truncated it, possibly
    /// while this process was opening it).
    #[error("segment {name:?} is truncated: {size} bytes mapped, at least {needed} needed")]
    Truncated {
        /// The normalised name.
        name: String,
        /// Bytes that were mapped.
        size: u64,
        /// Bytes a header needs.
        needed: u64,
    },
    /// Every slot of the segment's process registry is held by a live handle.
    #[error("process registry full: all {slots} slots are held by live handles")]
    RegistryFull {
        /// Number of slots.
        slots: usize,
    },
    /// Every intent record of this handle's registry slot is in use by its other
    /// threads (more than 12 threads of one process
    /// in multi-step operations through one handle at once), past a short wait.
    #[error("all {records} intent records of this handle are in use by its other threads")]
    IntentsBusy {
        /// Intent records per handle.
        records: usize,
    },
    /// This process holds [`MAX_HANDLES`](crate::process::MAX_HANDLES) handles
    /// already (over all segments): no more can join a registry.
    #[error("this process holds {limit} handles already")]
    HandleLimit {
        /// Handles per process.
        limit: usize,
    },
    /// This handle no longer holds its registry lock, so it refuses to work rather
    /// than share its slot with another holder: its lock descriptor was closed under
    /// it, or it is a fork child that could not get a lock description of its own
    /// (no `/proc`, the re-open refused). Open the segment again.
    #[error("this handle lost its registry lock: {reason}")]
    LockLost {
        /// What happened.
        reason: &'static str,
    },
    /// This machine lacks something the allocator needs.
    #[error("unsupported on this machine: {what}")]
    Unsupported {
        /// What is missing.
        what: &'static str,
    },
    /// An operating-system call failed for another reason.
    #[error("{op} failed: {errno}")]
    Os {
        /// The call that failed.
        op: &'static str,
        /// The error it returned.
        errno: nix::errno::Errno,
    },
}

/// A call of one segment mode on a segment fixed in the other (see
/// [`SegmentMode`](crate::mode::SegmentMode)): the one shape of this mistake, in
/// [`SegmentError`] (at open), [`AllocError`], [`AccessError`] and [`FreeError`].
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq, Hash)]
#[error("the segment is in {found} mode; this needs {expected} mode (a segment's mode is fixed when it is created or first used)")]
pub struct WrongMode {
    /// The mode the call needs.
    pub expected: crate::mode::SegmentMode,
    /// The segment's mode.
    pub found: crate::mode::SegmentMode,
}

/// An allocation request was refused. Nothing in the segment changed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AllocError {
    /// A request for zero bytes.
    #[error("zero-size allocation requested")]
    ZeroSize,
    /// The alignment is not a power of two or exceeds what the allocator supports.
    #[error("unsupported alignment {align} (must be a power of two, at most {max})")]
    BadAlignment {
        /// The alignment asked for.
        align: usize,
        /// The largest alignment this allocator supports.
        max: usize,
    },
    /// The request can never succeed in this allocator (larger than a slot, or than the segment).
    #[error("request of {requested} bytes exceeds the largest possible block of {max} bytes")]
    TooLarge {
        /// Bytes asked for.
        requested: u64,
        /// The largest block this allocator can hand out.
        max: u64,
    },
    /// Not enough free memory right now.
    #[error("out of memory: requested {requested} bytes, {available} bytes available")]
    OutOfMemory {
        /// Bytes asked for.
        requested: u64,
        /// Free bytes at the time of the failure (possibly fragmented).
        available: u64,
    },
    /// Allocator metadata in the segment is inconsistent (a peer scribbled on it).
    #[error("allocator metadata is corrupt: {what}")]
    Corrupted {
        /// What was found inconsistent.
        what: &'static str,
    },
    /// A bump reset in progress did not end within the allocation's wait.
    #[error("a reset in progress did not end in time")]
    Busy,
    /// A raw allocation in a segment of typed handles (see
    /// [`SegmentMode`](crate::mode::SegmentMode)): raw `write` and `free` are
    /// refused there, so the block could never be freed.
    #[error(transparent)]
    WrongMode(#[from] WrongMode),
    /// The handle's place in the process registry failed: the registry is full
    /// (a fork child re-joining), its intent records are all in use, or it lost its
    /// registry lock (see [`SegmentError`]). Nothing in the segment changed. (Boxed:
    /// the error stays small, and so does every allocation's `Result`.)
    #[error("process registry: {0}")]
    Registry(Box<SegmentError>),
}

/// A read, write or pointer resolution was refused. Nothing in the segment changed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AccessError {
    /// Offset 0 is the header and never a block: the null handle.
    #[error("null offset")]
    Null,
    /// The range is not inside the segment's data region.
    #[error("range {offset}+{len} is outside the data region [{start}, {end})")]
    OutOfBounds {
        /// Start of the range.
        offset: u64,
        /// Length of the range.
        len: u64,
        /// First byte of the data region.
        start: u64,
        /// One past the last byte of the data region.
        end: u64,
    },
    /// The range is not inside one live block.
    #[error("range {offset}+{len} is not inside one allocated block")]
    NotAllocated {
        /// Start of the range.
        offset: u64,
        /// Length of the range.
        len: u64,
    },
    /// The offset is not aligned for the type being resolved.
    #[error("offset {offset} is not aligned to {align}")]
    Misaligned {
        /// The offset.
        offset: u64,
        /// The alignment required.
        align: usize,
    },
    /// The handle was taken before a bump reset: its bytes may have been reused.
    #[error("stale handle: taken in epoch {handle_epoch}, allocator is in epoch {current_epoch}")]
    Stale {
        /// Epoch recorded in the handle.
        handle_epoch: u64,
        /// Epoch of the allocator now.
        current_epoch: u64,
    },
    /// The segment is used the other way (see
    /// [`SegmentMode`](crate::mode::SegmentMode)): a raw write to a segment of
    /// typed handles, or a typed handle in a segment the raw API writes.
    #[error(transparent)]
    WrongMode(#[from] WrongMode),
    /// A bump reset and views of the region met: a reset whose wait ended while
    /// `readers` other handles still held views (it withdrew: nothing changed), or
    /// (`readers == 0`) a view that waited too long for a reset in progress.
    #[error("busy: {readers} other handle(s) hold views of the region")]
    Busy {
        /// Handles (in any process) holding views when the wait ended.
        readers: u32,
    },
    /// [`Arena::reset`](crate::Arena::reset) through an allocator handle others
    /// share (a `&BumpAllocator`, or an `Arc<BumpAllocator>` with other clones):
    /// a reset through a handle does not wait for that handle's own views, so it
    /// needs the only one. Reset through the owner, or drop the other clones.
    #[error("reset needs the only handle of the bump allocator; this one is shared")]
    SharedHandle,
    /// The offset is not the start of a live block (allocator metadata says so):
    /// what a token or a handle built from numbers gets when its offset points
    /// inside a block, at a freed block, or anywhere else.
    #[error("offset {offset} is not the start of a live block")]
    NotBlockStart {
        /// The offset.
        offset: u64,
    },
    /// A view was asked of a handle rebuilt from numbers that nothing vouches for
    /// (e.g. [`ArenaPtr::from_parts`](crate::ArenaPtr::from_parts)): such handles
    /// give copies (`read`), not views.
    #[error("the handle at offset {offset} was rebuilt from numbers: it gives copies, not views")]
    Unverified {
        /// The offset.
        offset: u64,
    },
    /// A raw write or view that reaches a named root's block: roots are reached
    /// only through `root` (a lock's or channel's bytes only through its own API).
    #[error("raw access to offset {offset} refused: it is inside a named root's block")]
    Root {
        /// Start of the refused range.
        offset: u64,
    },
    /// A handle copied into a `fork` child: ownership and views stay with the
    /// process that made them (the child's copy would be a second owner).
    #[error("this handle was made in the parent process before fork (fork epoch {handle_epoch}, this process {current_epoch})")]
    Forked {
        /// Fork epoch recorded in the handle.
        handle_epoch: u64,
        /// This process's fork epoch.
        current_epoch: u64,
    },
    /// The pointer's block was freed (and maybe reused) since the pointer was
    /// made: its generation no longer matches the block's.
    #[error("stale pointer to offset {offset}: generation {pointer} but the block is in generation {block}")]
    StaleGeneration {
        /// Block offset.
        offset: u64,
        /// Generation in the pointer.
        pointer: u64,
        /// Generation found in the block header (0 if the block is not live).
        block: u64,
    },
    /// Allocator metadata in the segment is inconsistent.
    #[error("allocator metadata is corrupt: {what}")]
    Corrupted {
        /// What was found inconsistent.
        what: &'static str,
    },
}

/// An arena allocation failed: the bump allocator is full (or its metadata
/// damaged), or the region could not be pinned (a reset in progress for too
/// long, a segment of the raw API). Converts into [`enum@Error`] with `?`. (A small
/// error of plain values: returning it costs the arena's fast path nothing.)
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ArenaError {
    /// See [`AllocError`].
    #[error(transparent)]
    Alloc(#[from] AllocError),
    /// See [`AccessError`].
    #[error(transparent)]
    Access(#[from] AccessError),
}

impl From<ArenaError> for Error {
    fn from(e: ArenaError) -> Error {
        match e {
            ArenaError::Alloc(e) => Error::Alloc(e),
            ArenaError::Access(e) => Error::Access(e),
        }
    }
}

/// A `free` was refused. Nothing in the segment changed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FreeError {
    /// Offset 0 (null) was freed.
    #[error("free of the null offset")]
    Null,
    /// The offset is outside the data region.
    #[error("offset {offset} is outside the data region")]
    OutOfRange {
        /// The offset.
        offset: u64,
    },
    /// The offset is inside the data region but is not the start of a block.
    #[error("offset {offset} is not the start of a block")]
    NotBlockStart {
        /// The offset.
        offset: u64,
    },
    /// The block at this offset is not allocated (freed twice, or never handed out).
    #[error("double free (or free of an unallocated block) at offset {offset}")]
    DoubleFree {
        /// The offset.
        offset: u64,
    },
    /// The block is a named root's: roots are never freed (other processes hold
    /// references from `root` that carry no pin).
    #[error("raw free refused: the block at offset {offset} is a named root's")]
    Root {
        /// The offset.
        offset: u64,
    },
    /// A raw free in a segment of typed handles (see
    /// [`SegmentMode`](crate::mode::SegmentMode)): typed blocks are freed by
    /// their handles.
    #[error(transparent)]
    WrongMode(#[from] WrongMode),
    /// Allocator metadata in the segment is inconsistent.
    #[error("allocator metadata is corrupt: {what}")]
    Corrupted {
        /// What was found inconsistent.
        what: &'static str,
    },
    /// The handle's place in the process registry failed: its intent records are
    /// all in use, or it lost its registry lock (see [`SegmentError`]). The block
    /// was not freed. (Boxed: the error stays small.)
    #[error("process registry: {0}")]
    Registry(Box<SegmentError>),
}

impl AccessError {
    /// Whether this is a stale-handle error (taken before a bump reset).
    pub fn is_stale(&self) -> bool {
        matches!(self, AccessError::Stale { .. })
    }

    /// Whether this is a [`AccessError::Busy`] (a reset and views met).
    pub fn is_busy(&self) -> bool {
        matches!(self, AccessError::Busy { .. })
    }
}

/// A hand-over token was refused: ownership did not move, nothing changed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenError {
    /// The token was already redeemed (or the block was freed or reused since):
    /// a token transfers ownership exactly once.
    #[error("token for the block at offset {offset} was already taken (claim word {found:#x})")]
    AlreadyClaimed {
        /// Block offset from the token.
        offset: u64,
        /// The block's claim word now.
        found: u64,
    },
    /// The block holds another type than the token's (layout fingerprints differ).
    #[error("the block at offset {offset} holds fingerprint {found:#018x}, not a {expected} ({expected_fingerprint:#018x})")]
    TypeMismatch {
        /// Block offset from the token.
        offset: u64,
        /// The type asked for.
        expected: &'static str,
        /// Its fingerprint.
        expected_fingerprint: u64,
        /// The fingerprint stored in the block.
        found: u64,
    },
    /// The token does not resolve to live, in-bounds memory.
    #[error(transparent)]
    Access(#[from] AccessError),
}

/// An archive operation failed. Nothing in the segment changed, except that a
/// failed arena write may leave its block used until the next reset.
#[cfg(feature = "rkyv")]
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ArchiveError {
    /// The allocator refused the block.
    #[error(transparent)]
    Alloc(#[from] AllocError),
    /// The token does not resolve to live, in-bounds memory, or is stale
    /// ([`AccessError::Stale`]: the arena was reset since).
    #[error(transparent)]
    Access(#[from] AccessError),
    /// The hand-over was refused: the token was taken already, or names another type.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The value's `Serialize` implementation failed.
    #[error("serializing a {type_name} failed: {reason}")]
    Serialize {
        /// The type being archived.
        type_name: &'static str,
        /// rkyv's message.
        reason: String,
    },
    /// The token does not point at an archive block (bad magic, misaligned).
    #[error("no archive block at offset {offset}: {reason}")]
    BadHeader {
        /// The block offset from the token.
        offset: u64,
        /// What was wrong.
        reason: &'static str,
    },
    /// The block holds an archive of another type.
    #[error("archive at offset {offset} holds another type (tag {found:#018x}), not {expected} (tag {expected_tag:#018x})")]
    TypeMismatch {
        /// The block offset.
        offset: u64,
        /// The type asked for.
        expected: &'static str,
        /// Its tag.
        expected_tag: u64,
        /// The tag in the block.
        found: u64,
    },
    /// The archive bytes do not match the checksum written with them.
    #[error("archive at offset {offset} ({len} bytes) is corrupt: checksum {found:#018x}, header says {expected:#018x}")]
    Checksum {
        /// The block offset.
        offset: u64,
        /// Archive length from the header.
        len: u64,
        /// Checksum in the header.
        expected: u64,
        /// Checksum of the bytes.
        found: u64,
    },
    /// bytecheck rejected the archive: it is not a valid `Archived<T>`.
    #[error("archive at offset {offset} ({len} bytes) failed validation: {reason}")]
    Invalid {
        /// The block offset.
        offset: u64,
        /// Archive length from the header.
        len: u64,
        /// bytecheck's message.
        reason: String,
    },
    /// Deserializing into an owned value failed.
    #[error("deserializing a {type_name} failed: {reason}")]
    Deserialize {
        /// The type being rebuilt.
        type_name: &'static str,
        /// rkyv's message.
        reason: String,
    },
}

#[cfg(feature = "rkyv")]
impl ArchiveError {
    /// Whether this is a stale-handle error (the arena was reset since the token was made).
    pub fn is_stale(&self) -> bool {
        matches!(self, ArchiveError::Access(AccessError::Stale { .. }))
    }
}

/// A channel call failed: the value-free summary of the channel's own errors
/// ([`TrySendError`](crate::channel::TrySendError),
/// [`SendTimeoutError`](crate::channel::SendTimeoutError),
/// [`TryRecvError`](crate::channel::TryRecvError),
/// [`RecvTimeoutError`](crate::channel::RecvTimeoutError),
/// [`EndpointError`](crate::channel::EndpointError)), which `?` turns into
/// [`Error::Channel`] (a value that was not sent is dropped then: match the
/// specific error to get it back).
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChannelError {
    /// The channel was full (`try_send`).
    #[error("the channel is full")]
    Full,
    /// Nothing was queued (`try_recv`).
    #[error("the channel is empty")]
    Empty,
    /// The timeout passed (`send`/`recv` with a timeout).
    #[error("timed out waiting on the channel")]
    Timeout,
    /// Every endpoint on the other side is gone (dropped, or its process died).
    #[error("every endpoint on the other side of the channel is gone")]
    Disconnected,
    /// The channel's words hold values no correct peer writes.
    #[error("the channel's shared state is corrupted")]
    Corrupted,
    /// Every endpoint entry is held by a live endpoint.
    #[error("the channel already has {max} live endpoints")]
    TooManyEndpoints {
        /// The size of the endpoint table.
        max: usize,
    },
}

/// A [`ShmMutex`](crate::ShmMutex) could not give a clean guard. `Send + Sync +
/// 'static`: it holds no guard (the lock is released when it is made).
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LockError {
    /// A previous holder died (or panicked) while holding the lock and nobody has
    /// marked the data consistent since. Repair it with
    /// [`ShmMutex::lock_or_repair`](crate::ShmMutex::lock_or_repair) or
    /// [`ShmMutex::lock_robust`](crate::ShmMutex::lock_robust).
    #[error("a previous holder of the shared mutex died (or panicked) while holding it; the data needs repair (lock_or_repair)")]
    OwnerDied,
    /// A live owner holds the lock and `try_lock` does not wait.
    #[error("the shared mutex is held by a live owner")]
    WouldBlock,
    /// The timeout of `lock_timeout` passed while a live owner held the lock.
    #[error("timed out waiting for the shared mutex (held by a live owner)")]
    TimedOut,
}

/// Any error of this crate: every public error converts into it, so `?` works
/// everywhere; it is `Send + Sync + 'static` (for `Box<dyn Error + Send + Sync>`
/// and `anyhow`). The specific errors stay available for matching.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// See [`SegmentError`].
    #[error(transparent)]
    Segment(#[from] SegmentError),
    /// See [`AllocError`].
    #[error(transparent)]
    Alloc(#[from] AllocError),
    /// See [`AccessError`].
    #[error(transparent)]
    Access(#[from] AccessError),
    /// See [`FreeError`].
    #[error(transparent)]
    Free(#[from] FreeError),
    /// A named root exists with another type than the one asked for.
    #[error("root {name:?} holds a {found}, not a {expected} (layout fingerprints differ)")]
    TypeMismatch {
        /// The root's name.
        name: String,
        /// The type asked for.
        expected: String,
        /// The type the root was created with (its name, possibly truncated).
        found: String,
    },
    /// See [`TokenError`].
    #[error(transparent)]
    Token(#[from] TokenError),
    /// See [`ChannelError`].
    #[error(transparent)]
    Channel(#[from] ChannelError),
    /// See [`LockError`].
    #[error(transparent)]
    Lock(#[from] LockError),
    /// See [`ArchiveError`].
    #[cfg(feature = "rkyv")]
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// A root name is empty, too long or contains NUL.
    #[error("invalid root name {name:?}: {reason}")]
    InvalidRootName {
        /// The name as given.
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// Named roots are not available on this allocator (a bump allocator: its
    /// `reset` would release the roots' objects under every process's feet).
    #[error("named roots are not supported on a {kind} allocator: {reason}")]
    RootsUnsupported {
        /// The allocator kind.
        kind: &'static str,
        /// Why.
        reason: &'static str,
    },
    /// Every entry of the segment's root table is taken.
    #[error("the root table is full ({capacity} roots)")]
    RootTableFull {
        /// How many roots a segment holds.
        capacity: usize,
    },
    /// Another live handle has been creating this root for too long.
    #[error("root {name:?} is still being created by the handle with registry token {holder:#x}")]
    RootBusy {
        /// The root's name.
        name: String,
        /// The creating handle's liveness token in the process registry (slot and
        /// generation; see `processes()`), not a pid.
        holder: u32,
    },
    /// See [`CollectionError`].
    #[error(transparent)]
    Collection(#[from] CollectionError),
    /// A pipeline's own error (see
    /// [`PipelineError`](crate::archive::PipelineError)); the segment, allocator and
    /// archive errors a pipeline passes on convert to their own variants instead.
    #[cfg(feature = "rkyv")]
    #[error(transparent)]
    Pipeline(Box<crate::archive::PipelineError>),
}

#[cfg(feature = "rkyv")]
impl From<crate::archive::PipelineError> for Error {
    fn from(e: crate::archive::PipelineError) -> Self {
        use crate::archive::PipelineError as P;
        match e {
            P::Segment(e) => Error::Segment(e),
            P::Shm(e) => e,
            P::Archive(e) => Error::Archive(e),
            e => Error::Pipeline(Box::new(e)),
        }
    }
}

impl Error {
    /// Whether this is a stale-handle error (taken before a bump reset).
    pub fn is_stale(&self) -> bool {
        match self {
            Error::Access(e) => e.is_stale(),
            #[cfg(feature = "rkyv")]
            Error::Archive(e) => e.is_stale(),
            _ => false,
        }
    }
}

/// A shared collection ([`crate::collections`]) refused an operation: nothing changed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CollectionError {
    /// Bytes of the collection in shared memory are not what this crate wrote (a
    /// scribbler, or a segment of another version).
    #[error("shared collection damaged: {what} (found {found:#x})")]
    Corrupted {
        /// What was found inconsistent.
        what: &'static str,
        /// The offending value.
        found: u64,
    },
    /// A lock of the collection stayed held by a live process for longer than
    /// [`LOCK_TIMEOUT`](crate::collections::LOCK_TIMEOUT) (or its word was
    /// scribbled with a live owner's identity).
    #[error("a lock of the shared collection stayed held by a live process for {secs} s")]
    Busy {
        /// How long the caller waited, in seconds.
        secs: u64,
    },
    /// A string does not fit the fixed capacity of an inline string.
    #[error("string of {len} bytes does not fit an inline string of {capacity}")]
    TooLong {
        /// Its length in bytes.
        len: usize,
        /// The inline capacity in bytes.
        capacity: usize,
    },
    /// String bytes read from shared memory are not UTF-8.
    #[error("string bytes in shared memory are not UTF-8")]
    NotUtf8,
    /// A non-empty vector of a zero-sized element type (such as `[u8; 0]`): its
    /// block would hold no bytes. Store a count instead.
    #[error("a shared vector of zero-sized elements cannot be stored (store a count instead)")]
    ZeroSized,
    /// The map holds more entries than one shard's table can address.
    #[error("a shard of the shared map cannot grow past {capacity} slots")]
    Full {
        /// The largest table capacity.
        capacity: u64,
    },
}
