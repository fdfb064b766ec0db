"""The fleet's API without Ray: :class:`InProcessFleet` runs the same jobs on one warm pool
in this process, with the same results, failures and counts as :class:`pyhv.fleet.Fleet`.
It is the reference the fleet's benchmark compares with, a way to debug a job before it goes
to a cluster, and the one-line change back.

>>> import pyhv
>>> from pyhv.fleet import InProcessFleet
>>> with pyhv.Partition(memory="1M") as part:
...     part.memory.write(0x1000, bytes.fromhex("48 0f af ff 48 89 f8 f4"))  # rax = rdi * rdi
...     _ = part.create_vcpu(mode="long", entry=0x1000)
...     template = part.snapshot()
>>> def square(part, x):
...     part.vcpus[0].regs.rdi = x
...     part.run(timeout=5).check()
...     return part.vcpus[0].regs.rax
>>> with InProcessFleet(template) as fleet:
...     [r.value for r in fleet.map(square, range(5))]
[0, 1, 4, 9, 16]
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ..core.loop import validate_timeout
from ..errors import ClosedError, InvalidArgument, StateError
from ..partition import Partition
from .results import Result
from .stats import FleetStats
from .worker import Template, Worker

__all__ = ["InProcessFleet", "Job", "check_map_arguments"]

Job = Callable[[Partition, Any], Any]


def check_map_arguments(job: Any, inputs: Any, timeout: Any) -> float | None:
    """Refuse what ``map`` cannot run (before anything runs); the timeout as a float."""
    if not callable(job):
        raise InvalidArgument(f"job must be a function job(partition, item), not {job!r}")
    if isinstance(inputs, (str, bytes)) or not isinstance(inputs, Iterable):
        raise InvalidArgument(f"inputs must be an iterable of inputs, not {type(inputs).__name__}")
    return validate_timeout(timeout)


class InProcessFleet:
    """:class:`pyhv.fleet.Fleet`'s API on one worker in this process (no Ray needed).

    ``template``, ``setup`` and ``device`` are as for :class:`~pyhv.fleet.Fleet`; ``map``
    runs the jobs one after the other, so results always come in input order.
    """

    def __init__(self, template: Template, *, setup: Callable[[Partition], None] | None = None,
                 device: str | None = None) -> None:
        self._worker: Worker | None = Worker(template, setup, device=device)
        self.stats = FleetStats()
        self._mapping = False

    def map(self, job: Job, inputs: Iterable[Any], *, ordered: bool = True,
            timeout: float | None = None, batch_size: int | None = None,
            max_pending: int | None = None) -> Iterator[Result]:
        """``job(partition, item)`` for each input, as :class:`~pyhv.fleet.Result` objects,
        each on a partition in the template's state.  ``timeout`` (seconds) is per job.
        ``ordered``, ``batch_size`` and ``max_pending`` are :meth:`Fleet.map`'s: here the
        jobs run one at a time, as they are read, so results are always in order."""
        seconds = check_map_arguments(job, inputs, timeout)
        for name, value in (("batch_size", batch_size), ("max_pending", max_pending)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 1):
                raise InvalidArgument(f"{name} must be an int >= 1, not {value!r}")
        if self._worker is None:
            raise ClosedError("the fleet is closed")
        if self._mapping:
            raise StateError("the fleet is already running a map: finish it first")
        return self._map(job, inputs, seconds)

    def _map(self, job: Job, inputs: Iterable[Any], timeout: float | None) -> Iterator[Result]:
        self._mapping = True
        self.stats.start_clock()
        try:
            for index, item in enumerate(inputs):
                worker = self._worker
                if worker is None:
                    raise ClosedError("the fleet was closed during a map")
                _, failure, value, took = worker.run_one(job, index, item, timeout)
                self.stats.count(0, None if failure is None else failure.kind, took)
                self.stats.worker(0).busy_seconds += took
                yield Result(index, item, value, failure, 1, 0, took)
        finally:
            self.stats.stop_clock()
            self._mapping = False

    @property
    def workers(self) -> list[dict[str, Any]]:
        """As :attr:`Fleet.workers`: the one worker, this process."""
        return [{"worker": 0, "node": socket.gethostname(), "pid": os.getpid(),
                 "alive": self._worker is not None}]

    def close(self) -> None:
        if self._worker is not None:
            self._worker.close()
            self._worker = None

    def __enter__(self) -> InProcessFleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
