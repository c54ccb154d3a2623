//! [`ShmArc<T>`]: shared, read-only ownership of one value across processes.
//!
//! The block holds a crate-written header, then the value. The header counts
//! references **per process-registry slot**: entry `s` is `[liveness token: 32 |
//! count: 32]` of the handle registered in slot `s`, and `holders` counts the
//! nonzero entries plus the outstanding hand-over tokens. A process only ever
//! changes its own entry's count; a holder that dies leaves its entry behind, and
//! whoever next looks (the drop of another process's last reference, a
//! [`reap`](ShmArc::reap), a new registration of that slot) sees from the registry
//! that the token is dead, clears the entry with one compare-exchange and drops its
//! share of `holders`. The block is freed by whoever takes `holders` to 0: when the
//! last live holder drops, after it reaped the dead ones.
//!
//! A [`ArcToken`] is an extra reference taken by a live holder ([`share`](ShmArc::share))
//! and parked in one of the header's [`ARC_TOKENS`] token words under a fresh
//! nonce; [`from_token`](ShmArc::from_token) swaps the nonce out (exactly once) and
//! moves that reference into the receiver's registry slot. A token never
//! redeemed keeps the value alive (like a [`BoxToken`](crate::BoxToken) never
//! redeemed).
//!
//! What it does not do: if *every* holder dies (and no token is outstanding), no
//! live process is left to drop the last reference, and the block stays allocated:
//! a leak of the dead processes, like their other live blocks.

use std::mem::{align_of, size_of};
use std::ops::Deref;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::alloc::{Offset, ShmFree};
use crate::error::{CollectionError, Error, TokenError};
use crate::process::fork_epoch;
use crate::typed::token::{fresh_generation, OwnedHeader, PINNED};
use crate::typed::{fingerprint, layout_checked, raw, ShmSafe, ShmSync};

/// Registry slots a header counts (one entry each).
const SLOTS: usize = crate::process::SLOTS;
/// Hand-over tokens that may be outstanding at once per value.
pub const ARC_TOKENS: usize = 32;

#[repr(C)]
struct ArcHeader {
    owner: OwnedHeader,
    holders: AtomicU64,
    spare: AtomicU64,
    slots: [AtomicU64; SLOTS],
    tokens: [AtomicU64; ARC_TOKENS],
}

// SAFETY: repr(C) of a 16-byte all-atomic OwnedHeader and AtomicU64s: no padding,
// every bit pattern valid (every word is checked on use), no pointers, no Drop.
unsafe impl ShmSafe for ArcHeader {
    const FINGERPRINT: u64 = fingerprint::primitive(
        "ShmArcHeader",
        size_of::<ArcHeader>(),
        align_of::<ArcHeader>(),
    );
}
// SAFETY: every field is atomic.
unsafe impl ShmSync for ArcHeader {}

/// Bytes from the block start to the value.
const fn payload(align: usize) -> u64 {
    let a = if align > 8 { align as u64 } else { 8 };
    (size_of::<ArcHeader>() as u64).div_ceil(a) * a
}

fn arc_fp<T: ShmSafe>() -> u64 {
    fingerprint::str(layout_checked::<T>(), "ShmArc")
}

/// A hand-over token of a [`ShmArc`]: an extra reference, redeemable once with
/// [`ShmArc::from_token`] in any process. Three numbers ([`to_raw`](Self::to_raw)).
pub struct ArcToken<T> {
    offset: u64,
    index: u64,
    nonce: u64,
    _t: std::marker::PhantomData<fn() -> T>,
}

impl<T> Clone for ArcToken<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for ArcToken<T> {}

impl<T> std::fmt::Debug for ArcToken<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ArcToken({:#x}, {}, {:#x})",
            self.offset, self.index, self.nonce
        )
    }
}

impl<T> ArcToken<T> {
    /// Rebuilds a token from the numbers another process sent.
    pub const fn from_raw(raw: [u64; 3]) -> Self {
        ArcToken {
            offset: raw[0],
            index: raw[1],
            nonce: raw[2],
            _t: std::marker::PhantomData,
        }
    }

    /// The numbers to send: `[offset, token index, nonce]`.
    pub const fn to_raw(self) -> [u64; 3] {
        [self.offset, self.index, self.nonce]
    }
}

/// Shared, read-only ownership of a `T` in shared memory, across processes: every
/// holder gets `&T`; the block is freed when the last reference, in any process,
/// drops; references of dead processes are released by the live ones (see the
/// [module docs](self)).
///
/// Within a process, [`Clone`] it; to another process, hand a
/// [`share`](Self::share)d [`ArcToken`] over.
///
/// ```
/// use shared_allocator::prelude::*;
/// use shared_allocator::collections::ShmArc;
/// # let name = format!("doc-arc-{}", std::process::id());
/// # let _cleanup = shared_allocator::segment::UnlinkGuard::new(&name);
/// let alloc = FreeListAllocator::create(&name, 1 << 20)?;
/// let a = ShmArc::new_in(&alloc, [7u64; 4])?;
/// let token = a.share()?;
/// // Another process (here: a second mapping) redeems it, once.
/// let other = FreeListAllocator::open(&name)?;
/// let b = ShmArc::<[u64; 4], _>::from_token(&other, token)?;
/// assert!(ShmArc::<[u64; 4], _>::from_token(&other, token).is_err());
/// drop(a);
/// assert_eq!(*b, [7; 4]); // still alive: b holds it
/// drop(b); // the last reference: freed
/// # Ok::<(), shared_allocator::Error>(())
/// ```
pub struct ShmArc<T: ShmSafe, A: ShmFree> {
    alloc: A,
    block: u64,
    value: NonNull<T>,
    me: u32,
    fork: u64,
}

// SAFETY: a ShmArc gives only `&T` (`T: ShmSafe` is Sync) and holds an allocator
// (Send + Sync) and a counted reference whose header is all atomics.
unsafe impl<T: ShmSafe, A: ShmFree> Send for ShmArc<T, A> {}
// SAFETY: as above: shared use only reads `T` and updates atomics.
unsafe impl<T: ShmSafe, A: ShmFree> Sync for ShmArc<T, A> {}

impl<T: ShmSafe, A: ShmFree> ShmArc<T, A> {
    const PAYLOAD: u64 = payload(align_of::<T>());

    fn my_token(alloc: &A) -> Result<u32, Error> {
        match alloc.liveness_token() {
            0 => Err(CollectionError::Corrupted {
                what: "no process-registry slot for this handle",
                found: 0,
            }
            .into()),
            t => Ok(t),
        }
    }

    fn slot_of(token: u32) -> usize {
        ((token & 0xFF) as usize).saturating_sub(1) % SLOTS
    }

    /// Moves `value` into a new block of `alloc`, with one reference: this one.
    ///
    /// # Errors
    /// [`Error::Alloc`] if the allocator refuses.
    pub fn new_in(alloc: A, value: T) -> Result<Self, Error> {
        raw::require_typed(&alloc)?;
        let me = Self::my_token(&alloc)?;
        let size = Self::PAYLOAD as usize + size_of::<T>();
        let block = alloc.allocate_aligned(size, align_of::<T>().max(8))?;
        let written = (|| {
            // SAFETY: ArcHeader is ShmSafe: all zeros is valid.
            let mut h: ArcHeader = unsafe { std::mem::zeroed() };
            h.owner = OwnedHeader::new(arc_fp::<T>());
            *h.holders.get_mut() = 1;
            *h.slots[Self::slot_of(me)].get_mut() = (u64::from(me) << 32) | 1;
            raw::write_fresh(&alloc, block, std::iter::once(h))?;
            let v = raw::write_fresh(
                &alloc,
                Offset::new(block.get() + Self::PAYLOAD),
                std::iter::once(value),
            )?;
            // No token may claim the block: PINNED (the fingerprint says ShmArc).
            OwnedHeader::init_pinned(&alloc, block, arc_fp::<T>())?;
            Ok::<_, Error>(NonNull::from(&v[0]))
        })();
        match written {
            Ok(value) => Ok(ShmArc {
                block: block.get(),
                value,
                me,
                fork: fork_epoch(),
                alloc,
            }),
            Err(e) => {
                // SAFETY: allocated above, never published.
                let _ = unsafe { alloc.free_owned(block) };
                Err(e)
            }
        }
    }

    fn header(&self) -> &ArcHeader {
        let p = self
            .value
            .as_ptr()
            .cast::<u8>()
            .wrapping_sub(Self::PAYLOAD as usize);
        // SAFETY: the block (checked a live ShmArc block of T when this handle was
        // made) starts `PAYLOAD` bytes before the value, 8-aligned, inside the
        // mapping that `self.alloc` keeps alive; this handle's counted reference
        // keeps the block from being freed; the header is all atomics.
        unsafe { &*p.cast::<ArcHeader>() }
    }

    /// Takes the reference a [`share`](Self::share) parked for `token`, once.
    ///
    /// # Errors
    /// [`TokenError::AlreadyClaimed`] if it was redeemed already,
    /// [`TokenError::TypeMismatch`] for a value of another type,
    /// [`TokenError::Access`] if the token names no live block start.
    pub fn from_token(alloc: A, token: ArcToken<T>) -> Result<Self, Error> {
        raw::require_typed(&alloc)?;
        let me = Self::my_token(&alloc)?;
        let block = Offset::new(token.offset);
        alloc.check_block_start(block).map_err(TokenError::from)?;
        let owner = OwnedHeader::at(&alloc, block).map_err(TokenError::from)?;
        owner.check(block, std::any::type_name::<ShmArc<T, A>>(), arc_fp::<T>())?;
        if owner.claim_word(Ordering::Acquire) != PINNED {
            return Err(TokenError::AlreadyClaimed {
                offset: token.offset,
                found: owner.claim_word(Ordering::Relaxed),
            }
            .into());
        }
        let value = raw::checked_ptr::<T, A>(&alloc, Offset::new(token.offset + Self::PAYLOAD), 1)
            .map_err(TokenError::from)?;
        let h: &ArcHeader =
            raw::value_at::<ArcHeader, A>(&alloc, block).map_err(TokenError::from)?;
        let idx = usize::try_from(token.index).unwrap_or(usize::MAX);
        let claimed = idx < ARC_TOKENS
            && token.nonce != 0
            && h.tokens[idx]
                .compare_exchange(token.nonce, 0, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok();
        if !claimed {
            return Err(TokenError::AlreadyClaimed {
                offset: token.offset,
                found: 0,
            }
            .into());
        }
        let arc = ShmArc {
            alloc,
            block: token.offset,
            value,
            me,
            fork: fork_epoch(),
        };
        arc.adopt();
        Ok(arc)
    }

    /// Moves one counted reference (a redeemed token's, counted in `holders`)
    /// into this process's registry slot entry.
    fn adopt(&self) {
        let h = self.header();
        let entry = &h.slots[Self::slot_of(self.me)];
        let mine = u64::from(self.me) << 32;
        loop {
            let e = entry.load(Ordering::Acquire);
            if e == 0 {
                if entry
                    .compare_exchange(0, mine | 1, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    return; // the token's count is now the entry's
                }
            } else if e >> 32 == u64::from(self.me) {
                if entry
                    .compare_exchange(e, e + 1, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    // The entry was counted already: the token's count goes.
                    h.holders.fetch_sub(1, Ordering::AcqRel);
                    return;
                }
            } else if entry
                .compare_exchange(e, 0, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                // A former holder of this registry slot (dead: the slot is ours now).
                // `holders` stays >= 1: the token's count is still in it.
                h.holders.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    /// Parks an extra reference for another process under a fresh nonce.
    ///
    /// # Errors
    /// [`CollectionError::Full`] if [`ARC_TOKENS`] tokens are outstanding.
    pub fn share(&self) -> Result<ArcToken<T>, Error> {
        self.assert_owner();
        let h = self.header();
        h.holders.fetch_add(1, Ordering::AcqRel);
        let nonce = fresh_generation(&self.alloc) | 1;
        for (i, t) in h.tokens.iter().enumerate() {
            if t.compare_exchange(0, nonce, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                return Ok(ArcToken {
                    offset: self.block,
                    index: i as u64,
                    nonce,
                    _t: std::marker::PhantomData,
                });
            }
        }
        h.holders.fetch_sub(1, Ordering::AcqRel);
        Err(CollectionError::Full {
            capacity: ARC_TOKENS as u64,
        }
        .into())
    }

    /// Releases the references of dead processes (also done by the drop of a
    /// process's last reference); returns how many registry slots it cleared.
    pub fn reap(&self) -> usize {
        self.reap_dead()
    }

    fn reap_dead(&self) -> usize {
        let h = self.header();
        let mut n = 0;
        for entry in &h.slots {
            let e = entry.load(Ordering::Acquire);
            if e == 0 || e >> 32 == u64::from(self.me) {
                continue;
            }
            if !self.alloc.token_alive((e >> 32) as u32)
                && entry
                    .compare_exchange(e, 0, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                n += 1;
                // This handle's own count keeps `holders` >= 1 here.
                h.holders.fetch_sub(1, Ordering::AcqRel);
            }
        }
        n
    }

    /// References counted now: registry slots holding it plus outstanding tokens
    /// (dead holders not yet reaped included).
    pub fn holders(&self) -> u64 {
        self.header().holders.load(Ordering::Acquire)
    }

    /// Whether this handle counts (false for a `fork` child's copy).
    pub fn is_owner(&self) -> bool {
        self.fork == fork_epoch()
    }

    fn assert_owner(&self) {
        assert!(
            self.is_owner(),
            "a ShmArc copied into a fork child is not counted there: hand it over with share / from_token"
        );
    }

    /// The block offset (for diagnostics).
    pub fn offset(&self) -> Offset {
        Offset::new(self.block)
    }
}

impl<T: ShmSafe, A: ShmFree + Clone> Clone for ShmArc<T, A> {
    fn clone(&self) -> Self {
        self.assert_owner();
        // This handle's count is in its entry: it is ours and nonzero.
        self.header().slots[Self::slot_of(self.me)].fetch_add(1, Ordering::AcqRel);
        ShmArc {
            alloc: self.alloc.clone(),
            block: self.block,
            value: self.value,
            me: self.me,
            fork: self.fork,
        }
    }
}

impl<T: ShmSafe, A: ShmFree> Deref for ShmArc<T, A> {
    type Target = T;
    fn deref(&self) -> &T {
        self.assert_owner();
        // SAFETY:
        // - the value was written before the block was published (Release/Acquire
        //   through the token words or this process's own write) and is never
        //   written again: ShmArc gives out only `&T`;
        // - in-bounds and aligned (checked when the handle was made), inside the
        //   mapping `self.alloc` keeps alive; this handle's counted reference keeps
        //   the block allocated.
        unsafe { self.value.as_ref() }
    }
}

impl<T: ShmSafe, A: ShmFree> Drop for ShmArc<T, A> {
    fn drop(&mut self) {
        if !self.is_owner() {
            return;
        }
        let h = self.header();
        let entry = &h.slots[Self::slot_of(self.me)];
        let mine = u64::from(self.me) << 32;
        let e = entry.fetch_sub(1, Ordering::AcqRel);
        if e != mine | 1 {
            return; // other references of this process remain
        }
        // This process's last reference: release the dead ones first, then ours.
        self.reap_dead();
        if entry
            .compare_exchange(mine, 0, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return; // a token was just redeemed into our entry: it counts now
        }
        crate::fail_point!("arc.drop.cleared");
        if h.holders.fetch_sub(1, Ordering::AcqRel) == 1 {
            let block = Offset::new(self.block);
            // SAFETY: `holders` reached 0: no registry slot and no token counts a
            // reference, so no handle in any process can reach the value any more
            // (every handle is counted); this is the one call that saw it reach 0.
            let _ = unsafe { self.alloc.free_owned(block) };
        }
    }
}

impl<T: ShmSafe + std::fmt::Debug, A: ShmFree> std::fmt::Debug for ShmArc<T, A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ShmArc").field(&**self).finish()
    }
}
