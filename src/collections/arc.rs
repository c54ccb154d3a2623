//! [`ShmArc<T>`]: shared, read-only ownership of one value across processes.
//!
//! The block holds a crate-written header, then the value. The header counts
//! references **per process-registry slot**: entry `s` is `[liveness token: 32 |
//! count: 32]` of the handle registered in slot `s`, and `holders` counts the
//! nonzero entries plus the outstanding hand-over tokens. A process changes its own
//! entry's count with one atomic add (clone, and drops that leave it above 0);
//! everything else (a process's first and last reference, tokens, reaping, the
//! free) happens under the header's robust lock, so `holders` is always
//! recomputable from the entries and token words: a holder that dies under the
//! lock is repaired by the next locker with that recount. A holder that dies
//! holding references leaves its entry behind, and whoever next takes the lock
//! (the drop of another process's last reference, a [`reap`](ShmArc::reap), a new
//! registration of that slot) sees from the registry that the token is dead and
//! clears the entry. The block is freed by whoever, under the lock, sees `holders`
//! reach 0: when the last live holder drops, after it reaped the dead ones.
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

use std::mem::{align_of, size_of, ManuallyDrop};
use std::ops::Deref;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::alloc::{Offset, ShmFree};
use crate::error::{CollectionError, Error, TokenError};
use crate::process::fork_epoch;
use crate::coord::{ShmMutex, ShmMutexGuard};
use crate::typed::token::{fresh_generation, OwnedHeader, PINNED};
use crate::typed::{fingerprint, layout_checked, raw, ShmSafe};

/// Registry slots a header counts (one entry each).
const SLOTS: usize = crate::process::SLOTS;
/// Hand-over tokens that may be outstanding at once per value.
pub const ARC_TOKENS: usize = 32;
/// A token word being redeemed: this bit and the redeemer's liveness token.
const CLAIMED: u64 = 1 << 63;

#[repr(C)]
struct ArcHeader {
    owner: OwnedHeader,
    /// Serialises every change of `holders` and of other processes' entries (the
    /// own-entry increments and decrements above 0 need no lock); robust, so a
    /// holder that dies in there is repaired by a recount.
    lock: ShmMutex<[u32; 2]>,
    holders: AtomicU64,
    spare: AtomicU64,
    slots: [AtomicU64; SLOTS],
    tokens: [AtomicU64; ARC_TOKENS],
}

// SAFETY: repr(C) of a 16-byte all-atomic OwnedHeader, a 16-byte ShmMutex<[u32; 2]>
// and AtomicU64s: no padding, every bit pattern valid (every word is checked on
// use, the lock accepts any word), no pointers, no Drop.
unsafe impl ShmSafe for ArcHeader {
    const FINGERPRINT: u64 = fingerprint::primitive(
        "ShmArcHeader",
        size_of::<ArcHeader>(),
        align_of::<ArcHeader>(),
    );
}

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
        let block = alloc.allocate_block(crate::alloc::INTERNAL, size, align_of::<T>().max(8))?;
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
        // keeps the block from being freed; the header is atomics and a lock,
        // only ever used through their shared API.
        unsafe { &*p.cast::<ArcHeader>() }
    }

    /// Takes the reference a [`share`](Self::share) parked for `token`, once.
    ///
    /// # Errors
    /// [`TokenError::AlreadyClaimed`] if it was redeemed already,
    /// [`TokenError::TypeMismatch`] for a value of another type,
    /// [`TokenError::Access`] if the token names no live block start;
    /// [`CollectionError::Busy`] if the header's lock stayed held.
    pub fn from_token(alloc: A, token: ArcToken<T>) -> Result<Self, Error> {
        raw::require_typed(&alloc)?;
        let me = Self::my_token(&alloc)?;
        let block = Offset::new(token.offset);
        let owner = OwnedHeader::at(&alloc, block).map_err(TokenError::from)?;
        owner.check(block, std::any::type_name::<ShmArc<T, A>>(), arc_fp::<T>())?;
        if owner.claim_word(Ordering::Acquire) != PINNED {
            return Err(TokenError::AlreadyClaimed {
                offset: token.offset,
                found: owner.claim_word(Ordering::Relaxed),
            }
            .into());
        }
        let payload = token
            .offset
            .checked_add(Self::PAYLOAD)
            .ok_or(TokenError::Access(crate::error::AccessError::Null))?;
        let value =
            raw::checked_ptr::<T, A>(&alloc, Offset::new(payload), 1).map_err(TokenError::from)?;
        let arc = ManuallyDrop::new(ShmArc {
            alloc,
            block: token.offset,
            value,
            me,
            fork: fork_epoch(),
        });
        let idx = usize::try_from(token.index).unwrap_or(usize::MAX);
        if idx >= ARC_TOKENS || token.nonce == 0 {
            return Err(TokenError::AlreadyClaimed {
                offset: token.offset,
                found: 0,
            }
            .into());
        }
        let h = arc.header();
        // Claim first, with one compare-exchange that writes only if the nonce
        // (never 0, never repeated) is still there, so a token of a block freed
        // and reused since the checks above changes nothing. The claim mark keeps
        // the reference counted (a recount counts nonzero token words) until it is
        // moved into our entry under the lock.
        let mark = CLAIMED | u64::from(me);
        if h.tokens[idx]
            .compare_exchange(token.nonce, mark, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return Err(TokenError::AlreadyClaimed {
                offset: token.offset,
                found: 0,
            }
            .into());
        }
        crate::fail_point!("arc.redeem.claimed");
        let g = match arc.lock() {
            Ok(g) => g,
            Err(e) => {
                h.tokens[idx].store(token.nonce, Ordering::Release);
                return Err(e);
            }
        };
        arc.adopt();
        h.tokens[idx].store(0, Ordering::Release);
        drop(g);
        Ok(ManuallyDrop::into_inner(arc))
    }

    /// Takes the header's lock; a holder that died under it (or left it
    /// inconsistent) is repaired: dead entries cleared, `holders` recounted.
    fn lock(&self) -> Result<ShmMutexGuard<'_, [u32; 2]>, Error> {
        let h = self.header();
        let mut g = match h.lock.lock_robust_timeout(super::LOCK_TIMEOUT) {
            Some(Ok(g)) => return Ok(g),
            Some(Err(d)) => d.into_inner(),
            None => {
                return Err(CollectionError::Busy {
                    secs: super::LOCK_TIMEOUT.as_secs(),
                }
                .into())
            }
        };
        self.reap_locked();
        let entries = h
            .slots
            .iter()
            .filter(|e| e.load(Ordering::Acquire) != 0)
            .count();
        let tokens = h
            .tokens
            .iter()
            .filter(|t| t.load(Ordering::Acquire) != 0)
            .count();
        h.holders
            .store((entries + tokens) as u64, Ordering::Release);
        g.mark_consistent();
        Ok(g)
    }

    /// Moves one counted reference (a redeemed token's, counted in `holders`)
    /// into this process's registry slot entry. Under the lock.
    fn adopt(&self) {
        let h = self.header();
        let entry = &h.slots[Self::slot_of(self.me)];
        let mine = u64::from(self.me) << 32;
        let e = entry.load(Ordering::Acquire);
        if e != 0 && e >> 32 != u64::from(self.me) {
            // A former holder of this registry slot (dead: the slot is ours now).
            entry.store(0, Ordering::Release);
            h.holders.fetch_sub(1, Ordering::AcqRel);
        }
        // Our own entry changes without the lock only from a count above 0 (we
        // add, or drop to 0 and then wait for this lock), so one add suffices.
        let before = entry.fetch_add(1, Ordering::AcqRel);
        if before == 0 {
            entry.fetch_or(mine, Ordering::AcqRel); // the token's count is now the entry's
        } else {
            // The entry was counted already (possibly at 0, its last drop waiting
            // for this lock): the token's count goes.
            h.holders.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Parks an extra reference for another process under a fresh nonce.
    ///
    /// # Errors
    /// [`CollectionError::Full`] if [`ARC_TOKENS`] tokens are outstanding;
    /// [`CollectionError::Busy`] if the header's lock stayed held.
    pub fn share(&self) -> Result<ArcToken<T>, Error> {
        self.assert_owner();
        let h = self.header();
        let _g = self.lock()?;
        let nonce = fresh_generation(&self.alloc) | 1;
        for (i, t) in h.tokens.iter().enumerate() {
            if t.compare_exchange(0, nonce, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                h.holders.fetch_add(1, Ordering::AcqRel);
                return Ok(ArcToken {
                    offset: self.block,
                    index: i as u64,
                    nonce,
                    _t: std::marker::PhantomData,
                });
            }
        }
        Err(CollectionError::Full {
            capacity: ARC_TOKENS as u64,
        }
        .into())
    }

    /// Releases the references of dead processes (also done by the drop of a
    /// process's last reference); returns how many registry slots it cleared.
    ///
    /// # Errors
    /// [`CollectionError::Busy`] if the header's lock stayed held.
    pub fn reap(&self) -> Result<usize, Error> {
        let _g = self.lock()?;
        Ok(self.reap_locked())
    }

    /// Clears the entries and token claims of dead registrations (under the lock).
    fn reap_locked(&self) -> usize {
        let h = self.header();
        let mut n = 0;
        for t in &h.tokens {
            let w = t.load(Ordering::Acquire);
            if w & CLAIMED != 0 && !self.alloc.token_alive(w as u32) {
                // A redeemer that died between its claim and its adoption.
                t.store(0, Ordering::Release);
                h.holders.fetch_sub(1, Ordering::AcqRel);
            }
        }
        for entry in &h.slots {
            let e = entry.load(Ordering::Acquire);
            if e == 0 || e >> 32 == u64::from(self.me) {
                continue;
            }
            if !self.alloc.token_alive((e >> 32) as u32) {
                entry.store(0, Ordering::Release);
                crate::fail_point!("arc.reap.cleared");
                h.holders.fetch_sub(1, Ordering::AcqRel);
                n += 1;
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
        if entry.fetch_sub(1, Ordering::AcqRel) != mine | 1 {
            return; // other references of this process remain
        }
        // This process's last reference: under the lock, uncount our entry (unless
        // a token was redeemed into it meanwhile), release the dead, and free the
        // block if nothing counts any more.
        let Ok(g) = self.lock() else {
            return; // a lock held by a live process for LOCK_TIMEOUT: leave it
        };
        if entry
            .compare_exchange(mine, 0, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            crate::fail_point!("arc.drop.cleared");
            h.holders.fetch_sub(1, Ordering::AcqRel);
        }
        self.reap_locked();
        if h.holders.load(Ordering::Acquire) == 0 {
            // The lock word lives in the block: it is never unlocked (no process
            // can be waiting: every waiter would hold a counted reference).
            std::mem::forget(g);
            // SAFETY: `holders` is 0 under the lock: no registry slot and no token
            // counts a reference, so no handle in any process reaches the value any
            // more (every handle is counted); this is the one call that saw it.
            let _ = unsafe { self.alloc.free_owned(Offset::new(self.block)) };
        }
    }
}

impl<T: ShmSafe + std::fmt::Debug, A: ShmFree> std::fmt::Debug for ShmArc<T, A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ShmArc").field(&**self).finish()
    }
}
