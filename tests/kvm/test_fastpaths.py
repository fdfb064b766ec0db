"""Exits that never reach Python: buffered and constant ports, debug-exit, the kernel's
coalesced ring and ioeventfd doorbells; and the per-vCPU statistics that show it."""

from __future__ import annotations

import gc
import io
import select
import time

import pytest

import pyhv
from pyhv import exits
from pyhv.testing import assemble

from .. import records
from ..conftest import boot, fd_count, native_vcpu, run_in_background


@pytest.mark.parametrize("mode", ["real", "protected", "long"])
def test_serial_output_and_debug_exit_handled_in_c(kvm, mode):
    with pyhv.Partition(memory="16M") as part:
        cpu = boot(part, "serial_exit", mode=mode)
        out = io.BytesIO()
        part.add_buffered_port(0x3F8, out)
        part.add_constant_port(0x3FD, 0x60)
        part.add_debug_exit(0xF4)
        result = part.run(timeout=30)
        assert out.getvalue() == b"serial says hi\n"
        assert result.exit == exits.DebugExit(code=0x43, value=0x21, port=0xF4,
                                              rip=result.exit.rip)
        assert result.exits_handled == 0                  # Python handled nothing
        stats = cpu.stats
        assert stats.exits_in_c == 2 * 15 + 1 and stats.exits_to_python == 0
        assert stats.io_out == 16 and stats.io_in == 15
        assert stats.exits["KVM_EXIT_IO"] == 31 and stats.guest_seconds > 0


def test_vcpu_run_delivers_buffered_output_before_the_exit(part):
    cpu = boot(part, "serial_exit")
    chunks = []
    part.add_buffered_port(0x3F8, chunks.append)
    part.add_constant_port(0x3FD, 0x20)
    ex = cpu.run(timeout=30)                  # no debug-exit port: the OUT to 0xF4 returns
    assert isinstance(ex, exits.IoOut) and ex.port == 0xF4 and b"".join(chunks) == \
        b"serial says hi\n"


def test_large_output_is_delivered_in_chunks_in_order(part):
    part.memory.write(0x1000, pyhv.testing.assemble(
        "mov $0x3f8, %dx\nmov $20000, %ecx\nxor %eax, %eax\n"
        "1: out %al, %dx\ninc %eax\nloop 1b\nhlt"))
    cpu = part.create_vcpu(mode="long", entry=0x1000)
    chunks = []
    part.add_buffered_port(0x3F8, chunks.append)
    assert part.run(timeout=120).halted
    data = b"".join(chunks)
    assert data == bytes(i & 0xFF for i in range(20000)) and len(chunks) > 1
    assert cpu.stats.exits_in_c == 20000


def test_fast_port_conflicts_and_removal(part):
    cpu = boot(part, "serial_exit")
    part.add_io_handler(range(0x3F8, 0x3FD), write=lambda *a: None)
    with pytest.raises(pyhv.OverlapError):
        part.add_buffered_port(0x3F8, print)
    status = part.add_constant_port(0x3FD, 0x20)
    with pytest.raises(pyhv.OverlapError):
        part.add_debug_exit(0x3FD)
    with pytest.raises(pyhv.OverlapError):
        part.add_io_handler(0x3FD, read=lambda p, s: 0)
    with pytest.raises(pyhv.InvalidArgument):
        part.add_buffered_port(0x3F0, 42)
    with pytest.raises(pyhv.InvalidArgument):
        part.add_constant_port(0x3F0, 2**32)
    part.remove_handler(status)
    ex = cpu.run(timeout=30)
    assert isinstance(ex, exits.IoIn) and ex.port == 0x3FD     # no longer answered in C


def test_fast_ports_apply_to_vcpus_created_later(part):
    out = []
    part.add_buffered_port(0x3F8, out.append)
    part.add_constant_port(0x3FD, 0x20)
    part.add_debug_exit()
    boot(part, "serial_exit")
    assert isinstance(part.run(timeout=30).exit, exits.DebugExit)
    assert b"".join(out) == b"serial says hi\n"


def test_coalesced_mmio_and_pio_writes_arrive_in_bulk_and_in_order(part):
    cpu = boot(part, "coalesced")
    events = []
    part.add_coalesced_mmio(0xD0000000, 0x2000,
                            write=lambda gpa, size, value: events.append(("mmio", gpa, value)),
                            read=lambda gpa, size: events.append(("read", gpa, 0)) or 0)
    part.add_coalesced_io(0x500, write=lambda port, size, value: events.append(("pio", port,
                                                                                  value)))
    result = part.run(timeout=60)
    assert result.halted
    expected = [("mmio", 0xD0000000 + 4 * i, i) for i in range(100)]
    expected.append(("read", 0xD0001000, 0))
    expected += [("pio", 0x500, v) for v in (1, 2, 3)]
    assert events == expected
    # the MMIO writes never left the kernel: the one MMIO exit is the read
    assert cpu.stats.mmio_write == 0 and cpu.stats.mmio_read == 1


def test_doorbell_counts_writes_without_exits(part):
    cpu = boot(part, "doorbell")
    bell = part.add_doorbell(0x600, 4, io=True, value=7)
    other = part.add_doorbell(0x600, 4, io=True, value=9)
    assert bell.take() == 0
    assert part.run(timeout=60).halted
    assert select.select([bell], [], [], 0)[0] == [bell]
    assert bell.take() == 50 and other.take() == 1 and bell.take() == 0
    assert cpu.stats.io_out == 0                          # no OUT reached user space
    bell.close()
    bell.close()
    with pytest.raises(pyhv.ClosedError):
        bell.take()
    with pytest.raises(pyhv.InvalidArgument):
        part.add_doorbell(0x10000, 4, io=True)
    with pytest.raises(pyhv.InvalidArgument):
        part.add_doorbell(0x600, 3, io=True)
    with pytest.raises(pyhv.InvalidArgument):
        part.add_doorbell(0x600, 1, io=True, value=256)


def test_stats_reset_and_python_exits(part):
    cpu = boot(part, "io_in")
    part.add_io_handler(range(0x60, 0x62), read=lambda p, s: 0)
    part.add_io_handler(0xE9, write=lambda *a: None)
    part.run(timeout=10)
    stats = cpu.stats
    assert stats.exits_to_python == 6 and stats.exits_in_c == 0 and stats.runs == 6
    assert stats.exits == {"KVM_EXIT_IO": 5, "KVM_EXIT_HLT": 1}
    assert stats.host_seconds >= 0
    cpu.reset_stats()
    assert cpu.stats.runs == 0


def test_a_coalesced_zone_cannot_be_removed_under_a_running_vcpu(part):
    # writes queued in the ring for a zone removed mid-run had no handler left to go to
    part.memory.write(0x100000, assemble("mov $0xD0000000, %ebx\n1: movl $7, (%rbx)\njmp 1b",
                                         origin=0x100000))
    part.create_vcpu(mode="long", entry=0x100000)
    seen = []
    zone = part.add_coalesced_mmio(0xD0000000, 0x1000,
                                   write=lambda gpa, size, value: seen.append(value))
    runner, _ = run_in_background(part, lambda: pytest.raises(pyhv.Timeout, part.run, 1))
    with pytest.raises(pyhv.StateError):
        part.remove_handler(zone)
    runner.join(10)
    delivered = len(seen)
    part.remove_handler(zone)                 # quiet now: nothing queued is dropped
    assert delivered > 0 and set(seen) == {7} and len(seen) == delivered


def test_a_raising_sink_poisons_the_partition_when_it_loses_a_read(part):
    # the buffered OUT is delivered with the IN that follows it; the sink raises, so the IN
    # never gets its answer: running on would let the guest read garbage
    part.memory.write(0x100000, assemble("mov $0x3f8, %dx\nout %al, %dx\nin $0x60, %al\nhlt",
                                         origin=0x100000))
    cpu = part.create_vcpu(mode="long", entry=0x100000)

    def broken(data):
        raise OSError("disk full")

    part.add_buffered_port(0x3F8, broken)
    with pytest.raises(OSError):
        cpu.run(timeout=10)
    assert part.state == pyhv.PartitionState.POISONED
    with pytest.raises(pyhv.PoisonedError):
        cpu.run(timeout=10)


def test_buffered_output_arrives_while_the_guest_computes(part):
    # nothing exits after the byte: the C core's flush timer (50 ms) hands it over anyway
    part.memory.write(0x100000, assemble("mov $0x3f8, %dx\nmov $0x41, %al\nout %al, %dx\n"
                                         "jmp .", origin=0x100000))
    part.create_vcpu(mode="long", entry=0x100000)
    arrived = []
    started = time.monotonic()
    part.add_buffered_port(0x3F8, lambda data: arrived.append((data, time.monotonic())))
    with pytest.raises(pyhv.Timeout):
        part.run(timeout=3)
    assert arrived and arrived[0][0] == b"A" and arrived[0][1] - started < 1.5


def test_the_deadline_still_fires_after_an_early_flush_kick(part):
    # the flush timer is armed for the buffered byte, the byte goes out with the Python exit
    # that follows, and the timer kicks the run anyway: the deadline must be armed again
    part.memory.write(0x100000, assemble("mov $0x3f8, %dx\nout %al, %dx\nout %al, $0x80\n"
                                         "jmp .", origin=0x100000))
    part.create_vcpu(mode="long", entry=0x100000)
    part.add_buffered_port(0x3F8, lambda data: None)
    part.add_io_handler(0x80, write=lambda *args: None)
    started = time.monotonic()
    with pytest.raises(pyhv.Timeout):
        part.run(timeout=1)
    assert time.monotonic() - started < 10


def test_a_raising_sink_cannot_overflow_another_ports_buffer(kvm):
    """Regression: a sink that raised left the other buffered ports unemptied, and the next run
    overflowed their C buffers."""
    # OUTs alternate between two buffered ports; the first port's sink always raises
    with pyhv.Partition(memory="4M") as part:
        part.memory.write(0x100000, assemble(
            "1: mov $0x3f8, %dx\nout %al, %dx\nmov $0x2f8, %dx\nout %eax, %dx\njmp 1b",
            origin=0x100000))
        cpu = part.create_vcpu(mode="long", entry=0x100000)
        received = bytearray()

        def broken(data):
            raise OSError("sink broke")

        part.add_buffered_port(0x3F8, broken)
        part.add_buffered_port(0x2F8, received.extend)
        for _ in range(300):
            with pytest.raises(OSError):
                cpu.run(timeout=5)
        assert len(received) > 4 * 300       # the other port kept getting its bytes


def test_fast_ports_cannot_change_under_a_running_vcpu(part):
    """Regression: fast ports could be added and removed under a running vCPU, whose C run loop
    reads the port table."""
    part.memory.write(0x100000, assemble("jmp .", origin=0x100000))
    part.create_vcpu(mode="long", entry=0x100000)
    port = part.add_buffered_port(0x2F8, lambda data: None)
    runner, _ = run_in_background(part, lambda: pytest.raises(pyhv.Timeout, part.run, 2))
    with pytest.raises(pyhv.StateError):
        part.remove_handler(port)
    with pytest.raises(pyhv.StateError):
        part.add_constant_port(0x2FD, 0x60)
    runner.join()
    part.remove_handler(port)                 # fine once nothing runs


def test_doorbells_of_a_dropped_partition_are_closed(kvm):
    """Regression: a partition dropped without close() leaked its doorbells' eventfds."""
    pyhv.check()
    before = fd_count()
    for _ in range(10):
        part = pyhv.Partition(memory="1M")
        part.add_doorbell(0x600, 4, io=True)
        del part
    gc.collect()
    assert fd_count() == before


def test_debug_exit_code_of_a_large_value(part):
    """Regression: the debug-exit code (V << 1) | 1 of a 32-bit V overflowed."""
    part.memory.write(0x100000, assemble("mov $0x80000001, %eax\nout %eax, $0xf4",
                                         origin=0x100000))
    part.create_vcpu(mode="long", entry=0x100000)
    part.add_debug_exit()
    ex = part.run(timeout=10).exit
    assert ex.value == 0x80000001 and ex.code == 0x100000003


# -- many elements per exit through the fast ports, whatever the host does -----------------
# (kvm_pvm hands `rep outsb` over one byte per exit: records injected into a real vCPU make
# the multi-element exits hardware KVM makes; see tests/records.py)
def test_a_string_out_to_a_buffered_port_reaches_its_sink_whole_and_in_order(part):
    part.memory.write(0x1000, b"\xf4")
    cpu = part.create_vcpu(mode="long", entry=0x1000)
    chunks = []
    part.add_buffered_port(0x3F8, chunks.append)
    text = b"many bytes, one exit\n" * 100
    native_vcpu(cpu).inject_record(records.io_record(records.OUT, 0x3F8, 1, len(text),
                                                     data=text))
    assert part.run(timeout=10).halted
    assert b"".join(chunks) == text
    assert (cpu.stats.exits_in_c, cpu.stats.exits_to_python) == (1, 1)   # the OUT; the hlt


def test_a_string_in_from_a_constant_port_gets_the_constant_in_every_element(part):
    part.memory.write(0x1000, b"\xf4")
    cpu = part.create_vcpu(mode="long", entry=0x1000)
    fd = native_vcpu(cpu)
    part.add_constant_port(0x3FD, 0x60)
    fd.inject_record(records.io_record(records.IN, 0x3FD, 1, 9))
    assert isinstance(cpu.run(timeout=10), exits.Halt)        # answered in C on the way
    fd.inject_record(records.io_record(records.OUT, 0x80, 1, 9))    # reads back the page
    assert cpu.run(timeout=10).data == b"\x60" * 9
