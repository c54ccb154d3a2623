"""The seed package README's Python examples, copied verbatim, run unchanged.

The blocks use fixed segment names ("my_allocator", "fast_allocator"), so the
fixture removes those names before and after (they are never used elsewhere).
"""

from __future__ import annotations

import contextlib
import io

import pytest

from conftest import remove_segment

# --- verbatim from the seed README, "FreeListAllocator (Recommended for general use)"
FREELIST_EXAMPLE = '''\
from shared_allocator import FreeListAllocator

# Create allocator
allocator = FreeListAllocator(name="my_allocator", capacity=10*1024*1024, create=True)

# Allocate and write
offset = allocator.allocate(256)
allocator.write(offset, b"Hello from shared memory!")

# Read back
data = allocator.read(offset, 25)
print(data)  # b"Hello from shared memory!"

# Free when done
allocator.free(offset)

# Cleanup
allocator.close()
allocator.unlink()
'''

# --- verbatim from the seed README, "BumpAllocator (Fastest for temporary allocations)"
BUMP_EXAMPLE = '''\
from shared_allocator import BumpAllocator

# Create allocator
allocator = BumpAllocator(name="fast_allocator", capacity=10*1024*1024, create=True)

# Allocate lots of temporary data
for i in range(1000):
    offset = allocator.allocate(128)
    allocator.write(offset, f"Record {i}".encode())

# Reset all at once (much faster than individual frees)
allocator.reset()

# Memory is available again
print(f"Available: {allocator.available_bytes()} bytes")

allocator.close()
allocator.unlink()
'''


@pytest.fixture
def readme_names():
    for n in ("my_allocator", "fast_allocator"):
        remove_segment(n)
    try:
        yield
    finally:
        for n in ("my_allocator", "fast_allocator"):
            remove_segment(n)


def run(code: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "<seed README>", "exec"), {"__name__": "__readme__"})
    return out.getvalue()


def test_freelist_example(readme_names):
    assert run(FREELIST_EXAMPLE) == "b'Hello from shared memory!'\n"


def test_bump_example(readme_names):
    assert run(BUMP_EXAMPLE) == f"Available: {10 * 1024 * 1024} bytes\n"


def test_examples_leave_nothing_behind(readme_names):
    import os

    run(FREELIST_EXAMPLE)
    run(BUMP_EXAMPLE)
    assert "my_allocator" not in os.listdir("/dev/shm")
    assert "fast_allocator" not in os.listdir("/dev/shm")
