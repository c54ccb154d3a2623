#!/usr/bin/env python3
"""The seed README's five operations, this package against the seed itself.

The bodies are the seed's own (its sdist's tests/test_benchmarks.py, same sizes
and fixtures); each is called N times in a loop per round, and the median of the
rounds is reported in ns per call. Both packages import as ``shared_allocator``,
so each runs in its own virtualenv:

    python python/bench/bench_seed.py            # sets up target/seed-venv if needed,
                                                 # runs both, prints a markdown table
    python python/bench/bench_seed.py --run      # JSON for the importable package only

Run the first form from the repository root with the package installed in the
current interpreter (``scripts/test-all`` leaves it in target/wheel-venv). The two
packages run alternately, RUNS times each, so that load changes on a shared
machine hit both; each number is the median over all rounds of all runs. Rounds
are timed in CPU time of the benchmarking process (``time.process_time_ns``):
on a shared 2-core machine, wall time mostly measures how often other processes
got the core.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
import uuid

SEED_VERSION = "0.1.0"
ROUNDS = 7
RUNS = 3
N = 20_000  # calls per round (bump sequential allocate fills 10 MiB in 40,960)


def _timeit(body, n=N, rounds=ROUNDS, before_round=None, per=1):
    """ns per call (divided by ``per``) of each round."""
    times = []
    for _ in range(rounds):
        if before_round:
            before_round()
        t0 = time.process_time_ns()
        for _ in range(n):
            body()
        times.append((time.process_time_ns() - t0) / n / per)
    return times


def run() -> dict:
    import shared_allocator as sa
    from shared_allocator import BumpAllocator, FreeListAllocator, SlabAllocator

    tag = uuid.uuid4().hex[:8]
    made = []

    def fresh(kind):
        name = f"sa-bench-{kind}-{tag}-{len(made)}"
        made.append(name)
        # The seed benchmark's fixtures.
        if kind == "bump":
            return BumpAllocator(name=name, capacity=10 * 1024 * 1024, create=True)
        if kind == "freelist":
            return FreeListAllocator(name=name, capacity=10 * 1024 * 1024, create=True)
        return SlabAllocator(name=name, slab_size=256, num_slabs=40960, create=True)

    res = {"package": getattr(sa, "__version__", "0.1.0 (seed)")}
    try:
        bump, fl, slab = fresh("bump"), fresh("freelist"), fresh("slab")

        # --- write 128 B (test_*_write)
        for key, a in (("bump", bump), ("freelist", fl)):
            offset = a.allocate(256)
            data = b"x" * 128

            def write(a=a, offset=offset, data=data):
                a.write(offset, data)

            res[f"write_{key}"] = _timeit(write)

        # --- read 128 B (test_*_read)
        for key, a in (("bump", bump), ("freelist", fl)):
            offset = a.allocate(256)
            data = b"x" * 128
            a.write(offset, data)

            def read(a=a, offset=offset):
                return a.read(offset, 128)

            assert read() == data
            res[f"read_{key}"] = _timeit(read)

        # --- sequential allocate (test_bump_sequential_allocation): reset between
        # rounds (not timed) so that every call really allocates.
        seq = fresh("bump")

        def allocate():
            offset = seq.allocate(256)
            return offset

        res["seq_alloc_bump"] = _timeit(allocate, before_round=seq.reset)
        seq.close()

        # --- sequential allocate (test_freelist_sequential_allocation)
        allocated = []

        def allocate_fl():
            offset = fl.allocate(256)
            if offset is not None:
                allocated.append(offset)
                # Free oldest allocation to maintain steady state
                if len(allocated) > 100:
                    fl.free(allocated.pop(0))
            return offset

        res["seq_alloc_freelist"] = _timeit(allocate_fl)
        for offset in allocated:
            fl.free(offset)

        # --- alloc + free (test_freelist_alloc_free, test_slab_alloc_free)
        def alloc_free():
            offset = fl.allocate(256)
            if offset is not None:
                fl.free(offset)
            return offset

        res["alloc_free_freelist"] = _timeit(alloc_free)

        def alloc_free_slab():
            offset = slab.allocate()
            if offset is not None:
                slab.free(offset)
            return offset

        res["alloc_free_slab"] = _timeit(alloc_free_slab)

        # --- reuse pattern (test_freelist_reuse)
        def reuse():
            offset1 = fl.allocate(256)
            if offset1 is not None:
                fl.free(offset1)
                offset2 = fl.allocate(256)
                if offset2 is not None:
                    fl.free(offset2)
                return offset2
            return None

        res["reuse_freelist"] = _timeit(reuse)

        # --- batch: 1,000 blocks of 256 B allocated and freed per call, per block
        if hasattr(fl, "allocate_many"):

            def batch():
                offs = fl.allocate_many(256, 1000)
                fl.free_many(offs)

            res["batch_alloc_free_freelist"] = _timeit(batch, n=200, per=1000)

            def batch_slab():
                offs = slab.allocate_many(None, 1000)
                slab.free_many(offs)

            res["batch_alloc_free_slab"] = _timeit(batch_slab, n=200, per=1000)

        for a in (bump, fl, slab):
            a.close()
    finally:
        for name in made:
            try:
                os.unlink(f"/dev/shm/{name}")
            except FileNotFoundError:
                pass
    return res


ROWS = [
    ("write 128 B, bump", "write_bump", "write_bump"),
    ("write 128 B, free list", "write_freelist", "write_freelist"),
    ("read 128 B, bump", "read_bump", "read_bump"),
    ("read 128 B, free list", "read_freelist", "read_freelist"),
    ("sequential allocate, bump", "seq_alloc_bump", "seq_alloc_bump"),
    ("sequential allocate, free list", "seq_alloc_freelist", "seq_alloc_freelist"),
    ("alloc + free, free list", "alloc_free_freelist", "alloc_free_freelist"),
    ("alloc + free, slab", "alloc_free_slab", "alloc_free_slab"),
    ("reuse pattern, free list", "reuse_freelist", "reuse_freelist"),
    ("batch alloc + free per block, free list (seed: its alloc + free)", "batch_alloc_free_freelist", "alloc_free_freelist"),
    ("batch alloc + free per block, slab (seed: its alloc + free)", "batch_alloc_free_slab", "alloc_free_slab"),
]


def main() -> None:
    if "--run" in sys.argv:
        print(json.dumps(run()))
        return
    root = os.getcwd()
    seed_venv = os.path.join(root, "target", "seed-venv")
    seed_py = os.path.join(seed_venv, "bin", "python")
    if not os.path.exists(seed_py):
        subprocess.run([sys.executable, "-m", "venv", seed_venv], check=True)
        # The seed declares Python >= 3.13.7 but is pure Python that runs on 3.11.
        subprocess.run(
            [seed_py, "-m", "pip", "install", "-q", "--disable-pip-version-check",
             "--ignore-requires-python", f"shared_allocator=={SEED_VERSION}"],
            check=True,
        )
    here = os.path.abspath(__file__)
    env = dict(os.environ, PYTHONPATH="")

    def once(py):
        out = subprocess.run([py, here, "--run"], check=True, capture_output=True, text=True, env=env, cwd="/")
        return json.loads(out.stdout)

    runs: dict[str, list[dict]] = {"ours": [], "seed": []}
    for _ in range(RUNS):
        runs["ours"].append(once(sys.executable))
        runs["seed"].append(once(seed_py))

    def pooled(which):
        keys = [k for k in runs[which][0] if k != "package"]
        return {k: statistics.median(t for r in runs[which] for t in r[k]) for k in keys}

    ours, seed = pooled("ours"), pooled("seed")
    print(f"{RUNS} alternating runs x {ROUNDS} rounds x {N} calls per package; medians in ns of CPU time per call")
    print()
    print(f"| operation | this package (ns) | seed {SEED_VERSION} (ns) | speed-up |")
    print("|---|---|---|---|")
    for label, ok, sk in ROWS:
        if ok in ours and sk in seed:
            print(f"| {label} | {ours[ok]:.0f} | {seed[sk]:.0f} | {seed[sk] / ours[ok]:.1f}x |")


if __name__ == "__main__":
    main()
