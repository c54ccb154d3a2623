//! `FreeListAllocator` for Python, with the seed's slot accounting.
//!
//! The Rust free list serves any size. The seed's `slot_size` / `num_slots` survive
//! as (1) the size of the data region (large enough that `num_slots` blocks of up
//! to `slot_size` bytes always fit) and (2) a process-shared count of live blocks,
//! capped at `num_slots`: `allocate` returns `None` once `num_slots` blocks are
//! live, as the seed's did, and `used_slots()` / `available_slots()` are O(1).
//! The parameters and the count live in a named root of the segment, so processes
//! that open it by name see the same values.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pyo3::prelude::*;

use shared_allocator::alloc::SIZE_CLASSES;
use shared_allocator::typed::Roots;
use shared_allocator::{AllocError, FreeListAllocator, Offset, ShmAllocator, ShmFree};

use crate::common::allocator_class;
use crate::core::{align_arg, int_arg, offsets_arg, offsets_array, opt_int, size_arg, Handle};
use crate::errors::{self, Kind};

/// Name of the root holding `[state, slot_size, num_slots, live_slots]`.
const META_ROOT: &str = "shared_allocator.py.freelist";
/// `state` once the creator stored the parameters.
const READY: u64 = 0x5059_534c_4f54_5301; // "PYSLOTS" + 1
/// `state` while some process is storing them.
const BUSY: u64 = 1;
/// How long `open` waits for the creator to store the parameters. Only a segment
/// created without this package (from Rust) waits the whole time; then defaults
/// apply: slot_size 256, num_slots = capacity // 256.
const META_WAIT: Duration = Duration::from_secs(2);
const PAGE: u64 = 4096;

/// Bytes of data region for `num_slots` blocks of `slot_size` bytes: the blocks as
/// the free list packs them (size class per page, or whole pages), plus a page for
/// the metadata root and one per class-stack shard, so that partly used spans held
/// by several processes never make the last slots fail. At least the seed's
/// `slot_size * num_slots`.
fn data_capacity(slot_size: u64, num_slots: u64) -> Option<u64> {
    let pages = match SIZE_CLASSES.iter().find(|&&c| u64::from(c) >= slot_size) {
        Some(&class) => num_slots.div_ceil(PAGE / u64::from(class)),
        None => num_slots.checked_mul(slot_size.div_ceil(PAGE))?,
    };
    let bytes = pages.checked_add(1 + 4)?.checked_mul(PAGE)?;
    Some(bytes.max(slot_size.checked_mul(num_slots)?))
}

/// General-purpose allocator in POSIX shared memory, with individual ``free``.
///
/// ``FreeListAllocator(name, capacity=10*1024*1024, slot_size=256, num_slots=None,
/// create=True)``. As in the seed package, ``num_slots`` defaults to
/// ``capacity // slot_size`` and ``capacity`` becomes ``slot_size * num_slots``.
///
/// Unlike the seed, any size from 1 byte up to the capacity can be allocated (not
/// only up to ``slot_size``), at any power-of-two alignment up to 4096; memory freed
/// at one size is reused at every other. The slot arguments mean: the data region
/// always fits ``num_slots`` blocks of up to ``slot_size`` bytes, and at most
/// ``num_slots`` blocks are live at once (``allocate`` returns ``None`` beyond, as
/// the seed did); ``used_slots()`` counts live blocks of any size.
///
/// Lock-free and process-safe; double free is detected (``DoubleFreeError``).
#[pyclass(module = "shared_allocator", name = "FreeListAllocator", frozen)]
pub(crate) struct PyFreeList {
    h: Handle<FreeListAllocator>,
    slot_size: u64,
    num_slots: u64,
    /// Absolute offset of the metadata root (`[AtomicU64; 4]`).
    meta: Offset,
}

impl PyFreeList {
    /// The live-slot counter, shared by every process.
    #[inline]
    fn live(&self) -> &AtomicU64 {
        &self.words()[3]
    }

    fn words(&self) -> &[AtomicU64; 4] {
        meta_at(&self.h.core.alloc, self.meta)
    }

    /// Reserves `n` slots; false if that would exceed `num_slots`.
    #[inline]
    fn reserve(&self, n: u64) -> bool {
        let live = self.live();
        let before = live.fetch_add(n, Ordering::AcqRel);
        if before.saturating_add(n) > self.num_slots {
            live.fetch_sub(n, Ordering::AcqRel);
            return false;
        }
        true
    }

    #[inline]
    fn unreserve(&self, n: u64) {
        if n > 0 {
            self.live().fetch_sub(n, Ordering::AcqRel);
        }
    }
}

/// The metadata root at `off`, which `open_meta` resolved through the root table
/// (8-aligned, 32 bytes, inside the mapping of `alloc`).
fn meta_at(alloc: &FreeListAllocator, off: Offset) -> &[AtomicU64; 4] {
    let p = shared_allocator::__layout::ptr_at(alloc.segment(), off.get(), 32, 8)
        .expect("metadata root validated at open");
    // SAFETY:
    // - `ptr_at` checked that 32 bytes at `off` lie inside the mapping and are
    //   8-aligned, the size and alignment of `[AtomicU64; 4]`;
    // - every bit pattern is a valid `AtomicU64`, and every process accesses these
    //   words only atomically, so sharing them is not a data race;
    // - the reference borrows `alloc`, which owns the mapping, so it cannot outlive it.
    unsafe { &*p.as_ptr().cast::<[AtomicU64; 4]>() }
}

/// Finds (or, for the creator, stores) the slot parameters in the root.
fn open_meta(
    alloc: &FreeListAllocator,
    create: Option<(u64, u64)>,
) -> Result<(Offset, u64, u64), String> {
    let m = alloc
        .root::<[AtomicU64; 4]>(META_ROOT)
        .map_err(|e| e.to_string())?;
    let base =
        shared_allocator::__layout::ptr_at(alloc.segment(), 0, 0, 1).ok_or("empty mapping")?;
    let off = Offset::new((&*m as *const [AtomicU64; 4] as usize - base.as_ptr() as usize) as u64);
    let store = |(s, n): (u64, u64)| -> bool {
        if m[0]
            .compare_exchange(0, BUSY, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            m[1].store(s, Ordering::Relaxed);
            m[2].store(n, Ordering::Relaxed);
            m[0].store(READY, Ordering::Release);
            return true;
        }
        false
    };
    if let Some(params) = create {
        store(params);
    }
    let start = Instant::now();
    loop {
        match m[0].load(Ordering::Acquire) {
            READY => {
                let (s, n) = (m[1].load(Ordering::Relaxed), m[2].load(Ordering::Relaxed));
                if s == 0 || n == 0 {
                    return Err("slot parameters in the segment are zero".into());
                }
                return Ok((off, s, n));
            }
            0 if start.elapsed() >= META_WAIT => {
                // Not made by this package: the seed's defaults.
                let cap = alloc.segment().layout().data_len;
                store((256, (cap / 256).max(1)));
            }
            0 | BUSY => std::thread::sleep(Duration::from_millis(1)),
            _ => return Err("unknown state of the slot metadata".into()),
        }
    }
}

fn out_of_memory(e: &AllocError) -> bool {
    matches!(
        e,
        AllocError::OutOfMemory { .. } | AllocError::TooLarge { .. }
    )
}

allocator_class!(PyFreeList, "FreeListAllocator", {
    #[new]
    #[pyo3(
        signature = (name, capacity = None, slot_size = None, num_slots = None, create = true),
        text_signature = "(name, capacity=10*1024*1024, slot_size=256, num_slots=None, create=True)"
    )]
    fn new(
        py: Python<'_>,
        name: &str,
        capacity: Option<&Bound<'_, PyAny>>,
        slot_size: Option<&Bound<'_, PyAny>>,
        num_slots: Option<&Bound<'_, PyAny>>,
        create: bool,
    ) -> PyResult<Self> {
        let name = name.to_owned();
        let bad = |msg: String| errors::err(py, Kind::InvalidArgument, msg);
        let alloc = if create {
            let cap = opt_int(py, capacity, 10 * 1024 * 1024, "capacity")?;
            let slot = opt_int(py, slot_size, 256, "slot_size")?;
            if slot <= 0 {
                return Err(bad(format!("slot_size must be positive, got {slot}")));
            }
            let n = opt_int(py, num_slots, cap / slot, "num_slots")?;
            if n <= 0 {
                return Err(bad(format!(
                    "num_slots must be positive (capacity {cap} / slot_size {slot} = {n})"
                )));
            }
            let (slot, n) = (slot as u64, n as u64);
            let bytes = data_capacity(slot, n)
                .ok_or_else(|| bad(format!("slot_size {slot} x num_slots {n} is too large")))?;
            let made = py.detach(|| {
                let a = FreeListAllocator::create(&name, bytes)?;
                Ok(a)
            });
            let a = made.map_err(|e| errors::segment(py, e))?;
            match py.detach(|| open_meta(&a, Some((slot, n)))) {
                Ok(m) => (a, m),
                Err(msg) => {
                    let _ = a.unlink();
                    return Err(errors::err(py, Kind::Corrupted, msg));
                }
            }
        } else {
            let a = py
                .detach(|| FreeListAllocator::open(&name))
                .map_err(|e| errors::segment(py, e))?;
            let m = py
                .detach(|| open_meta(&a, None))
                .map_err(|msg| errors::err(py, Kind::Corrupted, msg))?;
            (a, m)
        };
        let (a, (meta, slot_size, num_slots)) = alloc;
        Ok(PyFreeList {
            h: Handle::new(a, &name),
            slot_size,
            num_slots,
            meta,
        })
    }

    /// Allocates ``size`` bytes (any size up to the capacity; ``0`` is taken as 1, as
    /// the seed's default ``size=0`` allocated a slot) aligned to ``alignment`` (a
    /// power of two, at most 4096). Returns the offset, or ``None`` when memory runs
    /// out or ``num_slots`` blocks are already live.
    #[pyo3(signature = (size = None, alignment = None), text_signature = "(self, size=0, alignment=8)")]
    fn allocate(
        &self,
        py: Python<'_>,
        size: Option<&Bound<'_, PyAny>>,
        alignment: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Option<u64>> {
        let core = self.h.get(py)?;
        let size = size_arg(py, opt_int(py, size, 0, "size")?)?.max(1);
        let align = align_arg(py, opt_int(py, alignment, 8, "alignment")?)?;
        if !self.reserve(1) {
            return Ok(None);
        }
        match core.alloc.allocate_aligned(size, align) {
            Ok(o) => Ok(Some(core.rel(o))),
            Err(e) => {
                self.unreserve(1);
                if out_of_memory(&e) {
                    Ok(None)
                } else {
                    Err(errors::alloc(py, e))
                }
            }
        }
    }

    /// Frees the block at ``offset`` (as returned by ``allocate``).
    ///
    /// Raises ``DoubleFreeError`` if it is not allocated (freed twice),
    /// ``NotAllocatedError`` if ``offset`` is not the start of a block,
    /// ``OutOfBoundsError`` if outside the data region (all ``ValueError``), and
    /// ``ExportedViewsError`` (a ``BufferError``) while views into the block exist.
    fn free(&self, py: Python<'_>, offset: &Bound<'_, PyAny>) -> PyResult<()> {
        let core = self.h.get(py)?;
        let rel = int_arg(py, offset, "offset")?;
        let off = core.abs(py, rel, 0)?;
        core.no_views_in_block(py, off, rel)?;
        core.alloc
            .free(off)
            .map_err(|e| errors::free(py, e, rel as u64))?;
        self.unreserve(1);
        Ok(())
    }

    /// Allocates ``count`` blocks of ``size`` bytes and returns their offsets (an
    /// ``array.array('Q')``), or ``None`` if they do not all fit (then none stays allocated).
    #[pyo3(signature = (size, count, alignment = None), text_signature = "(self, size, count, alignment=8)")]
    fn allocate_many<'py>(
        &self,
        py: Python<'py>,
        size: &Bound<'py, PyAny>,
        count: &Bound<'py, PyAny>,
        alignment: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        let core = self.h.get(py)?;
        let size = size_arg(py, int_arg(py, size, "size")?)?.max(1);
        let count = int_arg(py, count, "count")?;
        let align = align_arg(py, opt_int(py, alignment, 8, "alignment")?)?;
        let Ok(n) = u64::try_from(count) else {
            return Err(errors::err(
                py,
                Kind::InvalidArgument,
                format!("count must be >= 0, got {count}"),
            ));
        };
        if n > self.num_slots || !self.reserve(n) {
            return Ok(None);
        }
        let run = || -> Result<Option<Vec<u64>>, AllocError> {
            let mut v = Vec::with_capacity(n as usize);
            for _ in 0..n {
                match core.alloc.allocate_aligned(size, align) {
                    Ok(o) => v.push(core.rel(o)),
                    Err(e) => {
                        for &r in &v {
                            let _ = core.alloc.free(Offset::new(core.base + r));
                        }
                        return if out_of_memory(&e) { Ok(None) } else { Err(e) };
                    }
                }
            }
            Ok(Some(v))
        };
        let r = if n > 256 { py.detach(run) } else { run() };
        match r {
            Ok(Some(v)) => Ok(Some(offsets_array(py, &v)?)),
            Ok(None) => {
                self.unreserve(n);
                Ok(None)
            }
            Err(e) => {
                self.unreserve(n);
                Err(errors::alloc(py, e))
            }
        }
    }

    /// Frees every offset of an iterable, in order. On the first failure raises that
    /// error (as ``free`` would); the offsets before it are freed, the rest are not.
    /// A non-integer item raises ``TypeError`` before anything is freed.
    fn free_many(&self, py: Python<'_>, offsets: &Bound<'_, PyAny>) -> PyResult<()> {
        let core = self.h.get(py)?;
        let rels = offsets_arg(py, offsets)?;
        let mut freed = 0u64;
        let mut result = Ok(());
        for &rel in &rels {
            let step = core.abs(py, rel, 0).and_then(|off| {
                core.no_views_in_block(py, off, rel)?;
                core.alloc
                    .free(off)
                    .map_err(|e| errors::free(py, e, rel as u64))
            });
            if let Err(e) = step {
                result = Err(e);
                break;
            }
            freed += 1;
        }
        self.unreserve(freed);
        result
    }

    /// Number of blocks that can still be allocated before ``num_slots`` are live.
    fn available_slots(&self, py: Python<'_>) -> PyResult<u64> {
        self.h.get(py)?;
        Ok(self
            .num_slots
            .saturating_sub(self.live().load(Ordering::Acquire)))
    }

    /// Number of live blocks (allocated through this package, in any process).
    fn used_slots(&self, py: Python<'_>) -> PyResult<u64> {
        self.h.get(py)?;
        Ok(self.live().load(Ordering::Acquire).min(self.num_slots))
    }

    /// ``slot_size * num_slots``, as in the seed. The data region may be a little
    /// larger (see the class docs).
    #[getter]
    fn capacity(&self) -> u64 {
        self.slot_size * self.num_slots
    }

    /// The ``slot_size`` given at creation.
    #[getter]
    fn slot_size(&self) -> u64 {
        self.slot_size
    }

    /// The most blocks live at once.
    #[getter]
    fn num_slots(&self) -> u64 {
        self.num_slots
    }

    /// Pickling support: unpickles as ``FreeListAllocator(name, create=False)``.
    fn __reduce__<'py>(
        slf: &Bound<'py, Self>,
    ) -> (Bound<'py, PyAny>, (String, u64, u64, u64, bool)) {
        let t = slf.get();
        let args = (
            t.h.core.name.clone(),
            t.capacity(),
            t.slot_size,
            t.num_slots,
            false,
        );
        (slf.get_type().into_any(), args)
    }
});
