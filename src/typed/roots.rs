//! Named roots: find-or-create a typed object by name inside a segment.
//!
//! The table lives in the segment's header region (see
//! [`ROOTS_OFFSET`](crate::segment::ROOTS_OFFSET)): open addressing over fixed
//! 128-byte entries, never deleted, so a name's probe sequence is stable. An entry
//! goes EMPTY → CLAIMING(pid) → READY; the claimer writes name, type and object,
//! then publishes READY with Release. A process that finds a slot CLAIMING waits
//! (bounded) for it; if the claimer died (its pid is gone), it takes the slot over.

use std::mem::{align_of, size_of};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::alloc::{Offset, ShmAllocator};
use crate::error::{AccessError, Error};
use crate::segment::{pid_alive, ROOTS_LEN, ROOTS_OFFSET};
use crate::typed::{raw, ShmSafe};

/// Longest root name, in bytes.
pub const MAX_ROOT_NAME: usize = 48;
const TYPE_NAME_BYTES: usize = 48;
const ENTRY_WORDS: usize = 16;
/// How many named roots one segment holds.
pub const MAX_ROOTS: usize = (ROOTS_LEN as usize) / (ENTRY_WORDS * 8);

const EMPTY: u64 = 0;
const CLAIMING: u64 = 1;
const READY: u64 = 2;
// Entry words: [state, fingerprint, offset, epoch, name x6, type name x6]
const W_STATE: usize = 0;
const W_FP: usize = 1;
const W_OFF: usize = 2;
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

/// Named, typed objects in a segment, shared by every process: `alloc.root::<T>("name")`.
///
/// Implemented for every allocator; import it with [`crate::prelude`].
///
/// ```
/// use shared_allocator::prelude::*;
/// use std::sync::atomic::{AtomicU64, Ordering};
/// # let name = format!("doc-roots-{}", std::process::id());
/// # let _cleanup = shared_allocator::segment::UnlinkGuard::new(&name);
/// let alloc = FreeListAllocator::create(&name, 1 << 20)?;
/// let hits: &AtomicU64 = alloc.root("hits")?;          // created, zeroed
/// hits.fetch_add(1, Ordering::Relaxed);
/// let again: &AtomicU64 = alloc.root("hits")?;         // found: same object
/// assert_eq!(again.load(Ordering::Relaxed), 1);
/// assert!(matches!(alloc.root::<u32>("hits"), Err(Error::TypeMismatch { .. })));
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
    /// [`Error::RootBusy`], allocation and access errors; for a bump allocator,
    /// [`AccessError::Stale`] if the root was created before the last reset.
    fn root<T: ShmSafe>(&self, name: &str) -> Result<&T, Error> {
        self.root_with(name, zeroed::<T>)
    }

    /// Finds the root `name`, or creates it with `init()` (called at most once, in the
    /// creating process).
    ///
    /// # Errors
    /// As [`root`](Roots::root).
    fn root_with<T: ShmSafe>(&self, name: &str, init: impl FnOnce() -> T) -> Result<&T, Error> {
        find_or_create(self, name, init)
    }
}

impl<A: ShmAllocator> Roots for A {}

/// A `T` of all-zero bytes.
fn zeroed<T: ShmSafe>() -> T {
    // SAFETY: T: ShmSafe is valid for every bit pattern, all zeros included.
    unsafe { std::mem::zeroed() }
}

fn find_or_create<'a, A: ShmAllocator + ?Sized, T: ShmSafe>(
    alloc: &'a A,
    name: &str,
    init: impl FnOnce() -> T,
) -> Result<&'a T, Error> {
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
    let table =
        alloc
            .segment()
            .words(ROOTS_OFFSET, ROOTS_LEN / 8)
            .ok_or(AccessError::Corrupted {
                what: "root table outside the segment",
            })?;
    let me = crate::segment::current_pid();
    let mut init = Some(init);
    let h = hash(name);
    for k in 0..MAX_ROOTS {
        let i = (h + k) % MAX_ROOTS;
        let e = &table[i * ENTRY_WORDS..(i + 1) * ENTRY_WORDS];
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
                CLAIMING => {
                    let pid = (st >> 8) as u32;
                    if !pid_alive(pid) {
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
                            pid,
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

fn create<'a, A: ShmAllocator + ?Sized, T: ShmSafe>(
    alloc: &'a A,
    e: &[AtomicU64],
    name: &str,
    init: impl FnOnce() -> T,
) -> Result<&'a T, Error> {
    pack(name.as_bytes(), &e[W_NAME..W_NAME + 6]);
    let type_name = std::any::type_name::<T>().as_bytes();
    pack(
        &type_name[..type_name.len().min(TYPE_NAME_BYTES)],
        &e[W_TYPE..W_TYPE + 6],
    );
    e[W_FP].store(T::FINGERPRINT, Ordering::Relaxed);
    let result = (|| {
        let off = alloc.allocate_aligned(size_of::<T>().max(1), align_of::<T>())?;
        e[W_EPOCH].store(alloc.epoch(), Ordering::Relaxed);
        raw::write_fresh(alloc, off, std::iter::once(init()))?;
        Ok::<Offset, Error>(off)
    })();
    match result {
        Ok(off) => {
            e[W_OFF].store(off.get(), Ordering::Relaxed);
            e[W_STATE].store(READY, Ordering::Release);
            Ok(raw::value_at(alloc, off)?)
        }
        Err(err) => {
            // Give the slot back so the root can be created later.
            e[W_STATE].store(EMPTY, Ordering::Release);
            Err(err)
        }
    }
}

fn resolve<'a, A: ShmAllocator + ?Sized, T: ShmSafe>(
    alloc: &'a A,
    e: &[AtomicU64],
    name: &str,
) -> Result<&'a T, Error> {
    let fp = e[W_FP].load(Ordering::Relaxed);
    if fp != T::FINGERPRINT {
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
