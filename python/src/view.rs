//! `SharedView`: a zero-copy buffer over a range of one block.

use std::ffi::{c_int, c_void};
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use pyo3::exceptions::PyBufferError;
use pyo3::ffi;
use pyo3::prelude::*;

use shared_allocator::{Offset, ShmAllocator};

use crate::core::{Core, ViewOwner};
use crate::errors;

/// A zero-copy window on ``size`` bytes of shared memory at ``offset``.
///
/// Supports the buffer protocol: ``memoryview(v)``, ``numpy.frombuffer(v, dtype)``,
/// ``bytes(v)`` and friends read and write the shared bytes directly (writes are
/// refused when the view is read-only). Returned by ``allocator.view(...)``.
///
/// While a view is alive (not released and not garbage-collected), ``free()`` of
/// its block and ``reset()`` of its allocator raise ``ExportedViewsError``
/// (a ``BufferError``), as resizing a ``bytearray`` with exports does. A view keeps
/// the mapping alive even after the allocator is closed. ``release()`` (or leaving a
/// ``with`` block) ends the view; it fails while buffers taken from it (a
/// ``memoryview``, a numpy array) still exist.
#[pyclass(module = "shared_allocator", name = "SharedView", frozen)]
pub(crate) struct SharedView {
    owner: Arc<dyn ViewOwner>,
    /// Address of the first byte in this process's mapping (kept alive by `owner`).
    addr: usize,
    len: usize,
    /// Absolute offsets, for the owner's record.
    start: u64,
    /// Offset as the user gave it (relative to the data region).
    rel: u64,
    readonly: bool,
    released: AtomicBool,
    /// Buffers currently taken from this view (`__getbuffer__` minus `__releasebuffer__`).
    buffers: AtomicUsize,
}

impl SharedView {
    /// A view of `len` bytes at `off`, which the caller checked is inside one live block.
    pub(crate) fn new<A: ShmAllocator + 'static>(
        core: &Arc<Core<A>>,
        off: Offset,
        rel: u64,
        len: usize,
        readonly: bool,
    ) -> Option<SharedView> {
        let p = shared_allocator::__layout::ptr_at(core.alloc.segment(), off.get(), len as u64, 1)?;
        let end = off.get() + len as u64;
        core.exports.add(off.get(), end);
        Some(SharedView {
            owner: core.clone(),
            addr: p.as_ptr() as usize,
            len,
            start: off.get(),
            rel,
            readonly,
            released: AtomicBool::new(false),
            buffers: AtomicUsize::new(0),
        })
    }

    fn end(&self) -> u64 {
        self.start + self.len as u64
    }
}

impl Drop for SharedView {
    fn drop(&mut self) {
        if !self.released.swap(true, Ordering::AcqRel) {
            self.owner.release_view(self.start, self.end());
        }
    }
}

#[pymethods]
impl SharedView {
    /// Offset of the first byte (as passed to ``view``).
    #[getter]
    fn offset(&self) -> u64 {
        self.rel
    }

    /// Number of bytes.
    #[getter]
    fn size(&self) -> usize {
        self.len
    }

    /// Whether writes through this view are refused.
    #[getter]
    fn readonly(&self) -> bool {
        self.readonly
    }

    /// Whether ``release()`` was called.
    #[getter]
    fn released(&self) -> bool {
        self.released.load(Ordering::Acquire)
    }

    /// Number of bytes.
    fn __len__(&self) -> usize {
        self.len
    }

    /// Ends the view: its block may then be freed and its allocator reset.
    ///
    /// Raises ``BufferError`` while buffers taken from the view (``memoryview``,
    /// numpy arrays) still exist. Releasing twice is allowed.
    fn release(&self, py: Python<'_>) -> PyResult<()> {
        let n = self.buffers.load(Ordering::Acquire);
        if n != 0 {
            return Err(errors::err(
                py,
                errors::Kind::ExportedViews,
                format!("cannot release the view: {n} buffer(s) taken from it still exist"),
            ));
        }
        if !self.released.swap(true, Ordering::AcqRel) {
            self.owner.release_view(self.start, self.end());
        }
        Ok(())
    }

    /// Returns the view itself.
    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    /// Releases the view (see ``release``).
    #[pyo3(signature = (_exc_type=None, _exc=None, _tb=None))]
    fn __exit__(
        &self,
        py: Python<'_>,
        _exc_type: Option<&Bound<'_, PyAny>>,
        _exc: Option<&Bound<'_, PyAny>>,
        _tb: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        self.release(py)?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        format!(
            "<shared_allocator.SharedView offset={} size={}{}{}>",
            self.rel,
            self.len,
            if self.readonly { " readonly" } else { "" },
            if self.released.load(Ordering::Relaxed) {
                " released"
            } else {
                ""
            }
        )
    }

    /// Buffer protocol: exports the shared bytes as a flat array of unsigned bytes.
    ///
    /// # Safety
    /// Called by the interpreter with `view` pointing to a `Py_buffer` to fill.
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        if view.is_null() {
            return Err(PyBufferError::new_err("getbuffer: view==NULL"));
        }
        let this = slf.get();
        if this.released.load(Ordering::Acquire) {
            return Err(PyBufferError::new_err(
                "operation forbidden on a released SharedView",
            ));
        }
        if flags & ffi::PyBUF_WRITABLE == ffi::PyBUF_WRITABLE && this.readonly {
            return Err(PyBufferError::new_err("the SharedView is read-only"));
        }
        let format = if flags & ffi::PyBUF_FORMAT == ffi::PyBUF_FORMAT {
            c"B".as_ptr().cast_mut()
        } else {
            ptr::null_mut()
        };
        // SAFETY:
        // - `view` is non-null (checked above) and, per the buffer protocol, points to
        //   a `Py_buffer` the caller owns and lets us fill; we only form field places;
        // - `shape` and `strides` point at the struct's own `len` and `itemsize` fields
        //   (the idiom of pyo3's buffer example), which live as long as the struct;
        // - `buf` is the address of `len` mapped bytes; the mapping stays alive while
        //   `obj` (this view, which holds the allocator's `Arc`) is referenced, and
        //   `obj` takes a new strong reference that `PyBuffer_Release` drops;
        // - `format` is null or the `'static` NUL-terminated literal "B", which
        //   consumers only read.
        unsafe {
            (*view).buf = this.addr as *mut c_void;
            (*view).obj = slf.clone().into_any().into_ptr();
            (*view).len = this.len as ffi::Py_ssize_t;
            (*view).readonly = c_int::from(this.readonly);
            (*view).itemsize = 1;
            (*view).format = format;
            (*view).ndim = 1;
            (*view).shape = if flags & ffi::PyBUF_ND == ffi::PyBUF_ND {
                &raw mut (*view).len
            } else {
                ptr::null_mut()
            };
            (*view).strides = if flags & ffi::PyBUF_STRIDES == ffi::PyBUF_STRIDES {
                &raw mut (*view).itemsize
            } else {
                ptr::null_mut()
            };
            (*view).suboffsets = ptr::null_mut();
            (*view).internal = ptr::null_mut();
        }
        this.buffers.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// Buffer protocol: a buffer taken with `__getbuffer__` was released.
    ///
    /// # Safety
    /// Called by the interpreter once per successful `__getbuffer__`.
    unsafe fn __releasebuffer__(&self, _view: *mut ffi::Py_buffer) {
        self.buffers.fetch_sub(1, Ordering::AcqRel);
    }
}
