"""Exceptions raised by shared_allocator.

Every exception derives from :class:`SharedAllocatorError`. Where the original
pure-Python ``shared_allocator`` 0.1 raised a built-in exception in the same
situation, the new class also derives from that built-in, so existing
``except ValueError`` / ``except FileExistsError`` handlers keep working.
"""

from __future__ import annotations

__all__ = [
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
]


class SharedAllocatorError(Exception):
    """Base class of every exception raised by shared_allocator."""


class InvalidArgumentError(SharedAllocatorError, ValueError):
    """A bad argument: non-positive size, alignment not a power of two (or above
    4096), a request larger than a slab, an invalid segment name or capacity."""


class OutOfBoundsError(SharedAllocatorError, ValueError):
    """An offset or range outside the allocator's data region (the seed raised
    ``ValueError("... out of bounds ...")`` / ``ValueError("Invalid offset ...")``)."""


class NotAllocatedError(SharedAllocatorError, ValueError):
    """A range that is not inside one allocated block, or a ``free`` of an offset
    that is not the start of a block."""


class DoubleFreeError(SharedAllocatorError, ValueError, RuntimeError):
    """``free`` of a block that is not allocated (freed twice, or never handed out).

    A ``ValueError`` (the seed's slab allocator) and a ``RuntimeError`` (the seed's
    free list raised ``RuntimeError("Free stack overflow - double free?")``)."""


class WrongAllocatorKindError(SharedAllocatorError, ValueError):
    """``create=False`` found a segment that holds another kind of allocator."""


class ExistsError(SharedAllocatorError, FileExistsError):
    """``create=True`` but a segment with this name exists (never silently reused)."""


class NotFoundError(SharedAllocatorError, FileNotFoundError):
    """``create=False`` or ``unlink()`` found no segment with this name."""


class PermissionDeniedError(SharedAllocatorError, PermissionError):
    """The segment exists but this process may not open it (segments are 0600)."""


class ClosedError(SharedAllocatorError, ValueError):
    """A method was called after ``close()`` (like I/O on a closed file)."""


class CorruptedError(SharedAllocatorError):
    """Metadata in the segment is inconsistent or not from this library (another
    process scribbled on it, or the object is not a shared_allocator segment)."""


class NotReadyError(SharedAllocatorError, TimeoutError):
    """``create=False`` waited in vain for the creating process to finish
    initialising the segment."""


class ExportedViewsError(SharedAllocatorError, BufferError):
    """``free()`` of a block or ``reset()`` of an allocator while ``SharedView``
    objects made through this allocator object still reference it (as resizing a
    ``bytearray`` with exported buffers raises ``BufferError``)."""
