"""The fleet's plain parts, no KVM or Ray needed: failures that pickle as data, the mapping
from what a job raised to a failure, and the counts (percentiles in bounded memory)."""

from __future__ import annotations

import pickle
import random

import pytest

from pyhv import exits
from pyhv.errors import PoisonedError, Timeout, UnhandledExit
from pyhv.fleet import (
    FleetStats,
    GuestFault,
    GuestPoisoned,
    JobError,
    JobFailure,
    JobTimeout,
    LatencyHistogram,
    Result,
    WorkerLost,
)
from pyhv.fleet.results import FAILURE_KINDS, classify
from pyhv.x86.registers import Regs


class FakeVcpu:         # what pyhv.Timeout reads of a vCPU: its id
    id = 0


@pytest.mark.parametrize("kind", FAILURE_KINDS)
def test_failures_travel_as_data(kind):
    failure = kind("what happened", "the traceback")
    back = pickle.loads(pickle.dumps(failure))
    assert type(back) is kind and back == failure and str(back) == "what happened"
    assert back.detail == "the traceback" and back.kind == kind.kind
    assert {k.kind for k in FAILURE_KINDS} == {"timeout", "guest_fault", "poisoned", "error",
                                               "worker_lost"}


def test_what_a_job_raised_becomes_a_typed_failure():
    def raised(exc: BaseException) -> BaseException:
        try:
            raise exc
        except BaseException as caught:
            return caught

    timeout = raised(Timeout(FakeVcpu(), Regs(), 0.5))
    assert type(classify(timeout)) is JobTimeout
    assert type(classify(UnhandledExit(exits.Shutdown()))) is GuestFault
    assert type(classify(PoisonedError("x", exits.InternalError(1)))) is GuestFault
    assert type(classify(PoisonedError("an exit nobody handled", exits.IoOut(1, 1, b"x")))) \
        is GuestPoisoned
    unhandled = UnhandledExit(exits.Canceled())
    assert type(classify(unhandled)) is JobError                     # not poisoned: an error
    assert type(classify(unhandled, poisoned=True)) is GuestPoisoned
    error = classify(raised(KeyError("k")))
    assert type(error) is JobError and error.message == "KeyError: 'k'"
    assert "raise exc" in error.detail                                # the traceback's text
    lost = WorkerLost("gone")
    assert classify(lost) is lost


def test_a_result_gives_its_value_or_raises_its_failure():
    assert Result(0, "in", value=3).get() == 3
    with pytest.raises(JobTimeout, match="late"):
        Result(1, "in", failure=JobTimeout("late")).get()
    assert isinstance(JobTimeout("x"), TimeoutError) and isinstance(JobError("x"), JobFailure)


def test_percentiles_within_one_percent_in_fixed_memory():
    rng = random.Random(7)
    values = [rng.lognormvariate(-7, 1.5) for _ in range(100_000)]
    h = LatencyHistogram()
    buckets = len(h.counts)
    for v in values:
        h.add(v)
    values.sort()
    for p in (1, 50, 90, 99, 99.9):
        exact = values[int(len(values) * p / 100) - 1]
        assert abs(h.percentile(p) - exact) / exact < 0.01, p
    assert len(h.counts) == buckets and h.count == 100_000
    assert h.largest == values[-1] and h.percentile(100) <= h.largest
    assert LatencyHistogram().percentile(50) == 0.0


def test_stats_count_and_summarise():
    stats = FleetStats()
    for _ in range(3):
        stats.count(0, None, 0.001)
    stats.count(1, "guest_fault", 0.002)
    stats.count(None, "worker_lost", 0.0)       # no worker finished it: no job time
    assert (stats.done, stats.failed, stats.results) == (3, 2, 5)
    assert stats.failures == {"guest_fault": 1, "worker_lost": 1}
    assert stats.latency.count == 4
    assert (stats.workers[0].jobs, stats.workers[1].failed) == (3, 1)
    text = stats.summary()
    assert text.startswith("5 jobs: 3 done, 2 failed (guest_fault 1, worker_lost 1), 0 retried")
    assert "worker 1: 1 jobs (1 failed)" in text
