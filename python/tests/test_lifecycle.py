"""Segment lifecycle and introspection: ``stats()``, ``processes()``,
``largest_free_block()``, ``open_or_create`` raced by processes, and the
exit-time default (a segment this process created is removed once no process is
attached, as the seed's resource tracker did, but never under a live user)."""

from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
import textwrap
import time

import pytest

from shared_allocator import BumpAllocator, FreeListAllocator, SlabAllocator


def exists(name: str) -> bool:
    return os.path.exists(os.path.join("/dev/shm", name))


def make(kind: str, name: str):
    if kind == "freelist":
        return FreeListAllocator(name, capacity=1 << 20)
    if kind == "slab":
        return SlabAllocator(name, slab_size=64, num_slabs=100)
    return BumpAllocator(name, capacity=1 << 16)


@pytest.mark.parametrize("kind", ["freelist", "slab", "bump"])
def test_stats_processes_largest_free_block(kind, name):
    a = make(kind, name)
    try:
        off = a.allocate(48)
        assert off is not None
        s = a.stats()
        assert set(s) == {"capacity", "live_blocks", "live_bytes", "free_bytes", "cached_bytes", "classes"}
        assert s["live_bytes"] >= 48
        assert s["capacity"] >= s["live_bytes"] + s["free_bytes"] - s["cached_bytes"]
        if kind == "bump":
            assert s["live_blocks"] is None
        else:
            # (the free list also holds its slot-accounting root)
            assert s["live_blocks"] == (2 if kind == "freelist" else 1)
            assert all(set(c) == {"block_size", "spans", "live_blocks", "free_blocks"} for c in s["classes"])
        procs = a.processes()
        me = [p for p in procs if p["is_self"]]
        assert len(me) == 1
        assert me[0]["pid"] == os.getpid() and me[0]["alive"]
        assert me[0]["start_time_ns"] > 0
        assert {"slot", "generation", "intents", "pins"} <= set(me[0])
        largest = a.largest_free_block()
        assert 0 < largest <= s["free_bytes"]
        if kind == "slab":
            assert largest == 64
    finally:
        a.unlink()
        a.close()


def _racer(name: str, go: float, q) -> None:
    while time.time() < go:
        pass
    a, created = FreeListAllocator.open_or_create(name, capacity=1 << 20)
    off = a.allocate(16)
    q.put((created, a.capacity, off is not None))
    a.set_remove_on_last_close(False)  # the parent checks the name afterwards
    a.close()


def test_open_or_create_raced_by_eight_processes(name):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    go = time.time() + 2.0
    procs = [ctx.Process(target=_racer, args=(name, go, q)) for _ in range(8)]
    for p in procs:
        p.start()
    results = [q.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert sum(1 for created, _, _ in results if created) == 1
    assert len({cap for _, cap, _ in results}) == 1
    assert all(ok for _, _, ok in results)
    # All eight allocated in the one segment that has the name now.
    b = FreeListAllocator(name, create=False)
    assert b.used_slots() == 8
    b.close()


@pytest.mark.parametrize("kind", ["freelist", "slab", "bump"])
def test_open_or_create_returns_created_flag(kind, name):
    cls = {"freelist": FreeListAllocator, "slab": SlabAllocator, "bump": BumpAllocator}[kind]
    a, created = cls.open_or_create(name)
    assert created
    b, created = cls.open_or_create(name)
    assert not created
    assert a.capacity == b.capacity
    a.unlink()
    a.close()
    b.close()


def run_child(code: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_created_segment_is_removed_at_exit(name):
    # The seed package's README example, run twice: the second run used to fail
    # with ExistsError because the first left its segment behind.
    code = f"""
        from shared_allocator import FreeListAllocator
        a = FreeListAllocator({name!r}, capacity=1 << 20)
        off = a.allocate(64)
        a.write(off, b"hello")
        print(a.remove_on_last_close)
    """
    assert run_child(code).strip() == "False"
    assert not exists(name)
    run_child(code)
    assert not exists(name)


def test_removed_at_exit_even_if_the_handle_is_never_finalized(name):
    # Python does not promise to finalize objects at exit: the exit hook must not
    # count this process's own handles.
    code = f"""
        import ctypes
        from shared_allocator import FreeListAllocator
        a = FreeListAllocator({name!r}, capacity=1 << 20)
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(a))  # never deallocated
    """
    run_child(code)
    assert not exists(name)


def test_exit_never_removes_under_a_live_user(name):
    code = f"""
        import sys
        from shared_allocator import SlabAllocator
        a = SlabAllocator({name!r}, slab_size=64, num_slabs=10)
        print("made", flush=True)
        sys.stdin.readline()
    """
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "made"
        b = SlabAllocator(name, create=False)
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.wait(60) == 0
        # The creator exited while we are attached: the name stays, with the policy.
        assert exists(name)
        assert b.remove_on_last_close
        assert b.allocate() is not None
        del b  # the last handle out removes it
        import gc

        gc.collect()
        assert not exists(name)
    finally:
        child.kill()


def test_opt_out_keeps_the_segment(name):
    code = f"""
        from shared_allocator import BumpAllocator
        a = BumpAllocator({name!r}, capacity=4096)
        a.set_remove_on_last_close(False)
    """
    run_child(code)
    assert exists(name)
    b = BumpAllocator(name, create=False)
    assert not b.remove_on_last_close
    b.unlink()
    b.close()


def test_killed_creator_leaves_it_for_gc(name):
    # A process that dies by a signal runs no exit handler.
    code = f"""
        import os, signal
        from shared_allocator import FreeListAllocator
        a = FreeListAllocator({name!r}, capacity=1 << 20)
        os.kill(os.getpid(), signal.SIGKILL)
    """
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], timeout=60)
    assert out.returncode == -9
    assert exists(name)
    b = FreeListAllocator(name, create=False)
    dead = [p for p in b.processes() if not p["alive"]]
    assert len(dead) == 1
    b.unlink()
    b.close()


def test_open_or_create_replaces_a_creator_killed_mid_init(name):
    # Red-team #3: a creator SIGKILLed while initialising leaves a half-made
    # object (our magic, header unpublished, nobody holding its init lock) that is
    # younger than the stale grace: open_or_create waits the grace out and
    # replaces it instead of raising CorruptedError.
    path = "/dev/shm/" + name
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.ftruncate(fd, 1 << 20)
        os.pwrite(fd, b"SHMALLOC", 0)
    finally:
        os.close(fd)
    a, created = FreeListAllocator.open_or_create(name, capacity=1 << 20)
    assert created
    off = a.allocate(8)
    a.write(off, b"replaced")
    a.unlink()
    a.close()


def test_exit_default_keeps_a_name_a_fork_child_still_uses(name):
    # Red-team #4: the parent creates, forks a child that only reads and writes
    # the inherited object, and exits normally: the name must stay while the
    # child is alive.
    code = f"""
        import os, sys, time
        from shared_allocator import FreeListAllocator
        a = FreeListAllocator({name!r}, capacity=1 << 20)
        off = a.allocate(8)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(w)
            os.read(r, 1)  # the parent has exited (its end of the pipe closed)
            a.write(off, b"child!!!")
            print(os.path.exists("/dev/shm/{name}"), flush=True)
            os._exit(0)
        os.close(r)
        print(pid, flush=True)
        sys.exit(0)
    """
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split()
    child = int(lines[0])
    # subprocess.run waited for EOF on stdout, which the child holds: it has run.
    assert lines[1:] == ["True"], out.stdout + out.stderr
    # The child prints after the parent's exit hook ran (stdout pipe shared).
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        os.kill(child, 9)
        pytest.fail("fork child did not finish")
    assert exists(name), "the name was removed while the fork child used it"


def test_close_of_the_last_handle_applies_remove_on_last_close(name):
    # Red-team #5: close() on the last handle removes the name, as a drop does,
    # even if the process then leaves through os._exit.
    code = f"""
        import os
        from shared_allocator import FreeListAllocator
        a = FreeListAllocator({name!r}, capacity=1 << 20)
        b = FreeListAllocator({name!r}, create=False)
        a.set_remove_on_last_close(True)
        a.close()
        assert os.path.exists("/dev/shm/{name}")  # b is still open
        b.close()
        print(os.path.exists("/dev/shm/{name}"), flush=True)
        os._exit(0)
    """
    assert run_child(code).strip() == "False"
    assert not exists(name)


@pytest.mark.parametrize("capacity", [1 << 20, 10 << 20, 100000])
def test_largest_free_block_never_exceeds_capacity(name, capacity):
    # Red-team #7: the free list's data region is rounded up by size classes, and
    # largest_free_block() reported 1064960 for capacity=1<<20.
    a = FreeListAllocator(name, capacity=capacity)
    try:
        assert a.largest_free_block() <= a.available_bytes() <= a.capacity
        off = a.allocate(64)
        assert a.largest_free_block() <= a.available_bytes() <= a.capacity
        a.free(off)
    finally:
        a.unlink()
        a.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown")
def test_foreign_owner_raises_permission_denied(name):
    # Red-team #8b: an object owned by another uid raises the documented
    # PermissionDeniedError (a PermissionError), not the plain base class.
    from shared_allocator import PermissionDeniedError

    a = FreeListAllocator(name, capacity=1 << 20)
    a.set_remove_on_last_close(False)
    a.close()
    os.chown("/dev/shm/" + name, 65534, -1)
    with pytest.raises(PermissionDeniedError) as e:
        FreeListAllocator(name, create=False)
    assert isinstance(e.value, PermissionError)
    os.chown("/dev/shm/" + name, 0, -1)
    os.chmod("/dev/shm/" + name, 0o666)
    with pytest.raises(PermissionError):
        FreeListAllocator(name, create=False)
