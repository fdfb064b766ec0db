"""The fleet's rows for benchmarks/run.py (they need Ray: ``pip install -e '.[fleet]'``).

* ``fleet_jobs_per_s_1w`` / ``_2w``: jobs of about 1 ms (a guest loop, its length calibrated
  here so that one job takes ~1 ms in process) through a Fleet of 1 and 2 workers, beside one
  in-process PartitionPool running the same jobs one after the other.  Target for 2 workers:
  at least 1.6x the pool.
* ``fleet_bare_2proc_jobs_per_s``: the same jobs in 2 plain processes with a pool each, no
  Ray at all: the most this machine gives 2 workers (on a loaded 2-core kvm_pvm host, far
  from 2x).
* ``fleet_tiny_job_us``: a job that is one ``hlt`` away from nothing, through a 1-worker fleet
  vs the pool: the difference is the fleet's cost per job (batching, Ray, pickling).
* ``fleet_startup_s``: Fleet(snapshot, workers=2) until its workers serve, Ray already up,
  beside an InProcessFleet's start; ``ray.init`` of the local Ray is in the note.

All on a local Ray with ``num_cpus`` = the machine's CPUs; each measurement is the best of
interleaved repeats, as in run.py.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any

import pyhv
from pyhv.fleet import Fleet, InProcessFleet
from pyhv.testing import assemble

CODE = 0x1000
ONE_MS = 1e-3


def sum_guest() -> pyhv.Snapshot:
    """rax = 1 + ... + rdi, then hlt (long mode at CPL0: emulated on kvm_pvm)."""
    code = assemble("mov %rdi, %rcx\nxor %eax, %eax\ntest %rcx, %rcx\njz 2f\n"
                    "1: add %rcx, %rax\nloop 1b\n2: hlt", origin=CODE)
    with pyhv.Partition(memory="1M") as part:
        part.memory.write(CODE, code)
        part.create_vcpu(mode="long", entry=CODE)
        return part.snapshot()


def job(part: pyhv.Partition, n: int) -> int:
    cpu = part.vcpus[0]
    cpu.regs.rdi = n
    part.run(timeout=60)
    value: int = cpu.regs.rax
    return value


def pool_seconds(pool: pyhv.PartitionPool, inputs: list[int]) -> float:
    began = time.perf_counter()
    for n in inputs:
        with pool.lease() as part:
            job(part, n)
    return time.perf_counter() - began


def fleet_seconds(fleet: Fleet, inputs: list[int]) -> float:
    began = time.perf_counter()
    count = 0
    for result in fleet.map(job, inputs):
        result.get()
        count += 1
    assert count == len(inputs)
    return time.perf_counter() - began


def _bare_process(n: int, count: int, start: Any, out: Any) -> None:
    """One of the no-Ray reference processes: its own pool, the same jobs."""
    with pyhv.PartitionPool(sum_guest(), size=1) as pool:
        pool_seconds(pool, [n] * 20)
        start.wait()
        out.put(pool_seconds(pool, [n] * count))


def bare_processes_seconds(n: int, count: int, processes: int = 2) -> float:
    """Wall time for ``processes`` plain processes (no Ray), each with a pool, to run
    ``count`` jobs each: how far this machine runs guests in parallel at all."""
    import multiprocessing
    context = multiprocessing.get_context("spawn")      # not fork: this process runs Ray
    start, out = context.Barrier(processes + 1), context.Queue()
    children = [context.Process(target=_bare_process, args=(n, count, start, out))
                for _ in range(processes)]
    for child in children:
        child.start()
    try:
        start.wait(timeout=120)
        return max(out.get(timeout=600) for _ in children)
    finally:
        for child in children:
            child.join(timeout=60)


def calibrate(pool: pyhv.PartitionPool) -> int:
    """The loop count whose job takes about 1 ms here, in process."""
    n = 16
    for _ in range(40):
        took = min(pool_seconds(pool, [n] * 20) for _ in range(5)) / 20
        if abs(took - ONE_MS) < ONE_MS / 10:
            break
        n = max(1, min(n * 4, int(n * ONE_MS / took)))     # at most 4x a step
    return n


def at_least(row_class: Any) -> Any:
    """run.py's row, for a ratio that should reach its target (run.py's stay under)."""
    class AtLeastRow(row_class):  # type: ignore[misc, valid-type]
        @property
        def verdict(self) -> str:
            if self.target is None or self.ratio is None:
                return ""
            return "ok" if self.ratio >= self.target else "MISSED"
    return AtLeastRow


NAMES = (("fleet_jobs_per_s_1w", "jobs/s"), ("fleet_jobs_per_s_2w", "jobs/s"),
         ("fleet_bare_2proc_jobs_per_s", "jobs/s"), ("fleet_tiny_job_us", "us/job"),
         ("fleet_startup_s", "s"))


def skipped(row_class: Callable[..., Any]) -> list[Any]:
    note = "skipped: pip install -e '.[fleet]' (Ray)"
    return [row_class(name, None, unit, None, None, None, note) for name, unit in NAMES]


def rows(repeats: int, row_class: Callable[..., Any]) -> list[Any]:
    import ray
    from ray import cloudpickle

    # the job goes to the workers by value: they need not find this file
    cloudpickle.register_pickle_by_value(sys.modules[__name__])

    reaching = at_least(row_class)
    began = time.perf_counter()
    owns_ray = not ray.is_initialized()
    if owns_ray:
        ray.init(address="local", num_cpus=os.cpu_count() or 2, include_dashboard=False,
                 log_to_driver=False, logging_level="WARNING")
    ray_init = time.perf_counter() - began
    snap = sum_guest()
    pool = pyhv.PartitionPool(snap, size=1)
    fleets: dict[int, Fleet] = {}
    try:
        n = calibrate(pool)
        count = 200 if repeats <= 2 else 3000
        inputs = [n] * count
        tiny = [0] * (count * 5)

        starts, local_starts = [], []
        for _ in range(max(repeats // 7, 1)):
            began = time.perf_counter()
            with InProcessFleet(snap):
                local_starts.append(time.perf_counter() - began)
            began = time.perf_counter()
            with Fleet(snap, workers=2, cpus=0.5):
                starts.append(time.perf_counter() - began)
        for workers in (1, 2):
            # both fleets stay up for interleaved repeats: half a Ray CPU per worker
            fleets[workers] = Fleet(snap, workers=workers, cpus=0.5)
            fleet_seconds(fleets[workers], inputs[:50])        # warm: batch size known

        best: dict[str, float] = {}

        def keep(name: str, seconds: float) -> None:
            best[name] = min(best.get(name, seconds), seconds)

        for _ in range(max(repeats // 4, 2)):
            keep("pool", pool_seconds(pool, inputs))
            keep("1w", fleet_seconds(fleets[1], inputs))
            keep("2w", fleet_seconds(fleets[2], inputs))
            keep("pool_tiny", pool_seconds(pool, tiny))
            keep("1w_tiny", fleet_seconds(fleets[1], tiny))
            keep("2proc", bare_processes_seconds(n, count // 2))
        pool_rate = count / best["pool"]
        job_ms = best["pool"] / count * 1e3
        one = count / best["1w"]
        two = count / best["2w"]
        bare = 2 * (count // 2) / best["2proc"]
        tiny_pool = best["pool_tiny"] / len(tiny) * 1e6
        tiny_fleet = best["1w_tiny"] / len(tiny) * 1e6
        return [
            reaching("fleet_jobs_per_s_1w", one, "jobs/s", pool_rate, one / pool_rate, None,
                     f"{count} jobs of {job_ms:.2f} ms, 1 Ray worker vs one in-process pool"),
            reaching("fleet_jobs_per_s_2w", two, "jobs/s", pool_rate, two / pool_rate, 1.6,
                     f"the same through 2 workers (target: ratio >= 1.6); "
                     f"{os.cpu_count()} CPUs shared with the driver and Ray"),
            row_class("fleet_bare_2proc_jobs_per_s", bare, "jobs/s", pool_rate,
                      bare / pool_rate, None,
                      "the ceiling: 2 plain processes (no Ray), a pool each, the same jobs, "
                      "vs one pool"),
            row_class("fleet_tiny_job_us", tiny_fleet, "us/job", tiny_pool,
                      tiny_fleet / tiny_pool, None,
                      f"a job of one hlt, 1 worker vs the pool: the fleet adds "
                      f"{tiny_fleet - tiny_pool:.1f} us per job"),
            row_class("fleet_startup_s", min(starts), "s", min(local_starts),
                      min(starts) / min(local_starts), None,
                      f"Fleet(snapshot, workers=2) until it serves, Ray up, vs InProcessFleet; "
                      f"starting the local Ray took {ray_init:.1f} s"),
        ]
    finally:
        for fleet in fleets.values():
            fleet.close()
        pool.close()
        if owns_ray:
            ray.shutdown()
