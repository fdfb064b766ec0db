"""README.md's Python examples run as written.

Every ```python block of the README is a complete program: each one runs here in a fresh
interpreter, in an empty directory, and must exit with status 0.  A block that cannot run in
CI says so on the line just before its fence, ``<!-- not run: why -->``; it is skipped with
that reason, and at most one block may be.  The first block (the README's Example) must also
pass ``mypy --strict``.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
NOT_RUN = re.compile(r"<!-- not run: (.+?) -->")
MAX_NOT_RUN = 1
TIMEOUT = 120          # seconds per block (each takes about a second here)


@dataclass(frozen=True)
class Block:
    index: int
    line: int            # of the opening fence, 1-based
    code: str
    not_run: str | None  # the reason given in <!-- not run: ... -->, if any

    @property
    def title(self) -> str:
        first = next((text.strip() for text in self.code.splitlines() if text.strip()), "")
        return f"{self.index}-L{self.line}-{first[:40]}"


def blocks(text: str | None = None) -> list[Block]:
    """The README's ```python blocks, in order."""
    lines = (README.read_text() if text is None else text).splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            start = i
            end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
            assert end is not None, f"README.md:{start + 1}: a ```python block never closes"
            marker = NOT_RUN.fullmatch(lines[start - 1].strip()) if start else None
            found.append(Block(len(found), start + 1, "\n".join(lines[start + 1:end]) + "\n",
                               marker.group(1) if marker else None))
            i = end
        i += 1
    return found


BLOCKS = blocks()


def needs(block: Block) -> str | None:
    """A tool the block runs that is an optional prerequisite, when it is missing here."""
    if re.search(r"""\[\s*["']gdb["']""", block.code) and shutil.which("gdb") is None:
        return "gdb is not installed (apt-get install gdb)"
    return None


def test_the_readme_has_its_examples():
    assert len(BLOCKS) >= 10
    assert BLOCKS[0].not_run is None, "the first example must run"


def test_at_most_one_block_is_not_run():
    marked = [b for b in BLOCKS if b.not_run is not None]
    assert len(marked) <= MAX_NOT_RUN, [b.title for b in marked]
    # a marker anywhere but just before a ```python fence would silently mark nothing
    assert len(NOT_RUN.findall(README.read_text())) == len(marked)


def test_the_parser_sees_markers_and_fences():
    text = "# t\n\n```python\nprint(1)\n```\n\n<!-- not run: needs a disk -->\n```python\n" \
           "\nimport os\n```\n```sh\nls\n```\n"
    found = blocks(text)
    assert [(b.index, b.line, b.code, b.not_run) for b in found] == [
        (0, 3, "print(1)\n", None), (1, 8, "\nimport os\n", "needs a disk")]
    assert found[1].title == "1-L8-import os"


def tools_without_preload(directory: Path) -> dict[str, str]:
    """The environment for a block: under the sanitizer run (LD_PRELOAD of libasan, for pyhv's
    C core) the tools a block starts, gdb, come first on PATH as a wrapper that drops the
    preload, since gdb is not built with ASan and hangs under it."""
    env = dict(os.environ)
    gdb = shutil.which("gdb")
    if "LD_PRELOAD" in env and gdb is not None:
        bin_dir = directory / "bin"
        bin_dir.mkdir(exist_ok=True)
        wrapper = bin_dir / "gdb"
        wrapper.write_text(f'#!/bin/sh\nunset LD_PRELOAD ASAN_OPTIONS\nexec {gdb} "$@"\n')
        wrapper.chmod(0o755)
        env["PATH"] = os.pathsep.join((str(bin_dir), env.get("PATH", "")))
    return env


def run_program(code: str, directory: Path, name: str) -> subprocess.CompletedProcess[str]:
    path = directory / name
    path.write_text(code)
    return subprocess.run([sys.executable, str(path)], cwd=directory, capture_output=True,
                          text=True, timeout=TIMEOUT, env=tools_without_preload(directory))


@pytest.mark.timeout(TIMEOUT + 30)
@pytest.mark.parametrize("block", BLOCKS, ids=[b.title for b in BLOCKS])
def test_the_block_runs_as_written(block, tmp_path, kvm):
    if block.not_run is not None:
        pytest.skip(f"README.md:{block.line}: not run: {block.not_run}")
    missing = needs(block)
    if missing is not None:
        pytest.skip(f"README.md:{block.line}: {missing}")
    proc = run_program(block.code, tmp_path, f"readme_block_{block.index}.py")
    if proc.returncode != 0:
        pytest.fail(f"README.md:{block.line}: the block exited with status {proc.returncode}\n"
                    f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}",
                    pytrace=False)


def test_the_first_block_passes_mypy_strict(tmp_path):
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed (pip install mypy)")
    path = tmp_path / "example.py"
    path.write_text(BLOCKS[0].code)
    env = dict(os.environ)
    spec = importlib.util.find_spec("pyhv")
    assert spec is not None and spec.origin is not None
    root = Path(spec.origin).parents[1]
    if root.name not in ("site-packages", "dist-packages"):
        # an editable install (a meta-path finder mypy does not follow): point it at the tree
        env["MYPYPATH"] = os.pathsep.join(p for p in (str(root), env.get("MYPYPATH")) if p)
    # --follow-imports=silent: the README's code is judged here, not pyhv's own modules
    proc = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent",
                           "--cache-dir", str(tmp_path / ".mypy_cache"), str(path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    if proc.returncode != 0:
        pytest.fail(f"README.md:{BLOCKS[0].line}: mypy --strict:\n{proc.stdout}{proc.stderr}",
                    pytrace=False)
