"""SharedDict: the dict protocol against a plain dict (random operation sequences,
seeded), numpy values, and workers in fork and spawn processes."""

from __future__ import annotations

import multiprocessing as mp
import pickle
import random

import pytest

import shared_allocator as sa
from _dict_workers import random_ops


def random_key(rng: random.Random):
    kind = rng.randrange(5)
    if kind == 0:
        return "k" + str(rng.randrange(200))
    if kind == 1:
        return bytes([rng.randrange(4)]) * rng.randrange(5)
    if kind == 2:
        return rng.randrange(-100, 100)
    if kind == 3:
        return rng.randrange(-5, 5) / 2  # 1.0 is the key 1, as in a dict
    return rng.choice([10**30, -(10**25), 2**63, True, False])


def random_value(rng: random.Random):
    return rng.choice(
        [
            "",
            "é" * rng.randrange(40),
            b"\xff" * rng.randrange(40),
            rng.randrange(-(2**70), 2**70),
            rng.random(),
            None,
            True,
            False,
        ]
    )


@pytest.mark.parametrize("seed", range(6))
def test_dict_protocol_matches_a_plain_dict(name, seed):
    d = sa.SharedDict(name, capacity=16 << 20)
    oracle: dict = {}
    rng = random.Random(seed)
    for step in range(3000):
        k = random_key(rng)
        op = rng.randrange(12)
        if op <= 3:
            v = random_value(rng)
            d[k] = v
            oracle[k] = v
        elif op == 4:
            if k in oracle:
                del d[k]
                del oracle[k]
            else:
                with pytest.raises(KeyError):
                    del d[k]
        elif op == 5:
            if k in oracle:
                assert d[k] == oracle[k]
                assert type(d[k]) is type(oracle[k])
            else:
                with pytest.raises(KeyError):
                    d[k]
        elif op == 6:
            v = random_value(rng)
            assert d.setdefault(k, v) == oracle.setdefault(k, v)
        elif op == 7:
            upd = {random_key(rng): random_value(rng) for _ in range(3)}
            d.update(upd)
            oracle.update(upd)
        elif op == 8:
            pairs = [(random_key(rng), random_value(rng)) for _ in range(2)]
            d.update(pairs, extra=step)
            oracle.update(pairs, extra=step)
        elif op == 9:
            assert d.pop(k, "none") == oracle.pop(k, "none")
        elif op == 10:
            assert (k in d) == (k in oracle)
            assert d.get(k) == oracle.get(k)
        else:
            assert len(d) == len(oracle)
    assert len(d) == len(oracle)
    # Equal keys are one key (1 == 1.0 == True): compare as sets, not by repr.
    assert set(d.keys()) == set(oracle.keys())
    assert dict(d.items()) == oracle
    assert sorted(map(repr, d.values())) == sorted(map(repr, oracle.values()))
    assert d.copy() == oracle
    assert set(iter(d)) == set(oracle)
    d.clear()
    assert len(d) == 0
    d.unlink()


def test_equal_keys_are_one_key_and_bad_keys_are_type_errors(name):
    d = sa.SharedDict(name, capacity=4 << 20)
    d[1] = "a"
    d[1.0] = "b"
    d[True] = "c"
    assert len(d) == 1 and d[1] == "c"
    assert d.keys() == [1]
    with pytest.raises(TypeError):
        d[(1, 2)] = 3
    with pytest.raises(TypeError):
        d[float("nan")] = 1
    with pytest.raises(TypeError):
        d["x"] = object()
    d["ba"] = bytearray(b"xyz")
    d["mv"] = memoryview(b"abc")
    assert d["ba"] == b"xyz" and d["mv"] == b"abc"
    d.unlink()


def test_numpy_arrays_keep_dtype_and_shape(name):
    np = pytest.importorskip("numpy")
    d = sa.SharedDict(name, capacity=16 << 20)
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    d["a"] = a
    b = d["a"]
    assert b.dtype == a.dtype and b.shape == a.shape
    assert (b == a).all()
    b[0, 0, 0] = 99  # a writable copy
    assert d["a"][0, 0, 0] == 0
    d["big"] = np.ones((512, 512), dtype=np.int64)
    assert d["big"].sum() == 512 * 512
    d.unlink()


def test_pickles_by_name(name):
    d = sa.SharedDict(name, capacity=4 << 20)
    d["x"] = 1
    data = pickle.dumps(d)
    e = pickle.loads(data)
    assert e.name == name and e["x"] == 1
    d.unlink()
    # Unpickling after the name is gone does not make a new, empty dict.
    with pytest.raises(FileNotFoundError):
        pickle.loads(data)


def test_a_full_segment_is_a_memory_error_and_changes_nothing(name):
    d = sa.SharedDict(name, capacity=1 << 20)
    d["small"] = b"x"
    with pytest.raises(MemoryError):
        d["big"] = b"y" * (4 << 20)
    assert "big" not in d and d["small"] == b"x" and len(d) == 1
    d.unlink()


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_workers_in_other_processes_against_an_oracle(name, method):
    d = sa.SharedDict(name, capacity=32 << 20)
    ctx = mp.get_context(method)
    with ctx.Pool(4) as pool:
        oracles = pool.starmap(random_ops, [(name, w, 1500, w * 7 + 1) for w in range(4)])
    want: dict = {}
    for o in oracles:
        want.update(o)
    assert len(d) == len(want)
    assert dict(d.items()) == want
    # The dict itself goes to workers too (pickled by name).
    with ctx.Pool(2) as pool:
        lens = pool.map(len, [d, d])
    assert lens == [len(want)] * 2
    d.unlink()
