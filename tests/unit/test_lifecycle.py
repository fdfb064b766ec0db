"""A partition's state machine (pyhv.core.lifecycle.Lifecycle) without a partition: runs are
played by a thread that does what the run loop does with its slot."""

from __future__ import annotations

import threading
import time

import pytest

from pyhv import ClosedError, PartitionState, PoisonedError, StateError, exits
from pyhv.core.lifecycle import Lifecycle

S = PartitionState


STARTED: list[FakeRun] = []


@pytest.fixture(autouse=True)
def no_run_outlives_its_test():
    """A test that fails half-way must not leave a run behind (it would wait forever)."""
    yield
    while STARTED:
        run = STARTED.pop()
        run.stop.set()
        run.life.close()                  # ends a parked run
        run.thread.join(5)


class FakeRun:
    """A run on its own thread, as the run loop makes one: begin_run, then "in the guest"
    until told to stop; pause()'s cancel makes it park until resume (or close)."""

    def __init__(self, life: Lifecycle) -> None:
        self.life = life
        self.slot = life.new_slot()
        self.canceled = threading.Event()     # what cancel_running() sends the "vCPU"
        self.stop = threading.Event()
        self.started = threading.Event()
        self.parks = 0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> FakeRun:
        STARTED.append(self)
        self.thread.start()
        assert self.started.wait(5)
        return self

    def _run(self) -> None:
        try:
            self.life.begin_run(self.slot)
        except BaseException as exc:          # noqa: BLE001 - handed to the test
            self.error = exc
            self.started.set()
            return
        self.started.set()
        try:
            while not self.stop.is_set():
                if self.canceled.wait(0.01):
                    self.canceled.clear()
                    if self.life.paused:
                        self.parks += 1
                        if not self.life.park(self.stop.is_set):
                            break
        finally:
            self.life.end_run(self.slot)

    def finish(self) -> None:
        self.stop.set()
        self.life.wake()
        self.thread.join(5)
        assert not self.thread.is_alive()


def test_created_running_stopped():
    life = Lifecycle()
    slot = life.new_slot()
    assert life.state is S.CREATED and not life.ever_ran
    life.begin_run(slot)
    assert life.state is S.RUNNING and life.active == 1
    life.end_run(slot)
    assert life.state is S.STOPPED and life.active == 0


def test_the_state_values():
    assert [s.value for s in S] == ["created", "running", "paused", "stopped", "poisoned",
                                    "closed"]


def test_poison_refuses_runs_until_cured():
    life = Lifecycle()
    slot = life.new_slot()
    shutdown = exits.Shutdown(rip=0x1000)
    life.begin_run(slot)
    life.poison("Shutdown(rip=0x1000)", shutdown)
    assert life.state is S.RUNNING                     # still inside its run
    life.end_run(slot)
    assert life.state is S.POISONED and life.poisoned and life.blocked
    life.poison("a later reason", None)                # the first reason stays
    with pytest.raises(PoisonedError, match=r"poisoned \(Shutdown\(rip=0x1000\)\): reset\(\) "
                                            r"or restore\(\) it first") as info:
        life.begin_run(slot)
    assert info.value.exit is shutdown and info.value.reason == "Shutdown(rip=0x1000)"
    assert not slot.active and isinstance(info.value, StateError)
    life.cure()
    assert life.state is S.STOPPED and not life.blocked
    life.begin_run(slot)
    assert life.state is S.RUNNING


def test_close_ends_every_state():
    life = Lifecycle()
    slot = life.new_slot()
    life.poison("x")
    life.close()
    assert life.state is S.CLOSED and life.blocked
    for call in (lambda: life.begin_run(slot), lambda: life.pause(lambda: None),
                 lambda: life.resume(lambda stopped: None),
                 lambda: life.require_quiet("snapshot")):
        with pytest.raises(ClosedError, match="partition is closed"):
            call()


def test_pause_and_resume_of_a_quiet_partition():
    life = Lifecycle()
    slot = life.new_slot()
    life.pause(lambda: pytest.fail("nothing runs: nothing to cancel"))
    assert life.state is S.PAUSED
    with pytest.raises(StateError, match="partition is paused: resume"):
        life.begin_run(slot)
    with pytest.raises(StateError, match="already paused"):
        life.pause(lambda: None)
    life.require_quiet("snapshot")                     # paused counts as quiet
    resets = []
    life.resume(resets.append)
    assert resets == [False] and life.state is S.CREATED and not life.blocked
    with pytest.raises(StateError, match="partition is created, not paused"):
        life.resume(resets.append)


def test_pause_parks_a_run_on_another_thread_and_resume_wakes_it():
    life = Lifecycle()
    run = FakeRun(life).start()
    assert life.state is S.RUNNING
    with pytest.raises(StateError, match="cannot take a snapshot while the partition is "
                                         "running: pause\\(\\) it first"):
        life.require_quiet("take a snapshot")
    life.pause(run.canceled.set)                       # returns once the run has parked
    assert life.parked == 1 and run.parks == 1 and life.state is S.PAUSED
    life.require_quiet("take a snapshot")
    resets = []
    life.resume(resets.append)
    assert resets == [False] and life.state is S.RUNNING
    deadline = time.monotonic() + 5
    while life.parked and time.monotonic() < deadline:
        time.sleep(0.01)
    assert life.parked == 0 and run.thread.is_alive()  # back "in the guest"
    run.finish()
    assert life.state is S.STOPPED and run.error is None


def test_pause_keeps_cancelling_until_every_run_parks():
    life = Lifecycle()
    run = FakeRun(life).start()
    cancels = []

    def cancel_running():
        cancels.append(1)
        if len(cancels) >= 3:                         # the "vCPU" sees only the third
            run.canceled.set()

    life.pause(cancel_running)
    assert len(cancels) >= 3 and life.parked == 1
    life.resume(lambda stopped: None)
    run.finish()


def test_a_stop_during_a_pause_is_handed_to_resume():
    life = Lifecycle()
    run = FakeRun(life).start()
    life.pause(run.canceled.set)
    life.stop_requested()
    seen = []
    life.resume(seen.append)
    assert seen == [True]
    run.finish()
    life.stop_requested()                             # not paused: nothing remembered
    life.pause(lambda: None)
    life.resume(seen.append)
    assert seen == [True, False]


def test_closing_a_paused_partition_ends_its_parked_runs():
    life = Lifecycle()
    run = FakeRun(life).start()
    life.pause(run.canceled.set)
    life.close()
    run.thread.join(5)
    assert not run.thread.is_alive() and life.state is S.CLOSED and life.active == 0


def test_a_parked_run_may_be_told_to_leave():
    life = Lifecycle()
    run = FakeRun(life).start()
    life.pause(run.canceled.set)
    run.finish()                                      # its vCPU closes: wake() and leave
    assert life.active == 0 and life.parked == 0 and life.state is S.PAUSED


def test_a_new_run_during_a_pause_is_refused_on_its_thread():
    life = Lifecycle()
    life.pause(lambda: None)
    run = FakeRun(life).start()
    run.thread.join(5)
    assert isinstance(run.error, StateError) and life.active == 0


def test_dropped_slots_no_longer_count():
    life = Lifecycle()
    a, b = life.new_slot(), life.new_slot()
    life.begin_run(a)
    life.begin_run(b)
    assert life.active == 2
    life.drop_slot(a)
    assert life.active == 1
    life.end_run(b)
    assert life.active == 0 and life.state is S.STOPPED
