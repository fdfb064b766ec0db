"""One fleet worker: a warm :class:`pyhv.PartitionPool` made from the fleet's template, that
runs jobs on it one after the other, turns whatever happens to a guest into a
:class:`~pyhv.fleet.Result`'s value or failure, and restores the partition for the next job.
Ray runs it as an actor (:mod:`pyhv.fleet.fleet`); :class:`pyhv.fleet.InProcessFleet` runs one
in this process.  Nothing here imports Ray.

>>> import pyhv
>>> from pyhv.fleet.worker import Worker
>>> with pyhv.Partition(memory="1M") as part:
...     part.memory.write(0x1000, bytes.fromhex("48 01 f8 f4"))   # add %rdi, %rax; hlt
...     _ = part.create_vcpu(mode="long", entry=0x1000)
...     template = part.snapshot()
>>> def job(part, x):
...     part.vcpus[0].regs.rdi = x
...     part.run(timeout=5).check()
...     return part.vcpus[0].regs.rax
>>> with Worker(template) as worker:
...     [(index, value) for index, failure, value, _ in worker.run_batch(job, [(0, 2), (1, 9)])]
[(0, 2), (1, 9)]
"""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from ..core.hypervisor import Hypervisor, default
from ..core.lifecycle import PartitionState
from ..errors import HypervisorError, HypervisorUnavailable, InvalidArgument
from ..partition import Partition
from ..pool import PartitionPool
from ..snapshot import Snapshot
from .results import JobFailure, JobTimeout, classify, left_poisoned

__all__ = ["Outcome", "Template", "Watchdog", "Worker", "WorkerRefused", "kvm_refusal",
           "snapshot_bytes", "snapshot_from_bytes"]

# a template: a snapshot (or its file's bytes), or a function that builds the template
# partition (or its snapshot) on each worker
Template = Snapshot | bytes | Callable[[], "Partition | Snapshot"]
# what a worker reports per job: (input index, failure or None, value, seconds in the job)
Outcome = tuple[int, JobFailure | None, Any, float]


class WorkerRefused(HypervisorError):
    """A worker could not start: no usable /dev/kvm on its host (the message is what
    ``pyhv doctor`` says there), or its template or setup failed."""


def kvm_refusal(device: str | None = None) -> tuple[Hypervisor | None, str]:
    """(the KVM handle, "") when this host can run guests, else (None, why) in the words of
    ``pyhv doctor``.

    >>> handle, why = kvm_refusal("/no/such/kvm")
    >>> handle is None, why.splitlines()[0]
    (True, 'pyhv doctor: KVM is not usable: open /no/such/kvm: No such file or directory ...
    """
    try:
        handle = default() if device is None else Hypervisor(device)
    except HypervisorUnavailable as exc:
        return None, f"pyhv doctor: KVM is not usable: {exc.strerror}"
    caps = handle.info()
    if not caps.ok:
        if device is not None:
            handle.close()
        return None, f"{caps.report()}\n\nNOT READY: missing {', '.join(caps.missing)}"
    return handle, ""


def _scratch_dir() -> str | None:
    """Where a snapshot file may pass through: memory-backed /dev/shm where there is one."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def snapshot_bytes(snap: Snapshot) -> bytes:
    """``snap`` as the bytes of its file (:meth:`pyhv.Snapshot.save`): what travels to the
    workers, once, through Ray's object store."""
    with tempfile.TemporaryDirectory(prefix="pyhv-fleet-", dir=_scratch_dir()) as tmp:
        path = os.path.join(tmp, "template.pyhvsnap")
        snap.save(path)
        with open(path, "rb") as f:
            return f.read()


def snapshot_from_bytes(data: bytes) -> Snapshot:
    """The snapshot whose file holds ``data`` (checked as :meth:`pyhv.Snapshot.load` checks
    a file), read through an in-memory file."""
    fd = os.memfd_create("pyhv-template", os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        return Snapshot.load(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


RESTOP_SECONDS = 0.05


class Watchdog:
    """Stops a partition whose job runs past its time, and keeps stopping it until the job
    ends: one thread, armed and disarmed around each job (a lock and a notify each, no
    thread per job).  A job that loops in Python without running its guest is beyond it."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._target: tuple[float, Partition] | None = None
        self._fired = False
        self._closed = False
        self._thread = threading.Thread(target=self._watch, name="pyhv-fleet-watchdog",
                                        daemon=True)
        self._thread.start()

    def arm(self, part: Partition, seconds: float) -> None:
        with self._cond:
            self._target = (time.monotonic() + seconds, part)
            self._fired = False
            self._cond.notify()

    def disarm(self) -> bool:
        """End the watch; True if the deadline passed (the partition was stopped)."""
        with self._cond:
            self._target = None
            return self._fired

    def _watch(self) -> None:
        with self._cond:
            while not self._closed:
                if self._target is None:
                    self._cond.wait()
                    continue
                deadline, part = self._target
                left = deadline - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                self._fired = True
                # again every 50 ms until disarmed: a job that runs the guest again after
                # its Canceled meets another (the restore afterwards clears the cancel)
                self._target = (time.monotonic() + RESTOP_SECONDS, part)
                try:
                    part.stop()
                except HypervisorError:
                    pass            # closed by the job meanwhile: nothing left to stop

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()


class Worker:
    """A warm pool of one partition made from ``template``, ``setup(partition)`` run on each
    partition it makes (handlers, devices: what snapshots do not carry).

    ``template`` is a :class:`pyhv.Snapshot`, the bytes of a snapshot file, or a function
    that returns the template :class:`pyhv.Partition` (snapshotted, then closed) or a
    snapshot.  ``device`` is the KVM device (default /dev/kvm): a host where it cannot run
    guests refuses with :class:`WorkerRefused`, in the words of ``pyhv doctor``.
    """

    def __init__(self, template: Template, setup: Callable[[Partition], None] | None = None, *,
                 device: str | None = None) -> None:
        if setup is not None and not callable(setup):
            raise InvalidArgument(f"setup must be a function of the partition, not {setup!r}")
        handle, why = kvm_refusal(device)
        if handle is None:
            raise WorkerRefused(f"{socket.gethostname()}: {why}")
        self._own_handle = handle if device is not None else None
        self._watchdog: Watchdog | None = None
        try:
            snap = self._template(template, handle)
            self.pool = PartitionPool(snap, size=1, setup=setup, hypervisor=handle)
        except BaseException:
            if self._own_handle is not None:
                self._own_handle.close()
            raise

    @staticmethod
    def _template(template: Template, handle: Hypervisor) -> Snapshot:
        if isinstance(template, Snapshot):
            return template
        if isinstance(template, (bytes, bytearray, memoryview)):
            return snapshot_from_bytes(bytes(template))
        if callable(template):
            built = template()
            if isinstance(built, Snapshot):
                return built
            if isinstance(built, Partition):
                with built:
                    return built.snapshot()
            raise InvalidArgument(f"the template function returned {built!r}, not a "
                                  "pyhv.Partition or pyhv.Snapshot")
        raise InvalidArgument(f"a fleet template is a pyhv.Snapshot, a snapshot file's bytes or "
                              f"a function that builds the template partition, not {template!r}")

    def run_one(self, job: Callable[[Partition, Any], Any], index: int, item: Any,
                timeout: float | None = None) -> Outcome:
        """Run ``job(partition, item)`` on a partition in the template's state."""
        part = self.pool.acquire()
        failure: JobFailure | None = None
        value: Any = None
        watchdog = self._watchdog
        if timeout is not None and watchdog is None:
            watchdog = self._watchdog = Watchdog()
        started = time.perf_counter()
        try:
            if timeout is not None and watchdog is not None:
                watchdog.arm(part, timeout)
            try:
                value = job(part, item)
            except (Exception, SystemExit) as exc:  # the job's bug, a handler's, a guest's
                failure = classify(exc, not part.closed and
                                   part.state is PartitionState.POISONED)
            finally:
                fired = watchdog.disarm() if timeout is not None and watchdog else False
            seconds = time.perf_counter() - started
            if fired:
                failure, value = JobTimeout(f"the job ran past its {timeout:g} s timeout"), None
            elif failure is None:       # it returned: its value stays, beside why it failed
                failure = left_poisoned(part)
        finally:
            self._give_back(part)
        return index, failure, value, seconds

    def _give_back(self, part: Partition) -> None:
        try:
            self.pool.release(part)
        except HypervisorError:
            pass   # closed by the job, or not restorable: the pool dropped it, makes another

    def run_batch(self, job: Callable[[Partition, Any], Any], items: Iterable[tuple[int, Any]],
                  timeout: float | None = None) -> list[Outcome]:
        """:meth:`run_one` for each ``(index, item)``, in order."""
        return [self.run_one(job, index, item, timeout) for index, item in items]

    def close(self) -> None:
        self.pool.close()
        if self._watchdog is not None:
            self._watchdog.close()
            self._watchdog = None
        if self._own_handle is not None:
            self._own_handle.close()
            self._own_handle = None

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
