"""pyhv.fleet.Fleet on a real local Ray with real guests: every result right, ordered and not;
failures typed without losing a worker; a worker killed with SIGKILL mid-run loses nothing;
back-pressure over 100,000 inputs; bad arguments refused."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import pyhv
from pyhv import ClosedError
from pyhv.fleet import (
    Fleet,
    GuestFault,
    GuestPoisoned,
    JobError,
    JobTimeout,
    WorkerLost,
    WorkerRefused,
)

from . import jobs

pytestmark = [pytest.mark.fleet, pytest.mark.kvm]
pytest.importorskip("ray", reason="the fleet tests need Ray: pip install -e '.[fleet]'")

# the session's Ray has 2 CPUs: half a CPU per worker lets the module's fleet (2 workers)
# and one more 2-worker fleet live at once
CPUS = 0.5


@pytest.fixture(scope="module")
def fleet(template):
    with Fleet(template, workers=2, setup=jobs.add_handlers, cpus=CPUS) as f:
        yield f


def test_every_result_is_right_and_comes_once_unordered(fleet):
    inputs = [i % 97 for i in range(300)]
    results = list(fleet.map(jobs.total, inputs))
    assert sorted(r.index for r in results) == list(range(300))
    for r in results:
        assert r.ok, r.failure
        assert r.input == inputs[r.index]
        assert r.value == jobs.expected(r.input)
        assert r.attempts == 1 and r.worker in (0, 1) and r.seconds > 0
    # both workers took part
    assert {r.worker for r in results} == {0, 1}


def test_ordered_results_come_in_input_order(fleet):
    inputs = [(i * 37) % 200 for i in range(300)]
    results = list(fleet.map(jobs.total, inputs, ordered=True))
    assert [r.index for r in results] == list(range(300))
    assert [r.value for r in results] == [jobs.expected(n) for n in inputs]


def test_each_failure_is_typed_and_the_workers_go_on(fleet):
    ops = [(jobs.SUM, 10), (jobs.FAULT, 0), (jobs.SPIN, 0), (jobs.PORT, jobs.UNLUCKY),
           (jobs.UNHANDLED, 0), (jobs.PORT, 5), (jobs.SUM, 20)] * 3
    restarts = fleet.stats.worker_restarts
    results = list(fleet.map(jobs.run_op, ops, ordered=True, timeout=0.5))
    kinds = [type(r.failure) if r.failure else r.value for r in results]
    assert kinds == [55, GuestFault, JobTimeout, JobError, GuestPoisoned, 5, 210] * 3
    fault, spin, handler, unhandled = (results[i].failure for i in (1, 2, 3, 4))
    assert "Shutdown" in fault.message
    assert "0.5 s timeout" in spin.message
    assert "unlucky 13" in handler.message and "on_write" in handler.detail   # its traceback
    assert "IoOut" in unhandled.message
    assert fleet.stats.worker_restarts == restarts       # no worker was lost to a bad guest


def test_a_job_that_returns_keeps_its_value_beside_the_poisoning(fleet):
    ops = [(jobs.FAULT, 0), (jobs.UNHANDLED, 0), (jobs.SUM, 3)]
    results = list(fleet.map(jobs.run_unchecked, ops, ordered=True))
    assert type(results[0].failure) is GuestFault and "Shutdown" in results[0].failure.detail
    assert type(results[1].failure) is GuestPoisoned and "IoOut" in results[1].failure.message
    assert [r.value for r in results] == ["Shutdown", "IoOut", "Halt"]
    assert [r.ok for r in results] == [False, False, True]


def test_a_worker_killed_mid_run_loses_nothing(fleet):
    before = dict(retried=fleet.stats.retried, restarts=fleet.stats.worker_restarts)
    victim = fleet.workers[0]["pid"]
    inputs = [200 + i % 300 for i in range(400)]
    results = []
    for result in fleet.map(jobs.total, inputs, batch_size=4):
        results.append(result)
        if len(results) == 40:
            os.kill(victim, signal.SIGKILL)
    counts = collections.Counter(r.index for r in results)
    assert sorted(counts) == list(range(400)) and set(counts.values()) == {1}
    assert all(r.ok and r.value == jobs.expected(r.input) for r in results)
    assert fleet.stats.retried > before["retried"]
    assert fleet.stats.worker_restarts == before["restarts"] + 1
    assert any(r.attempts == 2 for r in results)
    deadline = time.monotonic() + 60          # its replacement starts in the background
    while not fleet.workers[0]["alive"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fleet.workers[0]["alive"] and fleet.workers[0]["pid"] not in (victim, 0)


def test_an_input_that_kills_every_worker_fails_alone(template):
    with Fleet(template, workers=2, max_retries=1, cpus=CPUS) as fleet:
        results = list(fleet.map(jobs.total_or_die, range(20), ordered=True))
        assert [r.index for r in results if not r.ok] == [7], [r for r in results if not r.ok]
        assert [r.value for r in results if r.index != 7] == \
            [jobs.expected(n) for n in range(20) if n != 7]
        lost = results[7]
        assert type(lost.failure) is WorkerLost and lost.attempts == 2
        assert fleet.stats.failures == {"worker_lost": 1}
        assert fleet.stats.worker_restarts == 2       # the two attempts' workers
        # the fleet still works afterwards
        assert [r.value for r in fleet.map(jobs.total, [4], ordered=True)] == [10]


def test_a_job_that_ignores_its_timeout_is_ended(template):
    with Fleet(template, workers=2, hang_grace=1.0, cpus=CPUS) as fleet:
        started = time.monotonic()
        results = list(fleet.map(jobs.python_forever, range(6), ordered=True, timeout=0.2))
        assert time.monotonic() - started < 60
        assert [r.failure and type(r.failure) for r in results] == \
            [None, None, None, JobTimeout, None, None]
        assert "ignored its 0.2 s timeout" in results[3].failure.message
        assert [r.value for r in results if r.ok] == [jobs.expected(n) for n in (0, 1, 2, 4, 5)]


def test_back_pressure_holds_over_100000_inputs(fleet):
    taken = yielded = 0
    ahead = 0

    def inputs():
        nonlocal taken
        for _ in range(100_000):
            taken += 1
            yield 1

    rss = []
    for result in fleet.map(jobs.total, inputs(), max_pending=2000):
        assert result.value == 1
        yielded += 1
        ahead = max(ahead, taken - yielded)
        if yielded in (20_000, 100_000):
            with open("/proc/self/statm") as f:
                rss.append(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE"))
    assert yielded == 100_000
    assert ahead <= 2000                   # never more inputs out than allowed
    assert rss[1] - rss[0] < 32 << 20      # the driver's memory does not grow with the count


def test_the_template_can_be_built_on_the_workers_or_read_from_a_file(template, tmp_path):
    path = tmp_path / "template.pyhvsnap"
    template.save(path)
    for source in (jobs.build_template, str(path)):
        with Fleet(source, workers=1, cpus=CPUS) as fleet:
            assert [r.value for r in fleet.map(jobs.total, [1, 2, 3], ordered=True)] == [1, 3, 6]


def test_stats_count_done_failed_and_per_worker(template):
    with Fleet(template, workers=2, cpus=CPUS) as fleet:
        list(fleet.map(jobs.run_op, [(jobs.SUM, 5)] * 50 + [(jobs.FAULT, 0)] * 5))
        stats = fleet.stats
        assert (stats.done, stats.failed, stats.failures) == (50, 5, {"guest_fault": 5})
        assert sum(w.jobs for w in stats.workers.values()) == 55
        assert all(w.pid and w.node for w in stats.workers.values())
        assert 0 < stats.latency.percentile(50) <= stats.latency.percentile(99) \
            <= stats.latency.largest
        assert stats.jobs_per_second > 0
        assert "55 jobs: 50 done, 5 failed (guest_fault 5)" in stats.summary()


def test_an_unpicklable_value_fails_only_its_input(fleet):
    results = list(fleet.map(jobs.unpicklable, range(5), ordered=True))
    assert [r.ok for r in results] == [True, True, False, True, True]
    assert type(results[2].failure) is JobError and "pickle" in results[2].failure.message


def free_cpus(ray) -> float:
    return ray.available_resources().get("CPU", 0.0)


def test_a_host_without_kvm_is_refused_with_the_doctors_words(ray_session, template):
    total = ray_session.cluster_resources()["CPU"]
    with pytest.raises(WorkerRefused, match="pyhv doctor: KVM is not usable: open "
                       "/no/such/kvm: No such file"):
        Fleet(template, workers=2, device="/no/such/kvm", cpus=CPUS)
    deadline = time.monotonic() + 30        # the refused workers are gone: their CPUs free
    while free_cpus(ray_session) < total - 2 * CPUS and time.monotonic() < deadline:
        time.sleep(0.1)
    assert free_cpus(ray_session) >= total - 2 * CPUS   # what the module's fleet holds


def test_bad_arguments_are_refused_before_anything_runs(ray_session, template, fleet):
    bad = [dict(workers=0), dict(workers=1.5), dict(cpus=0), dict(memory="lots"),
           dict(max_retries=-1), dict(resources={"kvm": "yes"}), dict(setup=3),
           dict(address=5), dict(start_timeout=0), dict(hang_grace=-1), dict(device=3)]
    for kwargs in bad:
        with pytest.raises(pyhv.InvalidArgument):
            Fleet(template, **kwargs)
    with pytest.raises(pyhv.InvalidArgument):
        Fleet(42)
    with pytest.raises(pyhv.SnapshotFormatError):
        Fleet(b"not a snapshot")
    with pytest.raises(pyhv.InvalidArgument):
        fleet.map("not a function", [1])
    with pytest.raises(pyhv.InvalidArgument):
        fleet.map(jobs.total, 5)
    with pytest.raises(pyhv.InvalidArgument):
        fleet.map(jobs.total, [1], timeout=-1)
    with pytest.raises(pyhv.InvalidArgument):
        fleet.map(jobs.total, [1], batch_size=0)
    import threading
    lock = threading.Lock()
    with pytest.raises(pyhv.InvalidArgument, match="cannot go to Ray"):
        fleet.map(lambda part, x: lock, [1])
    with pytest.raises(pyhv.InvalidArgument, match="input 1 .* cannot go to Ray workers"):
        list(fleet.map(jobs.total, [1, lock], batch_size=2))
    assert [r.value for r in fleet.map(jobs.total, [3])] == [6]      # and the fleet goes on


def test_one_map_at_a_time_and_none_after_close(template):
    with Fleet(template, workers=1, cpus=CPUS) as fleet:
        first = fleet.map(jobs.total, range(10))
        next(first)
        with pytest.raises(pyhv.StateError):
            fleet.map(jobs.total, [1])
        first.close()                        # leaving a map early frees the fleet
        assert [r.value for r in fleet.map(jobs.total, [2])] == [3]
    with pytest.raises(ClosedError):
        fleet.map(jobs.total, [1])
    with Fleet(template, workers=1, cpus=CPUS) as fleet:
        running = fleet.map(jobs.total, range(100), batch_size=1)
        next(running)
        fleet.close()
        with pytest.raises(ClosedError):
            list(running)
        assert fleet.workers[0]["alive"] is False and fleet.stats.worker_restarts == 0


def test_a_cluster_that_is_not_there_is_refused_at_once():
    """(In a process of its own: this one's Ray is up, and a fleet would use it.)"""
    code = ("import sys, time\n"
            "from pyhv.fleet import Fleet, FleetError\n"
            "from tests.fleet import jobs\n"
            "for address in ('127.0.0.1:1', 'ray://127.0.0.1:1'):   # nothing on port 1\n"
            "    started = time.monotonic()\n"
            "    try:\n"
            "        Fleet(jobs.template(), address=address)\n"
            "    except FleetError as exc:\n"
            "        print(round(time.monotonic() - started), exc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, cwd=Path(__file__).resolve().parents[2]).stdout
    lines = out.splitlines()
    assert len(lines) == 2, out
    for line, address in zip(lines, ("127.0.0.1:1", "ray://127.0.0.1:1"), strict=True):
        took, message = line.split(" ", 1)
        assert int(took) < 30
        assert message.startswith(f"cannot join the Ray cluster at {address}: nothing answers")
