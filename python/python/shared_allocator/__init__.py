"""Process-safe allocators in POSIX shared memory, on a Rust engine.

A drop-in replacement for the pure-Python ``shared_allocator`` 0.1: the same
classes, constructor arguments and methods (``BumpAllocator``,
``FreeListAllocator``, ``SlabAllocator``), plus typed exceptions, zero-copy
views (``SharedView``) and batch calls. See the package README.
"""

from __future__ import annotations

from importlib import metadata as _metadata

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

try:
    __version__: str = _metadata.version("shared_allocator")
except _metadata.PackageNotFoundError:  # imported from a source tree, not installed
    __version__ = "0.0.0+unknown"

# Listed name by name (not built from _errors.__all__) so that type checkers
# (mypy --strict, pyright) see every re-export.
__all__ = [
    "BumpAllocator",
    "FreeListAllocator",
    "SlabAllocator",
    "SharedView",
    "SharedDict",
    "GIL_RELEASE_THRESHOLD",
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
