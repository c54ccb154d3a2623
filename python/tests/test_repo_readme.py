"""The repository README's "Python" example (4 spawned workers) runs as shown."""

from __future__ import annotations

import os
import re
import subprocess
import sys

README = os.path.join(os.path.dirname(__file__), "..", "..", "README.md")


def test_readme_python_example_runs(tmp_path):
    text = open(README, encoding="utf-8").read()
    section = text.split("## Python", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    script = tmp_path / "example.py"
    script.write_text(code)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [f"hello from worker {i}" for i in range(4)]
    assert not [f for f in os.listdir("/dev/shm") if f.startswith("sa-demo-")]
