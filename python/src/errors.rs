//! Rust errors to Python exceptions.
//!
//! The exception classes are defined in Python (`shared_allocator/_errors.py`), so
//! that each can subclass both `SharedAllocatorError` and the built-in exception the
//! seed package raised in the same situation (`ValueError`, `FileExistsError`, ...).
//! They are looked up once per interpreter and cached here.

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

use shared_allocator::{AccessError, AllocError, FreeError, SegmentError};

/// Which exception class to raise. The discriminant indexes [`NAMES`].
#[derive(Clone, Copy, Debug)]
pub(crate) enum Kind {
    /// `SharedAllocatorError` itself: rare operating-system failures.
    Base = 0,
    /// `InvalidArgumentError` (also a `ValueError`).
    InvalidArgument,
    /// `OutOfBoundsError` (also a `ValueError`).
    OutOfBounds,
    /// `NotAllocatedError` (also a `ValueError`).
    NotAllocated,
    /// `DoubleFreeError` (also a `ValueError` and a `RuntimeError`).
    DoubleFree,
    /// `WrongAllocatorKindError` (also a `ValueError`).
    WrongAllocator,
    /// `ExistsError` (also a `FileExistsError`).
    Exists,
    /// `NotFoundError` (also a `FileNotFoundError`).
    NotFound,
    /// `PermissionDeniedError` (also a `PermissionError`).
    PermissionDenied,
    /// `ClosedError` (also a `ValueError`, like I/O on a closed file).
    Closed,
    /// `CorruptedError`: metadata in the segment is inconsistent.
    Corrupted,
    /// `NotReadyError` (also a `TimeoutError`): the creator never finished.
    NotReady,
    /// `ExportedViewsError` (also a `BufferError`).
    ExportedViews,
}

/// Class names in `shared_allocator._errors`, in [`Kind`] order.
const NAMES: [&str; 13] = [
    "SharedAllocatorError",
    "InvalidArgumentError",
    "OutOfBoundsError",
    "NotAllocatedError",
    "DoubleFreeError",
    "WrongAllocatorKindError",
    "ExistsError",
    "NotFoundError",
    "PermissionDeniedError",
    "ClosedError",
    "CorruptedError",
    "NotReadyError",
    "ExportedViewsError",
];

static CLASSES: PyOnceLock<Vec<Py<PyType>>> = PyOnceLock::new();

fn load(py: Python<'_>) -> PyResult<Vec<Py<PyType>>> {
    let m = py.import("shared_allocator._errors")?;
    NAMES
        .iter()
        .map(|n| Ok(m.getattr(*n)?.cast_into::<PyType>()?.unbind()))
        .collect()
}

fn class(py: Python<'_>, kind: Kind) -> Result<Bound<'_, PyType>, PyErr> {
    let classes = CLASSES.get_or_try_init(py, || load(py))?;
    Ok(classes[kind as usize].bind(py).clone())
}

/// An exception of class `kind` with message `msg`.
pub(crate) fn err(py: Python<'_>, kind: Kind, msg: impl Into<String>) -> PyErr {
    match class(py, kind) {
        Ok(cls) => PyErr::from_type(cls, msg.into()),
        Err(e) => PyRuntimeError::new_err(format!(
            "shared_allocator: cannot load the exception classes ({e}); message: {}",
            msg.into()
        )),
    }
}

/// An `OSError` subclass with `errno`, `strerror` and `filename` set, as
/// `multiprocessing.shared_memory` raises them.
fn os_style(py: Python<'_>, kind: Kind, errno: i32, strerror: &str, name: &str) -> PyErr {
    match class(py, kind) {
        Ok(cls) => PyErr::from_type(cls, (errno, strerror.to_owned(), name.to_owned())),
        Err(e) => PyRuntimeError::new_err(format!("{strerror}: {name} ({e})")),
    }
}

/// Creating or opening a segment failed.
pub(crate) fn segment(py: Python<'_>, e: SegmentError) -> PyErr {
    let msg = e.to_string();
    match e {
        SegmentError::AlreadyExists { name } => {
            os_style(py, Kind::Exists, libc_errno::EEXIST, "File exists", &name)
        }
        SegmentError::NotFound { name } => os_style(
            py,
            Kind::NotFound,
            libc_errno::ENOENT,
            "No such file or directory",
            &name,
        ),
        SegmentError::PermissionDenied { name } => os_style(
            py,
            Kind::PermissionDenied,
            libc_errno::EACCES,
            "Permission denied",
            &name,
        ),
        // Documented as PermissionDeniedError: an object owned by another user, or
        // writable by every user, is refused like a permission failure.
        SegmentError::ForeignOwner { .. } | SegmentError::InsecureMode { .. } => {
            err(py, Kind::PermissionDenied, msg)
        }
        SegmentError::InvalidName { .. } | SegmentError::InvalidParameter { .. } => {
            err(py, Kind::InvalidArgument, msg)
        }
        SegmentError::WrongKind { .. } => err(py, Kind::WrongAllocator, msg),
        SegmentError::InitTimeout { .. } => err(py, Kind::NotReady, msg),
        SegmentError::BadMagic { .. }
        | SegmentError::Uninitialized { .. }
        | SegmentError::VersionMismatch { .. }
        | SegmentError::SizeMismatch { .. }
        | SegmentError::CorruptHeader { .. } => err(py, Kind::Corrupted, msg),
        _ => err(py, Kind::Base, msg),
    }
}

/// Errno values used above (Linux), kept here rather than pulling in `libc`.
mod libc_errno {
    pub(super) const ENOENT: i32 = 2;
    pub(super) const EEXIST: i32 = 17;
    pub(super) const EACCES: i32 = 13;
}

/// An allocation request that can never be satisfied as asked (bad size or
/// alignment, corrupt metadata, a typed segment). Out-of-memory is not an error: callers return `None`.
pub(crate) fn alloc(py: Python<'_>, e: AllocError) -> PyErr {
    let msg = e.to_string();
    match e {
        AllocError::Corrupted { .. } => err(py, Kind::Corrupted, msg),
        // As a refused write or free in a typed segment (the block could never be
        // freed there).
        AllocError::WrongMode(_) => err(py, Kind::Base, msg),
        _ => err(py, Kind::InvalidArgument, msg),
    }
}

/// A read, write or view was refused. `rel` is the offset as the caller gave it
/// (relative to the data region), used in the message instead of the absolute one.
pub(crate) fn access(py: Python<'_>, e: AccessError, rel: u64, len: u64) -> PyErr {
    match e {
        AccessError::Null | AccessError::OutOfBounds { .. } => err(
            py,
            Kind::OutOfBounds,
            format!("range offset={rel} size={len} is outside the data region"),
        ),
        AccessError::NotAllocated { .. } | AccessError::Stale { .. } => err(
            py,
            Kind::NotAllocated,
            format!("range offset={rel} size={len} is not inside one allocated block"),
        ),
        AccessError::Misaligned { .. } => err(py, Kind::InvalidArgument, e.to_string()),
        AccessError::Corrupted { .. } => err(py, Kind::Corrupted, e.to_string()),
        _ => err(py, Kind::Base, e.to_string()),
    }
}

/// A free was refused; `rel` is the caller's offset.
pub(crate) fn free(py: Python<'_>, e: FreeError, rel: u64) -> PyErr {
    match e {
        FreeError::Null | FreeError::OutOfRange { .. } => err(
            py,
            Kind::OutOfBounds,
            format!("invalid offset: {rel} is outside the data region"),
        ),
        FreeError::NotBlockStart { .. } => err(
            py,
            Kind::NotAllocated,
            format!("offset {rel} is not the start of an allocated block"),
        ),
        FreeError::DoubleFree { .. } => err(
            py,
            Kind::DoubleFree,
            format!("double free detected at offset {rel} (or the block was never allocated)"),
        ),
        FreeError::Corrupted { .. } => err(py, Kind::Corrupted, e.to_string()),
        _ => err(py, Kind::Base, e.to_string()),
    }
}
