//! `BumpAllocator` for Python.

use std::sync::{Mutex, PoisonError};

use pyo3::prelude::*;

use shared_allocator::alloc::BUMP_MAX_CAPACITY;
use shared_allocator::{AllocError, BumpAllocator, ShmAllocator};

use crate::common::allocator_class;
use crate::core::{align_arg, int_arg, offsets_array, opt_int, param, size_arg, Handle};
use crate::errors;

/// Bump (linear) allocator in POSIX shared memory.
///
/// ``BumpAllocator(name, capacity=1024*1024, create=True)``: with ``create=True``
/// makes the segment ``name`` with ``capacity`` bytes of data (at most 32 GiB - 1) (``ExistsError``, a
/// ``FileExistsError``, if the name is taken); with ``create=False`` opens it
/// (``NotFoundError``, a ``FileNotFoundError``, if missing; ``capacity`` is then read
/// from the segment).
///
/// Allocation is one atomic compare-and-swap, safe from any number of processes.
/// There is no individual ``free``: ``reset()`` releases everything at once.
#[pyclass(module = "shared_allocator", name = "BumpAllocator", frozen)]
pub(crate) struct PyBump {
    h: Handle<BumpAllocator>,
    /// A second handle on the same segment, used only by `reset`: the Rust API's
    /// `reset(&mut self)` needs exclusive access to a handle, which the shared one
    /// (also held by views) cannot give. Views are checked by the export record.
    resetter: Mutex<BumpAllocator>,
}

fn out_of_memory(e: &AllocError) -> bool {
    matches!(
        e,
        AllocError::OutOfMemory { .. } | AllocError::TooLarge { .. }
    )
}

allocator_class!(PyBump, "BumpAllocator", {
    #[new]
    #[pyo3(signature = (name, capacity = None, create = true), text_signature = "(name, capacity=1048576, create=True)")]
    fn new(
        py: Python<'_>,
        name: &str,
        capacity: Option<&Bound<'_, PyAny>>,
        create: bool,
    ) -> PyResult<Self> {
        let name = name.to_owned();
        let opened = if create {
            let cap = param(
                py,
                capacity,
                1024 * 1024,
                "capacity",
                BUMP_MAX_CAPACITY,
                "32 GiB - 1",
            )?;
            py.detach(|| {
                let a = BumpAllocator::create(&name, cap)?;
                match BumpAllocator::open(&name) {
                    Ok(b) => Ok((a, b)),
                    Err(e) => {
                        let _ = a.unlink();
                        Err(e)
                    }
                }
            })
        } else {
            py.detach(|| Ok((BumpAllocator::open(&name)?, BumpAllocator::open(&name)?)))
        };
        let (a, b) = opened.map_err(|e| errors::segment(py, e))?;
        if create {
            crate::lifecycle::note_created(a.segment());
        }
        Ok(PyBump {
            h: Handle::new(a, &name),
            resetter: Mutex::new(b),
        })
    }

    /// Opens the segment ``name``, or creates it with these parameters if it does
    /// not exist; returns ``(allocator, created)``. Race-free: of any number of
    /// processes calling it at once, exactly one creates, and all end up on one
    /// segment. A crashed creator's half-initialised segment is replaced. An
    /// existing segment is opened as it is (its parameters win).
    #[staticmethod]
    #[pyo3(signature = (name, capacity = None), text_signature = "(name, capacity=1048576)")]
    fn open_or_create(
        py: Python<'_>,
        name: &str,
        capacity: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<(Self, bool)> {
        let cap = param(
            py,
            capacity,
            1024 * 1024,
            "capacity",
            BUMP_MAX_CAPACITY,
            "32 GiB - 1",
        )?;
        let ((a, created), b) = py
            .detach(|| {
                let (a, created) = BumpAllocator::open_or_create(name, cap)?;
                Ok((a, created)).and_then(|ac| BumpAllocator::open(name).map(|b| (ac, b)))
            })
            .map_err(|e| errors::segment(py, e))?;
        if created {
            crate::lifecycle::note_created(a.segment());
        }
        let this = PyBump {
            h: Handle::new(a, name),
            resetter: Mutex::new(b),
        };
        Ok((this, created))
    }

    /// Allocates ``size`` bytes aligned to ``alignment`` (a power of two, at most
    /// 4096) and returns the offset, or ``None`` when the allocator is full.
    ///
    /// Raises ``InvalidArgumentError`` (a ``ValueError``) for ``size <= 0`` or a bad
    /// alignment, as the seed package did.
    #[pyo3(signature = (size, alignment = None), text_signature = "(self, size, alignment=8)")]
    fn allocate(
        &self,
        py: Python<'_>,
        size: &Bound<'_, PyAny>,
        alignment: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Option<u64>> {
        let core = self.h.get(py)?;
        let size = int_arg(py, size, "size")?;
        if size <= 0 {
            return Err(errors::err(
                py,
                errors::Kind::InvalidArgument,
                format!("Size must be positive, got {size}"),
            ));
        }
        let size = size_arg(py, size)?;
        let align = align_arg(py, opt_int(py, alignment, 8, "alignment")?)?;
        match core.alloc.allocate_aligned(size, align) {
            Ok(o) => Ok(Some(core.rel(o))),
            Err(e) if out_of_memory(&e) => Ok(None),
            Err(e) => Err(errors::alloc(py, e)),
        }
    }

    /// Allocates ``count`` blocks of ``size`` bytes at once and returns their offsets
    /// (an ``array.array('Q')``), or ``None`` if they do not all fit (then nothing is
    /// allocated).
    ///
    /// One atomic step reserves the whole run: the blocks are ``size`` rounded up to
    /// ``alignment`` apart, exactly as ``count`` calls of ``allocate`` in one process
    /// would place them.
    #[pyo3(signature = (size, count, alignment = None), text_signature = "(self, size, count, alignment=8)")]
    fn allocate_many<'py>(
        &self,
        py: Python<'py>,
        size: &Bound<'py, PyAny>,
        count: &Bound<'py, PyAny>,
        alignment: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        let core = self.h.get(py)?;
        let size = int_arg(py, size, "size")?;
        let count = int_arg(py, count, "count")?;
        let align = align_arg(py, opt_int(py, alignment, 8, "alignment")?)?;
        if size <= 0 || count < 0 {
            return Err(errors::err(
                py,
                errors::Kind::InvalidArgument,
                format!("size must be positive and count >= 0, got size={size} count={count}"),
            ));
        }
        if count == 0 {
            return Ok(Some(offsets_array(py, &[])?));
        }
        let stride = (size as u64).next_multiple_of(align as u64);
        let total = stride
            .checked_mul(count as u64)
            .and_then(|t| usize::try_from(t).ok());
        let Some(total) = total else {
            return Ok(None);
        };
        let start = match core.alloc.allocate_aligned(total, align) {
            Ok(o) => core.rel(o),
            Err(e) if out_of_memory(&e) => return Ok(None),
            Err(e) => return Err(errors::alloc(py, e)),
        };
        let offsets: Vec<u64> = (0..count as u64).map(|i| start + i * stride).collect();
        Ok(Some(offsets_array(py, &offsets)?))
    }

    /// Releases every allocation at once (O(1)). Offsets handed out before become
    /// invalid; memory is not zeroed.
    ///
    /// Raises ``ExportedViewsError`` (a ``BufferError``) while views made through
    /// this object are alive, or while another process holds views of the arena
    /// (Rust arena readers) for longer than the reset waits (10 s).
    fn reset(&self, py: Python<'_>) -> PyResult<()> {
        let core = self.h.get(py)?;
        core.no_views(py, "reset")?;
        let resetter = &self.resetter;
        py.detach(|| {
            resetter
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .reset()
        })
        .map(|_| ())
        .map_err(|e| errors::err(py, errors::Kind::ExportedViews, e.to_string()))
    }

    /// Bytes of the data region.
    #[getter]
    fn capacity(&self) -> u64 {
        self.h.core.data_len
    }

    /// Pickling support: unpickles as ``BumpAllocator(name, capacity, create=False)``,
    /// so an allocator passed to a spawned process opens the same segment there.
    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> (Bound<'py, PyAny>, (String, u64, bool)) {
        let this = slf.get();
        let args = (this.h.core.name.clone(), this.capacity(), false);
        (slf.get_type().into_any(), args)
    }
});
