"""The red team's successful attacks on ``SharedDict`` (notes rt18-s2, items
B5-B7), one test each; every one failed on the code it broke."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import shared_allocator as sa


def test_structured_object_and_masked_arrays_are_refused_not_mangled(name):
    # B5: a structured array came back as '|V12' (field names and types lost); an
    # object array stored process pointers; a masked array lost its mask.
    d = sa.SharedDict(name, capacity=1 << 20)
    for bad in [
        np.zeros(2, dtype=[("a", "<i4"), ("b", "<f8")]),
        np.array([object(), 1], dtype=object),
        np.ma.masked_array([1, 2, 3], mask=[0, 1, 0]),
    ]:
        with pytest.raises(TypeError):
            d["x"] = bad
        assert "x" not in d
    d["ok"] = np.arange(6, dtype=">i4").reshape(2, 3)
    back = d["ok"]
    assert back.dtype == np.dtype(">i4") and back.shape == (2, 3)
    assert (back == np.arange(6).reshape(2, 3)).all()


class EvilInt(int):
    def __str__(self) -> str:
        return "not-a-number"

    def __repr__(self) -> str:
        return "not-a-number"


class IdxInt(int):
    def __index__(self) -> int:
        return 12345

    def __int__(self) -> int:
        return 12345


def test_int_subclasses_are_stored_by_value(name):
    # B6: a big int was stored through str() (an override made the dict unreadable
    # for everybody) and an int key through __index__ (IdxInt(7) became 12345).
    d = sa.SharedDict(name, capacity=1 << 20)
    d["evil"] = EvilInt(2**70)
    assert d["evil"] == 2**70 and type(d["evil"]) is int
    d[IdxInt(7)] = "x"
    assert d[7] == "x" and 12345 not in d
    d["v"] = IdxInt(9)
    assert d["v"] == 9
    for big in [2**63, -(2**63) - 1, 2**100, -(2**100), 10**5000, -1, 0]:
        d[big] = big
        assert d[big] == big
        d["val"] = big
        assert d["val"] == big
    assert d[float(2**100)] == 2**100  # an int-valued float is the int key
    assert dict(d.items())["evil"] == 2**70


def test_huge_ints_from_a_process_without_the_digit_limit_stay_readable(name):
    # B6: 10**5000 written by a process that lifted sys.set_int_max_str_digits
    # made items()/values()/copy() raise ValueError in every other process.
    d = sa.SharedDict(name, capacity=1 << 20)
    code = textwrap.dedent(
        f"""
        import sys
        import shared_allocator as sa
        sys.set_int_max_str_digits(0)
        sa.SharedDict({name!r}, create=False)["huge"] = 10**5000
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    assert d["huge"] == 10**5000
    assert len(d.values()) == 1 and d.copy() == {"huge": 10**5000}


def test_a_failed_create_leaves_no_segment_behind(name):
    # B7: a too-small capacity raised MemoryError but left the segment in
    # /dev/shm, and every later SharedDict(name, capacity=big) reopened it and
    # failed the same way.
    with pytest.raises(MemoryError):
        sa.SharedDict(name, capacity=4096)
    assert not os.path.exists(f"/dev/shm/{name}")
    d = sa.SharedDict(name, capacity=1 << 20)
    d["k"] = 1
    assert d["k"] == 1
