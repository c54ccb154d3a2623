//! Named roots: find-or-create a typed object by name inside a segment.
//!
//! The directory is one open-addressing hash table of [`MAX_ROOTS`] fixed 128-byte
//! entries in two parts: the first ones (as many as fit) live in the segment's header
//! region (after the typed layer's control words at
//! `ROOTS_OFFSET`); the rest live in one overflow
//! block, allocated from the segment when a probe first needs it, by exactly one
//! process (it claims a control word first; the others wait for the pointer).
//!
//! A name probes every fixed entry before any overflow entry, so a segment with few
//! roots never allocates the overflow block.
//!
//! An entry goes EMPTY → CLAIMING(holder) → READY → REMOVED, where the holder is the
//! claimer's process-registry token (never a pid). The claimer writes name, type and
//! object, then publishes READY with Release. A process that finds a slot CLAIMING
//! waits (bounded) for it; if the claimer died (its registry slot is no longer held
//! by it), it takes the slot over; if the claimer's `init` panicked, the claim was
//! given back.
//! Removed entries are tombstones: probes go past them and they are never reused,
//! so a name's probe sequence is stable and two racing creators always meet at the
//! same first EMPTY slot.
//!
//! Roots are shared by every process, so `root` gives a shared `&T` only for
//! [`ShmShared`] types: [`ShmSync`](crate::typed::ShmSync) ones (atomics, token slots), in a segment of
//! either mode, and the coordination types (locks, channels), also in either mode:
//! no raw write, free or view reaches a root's block
//! ([`AccessError::Root`],
//! [`FreeError::Root`](crate::FreeError::Root)). This is
//! the *concurrently mutable* state of the safety model. Bump allocators have no
//! roots: a reset would release the objects.
//!
//! Every root object's block, and the overflow block, starts with a
//! `PINNED` header (no token can name it) and is **never freed**: removing a
//! root leaves a tombstone and the object allocated, and a raw `free` of a root's
//! block is [`FreeError::Root`](crate::FreeError::Root). (In a raw segment that
//! check reads the block's header and the directory, which raw writes can reach;
//! a process that scribbles on them can make a root freeable, and since every
//! byte of a raw segment's roots is atomic that is a wrong value, never UB.)

use std::mem::{align_of, size_of};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::alloc::{Offset, ShmAllocator};
use crate::error::{AccessError, Error};
use crate::segment::{AllocatorKind, ROOTS_OFFSET};
use crate::typed::token::{payload_offset, OwnedHeader};
use crate::typed::{fingerprint, layout_checked, raw, ShmShared};

/// Longest root name, in bytes.
pub const MAX_ROOT_NAME: usize = 48;
const TYPE_NAME_BYTES: usize = 48;
/// Fingerprint in the [`PINNED`](crate::typed::token::PINNED) header of the overflow directory block.
const DIRECTORY_FP: u64 = fingerprint::primitive("RootDirectory", 128, 64);
// The directory's layout (entry words, control words, sizes) is the segment's:
// `crate::segment::roots_table`.
pub(crate) use crate::segment::roots_table::CONTROL_BYTES;
use crate::segment::roots_table::{
    EMPTY, ENTRY_WORDS, OVERFLOW_HEADER, W_CTRL_OVERFLOW, W_FP, W_OFF, W_STATE,
};
pub use crate::segment::roots_table::MAX_ROOTS;
use crate::segment::roots_table::{FIXED_ROOTS, OVERFLOW_ROOTS};

const CLAIMING: u64 = 1;
const READY: u64 = 2;
const REMOVED: u64 = 3;
// Entry words: [state, fingerprint, offset, epoch, name x6, type name x6]
const W_EPOCH: usize = 3;
const W_NAME: usize = 4;
const W_TYPE: usize = 10;

/// How long a lookup waits for another process that is creating the same root.
const CLAIM_WAIT: Duration = Duration::from_secs(2);

fn pack(s: &[u8], words: &[AtomicU64]) {
    for (i, w) in words.iter().enumerate() {
        let mut b = [0u8; 8];
        for (j, x) in b.iter_mut().enumerate() {
            *x = s.get(i * 8 + j).copied().unwrap_or(0);
        }
        w.store(u64::from_le_bytes(b), Ordering::Relaxed);
    }
}

fn unpack(words: &[AtomicU64]) -> Vec<u8> {
    let mut v: Vec<u8> = words
        .iter()
        .flat_map(|w| w.load(Ordering::Relaxed).to_le_bytes())
        .collect();
    while v.last() == Some(&0) {
        v.pop();
    }
    v
}

fn hash(name: &str) -> usize {
    crate::typed::fingerprint::str(crate::typed::fingerprint::START, name) as usize
}

/// One entry of [`Roots::roots`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootInfo {
    /// The root's name.
    pub name: String,
    /// The type it was created with (its name, possibly truncated to 48 bytes).
    pub type_name: String,
    /// That type's layout fingerprint.
    pub fingerprint: u64,
    /// The object's offset.
    pub offset: Offset,
}

/// Named, typed objects in a segment, shared by every process: `alloc.root::<T>("name")`.
///
/// Implemented for every allocator; import it with [`crate::prelude`]. A bump
/// allocator refuses roots ([`Error::RootsUnsupported`]).
///
/// ```
/// use shared_allocator::prelude::*;
/// use std::sync::atomic::{AtomicU64, Ordering};
/// # let name = format!("doc-roots-{}", std::process::id());
/// # let _cleanup = shared_allocator::segment::UnlinkGuard::new(&name);
/// let alloc = FreeListAllocator::create(&name, 1 << 20)?;
/// let hits = alloc.root::<AtomicU64>("hits")?;          // created, zeroed
/// hits.fetch_add(1, Ordering::Relaxed);
/// let again = alloc.root::<AtomicU64>("hits")?;         // found: same object
/// assert_eq!(again.load(Ordering::Relaxed), 1);
/// assert!(matches!(alloc.root::<std::sync::atomic::AtomicU32>("hits"), Err(Error::TypeMismatch { .. })));
/// assert_eq!(alloc.roots()?.len(), 1);
/// assert!(alloc.remove_root("hits")?);
/// assert!(alloc.roots()?.is_empty());
/// # alloc.unlink()?;
/// # Ok::<(), shared_allocator::Error>(())
/// ```
pub trait Roots: ShmAllocator {
    /// Finds the root `name`, or creates it filled with zero bytes (a valid `T`,
    /// since `T: ShmSafe`). Initialised once even when processes race.
    ///
    /// # Errors
    /// [`Error::TypeMismatch`] if the root exists with another type (by layout
    /// fingerprint); [`Error::InvalidRootName`], [`Error::RootTableFull`],
    /// [`Error::RootBusy`], [`Error::RootsUnsupported`] (bump allocator),
    /// allocation and access errors.
    ///
    /// A `T` that is not [`ShmSync`](crate::typed::ShmSync) (a lock, a channel) puts the segment in typed
    /// mode ([`AccessError::WrongMode`] in a raw one).
    fn root<T: ShmShared>(&self, name: &str) -> Result<Root<T, &Self>, Error> {
        self.root_with(name, zeroed::<T>)
    }

    /// Finds the root `name`, or creates it with `init()` (called at most once, in the
    /// creating process, before anything is allocated). If `init` panics, the claim
    /// on the name is given back (the panic goes on).
    ///
    /// # Errors
    /// As [`root`](Roots::root).
    fn root_with<T: ShmShared>(
        &self,
        name: &str,
        init: impl FnOnce() -> T,
    ) -> Result<Root<T, &Self>, Error> {
        Root::new_with_in(self, name, init)
    }

    /// Every root that exists now (a snapshot).
    ///
    /// # Errors
    /// [`Error::RootsUnsupported`] (bump allocator), or [`AccessError::Corrupted`] if
    /// the directory is damaged.
    fn roots(&self) -> Result<Vec<RootInfo>, Error> {
        list(self)
    }

    /// Removes the name `name`; returns whether it existed. The object itself is not
    /// freed: other processes may hold references from [`root`](Roots::root) (which
    /// carry no pin), so it stays allocated. The
    /// entry becomes a tombstone (it still counts towards [`MAX_ROOTS`]); the name can
    /// be created again.
    ///
    /// # Errors
    /// As [`roots`](Roots::roots), and [`Error::InvalidRootName`].
    fn remove_root(&self, name: &str) -> Result<bool, Error> {
        remove(self, name)
    }
}

impl<A: ShmAllocator> Roots for A {}

/// A named root's object, found or created by name, together with the allocator
/// that keeps its mapping alive: it derefs to `&T`.
///
/// `A` says how the root holds its allocator: [`Roots::root`] gives a
/// `Root<T, &Alloc>` that borrows it; [`Root::new_in`] with an
/// `Arc<FreeListAllocator>` gives a `'static` root that can be stored in a struct
/// next to the allocator or moved into a thread. Roots are never freed, so the
/// reference stays valid for as long as the allocator (its mapping) lives.
///
/// ```
/// use shared_allocator::prelude::*;
/// use shared_allocator::typed::roots::Root;
/// use std::sync::{atomic::{AtomicU64, Ordering}, Arc};
/// # let name = format!("doc-root-{}", std::process::id());
/// # let _cleanup = shared_allocator::segment::UnlinkGuard::new(&name);
/// let alloc = Arc::new(FreeListAllocator::create(&name, 1 << 20)?);
/// let hits: Root<AtomicU64, _> = Root::new_in(alloc.clone(), "hits")?;
/// std::thread::spawn(move || hits.fetch_add(1, Ordering::Relaxed)).join().unwrap();
/// assert_eq!(alloc.root::<AtomicU64>("hits")?.load(Ordering::Relaxed), 1);
/// # Ok::<(), shared_allocator::Error>(())
/// ```
pub struct Root<T, A> {
    alloc: A,
    ptr: std::ptr::NonNull<T>,
}

// SAFETY: a Root is a shared reference to a `T: ShmShared` (Send + Sync: shared
// access from any thread is its own API's promise) plus an `A: ShmAllocator`
// (Send + Sync by the trait's bounds).
unsafe impl<T: ShmShared, A: ShmAllocator> Send for Root<T, A> {}
// SAFETY: as for Send: `&Root` gives `&T` and `&A`, both Sync.
unsafe impl<T: ShmShared, A: ShmAllocator> Sync for Root<T, A> {}

impl<T: ShmShared, A: ShmAllocator> Root<T, A> {
    /// Finds the root `name` in `alloc`, or creates it filled with zero bytes, as
    /// [`Roots::root`] does, and keeps `alloc` (a reference or an `Arc`) with it.
    ///
    /// # Errors
    /// As [`Roots::root`].
    pub fn new_in(alloc: A, name: &str) -> Result<Self, Error> {
        Self::new_with_in(alloc, name, zeroed::<T>)
    }

    /// Finds the root `name`, or creates it with `init()`, as [`Roots::root_with`].
    ///
    /// # Errors
    /// As [`Roots::root`].
    pub fn new_with_in(alloc: A, name: &str, init: impl FnOnce() -> T) -> Result<Self, Error> {
        let ptr = std::ptr::NonNull::from(find_or_create(&alloc, name, init)?);
        Ok(Root { alloc, ptr })
    }

    /// The allocator this root lives in.
    pub fn allocator(&self) -> &A {
        &self.alloc
    }
}

impl<T: ShmShared, A: ShmAllocator> std::ops::Deref for Root<T, A> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        // SAFETY:
        // - `ptr` came from `find_or_create` on `alloc`: a checked, aligned,
        //   initialised `T` inside `alloc`'s mapping;
        // - roots are never freed, and the mapping lives as long as `alloc`, which
        //   this root holds (a reference or an owning handle);
        // - `T: ShmShared`: a shared `&T` is sound while other processes use it
        //   through its own API.
        unsafe { self.ptr.as_ref() }
    }
}

impl<T: ShmShared, A: ShmAllocator + Clone> Clone for Root<T, A> {
    fn clone(&self) -> Self {
        Root {
            alloc: self.alloc.clone(),
            ptr: self.ptr,
        }
    }
}

impl<T: ShmShared + std::fmt::Debug, A: ShmAllocator> std::fmt::Debug for Root<T, A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Root").field(&**self).finish()
    }
}

/// A `T` of all-zero bytes.
fn zeroed<T: ShmShared>() -> T {
    // SAFETY: T: ShmSafe is valid for every bit pattern, all zeros included.
    unsafe { std::mem::zeroed() }
}

fn check_name(name: &str) -> Result<(), Error> {
    let bad = |reason| Error::InvalidRootName {
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() {
        return Err(bad("empty"));
    }
    if name.len() > MAX_ROOT_NAME {
        return Err(bad("longer than 48 bytes"));
    }
    if name.contains('\0') {
        return Err(bad("contains a NUL byte"));
    }
    Ok(())
}

/// The root directory of one segment: the fixed table and, once allocated, the
/// overflow block.
struct Directory<'a> {
    fixed: &'a [AtomicU64],
    overflow_ptr: &'a AtomicU64,
    overflow: Option<&'a [AtomicU64]>,
}

impl<'a> Directory<'a> {
    fn open<A: ShmAllocator + ?Sized>(alloc: &'a A) -> Result<Self, Error> {
        if A::KIND == AllocatorKind::Bump {
            return Err(Error::RootsUnsupported {
                kind: A::KIND.name(),
                reason: "a reset releases every block, so roots could not outlive it; \
                         keep roots in a free-list or slab segment",
            });
        }
        let corrupt = AccessError::Corrupted {
            what: "root table outside the segment",
        };
        let seg = alloc.segment();
        let ctrl = seg
            .words(ROOTS_OFFSET, CONTROL_BYTES / 8)
            .ok_or(corrupt.clone())?;
        let fixed = seg
            .words(
                ROOTS_OFFSET + CONTROL_BYTES,
                (FIXED_ROOTS * ENTRY_WORDS) as u64,
            )
            .ok_or(corrupt)?;
        let mut dir = Directory {
            fixed,
            overflow_ptr: &ctrl[W_CTRL_OVERFLOW],
            overflow: None,
        };
        dir.load_overflow(alloc)?;
        Ok(dir)
    }

    /// Resolves the overflow block if some process published it.
    fn load_overflow<A: ShmAllocator + ?Sized>(&mut self, alloc: &'a A) -> Result<(), Error> {
        let off = self.overflow_ptr.load(Ordering::Acquire);
        // 0: none yet; odd: a process is growing it (GROWING(registry token)).
        if off != 0 && off & 1 == 0 && self.overflow.is_none() {
            let words = raw::slice_at::<AtomicU64, A>(
                alloc,
                Offset::new(off),
                OVERFLOW_ROOTS * ENTRY_WORDS,
            )?;
            self.overflow = Some(words);
        }
        Ok(())
    }

    /// Allocates, zeroes and publishes the overflow block, once per segment: the
    /// pointer word goes 0 → GROWING(token) → offset. Other processes wait (bounded)
    /// for the grower, and take over if it died (its registry token is no longer alive).
    fn grow<A: ShmAllocator + ?Sized>(&mut self, alloc: &'a A) -> Result<(), Error> {
        // Who grows is recorded as a registry liveness token, never a pid (pids
        // lie across pid namespaces and get reused).
        let me = alloc.liveness_token();
        let growing = (u64::from(me) << 1) | 1;
        let start = Instant::now();
        loop {
            self.load_overflow(alloc)?;
            if self.overflow.is_some() {
                return Ok(());
            }
            let cur = self.overflow_ptr.load(Ordering::Acquire);
            let claimed = if cur == 0 {
                self.overflow_ptr
                    .compare_exchange(0, growing, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            } else if cur & 1 == 1 && !alloc.token_alive((cur >> 1) as u32) {
                // The grower died: its block (if any) leaks; grow here instead.
                self.overflow_ptr
                    .compare_exchange(cur, growing, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            } else {
                false
            };
            if claimed {
                let made = (|| {
                    let words = OVERFLOW_ROOTS * ENTRY_WORDS;
                    let header = OVERFLOW_HEADER as usize;
                    let block = alloc.allocate_block(crate::alloc::INTERNAL, header + words * 8, 64)?;
                    OwnedHeader::init_pinned(alloc, block, DIRECTORY_FP)?;
                    let off = Offset::new(block.get() + OVERFLOW_HEADER);
                    raw::write_fresh(alloc, off, (0..words).map(|_| AtomicU64::new(0)))?;
                    Ok::<Offset, Error>(off)
                })();
                return match made {
                    Ok(off) => {
                        // Release: the zeroed entries happen-before any process that
                        // sees the pointer.
                        self.overflow_ptr.store(off.get(), Ordering::Release);
                        self.load_overflow(alloc)
                    }
                    Err(e) => {
                        self.overflow_ptr.store(0, Ordering::Release);
                        Err(e)
                    }
                };
            }
            if start.elapsed() > CLAIM_WAIT {
                return Err(Error::RootBusy {
                    name: "(root directory)".to_owned(),
                    holder: (cur >> 1) as u32,
                });
            }
            std::thread::sleep(Duration::from_micros(100));
        }
    }

    /// Entry `i` of the combined table, if its part exists.
    fn entry(&self, i: usize) -> Option<&'a [AtomicU64]> {
        if i < FIXED_ROOTS {
            Some(&self.fixed[i * ENTRY_WORDS..(i + 1) * ENTRY_WORDS])
        } else {
            let j = i - FIXED_ROOTS;
            self.overflow
                .map(|o| &o[j * ENTRY_WORDS..(j + 1) * ENTRY_WORDS])
        }
    }
}

/// Gives a claimed entry back if the creation does not finish (an error, or a
/// panic in the caller's `init`).
struct ClaimGuard<'e> {
    entry: Option<&'e [AtomicU64]>,
}

impl Drop for ClaimGuard<'_> {
    fn drop(&mut self) {
        if let Some(e) = self.entry {
            e[W_STATE].store(EMPTY, Ordering::Release);
        }
    }
}

fn find_or_create<'a, A: ShmAllocator + ?Sized, T: ShmShared>(
    alloc: &'a A,
    name: &str,
    init: impl FnOnce() -> T,
) -> Result<&'a T, Error> {
    let _ = layout_checked::<T>();
    // A type whose bytes are not all atomic (`ShmShared`: locks, channels) is
    // touched only through its own API: no raw write, free or view reaches a
    // root's block in either mode (`ShmAllocator::check_raw_range`, raw `free`),
    // and `RelPtr::get` needs `ShmSync`.
    check_name(name)?;
    let mut dir = Directory::open(alloc)?;
    let me = alloc.liveness_token();
    let mut init = Some(init);
    let h = hash(name);
    for k in 0..MAX_ROOTS {
        let i = probe(h, k);
        let e = match dir.entry(i) {
            Some(e) => e,
            None => {
                dir.grow(alloc)?;
                dir.entry(i).ok_or(AccessError::Corrupted {
                    what: "root overflow block missing",
                })?
            }
        };
        let start = Instant::now();
        loop {
            let st = e[W_STATE].load(Ordering::Acquire);
            match st & 0xFF {
                EMPTY if st == EMPTY => {
                    let mine = CLAIMING | (u64::from(me) << 8);
                    if e[W_STATE]
                        .compare_exchange(EMPTY, mine, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                    {
                        let init = init.take().expect("only one claim per call");
                        return create(alloc, e, name, init);
                    }
                }
                READY => {
                    if unpack(&e[W_NAME..W_NAME + 6]) != name.as_bytes() {
                        break; // another root: probe on
                    }
                    return resolve(alloc, e, name);
                }
                REMOVED if st == REMOVED => break, // a tombstone: probe on
                CLAIMING => {
                    let pid = (st >> 8) as u32;
                    if !alloc.token_alive(pid) {
                        let mine = CLAIMING | (u64::from(me) << 8);
                        if e[W_STATE]
                            .compare_exchange(st, mine, Ordering::AcqRel, Ordering::Acquire)
                            .is_ok()
                        {
                            // The dead claimer's object (if any) leaks; start afresh here.
                            let init = init.take().expect("only one claim per call");
                            return create(alloc, e, name, init);
                        }
                        continue;
                    }
                    if start.elapsed() > CLAIM_WAIT {
                        return Err(Error::RootBusy {
                            name: name.to_owned(),
                            holder: pid,
                        });
                    }
                    std::thread::sleep(Duration::from_micros(100));
                }
                _ => {
                    return Err(AccessError::Corrupted {
                        what: "root table entry has an unknown state",
                    }
                    .into())
                }
            }
        }
    }
    Err(Error::RootTableFull {
        capacity: MAX_ROOTS,
    })
}

fn create<'a, A: ShmAllocator + ?Sized, T: ShmShared>(
    alloc: &'a A,
    e: &[AtomicU64],
    name: &str,
    init: impl FnOnce() -> T,
) -> Result<&'a T, Error> {
    let guard = ClaimGuard { entry: Some(e) };
    // The value first: if `init` panics, nothing was allocated and the guard gives
    // the claim back while the panic unwinds.
    let value = init();
    pack(name.as_bytes(), &e[W_NAME..W_NAME + 6]);
    let type_name = std::any::type_name::<T>().as_bytes();
    pack(
        &type_name[..type_name.len().min(TYPE_NAME_BYTES)],
        &e[W_TYPE..W_TYPE + 6],
    );
    e[W_FP].store(layout_checked::<T>(), Ordering::Relaxed);
    // The epoch before allocating: the block belongs to this epoch or a later one.
    e[W_EPOCH].store(alloc.epoch(), Ordering::Relaxed);
    // The block starts with a PINNED header (so its start is never bytes the
    // object's users write); the object follows it. Never freed (roots outlive
    // every `&T` handed out, which carry no pin).
    let pay = payload_offset(align_of::<T>());
    let block =
        alloc.allocate_block(crate::alloc::INTERNAL, pay as usize + size_of::<T>().max(1), align_of::<T>().max(8))?;
    OwnedHeader::init_pinned(alloc, block, layout_checked::<T>())?;
    let off = Offset::new(block.get() + pay);
    let v = raw::write_fresh(alloc, off, std::iter::once(value))?;
    e[W_OFF].store(off.get(), Ordering::Relaxed);
    e[W_STATE].store(READY, Ordering::Release);
    std::mem::forget(guard);
    Ok(&v[0])
}

fn resolve<'a, A: ShmAllocator + ?Sized, T: ShmShared>(
    alloc: &'a A,
    e: &[AtomicU64],
    name: &str,
) -> Result<&'a T, Error> {
    let fp = e[W_FP].load(Ordering::Relaxed);
    if fp != layout_checked::<T>() {
        return Err(Error::TypeMismatch {
            name: name.to_owned(),
            expected: std::any::type_name::<T>().to_owned(),
            found: String::from_utf8_lossy(&unpack(&e[W_TYPE..W_TYPE + 6])).into_owned(),
        });
    }
    let epoch = e[W_EPOCH].load(Ordering::Relaxed);
    if epoch != alloc.epoch() {
        return Err(AccessError::Stale {
            handle_epoch: epoch,
            current_epoch: alloc.epoch(),
        }
        .into());
    }
    Ok(raw::value_at(
        alloc,
        Offset::new(e[W_OFF].load(Ordering::Relaxed)),
    )?)
}

fn list<A: ShmAllocator + ?Sized>(alloc: &A) -> Result<Vec<RootInfo>, Error> {
    let dir = Directory::open(alloc)?;
    let mut out = Vec::new();
    for i in 0..MAX_ROOTS {
        let Some(e) = dir.entry(i) else { break };
        if e[W_STATE].load(Ordering::Acquire) == READY {
            out.push(RootInfo {
                name: String::from_utf8_lossy(&unpack(&e[W_NAME..W_NAME + 6])).into_owned(),
                type_name: String::from_utf8_lossy(&unpack(&e[W_TYPE..W_TYPE + 6])).into_owned(),
                fingerprint: e[W_FP].load(Ordering::Relaxed),
                offset: Offset::new(e[W_OFF].load(Ordering::Relaxed)),
            });
        }
    }
    Ok(out)
}

/// The `k`-th entry a name with hash `h` probes: every fixed entry first (so a
/// segment with few roots never needs the overflow block, which a small segment
/// could not even hold), then the overflow entries. Stable for a name, so racing
/// creators meet at the same first EMPTY entry.
fn probe(h: usize, k: usize) -> usize {
    if k < FIXED_ROOTS {
        h.wrapping_add(k) % FIXED_ROOTS
    } else {
        FIXED_ROOTS + h.wrapping_add(k - FIXED_ROOTS) % OVERFLOW_ROOTS
    }
}

fn remove<A: ShmAllocator + ?Sized>(alloc: &A, name: &str) -> Result<bool, Error> {
    check_name(name)?;
    let dir = Directory::open(alloc)?;
    let h = hash(name);
    for k in 0..MAX_ROOTS {
        let i = probe(h, k);
        let Some(e) = dir.entry(i) else {
            return Ok(false);
        };
        let st = e[W_STATE].load(Ordering::Acquire);
        match st & 0xFF {
            EMPTY if st == EMPTY => return Ok(false),
            READY if unpack(&e[W_NAME..W_NAME + 6]) == name.as_bytes() => {
                return Ok(e[W_STATE]
                    .compare_exchange(READY, REMOVED, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok());
            }
            _ => {}
        }
    }
    Ok(false)
}
