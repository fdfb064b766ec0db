"""pyhv's setup region in a partition's memory: written once, when the first vCPU that needs
it is made, and rewritten in long mode when a new slot needs page tables (the bytes come from
:mod:`pyhv.x86.setup`)."""

from __future__ import annotations

import threading

from ..x86.setup import PAGE_TABLES_OFFSET, check_region, region_contents
from .memory import GuestMemory

WRITTEN = (None, "protected", "long")


class SetupRegion:
    """The region at ``base`` and what has been written there: None, "protected" (GDT,
    IDTs, stubs, TSSs) or "long" (also the page tables)."""

    def __init__(self, base: int, memory: GuestMemory) -> None:
        self.base = base
        self._memory = memory
        self.written: str | None = None
        self._lock = threading.Lock()

    def check(self, long_mode: bool) -> None:
        """Raise unless the region fits this memory layout (nothing written)."""
        check_region(self.base, self._memory.spans(), long_mode)

    def prepare(self, long_mode: bool) -> int:
        """Write the region (once; again to add page tables); returns CR3 for long mode."""
        with self._lock:
            want_long = long_mode or self.written == "long"
            if self.written is None or (want_long and self.written != "long"):
                self._write(want_long)
        return self.base + PAGE_TABLES_OFFSET

    def refresh(self) -> None:
        """The memory layout changed: long-mode page tables must map the new slots too."""
        with self._lock:
            if self.written == "long":
                self._write(True)

    def _write(self, long_mode: bool) -> None:
        for gpa, data in region_contents(self.base, self._memory.spans(), long_mode):
            self._memory.write(gpa, data)
        self.written = "long" if long_mode else "protected"
