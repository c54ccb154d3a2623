"""Behaviour of the three classes, checked against the seed package's semantics."""

from __future__ import annotations

import inspect
import pickle

import pytest

import shared_allocator as sa
from shared_allocator import BumpAllocator, FreeListAllocator, SlabAllocator


def test_bump_offsets_and_accounting_match_the_seed(name):
    a = BumpAllocator(name, capacity=4096)
    assert a.capacity == 4096
    assert a.allocate(256) == 0  # offsets start at the data pool, as in the seed
    assert a.allocate(512) == 256
    assert a.allocate(1, alignment=64) == 768
    assert a.used_bytes() == 769
    assert a.available_bytes() == 4096 - 769
    assert a.allocate(4096) is None  # memory runs out: None, not an exception
    a.write(256, b"abc")
    assert a.read(256, 3) == b"abc"
    assert a.reset() is None
    assert a.used_bytes() == 0 and a.available_bytes() == 4096
    assert a.allocate(16) == 0
    a.close()
    a.unlink()


def test_bump_fills_exactly(name):
    a = BumpAllocator(name, capacity=1000)
    got = [a.allocate(100) for _ in range(10)]  # 8-byte alignment: 104 apart, as in the seed
    assert got[:9] == list(range(0, 936, 104)) and got[9] is None
    assert a.allocate(64) == 936 and a.allocate(1) is None
    a.unlink()


def test_freelist_slots_match_the_seed(name):
    a = FreeListAllocator(name, capacity=256 * 64)
    assert (a.slot_size, a.num_slots, a.capacity) == (256, 64, 256 * 64)
    assert a.available_slots() == 64 and a.used_slots() == 0
    offs = [a.allocate(200) for _ in range(64)]
    assert None not in offs and len(set(offs)) == 64
    assert a.available_slots() == 0 and a.used_slots() == 64
    assert a.allocate(8) is None  # num_slots blocks live: full, as in the seed
    a.free(offs[0])
    assert a.available_slots() == 1
    assert a.allocate(100) is not None
    for o in offs[1:]:
        a.free(o)
    assert a.used_slots() == 1
    a.unlink()


def test_freelist_explicit_num_slots_and_any_size(name):
    a = FreeListAllocator(name, slot_size=128, num_slots=10)
    assert a.capacity == 1280 and a.num_slots == 10
    big = a.allocate(100_000)  # larger than slot_size: served by the general allocator
    assert big is None  # ... but not larger than the region
    big = a.allocate(4000)
    assert big is not None
    a.write(big, b"x" * 4000)
    assert a.read(big, 4000) == b"x" * 4000
    a.free(big)
    assert a.allocate() is not None  # the seed's default size=0 allocates a slot
    a.unlink()


def test_freelist_reuses_freed_memory_at_other_sizes(name):
    a = FreeListAllocator(name, capacity=64 * 1024, slot_size=64)
    offs = a.allocate_many(64, 1000)
    assert offs is not None
    a.free_many(offs)
    big = a.allocate(60_000)
    assert big is not None
    a.free(big)
    a.unlink()


def test_slab_matches_the_seed(name):
    a = SlabAllocator(name, slab_size=256, num_slabs=8)
    assert (a.slab_size, a.num_slabs, a.capacity) == (256, 8, 2048)
    offs = [a.allocate() for _ in range(8)]
    assert offs == [i * 256 for i in range(8)]
    assert a.allocate() is None
    assert a.used_slabs() == 8 and a.available_slabs() == 0
    a.free(offs[3])
    assert a.available_slabs() == 1
    assert a.allocate(100) == offs[3]
    a.write(offs[3], b"y" * 256)
    assert a.read(offs[3], 256) == b"y" * 256
    a.unlink()


@pytest.mark.parametrize(
    "cls,methods",
    [
        (FreeListAllocator, ["available_slots", "used_slots"]),
        (SlabAllocator, ["available_slabs", "used_slabs"]),
        (BumpAllocator, ["used_bytes", "available_bytes"]),
    ],
)
def test_counters_are_methods_as_in_the_seed(cls, methods):
    for m in methods:
        assert callable(getattr(cls, m)), m
        assert not isinstance(inspect.getattr_static(cls, m), property), m


def test_open_by_name_sees_the_same_memory_and_parameters(names):
    n1, n2, n3 = names(), names(), names()
    f = FreeListAllocator(n1, capacity=4096, slot_size=64)
    g = FreeListAllocator(n1, create=False)
    assert (g.slot_size, g.num_slots) == (64, 64)
    o = f.allocate(64)
    f.write(o, b"shared")
    assert g.read(o, 6) == b"shared"
    assert g.used_slots() == 1
    g.free(o)
    assert f.used_slots() == 0
    b = BumpAllocator(n2, capacity=12345)
    assert BumpAllocator(n2, create=False).capacity == 12345
    s = SlabAllocator(n3, slab_size=48, num_slabs=7)
    s2 = SlabAllocator(n3, create=False)
    assert (s2.slab_size, s2.num_slabs) == (48, 7)
    for x in (f, b, s):
        x.unlink()


def test_reset_from_another_handle(name):
    a = BumpAllocator(name, capacity=1024)
    b = BumpAllocator(name, create=False)
    a.allocate(1000)
    assert b.available_bytes() == 24
    b.reset()
    assert a.available_bytes() == 1024
    a.unlink()


def test_context_manager_closes(name):
    with FreeListAllocator(name, capacity=4096) as a:
        assert not a.closed
        o = a.allocate(8)
    assert a.closed
    with pytest.raises(sa.ClosedError):
        a.read(o, 1)
    a.unlink()  # unlink works after close, as in the seed README


def test_pickle_opens_by_name(names):
    for cls, kw in (
        (BumpAllocator, {"capacity": 4096}),
        (FreeListAllocator, {"capacity": 8192, "slot_size": 128}),
        (SlabAllocator, {"slab_size": 32, "num_slabs": 16}),
    ):
        a = cls(names(), **kw)
        b = pickle.loads(pickle.dumps(a))
        assert type(b) is cls and b.name == a.name and b.capacity == a.capacity
        o = a.allocate(16)
        a.write(o, b"0123456789abcdef")
        assert b.read(o, 16) == b"0123456789abcdef"
        a.unlink()


def test_exception_hierarchy_keeps_builtin_handlers_working():
    assert issubclass(sa.DoubleFreeError, ValueError)
    assert issubclass(sa.DoubleFreeError, RuntimeError)
    assert issubclass(sa.OutOfBoundsError, ValueError)
    assert issubclass(sa.NotAllocatedError, ValueError)
    assert issubclass(sa.InvalidArgumentError, ValueError)
    assert issubclass(sa.WrongAllocatorKindError, ValueError)
    assert issubclass(sa.ExistsError, FileExistsError)
    assert issubclass(sa.NotFoundError, FileNotFoundError)
    assert issubclass(sa.ClosedError, ValueError)
    assert issubclass(sa.ExportedViewsError, BufferError)
    assert issubclass(sa.NotReadyError, TimeoutError)
    for e in sa.__all__:
        obj = getattr(sa, e)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, sa.SharedAllocatorError)


def test_exists_and_not_found_carry_errno_like_shared_memory(name):
    a = BumpAllocator(name, capacity=64)
    with pytest.raises(FileExistsError) as e:
        BumpAllocator(name, capacity=64)
    assert e.value.errno == 17 and name in e.value.filename
    a.unlink()
    with pytest.raises(FileNotFoundError) as e:
        a.unlink()
    assert e.value.errno == 2
    with pytest.raises(sa.NotFoundError):
        BumpAllocator(name, create=False)


def test_every_public_name_is_documented():
    for n in sa.__all__:
        obj = getattr(sa, n)
        if isinstance(obj, int):
            continue
        assert (obj.__doc__ or "").strip(), n
        if isinstance(obj, type) and not issubclass(obj, BaseException):
            for attr, member in vars(obj).items():
                if attr.startswith("_"):
                    continue
                assert (member.__doc__ or "").strip(), f"{n}.{attr}"


def test_data_offset_maps_to_rust_offsets(name):
    a = BumpAllocator(name, capacity=4096)
    assert a.data_offset > 0 and a.data_offset % 4096 == 0
    a.unlink()
