"""A partition's lifecycle: its states, pause/resume, and poisoning.

>>> from pyhv.core.lifecycle import Lifecycle
>>> life = Lifecycle()
>>> life.state.value
'created'
>>> life.begin_run(); life.state.value
'running'
>>> life.end_run(); life.poison("a test"); life.state.value
'poisoned'

::

    created --run--> running --(run ends)--> stopped --run--> running ...
                        |  ^
                 pause  |  | resume        (runs in progress park until resume)
                        v  |
                       paused
    any run that faults, whose handler raises, or that ends on an exit nobody handled
    --> poisoned, until reset() or restore()
    any state --close()--> closed
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable

from ..errors import ClosedError, PoisonedError, StateError
from ..exits import Exit


class PartitionState(str, enum.Enum):
    """What a partition is doing; see :mod:`pyhv.lifecycle`."""

    CREATED = "created"        # set up, never run
    RUNNING = "running"        # at least one vCPU is in a run
    PAUSED = "paused"          # pause(): runs in progress are parked, new ones refused
    STOPPED = "stopped"        # the last runs ended cleanly (halt, debug-exit, stop, timeout)
    POISONED = "poisoned"      # the last run went wrong: only reset()/restore() clear it
    CLOSED = "closed"


class Lifecycle:
    """Run accounting and the state machine, shared by a partition's vCPU threads."""

    def __init__(self) -> None:
        # a plain lock for the per-run accounting (its `with` costs less than a Condition's);
        # the condition shares it
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self.active = 0            # runs in progress
        self.parked = 0            # of which parked by pause()
        self.paused = False
        self.closed = False
        self.ever_ran = False
        self.poison_reason: str | None = None
        self.poison_exit: Exit | None = None
        self.stopped_while_paused = False

    @property
    def state(self) -> PartitionState:
        if self.closed:
            return PartitionState.CLOSED
        if self.paused:
            return PartitionState.PAUSED
        if self.active:
            return PartitionState.RUNNING
        if self.poison_reason is not None:
            return PartitionState.POISONED
        return PartitionState.STOPPED if self.ever_ran else PartitionState.CREATED

    @property
    def poisoned(self) -> bool:
        return self.poison_reason is not None

    def begin_run(self) -> None:
        with self._lock:
            if self.closed:
                raise ClosedError("partition is closed")
            if self.poison_reason is not None:
                raise PoisonedError(self.poison_reason, self.poison_exit)
            if self.paused:
                raise StateError("partition is paused: resume() it before running")
            self.active += 1
            self.ever_ran = True

    def end_run(self) -> None:
        with self._lock:
            self.active -= 1
            if self.paused:               # only pause() waits for runs to end or park
                self._cond.notify_all()

    def park(self, leaving: Callable[[], bool]) -> bool:
        """Called by a run that pause() stopped: wait for resume.  Returns False when the
        partition was closed meanwhile, or ``leaving()`` turned true (the run must end)."""
        with self._cond:
            self.parked += 1
            self._cond.notify_all()
            while self.paused and not self.closed and not leaving():
                self._cond.wait()
            self.parked -= 1
            return not (self.closed or leaving())

    def wake(self) -> None:
        """Have parked runs look again at why they wait (a vCPU of theirs is closing)."""
        with self._cond:
            self._cond.notify_all()

    def pause(self, cancel_running: Callable[[], None]) -> None:
        with self._cond:
            if self.closed:
                raise ClosedError("partition is closed")
            if self.paused:
                raise StateError("partition is already paused")
            self.paused = True
            while self.parked < self.active:
                cancel_running()          # again, for a run that started just before
                self._cond.wait(0.05)

    def resume(self, reset_cancels: Callable[[bool], None]) -> None:
        """Wake the parked runs; ``reset_cancels(stopped)`` drops the cancels pause() sent
        (and re-sends a stop() made during the pause) while nothing can run yet."""
        with self._cond:
            if self.closed:
                raise ClosedError("partition is closed")
            if not self.paused:
                raise StateError(f"partition is {self.state.value}, not paused")
            reset_cancels(self.stopped_while_paused)
            self.stopped_while_paused = False
            self.paused = False
            self._cond.notify_all()

    def stop_requested(self) -> None:
        with self._cond:
            if self.paused:
                self.stopped_while_paused = True

    def require_quiet(self, what: str) -> None:
        """Refuse ``what`` while a vCPU is inside the guest (paused is fine)."""
        with self._cond:
            if self.closed:
                raise ClosedError("partition is closed")
            if self.active > self.parked:
                raise StateError(f"cannot {what} while the partition is running: pause() it "
                                 "first")

    def poison(self, reason: str, exit: Exit | None = None) -> None:
        with self._cond:
            if self.poison_reason is None:
                self.poison_reason, self.poison_exit = reason, exit

    def cure(self) -> None:
        with self._cond:
            self.poison_reason = self.poison_exit = None

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()
