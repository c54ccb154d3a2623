"""Process-safe allocators in POSIX shared memory, on a Rust engine.

A drop-in replacement for the pure-Python ``shared_allocator`` 0.1: the same
classes, constructor arguments and methods (``BumpAllocator``,
``FreeListAllocator``, ``SlabAllocator``), plus typed exceptions, zero-copy
views (``SharedView``) and batch calls. See the package README.
"""

from __future__ import annotations

from . import _errors
from ._errors import (
    ClosedError,
    CorruptedError,
    DoubleFreeError,
    ExistsError,
    ExportedViewsError,
    InvalidArgumentError,
    NotAllocatedError,
    NotFoundError,
    NotReadyError,
    OutOfBoundsError,
    PermissionDeniedError,
    SharedAllocatorError,
    WrongAllocatorKindError,
)
from ._native import (
    GIL_RELEASE_THRESHOLD,
    BumpAllocator,
    FreeListAllocator,
    SharedDict,
    SharedView,
    SlabAllocator,
)

__version__ = "0.2.0"

__all__ = [
    "BumpAllocator",
    "FreeListAllocator",
    "SlabAllocator",
    "SharedView",
    "SharedDict",
    "GIL_RELEASE_THRESHOLD",
    *_errors.__all__,
]
