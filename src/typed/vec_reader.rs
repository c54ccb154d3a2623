//! `ShmVecReader`: copies a [`ShmVec`](super::ShmVec) that another process writes,
//! consistently (a seqlock over the header) and with byte-wise atomic loads.

use std::mem::size_of;
use std::sync::atomic::{fence, Ordering};

use crate::alloc::{Offset, ShmAllocator};
use crate::error::AccessError;
use crate::typed::{layout_checked, raw, RelPtr, ShmSafe, ShmVecHeader};

/// Reads a [`ShmVec`](super::ShmVec) owned by another process. Every read is validated (bounds,
/// alignment, live block) and consistent: it copies out a prefix the writer had
/// published, with byte-wise atomic loads between two reads of the sequence word
/// (a seqlock), retrying if the writer moved or shrank the buffer meanwhile. This is
/// a checked copy path: a hostile header gives errors, never undefined behaviour or
/// an allocation sized by it.
pub struct ShmVecReader<T: ShmSafe, A: ShmAllocator> {
    alloc: A,
    /// The header (all atomics, `ShmSync`), in the mapping `alloc` keeps alive.
    hdr: std::ptr::NonNull<ShmVecHeader<T>>,
}

// SAFETY: a reader holds an allocator (`Send + Sync` through `ShmAllocator`) and a
// pointer to an all-atomic header; it copies elements out (`T: ShmSafe` is Send).
unsafe impl<T: ShmSafe, A: ShmAllocator> Send for ShmVecReader<T, A> {}
// SAFETY: `&ShmVecReader` only loads the header's atomics and copies out.
unsafe impl<T: ShmSafe, A: ShmAllocator> Sync for ShmVecReader<T, A> {}

/// How often a read retries while the writer keeps moving the buffer.
const READ_RETRIES: u32 = 10_000;

impl<T: ShmSafe + Copy, A: ShmAllocator> ShmVecReader<T, A> {
    /// Opens the vector whose header `ptr` points at.
    ///
    /// Works in a segment of either mode: the reader only loads the header's
    /// atomics and copies elements out with byte-wise atomic loads (the checked
    /// copy path), so whatever writes the block meanwhile, it never races.
    ///
    /// # Errors
    /// As [`RelPtr::get_checked`] (bounds, alignment, a live block), without
    /// `WrongMode`.
    pub fn open(alloc: A, ptr: RelPtr<ShmVecHeader<T>>) -> Result<Self, AccessError> {
        let _ = layout_checked::<T>();
        let hdr =
            std::ptr::NonNull::from(raw::value_at::<ShmVecHeader<T>, A>(&alloc, ptr.offset())?);
        Ok(ShmVecReader { alloc, hdr })
    }

    /// The header: all atomics.
    #[inline]
    fn hdr(&self) -> &ShmVecHeader<T> {
        // SAFETY: `open` checked bounds, alignment and a live block; the mapping
        // lives as long as `self.alloc`; the header is `ShmSync` (all atomics), so
        // a stale or shared view is still sound (wrong values, never UB).
        unsafe { self.hdr.as_ref() }
    }

    /// The published length now (a number from shared memory: a hint, not a bound).
    pub fn len(&self) -> usize {
        usize::try_from(self.hdr().len.load(Ordering::Acquire)).unwrap_or(usize::MAX)
    }

    /// Whether the published length is 0.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One consistent snapshot of `(data, len)` copied in `[from, len)`; `None` if
    /// the writer changed `seq` meanwhile (the caller retries).
    fn try_read(&self, from: usize, out: &mut Vec<T>) -> Option<Result<usize, AccessError>> {
        let keep = out.len();
        let s1 = self.hdr().seq.load(Ordering::Acquire);
        if s1 % 2 == 1 {
            return None;
        }
        let data = self.hdr().data.load(Ordering::Acquire);
        let len = self.hdr().len.load(Ordering::Acquire);
        let cap = self.hdr().cap.load(Ordering::Acquire);
        let result = if len > cap {
            Err(AccessError::Corrupted {
                what: "vector length exceeds its capacity",
            })
        } else {
            let n = len.saturating_sub(from as u64);
            let start = (from as u64)
                .checked_mul(size_of::<T>() as u64)
                .and_then(|b| b.checked_add(data));
            match (n, start) {
                (0, _) => Ok(0),
                (_, None) => Err(AccessError::Corrupted {
                    what: "vector data offset out of range",
                }),
                // `copy_out` checks the whole range against one live block before
                // `out` grows: a hostile `len` is an error here, never an allocation.
                (n, Some(start)) => usize::try_from(n)
                    .map_err(|_| AccessError::Corrupted {
                        what: "vector length out of range",
                    })
                    .and_then(|n| {
                        raw::copy_out(&self.alloc, Offset::new(start), n, out).map(|()| n)
                    }),
            }
        };
        // Seqlock reader: the copies above happen-before this fence, which orders
        // them before the re-read of `seq`.
        fence(Ordering::Acquire);
        if self.hdr().seq.load(Ordering::Relaxed) != s1 {
            out.truncate(keep);
            return None;
        }
        Some(result)
    }

    /// Appends the published elements from index `from` on to `out`; returns how many.
    /// Use it to follow a growing vector incrementally.
    ///
    /// # Errors
    /// [`AccessError`] if the header points outside live memory or is inconsistent
    /// (a corrupt or freed vector), or the writer kept moving the buffer for too long.
    pub fn read_from(&self, from: usize, out: &mut Vec<T>) -> Result<usize, AccessError> {
        for _ in 0..READ_RETRIES {
            match self.try_read(from, out) {
                Some(r) => return r,
                None => std::hint::spin_loop(),
            }
        }
        Err(AccessError::Corrupted {
            what: "vector kept changing while being read",
        })
    }

    /// Copies every published element. The local vector grows only after the range
    /// was checked against the live block, so a hostile length is an error.
    ///
    /// # Errors
    /// As [`read_from`](Self::read_from).
    pub fn to_vec(&self) -> Result<Vec<T>, AccessError> {
        let mut out = Vec::new();
        self.read_from(0, &mut out)?;
        Ok(out)
    }

    /// A copy of the element at `index`, if published.
    ///
    /// # Errors
    /// As [`read_from`](Self::read_from).
    pub fn get(&self, index: usize) -> Result<Option<T>, AccessError> {
        for _ in 0..READ_RETRIES {
            let s1 = self.hdr().seq.load(Ordering::Acquire);
            if s1 % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let data = self.hdr().data.load(Ordering::Acquire);
            let len = self.hdr().len.load(Ordering::Acquire);
            let v = if (index as u64) >= len {
                Ok(None)
            } else {
                let at = (index as u64)
                    .checked_mul(size_of::<T>() as u64)
                    .and_then(|b| b.checked_add(data))
                    .ok_or(AccessError::Corrupted {
                        what: "vector data offset out of range",
                    });
                at.and_then(|at| {
                    let p = raw::checked_ptr::<T, A>(&self.alloc, Offset::new(at), 1)?;
                    // SAFETY: `checked_ptr` proved one aligned T inside one live block
                    // of the mapping `self.alloc` owns (borrowed for this call).
                    Ok(Some(unsafe { raw::atomic_read_relaxed(p) }))
                })
            };
            fence(Ordering::Acquire);
            if self.hdr().seq.load(Ordering::Relaxed) != s1 {
                continue;
            }
            return v;
        }
        Err(AccessError::Corrupted {
            what: "vector kept changing while being read",
        })
    }
}

/// A loom model of the vector's seqlock: the writer's retire step (`seq` odd,
/// Release fence, rewrite, `seq` even) against a reader's copy (`seq` Acquire,
/// relaxed atomic copy, Acquire fence, `seq` again), with the orderings of
/// `ShmVec::shrink_len`/`ShmVec::push` and [`ShmVecReader::read_from`]. Elements
/// are loom atomics with Relaxed accesses, as the byte-wise atomic copies are.
/// Run: `RUSTFLAGS="--cfg loom" cargo test --release --lib loom_`.
#[cfg(all(test, loom))]
mod loom_tests {
    use loom::sync::atomic::{fence, AtomicU64};
    use loom::sync::Arc;
    use std::sync::atomic::Ordering;

    struct Model {
        seq: AtomicU64,
        len: AtomicU64,
        /// Two elements that the writer always keeps equal in a published state.
        elems: [AtomicU64; 2],
    }

    /// The reader: `Some` only for a consistent snapshot.
    fn read(m: &Model) -> Option<(u64, [u64; 2])> {
        let s1 = m.seq.load(Ordering::Acquire);
        if s1 % 2 == 1 {
            return None;
        }
        let len = m.len.load(Ordering::Acquire);
        let copy = [0, 1].map(|i| m.elems[i].load(Ordering::Relaxed));
        fence(Ordering::Acquire);
        (m.seq.load(Ordering::Relaxed) == s1).then_some((len, copy))
    }

    #[test]
    fn loom_seqlock_reader_never_accepts_a_torn_copy() {
        loom::model(|| {
            let m = Arc::new(Model {
                seq: AtomicU64::new(0),
                len: AtomicU64::new(2),
                elems: [AtomicU64::new(1), AtomicU64::new(1)],
            });
            let writer = {
                let m = m.clone();
                loom::thread::spawn(move || {
                    // Retire both elements and write new ones in their place
                    // (`pop`/`clear` then `push`), inside one odd section.
                    m.seq.fetch_add(1, Ordering::AcqRel);
                    fence(Ordering::Release);
                    m.len.store(0, Ordering::Release);
                    m.elems[0].store(2, Ordering::Relaxed);
                    m.elems[1].store(2, Ordering::Relaxed);
                    m.len.store(2, Ordering::Release);
                    m.seq.fetch_add(1, Ordering::AcqRel);
                })
            };
            if let Some((len, [a, b])) = read(&m) {
                if len == 2 {
                    assert_eq!(a, b, "accepted a copy mixing two generations");
                }
            }
            writer.join().unwrap();
            assert_eq!(read(&m), Some((2, [2, 2])));
        });
    }
}
