"""A partition's lifecycle: its states, pause/resume, and poisoning.

>>> from pyhv.core.lifecycle import Lifecycle
>>> life = Lifecycle()
>>> slot = life.new_slot()
>>> life.state.value
'created'
>>> life.begin_run(slot); life.state.value
'running'
>>> life.end_run(slot); life.poison("a test"); life.state.value
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
import logging
import threading
from collections.abc import Callable

from ..errors import ClosedError, PoisonedError, StateError
from ..exits import Exit

log = logging.getLogger("pyhv")


class PartitionState(str, enum.Enum):
    """What a partition is doing; see :mod:`pyhv.lifecycle`."""

    CREATED = "created"        # set up, never run
    RUNNING = "running"        # at least one vCPU is in a run
    PAUSED = "paused"          # pause(): runs in progress are parked, new ones refused
    STOPPED = "stopped"        # the last runs ended cleanly (halt, debug-exit, stop, timeout)
    POISONED = "poisoned"      # the last run went wrong: only reset()/restore() clear it
    CLOSED = "closed"


class RunSlot:
    """One vCPU's place in the run accounting: whether a run of it is in progress."""

    __slots__ = ("active",)

    def __init__(self) -> None:
        self.active = False


class Lifecycle:
    """Run accounting and the state machine, shared by a partition's vCPU threads.

    Beginning and ending a run take no lock (they happen once per typed exit): a run marks
    its slot active, then looks at ``blocked``; pause(), close() and poisoning set
    ``blocked``, then look at the slots.  Under the GIL those stores and loads happen in one
    order for every thread, so either the run sees ``blocked`` and backs out, or pause()
    sees the run and waits for it to park.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)   # waits use it; plain updates the lock
        self._slots: list[RunSlot] = []
        self.parked = 0            # runs parked by pause()
        self.paused = False
        self.closed = False
        self.blocked = False       # closed, poisoned or paused: new runs are refused
        self.ever_ran = False
        self.poison_reason: str | None = None
        self.poison_exit: Exit | None = None
        self.stopped_while_paused = False

    def new_slot(self) -> RunSlot:
        """A slot for a new vCPU."""
        slot = RunSlot()
        with self._lock:
            self._slots = self._slots + [slot]
        return slot

    def drop_slot(self, slot: RunSlot) -> None:
        with self._lock:
            self._slots = [s for s in self._slots if s is not slot]

    @property
    def active(self) -> int:
        """Runs in progress (parked ones included)."""
        return sum(1 for s in self._slots if s.active)

    def _update_blocked(self) -> None:
        self.blocked = self.closed or self.paused or self.poison_reason is not None

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

    def begin_run(self, slot: RunSlot) -> None:
        slot.active = True                # first: see the class docstring
        if self.blocked:
            slot.active = False
            if self.closed:
                raise ClosedError("partition is closed")
            if self.poison_reason is not None:
                raise PoisonedError(self.poison_reason, self.poison_exit)
            raise StateError("partition is paused: resume() it before running")
        self.ever_ran = True

    def end_run(self, slot: RunSlot) -> None:
        slot.active = False
        if self.paused:                   # only pause() waits for runs to end or park
            with self._cond:
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
            if self.parked:
                self._cond.notify_all()

    def pause(self, cancel_running: Callable[[], None]) -> None:
        with self._cond:
            if self.closed:
                raise ClosedError("partition is closed")
            if self.paused:
                raise StateError("partition is already paused")
            self.paused = True
            self._update_blocked()
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
            self._update_blocked()
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
                self._update_blocked()
                log.warning("partition poisoned: %s", reason)

    def cure(self) -> None:
        with self._cond:
            self.poison_reason = self.poison_exit = None
            self._update_blocked()

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._update_blocked()
            if self.parked or self.paused:
                self._cond.notify_all()
