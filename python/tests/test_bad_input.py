"""Bad input for every method: a typed exception (a SharedAllocatorError that is
also the seed's built-in, or TypeError for a wrong type), never a crash, and the
allocator still works afterwards."""

from __future__ import annotations

import pytest

import shared_allocator as sa
from shared_allocator import BumpAllocator, FreeListAllocator, SlabAllocator

HUGE = 2**80


@pytest.fixture(params=["bump", "freelist", "slab"])
def alloc(request, name):
    kind = request.param
    if kind == "bump":
        a = BumpAllocator(name, capacity=64 * 1024)
    elif kind == "freelist":
        a = FreeListAllocator(name, capacity=64 * 1024, slot_size=256)
    else:
        a = SlabAllocator(name, slab_size=256, num_slabs=256)
    yield a
    a.close()


def sized(a, n=256):
    return a.allocate() if isinstance(a, SlabAllocator) else a.allocate(n)


def still_works(a):
    o = sized(a, 16)
    a.write(o, b"ok")
    assert a.read(o, 2) == b"ok"


@pytest.mark.parametrize(
    "offset,exc",
    [(-1, sa.OutOfBoundsError), (HUGE, sa.OutOfBoundsError), (10**9, sa.OutOfBoundsError), ("0", TypeError), (None, TypeError), (1.5, TypeError)],
)
def test_write_read_view_bad_offsets(alloc, offset, exc):
    with pytest.raises(exc):
        alloc.write(offset, b"x")
    with pytest.raises(exc):
        alloc.read(offset, 1)
    with pytest.raises(exc):
        alloc.view(offset, 1)
    still_works(alloc)


def test_write_read_outside_blocks(alloc):
    o = sized(alloc)
    # past the end of the block (bump: past what was handed out)
    with pytest.raises(sa.NotAllocatedError):
        alloc.write(o, b"x" * 1000)
    with pytest.raises(sa.NotAllocatedError):
        alloc.read(o, 1000)
    with pytest.raises(sa.NotAllocatedError):
        alloc.view(o, 1000)
    # past the end of the data region
    with pytest.raises(sa.OutOfBoundsError):
        alloc.write(o, b"x" * 100_000)
    with pytest.raises(sa.OutOfBoundsError):
        alloc.read(o, 100_000)
    with pytest.raises(sa.InvalidArgumentError):
        alloc.read(o, -1)
    with pytest.raises(sa.InvalidArgumentError):
        alloc.view(o, -1)
    with pytest.raises(sa.OutOfBoundsError):
        alloc.read(o, HUGE)
    # never-allocated memory
    with pytest.raises(sa.NotAllocatedError):
        alloc.read(60 * 1024, 8)
    still_works(alloc)


@pytest.mark.parametrize("data", ["text", 42, None, [1, 2], 3.0])
def test_write_non_bytes(alloc, data):
    o = sized(alloc)
    with pytest.raises(TypeError):
        alloc.write(o, data)


def test_write_accepts_bytes_like(alloc):
    o = sized(alloc)
    alloc.write(o, bytearray(b"ba"))
    alloc.write(o + 2, memoryview(b"mv"))
    assert alloc.read(o, 4) == b"bamv"


@pytest.mark.parametrize("alignment", [0, 3, -8, 8192, HUGE, "8"])
def test_allocate_bad_alignment(alloc, alignment):
    exc = TypeError if isinstance(alignment, str) else ValueError
    with pytest.raises(exc):
        if isinstance(alloc, SlabAllocator):
            alloc.allocate(None, alignment)
        else:
            alloc.allocate(16, alignment)
    still_works(alloc)


@pytest.mark.parametrize("size", [-1, -(2**70), "16", 2.5])
def test_allocate_bad_size(alloc, size):
    exc = TypeError if isinstance(size, (str, float)) else ValueError
    with pytest.raises(exc):
        alloc.allocate(size)
    still_works(alloc)


def test_allocate_too_large(alloc):
    if isinstance(alloc, SlabAllocator):
        with pytest.raises(sa.InvalidArgumentError):  # the seed: ValueError
            alloc.allocate(257)
    else:
        assert alloc.allocate(10**12) is None  # never fits: None, as out of memory
        assert alloc.allocate(2**62) is None
    still_works(alloc)


def test_bump_zero_size_is_refused_as_in_the_seed(name):
    a = BumpAllocator(name, capacity=1024)
    with pytest.raises(ValueError):
        a.allocate(0)
    a.unlink()


@pytest.mark.parametrize("kind", ["freelist", "slab"])
def test_free_bad_input(kind, name):
    a = FreeListAllocator(name, capacity=64 * 1024) if kind == "freelist" else SlabAllocator(name, 256, 64)
    o = sized(a)
    for bad, exc in ((-1, sa.OutOfBoundsError), (HUGE, sa.OutOfBoundsError), (10**9, sa.OutOfBoundsError), (o + 8, sa.NotAllocatedError), ("x", TypeError), (None, TypeError)):
        with pytest.raises(exc):
            a.free(bad)
    a.free(o)
    with pytest.raises(sa.DoubleFreeError):
        a.free(o)
    with pytest.raises(ValueError):  # the seed's slab raised ValueError on double free
        a.free(o)
    with pytest.raises(TypeError):
        a.free_many(5)
    with pytest.raises(TypeError):
        a.free_many(["a"])
    with pytest.raises(sa.DoubleFreeError):
        a.free_many([o])
    with pytest.raises(sa.InvalidArgumentError):
        a.allocate_many(16 if kind == "freelist" else None, -1)
    assert a.allocate_many(16 if kind == "freelist" else None, 10**6) is None
    still_works(a)
    a.unlink()


def test_bump_allocate_many_bad_input(name):
    a = BumpAllocator(name, capacity=4096)
    with pytest.raises(sa.InvalidArgumentError):
        a.allocate_many(0, 4)
    with pytest.raises(sa.InvalidArgumentError):
        a.allocate_many(8, -1)
    assert a.allocate_many(8, 10**6) is None
    assert a.allocate_many(8, 2**62) is None
    assert list(a.allocate_many(8, 0)) == []
    assert a.used_bytes() == 0  # refused batches allocate nothing
    a.unlink()


def test_closed_allocator_refuses_every_method(alloc):
    o = sized(alloc)
    alloc.close()
    alloc.close()  # idempotent
    calls = [
        lambda: alloc.allocate(8) if not isinstance(alloc, SlabAllocator) else alloc.allocate(),
        lambda: alloc.write(o, b"x"),
        lambda: alloc.read(o, 1),
        lambda: alloc.view(o, 1),
        lambda: alloc.used_bytes(),
        lambda: alloc.available_bytes(),
        lambda: alloc.allocate_many(8, 2),
    ]
    if isinstance(alloc, BumpAllocator):
        calls.append(lambda: alloc.reset())
    else:
        calls += [lambda: alloc.free(o), lambda: alloc.free_many([o])]
    if isinstance(alloc, FreeListAllocator):
        calls += [alloc.used_slots, alloc.available_slots]
    if isinstance(alloc, SlabAllocator):
        calls += [alloc.used_slabs, alloc.available_slabs]
    for call in calls:
        with pytest.raises(sa.ClosedError):
            call()
    assert alloc.name and alloc.capacity > 0  # attributes still readable


@pytest.mark.parametrize("cls", [BumpAllocator, FreeListAllocator, SlabAllocator])
@pytest.mark.parametrize("bad_name", ["", "a/b", "x" * 300, ".", ".."])
def test_constructor_bad_names(cls, bad_name):
    with pytest.raises(sa.InvalidArgumentError):
        cls(bad_name)
    with pytest.raises(sa.InvalidArgumentError):
        cls(bad_name, create=False)


@pytest.mark.parametrize("cls", [BumpAllocator, FreeListAllocator, SlabAllocator])
def test_constructor_bad_types(cls, name):
    with pytest.raises(TypeError):
        cls(None)
    with pytest.raises(TypeError):
        cls(name, "big")
    with pytest.raises(TypeError):
        cls(name, create="yes")


def test_constructor_bad_sizes(names):
    for kwargs in ({"capacity": 0}, {"capacity": -5}, {"capacity": HUGE}, {"capacity": 2**40}):
        with pytest.raises(ValueError):
            BumpAllocator(names(), **kwargs)
    for kwargs in ({"slot_size": 0}, {"slot_size": -1}, {"num_slots": 0}, {"capacity": 10}, {"num_slots": 2**62}):
        with pytest.raises(ValueError):
            FreeListAllocator(names(), **kwargs)
    for kwargs in ({"slab_size": 0}, {"num_slabs": 0}, {"num_slabs": -3}, {"slab_size": 2**40}):
        with pytest.raises(ValueError):
            SlabAllocator(names(), **kwargs)


def test_open_missing_and_wrong_kind(names):
    missing = names()
    for cls in (BumpAllocator, FreeListAllocator, SlabAllocator):
        with pytest.raises(sa.NotFoundError):
            cls(missing, create=False)
    n = names()
    b = BumpAllocator(n, capacity=4096)
    with pytest.raises(sa.WrongAllocatorKindError):
        FreeListAllocator(n, create=False)
    with pytest.raises(sa.WrongAllocatorKindError):
        SlabAllocator(n, create=False)
    b.unlink()


def test_not_a_segment(name):
    with open(f"/dev/shm/{name}", "wb") as f:
        f.write(b"\xff" * 8192)
    with pytest.raises(sa.CorruptedError):
        BumpAllocator(name, create=False)


def test_view_release_twice_and_use_after_release(alloc):
    o = sized(alloc)
    v = alloc.view(o, 8)
    v.release()
    v.release()
    with pytest.raises(BufferError):
        memoryview(v)


def test_segment_never_initialised_is_refused_without_the_open_timeout(name):
    # A zeroed object of the right size that no process is initialising: not one of
    # ours (or its creator died). Refused as CorruptedError after a short grace
    # (about 0.1 s), not after the 2 s open timeout with NotReadyError.
    with open(f"/dev/shm/{name}", "wb") as f:
        f.write(bytes(16384))
    for cls in (SlabAllocator, BumpAllocator, FreeListAllocator):
        with pytest.raises(sa.CorruptedError, match="not initialised and no process is initialising it"):
            cls(name, create=False)
    # An empty object (a creator that died right after shm_open): the same.
    open(f"/dev/shm/{name}", "wb").close()
    with pytest.raises(sa.CorruptedError, match=r"\(0 bytes\)"):
        BumpAllocator(name, create=False)


def test_wrong_arity_raises_type_error(alloc):
    no_args = ["used_bytes", "available_bytes", "close"]
    if isinstance(alloc, FreeListAllocator):
        no_args += ["used_slots", "available_slots"]
    if isinstance(alloc, SlabAllocator):
        no_args += ["used_slabs", "available_slabs"]
    if isinstance(alloc, BumpAllocator):
        no_args.append("reset")
    for m in no_args:
        with pytest.raises(TypeError):
            getattr(alloc, m)(1)
    with pytest.raises(TypeError):
        alloc.write(0)
    with pytest.raises(TypeError):
        alloc.read(0)
    with pytest.raises(TypeError):
        alloc.view()
    with pytest.raises(TypeError):
        alloc.allocate(1, 8, 3)
    with pytest.raises(TypeError):
        alloc.allocate_many(8)
    with pytest.raises(TypeError):
        alloc.write(0, b"x", bogus=True)
    still_works(alloc)
