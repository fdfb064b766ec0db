"""Buses: the port-IO, MMIO and MSR address spaces, each mapping non-overlapping ranges to
handlers with one signature for all three (as in kvmtool)::

    def read(address: int, size: int) -> int          # or bytes of exactly `size`
    def write(address: int, size: int, value: int) -> None

``address`` is the port, the absolute guest-physical address, or the MSR index (``size`` is
8 for MSRs).  String port IO (``rep outsb``/``rep insb``) calls the handler once per element.

>>> from pyhv.core.buses import AddressSpace, Space
>>> ports = AddressSpace(Space.IO, 0x10000, cached=True)
>>> h = ports.add(0x3F8, 8, read=lambda a, s: 0x60, write=None)
>>> ports.find(0x3FD) is h, ports.find(0x3F0)
(True, None)
>>> ports.add(0x3FC, 2, read=None, write=print)
Traceback (most recent call last):
pyhv.errors.OverlapError: io range [0x3fc, 0x3fe) overlaps <pyhv.Handler io [0x3f8, 0x400)>
"""

from __future__ import annotations

import bisect
import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidArgument, OverlapError
from ..exits import Exit

ReadHandler = Callable[[int, int], int | bytes]
WriteHandler = Callable[[int, int, int], None]
OutputSink = Callable[[bytes], Any]
SyscallHandler = Callable[[int, tuple[int, ...]], int | None]


class Space(str, enum.Enum):
    """Which bus a handler serves."""

    IO = "io"
    MMIO = "mmio"
    MSR = "msr"

    def __str__(self) -> str:
        return self.value


class EndRun(Exception):  # noqa: N818 - a signal to the run loop, not an error
    """Raise from a handler to end the current run cleanly with ``exit`` as its final exit
    (a device that resets the machine raises ``EndRun(exits.Reset(...))``)."""

    def __init__(self, exit: Exit) -> None:
        super().__init__(exit)
        self.exit = exit


class RefuseAccess(Exception):  # noqa: N818 - a signal to the run loop, not an error
    """Raise from an MSR handler to refuse the guest's RDMSR/WRMSR: the guest gets #GP, as
    for an MSR nobody handles (an MSR whose validity depends on the value written)."""


@dataclass(frozen=True, eq=False, slots=True)
class Handler:
    """A registered handler for ``[start, end)`` of a port, MMIO or MSR address space."""

    space: Space
    start: int
    end: int
    read: ReadHandler | None
    write: WriteHandler | None

    def __repr__(self) -> str:
        return f"<pyhv.Handler {self.space} [{self.start:#x}, {self.end:#x})>"


class AddressSpace:
    """Non-overlapping ranges of one address space (ports or GPAs) mapped to handlers."""

    def __init__(self, space: Space, limit: int, cached: bool) -> None:
        self.space = space
        self.limit = limit
        self._starts: list[int] = []
        self._handlers: list[Handler] = []
        # ports: 64K possible keys, so a per-port cache is bounded; MMIO is searched each time
        self._cache: dict[int, Handler | None] | None = {} if cached else None
        self.fallback: Handler | None = None    # takes what no range claims, if set

    def add(self, start: int, size: int, read: ReadHandler | None,
            write: WriteHandler | None) -> Handler:
        for name, value in (("start", start), ("size", size)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidArgument(f"{self.space} handler {name} must be an int, not "
                                      f"{value!r}")
        if size <= 0 or start < 0 or start + size > self.limit:
            raise InvalidArgument(f"{self.space} handler range [{start:#x}, {start + size:#x}) "
                                  f"is empty or outside 0..{self.limit:#x}")
        if read is None and write is None:
            raise InvalidArgument("give a read handler, a write handler or both")
        for fn in (read, write):
            if fn is not None and not callable(fn):
                raise InvalidArgument(f"handler {fn!r} is not callable")
        i = bisect.bisect(self._starts, start)
        for neighbour in self._handlers[max(i - 1, 0):i + 1]:
            if neighbour.start < start + size and start < neighbour.end:
                raise OverlapError(f"{self.space} range [{start:#x}, {start + size:#x}) "
                                   f"overlaps {neighbour!r}")
        handler = Handler(self.space, start, start + size, read, write)
        self._starts.insert(i, start)
        self._handlers.insert(i, handler)
        if self._cache is not None:
            self._cache.clear()
        return handler

    def claimed(self, address: int) -> Handler | None:
        """The registered range holding ``address`` (never the fallback)."""
        i = bisect.bisect(self._starts, address) - 1
        return self._handlers[i] if i >= 0 and address < self._handlers[i].end else None

    def set_fallback(self, read: ReadHandler | None, write: WriteHandler | None) -> None:
        self.fallback = None if read is None and write is None else Handler(
            self.space, 0, self.limit, read, write)
        if self._cache is not None:
            self._cache.clear()

    def remove(self, handler: Handler) -> None:
        if handler not in self._handlers:
            raise InvalidArgument(f"{handler!r} is not registered in this {self.space} space")
        i = self._handlers.index(handler)
        del self._handlers[i]
        del self._starts[i]
        if self._cache is not None:
            self._cache.clear()

    def find(self, address: int) -> Handler | None:
        cache = self._cache
        if cache is not None:
            try:
                return cache[address]
            except KeyError:
                pass
        i = bisect.bisect(self._starts, address) - 1
        found = self._handlers[i] if i >= 0 and address < self._handlers[i].end else None
        if found is None:
            found = self.fallback
        if cache is not None:
            cache[address] = found
        return found

    @property
    def handlers(self) -> tuple[Handler, ...]:
        return tuple(self._handlers)

    @property
    def port_cache(self) -> dict[int, Handler | None]:
        """The per-address cache of :meth:`find` (filled as it goes), for the run loop's
        hot path; empty and unused for uncached spaces."""
        return self._cache if self._cache is not None else {}

    def __contains__(self, handler: object) -> bool:
        return handler in self._handlers


def sink_writer(sink: Any) -> OutputSink:
    """The callable that takes a sink's bytes: ``sink`` itself, or its ``write`` method (a
    binary stream); anything else is refused now rather than in the middle of a run."""
    write = sink.write if hasattr(sink, "write") else sink
    if not callable(write):
        raise InvalidArgument(f"sink {sink!r} is neither callable nor a stream")
    writer: OutputSink = write
    return writer


