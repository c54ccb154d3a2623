"""SharedDict workers run in child processes (importable by spawned children)."""

from __future__ import annotations

import random

import shared_allocator as sa


def random_ops(name: str, wid: int, ops: int, seed: int) -> dict:
    """Random dict operations on this worker's own keys, mirrored in a plain dict
    (the oracle); every read is checked against it. Returns the oracle."""
    d = sa.SharedDict(name, create=False)
    rng = random.Random(seed)
    oracle: dict = {}

    def key():
        n = rng.randrange(50)
        kind = rng.randrange(3)
        if kind == 0:
            return f"w{wid}-{n}"
        if kind == 1:
            return f"w{wid}-{n}".encode()
        return wid * 1000 + n  # int keys of this worker only

    for _ in range(ops):
        k = key()
        op = rng.randrange(8)
        if op <= 2:
            v = rng.choice([rng.random(), rng.randrange(-10**20, 10**20), "s" * rng.randrange(30), b"\x00b", None, True])
            d[k] = v
            oracle[k] = v
        elif op == 3:
            if k in oracle:
                del d[k]
                del oracle[k]
            else:
                try:
                    del d[k]
                except KeyError:
                    pass
                else:
                    raise AssertionError(f"deleted missing key {k!r}")
        elif op == 4:
            assert d.setdefault(k, wid) == oracle.setdefault(k, wid), k
        elif op == 5:
            assert (k in d) == (k in oracle), k
        else:
            assert d.get(k, "missing") == oracle.get(k, "missing"), k
    return oracle
