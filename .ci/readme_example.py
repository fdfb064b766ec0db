"""Run every ```python block of README.md exactly as written, each a program of its own.

Each block runs in a fresh interpreter (this one's), in an empty temporary directory; a block
marked ``<!-- not run: why -->`` on the line before its fence is skipped.  Prints each
block's line, status and time; exits 1 if any block failed.  (tests/kvm/test_readme.py
checks the same in the test suite.)
"""

import pathlib
import re
import subprocess
import sys
import tempfile
import time

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
NOT_RUN = re.compile(r"<!-- not run: (.+?) -->")


def blocks() -> list[tuple[int, str, str | None]]:
    """(line of the fence, code, the not-run reason or None) for each ```python block."""
    lines = README.read_text().splitlines()
    found = []
    i = 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
            marker = NOT_RUN.fullmatch(lines[i - 1].strip()) if i else None
            found.append((i + 1, "\n".join(lines[i + 1:end]) + "\n",
                          marker.group(1) if marker else None))
            i = end
        i += 1
    return found


def main() -> int:
    found = blocks()
    if not found:
        print("README.md has no ```python example", file=sys.stderr)
        return 1
    failed = skipped = 0
    for index, (line, code, not_run) in enumerate(found):
        if not_run is not None:
            print(f"README.md:{line}: block {index}: not run ({not_run})")
            skipped += 1
            continue
        with tempfile.TemporaryDirectory(prefix="pyhv-readme-") as tmp:
            path = pathlib.Path(tmp) / f"readme_block_{index}.py"
            path.write_text(code)
            start = time.perf_counter()
            proc = subprocess.run([sys.executable, str(path)], cwd=tmp, capture_output=True,
                                  text=True, timeout=300)
            took = time.perf_counter() - start
        if proc.returncode == 0:
            print(f"README.md:{line}: block {index}: ok in {took:.2f} s")
        else:
            failed += 1
            print(f"README.md:{line}: block {index}: FAILED with status {proc.returncode} "
                  f"in {took:.2f} s\n--- stdout\n{proc.stdout}--- stderr\n{proc.stderr}",
                  file=sys.stderr)
    print(f"README.md: {len(found)} blocks: {len(found) - failed - skipped} ok, {failed} failed, "
          f"{skipped} not run")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
