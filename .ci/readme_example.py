"""Run the README's Python example (its first ```python block) exactly as written."""

import pathlib
import re
import sys

readme = pathlib.Path(__file__).resolve().parents[1] / "README.md"
match = re.search(r"```python\n(.*?)```", readme.read_text(), re.S)
if not match:
    sys.exit("README.md has no ```python example")
exec(compile(match.group(1), "README.md example", "exec"), {"__name__": "__main__"})
