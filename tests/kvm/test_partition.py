"""Lifetimes: context managers, close(), finalizers, fd accounting, half-built objects."""

from __future__ import annotations

import gc
import threading
import time

import pytest

import pyhv
from pyhv import exits

from ..conftest import boot, fd_count


def test_dropped_partitions_are_finalized(kvm):
    pyhv.check()
    before = fd_count()
    for _ in range(50):
        part = pyhv.Partition(memory="1M")
        part.memory.write(0x1000, b"\xf4")
        part.create_vcpu(mode="long", entry=0x1000)
        del part                                   # no close(): the finalizer must do it
    gc.collect()
    assert fd_count() == before


def test_close_is_idempotent_and_closed_objects_refuse_work(kvm):
    part = pyhv.Partition(memory="1M")
    part.memory.write(0x1000, b"\xf4")
    cpu = part.create_vcpu(mode="real", entry=0x1000)
    part.close()
    part.close()
    cpu.close()
    assert part.closed and cpu.closed and "closed" in repr(part) and "closed" in repr(cpu)
    with pytest.raises(pyhv.ClosedError):
        cpu.run()
    with pytest.raises(pyhv.ClosedError):
        cpu.regs.rax
    with pytest.raises(pyhv.ClosedError):
        part.map_memory(0x100000, 0x1000)
    with pytest.raises(pyhv.ClosedError):
        part.memory.read(0x1000, 1)                # the slots went with the partition
    with pytest.raises(pyhv.ClosedError):
        part.memory.write(0x1000, b"x")
    with pytest.raises(pyhv.ClosedError):
        part.create_vcpu(mode="real", entry=0x1000)
    with pytest.raises(pyhv.ClosedError):
        part.add_io_handler(0x60, read=lambda port, size: 0)
    with pytest.raises(pyhv.ClosedError):
        part.run()


def test_vcpu_context_manager(part):
    part.memory.write(0x1000, b"\xf4")
    with part.create_vcpu(mode="long", entry=0x1000) as cpu:
        assert isinstance(cpu.run(timeout=10), exits.Halt)
    assert cpu.closed


@pytest.mark.parametrize("kwargs, error", [
    ({"memory": 0}, pyhv.InvalidArgument),
    ({"memory": "12345"}, pyhv.InvalidArgument),        # not page-aligned
    ({"memory": "lots"}, pyhv.InvalidArgument),
    ({"memory": "1M", "setup_base": 0x80001}, pyhv.InvalidArgument),
    ({"memory": "1M", "setup_base": "x"}, pyhv.InvalidArgument),
])
def test_bad_partition_arguments_leave_nothing_behind(kvm, kwargs, error):
    pyhv.check()
    before = fd_count()
    with pytest.raises(error):
        pyhv.Partition(**kwargs)
    gc.collect()
    assert fd_count() == before


@pytest.mark.parametrize("kwargs, error", [
    ({"mode": "virtual86"}, pyhv.InvalidArgument),
    ({"mode": "long", "entry": 0x9000000}, pyhv.GuestMemoryError),
    ({"mode": "real", "entry": 0x100000 + 0x1000}, pyhv.InvalidArgument),
    ({"mode": "real", "entry": 0x1000, "stack": 0x200000}, pyhv.InvalidArgument),
    ({"mode": "long", "entry": "0x1000"}, pyhv.InvalidArgument),
    ({"mode": "long", "entry": 0x1000, "stack": -5}, pyhv.InvalidArgument),
])
def test_bad_vcpu_arguments_leave_nothing_behind(part, kwargs, error):
    before = fd_count()
    with pytest.raises(error):
        part.create_vcpu(**kwargs)
    assert part.vcpus == () and fd_count() == before
    part.memory.write(0x1000, b"\xf4")
    assert isinstance(part.create_vcpu(mode="long", entry=0x1000).run(timeout=10), exits.Halt)


def test_closing_a_running_vcpu_from_another_thread(part):
    cpu = boot(part, "spin")
    outcome = []

    def run():
        outcome.append(cpu.run(timeout=30))

    runner = threading.Thread(target=run)
    runner.start()
    time.sleep(0.1)
    cpu.close()                      # cancels the run, waits for it, then releases the fd
    runner.join(5)
    assert not runner.is_alive() and isinstance(outcome[0], exits.Canceled) and cpu.closed


def test_closing_a_vcpu_from_its_own_handler_is_refused(part):
    cpu = boot(part, "io_in")
    part.add_io_handler(0x60, read=lambda port, size: cpu.close())
    with pytest.raises(pyhv.HypervisorError, match="cannot be closed from inside"):
        part.run(timeout=10)
    assert not cpu.closed


def test_hypervisor_handle(kvm):
    with pyhv.Hypervisor() as hv:
        assert hv.api_version == 12 and hv.vcpu_mmap_size > 0
        assert hv.capability("KVM_CAP_USER_MEMORY") == hv.capability(3) == 1
        assert hv.msr_index_list()
        with pyhv.Partition(memory="1M", hypervisor=hv) as part:
            assert part.hypervisor is hv
    assert hv.closed and "closed" in repr(hv)
    hv.close()


def test_a_pool_closes_a_partition_whose_restore_was_interrupted(kvm, monkeypatch):
    with pyhv.Partition(memory="1M") as source:
        source.memory.write(0x1000, b"\xf4")
        source.create_vcpu(mode="real", entry=0x1000)
        template = source.snapshot()
    with pyhv.PartitionPool(template, size=1) as pool:
        part = pool.acquire()
        assert isinstance(part.run(timeout=10).exit, exits.Halt)

        def interrupted(snap):
            raise KeyboardInterrupt

        monkeypatch.setattr(part, "restore", interrupted)
        with pytest.raises(KeyboardInterrupt):
            pool.release(part)
        assert part.closed                  # not left half restored, outside the pool


def test_a_closed_vcpu_leaves_the_partition(part):
    """Regression: a closed vCPU stayed in Partition.vcpus (and snapshot() failed on it with
    ClosedError)."""
    part.memory.write(0x1000, b"\xf4")
    first = part.create_vcpu(mode="real", entry=0x1000)
    second = part.create_vcpu(mode="real", entry=0x1000)
    first.close()
    assert part.vcpus == (second,)
    part.snapshot()                           # no ClosedError from the closed one
    part.stop()
