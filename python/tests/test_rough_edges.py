"""The rough edges a new user hit (issue 21), one test each: any buffer for
``write``, slicing views, signatures, type-checker exports, argument messages
that name the argument and its limit, ``available_bytes() <= capacity``."""

from __future__ import annotations

import array
import importlib.metadata
import inspect
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import shared_allocator as sa
from shared_allocator import BumpAllocator, FreeListAllocator, SharedView, SlabAllocator
from test_bad_input import alloc  # noqa: F401  (the fixture: one allocator of each kind)
from test_bad_input import sized as block

HERE = os.path.dirname(os.path.abspath(__file__))


# ------------------------------------------------------------- write(buffer)


@pytest.mark.parametrize(
    "data",
    [
        np.arange(8, dtype=np.int64),
        np.linspace(0.0, 1.0, 8),  # float64
        np.arange(12, dtype=np.float32).reshape(3, 4),
        np.array([1, -2, 3], dtype=np.int16),
        np.arange(24, dtype=np.uint8).reshape(4, 6)[:, ::2],  # not contiguous
        np.asfortranarray(np.arange(6, dtype=np.int32).reshape(2, 3)),
        array.array("d", [1.5, 2.5, -3.25]),
        array.array("i", [1, 2, 3]),
        memoryview(b"memoryview bytes"),
        memoryview(array.array("q", [7, 8, 9])),
        bytearray(b"bytearray"),
        b"plain bytes",
        b"",
        memoryview(b""),
        np.zeros(0, dtype=np.float64),
    ],
    ids=lambda d: type(d).__name__ + ":" + str(getattr(d, "dtype", getattr(d, "typecode", ""))),
)
def test_write_accepts_any_buffer(alloc, data):
    o = block(alloc)
    alloc.write(o, data)
    want = np.asarray(data).tobytes() if isinstance(data, np.ndarray) else bytes(memoryview(data).cast("B") if isinstance(data, memoryview) else data)
    assert alloc.read(o, len(want)) == want


def test_write_from_a_view_of_the_same_allocator(alloc):
    a, b = block(alloc), block(alloc)
    alloc.write(a, b"0123456789")
    with alloc.view(a, 10) as v:
        alloc.write(b, v)
    assert alloc.read(b, 10) == b"0123456789"


def test_write_refuses_non_buffers_with_type_error(alloc):
    o = block(alloc)
    for bad in ("text", 12, [1, 2], None, object()):
        with pytest.raises(TypeError, match="buffer protocol"):
            alloc.write(o, bad)


def test_write_of_a_too_large_array_is_refused_before_copying(name):
    a = FreeListAllocator(name, capacity=64 * 1024)
    o = a.allocate(64)
    with pytest.raises(sa.NotAllocatedError):
        a.write(o, np.zeros(4096, dtype=np.float64))
    # A 2**40-byte buffer (a broadcast view: no memory behind it) is refused by its
    # length alone; copying it first would need 1 TiB.
    huge = np.lib.stride_tricks.as_strided(np.zeros(1, dtype=np.uint8), shape=(2**40,), strides=(0,))
    with pytest.raises(sa.OutOfBoundsError):
        a.write(o, huge)


# -------------------------------------------------------------- view slicing


def test_view_len_index_and_slices_like_shm_buf(alloc):
    o = block(alloc)
    alloc.write(o, bytes(range(16)))
    v = alloc.view(o, 16)
    assert len(v) == 16
    assert v[0] == 0 and v[15] == 15 and v[-1] == 15
    head = v[:4]
    assert isinstance(head, memoryview) and bytes(head) == bytes(range(4))
    assert bytes(v[::4]) == bytes([0, 4, 8, 12])
    assert bytes(v[10:]) == bytes(range(10, 16))
    with pytest.raises(IndexError):
        v[16]
    # Writes go to shared memory.
    v[:4] = b"abcd"
    v[5] = 255
    assert alloc.read(o, 6) == b"abcd\x04\xff"
    # A slice holds a buffer of the view: release waits for it.
    with pytest.raises(BufferError):
        v.release()
    head.release()
    v.release()


def test_readonly_view_slices_refuse_writes(alloc):
    o = block(alloc)
    v = alloc.view(o, 8, readonly=True)
    assert bytes(v[:2]) == alloc.read(o, 2)
    with pytest.raises(TypeError):
        v[:2] = b"xy"
    with pytest.raises(TypeError):
        v[0] = 1
    v.release()


# ---------------------------------------------------------------- signatures


def public_callables():
    for cls in (BumpAllocator, FreeListAllocator, SlabAllocator, SharedView):
        if cls is not SharedView:  # made by allocator.view(), no constructor
            yield cls.__name__, cls
        for attr in dir(cls):
            if attr.startswith("_") and attr not in ("__enter__", "__exit__", "__getitem__", "__len__"):
                continue
            obj = getattr(cls, attr)
            if callable(obj):
                yield f"{cls.__name__}.{attr}", obj


@pytest.mark.parametrize("what,obj", list(public_callables()), ids=lambda x: x if isinstance(x, str) else "")
def test_inspect_signature_works(what, obj):
    sig = inspect.signature(obj)
    assert sig is not None


def test_constructor_signatures_show_defaults():
    assert str(inspect.signature(BumpAllocator)) == "(name, capacity=1048576, create=True)"
    assert str(inspect.signature(FreeListAllocator)) == (
        "(name, capacity=10485760, slot_size=256, num_slots=None, create=True)"
    )
    assert str(inspect.signature(SlabAllocator)) == "(name, slab_size=256, num_slabs=4096, create=True)"
    assert list(inspect.signature(BumpAllocator.view).parameters) == ["self", "offset", "size", "readonly"]


# ------------------------------------------------------- exports and typing


def test_all_lists_every_public_name_explicitly():
    src = open(sa.__file__, encoding="utf-8").read()
    for n in sa.__all__:
        assert getattr(sa, n) is not None
        assert f'"{n}"' in src, f"{n} must be listed literally in __all__ for type checkers"
    assert {"DoubleFreeError", "SharedAllocatorError", "SharedView"} <= set(sa.__all__)


def test_versions_agree():
    pyproject = open(os.path.join(HERE, "..", "pyproject.toml"), encoding="utf-8").read()
    cargo = open(os.path.join(HERE, "..", "Cargo.toml"), encoding="utf-8").read()
    assert 'dynamic = ["version"]' in pyproject  # the version comes from Cargo.toml
    cargo_version = next(l.split('"')[1] for l in cargo.splitlines() if l.startswith("version = "))
    assert importlib.metadata.version("shared_allocator") == cargo_version == sa.__version__


USAGE = textwrap.dedent(
    """
    from __future__ import annotations

    import numpy as np

    from shared_allocator import (
        BumpAllocator,
        DoubleFreeError,
        ExportedViewsError,
        FreeListAllocator,
        SharedAllocatorError,
        SharedView,
        SlabAllocator,
    )


    def use(name: str) -> bytes:
        with FreeListAllocator(name, capacity=1 << 20) as a:
            off = a.allocate(64)
            assert off is not None
            a.write(off, np.arange(8, dtype=np.int64))
            v: SharedView = a.view(off, 8)
            first: int = v[0]
            head: memoryview = v[:4]
            head.release()
            v.release()
            try:
                a.free(off)
                a.free(off)
            except DoubleFreeError as e:
                err: SharedAllocatorError = e
                print(err)
            except ExportedViewsError:
                pass
            b = BumpAllocator(name + "-b", capacity=4096)
            s = SlabAllocator(name + "-s", slab_size=64, num_slabs=8)
            many = s.allocate_many(None, 2)
            assert many is not None and b.allocate(8) is not None
            b.close()
            s.close()
            return a.read(0, first)
    """
)


DICT_USAGE = textwrap.dedent(
    """
    from __future__ import annotations

    from typing import Any

    import numpy as np

    from shared_allocator import SharedDict


    def use(name: str) -> int:
        d = SharedDict(name, capacity=1 << 20)
        d["a"] = 1
        d[b"b"] = b"x"
        d[2] = np.arange(3, dtype=np.int64)
        d[2.5] = bytearray(b"yz")
        d["none"] = None
        d.update({"c": 3.0}, e=True)
        d.update([("f", "g")])
        v: Any = d["a"]
        maybe: Any | None = d.get("zz")
        got: Any = d.get("zz", 7)
        keys: list[str | bytes | int | float] = d.keys()
        pairs = d.items()
        n: int = d.increment("count", 2) + len(d)
        s = d.setdefault("h", "i")
        popped = d.pop("h", None)
        plain: dict[str | bytes | int | float, Any] = d.copy()
        for k in d:
            print(k, k in d)
        del d["a"]
        print(v, maybe, got, keys, pairs, s, popped, plain, d.name, d.values())
        d.clear()
        d.unlink()
        return n
    """
)

# Each line must be refused by the SharedDict stub (so it is not `Any`).
DICT_MISUSE = textwrap.dedent(
    """
    from shared_allocator import SharedDict

    d = SharedDict("x")
    d[(1, 2)] = 3
    d["k"] = object()
    d.increment("k", "1")
    n: str = len(d)
    d.no_such_method()
    """
)


def _mypy_strict(tmp_path, source):
    f = tmp_path / "usage.py"
    f.write_text(source)
    mypy = os.path.join(os.path.dirname(sys.executable), "mypy")
    mypy = mypy if os.path.exists(mypy) else "mypy"
    return subprocess.run(
        [mypy, "--strict", "--no-incremental", "--cache-dir", str(tmp_path / "cache"), str(f)],
        capture_output=True,
        text=True,
        timeout=300,
    )


needs_mypy = pytest.mark.skipif(
    shutil.which("mypy") is None
    and not os.path.exists(os.path.join(os.path.dirname(sys.executable), "mypy")),
    reason="mypy not installed",
)


@needs_mypy
def test_mypy_strict_accepts_the_public_api(tmp_path):
    out = _mypy_strict(tmp_path, USAGE)
    assert out.returncode == 0, out.stdout + out.stderr


@needs_mypy
def test_mypy_strict_accepts_shared_dict_usage(tmp_path):
    out = _mypy_strict(tmp_path, DICT_USAGE)
    assert out.returncode == 0, out.stdout + out.stderr


@needs_mypy
def test_mypy_strict_refuses_shared_dict_misuse(tmp_path):
    out = _mypy_strict(tmp_path, DICT_MISUSE)
    lines = [l for l in out.stdout.splitlines() if ": error:" in l]
    flagged = {int(l.split(":")[1]) for l in lines}
    # Lines 5-9 of DICT_MISUSE (1 is the blank line textwrap keeps).
    assert flagged >= {5, 6, 7, 8, 9}, out.stdout + out.stderr


# ------------------------------------------------------ argument messages


@pytest.mark.parametrize(
    "cls,kwargs,message",
    [
        (BumpAllocator, {"capacity": -1}, r"capacity must be between 1 and 34359738367 \(32 GiB - 1\), got -1"),
        (BumpAllocator, {"capacity": 0}, r"capacity must be between 1 and 34359738367 \(32 GiB - 1\), got 0"),
        (BumpAllocator, {"capacity": 2**35}, r"capacity must be between 1 and 34359738367 \(32 GiB - 1\), got 34359738368"),
        (BumpAllocator, {"capacity": 2**80}, r"capacity must be between .* got 1208925819614629174706176"),
        (FreeListAllocator, {"capacity": -1}, r"capacity must be between 1 and \d+ \(64 GiB - 4 KiB\), got -1"),
        (FreeListAllocator, {"capacity": 100}, r"capacity 100 is smaller than slot_size 256: no slot fits"),
        (FreeListAllocator, {"slot_size": 0}, r"slot_size must be between 1 and .* got 0"),
        (FreeListAllocator, {"num_slots": -3}, r"num_slots must be between 1 and 68719476736 \(2\*\*36\), got -3"),
        (FreeListAllocator, {"slot_size": 1 << 20, "num_slots": 1 << 20}, r"slot_size 1048576 x num_slots 1048576 needs more than the free list's limit"),
        (SlabAllocator, {"slab_size": 0}, r"slab_size must be between 1 and 4294967296 \(4 GiB\), got 0"),
        (SlabAllocator, {"num_slabs": -3}, r"num_slabs must be between 1 and 4294967296 \(2\*\*32\), got -3"),
        (SlabAllocator, {"slab_size": 1 << 20, "num_slabs": 1 << 21}, r"needs 2199023255552 bytes, more than the limit of 1099511627776 \(1 TiB\)"),
    ],
)
def test_bad_sizes_name_the_argument_and_the_limit(names, cls, kwargs, message):
    with pytest.raises(sa.InvalidArgumentError, match=message):
        cls(names(), **kwargs)


# ------------------------------------------------ available <= capacity


@pytest.mark.parametrize(
    "make",
    [
        lambda n: FreeListAllocator(n, capacity=4096, slot_size=64),
        lambda n: FreeListAllocator(n, slot_size=100, num_slots=7),
        lambda n: FreeListAllocator(n, capacity=256 * 3),
        lambda n: SlabAllocator(n, slab_size=12, num_slabs=5),
        lambda n: SlabAllocator(n, slab_size=256, num_slabs=3),
        lambda n: BumpAllocator(n, capacity=1000),
    ],
)
def test_available_bytes_never_exceeds_capacity(name, make):
    a = make(name)
    assert a.available_bytes() <= a.capacity
    offsets = []
    while True:
        o = a.allocate(8) if not isinstance(a, SlabAllocator) else a.allocate()
        if o is None:
            break
        offsets.append(o)
        assert a.available_bytes() <= a.capacity
        assert a.used_bytes() + a.available_bytes() >= 0
    a.close()
