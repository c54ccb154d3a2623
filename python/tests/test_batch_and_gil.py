"""Batch calls, and large copies running with the GIL released."""

from __future__ import annotations

import array
import threading
import time

import pytest

import shared_allocator as sa
from shared_allocator import BumpAllocator, FreeListAllocator, SlabAllocator


def test_bump_allocate_many_is_one_contiguous_run(name):
    a = BumpAllocator(name, capacity=1 << 16)
    first = a.allocate(3)
    offs = a.allocate_many(100, 50)
    assert isinstance(offs, array.array) and offs.typecode == "Q"
    assert list(offs) == [8 + 104 * i for i in range(50)] and first == 0
    for o in offs:
        a.write(o, b"z" * 100)
    assert a.allocate_many(100, 1000) is None
    a.unlink()


@pytest.mark.parametrize("kind", ["freelist", "slab"])
def test_allocate_many_free_many_roundtrip(kind, name):
    if kind == "freelist":
        a = FreeListAllocator(name, slot_size=64, num_slots=3000)
        offs = a.allocate_many(64, 3000)
        assert a.used_slots() == 3000 and a.allocate(1) is None
        assert a.allocate_many(64, 1) is None
    else:
        a = SlabAllocator(name, slab_size=64, num_slabs=3000)
        offs = a.allocate_many(None, 3000)
        assert a.used_slabs() == 3000 and a.allocate() is None
    assert len(set(offs)) == 3000
    for i in range(0, 3000, 97):
        a.write(offs[i], i.to_bytes(8, "little"))
    for i in range(0, 3000, 97):
        assert int.from_bytes(a.read(offs[i], 8), "little") == i
    a.free_many(iter(offs))  # any iterable
    if kind == "freelist":
        assert a.used_slots() == 0
    else:
        assert a.used_slabs() == 0
    a.unlink()


def test_allocate_many_all_or_nothing(name):
    a = FreeListAllocator(name, slot_size=64, num_slots=100)
    held = a.allocate_many(64, 60)
    assert a.allocate_many(64, 41) is None
    assert a.used_slots() == 60  # the refused batch left nothing allocated
    a.free_many(held)
    a.unlink()


@pytest.mark.parametrize("form", ["array", "list", "tuple", "numpy", "generator"])
def test_free_many_accepts_any_form_of_offsets(form, name):
    import numpy as np

    a = SlabAllocator(name, slab_size=32, num_slabs=64)
    offs = a.allocate_many(None, 40)
    arg = {
        "array": offs,
        "list": list(offs),
        "tuple": tuple(offs),
        "numpy": np.frombuffer(offs, dtype=np.uint64),
        "generator": (o for o in offs),
    }[form]
    a.free_many(arg)
    assert a.used_slabs() == 0
    a.unlink()


def test_free_many_converts_everything_before_freeing(name):
    a = SlabAllocator(name, slab_size=32, num_slabs=8)
    offs = list(a.allocate_many(None, 3))
    with pytest.raises(TypeError):
        a.free_many([offs[0], "x", offs[1]])
    assert a.used_slabs() == 3  # nothing freed
    with pytest.raises(sa.OutOfBoundsError):
        a.free_many(array.array("Q", [2**63 + 5]))
    a.free_many(offs)
    a.unlink()


def test_free_many_stops_at_the_first_error(name):
    a = SlabAllocator(name, slab_size=32, num_slabs=8)
    offs = a.allocate_many(None, 3)
    with pytest.raises(sa.DoubleFreeError):
        a.free_many([offs[0], offs[0], offs[1]])
    assert a.used_slabs() == 2  # the first was freed, the rest untouched
    a.free_many(offs[1:])
    a.unlink()


def _copy_releases_gil(copy) -> bool:
    """True if another Python thread ran while ``copy()`` was in progress."""
    stamps: list[float] = []
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            stamps.append(time.perf_counter())

    t = threading.Thread(target=spin)
    t.start()
    try:
        while not stamps:
            time.sleep(0.001)
        for _ in range(5):
            t0 = time.perf_counter()
            copy()
            t1 = time.perf_counter()
            # Ignore the first 15 ms: the spinner may hold the GIL for one switch
            # interval (5 ms) before the copy starts.
            if t1 - t0 > 0.03 and any(t0 + 0.015 < s < t1 - 0.001 for s in stamps):
                return True
        return False
    finally:
        stop.set()
        t.join()


def test_large_copies_release_the_gil(name):
    size = 256 << 20
    a = BumpAllocator(name, capacity=size)
    o = a.allocate(size)
    data = bytes(size)
    assert sa.GIL_RELEASE_THRESHOLD == 4096
    # One call per measurement: between two calls the spinner may run anyway.
    assert _copy_releases_gil(lambda: a.write(o, data))
    assert _copy_releases_gil(lambda: a.read(o, size))
    # The check itself tells a GIL-holding copy apart.
    assert not _copy_releases_gil(lambda: data[1:])
    a.unlink()
