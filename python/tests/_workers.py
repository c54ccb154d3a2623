"""Functions run in child processes (importable by spawned children)."""

from __future__ import annotations

import random
import struct
import traceback

import shared_allocator as sa

TAG = struct.Struct("<QQ")
BLOCK = 64


def open_allocator(kind: str, name: str):
    if kind == "bump":
        return sa.BumpAllocator(name, create=False)
    if kind == "freelist":
        return sa.FreeListAllocator(name, create=False)
    return sa.SlabAllocator(name, create=False)


def _alloc(a, kind: str):
    return a.allocate() if kind == "slab" else a.allocate(BLOCK)


def race_worker(kind: str, name: str, wid: int, ops: int, shadow, out) -> None:
    """Allocates and frees 64-byte blocks at random, tagging each block with
    (worker, sequence) and claiming it in the shared shadow table (one entry per
    64 bytes). Reports overlaps (a block already claimed, a tag overwritten) and
    what it did through the queue ``out``."""
    errors: list[str] = []
    allocs = frees = full = 0
    try:
        a = open_allocator(kind, name)
        rng = random.Random(wid)
        held: list[tuple[int, int]] = []
        me = wid + 1
        for seq in range(ops):
            # Slightly more allocations than frees, so that the workers reach the
            # slot limit together (the test checks that "full" happens).
            if kind != "bump" and held and rng.random() < 0.45:
                off, tag_seq = held.pop(rng.randrange(len(held)))
                got = TAG.unpack(a.read(off, TAG.size))
                if got != (wid, tag_seq):
                    errors.append(f"block {off}: tag {got}, expected {(wid, tag_seq)}")
                if shadow[off // BLOCK] != me:
                    errors.append(f"block {off}: shadow owner {shadow[off // BLOCK]}, expected {me}")
                shadow[off // BLOCK] = 0
                a.free(off)
                frees += 1
                continue
            off = _alloc(a, kind)
            if off is None:
                full += 1
                if kind == "bump":
                    break
                continue
            allocs += 1
            if off % BLOCK:
                errors.append(f"offset {off} not a multiple of {BLOCK}")
            idx = off // BLOCK
            if shadow[idx] != 0:
                errors.append(f"block {off} handed out while owned by worker {shadow[idx] - 1}")
            shadow[idx] = me
            a.write(off, TAG.pack(wid, seq))
            held.append((off, seq))
        for off, tag_seq in held:
            got = TAG.unpack(a.read(off, TAG.size))
            if got != (wid, tag_seq):
                errors.append(f"block {off}: tag {got}, expected {(wid, tag_seq)} at the end")
            if kind != "bump":
                shadow[off // BLOCK] = 0
                a.free(off)
                frees += 1
        a.close()
    except Exception:
        errors.append(traceback.format_exc())
    out.put({"wid": wid, "errors": errors, "allocs": allocs, "frees": frees, "full": full})


def numpy_child(name: str, offset: int, count: int, out) -> None:
    """Opens the free list by name, checks the parent's float64 array through a
    view, doubles it in place, and checks that a read-only view refuses writes."""
    try:
        import numpy as np

        a = sa.FreeListAllocator(name, create=False)
        v = a.view(offset, count * 8)
        arr = np.frombuffer(v, dtype=np.float64)
        ok = bool((arr == np.arange(count, dtype=np.float64)).all())
        arr *= 2
        ro = np.frombuffer(a.view(offset, count * 8, readonly=True), dtype=np.float64)
        try:
            ro[0] = -1.0
            ro_refused = False
        except ValueError:
            ro_refused = True
        out.put({"ok": ok, "ro_refused": ro_refused, "error": None})
    except Exception:
        out.put({"ok": False, "ro_refused": False, "error": traceback.format_exc()})


def pool_task(args):
    """Pool worker of the README example: open by name, store a record, return its offset."""
    name, i = args
    a = sa.FreeListAllocator(name, create=False)
    off = a.allocate(64)
    a.write(off, f"result {i}".encode())
    a.close()
    return off


def pickled_allocator_child(alloc, out) -> None:
    """Receives an allocator object through pickling (spawn) and uses it."""
    try:
        off = alloc.allocate(32)
        alloc.write(off, b"from a spawned child")
        out.put((off, None))
    except Exception:
        out.put((None, traceback.format_exc()))
