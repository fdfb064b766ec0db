"""What a guest run reports: each vCPU's syncs, prints and done, in order.

>>> from pyhv.testing import CpuLog, Done, GuestResult, Print, Sync
>>> log = CpuLog(0, (Sync(0, 41, "test.py", 3), Print(0, "hi\\n"), Done(0, None, 0)))
>>> result = GuestResult((log,), log.events, elapsed=0.001)
>>> result.syncs, result.output, result.done, result[0].prints
((41,), 'hi\\n', True, ('hi\\n',))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import InvalidArgument, StateError

__all__ = ["CpuLog", "Done", "Event", "GuestResult", "Print", "Sync", "SyncAnswer"]

_U64 = 1 << 64


@dataclass(eq=False)
class Sync:
    """A ``GUEST_SYNC(value)``: the guest waits for the host's answer, which its
    ``GUEST_SYNC`` returns (0 unless :meth:`reply` says otherwise).  ``resumed`` turns True
    once the guest has its answer."""

    cpu: int
    value: int
    file: str | None
    line: int
    answer: int = 0
    resumed: bool = field(default=False, repr=False)

    def reply(self, value: int) -> None:
        """Make the guest's ``GUEST_SYNC`` return ``value`` (an integer that fits 64 bits;
        negative ones wrap, as C's conversion to ``uint64_t`` does)."""
        if isinstance(value, bool) or not isinstance(value, int) or not -(1 << 63) <= value \
                < _U64:
            raise InvalidArgument(f"a sync reply must be an int that fits 64 bits, not "
                                  f"{value!r}")
        if self.resumed:
            raise StateError(f"{self!r} was already answered: the guest went on")
        self.answer = value % _U64

    def __repr__(self) -> str:
        where = f" at {self.file}:{self.line}" if self.file else ""
        return f"Sync(cpu={self.cpu}, value={self.value:#x}{where})"


@dataclass(frozen=True)
class Print:
    """One ``GUEST_PRINTF`` (its whole text, however long)."""

    cpu: int
    text: str


@dataclass(frozen=True)
class Done:
    """A vCPU reached ``GUEST_DONE`` (``file`` None: it returned from ``guest_main``)."""

    cpu: int
    file: str | None
    line: int


Event = Sync | Print | Done
SyncAnswer = Callable[[Sync], "int | None"] | None


@dataclass(frozen=True)
class CpuLog:
    """What one vCPU reported, in its order."""

    cpu: int
    events: tuple[Event, ...]

    @property
    def syncs(self) -> tuple[int, ...]:
        return tuple(e.value for e in self.events if isinstance(e, Sync))

    @property
    def prints(self) -> tuple[str, ...]:
        return tuple(e.text for e in self.events if isinstance(e, Print))

    @property
    def output(self) -> str:
        return "".join(self.prints)

    @property
    def done(self) -> bool:
        return any(isinstance(e, Done) for e in self.events)


@dataclass(frozen=True)
class GuestResult:
    """How a guest run went: every vCPU's log (``cpus[i]``), and all events in the order the
    host saw them.  ``syncs`` and ``output`` are over all vCPUs in that order."""

    cpus: tuple[CpuLog, ...]
    events: tuple[Event, ...]
    elapsed: float

    @property
    def syncs(self) -> tuple[int, ...]:
        return tuple(e.value for e in self.events if isinstance(e, Sync))

    @property
    def output(self) -> str:
        return "".join(e.text for e in self.events if isinstance(e, Print))

    @property
    def done(self) -> bool:
        """Every vCPU reached ``GUEST_DONE``."""
        return all(c.done for c in self.cpus)

    def __getitem__(self, cpu: int) -> CpuLog:
        return self.cpus[cpu]
