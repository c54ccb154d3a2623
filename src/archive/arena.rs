//! Arena archives: written into a bump arena, shared immutable, epoch-checked, freed
//! by the arena's reset.

use std::marker::PhantomData;
use std::sync::atomic::{fence, AtomicBool, Ordering};

use rkyv::api::high::HighDeserializer;
use rkyv::rancor;
use rkyv::{Archived, Deserialize};

use super::block::{archived_unchecked, deserialize_archived, deserialize_copy, Span};
use super::writer::{block_size, nondeterministic, seal, serialize_into, Binding};
use super::{ArchiveError, ShmArchivable, ARCHIVE_ALIGN};
use crate::alloc::{BumpAllocator, BumpHandle, Offset, ShmAllocator};
use crate::error::AccessError;
use crate::process::Pin;
use crate::typed::{fingerprint, Arena, ShmSafe};

impl<A: BumpHandle> Arena<A> {
    /// Serializes `value` into this arena, sized exactly (two passes: see the
    /// [module docs](super)). The archive lives until the arena is reset; the
    /// returned handle borrows the arena, so this process cannot reset it while
    /// the handle lives.
    ///
    /// # Errors
    /// [`ArchiveError::Alloc`] when the bump allocator is full,
    /// [`ArchiveError::Serialize`] if the value's `Serialize` fails (the block
    /// stays used until the next reset).
    pub fn archive<T: ShmArchivable>(
        &self,
        value: &T,
    ) -> Result<ArenaArchive<'_, T>, ArchiveError> {
        let bump = self.allocator();
        // The arena's pin keeps the block's epoch until the archive is gone.
        self.pinned_epoch()?;
        let len = serialize_into(bump.segment(), Offset::NULL, 0, value)?;
        ArenaArchive::fill(bump, len, value)?.map_err(|_| nondeterministic::<T>(len))
    }

    /// Serializes `value` in one pass into a block with room for `capacity`
    /// archive bytes; if the archive is larger, a second pass writes into an
    /// exact block and the first block stays used until the next reset. Unused
    /// capacity also stays used until then.
    ///
    /// # Errors
    /// As [`archive`](Arena::archive).
    pub fn archive_with_capacity<T: ShmArchivable>(
        &self,
        value: &T,
        capacity: usize,
    ) -> Result<ArenaArchive<'_, T>, ArchiveError> {
        let bump = self.allocator();
        self.pinned_epoch()?;
        match ArenaArchive::fill(bump, capacity, value)? {
            Ok(a) => Ok(a),
            // The first pass counted the exact size past the end of the block.
            Err(len) => {
                ArenaArchive::fill(bump, len, value)?.map_err(|_| nondeterministic::<T>(len))
            }
        }
    }
}

/// An archive in an [`Arena`], as its writer holds it: borrows the arena (so
/// this process cannot reset it meanwhile) and carries the epoch it was written in.
///
/// Give it to other processes with [`into_token`](ArenaArchive::into_token);
/// each opens it with [`ArenaArchiveReader::from_token`]. After the arena's reset
/// (in any process) every handle and token of it is [`AccessError::Stale`].
///
/// ```
/// use shared_allocator::prelude::*;
/// use shared_allocator::archive::{ArenaArchiveReader, ArenaArchiveToken};
///
/// # let name = format!("doc-arena-archive-{}", std::process::id());
/// # let _cleanup = shared_allocator::segment::UnlinkGuard::new(&name);
/// let mut bump = BumpAllocator::create(&name, 1 << 20)?;
/// let arena = bump.arena();
/// let batch: Vec<String> = vec!["a".into(), "bc".into()];
/// let token = arena.archive(&batch)?.into_token();
/// let raw: [u64; 2] = token.to_raw(); // 16 bytes: offset and epoch
///
/// // A consumer process: open (validates once), then read zero-copy.
/// let consumer = BumpAllocator::open(&name)?;
/// let reader = ArenaArchiveReader::<Vec<String>, _>::from_token(&consumer, ArenaArchiveToken::from_raw(raw))?;
/// assert_eq!(reader.access()?[1].as_str(), "bc");
///
/// // The coordinator (here: a third mapping of the segment) ends the batch. A
/// // reset waits for views (the arena and the reader pin the region) or is Busy:
/// let mut coordinator = BumpAllocator::open(&name)?;
/// assert!(coordinator.try_reset().unwrap_err().is_busy());
/// drop((reader, arena));
/// coordinator.reset()?;
/// let again = ArenaArchiveReader::<Vec<String>, _>::from_token(&consumer, ArenaArchiveToken::from_raw(raw));
/// assert!(again.unwrap_err().is_stale());
/// # bump.unlink()?;
/// # Ok::<(), shared_allocator::Error>(())
/// ```
pub struct ArenaArchive<'a, T: ShmArchivable> {
    bump: &'a BumpAllocator,
    span: Span,
    epoch: u64,
    /// The fork epoch of the writer: in a fork child the arena's pin is the
    /// parent's, so the copy gives no view.
    fork: u64,
    validated: AtomicBool,
    _type: PhantomData<fn() -> T>,
}

impl<'a, T: ShmArchivable> ArenaArchive<'a, T> {
    /// As [`ShmArchive::fill`]; a block that was too small stays used until the reset.
    fn fill(
        bump: &'a BumpAllocator,
        cap: usize,
        value: &T,
    ) -> Result<Result<Self, usize>, ArchiveError> {
        let (block, epoch) = bump.allocate_with_epoch(block_size(cap)?, ARCHIVE_ALIGN)?;
        let len = serialize_into(bump.segment(), block, cap, value)?;
        if len > cap {
            return Ok(Err(len));
        }
        seal::<T, BumpAllocator>(bump, block, len, Binding::Arena { epoch })?;
        Ok(Ok(ArenaArchive {
            bump,
            span: Span { block, len },
            epoch,
            fork: crate::process::fork_epoch(),
            validated: AtomicBool::new(false),
            _type: PhantomData,
        }))
    }

    /// The token for other processes (offset and epoch). Consumes the handle:
    /// the writer gives the archive up and the readers validate it.
    pub fn into_token(self) -> ArenaArchiveToken<T> {
        ArenaArchiveToken::new(self.span.block, self.epoch)
    }

    /// The archived value, zero-copy; validated on the first call (bytecheck).
    ///
    /// # Errors
    /// On the first call, [`ArchiveError::Invalid`] if the bytes were damaged;
    /// [`AccessError::Forked`] in a fork child's copy of the handle (open a reader
    /// there: it pins in the child).
    pub fn access(&self) -> Result<&Archived<T>, ArchiveError> {
        crate::process::check_fork(self.fork)?;
        let bytes = self.span.bytes(self.bump)?;
        if !self.validated.load(Ordering::Acquire) {
            self.span.check_bytes::<T>(bytes)?;
            self.validated.store(true, Ordering::Release);
        }
        // SAFETY:
        // - `validated` is set only after `check_bytes` accepted this span's bytes
        //   in this bump allocator (the handle holds it);
        // - `check_fork`: this process made the handle, so the arena's pin below
        //   is this process's (a fork child's copy was refused);
        // - the arena this handle borrows pinned the region before the archive was
        //   written and keeps the pin while the handle lives: no reset by any
        //   handle completes, so the block is not released or reused, and no safe
        //   API writes an archive after it is written.
        Ok(unsafe { archived_unchecked::<T>(bytes) })
    }
}

/// What the writer's and the reader's handle of an arena archive share: both
/// hold `bump`, `span` and `epoch`, and a pin (the arena's, or the reader's own),
/// so the epoch cannot change while they live.
macro_rules! arena_archive_common {
    ($ty:ident, [$($gen:tt)*], [$($args:tt)*]) => {
        impl<$($gen)*> $ty<$($args)*> {
            /// Deserializes an owned `T` from the zero-copy view.
            ///
            /// # Errors
            /// As [`access`](Self::access), or [`ArchiveError::Deserialize`].
            pub fn deserialize(&self) -> Result<T, ArchiveError>
            where
                Archived<T>: Deserialize<T, HighDeserializer<rancor::Error>>,
            {
                deserialize_archived::<T>(self.access()?)
            }

            /// Length of the archive in bytes.
            pub fn len(&self) -> usize {
                self.span.len
            }

            /// Whether the archive has no bytes (a zero-sized `T`).
            pub fn is_empty(&self) -> bool {
                self.span.len == 0
            }

            /// The epoch the archive belongs to.
            pub fn epoch(&self) -> u64 {
                self.epoch
            }
        }

        impl<$($gen)*> std::fmt::Debug for $ty<$($args)*> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($ty))
                    .field("type", &std::any::type_name::<T>())
                    .field("offset", &self.span.block)
                    .field("len", &self.span.len)
                    .field("epoch", &self.epoch)
                    .finish()
            }
        }
    };
}

arena_archive_common!(ArenaArchive, ['a, T: ShmArchivable], ['a, T]);
arena_archive_common!(ArenaArchiveReader, [T: ShmArchivable, A: BumpHandle], [T, A]);

fn check_epoch(bump: &BumpAllocator, epoch: u64) -> Result<(), AccessError> {
    let now = bump.epoch();
    if now != epoch {
        return Err(AccessError::Stale {
            handle_epoch: epoch,
            current_epoch: now,
        });
    }
    Ok(())
}

/// A validated, read-only view of an arena archive, in any process. Any number
/// of readers may view one archive; the arena's reset releases it.
///
/// [`from_token`](ArenaArchiveReader::from_token) pins the region (in the
/// allocator handle's registry slot) and validates once; while the reader lives,
/// no reset by any handle in any process completes (it waits, or returns
/// [`AccessError::Busy`]), so [`access`](ArenaArchiveReader::access) only checks
/// the bounds. Drop readers when the batch is read. An example is on
/// [`ArenaArchive`].
///
/// It holds its allocator through a [`BumpHandle`]: `&BumpAllocator` borrows it,
/// `Arc<BumpAllocator>` shares it (the reader is then `'static`: stored next to
/// its allocator, moved into a thread). A reset through the reader's own handle
/// needs `&mut BumpAllocator`, which neither allows while the reader lives.
pub struct ArenaArchiveReader<T: ShmArchivable, A: BumpHandle> {
    span: Span,
    epoch: u64,
    /// Protects the view in the process that opened the reader only (`Pin::valid`).
    /// Declared before `bump`: dropped first, while the allocator (perhaps the
    /// last `Arc` of it) still maps the registry the pin counts in.
    pin: Pin,
    bump: A,
    _type: PhantomData<fn() -> T>,
}

impl<T: ShmArchivable, A: BumpHandle> ArenaArchiveReader<T, A> {
    /// Opens the archive at `token` and **validates it now**: epoch, header,
    /// bounds, checksum, bytecheck, and the epoch once more afterwards (so the
    /// bytes validated all belong to the token's epoch).
    ///
    /// # Errors
    /// [`AccessError::Stale`] (as [`ArchiveError::Access`]) if the arena was reset
    /// since the token was made; otherwise as [`ShmArchive::from_token`](super::ShmArchive::from_token).
    pub fn from_token(bump: A, token: ArenaArchiveToken<T>) -> Result<Self, ArchiveError> {
        let b = bump.bump();
        // Pinned before validating: the validated bytes stay this epoch's.
        let pin = crate::ArenaPtr::<u8>::from_parts(token.offset, token.epoch, 0).pin(b)?;
        let (span, sum, bytes) = Span::read::<T, BumpAllocator>(b, token.offset())?;
        span.validate::<T, BumpAllocator>(b, Binding::Arena { epoch: token.epoch }, bytes, sum)?;
        Ok(ArenaArchiveReader {
            span,
            epoch: token.epoch,
            pin,
            bump,
            _type: PhantomData,
        })
    }

    /// The bump allocator the reader holds.
    pub fn allocator(&self) -> &BumpAllocator {
        self.bump.bump()
    }

    /// The archived value, zero-copy, without re-validation.
    ///
    /// # Errors
    /// Bounds errors only if the segment's layout was damaged;
    /// [`AccessError::Forked`] in a fork child's copy of the reader (its pin counts
    /// for the parent: open a reader in the child).
    #[inline]
    pub fn access(&self) -> Result<&Archived<T>, ArchiveError> {
        crate::process::check_fork(self.pin.fork())?;
        let bytes = self.span.bytes(self.bump.bump())?;
        // SAFETY:
        // - the pin is this process's (`valid`: not a fork child's copy);
        // - `from_token` (the only constructor) pinned the region, then ran
        //   `check_bytes` on this span's bytes in this bump allocator (the reader
        //   holds its handle; `BumpHandle` is sealed, so it names the same
        //   allocator on every call);
        // - the pin lives in `self`: no reset by another handle completes while it
        //   does, and a reset through this handle needs `&mut BumpAllocator`, which
        //   the handle rules out while the reader lives (a shared borrow, or an
        //   `Arc` clone); so the block is not released or reused, and no safe API
        //   writes an archive after it is written (untrusted writers are outside
        //   this view's trust: the copy path is `deserialize_copied`).
        Ok(unsafe { archived_unchecked::<T>(bytes) })
    }

    /// Deserializes an owned `T` from a **private copy** of the archive, validated
    /// again on that copy (checksum, bytecheck), then re-checks the epoch: the
    /// checked copy path, sound whatever other processes do to the arena meanwhile
    /// (reset, reuse, scribbles). An example of the trust it saves: a view from
    /// [`access`](Self::access) trusts every writer.
    ///
    /// # Errors
    /// [`AccessError::Stale`], the validation errors of [`from_token`](ArenaArchiveReader::from_token), or
    /// [`ArchiveError::Deserialize`].
    pub fn deserialize_copied(&self) -> Result<T, ArchiveError>
    where
        Archived<T>: Deserialize<T, HighDeserializer<rancor::Error>>,
    {
        let bump = self.bump.bump();
        check_epoch(bump, self.epoch)?;
        let v = deserialize_copy::<T, BumpAllocator>(
            bump,
            self.span.block,
            Binding::Arena { epoch: self.epoch },
        )?;
        fence(Ordering::Acquire);
        check_epoch(bump, self.epoch)?;
        Ok(v)
    }
}

/// The 16-byte token of an arena archive: block offset and bump epoch. The
/// epoch is what makes it [`Stale`](AccessError::Stale) after a reset in every
/// process, as for [`ArenaPtr`](crate::ArenaPtr); 8 bytes could not carry both
/// a full offset and the epoch.
#[repr(C)]
pub struct ArenaArchiveToken<T> {
    offset: u64,
    epoch: u64,
    _type: PhantomData<fn() -> T>,
}

impl<T> ArenaArchiveToken<T> {
    fn new(offset: Offset, epoch: u64) -> Self {
        ArenaArchiveToken {
            offset: offset.get(),
            epoch,
            _type: PhantomData,
        }
    }

    /// Rebuilds a token from the two numbers another process sent (`[offset, epoch]`).
    pub const fn from_raw(raw: [u64; 2]) -> Self {
        ArenaArchiveToken {
            offset: raw[0],
            epoch: raw[1],
            _type: PhantomData,
        }
    }

    /// The two numbers to send to another process: `[offset, epoch]`.
    pub const fn to_raw(self) -> [u64; 2] {
        [self.offset, self.epoch]
    }

    /// The block offset.
    pub const fn offset(self) -> Offset {
        Offset::new(self.offset)
    }

    /// The epoch the archive belongs to.
    pub const fn epoch(self) -> u64 {
        self.epoch
    }
}

impl<T: ShmArchivable> ArenaArchiveToken<T> {
    /// Deserializes an owned `T` from a **private copy** of the archive, without
    /// opening a reader: epoch, copy (byte-wise atomic), checksum and bytecheck on
    /// the copy, deserialize, epoch again. The checked copy path for consumers that
    /// trust no writer: sound whatever other processes do to the arena meanwhile.
    ///
    /// # Errors
    /// [`AccessError::Stale`] (also when a reset raced the copy), the validation
    /// errors of [`ArenaArchiveReader::from_token`], or [`ArchiveError::Deserialize`].
    pub fn deserialize_copied(self, bump: &BumpAllocator) -> Result<T, ArchiveError>
    where
        Archived<T>: Deserialize<T, HighDeserializer<rancor::Error>>,
    {
        check_epoch(bump, self.epoch)?;
        let v = deserialize_copy::<T, BumpAllocator>(
            bump,
            self.offset(),
            Binding::Arena { epoch: self.epoch },
        );
        fence(Ordering::Acquire);
        // A reset during the copy makes whatever came out (value or error) stale.
        check_epoch(bump, self.epoch)?;
        v
    }

    /// The archived value **without validation**, for trusted data: no checksum,
    /// no bytecheck. The epoch, the header (magic, type tag) and the bounds are
    /// still checked.
    ///
    /// # Safety
    /// The caller guarantees that:
    /// - the block holds an archive of `T` written by this module in this epoch
    ///   (by a trusted process) and its bytes have not been damaged since;
    /// - no process resets the arena or writes to the block while the returned
    ///   reference lives.
    ///
    /// # Errors
    /// [`AccessError::Stale`], [`ArchiveError::BadHeader`], [`ArchiveError::TypeMismatch`],
    /// bounds errors.
    pub unsafe fn access_unchecked(
        self,
        bump: &BumpAllocator,
    ) -> Result<&Archived<T>, ArchiveError> {
        check_epoch(bump, self.epoch)?;
        let (_, _, bytes) = Span::read::<T, BumpAllocator>(bump, self.offset())?;
        // SAFETY:
        // - the caller guarantees these bytes are a valid archive of T (what
        //   `archived_unchecked` requires from bytecheck);
        // - and that nobody resets the arena or writes them while the reference lives.
        Ok(unsafe { archived_unchecked::<T>(bytes) })
    }
}

impl<T> Clone for ArenaArchiveToken<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for ArenaArchiveToken<T> {}
impl<T> PartialEq for ArenaArchiveToken<T> {
    fn eq(&self, o: &Self) -> bool {
        (self.offset, self.epoch) == (o.offset, o.epoch)
    }
}
impl<T> Eq for ArenaArchiveToken<T> {}
impl<T> std::fmt::Debug for ArenaArchiveToken<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ArenaArchiveToken<{}>({:#x}, epoch {})",
            std::any::type_name::<T>(),
            self.offset,
            self.epoch
        )
    }
}

// SAFETY: repr(C) of two u64 and a zero-sized PhantomData: no padding, every bit
// pattern valid, no pointers (offset and epoch are numbers), fixed layout, no Drop.
unsafe impl<T: 'static> ShmSafe for ArenaArchiveToken<T> {
    const FINGERPRINT: u64 = fingerprint::primitive("ArenaArchiveToken", 16, 8);
}
