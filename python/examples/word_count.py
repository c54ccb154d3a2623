"""A word count in one SharedDict by a Pool of 4 worker processes.

    python python/examples/word_count.py [FILE...]

Each worker counts the words of its share of the lines into the shared dict with
``increment`` (atomic per key, so no count is lost); the parent prints the most
frequent words and checks the total. Works with fork and spawn workers alike: the
dict is passed to them by name.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import re
import sys

import shared_allocator as sa

WORDS = ["shared", "memory", "dict", "process", "pool", "word", "count", "python"]


def count_lines(args: tuple[str, list[str]]) -> int:
    name, lines = args
    d = sa.SharedDict(name, create=False)
    n = 0
    for line in lines:
        for w in re.findall(r"\w+", line.lower()):
            d.increment(w)
            n += 1
    return n


def main() -> None:
    if len(sys.argv) > 1:
        lines = [l for f in sys.argv[1:] for l in open(f, encoding="utf-8")]
    else:
        lines = [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(i % 13)) for i in range(20000)]
    name = f"sa-example-py-word-count-{os.getpid()}"
    d = sa.SharedDict(name, capacity=64 << 20)
    try:
        chunks = [(name, lines[i::4]) for i in range(4)]
        with mp.get_context("spawn").Pool(4) as pool:
            total = sum(pool.map(count_lines, chunks))
        counts = sorted(d.items(), key=lambda kv: (-kv[1], kv[0]))
        print(f"{len(counts)} distinct words, {sum(c for _, c in counts)} in all (workers saw {total})")
        for w, c in counts[:10]:
            print(f"{c:>8} {w}")
        assert sum(c for _, c in counts) == total, "a count was lost"
    finally:
        d.unlink()


if __name__ == "__main__":
    main()
