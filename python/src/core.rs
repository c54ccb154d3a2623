//! What the three Python classes share: the allocator handle, the per-handle
//! record of exported views, argument conversion and the copy paths.
//!
//! Offsets seen by Python are relative to the start of the data region, as in the
//! seed package (the first bump allocation is offset 0). The Rust API's offsets are
//! from the segment base: `rust_offset = data_offset + python_offset`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use pyo3::exceptions::{PyOverflowError, PyTypeError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PyBytes, PyList};

use shared_allocator::{Offset, ShmAllocator};

use crate::errors::{self, Kind};

/// Copies larger than this many bytes run with the GIL released.
pub(crate) const GIL_RELEASE_THRESHOLD: usize = 4096;

/// The views this handle exported and not yet released, by byte range.
#[derive(Debug, Default)]
pub(crate) struct Exports {
    /// Number of live views; lets `free` skip the map entirely when it is zero.
    total: AtomicUsize,
    /// `(start, end)` (absolute offsets) -> number of live views with that range.
    ranges: Mutex<BTreeMap<(u64, u64), usize>>,
}

impl Exports {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(u64, u64), usize>> {
        // A panic while holding the lock cannot leave the map inconsistent (each
        // update is one insert or remove), so a poisoned lock is still usable.
        self.ranges.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a new view of `[start, end)`.
    pub(crate) fn add(&self, start: u64, end: u64) {
        *self.lock().entry((start, end)).or_insert(0) += 1;
        self.total.fetch_add(1, Ordering::AcqRel);
    }

    /// Forgets one view of `[start, end)`.
    pub(crate) fn remove(&self, start: u64, end: u64) {
        let mut map = self.lock();
        if let Some(n) = map.get_mut(&(start, end)) {
            *n -= 1;
            if *n == 0 {
                map.remove(&(start, end));
            }
            self.total.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Number of live views.
    pub(crate) fn count(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }

    /// Number of live views inside the block that starts at `start`. A view lies in
    /// that block when `[start, view_end)` is inside one live block; view starts are
    /// sorted, so the scan stops at the first view that starts past the block.
    pub(crate) fn in_block<A: ShmAllocator>(&self, alloc: &A, start: u64) -> usize {
        if self.count() == 0 {
            return 0;
        }
        let map = self.lock();
        let mut found = 0;
        for (&(s, e), &n) in map.range((start, 0)..) {
            if alloc
                .check_range(Offset::new(start), s - start + 1)
                .is_err()
            {
                break;
            }
            if alloc.check_range(Offset::new(start), e - start).is_ok() {
                found += n;
            }
        }
        found
    }
}

/// One opened allocator as the Python objects see it: the Rust handle (which owns
/// the mapping) and the views exported through it. Shared by the Python allocator
/// object and every view it made, so a view keeps the mapping alive.
#[derive(Debug)]
pub(crate) struct Core<A> {
    /// The Rust allocator (owns the mapping; unmapped when the last `Arc` goes).
    pub(crate) alloc: A,
    /// The name as the user gave it.
    pub(crate) name: String,
    /// Absolute offset of the data region (Python offset 0).
    pub(crate) base: u64,
    /// Length of the data region in bytes.
    pub(crate) data_len: u64,
    /// Views exported through this handle.
    pub(crate) exports: Exports,
    /// The process that made this handle (a fork child's inherited copy has its
    /// parent's pid here).
    pub(crate) pid: u32,
}

/// What a view needs from its allocator: release its record when it goes away.
pub(crate) trait ViewOwner: Send + Sync {
    /// Forgets one view of `[start, end)` (absolute offsets).
    fn release_view(&self, start: u64, end: u64);
}

impl<A: ShmAllocator> ViewOwner for Core<A> {
    fn release_view(&self, start: u64, end: u64) {
        self.exports.remove(start, end);
    }
}

impl<A: ShmAllocator> Core<A> {
    /// Wraps an opened allocator.
    pub(crate) fn new(alloc: A, name: &str) -> Core<A> {
        let l = *alloc.segment().layout();
        Core {
            alloc,
            name: name.to_owned(),
            base: l.data_offset,
            data_len: l.data_len,
            exports: Exports::default(),
            pid: std::process::id(),
        }
    }

    /// Absolute offset of Python offset `rel`, if it lies in the data region.
    #[inline]
    pub(crate) fn abs(&self, py: Python<'_>, rel: i64, len: u64) -> PyResult<Offset> {
        match u64::try_from(rel) {
            Ok(r) if r < self.data_len => Ok(Offset::new(self.base + r)),
            _ => Err(errors::err(
                py,
                Kind::OutOfBounds,
                format!(
                    "offset {rel} (size {len}) is outside the data region of {} bytes",
                    self.data_len
                ),
            )),
        }
    }

    /// Python offset of absolute offset `o`.
    #[inline]
    pub(crate) fn rel(&self, o: Offset) -> u64 {
        o.get() - self.base
    }

    /// Copies `data` to Python offset `rel`: `bytes` directly, any other object
    /// with the buffer protocol (`bytearray`, `memoryview`, `array.array`, numpy
    /// arrays of any dtype and strides, a `SharedView`) through a copy of its bytes
    /// in C order, taken with the GIL held.
    pub(crate) fn write(&self, py: Python<'_>, rel: i64, data: &Bound<'_, PyAny>) -> PyResult<()> {
        if let Ok(b) = data.cast::<PyBytes>() {
            return self.write_slice(py, rel, b.as_bytes());
        }
        if let Ok(b) = data.cast::<PyByteArray>() {
            // A bytearray can be resized by other Python code: copy it out first.
            return self.write_slice(py, rel, &b.to_vec());
        }
        let buf = ExportedBuffer::get(data)?;
        let len = buf.len() as u64;
        // Checked before copying, so that a huge buffer is refused without a copy.
        if len > 0 {
            let off = self.abs(py, rel, len)?;
            self.alloc
                .check_range(off, len)
                .map_err(|e| errors::access(py, e, rel as u64, len))?;
        }
        let bytes = buf.to_vec(py)?;
        drop(buf);
        self.write_slice(py, rel, &bytes)
    }

    fn write_slice(&self, py: Python<'_>, rel: i64, bytes: &[u8]) -> PyResult<()> {
        let len = bytes.len() as u64;
        let off = self.abs(py, rel, len)?;
        let r = if bytes.len() > GIL_RELEASE_THRESHOLD {
            py.detach(|| self.alloc.write(off, bytes))
        } else {
            self.alloc.write(off, bytes)
        };
        r.map_err(|e| errors::access(py, e, rel as u64, len))
    }

    /// Reads `size` bytes at Python offset `rel` into a new `bytes`.
    pub(crate) fn read<'py>(
        &self,
        py: Python<'py>,
        rel: i64,
        size: i64,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let len = usize::try_from(size).map_err(|_| {
            errors::err(
                py,
                Kind::InvalidArgument,
                format!("size must be >= 0, got {size}"),
            )
        })?;
        let off = self.abs(py, rel, len as u64)?;
        // Check first, so that a huge size is refused before allocating the bytes.
        self.alloc
            .check_range(off, len as u64)
            .map_err(|e| errors::access(py, e, rel as u64, len as u64))?;
        PyBytes::new_with(py, len, |buf| {
            let r = if len > GIL_RELEASE_THRESHOLD {
                py.detach(|| self.alloc.read_into(off, buf))
            } else {
                self.alloc.read_into(off, buf)
            };
            r.map_err(|e| errors::access(py, e, rel as u64, len as u64))
        })
    }

    /// Total views alive, as an error if any (for `reset` and `close`-like checks).
    pub(crate) fn no_views(&self, py: Python<'_>, what: &str) -> PyResult<()> {
        match self.exports.count() {
            0 => Ok(()),
            n => Err(errors::err(
                py,
                Kind::ExportedViews,
                format!("cannot {what}: {n} view(s) of this allocator are still exported; release them first"),
            )),
        }
    }

    /// Refuses to free the block at `off` while views into it exist.
    #[inline]
    pub(crate) fn no_views_in_block(&self, py: Python<'_>, off: Offset, rel: i64) -> PyResult<()> {
        match self.exports.in_block(&self.alloc, off.get()) {
            0 => Ok(()),
            n => Err(errors::err(
                py,
                Kind::ExportedViews,
                format!("cannot free offset {rel}: {n} view(s) of this block are still exported; release them first"),
            )),
        }
    }
}

/// The Python object's hold on a [`Core`]: shared with the views, plus the
/// closed flag (`close()` forbids further use through this object; the mapping
/// goes when the object and all its views are gone).
#[derive(Debug)]
pub(crate) struct Handle<A> {
    pub(crate) core: Arc<Core<A>>,
    closed: AtomicBool,
    /// After `close()`: the (inode, registry slot) this handle recorded as closed
    /// (see `lifecycle::note_closed`), forgotten when the handle goes.
    pub(crate) closed_slot: std::sync::Mutex<Option<(u64, usize)>>,
}

impl<A> Drop for Handle<A> {
    fn drop(&mut self) {
        let slot = self
            .closed_slot
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(entry) = slot {
            crate::lifecycle::forget_closed(entry);
        }
    }
}

impl<A: ShmAllocator> Handle<A> {
    /// A handle on a freshly opened allocator.
    pub(crate) fn new(alloc: A, name: &str) -> Handle<A> {
        Handle {
            core: Arc::new(Core::new(alloc, name)),
            closed: AtomicBool::new(false),
            closed_slot: std::sync::Mutex::new(None),
        }
    }

    /// The core, or `ClosedError` after `close()`.
    #[inline]
    pub(crate) fn get(&self, py: Python<'_>) -> PyResult<&Core<A>> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(errors::err(
                py,
                Kind::Closed,
                format!("allocator {:?} is closed", self.core.name),
            ));
        }
        Ok(&self.core)
    }

    /// Marks the handle closed. Idempotent.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
    }

    /// Whether `close()` was called.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }
}

/// Reads an integer argument as `i64`; an int too large for 64 bits becomes
/// `OutOfBoundsError` (a `ValueError`, as the seed's range checks raised) instead of
/// `OverflowError`.
#[inline]
pub(crate) fn int_arg(py: Python<'_>, v: &Bound<'_, PyAny>, what: &str) -> PyResult<i64> {
    match v.extract::<i64>() {
        Ok(x) => Ok(x),
        Err(e) if e.is_instance_of::<PyOverflowError>(py) => Err(errors::err(
            py,
            Kind::OutOfBounds,
            format!("{what} {v} is out of range"),
        )),
        Err(e) => Err(e),
    }
}

/// The offsets of a `free_many` call, all converted before any is freed (a
/// non-integer item raises `TypeError` with nothing freed). Lists and buffers of
/// unsigned 64-bit integers (what `allocate_many` returns) take fast paths.
pub(crate) fn offsets_arg(py: Python<'_>, offsets: &Bound<'_, PyAny>) -> PyResult<Vec<i64>> {
    if let Ok(list) = offsets.cast::<PyList>() {
        let mut v = Vec::with_capacity(list.len());
        for o in list.iter() {
            v.push(int_arg(py, &o, "offset")?);
        }
        return Ok(v);
    }
    if let Ok(buf) = pyo3::buffer::PyBuffer::<u64>::get(offsets) {
        // Offsets beyond i64::MAX are outside every data region: OutOfBoundsError later.
        return Ok(buf
            .to_vec(py)?
            .into_iter()
            .map(|x| i64::try_from(x).unwrap_or(i64::MAX))
            .collect());
    }
    offsets
        .try_iter()?
        .map(|o| int_arg(py, &o?, "offset"))
        .collect()
}

static ARRAY_TYPE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// The offsets of an `allocate_many` call as an `array.array('Q')`: one copy of
/// the numbers, no Python int per block until the caller looks at one.
pub(crate) fn offsets_array<'py>(py: Python<'py>, v: &[u64]) -> PyResult<Bound<'py, PyAny>> {
    let array = ARRAY_TYPE.get_or_try_init(py, || {
        Ok::<_, PyErr>(py.import("array")?.getattr("array")?.unbind())
    })?;
    let bytes = PyBytes::new_with(py, v.len() * 8, |b| {
        for (chunk, x) in b.chunks_exact_mut(8).zip(v) {
            chunk.copy_from_slice(&x.to_ne_bytes());
        }
        Ok(())
    })?;
    array.bind(py).call1(("Q", bytes))
}

/// A creation parameter (a size or a count): `default` when `None` or missing,
/// else an integer in `1..=max`. Anything else is `InvalidArgumentError` naming the
/// argument and its limit (`limit` says `max` for people, e.g. "32 GiB - 1").
pub(crate) fn param(
    py: Python<'_>,
    v: Option<&Bound<'_, PyAny>>,
    default: u64,
    what: &str,
    max: u64,
    limit: &str,
) -> PyResult<u64> {
    let v = match v {
        Some(v) if !v.is_none() => v,
        _ => return Ok(default),
    };
    let got = match v.extract::<i64>() {
        Ok(x) => u64::try_from(x).ok().filter(|&x| (1..=max).contains(&x)),
        Err(e) if e.is_instance_of::<PyOverflowError>(py) => None,
        Err(e) => return Err(e),
    };
    got.ok_or_else(|| {
        errors::err(
            py,
            Kind::InvalidArgument,
            format!("{what} must be between 1 and {max} ({limit}), got {v}"),
        )
    })
}

/// An optional integer argument (`None` or missing: `default`), as [`int_arg`].
#[inline]
pub(crate) fn opt_int(
    py: Python<'_>,
    v: Option<&Bound<'_, PyAny>>,
    default: i64,
    what: &str,
) -> PyResult<i64> {
    match v {
        Some(v) if !v.is_none() => int_arg(py, v, what),
        _ => Ok(default),
    }
}

/// A size argument for an allocation: `None` when it is too large to ever fit
/// (the caller then returns `None`, as the seed did), an error when negative.
#[inline]
pub(crate) fn size_arg(py: Python<'_>, size: i64) -> PyResult<usize> {
    usize::try_from(size).map_err(|_| {
        errors::err(
            py,
            Kind::InvalidArgument,
            format!("size must be positive, got {size}"),
        )
    })
}

/// Checks an alignment argument: a power of two, at most 4096.
#[inline]
pub(crate) fn align_arg(py: Python<'_>, alignment: i64) -> PyResult<usize> {
    match usize::try_from(alignment) {
        Ok(a) if a.is_power_of_two() && a <= shared_allocator::alloc::MAX_ALIGN => Ok(a),
        _ => Err(errors::err(
            py,
            Kind::InvalidArgument,
            format!("alignment must be a power of 2 and at most 4096, got {alignment}"),
        )),
    }
}

/// A buffer exported by a Python object (`PyObject_GetBuffer` with `PyBUF_STRIDES`:
/// any item format, any strides), released on drop. Its bytes are only ever copied
/// out (`to_vec`), in C order by `PyBuffer_ToContiguous`: the exporter may be
/// mutable memory (a numpy array, another process's shared memory through a
/// `SharedView`), which Rust must not hold a `&[u8]` to while someone may write it.
struct ExportedBuffer(Box<pyo3::ffi::Py_buffer>);

impl ExportedBuffer {
    /// The buffer of `obj`, or `TypeError` if it has none.
    fn get(obj: &Bound<'_, PyAny>) -> PyResult<ExportedBuffer> {
        use pyo3::ffi;
        // SAFETY: `Py_buffer` is a plain C struct for which all-zero is a valid
        // (empty) value; `PyObject_GetBuffer` fills it.
        let mut view: Box<ffi::Py_buffer> = Box::new(unsafe { std::mem::zeroed() });
        // SAFETY:
        // - `obj` is a live object, borrowed for the call with the GIL held (`Bound`);
        // - `view` points to a writable `Py_buffer` at a stable heap address (boxed,
        //   never moved out), released exactly once in `Drop` if this call succeeds.
        let rc = unsafe { ffi::PyObject_GetBuffer(obj.as_ptr(), &mut *view, ffi::PyBUF_STRIDES) };
        if rc != 0 {
            let cause = PyErr::take(obj.py());
            let ty = obj
                .get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_default();
            let e = PyTypeError::new_err(format!(
                "data must be bytes or support the buffer protocol (bytearray, memoryview, \
                 array.array, numpy arrays), not {ty}"
            ));
            e.set_cause(obj.py(), cause);
            return Err(e);
        }
        Ok(ExportedBuffer(view))
    }

    /// Number of bytes.
    fn len(&self) -> usize {
        usize::try_from(self.0.len).unwrap_or(0)
    }

    /// A copy of the bytes in C order (the GIL is held: `py`).
    fn to_vec(&self, py: Python<'_>) -> PyResult<Vec<u8>> {
        let mut out = vec![0u8; self.len()];
        // SAFETY:
        // - `self.0` was filled by a successful `PyObject_GetBuffer` and is not yet
        //   released (that happens in `Drop`);
        // - `out` holds exactly `self.0.len` writable bytes, the size
        //   `PyBuffer_ToContiguous` writes;
        // - the GIL is held (`py`), as the C API requires.
        let rc = unsafe {
            pyo3::ffi::PyBuffer_ToContiguous(
                out.as_mut_ptr().cast(),
                &*self.0,
                self.0.len,
                b'C' as _,
            )
        };
        if rc != 0 {
            return Err(PyErr::fetch(py));
        }
        Ok(out)
    }
}

impl Drop for ExportedBuffer {
    fn drop(&mut self) {
        // SAFETY: `self.0` was filled by a successful `PyObject_GetBuffer` and is
        // released exactly once, here. An `ExportedBuffer` never leaves the function
        // that made it (`Core::write`), which holds the GIL throughout.
        unsafe { pyo3::ffi::PyBuffer_Release(&mut *self.0) };
    }
}
