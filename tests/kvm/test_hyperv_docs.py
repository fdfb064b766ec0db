"""docs/hyperv.md's examples run as written and print what the page says they print."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "hyperv.md"


def examples() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)


def run(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_the_first_example_prints_what_the_page_shows(kvm):
    printed = re.search(r"prints\n\n```\n(.*?)```", DOC.read_text(), re.S)
    assert printed is not None
    assert run(examples()[0]) == printed.group(1)


def test_the_synic_example_gets_its_message(kvm):
    assert run(examples()[1]).splitlines() == [
        "PostResult.DELIVERED", "DebugExit(code=85, value=0x2a, port=0xf4, rip=0x103b) 42"]
