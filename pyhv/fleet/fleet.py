"""Fleets of guests on Ray: :class:`Fleet` keeps N workers (Ray actors), each with a warm
:class:`pyhv.PartitionPool` restored from one template, and streams jobs through them.

How it works, in short:

* The template travels once: the snapshot's file bytes go into Ray's object store
  (``ray.put``) and each worker reads them from there when it starts; the job function goes
  in once per :meth:`Fleet.map`, and each worker keeps it after its first batch.
* Inputs go out in batches sized so that a batch takes about :data:`BATCH_SECONDS` on a
  worker (Ray's cost per call, a few hundred microseconds, is then a small share even of tiny
  jobs), at most :data:`BATCHES_PER_WORKER` batches per worker at a time, and never more than
  ``max_pending`` inputs taken from the iterator and not yet yielded: a million inputs never
  sit in memory.
* Nothing is lost: when a worker dies (killed, out of memory, its node gone) its batches come
  back to pyhv's own bookkeeping, a new worker takes its place, and its inputs run again, each
  with a worker to itself (nothing queued before or after it), so that an input that kills
  workers cannot take others with it, nor be mistaken for one that does.  An input whose
  every attempt died (``max_retries`` + 1 of them) yields a :class:`WorkerLost` failure.  Every
  input yields exactly one result.
* A job that ignores its timeout (Python code that never returns) is ended the same way: its
  worker is killed and replaced once the batch is well past its time.

The full example is in docs/fleet.md (``tests/fleet/test_docs.py`` runs it);
:class:`~pyhv.fleet.InProcessFleet` has the same API without Ray, and its docstring example
shows the calls.
"""

from __future__ import annotations

import collections
import math
import os
import socket
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..core.memory import parse_size
from ..errors import ClosedError, HypervisorError, InvalidArgument, StateError
from ..partition import Partition
from ..snapshot import Snapshot
from .local import Job, check_map_arguments
from .results import JobError, JobFailure, JobTimeout, Result, WorkerLost
from .stats import FleetStats
from .worker import Outcome, Template, Worker, WorkerRefused, snapshot_bytes, snapshot_from_bytes

__all__ = ["BATCHES_PER_WORKER", "BATCH_SECONDS", "Fleet", "FleetError", "FleetUnavailable"]

BATCH_SECONDS = 0.1         # the time a batch should take on a worker
MAX_BATCH = 512             # inputs per batch at most
BATCHES_PER_WORKER = 2      # one running, one queued behind it: no gap between batches
HUNG_GRACE = 10.0           # default seconds past a batch's summed timeouts: its worker is killed


_MODULE_HINT = (" (the workers need the job's module: install it there, or give Ray a "
                "runtime_env, e.g. init_options={'runtime_env': {'py_modules': [...]}})")


class FleetError(HypervisorError):
    """The fleet itself cannot go on: workers could not start, or every worker was lost."""


class FleetUnavailable(FleetError, ImportError):
    """Ray is not installed: ``pip install 'pyhv[fleet]'``."""


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise FleetUnavailable("pyhv.fleet.Fleet needs Ray: pip install 'pyhv[fleet]' (or use "
                               "pyhv.fleet.InProcessFleet, the same API in this process)") from None
    return ray


class _RayWorker:
    """The actor Ray runs: a :class:`Worker` that reports a failure to start instead of
    raising it (so the fleet can say why, in pyhv's words, and clean up), and that returns
    each batch's outcomes pickled as one blob."""

    def __init__(self, template: Template, setup: Callable[[Partition], None] | None,
                 device: str | None) -> None:
        self.error: str | None = None
        self.refused = False
        self.worker: Worker | None = None
        self.jobs: dict[str, Job] = {}
        try:
            self.worker = Worker(template, setup, device=device)
        except WorkerRefused as exc:
            self.error, self.refused = str(exc), True
        except Exception as exc:
            self.error = (f"{socket.gethostname()}: the worker could not start: "
                          f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")

    def ready(self) -> dict[str, Any]:
        return {"node": socket.gethostname(), "pid": os.getpid(), "error": self.error,
                "refused": self.refused}

    def run(self, job_box: list[Any], items: list[tuple[int, Any]],
            timeout: float | None) -> bytes:
        import ray
        from ray import cloudpickle

        dumps: Callable[[Any], bytes] = cloudpickle.dumps     # (Ray ships no types for it)
        started = time.perf_counter()
        job_ref = job_box[0]           # boxed, so that Ray hands over the reference itself
        key = job_ref.hex()
        job = self.jobs.get(key)
        if job is None:
            try:
                job = ray.get(job_ref)
            except Exception as exc:     # its module is not on this host, most likely
                return bytes(dumps({"error": (
                    f"the job cannot be loaded on {socket.gethostname()}: "
                    f"{type(exc).__name__}: {str(exc).splitlines()[0]}")}))
            self.jobs = {key: job}     # one map at a time: the last job is the one
        assert self.worker is not None
        outcomes = self.worker.run_batch(job, items, timeout)
        busy = time.perf_counter() - started
        try:
            return bytes(dumps({"busy": busy, "outcomes": outcomes}))
        except Exception:
            return bytes(dumps({"busy": busy,
                                            "outcomes": [_picklable(o) for o in outcomes]}))

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()


def _picklable_value(value: Any) -> bool:
    from ray import cloudpickle
    dumps: Callable[[Any], bytes] = cloudpickle.dumps
    try:
        dumps(value)
    except Exception:
        return False
    return True


def _picklable(outcome: Outcome) -> Outcome:
    from ray import cloudpickle
    dumps: Callable[[Any], bytes] = cloudpickle.dumps
    index, failure, value, seconds = outcome
    try:
        dumps(value)
    except Exception as exc:
        return index, JobError(f"the job's value cannot be pickled: {type(exc).__name__}: "
                               f"{exc}"), None, seconds
    return outcome


@dataclass
class _Entry:
    index: int
    item: Any
    attempts: int = 0          # runs started


@dataclass
class _Batch:
    ref: Any
    slot: _Slot
    generation: int
    entries: list[_Entry]
    owner: int                 # the map that sent it
    alone: bool = False        # a retried input, with its worker to itself


@dataclass
class _Slot:
    """One worker's place: its actor now, how many actors it has had, its batches."""

    worker: int
    actor: Any = None
    generation: int = 0
    ready_ref: Any = None            # set while a (new) actor starts
    alive: bool = False
    node: str = ""
    pid: int = 0
    batches: collections.deque[_Batch] = field(default_factory=collections.deque)
    head_since: float = 0.0          # when the batch at the head of `batches` started


class Fleet:
    """``workers`` Ray actors, each with a warm pool restored from ``template``.

    ``template`` is a :class:`pyhv.Snapshot`, a path to a saved snapshot, or a function that
    returns the template :class:`pyhv.Partition` (or a snapshot), called once on each worker;
    ``setup(partition)`` runs on every partition a worker makes (handlers, devices).  Both
    must be picklable (module-level functions, or what cloudpickle takes).

    ``address``: None starts a local Ray (closed with the fleet), ``"auto"`` joins the
    cluster on this machine, ``"ray://host:10001"`` one elsewhere; if Ray is already
    initialised, that connection is used.  ``init_options`` go to ``ray.init``.  Each worker
    asks Ray for ``cpus`` CPUs, ``memory`` (bytes or "2G"), and ``resources`` (custom ones, e.g.
    ``{"kvm": 1}`` for nodes started with that resource).  ``device`` is the KVM device on the
    workers' hosts.  A worker whose host cannot run guests refuses at start with what ``pyhv
    doctor`` says there (:class:`~pyhv.fleet.WorkerRefused`, nothing left running).

    A dead worker's inputs run again, each up to ``max_retries`` more times; dead workers are
    replaced, ``max_restarts`` times in all (default: 4 per worker) before the fleet gives up
    on that worker's place.  With a per-job timeout, a worker whose batch is still running
    ``hang_grace`` seconds past its inputs' summed timeouts (a job stuck in Python, where
    stopping the guest does not reach) is killed and replaced; a job alone in such a batch
    fails with :class:`~pyhv.fleet.JobTimeout`.
    """

    def __init__(self, template: Template | str | os.PathLike[str], *, workers: int = 2,
                 setup: Callable[[Partition], None] | None = None, address: str | None = None,
                 cpus: float = 1, memory: int | str | None = None,
                 resources: Mapping[str, float] | None = None, device: str | None = None,
                 max_retries: int = 3, max_restarts: int | None = None,
                 start_timeout: float = 120.0, hang_grace: float = HUNG_GRACE,
                 init_options: Mapping[str, Any] | None = None) -> None:
        workers = _count("workers", workers, 1)
        self.max_retries = _count("max_retries", max_retries, 0)
        self.max_restarts = 4 * workers if max_restarts is None else _count(
            "max_restarts", max_restarts, 0)
        if isinstance(cpus, bool) or not isinstance(cpus, (int, float)) or not cpus > 0:
            raise InvalidArgument(f"cpus must be a number > 0, not {cpus!r}")
        if setup is not None and not callable(setup):
            raise InvalidArgument(f"setup must be a function of the partition, not {setup!r}")
        if device is not None and not isinstance(device, str):
            raise InvalidArgument(f"device must be a path like /dev/kvm, not {device!r}")
        if address is not None and not isinstance(address, str):
            raise InvalidArgument(f"address must be None, 'auto' or a Ray address, not "
                                  f"{address!r}")
        for name, value in (("start_timeout", start_timeout), ("hang_grace", hang_grace)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise InvalidArgument(f"{name} must be seconds > 0, not {value!r}")
        self.hang_grace = float(hang_grace)
        options: dict[str, Any] = {"num_cpus": float(cpus), "max_restarts": 0,
                                   "max_task_retries": 0, "scheduling_strategy": "SPREAD"}
        if memory is not None:
            options["memory"] = parse_size(memory)
        if resources is not None:
            if not isinstance(resources, Mapping) or not all(
                    isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
                    and v >= 0 for k, v in resources.items()):
                raise InvalidArgument(f"resources must map names to amounts >= 0, not "
                                      f"{resources!r}")
            options["resources"] = dict(resources)
        shipped = _template_to_ship(template)
        ray = _ray()
        self._ray = ray
        self._options = options
        self._device = device
        self._setup = setup
        self.stats = FleetStats()
        self._slots: list[_Slot] = []
        self._mapping = False
        self._closed = False
        self._owns_ray = False
        self._restarts = 0
        self._inflight: dict[Any, _Batch] = {}
        self._serial = 0
        if not ray.is_initialized():
            init: dict[str, Any] = {"include_dashboard": False}
            if address is None:
                init.update(address="local", num_cpus=max(os.cpu_count() or 1,
                                                          math.ceil(workers * cpus)))
            else:
                init["address"] = address
            init.update(init_options or {})
            if address is not None:
                _check_reachable(address)   # Ray itself retries a dead address for minutes
            try:
                ray.init(**init)
            except Exception as exc:        # no cluster there, a bad option, ...
                where = "a local Ray" if address is None else f"the Ray cluster at {address}"
                raise FleetError(f"cannot start or join {where}: {type(exc).__name__}: "
                                 f"{exc}") from None
            self._owns_ray = True
        try:
            self._template_ref = ray.put(shipped) if isinstance(shipped, bytes) else shipped
            self._actor_class = ray.remote(_RayWorker)
            self._slots = [_Slot(i) for i in range(workers)]
            for slot in self._slots:
                self._start(slot)
            self._wait_started(start_timeout)
        except BaseException:
            self.close()
            raise

    # -- workers ---------------------------------------------------------------------------
    def _start(self, slot: _Slot) -> None:
        """A new actor in ``slot`` (it starts in the background: see ``ready_ref``)."""
        try:
            slot.actor = self._actor_class.options(**self._options).remote(
                self._template_ref, self._setup, self._device)
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(f"the fleet's setup or template cannot go to Ray workers: "
                                  f"{exc}") from None
        slot.generation += 1
        slot.ready_ref = slot.actor.ready.remote()
        slot.alive = False
        self.stats.worker(slot.worker)

    def _started(self, slot: _Slot, report: dict[str, Any]) -> None:
        """``slot``'s actor answered ``ready``: it serves, or (error) it is refused."""
        slot.ready_ref = None
        if report["error"]:
            self._ray.kill(slot.actor, no_restart=True)
            slot.actor = None
            raise (WorkerRefused if report["refused"] else FleetError)(report["error"])
        slot.alive = True
        slot.node, slot.pid = report["node"], report["pid"]
        stats = self.stats.worker(slot.worker)
        stats.node, stats.pid = slot.node, slot.pid

    def _wait_started(self, timeout: float) -> None:
        ray = self._ray
        waiting = {slot.ready_ref: slot for slot in self._slots}
        ready, late = ray.wait(list(waiting), num_returns=len(waiting), timeout=timeout)
        errors = []
        for ref in ready:
            try:
                self._started(waiting[ref], ray.get(ref))
            except (WorkerRefused, FleetError) as exc:
                errors.append(exc)
            except ray.exceptions.RayError as exc:
                errors.append(FleetError(f"worker {waiting[ref].worker} died while starting: "
                                         f"{exc}"))
        if errors:
            kind = WorkerRefused if all(isinstance(e, WorkerRefused) for e in errors) else \
                FleetError
            raise kind("\n".join(dict.fromkeys(str(e) for e in errors)))
        if late:
            wanted = ", ".join(f"{k} {v}" for k, v in self._options.items()
                               if k in ("num_cpus", "memory", "resources"))
            raise FleetError(f"{len(late)} of {len(self._slots)} workers did not start within "
                             f"{timeout:g} s: does the cluster have room for workers asking "
                             f"{wanted} each? (ray status tells what it has)")

    def _lost(self, slot: _Slot) -> list[_Batch]:
        """``slot``'s actor is dead (or killed now): take its batches back and start another
        actor in its place, while restarts are left."""
        ray = self._ray
        if slot.actor is not None:
            try:
                ray.kill(slot.actor, no_restart=True)
            except Exception:       # already gone
                pass
        batches = list(slot.batches)
        slot.batches.clear()
        slot.actor, slot.alive, slot.ready_ref, slot.pid = None, False, None, 0
        if self._restarts < self.max_restarts and not self._closed:
            self._restarts += 1
            self.stats.worker_restarts += 1
            self.stats.worker(slot.worker).restarts += 1
            self._start(slot)
        return batches

    def _settle_start(self, slot: _Slot) -> None:
        """``slot``'s new actor answered (its ``ready_ref`` is done)."""
        try:
            self._started(slot, self._ray.get(slot.ready_ref))
        except (WorkerRefused, FleetError, self._ray.exceptions.RayError):
            self._lost(slot)       # try another, while restarts are left

    @property
    def workers(self) -> list[dict[str, Any]]:
        """Where each worker runs now: ``worker`` (its number), ``node``, ``pid``, ``alive``
        (False while a replacement starts)."""
        starting = {s.ready_ref: s for s in self._slots if s.ready_ref is not None}
        if starting and not self._closed:
            done, _ = self._ray.wait(list(starting), num_returns=len(starting), timeout=0)
            for ref in done:
                self._settle_start(starting[ref])
        return [{"worker": s.worker, "node": s.node, "pid": s.pid, "alive": s.alive}
                for s in self._slots]

    # -- map -------------------------------------------------------------------------------
    def map(self, job: Job, inputs: Iterable[Any], *, ordered: bool = False,
            timeout: float | None = None, batch_size: int | None = None,
            max_pending: int | None = None) -> Iterator[Result]:
        """``job(partition, item)`` for each input, on the workers; an iterator of
        :class:`~pyhv.fleet.Result`, one per input, as they finish (``ordered=True``: in
        input order).

        ``timeout`` (seconds) is per job: a guest still running then is stopped and the
        result is a :class:`~pyhv.fleet.JobTimeout`.  ``batch_size`` fixes how many inputs
        go to a worker per call (default: sized from the jobs' measured time).
        ``max_pending`` bounds the inputs taken from ``inputs`` and not yet yielded (default
        :data:`BATCHES_PER_WORKER` x workers x 512).  Inputs are read lazily, as room frees.
        """
        seconds = check_map_arguments(job, inputs, timeout)
        if batch_size is not None:
            batch_size = _count("batch_size", batch_size, 1)
        pending = len(self._slots) * BATCHES_PER_WORKER * MAX_BATCH if max_pending is None \
            else _count("max_pending", max_pending, 1)
        if self._closed:
            raise ClosedError("the fleet is closed")
        if self._mapping:
            raise StateError("the fleet is already running a map: finish it first")
        try:
            job_ref = self._ray.put(job)
        except Exception as exc:
            raise InvalidArgument(f"the job cannot go to Ray workers: {type(exc).__name__}: "
                                  f"{exc}{_MODULE_HINT if isinstance(exc, ImportError) else ''}"
                                  ) from None
        try:
            known = len(inputs)            # type: ignore[arg-type]
        except TypeError:
            known = None                   # a generator: no end in sight
        return self._map([job_ref], iter(inputs), ordered, seconds, batch_size, pending, known)

    def _map(self, job_box: list[Any], source: Iterator[Any], ordered: bool,
             timeout: float | None, fixed_batch: int | None,
             max_pending: int, known: int | None) -> Iterator[Result]:
        ray = self._ray
        stats = self.stats
        lost_errors = (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError,
                       ray.exceptions.ObjectLostError, ray.exceptions.OwnerDiedError,
                       ray.exceptions.ActorUnavailableError)
        inflight = self._inflight          # this map's batches, and any an earlier map left
        self._serial += 1
        serial = self._serial
        self._mapping = True
        stats.start_clock()
        mine = 0                            # this map's batches in flight
        retry: collections.deque[_Entry] = collections.deque()
        done: dict[int, Result] = {}       # finished, not yet yielded (ordered mode)
        out: collections.deque[Result] = collections.deque()
        taken = 0                           # inputs taken from `source`
        yielded = 0
        next_index = 0
        exhausted = False
        per_job = 0.0                       # measured seconds per job on a worker
        batch = fixed_batch or 1          # grows once the jobs' time is known

        def finish(result: Result, timed: bool = True) -> None:
            kind = None if result.failure is None else result.failure.kind
            stats.count(result.worker if timed else None, kind, result.seconds)
            if ordered:
                done[result.index] = result
            else:
                out.append(result)

        def give_up(entry: _Entry, failure: JobFailure, worker: int | None) -> None:
            finish(Result(entry.index, entry.item, None, failure, entry.attempts, worker),
                   timed=False)

        def take_back(slot: _Slot, hung: _Batch | None = None) -> None:
            """``slot``'s worker is lost: its batches' inputs run again (or fail)."""
            nonlocal mine
            node = slot.node or "?"
            for position, lost in enumerate(self._lost(slot)):
                inflight.pop(lost.ref, None)
                if lost.owner != serial:
                    continue                   # left by an earlier map: nobody waits for it
                mine -= 1
                for entry in lost.entries:
                    if position:               # queued behind the running batch: never ran
                        entry.attempts -= 1
                    elif lost is hung and len(lost.entries) == 1:
                        give_up(entry, JobTimeout(
                            f"the job ignored its {timeout:g} s timeout; its worker (on {node}) "
                            "was killed and replaced"), slot.worker)
                        continue
                    elif entry.attempts > self.max_retries:
                        give_up(entry, WorkerLost(
                            f"the input's worker died {entry.attempts} times (the last on "
                            f"{node})"), slot.worker)
                        continue
                    stats.retried += 1
                    retry.append(entry)

        def submit(slot: _Slot, entries: list[_Entry], alone: bool = False) -> None:
            nonlocal mine
            for entry in entries:
                entry.attempts += 1
            try:
                ref = slot.actor.run.remote(job_box, [(e.index, e.item) for e in entries],
                                            timeout)
            except TypeError as exc:               # Ray could not pickle an input
                bad = next((e for e in entries if not _picklable_value(e.item)), entries[0])
                raise InvalidArgument(f"input {bad.index} ({bad.item!r:.60}) cannot go to Ray "
                                      f"workers: {str(exc).splitlines()[0]}") from None
            if not slot.batches:
                slot.head_since = time.monotonic()
            b = _Batch(ref, slot, slot.generation, entries, serial, alone)
            slot.batches.append(b)
            inflight[ref] = b
            mine += 1

        def fill() -> None:
            nonlocal taken, exhausted
            while True:
                if retry:
                    # an input that was on a dying worker runs with a worker to itself, so
                    # that a death then is its own: other inputs wait until it is placed
                    idle = [s for s in self._slots if s.alive and not s.batches]
                    if not idle:
                        return
                    submit(idle[0], [retry.popleft()], alone=True)
                    continue
                free = [s for s in self._slots if s.alive and len(s.batches) < BATCHES_PER_WORKER
                        and not any(b.alone for b in s.batches)]
                if not free:
                    return
                slot = min(free, key=lambda s: len(s.batches))
                room = max_pending - (taken - yielded)
                if exhausted or room <= 0:
                    return
                size = min(batch, room)
                if known is not None and fixed_batch is None:   # an even end: no worker
                    alive = sum(s.alive for s in self._slots)   # left with the last big batch
                    size = min(size, max(1, -(-(known - taken) // (alive * BATCHES_PER_WORKER))))
                entries = []
                for _ in range(size):
                    try:
                        item = next(source)
                    except StopIteration:
                        exhausted = True
                        break
                    entries.append(_Entry(taken, item))
                    taken += 1
                if not entries:
                    return
                submit(slot, entries)

        def settle(b: _Batch) -> bytes:
            """The batch's blob, its slot's queue moved on; raises if its worker died."""
            blob: bytes = ray.get(b.ref)
            slot = b.slot
            if slot.batches and slot.batches[0] is b:
                slot.batches.popleft()
                slot.head_since = time.monotonic()
            else:
                slot.batches.remove(b)
            return blob

        def received(b: _Batch, blob: bytes) -> None:
            nonlocal per_job, batch
            worker = b.slot.worker
            try:
                busy, outcomes = _loads(blob)
            except _Unreadable as exc:
                for entry in b.entries:
                    give_up(entry, JobError(str(exc), exc.detail), worker)
                return
            stats.worker(worker).busy_seconds += busy
            by_index = {e.index: e for e in b.entries}
            for index, failure, value, took in outcomes:
                entry = by_index[index]
                finish(Result(index, entry.item, value, failure, entry.attempts, worker, took))
            if fixed_batch is None and outcomes:
                measured = busy / len(outcomes)
                per_job = measured if not per_job else 0.7 * per_job + 0.3 * measured
                batch = max(1, min(MAX_BATCH, int(BATCH_SECONDS / max(per_job, 1e-6))))

        def check_hung() -> None:
            if timeout is None:
                return
            now = time.monotonic()
            for slot in self._slots:
                if slot.alive and slot.batches:
                    head = slot.batches[0]
                    if now - slot.head_since > len(head.entries) * timeout + self.hang_grace:
                        take_back(slot, hung=head)

        try:
            while True:
                if self._closed:
                    raise ClosedError("the fleet was closed during a map")
                fill()
                if ordered:
                    while next_index in done:
                        result = done.pop(next_index)
                        next_index += 1
                        yielded += 1
                        yield result
                else:
                    while out:
                        yielded += 1
                        yield out.popleft()
                if exhausted and not mine and not retry and taken == yielded:
                    return
                starting = {s.ready_ref: s for s in self._slots if s.ready_ref is not None}
                if not mine and not starting and not any(s.alive for s in self._slots):
                    raise FleetError(f"every worker was lost ({self._restarts} restarts, the "
                                     f"most max_restarts={self.max_restarts} allows)")
                waiting = list(inflight) + list(starting)
                if not waiting:           # cannot happen: every input taken is somewhere
                    raise FleetError(f"lost track of {taken - yielded} inputs (a pyhv bug)")
                ready, rest = ray.wait(waiting, num_returns=1,
                                       timeout=None if timeout is None else 1.0)
                if ready and rest:
                    more, _ = ray.wait(rest, num_returns=len(rest), timeout=0)
                    ready += more
                for ref in ready:
                    if ref in starting:
                        self._settle_start(starting[ref])
                        continue
                    b = inflight.pop(ref, None)
                    if b is None:
                        continue                   # taken back already
                    try:
                        blob = settle(b)
                    except lost_errors:
                        inflight[ref] = b          # take_back counts it with the others
                        take_back(b.slot)
                        continue
                    except ray.exceptions.RayTaskError as exc:
                        raise FleetError(f"a worker failed outside any job: {exc}") from None
                    if b.owner == serial:
                        mine -= 1
                        received(b, blob)
                check_hung()
        finally:
            stats.stop_clock()
            self._mapping = False

    # -- lifetime --------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the workers (and the local Ray this fleet started).  Idempotent."""
        if self._closed:
            return
        self._closed = True
        for slot in self._slots:
            if slot.actor is not None:
                try:
                    self._ray.kill(slot.actor, no_restart=True)
                except Exception:
                    pass
                slot.actor, slot.alive = None, False
        if self._owns_ray:
            self._ray.shutdown()

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Unreadable(Exception):
    def __init__(self, message: str, detail: str) -> None:
        super().__init__(message)
        self.detail = detail


def _loads(blob: bytes) -> tuple[float, list[Outcome]]:
    from ray import cloudpickle
    try:
        payload = cloudpickle.loads(blob)
    except Exception as exc:
        raise _Unreadable(f"the workers' results cannot be read here: {type(exc).__name__}: "
                          f"{exc}", traceback.format_exc()) from None
    if "error" in payload:
        raise FleetError(f"{payload['error']}{_MODULE_HINT}")
    return payload["busy"], payload["outcomes"]


def _check_reachable(address: str) -> None:
    """Refuse at once a ``HOST:PORT`` or ``ray://HOST:PORT`` where nothing listens."""
    where = address[len("ray://"):] if address.startswith("ray://") else address
    host, sep, port = where.rpartition(":")
    if not sep or not port.isdigit():
        return                              # "auto", "local", or Ray's own business
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as exc:
        raise FleetError(f"cannot join the Ray cluster at {address}: nothing answers there "
                         f"({exc.strerror or exc})") from None


def _count(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InvalidArgument(f"{name} must be an int >= {low}, not {value!r}")
    return value


def _template_to_ship(template: Any) -> bytes | Callable[[], Any]:
    """What goes to the workers: a snapshot file's bytes (checked here), or the function."""
    if isinstance(template, Snapshot):
        return snapshot_bytes(template)
    if isinstance(template, (str, os.PathLike)):
        snap = Snapshot.load(template)           # refuses what is not a good snapshot file
        del snap
        with open(template, "rb") as f:
            return f.read()
    if isinstance(template, (bytes, bytearray, memoryview)):
        data = bytes(template)
        snapshot_from_bytes(data)
        return data
    if callable(template):
        build: Callable[[], Any] = template
        return build
    raise InvalidArgument(f"a fleet template is a pyhv.Snapshot, a snapshot file, or a function "
                          f"that builds the template partition, not {template!r}")
