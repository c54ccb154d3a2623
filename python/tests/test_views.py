"""Zero-copy views: buffer protocol, numpy, export tracking against free/reset."""

from __future__ import annotations

import gc
import multiprocessing as mp
import os
import pathlib
import shutil
import subprocess

import numpy as np
import pytest

import shared_allocator as sa
from shared_allocator import BumpAllocator, FreeListAllocator, SlabAllocator

import _workers

CHILD_TIMEOUT = 60


def test_view_shares_memory_both_ways(name):
    a = FreeListAllocator(name, capacity=1 << 20)
    o = a.allocate(800)
    v = a.view(o, 800)
    assert (v.offset, v.size, len(v), v.readonly) == (o, 800, 800, False)
    arr = np.frombuffer(v, dtype=np.float64)
    assert arr.shape == (100,) and arr.flags.writeable
    arr[:] = np.arange(100)
    assert a.read(o + 8, 8) == np.float64(1).tobytes()
    a.write(o, np.float64(42).tobytes())
    assert arr[0] == 42
    mv = memoryview(v)
    assert mv.format == "B" and mv.nbytes == 800 and not mv.readonly
    mv[16:24] = np.float64(-1).tobytes()
    assert arr[2] == -1
    mv.release()
    del arr
    v.release()
    a.free(o)
    a.unlink()


def test_readonly_view_refuses_writes(name):
    a = SlabAllocator(name, slab_size=64, num_slabs=4)
    o = a.allocate()
    a.write(o, b"\x01" * 64)
    v = a.view(o, 64, readonly=True)
    assert v.readonly
    arr = np.frombuffer(v, dtype=np.uint8)
    assert not arr.flags.writeable and arr.sum() == 64
    with pytest.raises(ValueError):
        arr[0] = 5
    mv = memoryview(v)
    assert mv.readonly
    with pytest.raises(TypeError):
        mv[0] = 5
    mv.release()
    del arr
    v.release()
    a.unlink()


@pytest.mark.parametrize("kind", ["freelist", "slab"])
def test_free_with_exported_view_raises_buffer_error(kind, name):
    a = FreeListAllocator(name, capacity=1 << 20) if kind == "freelist" else SlabAllocator(name, 256, 16)
    o = a.allocate(256)
    other = a.allocate(256)
    v = a.view(o + 16, 32)  # a view inside the block, not at its start
    with pytest.raises(BufferError):
        a.free(o)
    with pytest.raises(sa.ExportedViewsError):
        a.free_many([o])
    a.free(other)  # other blocks are not affected
    arr = np.frombuffer(v, dtype=np.uint8)
    del v  # the array still holds the view
    gc.collect()
    with pytest.raises(BufferError):
        a.free(o)
    assert a.exported_views == 1
    del arr  # last reference: the view is gone
    gc.collect()
    assert a.exported_views == 0
    a.free(o)
    a.unlink()


def test_view_release_with_live_buffers_raises(name):
    a = FreeListAllocator(name, capacity=1 << 20)
    o = a.allocate(64)
    v = a.view(o, 64)
    arr = np.frombuffer(v, dtype=np.uint8)
    with pytest.raises(BufferError):
        v.release()
    del arr
    v.release()
    assert v.released
    a.free(o)
    a.unlink()


def test_view_context_manager(name):
    a = FreeListAllocator(name, capacity=1 << 20)
    o = a.allocate(64)
    with a.view(o, 64) as v:
        bytes(v)
        with pytest.raises(BufferError):
            a.free(o)
    a.free(o)
    a.unlink()


def test_reset_with_exported_view_raises_buffer_error(name):
    a = BumpAllocator(name, capacity=4096)
    o = a.allocate(128)
    v = a.view(o, 128)
    arr = np.frombuffer(v, dtype=np.int32)
    with pytest.raises(BufferError):
        a.reset()
    with pytest.raises(sa.ExportedViewsError):
        a.reset()
    del v
    with pytest.raises(BufferError):  # numpy still holds it
        a.reset()
    del arr
    gc.collect()
    a.reset()
    assert a.available_bytes() == 4096
    a.unlink()


def test_view_outlives_close_and_unlink(name):
    a = FreeListAllocator(name, capacity=1 << 20)
    o = a.allocate(4096)
    arr = np.frombuffer(a.view(o, 4096), dtype=np.uint8)
    a.close()
    a.unlink()
    del a
    gc.collect()
    arr[:] = 7  # the mapping is kept alive by the view
    assert int(arr.sum()) == 7 * 4096


def test_view_of_unallocated_memory_is_refused(name):
    a = SlabAllocator(name, slab_size=64, num_slabs=4)
    o = a.allocate()
    with pytest.raises(sa.NotAllocatedError):
        a.view(o, 65)
    a.free(o)
    with pytest.raises(sa.NotAllocatedError):
        a.view(o, 8)
    a.unlink()


def test_numpy_view_shared_between_two_processes(name):
    a = FreeListAllocator(name, capacity=1 << 20)
    count = 1000
    o = a.allocate(count * 8)
    arr = np.frombuffer(a.view(o, count * 8), dtype=np.float64)
    arr[:] = np.arange(count)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_workers.numpy_child, args=(name, o, count, q))
    p.start()
    try:
        res = q.get(timeout=CHILD_TIMEOUT)
        p.join(CHILD_TIMEOUT)
    finally:
        if p.is_alive():
            p.kill()
            p.join()
    assert res["error"] is None, res["error"]
    assert res["ok"] and res["ro_refused"]
    assert p.exitcode == 0
    assert (arr == 2 * np.arange(count)).all()  # the child's writes, seen here
    a.unlink()


REPO = pathlib.Path(__file__).resolve().parents[2]


def _typed_segment(name, *kind):
    """Has a Rust program (``examples/typed_handoff.rs``) create ``name`` in typed
    mode, holding a ``ShmBox`` it gave away as a token (or, with ``"bump"``, an
    arena value); returns the value's offset in the segment."""
    # scripts/test-all builds the example first (pytest then runs without cargo on
    # PATH) and names it here; without that, cargo builds it now.
    prebuilt = os.environ.get("SA_TYPED_HANDOFF")
    if prebuilt:
        cmd = [prebuilt, name, *kind]
    elif shutil.which("cargo") is not None:
        cmd = ["cargo", "run", "--quiet", "--example", "typed_handoff", "--", name, *kind]
    else:
        pytest.fail("needs SA_TYPED_HANDOFF (a built examples/typed_handoff) or cargo")
    out = subprocess.run(
        cmd,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr
    return int(out.stdout.split()[0])


def test_views_obey_a_typed_segments_mode(name):
    # A Rust process left a typed value (a box given away as a token): its bytes
    # change only under the typed layer's rules, so neither a writable nor a
    # read-only view may exist, exactly as raw writes are refused.
    at = _typed_segment(name)
    a = FreeListAllocator(name, create=False)
    rel = at - a.data_offset
    for readonly in (False, True):
        with pytest.raises(sa.SharedAllocatorError, match="typed mode"):
            a.view(rel, 32, readonly=readonly)
    with pytest.raises(sa.SharedAllocatorError, match="typed mode"):
        a.write(rel, b"\0" * 8)
    # A raw block could never be written or freed there: refused, not leaked.
    used = a.used_bytes()
    with pytest.raises(sa.SharedAllocatorError, match="typed mode"):
        a.allocate(64)
    assert a.used_bytes() == used
    # Copies stay allowed (byte-wise atomic, never undefined behaviour).
    assert a.read(rel, 8) == (1).to_bytes(8, "little")
    a.unlink()


def test_views_obey_a_typed_bump_segments_mode(name):
    # Arena values are shared and immutable (Rust views of them hold `&T`): a bump
    # segment with arenas is typed, and Python's views and writes are refused there.
    at = _typed_segment(name, "bump")
    a = BumpAllocator(name, create=False)
    rel = at - a.data_offset
    for readonly in (False, True):
        with pytest.raises(sa.SharedAllocatorError, match="typed mode"):
            a.view(rel, 32, readonly=readonly)
    with pytest.raises(sa.SharedAllocatorError, match="typed mode"):
        a.write(rel, b"\0" * 8)
    with pytest.raises(sa.SharedAllocatorError, match="typed mode"):
        a.allocate(64)
    assert a.read(rel, 8) == (1).to_bytes(8, "little")
    a.unlink()
