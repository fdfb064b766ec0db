"""Handler-driven runs: port and MMIO handlers, errors in handlers, timeouts and stops."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

import pyhv
from pyhv import exits

from .. import records
from ..conftest import boot, native_vcpu

GENEROUS = 5.0   # an upper bound that only a hang would cross; not a speed target


def test_port_handlers_serve_a_guest_to_halt(part):
    cpu = boot(part, "io_in")
    seen = []
    part.add_io_handler(0x60, read=lambda port, size: 0x21)
    part.add_io_handler(range(0x61, 0x62), read=lambda port, size: {2: 0x100, 4: 0x2}[size])
    part.add_io_handler(0xE9, write=lambda port, size, value: seen.append((size, value)))
    result = part.run(timeout=10)
    assert result.halted and result.exit == exits.Halt(rip=result.exit.rip)
    assert seen == [(1, 0x42), (4, 0x102)]
    assert result.exits_handled == 5 and result.vcpu is cpu
    assert result.check() is result


def test_string_io_calls_handlers_per_element(part):
    boot(part, "string_io")
    written = bytearray()
    feed = iter(range(10, 18))
    part.add_io_handler(0xE9, write=lambda port, size, value: written.append(value & 0xFF)
                        if size == 1 else written.extend(value.to_bytes(4, "little")))
    part.add_io_handler(0x60, read=lambda port, size: next(feed))
    assert part.run(timeout=10).halted
    assert bytes(written[:12]) == b"hello, world"
    assert int.from_bytes(written[12:16], "little") == sum(range(10, 18))


def test_mmio_handlers(part):
    boot(part, "mmio")
    writes = []

    def read(gpa, size):
        return {0xD0000000: 99, 0xD0000010: 0x1122334455667788}[gpa]

    part.add_mmio_handler(0xD0000000, 0x1000, read=read,
                          write=lambda gpa, size, value: writes.append((gpa, size, value)))
    assert part.run(timeout=10).halted
    assert writes == [(0xD0000008, 4, 100)]
    assert part.memory.read_u64(0x3000) == 0x1122334455667788


def test_unhandled_exit_ends_the_run_and_poisons_the_partition(part):
    cpu = boot(part, "io_in")
    snap = part.snapshot()
    result = part.run(timeout=10)
    assert isinstance(result.exit, exits.IoIn) and result.exit.port == 0x60
    assert not result.halted and result.exits_handled == 0
    with pytest.raises(pyhv.UnhandledExit):
        result.check()
    assert part.state == pyhv.PartitionState.POISONED
    with pytest.raises(pyhv.PoisonedError, match="IoIn"):
        part.run()
    with pytest.raises(pyhv.PoisonedError):
        cpu.run()
    part.restore(snap)                       # only a restore (or reset) clears it
    part.add_io_handler(0xE9, write=lambda *a: None)
    part.add_io_handler(range(0x60, 0x62), read=lambda port, size: 0)
    assert part.run(timeout=10).halted and part.state == pyhv.PartitionState.STOPPED


def test_write_only_handler_does_not_claim_reads(part):
    boot(part, "io_in")
    part.add_io_handler(0x60, write=lambda *a: None)
    assert isinstance(part.run(timeout=10).exit, exits.IoIn)


def test_exception_in_a_handler_stops_the_run_and_propagates(part):
    cpu = boot(part, "io_in")
    snap = part.snapshot()

    class DeviceBroke(Exception):
        pass

    def broken(port, size):
        raise DeviceBroke(f"port {port:#x}")

    part.add_io_handler(0x60, read=broken)
    with pytest.raises(DeviceBroke, match="port 0x60") as info:
        part.run(timeout=10)
    assert any(entry.name == "broken" for entry in info.traceback)
    # the exit was half handled: the partition is poisoned until restored
    assert part.state == pyhv.PartitionState.POISONED
    with pytest.raises(pyhv.PoisonedError, match="DeviceBroke"):
        cpu.run(timeout=10)
    part.restore(snap)
    assert isinstance(cpu.run(timeout=10), exits.IoIn)


@pytest.mark.parametrize("answer", [None, 256, -1, b"\x01\x02", "a"])
def test_bad_handler_answers_raise_handler_error(part, answer):
    boot(part, "io_in")
    part.add_io_handler(0x60, read=lambda port, size: answer)
    with pytest.raises(pyhv.HandlerError, match="port 0x60"):
        part.run(timeout=10)


def test_handler_registration_errors(part):
    part.add_io_handler(range(0x3F8, 0x400), read=lambda p, s: 0)
    with pytest.raises(pyhv.OverlapError):
        part.add_io_handler(0x3FF, read=lambda p, s: 0)
    with pytest.raises(pyhv.OverlapError):
        part.add_io_handler(range(0x3F0, 0x3F9), read=lambda p, s: 0)
    with pytest.raises(pyhv.InvalidArgument):
        part.add_io_handler(0x10000, read=lambda p, s: 0)
    with pytest.raises(pyhv.InvalidArgument):
        part.add_io_handler(range(0, 10, 2), read=lambda p, s: 0)
    with pytest.raises(pyhv.InvalidArgument):
        part.add_io_handler(0x80)
    with pytest.raises(pyhv.InvalidArgument):
        part.add_io_handler(0x80, read=42)
    with pytest.raises(pyhv.InvalidArgument):
        part.add_mmio_handler(0xD0000000, 0, read=lambda a, s: 0)
    mmio = part.add_mmio_handler(0xD0000000, 0x1000, read=lambda a, s: 0)
    with pytest.raises(pyhv.OverlapError):
        part.add_mmio_handler(0xD0000FFF, 2, read=lambda a, s: 0)
    part.remove_handler(mmio)
    part.add_mmio_handler(0xD0000FFF, 2, read=lambda a, s: 0)
    with pytest.raises(pyhv.InvalidArgument):
        part.remove_handler(mmio)


def test_removed_handler_no_longer_serves(part):
    boot(part, "io_in")
    handler = part.add_io_handler(0x60, read=lambda p, s: 1)
    part.remove_handler(handler)
    assert isinstance(part.run(timeout=10).exit, exits.IoIn)


@pytest.mark.parametrize("mode", ["real", "protected", "long"])
def test_timeout_stops_a_spinning_guest(kvm, mode):
    with pyhv.Partition(memory="16M") as part:
        boot(part, "spin", mode=mode)
        started = time.monotonic()
        with pytest.raises(pyhv.Timeout) as info:
            part.run(timeout=0.2)
        took = time.monotonic() - started
        assert 0.2 <= took < GENEROUS
        assert info.value.regs.rip == info.value.vcpu.regs.rip == 0x1000
        assert isinstance(info.value, TimeoutError)
        # the timer is disarmed: a later run without timeout can be canceled normally
        threading.Timer(0.1, part.stop).start()
        assert isinstance(part.run().exit, exits.Canceled)


def test_vcpu_run_timeout(part):
    cpu = boot(part, "spin")
    with pytest.raises(pyhv.Timeout):
        cpu.run(timeout=0.1)
    with pytest.raises(pyhv.InvalidArgument):
        cpu.run(timeout=0)
    with pytest.raises(pyhv.InvalidArgument):
        cpu.run(timeout="1")


def test_stop_from_another_thread(part):
    boot(part, "spin")
    threading.Timer(0.1, part.stop).start()
    started = time.monotonic()
    result = part.run(timeout=30)
    assert isinstance(result.exit, exits.Canceled)
    assert time.monotonic() - started < GENEROUS


def test_cancel_before_run_stops_the_next_run(part):
    cpu = boot(part, "io_in")
    cpu.cancel()
    assert isinstance(cpu.run(timeout=10), exits.Canceled)
    assert isinstance(cpu.run(timeout=10), exits.IoIn)    # the cancel was consumed


def test_ctrl_c_reaches_python_during_a_guest_run(part):
    boot(part, "spin")
    timer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        part.run(timeout=30)
    timer.join()


CTRL_C_CHILD = """
import sys
import pyhv
from pyhv.testing import assemble
with pyhv.Partition(memory="16M") as part:
    part.memory.write(0x1000, assemble("1: in $0x61, %al\\njmp 1b"))
    part.create_vcpu(mode="long", entry=0x1000)
    part.add_constant_port(0x61, 0)       # answered in C: the run never comes back to Python
    try:
        part.run(timeout=0.3)             # it runs: in C, between KVM_RUNs, most of the time
    except pyhv.Timeout as exc:
        assert exc.vcpu.stats.exits_in_c > 100, exc.vcpu.stats
    print("running", flush=True)
    try:
        part.run()
    except KeyboardInterrupt:
        print("interrupted", flush=True)
"""


def test_ctrl_c_between_two_guest_entries_is_not_lost():
    """A Ctrl-C that lands in the C run loop between KVM_RUNs (exits completed in C, no Python
    in between) still stops the run: it used to wait for an exit Python sees, here never.  The
    window is narrow (it was hit under load); test_native's Ctrl-C test checks the mark the C
    loop reads, deterministically."""
    for _ in range(6):
        child = subprocess.Popen([sys.executable, "-c", CTRL_C_CHILD], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        try:
            assert child.stdout.readline() == "running\n", child.stderr.read()
            time.sleep(0.2)
            child.send_signal(signal.SIGINT)
            out, err = child.communicate(timeout=30)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        assert out == "interrupted\n" and child.returncode == 0, err


def test_one_thread_at_a_time_per_vcpu(part):
    cpu = boot(part, "spin")
    errors = []

    def second():
        try:
            cpu.run(timeout=5)
        except pyhv.HypervisorError as exc:
            errors.append(exc)

    started = threading.Event()

    def first():
        started.set()
        try:
            cpu.run(timeout=0.5)
        except pyhv.Timeout:
            pass

    t1 = threading.Thread(target=first)
    t1.start()
    started.wait()
    time.sleep(0.1)
    second()
    t1.join()
    assert errors and "already running" in str(errors[0])


def test_run_needs_a_vcpu(part):
    with pytest.raises(pyhv.HypervisorError, match="create_vcpu"):
        part.run()


def test_run_refuses_a_vcpu_of_another_partition(part, kvm):
    with pyhv.Partition(memory="1M") as other:
        other.memory.write(0x1000, b"\xf4")
        foreign = other.create_vcpu(mode="real", entry=0x1000)
        with pytest.raises(pyhv.InvalidArgument):
            part.run(vcpu=foreign)


def test_timeouts_work_in_a_forked_child(part):
    """Regression: a forked child kept its parent's thread id and timer, so its run timeouts
    never fired."""
    part.memory.write(0x1000, b"\xf4")
    part.create_vcpu(mode="real", entry=0x1000).run(timeout=5)       # this thread's timer
    pid = os.fork()
    if pid == 0:                                                       # the child
        try:
            with pyhv.Partition(memory="1M") as child:
                child.memory.write(0x1000, b"\xeb\xfe")
                try:
                    child.create_vcpu(mode="real", entry=0x1000).run(timeout=0.2)
                except pyhv.Timeout:
                    os._exit(0)
            os._exit(2)
        except BaseException:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


# -- string IO of many elements per exit, whatever the host does (see test_exits.py) -------
def halting_vcpu(part: pyhv.Partition) -> pyhv.VCpu:
    part.memory.write(0x1000, b"\xf4")
    return part.create_vcpu(mode="long", entry=0x1000)


@pytest.mark.parametrize("size", [1, 2, 4])
def test_a_string_out_of_many_elements_reaches_the_handler_element_by_element(part, size):
    cpu = halting_vcpu(part)
    values = [(0x01020304 * (i + 1)) & ((1 << 8 * size) - 1) for i in range(12)]
    data = b"".join(v.to_bytes(size, "little") for v in values)
    seen = []
    part.add_io_handler(0x3F8, write=lambda port, size, value: seen.append((port, size, value)))
    native_vcpu(cpu).inject_record(records.io_record(records.OUT, 0x3F8, size, 12, data=data))
    result = part.run(timeout=10)
    assert result.halted and result.exits_handled == 1
    assert seen == [(0x3F8, size, v) for v in values]


def test_a_string_in_of_many_elements_asks_the_handler_for_each(part):
    cpu = halting_vcpu(part)
    fd = native_vcpu(cpu)
    answers = iter(range(0x1111, 0x7777, 0x1111))
    part.add_io_handler(0x60, read=lambda port, size: next(answers))
    fd.inject_record(records.io_record(records.IN, 0x60, 2, 6))
    assert part.run(timeout=10).halted
    fd.inject_record(records.io_record(records.OUT, 0x61, 2, 6))   # reads back the page
    assert cpu.run(timeout=10).data == b"".join(
        v.to_bytes(2, "little") for v in range(0x1111, 0x7777, 0x1111))
