"""When scripts/test-all runs the suite (SA_TEST_WHEEL=1), it runs against the
installed wheel, in a virtualenv without a Rust toolchain on PATH."""

from __future__ import annotations

import os
import shutil
import sys

import pytest

import shared_allocator

SOURCE = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "python"))


@pytest.mark.skipif(os.environ.get("SA_TEST_WHEEL") != "1", reason="only under scripts/test-all")
def test_suite_runs_against_the_installed_wheel_without_rust():
    here = os.path.abspath(shared_allocator.__file__)
    assert here.startswith(os.path.abspath(sys.prefix)), here
    assert not here.startswith(SOURCE), f"imported from the source tree: {here}"
    assert shutil.which("cargo") is None and shutil.which("rustc") is None
    native = shared_allocator._native.__file__  # type: ignore[attr-defined]
    assert native.endswith(".abi3.so"), native
    assert os.path.exists(os.path.join(os.path.dirname(here), "py.typed"))
