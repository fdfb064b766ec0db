"""A fleet's counts: jobs done, failed (by kind) and retried, worker restarts, per-worker
throughput and job-time percentiles, in bounded memory however many jobs ran.

>>> from pyhv.fleet.stats import LatencyHistogram
>>> h = LatencyHistogram()
>>> for ms in range(1, 101):
...     h.add(ms / 1000)
>>> h.count, round(h.percentile(50) * 1000), round(h.percentile(99) * 1000)
(100, 50, 99)
"""

from __future__ import annotations

import collections
import math
import time
from dataclasses import dataclass, field

__all__ = ["FleetStats", "LatencyHistogram", "WorkerStats"]


class LatencyHistogram:
    """Durations in logarithmic buckets, 64 per factor of 2 (about 1% apart) from 100 ns to
    about 3 hours: percentiles within 1%, memory that does not grow with the count."""

    PER_OCTAVE = 64
    SMALLEST = 1e-7
    BUCKETS = PER_OCTAVE * 37

    def __init__(self) -> None:
        self.counts = [0] * self.BUCKETS
        self.count = 0
        self.total = 0.0
        self.largest = 0.0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.total += seconds
        self.largest = max(self.largest, seconds)
        if seconds <= self.SMALLEST:
            bucket = 0
        else:
            bucket = min(int(math.log2(seconds / self.SMALLEST) * self.PER_OCTAVE) + 1,
                         self.BUCKETS - 1)
        self.counts[bucket] += 1

    def percentile(self, p: float) -> float:
        """The duration below which ``p`` percent of those added fall (0.0 when empty)."""
        if not self.count:
            return 0.0
        rank = max(1, math.ceil(self.count * p / 100))
        seen = 0
        for bucket, n in enumerate(self.counts):
            seen += n
            if seen >= rank:
                if bucket == 0:
                    return self.SMALLEST
                # the bucket's middle, never above the largest seen
                upper = self.SMALLEST * 2 ** (bucket / self.PER_OCTAVE)
                lower = self.SMALLEST * 2 ** ((bucket - 1) / self.PER_OCTAVE)
                return min((upper + lower) / 2, self.largest)
        return self.largest

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0


@dataclass
class WorkerStats:
    """One worker's share: jobs run, the seconds spent inside jobs, where it runs."""

    worker: int
    node: str = ""
    pid: int = 0
    jobs: int = 0
    failed: int = 0
    busy_seconds: float = 0.0
    restarts: int = 0

    @property
    def jobs_per_busy_second(self) -> float:
        return self.jobs / self.busy_seconds if self.busy_seconds else 0.0


@dataclass
class FleetStats:
    """Counts over a fleet's life (every :meth:`map` adds to them).

    ``done`` counts results with a value, ``failed`` those with a failure (by kind in
    ``failures``), ``retried`` the job runs started again because a worker died, and
    ``worker_restarts`` the workers replaced.  ``latency`` holds the jobs' times as measured
    on the workers; ``elapsed`` the wall time spent inside ``map``.
    """

    workers: dict[int, WorkerStats] = field(default_factory=dict)
    done: int = 0
    failed: int = 0
    retried: int = 0
    worker_restarts: int = 0
    failures: collections.Counter[str] = field(default_factory=collections.Counter)
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    elapsed: float = 0.0
    _since: float | None = field(default=None, repr=False)

    @property
    def results(self) -> int:
        return self.done + self.failed

    @property
    def jobs_per_second(self) -> float:
        return self.results / self.elapsed if self.elapsed else 0.0

    def worker(self, worker: int) -> WorkerStats:
        if worker not in self.workers:
            self.workers[worker] = WorkerStats(worker)
        return self.workers[worker]

    def count(self, worker: int | None, kind: str | None, seconds: float) -> None:
        """Count one result (``kind`` None for a value)."""
        if kind is None:
            self.done += 1
        else:
            self.failed += 1
            self.failures[kind] += 1
        if worker is not None:
            w = self.worker(worker)
            w.jobs += 1
            w.failed += kind is not None
            self.latency.add(seconds)

    def start_clock(self) -> None:
        self._since = time.perf_counter()

    def stop_clock(self) -> None:
        if self._since is not None:
            self.elapsed += time.perf_counter() - self._since
            self._since = None

    def summary(self) -> str:
        """A few lines for people (``pyhv fleet run`` prints them at the end).

        >>> stats = FleetStats()
        >>> stats.count(0, None, 0.002); stats.count(0, "timeout", 0.5)
        >>> print(stats.summary().splitlines()[0])
        2 jobs: 1 done, 1 failed (timeout 1), 0 retried, 0 worker restarts
        """
        kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(self.failures.items()))
        lines = [f"{self.results} jobs: {self.done} done, {self.failed} failed"
                 + (f" ({kinds})" if kinds else "")
                 + f", {self.retried} retried, {self.worker_restarts} worker restarts"]
        if self.elapsed:
            lines.append(f"{self.jobs_per_second:.1f} jobs/s over {self.elapsed:.2f} s")
        h = self.latency
        if h.count:
            lines.append("job time: " + ", ".join(
                f"p{p} {_ms(h.percentile(p))}" for p in (50, 90, 99)) + f", max {_ms(h.largest)}")
        for w in sorted(self.workers.values(), key=lambda w: w.worker):
            where = f" on {w.node} (pid {w.pid})" if w.node else ""
            rate = f", {w.jobs / self.elapsed:.1f} jobs/s" if self.elapsed else ""
            lines.append(f"worker {w.worker}{where}: {w.jobs} jobs ({w.failed} failed){rate}, "
                         f"{w.busy_seconds:.2f} s busy, {w.restarts} restarts")
        return "\n".join(lines)


def _ms(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} us"
    return f"{seconds * 1e3:.3g} ms" if seconds < 1 else f"{seconds:.3g} s"
