"""SharedDict get and set against multiprocessing.Manager().dict() and a plain
dict, in one run (ratios are what counts on a shared machine).

    python python/bench/bench_shared_dict.py [N]

Prints the median per-operation time of each over 5 repetitions of N operations
(default 20000; the Manager is timed on N // 10, it is that slow) on str keys and
int values over 1000 keys, and the ratios.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import statistics
import sys
import time

import shared_allocator as sa


def per_op(fn, n: int, reps: int = 5) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn(n)
        times.append((time.perf_counter() - t) / n)
    return statistics.median(times)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    keys = [f"key-{i}" for i in range(1000)]
    name = f"sa-bench-py-dict-{os.getpid()}"
    shared = sa.SharedDict(name, capacity=64 << 20)
    plain: dict = {}
    with mp.Manager() as m:
        managed = m.dict()
        results = {}
        for label, d, count in (("SharedDict", shared, n), ("dict", plain, n), ("Manager().dict()", managed, max(n // 10, 100))):
            for k in keys:
                d[k] = 0

            def sets(c, d=d):
                for i in range(c):
                    d[keys[i % 1000]] = i

            def gets(c, d=d):
                for i in range(c):
                    d[keys[i % 1000]]

            results[label] = (per_op(sets, count), per_op(gets, count))
    shared.unlink()
    print(f"{'':18} {'set (us/op)':>12} {'get (us/op)':>12}")
    for label, (s, g) in results.items():
        print(f"{label:18} {s * 1e6:12.3f} {g * 1e6:12.3f}")
    ss, sg = results["SharedDict"]
    ms, mg = results["Manager().dict()"]
    ps, pg = results["dict"]
    print(f"SharedDict vs Manager().dict(): set {ms / ss:.1f}x faster, get {mg / sg:.1f}x faster")
    print(f"SharedDict vs plain dict:       set {ss / ps:.1f}x slower, get {sg / pg:.1f}x slower")


if __name__ == "__main__":
    main()
