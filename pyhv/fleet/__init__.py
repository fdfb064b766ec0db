"""Fleets of guests: very many small guest jobs over warm pools, in this process or on Ray.

``pip install 'pyhv[fleet]'`` brings Ray; this package imports it only when a
:class:`Fleet` starts, so ``import pyhv.fleet`` works without it.

>>> from pyhv.fleet import Fleet, InProcessFleet, Result, JobFailure
>>> [kind.kind for kind in JobFailure.__subclasses__()]
['timeout', 'guest_fault', 'poisoned', 'error', 'worker_lost']

* :class:`Fleet`: N Ray actors, each with a warm :class:`pyhv.PartitionPool` restored from one
  template (a snapshot shipped once through Ray's object store); ``map`` streams results with
  bounded memory, in order or as they finish, with a per-job timeout; a dead worker's inputs
  run again elsewhere, each input yields exactly one :class:`Result`.
* :class:`InProcessFleet`: the same API on one pool in this process, without Ray.
* ``pyhv fleet run IMAGE --inputs DIR`` (:mod:`pyhv.fleet.command`): an image once per input
  file, results as JSON lines.

See docs/fleet.md.
"""

from __future__ import annotations

from .fleet import Fleet, FleetError, FleetUnavailable
from .local import InProcessFleet
from .results import (
    GuestFault,
    GuestPoisoned,
    JobError,
    JobFailure,
    JobTimeout,
    Result,
    WorkerLost,
)
from .stats import FleetStats, LatencyHistogram, WorkerStats
from .worker import WorkerRefused

__all__ = [
    "Fleet",
    "FleetError",
    "FleetStats",
    "FleetUnavailable",
    "GuestFault",
    "GuestPoisoned",
    "InProcessFleet",
    "JobError",
    "JobFailure",
    "JobTimeout",
    "LatencyHistogram",
    "Result",
    "WorkerLost",
    "WorkerRefused",
    "WorkerStats",
]
