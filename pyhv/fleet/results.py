"""What a fleet job gives back: a :class:`Result` per input, with the job's value or a typed
failure saying how the guest (or the job) ended.

>>> from pyhv.fleet import GuestFault, Result
>>> ok = Result(index=0, input=3, value=9)
>>> ok.ok, ok.get()
(True, 9)
>>> bad = Result(index=1, input=4, failure=GuestFault("the guest ended on Shutdown()"))
>>> bad.ok, bad.failure.kind
(False, 'guest_fault')
>>> bad.get()
Traceback (most recent call last):
pyhv.fleet.results.GuestFault: the guest ended on Shutdown()

Failures are exceptions (so :meth:`Result.get` can raise them) that pickle as plain data:
they travel from Ray workers whatever the job raised, with its traceback as text.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from typing import Any, ClassVar

from ..core.lifecycle import PartitionState
from ..errors import HypervisorError, PoisonedError, Timeout, UnhandledExit
from ..partition import Partition

__all__ = [
    "FAILURE_KINDS",
    "GuestFault",
    "GuestPoisoned",
    "JobError",
    "JobFailure",
    "JobTimeout",
    "Result",
    "WorkerLost",
    "classify",
    "left_poisoned",
]


class JobFailure(HypervisorError):
    """Why a job gave no value.  ``kind`` names the failure in counts and JSON; ``detail``
    holds what explains it (a traceback, the exit that ended the guest)."""

    kind: ClassVar[str] = "failure"

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.message, self.detail))

    def __eq__(self, other: object) -> bool:
        return (type(other) is type(self) and isinstance(other, JobFailure)
                and (other.message, other.detail) == (self.message, self.detail))

    def __hash__(self) -> int:
        return hash((type(self), self.message, self.detail))


class JobTimeout(JobFailure, TimeoutError):
    """The job ran past its timeout (the fleet stopped the guest, or the guest run raised
    :class:`pyhv.Timeout`)."""

    kind = "timeout"


class GuestFault(JobFailure):
    """The guest ended on an exit it cannot go on from (a triple fault, an internal error,
    a failed entry): ``detail`` is that exit."""

    kind = "guest_fault"


class GuestPoisoned(JobFailure):
    """The job left its partition poisoned for another reason than a fault (an exit nobody
    handled), or ran a partition that was poisoned."""

    kind = "poisoned"


class JobError(JobFailure):
    """The job, or a handler its guest run called, raised: ``detail`` is the traceback."""

    kind = "error"


class WorkerLost(JobFailure):
    """Every worker that took this input died (killed, out of memory) before it finished,
    as many times as the fleet retries; or a job ignored its timeout and its worker was
    restarted."""

    kind = "worker_lost"


FAILURE_KINDS: tuple[type[JobFailure], ...] = (JobTimeout, GuestFault, GuestPoisoned, JobError,
                                               WorkerLost)


@dataclass(frozen=True)
class Result:
    """One input's outcome.  ``index`` is its position in the inputs, ``input`` the input
    itself, ``value`` what the job returned, ``failure`` the :class:`JobFailure` (None on
    success), ``attempts`` how many times it ran (more than 1 after a worker died), ``worker``
    which worker ran it last, ``seconds`` the job's time.

    A job that raised has no value; one that returned but left its partition poisoned (its
    guest faulted, or ended on an exit nobody handled) keeps its value beside the failure."""

    index: int
    input: Any
    value: Any = None
    failure: JobFailure | None = None
    attempts: int = 1
    worker: int | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.failure is None

    def get(self) -> Any:
        """The value, or raise the failure."""
        if self.failure is not None:
            raise self.failure
        return self.value


def _traceback_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def classify(exc: BaseException, poisoned: bool = False) -> JobFailure:
    """The failure for an exception a job raised; ``poisoned``: the job's partition is.

    >>> from pyhv import exits
    >>> from pyhv.errors import UnhandledExit
    >>> classify(UnhandledExit(exits.Shutdown())).kind, classify(ValueError("no")).kind
    ('guest_fault', 'error')
    >>> classify(UnhandledExit(exits.IoOut(0x99, 1, b"x")), poisoned=True).kind
    'poisoned'
    """
    if isinstance(exc, JobFailure):
        return exc
    if isinstance(exc, Timeout):
        return JobTimeout(str(exc), _traceback_text(exc))
    if isinstance(exc, (UnhandledExit, PoisonedError)):
        if exc.exit is not None and getattr(exc.exit, "fault", False):
            return GuestFault(f"the guest ended on {exc.exit!r}", repr(exc.exit))
        if isinstance(exc, PoisonedError) or poisoned:
            return GuestPoisoned(str(exc), _traceback_text(exc))
    return JobError(f"{type(exc).__name__}: {exc}", _traceback_text(exc))


def left_poisoned(part: Partition) -> JobFailure | None:
    """The failure for a job that returned but left ``part`` poisoned (None if it did not).

    A poisoned partition refuses to run, raising :class:`pyhv.PoisonedError` with the reason
    and the exit, before it enters the guest: that refusal is how the reason is read here.
    """
    if part.closed or part.state is not PartitionState.POISONED or not part.vcpus:
        return None
    try:
        part.run()
    except PoisonedError as exc:
        return classify(exc)
    except HypervisorError as exc:           # e.g. the job closed a vCPU: still poisoned
        return GuestPoisoned(f"the job left its partition poisoned ({exc})")
    raise AssertionError("a poisoned partition ran")   # begin_run refuses poisoned partitions
