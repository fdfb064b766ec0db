"""Progress of long commands (``pyhv stress ...``): a tqdm bar on a terminal, plain lines
every few seconds otherwise (logs, CI).

>>> import io
>>> from pyhv.tools.progress import Progress
>>> out = io.StringIO()
>>> with Progress(3, "fuzz", stream=out, every=0.0) as step:
...     for _ in range(3):
...         step()
>>> out.getvalue().splitlines()[-1].startswith("fuzz: 3/3")
True
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


class Progress:
    """``with Progress(total, label) as step: ... step()`` once per item done."""

    def __init__(self, total: int, label: str, *, stream: TextIO | None = None,
                 every: float = 5.0) -> None:
        self.total, self.label = total, label
        self.stream = stream if stream is not None else sys.stderr
        self.every = every
        self.done = 0
        self._bar: Any = None
        self._started = self._last = 0.0

    def __enter__(self) -> Progress:
        self._started = self._last = time.monotonic()
        if self.stream.isatty():
            try:
                from tqdm import tqdm
            except ImportError:
                pass
            else:
                self._bar = tqdm(total=self.total, desc=self.label, file=self.stream,
                                 unit="case", leave=False)
        return self

    def __call__(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        if now - self._last >= self.every or self.done == self.total:
            self._last = now
            rate = self.done / max(now - self._started, 1e-9)
            print(f"{self.label}: {self.done}/{self.total} ({rate:.0f}/s)", file=self.stream,
                  flush=True)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.close()
