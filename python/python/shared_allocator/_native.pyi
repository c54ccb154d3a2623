"""Type stubs for the Rust extension ``shared_allocator._native``."""

import sys
from array import array
from collections.abc import Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any, Literal, Protocol, SupportsIndex, final, overload

from typing_extensions import Buffer, Self, TypeAlias

class _ArrayInterface(Protocol):
    # numpy's stubs declare ndarray.__buffer__ only for Python 3.12+; on 3.11 an
    # array is recognised by its array interface (numpy arrays export a buffer).
    @property
    def __array_interface__(self) -> dict[str, Any]: ...

if sys.version_info >= (3, 12):
    _Data: TypeAlias = Buffer
else:
    _Data: TypeAlias = Buffer | _ArrayInterface

__all__ = [
    "BumpAllocator",
    "FreeListAllocator",
    "GIL_RELEASE_THRESHOLD",
    "SharedDict",
    "SharedView",
    "SlabAllocator",
]

_Key: TypeAlias = str | bytes | int | float
"""What keys a ``SharedDict`` (``bool`` is an ``int``, as in a ``dict``)."""

_Value: TypeAlias = str | int | float | bool | None | _Data
"""What a ``SharedDict`` stores: a key type, ``bool``, ``None``, any bytes-like
object (stored as ``bytes``) or a numpy array (dtype and shape kept)."""

GIL_RELEASE_THRESHOLD: int
"""Copies larger than this many bytes (4096) run with the GIL released."""

@final
class SharedView:
    """A zero-copy window on shared memory (buffer protocol: ``memoryview``,
    ``numpy.frombuffer``). Keeps the mapping alive; while it lives, ``free()`` of
    its block and ``reset()`` of its allocator raise ``ExportedViewsError``."""

    @property
    def offset(self) -> int:
        """Offset of the first byte (as passed to ``view``)."""
    @property
    def size(self) -> int:
        """Number of bytes."""
    @property
    def readonly(self) -> bool:
        """Whether writes through this view are refused."""
    @property
    def released(self) -> bool:
        """Whether ``release()`` was called."""
    def __len__(self) -> int:
        """Number of bytes."""
    @overload
    def __getitem__(self, key: SupportsIndex, /) -> int:
        """The byte at ``key``."""
    @overload
    def __getitem__(self, key: slice, /) -> memoryview:
        """A ``memoryview`` of the same shared bytes."""
    @overload
    def __setitem__(self, key: SupportsIndex, value: SupportsIndex, /) -> None:
        """Stores one byte."""
    @overload
    def __setitem__(self, key: slice, value: Buffer, /) -> None:
        """Stores as many bytes as the slice has."""
    def release(self) -> None:
        """Ends the view; ``BufferError`` while buffers taken from it still exist."""
    def __enter__(self) -> Self:
        """Returns the view itself."""
    def __exit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc: BaseException | None = None,
        tb: TracebackType | None = None,
    ) -> Literal[False]:
        """Releases the view."""
    # Python 3.12+ exposes the buffer protocol as __buffer__ (typeshed's Buffer
    # protocol checks for it); on 3.11 the slot exists without the attribute.
    def __buffer__(self, flags: int, /) -> memoryview:
        """Buffer protocol."""

class _Allocator:
    """Methods every allocator class has. Exists only in these stubs (to avoid
    repeating them three times); at run time each class defines them itself."""

    @property
    def name(self) -> str:
        """The segment name as given to the constructor."""
    @property
    def capacity(self) -> int:
        """Bytes of data, as in the seed package."""
    @property
    def data_offset(self) -> int:
        """Add to an offset from this package to get the Rust API's offset."""
    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called."""
    @property
    def exported_views(self) -> int:
        """Number of live ``SharedView`` objects made through this object."""
    def write(self, offset: int, data: _Data) -> None:
        """Copies ``data`` to ``offset`` (inside one allocated block)."""
    def read(self, offset: int, size: int) -> bytes:
        """Returns ``size`` bytes at ``offset`` (inside one allocated block)."""
    def view(self, offset: int, size: int, readonly: bool = False) -> SharedView:
        """A zero-copy ``SharedView`` of ``size`` bytes at ``offset``."""
    def used_bytes(self) -> int:
        """Bytes currently handed out."""
    def available_bytes(self) -> int:
        """Bytes still available for allocation."""
    def stats(self) -> dict[str, object]:
        """A snapshot of use: ``capacity``, ``live_blocks`` (``None`` for bump),
        ``live_bytes``, ``free_bytes``, ``cached_bytes`` and ``classes`` (dicts
        with ``block_size``, ``spans``, ``live_blocks``, ``free_blocks``)."""
    def processes(self) -> list[dict[str, object]]:
        """The attached processes: ``slot``, ``pid``, ``start_time_ns``, ``alive``,
        ``generation``, ``is_self``, ``intents``, ``pins``."""
    def largest_free_block(self) -> int:
        """The largest block one ``allocate`` could get now, in bytes."""
    def set_remove_on_last_close(self, on: bool) -> None:
        """Sets (or clears) the remove-on-last-close policy of the segment.
        Segments this process created get it at exit by default; ``False`` opts out."""
    @property
    def remove_on_last_close(self) -> bool:
        """Whether the segment has the remove-on-last-close policy now."""
    def close(self) -> None:
        """Closes this handle (later calls raise ``ClosedError``); idempotent."""
    def unlink(self) -> None:
        """Removes the segment's name (``NotFoundError`` if already removed)."""
    def __enter__(self) -> Self:
        """Returns the allocator itself."""
    def __exit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc: BaseException | None = None,
        tb: TracebackType | None = None,
    ) -> Literal[False]:
        """Calls ``close()``."""

@final
class BumpAllocator(_Allocator):
    """Bump allocator: one atomic step per allocation, ``reset()`` frees everything."""

    def __new__(cls, name: str, capacity: int = 1024 * 1024, create: bool = True) -> Self:
        """Creates (``create=True``) or opens the segment ``name``."""
    @staticmethod
    def open_or_create(name: str, capacity: int = 1024 * 1024) -> tuple[BumpAllocator, bool]:
        """Opens ``name`` or creates it; returns ``(allocator, created)``. Race-free."""
    def allocate(self, size: int, alignment: int = 8) -> int | None:
        """Offset of ``size`` new bytes, or ``None`` when full."""
    def allocate_many(self, size: int, count: int, alignment: int = 8) -> array[int] | None:
        """``count`` blocks in one atomic step, or ``None`` (nothing allocated)."""
    def reset(self) -> None:
        """Releases every allocation at once."""

@final
class FreeListAllocator(_Allocator):
    """General-purpose allocator with individual ``free``; the seed's slot counts."""

    def __new__(
        cls,
        name: str,
        capacity: int = 10 * 1024 * 1024,
        slot_size: int = 256,
        num_slots: int | None = None,
        create: bool = True,
    ) -> Self:
        """Creates (``create=True``) or opens the segment ``name``."""
    @staticmethod
    def open_or_create(
        name: str,
        capacity: int = 10 * 1024 * 1024,
        slot_size: int = 256,
        num_slots: int | None = None,
    ) -> tuple[FreeListAllocator, bool]:
        """Opens ``name`` or creates it; returns ``(allocator, created)``. Race-free."""
    @property
    def slot_size(self) -> int:
        """The ``slot_size`` given at creation."""
    @property
    def num_slots(self) -> int:
        """The most blocks live at once."""
    def allocate(self, size: int | None = 0, alignment: int | None = 8) -> int | None:
        """Offset of a new block of ``size`` bytes, or ``None`` (full)."""
    def free(self, offset: int) -> None:
        """Frees the block at ``offset``."""
    def allocate_many(self, size: int, count: int, alignment: int = 8) -> array[int] | None:
        """``count`` blocks, or ``None`` (then none stays allocated)."""
    def free_many(self, offsets: Iterable[int]) -> None:
        """Frees each offset in order; stops at the first error."""
    def available_slots(self) -> int:
        """Blocks that can still be allocated before ``num_slots`` are live."""
    def used_slots(self) -> int:
        """Live blocks."""

@final
class SlabAllocator(_Allocator):
    """Fixed-size slots tracked by an atomic bitmap."""

    def __new__(cls, name: str, slab_size: int = 256, num_slabs: int = 4096, create: bool = True) -> Self:
        """Creates (``create=True``) or opens the segment ``name``."""
    @staticmethod
    def open_or_create(name: str, slab_size: int = 256, num_slabs: int = 4096) -> tuple[SlabAllocator, bool]:
        """Opens ``name`` or creates it; returns ``(allocator, created)``. Race-free."""
    @property
    def slab_size(self) -> int:
        """Size of one slab in bytes."""
    @property
    def num_slabs(self) -> int:
        """Number of slabs."""
    def allocate(self, size: int | None = None, alignment: int | None = 8) -> int | None:
        """Offset of a free slab, or ``None`` when all are in use."""
    def free(self, offset: int) -> None:
        """Frees the slab at ``offset``."""
    def allocate_many(self, size: int | None, count: int, alignment: int | None = 8) -> array[int] | None:
        """``count`` slabs, or ``None`` (then none stays allocated)."""
    def free_many(self, offsets: Iterable[int]) -> None:
        """Frees each offset in order; stops at the first error."""
    def available_slabs(self) -> int:
        """Number of free slabs."""
    def used_slabs(self) -> int:
        """Number of slabs in use."""

@final
class SharedDict:
    """A dict in POSIX shared memory, shared by every process that opens it by
    name (fork or spawn workers, a ``Pool``: it pickles by name).

    Reads return copies: ``str``, ``bytes``, ``int``, ``float``, ``bool``,
    ``None`` or a ``numpy.ndarray`` (typed ``Any``: the value's type is whatever
    another process stored). Writes are atomic per key."""

    def __new__(cls, name: str, capacity: int = 256 * 1024 * 1024, create: bool = True) -> Self:
        """Opens the dict's segment ``name``, or creates it (``create=True``) with
        ``capacity`` bytes of (sparse) data region."""
    @property
    def name(self) -> str:
        """The segment's name (what other processes open)."""
    def __len__(self) -> int:
        """Number of entries (exact when no process is writing)."""
    def __contains__(self, key: object, /) -> bool:
        """Whether ``key`` is in the dict."""
    def __getitem__(self, key: _Key, /) -> Any:
        """A copy of the value of ``key``; ``KeyError`` if absent."""
    def __setitem__(self, key: _Key, value: _Value, /) -> None:
        """Stores ``value`` under ``key`` (atomic: readers see the old or the new)."""
    def __delitem__(self, key: _Key, /) -> None:
        """Removes ``key``; ``KeyError`` if absent."""
    def __iter__(self) -> Iterator[str | bytes | int | float]:
        """Iterates over a snapshot of the keys."""
    @overload
    def get(self, key: _Key, /) -> Any | None:
        """A copy of the value of ``key``, or ``None``."""
    @overload
    def get(self, key: _Key, default: Any, /) -> Any:
        """A copy of the value of ``key``, or ``default``."""
    def keys(self) -> list[str | bytes | int | float]:
        """A snapshot of the keys."""
    def values(self) -> list[Any]:
        """A snapshot of the values (copies)."""
    def items(self) -> list[tuple[str | bytes | int | float, Any]]:
        """A snapshot of the entries (copies)."""
    def setdefault(self, key: _Key, default: _Value = None, /) -> Any:
        """The value of ``key``, storing ``default`` first if absent (atomic)."""
    def increment(self, key: _Key, /, delta: int = 1) -> int:
        """Adds ``delta`` to the int value of ``key`` (0 if absent), atomically;
        returns the new value. ``TypeError`` if the value is not an int that fits
        64 bits after the increment."""
    def update(
        self,
        other: Mapping[Any, Any] | Iterable[tuple[Any, Any]] | None = None,
        /,
        **kwargs: _Value,
    ) -> None:
        """Stores every entry of ``other`` (a mapping or pairs), then ``kwargs``."""
    @overload
    def pop(self, key: _Key, /) -> Any:
        """Removes ``key`` and returns its value; ``KeyError`` if absent."""
    @overload
    def pop(self, key: _Key, default: Any, /) -> Any:
        """Removes ``key`` and returns its value, or ``default`` if absent."""
    def clear(self) -> None:
        """Removes every entry."""
    def copy(self) -> dict[str | bytes | int | float, Any]:
        """A plain ``dict`` with copies of every entry."""
    def unlink(self) -> None:
        """Removes the segment's name (open handles keep working)."""
