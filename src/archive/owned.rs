//! Free-list archives: one owner at a time, handed over by token exactly once.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};

use rkyv::api::high::HighDeserializer;
use rkyv::rancor;
use rkyv::{Archived, Deserialize};

use super::block::{archived_unchecked, deserialize_archived, deserialize_copy, Span};
use super::writer::{block_size, nondeterministic, seal, serialize_into, type_tag, Binding};
use super::{ArchiveError, ArchiveToken, ShmArchivable, ARCHIVE_ALIGN};
use crate::alloc::{Offset, ShmAllocator, ShmFree};
use crate::typed::token::OwnedHeader;

/// An rkyv archive in a shared block that this handle owns: freed when it drops.
///
/// The writer creates it with [`new_in`](ShmArchive::new_in), gives it away
/// with [`into_token`](ShmArchive::into_token) (16 bytes to send to another
/// process), and the reader takes ownership with
/// [`from_token`](ShmArchive::from_token), exactly once, which validates the
/// archive. While a handle lives, the block is exclusively owned by it and
/// immutable (there is no `access_mut`).
/// After that, [`access`](ShmArchive::access) is a bounds check and a pointer
/// cast: zero-copy, no re-validation. See the [module docs](super) for the rule.
///
/// The handle holds the allocator it was validated against, so it cannot be
/// used with another segment by mistake.
///
/// ```
/// use shared_allocator::prelude::*;
/// use shared_allocator::archive::{ArchiveToken, ShmArchive};
///
/// #[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq)]
/// struct Order { id: u64, item: String, qty: Vec<u32> }
///
/// # let name = format!("doc-archive-{}", std::process::id());
/// # let _cleanup = shared_allocator::segment::UnlinkGuard::new(&name);
/// let alloc = FreeListAllocator::create(&name, 1 << 20)?;
/// let order = Order { id: 7, item: "bolts".into(), qty: vec![1, 2, 3] };
///
/// // Writer: serialize straight into shared memory, give the archive away.
/// let token = ShmArchive::new_in(&alloc, &order)?.into_token();
/// let raw: [u64; 2] = token.to_raw(); // send these 16 bytes to the reader
///
/// // Reader (another process; here the same one, through its own mapping):
/// let reader_alloc = FreeListAllocator::open(&name)?;
/// let archive = ShmArchive::<Order, _>::from_token(&reader_alloc, ArchiveToken::from_raw(raw))?;
/// let archived = archive.access()?; // validated once, at from_token
/// // The token moved ownership once; a second redemption is refused:
/// assert!(ShmArchive::<Order, _>::from_token(&reader_alloc, ArchiveToken::from_raw(raw)).is_err());
/// assert_eq!(archived.item.as_str(), "bolts");
/// assert_eq!(archived.qty[2].to_native(), 3);
/// assert_eq!(archive.deserialize()?, order);
/// drop(archive); // the reader owns it now: frees the block
/// assert_eq!(alloc.stats().live_blocks, Some(0));
/// # alloc.unlink()?;
/// # Ok::<(), shared_allocator::Error>(())
/// ```
pub struct ShmArchive<T: ShmArchivable, A: ShmFree> {
    alloc: A,
    span: Span,
    validated: AtomicBool,
    /// Fork epoch of the owning process: a `fork` child's copy owns nothing.
    fork: u64,
    _type: PhantomData<fn() -> T>,
}

impl<T: ShmArchivable, A: ShmFree> ShmArchive<T, A> {
    /// Serializes `value` into a new block of `alloc`, sized exactly: one pass
    /// measures, the second writes in place (see the [module docs](super) for
    /// this trade-off).
    ///
    /// # Errors
    /// [`ArchiveError::Alloc`] if the allocator refuses, [`ArchiveError::Serialize`]
    /// if the value's `Serialize` fails. Nothing is left allocated on error.
    pub fn new_in(alloc: A, value: &T) -> Result<Self, ArchiveError> {
        let len = serialize_into(alloc.segment(), Offset::NULL, 0, value)?;
        Self::write_exact(alloc, value, len)
    }

    /// Serializes `value` in one pass into a new block with room for `capacity`
    /// archive bytes. If the archive turns out larger, that block is freed and
    /// a second pass writes into a block of the exact size. A block larger than
    /// needed keeps its size until freed.
    ///
    /// # Errors
    /// As [`new_in`](ShmArchive::new_in).
    pub fn new_in_with_capacity(
        alloc: A,
        value: &T,
        capacity: usize,
    ) -> Result<Self, ArchiveError> {
        match Self::fill(alloc, capacity, value)? {
            Ok(me) => Ok(me),
            // The first pass counted the exact size past the end of the block.
            Err((len, alloc)) => Self::write_exact(alloc, value, len),
        }
    }

    fn write_exact(alloc: A, value: &T, len: usize) -> Result<Self, ArchiveError> {
        Self::fill(alloc, len, value)?.map_err(|_| nondeterministic::<T>(len))
    }

    /// Allocates a block with room for `cap` archive bytes, serializes into it
    /// and seals it. `Ok(Err((len, alloc)))` if the archive (of `len` bytes) did
    /// not fit; the block is freed then, and on error.
    #[allow(clippy::type_complexity)]
    fn fill(alloc: A, cap: usize, value: &T) -> Result<Result<Self, (usize, A)>, ArchiveError> {
        crate::typed::raw::require_typed(&alloc)?;
        let block = alloc.allocate_block(crate::alloc::INTERNAL, block_size(cap)?, ARCHIVE_ALIGN)?;
        let sealed = serialize_into(alloc.segment(), block, cap, value).and_then(|len| {
            if len <= cap {
                seal::<T, A>(&alloc, block, len, Binding::Owned)?;
            }
            Ok(len)
        });
        match sealed {
            Ok(len) if len <= cap => Ok(Ok(ShmArchive {
                alloc,
                span: Span { block, len },
                validated: AtomicBool::new(false),
                fork: crate::process::fork_epoch(),
                _type: PhantomData,
            })),
            Ok(len) => {
                // SAFETY: allocated just above by this call, never published.
                let _ = unsafe { alloc.free_owned(block) };
                Ok(Err((len, alloc)))
            }
            Err(e) => {
                // SAFETY: as above.
                let _ = unsafe { alloc.free_owned(block) };
                Err(e)
            }
        }
    }

    /// Takes ownership of the archive at `token` (given away by another process
    /// with [`into_token`](ShmArchive::into_token)) and **validates it now**:
    /// header, bounds, checksum and bytecheck. Every later
    /// [`access`](ShmArchive::access) reuses this validation.
    ///
    /// The token is claimed first (a compare-and-swap of its nonce in the block's
    /// claim word), so the validation reads bytes that this handle already owns
    /// exclusively; if validation fails the claim is undone.
    ///
    /// # Errors
    /// [`ArchiveError::Token`] if the token was redeemed already (exactly one
    /// `from_token` of a token succeeds, in any number of processes) or names
    /// another type; [`ArchiveError::Access`] (null, out of bounds, not a live
    /// block), [`ArchiveError::BadHeader`], [`ArchiveError::TypeMismatch`],
    /// [`ArchiveError::Checksum`], [`ArchiveError::Invalid`]. On error the block
    /// is not freed and the token is unchanged.
    pub fn from_token(alloc: A, token: ArchiveToken<T>) -> Result<Self, ArchiveError> {
        crate::typed::raw::require_typed(&alloc)?;
        let block = token.offset();
        if block.get() % ARCHIVE_ALIGN as u64 != 0 {
            return Err(ArchiveError::BadHeader {
                offset: block.get(),
                reason: "offset is not 16-aligned",
            });
        }
        let owner = OwnedHeader::at(&alloc, block)?;
        owner.redeem(
            &alloc,
            block,
            token.nonce(),
            std::any::type_name::<T>(),
            type_tag::<T>(),
        )?;
        let checked = Span::read::<T, A>(&alloc, block).and_then(|(span, sum, bytes)| {
            span.validate::<T, A>(&alloc, Binding::Owned, bytes, sum)
                .map(|()| span)
        });
        match checked {
            Ok(span) => Ok(ShmArchive {
                alloc,
                span,
                validated: AtomicBool::new(true),
                fork: crate::process::fork_epoch(),
                _type: PhantomData,
            }),
            Err(e) => {
                owner.unredeem(token.nonce());
                Err(e)
            }
        }
    }

    /// [`AccessError::Forked`](crate::AccessError::Forked) in a `fork` child's
    /// copy of a handle its parent owns.
    fn check_owner(&self) -> Result<(), ArchiveError> {
        let now = crate::process::fork_epoch();
        if self.fork != now {
            return Err(crate::AccessError::Forked {
                handle_epoch: self.fork,
                current_epoch: now,
            }
            .into());
        }
        Ok(())
    }

    /// Gives the archive away: returns the token another process takes it with
    /// (once), and gives up this handle (and with it any access from this side).
    /// In a `fork` child's copy of a parent's handle, the token is one that can
    /// never be redeemed (the parent still owns the block).
    pub fn into_token(self) -> ArchiveToken<T> {
        let block = self.span.block;
        let nonce = match OwnedHeader::at(&self.alloc, block) {
            Ok(owner) if self.check_owner().is_ok() => owner.issue(&self.alloc),
            // The block was freed behind our back, or this is a fork child's copy:
            // a token that can never be redeemed.
            _ => 0,
        };
        let me = std::mem::ManuallyDrop::new(self);
        // SAFETY: `me` is never used or dropped again; its allocator handle is
        // moved out once and dropped here (an `Arc` gives its count back).
        drop(unsafe { std::ptr::read(&me.alloc) });
        ArchiveToken::new(block, nonce)
    }

    /// The archived value, zero-copy.
    ///
    /// Validated once per handle: at [`from_token`](ShmArchive::from_token), or
    /// on the first call for a handle this process wrote. Every call checks that
    /// the block is still allocated (cheap).
    ///
    /// # Errors
    /// [`ArchiveError::Access`] if the block was freed by someone else (or
    /// [`AccessError::Forked`](crate::AccessError::Forked) in a fork child); on the
    /// first call of a writer's handle, the validation errors of `from_token`.
    pub fn access(&self) -> Result<&Archived<T>, ArchiveError> {
        self.check_owner()?;
        let bytes = self.span.bytes(&self.alloc)?;
        if !self.validated.load(Ordering::Acquire) {
            // This process wrote and checksummed the bytes; bytecheck proves
            // nobody broke them since.
            self.span.check_bytes::<T>(bytes)?;
            self.validated.store(true, Ordering::Release);
        }
        // SAFETY:
        // - `validated` is set only after `check_bytes` accepted this span's bytes
        //   (here or in `from_token`); `bytes` is that same span, re-resolved
        //   against the same allocator (the handle holds it);
        // - this handle owns the block (not freed before drop, `bytes` just
        //   re-checked it is live) and no API writes to an archive after it is
        //   written, so the bytes are the validated ones.
        Ok(unsafe { archived_unchecked::<T>(bytes) })
    }

    /// Deserializes an owned `T` from a **private copy** of the archive, validated
    /// again (checksum and bytecheck) on that copy: the checked copy path, for a
    /// reader who does not trust every writer. Whatever another process writes into
    /// the block meanwhile (a raw write, a rewritten relative pointer), the result
    /// is an error or a valid `T`, never undefined behaviour.
    ///
    /// # Errors
    /// As [`from_token`](ShmArchive::from_token)'s validation, or
    /// [`ArchiveError::Deserialize`].
    pub fn deserialize_copied(&self) -> Result<T, ArchiveError>
    where
        Archived<T>: Deserialize<T, HighDeserializer<rancor::Error>>,
    {
        deserialize_copy::<T, A>(&self.alloc, self.span.block, Binding::Owned)
    }

    /// Deserializes an owned `T` from the archive (zero-copy read of the validated
    /// bytes; [`deserialize_copied`](Self::deserialize_copied) trusts no writer).
    ///
    /// # Errors
    /// As [`access`](ShmArchive::access), or [`ArchiveError::Deserialize`].
    pub fn deserialize(&self) -> Result<T, ArchiveError>
    where
        Archived<T>: Deserialize<T, HighDeserializer<rancor::Error>>,
    {
        deserialize_archived::<T>(self.access()?)
    }

    /// Length of the archive in bytes (without the 32-byte block header).
    pub fn len(&self) -> usize {
        self.span.len
    }

    /// Whether the archive has no bytes (a zero-sized `T`).
    pub fn is_empty(&self) -> bool {
        self.span.len == 0
    }

    /// Offset of the block (what the token holds).
    pub fn offset(&self) -> Offset {
        self.span.block
    }

    /// The allocator the archive lives in.
    pub fn allocator(&self) -> &A {
        &self.alloc
    }
}

impl<T: ShmArchivable, A: ShmFree> Drop for ShmArchive<T, A> {
    fn drop(&mut self) {
        if self.check_owner().is_err() {
            return; // a fork child's copy: the parent owns the block
        }
        if let Ok(owner) = OwnedHeader::at(&self.alloc, self.span.block) {
            owner.release();
        }
        // A failure means someone else already freed it (a broken hand-over): nothing to do.
        // SAFETY: the archive owns its block (allocated or redeemed once);
        // dropping it ends every view it handed out.
        let _ = unsafe { self.alloc.free_owned(self.span.block) };
    }
}

impl<T: ShmArchivable, A: ShmFree> std::fmt::Debug for ShmArchive<T, A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShmArchive")
            .field("type", &std::any::type_name::<T>())
            .field("offset", &self.span.block)
            .field("len", &self.span.len)
            .field("validated", &self.validated.load(Ordering::Relaxed))
            .finish()
    }
}

impl<T: ShmArchivable> ArchiveToken<T> {
    /// The archived value **without validation**, for trusted data: no checksum,
    /// no bytecheck, no ownership taken. The header (magic, type tag) and the
    /// bounds of the block are still checked.
    ///
    /// # Safety
    /// The caller guarantees that:
    /// - the block holds an archive of `T` written by this module (for example
    ///   by a trusted process with [`ShmArchive::new_in`]) and its bytes have not
    ///   been damaged since;
    /// - no process writes to or frees the block while the returned reference lives.
    ///
    /// # Errors
    /// [`ArchiveError::Access`], [`ArchiveError::BadHeader`], [`ArchiveError::TypeMismatch`].
    pub unsafe fn access_unchecked<A: ShmAllocator>(
        self,
        alloc: &A,
    ) -> Result<&Archived<T>, ArchiveError> {
        let (_, _, bytes) = Span::read::<T, A>(alloc, self.offset())?;
        // SAFETY:
        // - the caller guarantees these bytes are a valid archive of T (what
        //   `archived_unchecked` requires from bytecheck);
        // - and that nobody writes them while the reference lives.
        Ok(unsafe { archived_unchecked::<T>(bytes) })
    }
}
