"""Every ```python block of the repository README and of python/README.md runs as
shown, in its own interpreter, and leaves nothing behind in /dev/shm.

Examples name their segments with the process id (``os.getpid()``), so a leftover
is any /dev/shm entry with the example process's pid in its name once it exited.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DOCS = ["README.md", os.path.join("python", "README.md")]


def blocks():
    for doc in DOCS:
        text = open(os.path.join(ROOT, doc), encoding="utf-8").read()
        for i, m in enumerate(re.finditer(r"^```python\n(.*?)^```", text, re.S | re.M)):
            line = text.count("\n", 0, m.start()) + 1
            yield pytest.param(doc, line, m.group(1), id=f"{doc}:{line}")


ALL = list(blocks())


def test_every_doc_has_python_examples():
    assert {doc for doc, *_ in (p.values for p in ALL)} == set(DOCS)


@pytest.mark.parametrize("doc,line,code", ALL)
def test_python_block_runs_and_cleans_up(tmp_path, doc, line, code):
    assert "os.getpid()" in code or "Allocator(" not in code, (
        f"{doc}:{line}: name segments with os.getpid() so leftovers can be found"
    )
    script = tmp_path / "example.py"
    script.write_text(code)
    proc = subprocess.Popen(
        [sys.executable, str(script)], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    mine = re.compile(rf"(?<![0-9]){proc.pid}(?![0-9])")
    left = [f for f in os.listdir("/dev/shm") if mine.search(f)]
    for f in left:
        os.unlink(os.path.join("/dev/shm", f))
    assert proc.returncode == 0, f"{doc}:{line} failed:\n{out}\n{err}"
    assert not left, f"{doc}:{line} left segments behind: {left}"
    if doc == "README.md" and "worker" in code:
        assert out.splitlines() == [f"hello from worker {i}" for i in range(4)]


def test_readme_setup_is_the_two_commands_and_ci_runs_them():
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    setup = text.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", setup, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    assert commands == ["cargo run --release --example quickstart", "scripts/test-all"]
    ci = [l.strip() for l in open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8") if not l.startswith("#")]
    assert all(c in ci for c in commands), "CI must run the README's set-up commands"


def test_readme_rust_blocks_are_complete_programs_without_hidden_lines():
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    rust = re.findall(r"^```rust\n(.*?)^```", text, re.S | re.M)
    assert rust
    for code in rust:
        assert "fn main()" in code
        assert not [l for l in code.splitlines() if l.startswith("# ") or l == "#"], "hidden doctest lines"
        assert "UnlinkGuard::new(" in code  # the segment is removed when the program ends
