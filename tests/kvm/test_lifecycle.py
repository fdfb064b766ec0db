"""The partition state machine: pause/resume from another thread, and illegal transitions."""

from __future__ import annotations

import threading
import time

import pytest

import pyhv
from pyhv import PartitionState, exits
from pyhv.testing import assemble

from ..conftest import boot, guest_code, run_in_background

COUNTER = 0x200000


def spinning_user_guest(part: pyhv.Partition) -> pyhv.VCpu:
    part.memory.write(0x100000, guest_code("spin_count", origin=0x100000))
    cpu = part.create_vcpu(mode="user", entry=0x100000)
    cpu.regs.rdi = COUNTER
    return cpu


def test_states_through_a_life(part):
    assert part.state == PartitionState.CREATED
    boot(part, "io_in")
    part.add_io_handler(range(0x60, 0x62), read=lambda p, s: 0)
    part.add_io_handler(0xE9, write=lambda *a: None)
    assert part.run(timeout=10).halted
    assert part.state == PartitionState.STOPPED
    part.close()
    assert part.state == PartitionState.CLOSED


def test_pause_and_resume_a_running_guest_from_another_thread(part):
    cpu = spinning_user_guest(part)
    outcome = []
    runner = threading.Thread(target=lambda: outcome.append(part.run(timeout=30)))
    runner.start()
    while part.memory.read_u64(COUNTER) == 0:
        time.sleep(0.01)
    assert part.state == PartitionState.RUNNING
    part.pause()
    assert part.state == PartitionState.PAUSED
    frozen = part.memory.read_u64(COUNTER)
    time.sleep(0.1)
    assert part.memory.read_u64(COUNTER) == frozen         # nothing runs while paused
    snap = part.snapshot()                                  # allowed while paused
    assert runner.is_alive() and not outcome               # the run did not return
    with pytest.raises(pyhv.HypervisorError, match="already running"):
        cpu.run(timeout=1)                                  # it is parked in its run
    part.resume()
    while part.memory.read_u64(COUNTER) <= frozen:
        time.sleep(0.01)
    part.stop()
    runner.join(10)
    assert isinstance(outcome[0].exit, exits.Canceled)
    assert part.state == PartitionState.STOPPED
    part.restore(snap)
    assert part.memory.read_u64(COUNTER) == frozen


def test_illegal_transitions_are_refused(part):
    cpu = spinning_user_guest(part)
    with pytest.raises(pyhv.StateError, match="not paused"):
        part.resume()
    part.pause()                                            # nothing running: just paused
    with pytest.raises(pyhv.StateError, match="already paused"):
        part.pause()
    with pytest.raises(pyhv.StateError):
        part.run(timeout=1)
    part.resume()
    runner, _ = run_in_background(part, lambda: part.run(timeout=30))
    with pytest.raises(pyhv.StateError, match="pause"):
        part.snapshot()                                     # a moving target
    with pytest.raises(pyhv.StateError, match="pause"):
        part.restore(object.__new__(pyhv.Snapshot))
    part.stop()
    runner.join(10)
    part.close()
    for operation in (part.pause, part.resume, part.snapshot, lambda: cpu.run(timeout=1)):
        with pytest.raises(pyhv.ClosedError):
            operation()


def test_a_handler_cannot_pause_its_own_partition(part):
    boot(part, "io_in")
    part.add_io_handler(0x60, read=lambda p, s: part.pause())
    with pytest.raises(pyhv.StateError, match="cannot pause"):
        part.run(timeout=10)
    assert part.state == PartitionState.POISONED             # it raised mid-exit


def test_pause_parks_every_vcpu_of_run_all(kvm):
    with pyhv.Partition(memory="16M") as part:
        part.memory.write(0x100000, guest_code("spin_count", origin=0x100000))
        for i in range(2):
            cpu = part.create_vcpu(mode="user", entry=0x100000, stack=0x70000 - 0x1000 * i)
            cpu.regs.rdi = COUNTER + 64 * i
        results = []
        runner = threading.Thread(target=lambda: results.extend(part.run_all(timeout=30)))
        runner.start()
        while min(part.memory.read_u64(COUNTER + 64 * i) for i in range(2)) == 0:
            time.sleep(0.01)
        part.pause()
        frozen = [part.memory.read_u64(COUNTER + 64 * i) for i in range(2)]
        time.sleep(0.1)
        assert [part.memory.read_u64(COUNTER + 64 * i) for i in range(2)] == frozen
        part.resume()
        part.stop()
        runner.join(10)
        assert [type(r.exit) for r in results] == [exits.Canceled, exits.Canceled]


def test_closing_a_vcpu_whose_run_is_parked_ends_that_run(part):
    cpu = spinning_user_guest(part)
    runner, results = run_in_background(part, lambda: cpu.run(timeout=30))
    part.pause()
    started = time.monotonic()
    cpu.close()                           # used to spin canceling until someone resumed
    runner.join(10)
    assert not runner.is_alive() and time.monotonic() - started < 5
    assert isinstance(results[0], exits.Canceled) and cpu.closed
    part.resume()
    assert part.vcpus == ()


def test_pause_resume_leaves_no_stray_cancel(kvm):
    """Regression: runs parked by pause() were canceled again and came back Canceled after
    resume()."""
    # vCPU 1 sits in a slow handler while pause() waits for it; vCPU 0 parks meanwhile and
    # must not come back with Canceled after resume()
    with pyhv.Partition(memory="4M") as part:
        part.memory.write(0x100000, assemble("1: out %al, $0x80\njmp 1b", origin=0x100000))
        part.memory.write(0x101000, assemble("jmp .", origin=0x101000))
        part.create_vcpu(mode="long", entry=0x101000, stack=0x70000)
        part.create_vcpu(mode="long", entry=0x100000, stack=0x60000)
        part.add_io_handler(0x80, write=lambda *a: time.sleep(0.2))
        results = []
        runner = threading.Thread(target=lambda: results.append(
            pytest.raises(pyhv.Timeout, part.run_all, 2.0)))
        runner.start()
        time.sleep(0.3)
        part.pause()
        time.sleep(0.2)
        part.resume()
        runner.join(10)
        assert results                        # ended by its timeout, not by a stray cancel


def test_closing_a_paused_partition_ends_its_parked_runs(kvm):
    """Regression: close() left the runs parked by pause() waiting."""
    part = pyhv.Partition(memory="4M")
    part.memory.write(0x100000, assemble("jmp .", origin=0x100000))
    part.create_vcpu(mode="long", entry=0x100000)
    runner, results = run_in_background(part, lambda: part.run(timeout=30))
    part.pause()
    started = time.monotonic()
    part.close()
    runner.join(10)
    assert time.monotonic() - started < 5 and not runner.is_alive()
    assert isinstance(results[0].exit, exits.Canceled)


def test_stop_during_a_pause_takes_effect_on_resume(kvm):
    """Regression: a stop() made while the partition was paused was lost at resume()."""
    with pyhv.Partition(memory="4M") as part:
        part.memory.write(0x100000, assemble("jmp .", origin=0x100000))
        part.create_vcpu(mode="long", entry=0x100000)
        runner, results = run_in_background(part, lambda: part.run(timeout=30))
        part.pause()
        part.stop()
        part.resume()
        runner.join(10)
        assert isinstance(results[0].exit, exits.Canceled)
