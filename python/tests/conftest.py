"""Shared fixtures: unique segment names that are always unlinked.

Every segment a test makes is named ``sa-test-py-<run>-<n>`` and goes through
the ``names`` fixture, which removes it after the test whatever happened. At the
end of the session nothing with this run's prefix may remain in /dev/shm.
"""

from __future__ import annotations

import itertools
import os
import uuid

import pytest

RUN = f"sa-test-py-{os.getpid()}-{uuid.uuid4().hex[:8]}"
_counter = itertools.count()


def remove_segment(name: str) -> None:
    """Removes /dev/shm/<name> if it exists (never fails)."""
    try:
        os.unlink(os.path.join("/dev/shm", name.lstrip("/")))
    except FileNotFoundError:
        pass


class Names:
    """Hands out unique segment names and removes them all at teardown."""

    def __init__(self) -> None:
        self.made: list[str] = []

    def __call__(self, tag: str = "seg") -> str:
        name = f"{RUN}-{tag}-{next(_counter)}"
        self.made.append(name)
        return name

    def cleanup(self) -> None:
        for n in self.made:
            remove_segment(n)


@pytest.fixture
def names():
    """``names(tag)`` returns a fresh segment name; all are unlinked afterwards."""
    n = Names()
    try:
        yield n
    finally:
        n.cleanup()


@pytest.fixture
def name(names):
    """One fresh segment name, unlinked afterwards."""
    return names()


def pytest_sessionfinish(session, exitstatus):
    left = [f for f in os.listdir("/dev/shm") if f.startswith(RUN)]
    for f in left:
        remove_segment(f)
    if left:
        print(f"\nsegments left in /dev/shm by the tests (now removed): {left}")
        session.exitstatus = 1
