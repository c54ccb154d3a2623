"""Several processes on one segment: spawn race for all three allocators, fork
inheritance, pickled allocators, and a Pool."""

from __future__ import annotations

import multiprocessing as mp
import os
import queue

import pytest

from shared_allocator import BumpAllocator, FreeListAllocator, SlabAllocator

import _workers

CHILD_TIMEOUT = 120
WORKERS = 4
OPS = 30_000


def run_children(ctx, target, args_list):
    """Starts one process per args tuple (each gets a result queue as last
    argument), collects one result from each, and kills stragglers."""
    q = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args, q)) for args in args_list]
    for p in procs:
        p.start()
    results = []
    try:
        for _ in procs:
            results.append(q.get(timeout=CHILD_TIMEOUT))
        for p in procs:
            p.join(CHILD_TIMEOUT)
            assert p.exitcode == 0, f"child exit code {p.exitcode}"
    except queue.Empty:
        pytest.fail(f"a child did not report within {CHILD_TIMEOUT} s")
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
    return results


@pytest.mark.parametrize("kind", ["bump", "freelist", "slab"])
def test_spawned_processes_race_without_overlaps_or_lost_slots(kind, name):
    slots = 256
    if kind == "bump":
        a = BumpAllocator(name, capacity=slots * 64 * WORKERS * 8)
        table = a.capacity // 64
    elif kind == "freelist":
        a = FreeListAllocator(name, slot_size=64, num_slots=slots)
        table = (a.capacity + 10 * 4096) // 64
    else:
        a = SlabAllocator(name, slab_size=64, num_slabs=slots)
        table = slots
    ctx = mp.get_context("spawn")
    shadow = ctx.RawArray("i", table)  # shadow ownership: 64-byte block -> worker + 1
    results = run_children(
        ctx, _workers.race_worker, [(kind, name, w, OPS, shadow) for w in range(WORKERS)]
    )
    errors = [e for r in results for e in r["errors"]]
    assert not errors, errors[:10]
    allocs = sum(r["allocs"] for r in results)
    frees = sum(r["frees"] for r in results)
    if kind == "bump":
        # Every byte handed out exactly once, all of it used.
        assert allocs * 64 == a.capacity == a.used_bytes()
        assert all(shadow[i] != 0 for i in range(table))
    else:
        assert allocs == frees > 0
        assert all(r["full"] >= 0 for r in results)
        assert sum(r["full"] for r in results) > 0, "the test never filled the allocator"
        assert all(shadow[i] == 0 for i in range(table))
        # No slot lost: everything is free again and can all be taken at once.
        if kind == "freelist":
            assert a.used_slots() == 0 and a.available_slots() == slots
            offs = a.allocate_many(64, slots)
        else:
            assert a.used_slabs() == 0 and a.available_slabs() == slots
            offs = a.allocate_many(None, slots)
        assert offs is not None and len(set(offs)) == slots
        a.free_many(offs)
    a.unlink()


def _fork_child(alloc, kind, parent_off, q):
    """Runs in a forked child: uses the allocator object inherited from the parent."""
    try:
        seen = alloc.read(parent_off, 6)
        off = alloc.allocate() if kind == "slab" else alloc.allocate(64)
        alloc.write(off, b"child!")
        v = alloc.view(off, 6)
        memoryview(v)[0:1] = b"C"
        v.release()
        if kind != "bump":
            alloc.free(parent_off)
        q.put((seen, off, os.getpid(), None))
    except Exception as e:  # reported to the parent
        q.put((None, None, None, repr(e)))


@pytest.mark.parametrize("kind", ["bump", "freelist", "slab"])
def test_forked_child_uses_the_inherited_allocator(kind, name):
    if kind == "bump":
        a = BumpAllocator(name, capacity=1 << 16)
    elif kind == "freelist":
        a = FreeListAllocator(name, capacity=1 << 16)
    else:
        a = SlabAllocator(name, slab_size=64, num_slabs=64)
    off = a.allocate() if kind == "slab" else a.allocate(64)
    a.write(off, b"parent")
    ctx = mp.get_context("fork")
    (seen, child_off, pid, err), = run_children(ctx, _fork_child, [(a, kind, off)])
    assert err is None, err
    assert pid != os.getpid()
    assert seen == b"parent"
    assert a.read(child_off, 6) == b"Child!"
    if kind == "freelist":
        assert a.used_slots() == 1  # the child's free of the parent's block counted here
        with pytest.raises(ValueError):
            a.free(off)  # already freed by the child
    if kind == "slab":
        assert a.used_slabs() == 1
    # the parent's object still works after the fork
    again = a.allocate() if kind == "slab" else a.allocate(64)
    a.write(again, b"still fine")
    assert a.read(again, 10) == b"still fine"
    a.unlink()


@pytest.mark.parametrize("cls", [BumpAllocator, FreeListAllocator, SlabAllocator])
def test_allocator_passed_to_a_spawned_process_by_pickling(cls, name):
    a = cls(name)
    ctx = mp.get_context("spawn")
    (off, err), = run_children(ctx, _workers.pickled_allocator_child, [(a,)])
    assert err is None, err
    assert a.read(off, 20) == b"from a spawned child"
    a.unlink()


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_pool_workers_open_by_name(method, name):
    a = FreeListAllocator(name, capacity=1 << 20)
    with mp.get_context(method).Pool(4) as pool:
        offs = pool.map_async(_workers.pool_task, [(name, i) for i in range(16)]).get(CHILD_TIMEOUT)
    assert sorted(a.read(o, 64).rstrip(b"\0") for o in offs) == sorted(f"result {i}".encode() for i in range(16))
    assert a.used_slots() == 16
    a.free_many(offs)
    assert a.used_slots() == 0
    a.unlink()
