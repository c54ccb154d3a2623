"""A /dev/shm smaller than the segment (Docker's default is 64 MiB).

Filling a 256 MiB allocator in a 16 MiB tmpfs must end with ``None`` (out of
memory), never a SIGBUS; the process survives, frees everything and can fill the
same space again. The child runs in a private mount namespace (``unshare
--mount``, root needed): without one the test fails, it never skips.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import os
    import sys
    from shared_allocator import BumpAllocator, FreeListAllocator

    st = os.statvfs("/dev/shm")
    assert st.f_blocks * st.f_frsize <= 16 << 20, "not the small tmpfs"
    name = f"sa-test-py-tiny-{os.getpid()}"
    data = b"\\xa5" * (1 << 20)

    def fill(a):
        blocks = []
        while True:
            off = a.allocate(1 << 20)
            if off is None:
                return blocks
            a.write(off, data)
            blocks.append(off)
            assert len(blocks) < 1024, "never ran out of memory"

    if sys.argv[1] == "fl":
        fl = FreeListAllocator(name, capacity=256 << 20)
        first = fill(fl)
        small = []
        while (off := fl.allocate(512)) is not None:
            fl.write(off, b"x" * 512)
            small.append(off)
        for off in first + small:
            fl.free(off)
        # Nothing is lost: the space fills again at least as far (the first fill
        # may stop a block earlier, while pages and their metadata were still
        # being committed in 1 MiB steps).
        again = fill(fl)
        assert len(again) >= len(first), (len(again), len(first))
        for off in again:
            fl.free(off)
        fl.unlink()
        print(f"RESULT blocks={len(first)}")
    else:
        bump = BumpAllocator(name, capacity=256 << 20)
        n = len(fill(bump))
        bump.reset()
        assert len(fill(bump)) == n
        bump.unlink()
        print(f"RESULT blocks={n}")
    """
)


@pytest.mark.parametrize("kind", ["fl", "bump"])
def test_small_shm_gives_none_never_sigbus(kind):
    unshare = shutil.which("unshare")
    assert unshare, "util-linux unshare is needed (this test never skips)"
    assert os.geteuid() == 0, "root is needed to mount a tmpfs (this test never skips)"
    cmd = [
        unshare,
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        'mount -t tmpfs -o size=16m tmpfs /dev/shm && exec "$0" "$@"',
        sys.executable,
        "-c",
        SCRIPT,
        kind,
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (
        f"child exited with {r.returncode} (a SIGBUS is -7 or 135)\n{r.stdout}\n{r.stderr}"
    )
    line = next(l for l in r.stdout.splitlines() if l.startswith("RESULT"))
    assert 4 <= int(line.split("=")[1]) < 16, line


def test_fresh_allocator_gives_its_capacity_in_every_process(name):
    """``allocate(capacity)`` on a fresh allocator works from any process (no
    pid-dependent placement splits the region)."""
    from shared_allocator import FreeListAllocator

    cap = 200_000_000
    a = FreeListAllocator(name, capacity=cap)
    try:
        child = textwrap.dedent(
            f"""
            from shared_allocator import FreeListAllocator
            a = FreeListAllocator({name!r}, create=False)
            off = a.allocate({cap})
            assert off is not None, "allocate(capacity) returned None"
            a.write(off + {cap} - 1, b"x")
            a.free(off)
            a.close()
            """
        )
        for _ in range(2):
            r = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120)
            assert r.returncode == 0, r.stderr
        off = a.allocate(cap)
        assert off is not None
        a.free(off)
    finally:
        a.close()
