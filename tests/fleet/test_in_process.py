"""InProcessFleet and the worker underneath every fleet, without Ray: real guests on the real
/dev/kvm, the same typed failures, a watchdog that stops guests past their time, nothing left
behind."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

import pyhv
from pyhv.fleet import (
    FleetUnavailable,
    GuestFault,
    GuestPoisoned,
    InProcessFleet,
    JobError,
    JobTimeout,
    WorkerRefused,
)
from pyhv.fleet.worker import Worker, snapshot_bytes, snapshot_from_bytes

from . import jobs

pytestmark = pytest.mark.kvm


@pytest.fixture(scope="module")
def template():
    return jobs.template()


def test_results_in_order_with_every_failure_typed(template):
    ops = [(jobs.SUM, 10), (jobs.FAULT, 0), (jobs.SPIN, 0), (jobs.PORT, jobs.UNLUCKY),
           (jobs.UNHANDLED, 0), (jobs.PORT, 5)]
    with InProcessFleet(template, setup=jobs.add_handlers) as fleet:
        results = list(fleet.map(jobs.run_op, ops * 2, timeout=0.3))
        assert [r.index for r in results] == list(range(12))
        assert [r.failure and type(r.failure) for r in results] == \
            [None, GuestFault, JobTimeout, JobError, GuestPoisoned, None] * 2
        assert [r.value for r in results if r.ok] == [55, 5] * 2
        assert fleet.stats.failures == {"guest_fault": 2, "timeout": 2, "error": 2,
                                        "poisoned": 2}
        assert fleet.stats.done == 4 and fleet.stats.workers[0].jobs == 12


def test_each_job_starts_from_the_template_whatever_the_last_one_did(template):
    def dirty(part, n):
        seen = part.memory.read(0x2000, 16), part.vcpus[0].regs.r15
        part.memory.write(0x2000, b"\xaa" * 16)      # then scribble on memory and registers
        part.vcpus[0].regs.r15 = n
        return seen, jobs.total(part, n)

    with InProcessFleet(template) as fleet:
        results = [r.get() for r in fleet.map(dirty, [3, 4, 5])]
    assert results == [((bytes(16), 0), 6), ((bytes(16), 0), 10), ((bytes(16), 0), 15)]


def test_a_job_that_closes_its_partition_does_not_break_the_next(template):
    def close_it(part, n):
        part.close()
        return n

    with InProcessFleet(template) as fleet:
        assert [r.get() for r in fleet.map(close_it, [1, 2])] == [1, 2]
        assert [r.get() for r in fleet.map(jobs.total, [3])] == [6]


def test_a_job_that_runs_its_guest_again_after_the_timeout_is_stopped_again(template):
    def stubborn(part, _):
        canceled = 0
        while canceled < 5:                   # ignores Canceled, runs the guest again
            if type(part.run(timeout=30).exit).__name__ == "Canceled":
                canceled += 1
        return canceled

    with InProcessFleet(template) as fleet:
        (result,) = fleet.map(lambda part, x: (part.vcpus[0].regs.update(rdi=jobs.SPIN),
                                               stubborn(part, x))[1], [0], timeout=0.2)
        assert type(result.failure) is JobTimeout and result.seconds < 10


def test_a_job_that_exits_is_an_error_not_an_exit(template):
    def leave(part, n):
        sys.exit(n)

    with InProcessFleet(template) as fleet:
        (result,) = fleet.map(leave, [3])
        assert type(result.failure) is JobError and "SystemExit: 3" in result.failure.message


def test_nothing_is_left_behind(template):
    fds = len(os.listdir("/proc/self/fd"))
    threads = threading.active_count()
    for _ in range(3):
        with InProcessFleet(template) as fleet:
            list(fleet.map(jobs.run_op, [(jobs.SPIN, 0), (jobs.SUM, 2)], timeout=0.1))
    assert len(os.listdir("/proc/self/fd")) == fds
    assert threading.active_count() == threads      # the watchdog thread ends with the fleet


def test_bad_input_is_refused(template):
    with pytest.raises(pyhv.InvalidArgument):
        InProcessFleet("not a template")
    with pytest.raises(pyhv.InvalidArgument):
        InProcessFleet(template, setup="no")
    with pytest.raises(pyhv.InvalidArgument, match="returned 42"):
        InProcessFleet(lambda: 42)
    with pytest.raises(WorkerRefused, match="pyhv doctor: KVM is not usable"):
        InProcessFleet(template, device="/no/such/kvm")
    with InProcessFleet(template) as fleet:
        with pytest.raises(pyhv.InvalidArgument):
            fleet.map(jobs.total, "12")
        with pytest.raises(pyhv.InvalidArgument):
            fleet.map(jobs.total, [1], timeout=0)
        running = fleet.map(jobs.total, [1, 2])
        next(running)
        with pytest.raises(pyhv.StateError):
            fleet.map(jobs.total, [1])
        running.close()
    with pytest.raises(pyhv.ClosedError):
        fleet.map(jobs.total, [1])


def test_a_template_travels_as_its_file_bytes(template):
    data = snapshot_bytes(template)
    assert data[:8] == b"PYHVSNAP"
    with Worker(data) as worker:
        assert worker.run_one(jobs.total, 0, 4)[2] == 10
    with pytest.raises(pyhv.SnapshotFormatError, match="checksum"):
        snapshot_from_bytes(data[:-1] + bytes([data[-1] ^ 1]))


def test_import_needs_no_ray_and_fleet_says_how_to_get_it():
    code = ("import sys; sys.modules['ray'] = None\n"     # as if Ray were not installed
            "import pyhv, pyhv.fleet\n"
            "from pyhv.fleet import Fleet, FleetUnavailable\n"
            "try:\n"
            "    Fleet(lambda: None)\n"
            "except FleetUnavailable as exc:\n"
            "    print(exc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert "pip install 'pyhv[fleet]'" in out
    assert issubclass(FleetUnavailable, ImportError)
    code = "import sys, pyhv, pyhv.fleet; print('ray' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"
