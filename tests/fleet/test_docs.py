"""docs/fleet.md's example runs as written, as a script of its own (which starts, and stops,
a local Ray of its own)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.fleet, pytest.mark.kvm]
pytest.importorskip("ray", reason="the fleet tests need Ray: pip install -e '.[fleet]'")

DOC = Path(__file__).resolve().parents[2] / "docs" / "fleet.md"


def test_the_docs_example_runs(tmp_path):
    example = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert example, "docs/fleet.md has no python example"
    script = tmp_path / "example.py"
    script.write_text(example.group(1))
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=240, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0] == "1000 results"
    assert lines[1].startswith("1000 jobs: 1000 done, 0 failed, 0 retried, 0 worker restarts")
