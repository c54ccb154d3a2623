//! `SlabAllocator` for Python.

use pyo3::prelude::*;

use shared_allocator::{AllocError, Offset, ShmAllocator, ShmFree, SlabAllocator};

use crate::common::allocator_class;
use crate::core::{
    align_arg, int_arg, offsets_arg, offsets_array, opt_int, param, size_arg, Handle,
};

/// Largest data region of a slab allocator (slots rounded up to 8 bytes): 1 TiB.
const SLAB_MAX_DATA: u64 = 1 << 40;
use crate::errors::{self, Kind};

/// Fixed-size slot ("slab") allocator in POSIX shared memory.
///
/// ``SlabAllocator(name, slab_size=256, num_slabs=4096, create=True)``: ``num_slabs``
/// slots of ``slab_size`` bytes, tracked by an atomic bitmap (each at most 2**32,
/// 1 TiB in all). With ``create=False``
/// both are read from the segment.
///
/// Every allocation takes one whole slab; requests larger than ``slab_size`` raise
/// ``InvalidArgumentError`` (a ``ValueError``) as in the seed. Lock-free and
/// process-safe; double free raises ``DoubleFreeError`` (a ``ValueError``).
#[pyclass(module = "shared_allocator", name = "SlabAllocator", frozen)]
pub(crate) struct PySlab {
    h: Handle<SlabAllocator>,
}

fn out_of_memory(e: &AllocError) -> bool {
    matches!(e, AllocError::OutOfMemory { .. })
}

impl PySlab {
    /// The request size for `size` (`None` or 0: one whole slab).
    fn request(&self, py: Python<'_>, size: Option<&Bound<'_, PyAny>>) -> PyResult<usize> {
        let slab = self.h.core.alloc.slot_size();
        let size = size_arg(py, opt_int(py, size, 0, "size")?)?;
        if size as u64 > slab {
            return Err(errors::err(
                py,
                Kind::InvalidArgument,
                format!("Requested size {size} exceeds slab size {slab}"),
            ));
        }
        Ok(if size == 0 { slab as usize } else { size })
    }
}

allocator_class!(PySlab, "SlabAllocator", {
    #[new]
    #[pyo3(
        signature = (name, slab_size = None, num_slabs = None, create = true),
        text_signature = "(name, slab_size=256, num_slabs=4096, create=True)"
    )]
    fn new(
        py: Python<'_>,
        name: &str,
        slab_size: Option<&Bound<'_, PyAny>>,
        num_slabs: Option<&Bound<'_, PyAny>>,
        create: bool,
    ) -> PyResult<Self> {
        let name = name.to_owned();
        let a = if create {
            let size = param(py, slab_size, 256, "slab_size", 1 << 32, "4 GiB")?;
            let count = param(py, num_slabs, 4096, "num_slabs", 1 << 32, "2**32")?;
            let stride = size.next_multiple_of(8);
            if stride.saturating_mul(count) > SLAB_MAX_DATA {
                return Err(errors::err(
                    py,
                    Kind::InvalidArgument,
                    format!(
                        "slab_size {size} x num_slabs {count} needs {} bytes, more than the \
                         limit of {SLAB_MAX_DATA} (1 TiB)",
                        stride as u128 * count as u128
                    ),
                ));
            }
            py.detach(|| SlabAllocator::create(&name, size, count))
        } else {
            py.detach(|| SlabAllocator::open(&name))
        };
        let a = a.map_err(|e| errors::segment(py, e))?;
        if create {
            crate::lifecycle::note_created(a.segment());
        }
        Ok(PySlab {
            h: Handle::new(a, &name),
        })
    }

    /// Opens the segment ``name``, or creates it with these parameters if it does
    /// not exist; returns ``(allocator, created)``. Race-free: of any number of
    /// processes calling it at once, exactly one creates, and all end up on one
    /// segment. A crashed creator's half-initialised segment is replaced. An
    /// existing segment is opened as it is (its parameters win).
    #[staticmethod]
    #[pyo3(
        signature = (name, slab_size = None, num_slabs = None),
        text_signature = "(name, slab_size=256, num_slabs=4096)"
    )]
    fn open_or_create(
        py: Python<'_>,
        name: &str,
        slab_size: Option<&Bound<'_, PyAny>>,
        num_slabs: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<(Self, bool)> {
        let size = param(py, slab_size, 256, "slab_size", 1 << 32, "4 GiB")?;
        let count = param(py, num_slabs, 4096, "num_slabs", 1 << 32, "2**32")?;
        let (a, created) = py
            .detach(|| SlabAllocator::open_or_create(name, size, count))
            .map_err(|e| errors::segment(py, e))?;
        if created {
            crate::lifecycle::note_created(a.segment());
        }
        Ok((
            PySlab {
                h: Handle::new(a, name),
            },
            created,
        ))
    }

    /// Allocates one slab and returns its offset, or ``None`` when all are in use.
    ///
    /// ``size`` (optional, as in the seed) must not exceed ``slab_size``;
    /// ``alignment`` (a power of two) must not exceed the slots' natural alignment.
    #[pyo3(signature = (size = None, alignment = None), text_signature = "(self, size=None, alignment=8)")]
    fn allocate(
        &self,
        py: Python<'_>,
        size: Option<&Bound<'_, PyAny>>,
        alignment: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Option<u64>> {
        let core = self.h.get(py)?;
        let size = self.request(py, size)?;
        let align = align_arg(py, opt_int(py, alignment, 8, "alignment")?)?;
        match core.alloc.allocate_aligned(size, align) {
            Ok(o) => Ok(Some(core.rel(o))),
            Err(e) if out_of_memory(&e) => Ok(None),
            Err(e) => Err(errors::alloc(py, e)),
        }
    }

    /// Frees the slab at ``offset``.
    ///
    /// Raises ``DoubleFreeError`` if it is not allocated, ``NotAllocatedError`` if
    /// ``offset`` is not the start of a slab, ``OutOfBoundsError`` if outside the data
    /// region (all ``ValueError``), ``ExportedViewsError`` (a ``BufferError``) while
    /// views into the slab exist.
    fn free(&self, py: Python<'_>, offset: &Bound<'_, PyAny>) -> PyResult<()> {
        let core = self.h.get(py)?;
        let rel = int_arg(py, offset, "offset")?;
        let off = core.abs(py, rel, 0)?;
        core.no_views_in_block(py, off, rel)?;
        core.alloc
            .free(off)
            .map_err(|e| errors::free(py, e, rel as u64))
    }

    /// Allocates ``count`` slabs and returns their offsets (an ``array.array('Q')``), or ``None`` if
    /// not enough are free (then none stays allocated). ``size`` is checked as in
    /// ``allocate`` (``None``: a whole slab).
    #[pyo3(signature = (size, count, alignment = None), text_signature = "(self, size, count, alignment=8)")]
    fn allocate_many<'py>(
        &self,
        py: Python<'py>,
        size: Option<&Bound<'py, PyAny>>,
        count: &Bound<'py, PyAny>,
        alignment: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        let core = self.h.get(py)?;
        let size = self.request(py, size)?;
        let count = int_arg(py, count, "count")?;
        let align = align_arg(py, opt_int(py, alignment, 8, "alignment")?)?;
        let Ok(n) = usize::try_from(count) else {
            return Err(errors::err(
                py,
                Kind::InvalidArgument,
                format!("count must be >= 0, got {count}"),
            ));
        };
        if n as u64 > core.alloc.slot_count() {
            return Ok(None);
        }
        let run = || -> Result<Option<Vec<u64>>, AllocError> {
            let mut v = Vec::with_capacity(n);
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
            Ok(None) => Ok(None),
            Err(e) => Err(errors::alloc(py, e)),
        }
    }

    /// Frees every offset of an iterable, in order. On the first failure raises that
    /// error (as ``free`` would); the offsets before it are freed, the rest are not.
    /// A non-integer item raises ``TypeError`` before anything is freed.
    fn free_many(&self, py: Python<'_>, offsets: &Bound<'_, PyAny>) -> PyResult<()> {
        let core = self.h.get(py)?;
        for rel in offsets_arg(py, offsets)? {
            let off = core.abs(py, rel, 0)?;
            core.no_views_in_block(py, off, rel)?;
            core.alloc
                .free(off)
                .map_err(|e| errors::free(py, e, rel as u64))?;
        }
        Ok(())
    }

    /// Number of slabs in use (counted in the shared bitmap: every process's).
    fn used_slabs(&self, py: Python<'_>) -> PyResult<u64> {
        Ok(self.h.get(py)?.alloc.stats().live_blocks.unwrap_or(0))
    }

    /// Number of free slabs.
    fn available_slabs(&self, py: Python<'_>) -> PyResult<u64> {
        let a = &self.h.get(py)?.alloc;
        Ok(a.slot_count() - a.stats().live_blocks.unwrap_or(0).min(a.slot_count()))
    }

    /// ``slab_size * num_slabs``.
    #[getter]
    fn capacity(&self) -> u64 {
        self.h.core.alloc.slot_size() * self.h.core.alloc.slot_count()
    }

    /// Size of one slab in bytes.
    #[getter]
    fn slab_size(&self) -> u64 {
        self.h.core.alloc.slot_size()
    }

    /// Number of slabs.
    #[getter]
    fn num_slabs(&self) -> u64 {
        self.h.core.alloc.slot_count()
    }

    /// Pickling support: unpickles as ``SlabAllocator(name, create=False)``.
    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> (Bound<'py, PyAny>, (String, u64, u64, bool)) {
        let t = slf.get();
        let args = (t.h.core.name.clone(), t.slab_size(), t.num_slabs(), false);
        (slf.get_type().into_any(), args)
    }
});
