"""Regressions for problems a review of pyhv found: each test failed (or crashed the process)
before its fix."""

from __future__ import annotations

import gc
import os
import struct
import threading
import time

import pytest

import pyhv
from pyhv import devices, exits
from pyhv.testing import assemble

from .conftest import fd_count, run_in_background


def test_a_raising_sink_cannot_overflow_another_ports_buffer(kvm):
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


def test_pause_resume_leaves_no_stray_cancel(kvm):
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
    with pyhv.Partition(memory="4M") as part:
        part.memory.write(0x100000, assemble("jmp .", origin=0x100000))
        part.create_vcpu(mode="long", entry=0x100000)
        runner, results = run_in_background(part, lambda: part.run(timeout=30))
        part.pause()
        part.stop()
        part.resume()
        runner.join(10)
        assert isinstance(results[0].exit, exits.Canceled)


def test_a_machine_end_in_run_all_leaves_no_cancel_behind(part):
    part.memory.write(0x100000, assemble("mov $1, %al\nout %al, $0xf4", origin=0x100000))
    cpu = part.create_vcpu(mode="long", entry=0x100000)
    part.add_debug_exit()
    assert isinstance(part.run_all(timeout=10)[0].exit, exits.DebugExit)
    cpu.regs.rip = 0x100000
    assert isinstance(part.run(timeout=10).exit, exits.DebugExit)     # not Canceled


def test_timeouts_work_in_a_forked_child(part):
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


def test_a_closed_vcpu_leaves_the_partition(part):
    part.memory.write(0x1000, b"\xf4")
    first = part.create_vcpu(mode="real", entry=0x1000)
    second = part.create_vcpu(mode="real", entry=0x1000)
    first.close()
    assert part.vcpus == (second,)
    part.snapshot()                           # no ClosedError from the closed one
    part.stop()


def test_doorbells_of_a_dropped_partition_are_closed(kvm):
    pyhv.check()
    before = fd_count()
    for _ in range(10):
        part = pyhv.Partition(memory="1M")
        part.add_doorbell(0x600, 4, io=True)
        del part
    gc.collect()
    assert fd_count() == before


def test_hardening_and_device_state_survive_snapshots(kvm):
    with pyhv.Partition(memory="4M", hardened=True) as part:
        part.memory.write(0x1000, b"\xf4")
        part.create_vcpu(mode="long", entry=0x1000)
        rtc = part.attach(devices.Rtc())
        rtc.cmos[0x40] = 0x5A
        template = part.snapshot()
    assert template.hardened
    with pyhv.PartitionPool(template, size=1, setup=lambda p: p.attach(devices.Rtc())) as pool:
        with pool.lease() as guest:
            assert guest.hardened and guest.devices["rtc"].cmos[0x40] == 0x5A


def test_debug_exit_code_of_a_large_value(part):
    part.memory.write(0x100000, assemble("mov $0x80000001, %eax\nout %eax, $0xf4",
                                         origin=0x100000))
    part.create_vcpu(mode="long", entry=0x100000)
    part.add_debug_exit()
    ex = part.run(timeout=10).exit
    assert ex.value == 0x80000001 and ex.code == 0x100000003


def test_snapshot_file_claiming_a_huge_slot_is_refused(part, tmp_path):
    import hashlib
    import json
    part.memory.write(0x1000, b"\xf4")
    part.create_vcpu(mode="long", entry=0x1000)
    part.snapshot().save(tmp_path / "s")
    raw = (tmp_path / "s").read_bytes()
    length = struct.unpack_from("<I", raw, 12)[0]
    header = json.loads(raw[16:16 + length])
    header["slots"][0]["size"] = 1 << 50
    blob = json.dumps(header).encode()
    body = raw[:12] + struct.pack("<I", len(blob)) + blob + raw[16 + length:-32]
    (tmp_path / "huge").write_bytes(body + hashlib.sha256(body).digest())
    with pytest.raises(pyhv.SnapshotFormatError, match="implausible slot"):
        pyhv.Snapshot.load(tmp_path / "huge")


def test_loaders_check_the_boot_data_area_before_writing(kvm, tmp_path):
    from pyhv.loaders.samples import sample_images
    with pyhv.Partition() as part:             # RAM only from 1 MiB: no boot data area
        part.map_memory(0x100000, 0x4000000)
        part.memory.fill(0x100000, 0x4000000, 0xA5)    # so zeros written would show too
        pristine = part.memory.read(0x100000, 0x4000000)   # all RAM: linux/pvh load at 16 MiB
        for fmt in ("multiboot", "linux", "pvh"):
            with pytest.raises(pyhv.ImageFormatError, match="boot data area"):
                pyhv.loaders.load(part, sample_images()[fmt], "linux" if fmt == "pvh" else fmt)
            assert part.memory.read(0x100000, 0x4000000) == pristine, fmt


@pytest.mark.parametrize("fifo", [False, True], ids=["no-fifo", "fifo"])
def test_uart_loopback_is_bounded_by_its_fifo(part, fifo):
    # 100000 bytes looped back, none read: a 16550A holds 1 (FIFOs off) or 16 (FIFOs on)
    uart = part.attach(devices.Uart16550())
    enable_fifo = "mov $0x3fa, %dx\nmov $0x01, %al\nout %al, %dx\n" if fifo else ""
    part.memory.write(0x100000, assemble(
        enable_fifo + "mov $0x3fc, %dx\nmov $0x10, %al\nout %al, %dx\nmov $0x3f8, %dx\n"
        "mov $100000, %ecx\n1: out %al, %dx\nloop 1b\nhlt", origin=0x100000))
    part.create_vcpu(mode="long", entry=0x100000)
    assert part.run(timeout=120).halted
    assert len(uart.rx) <= 16
    assert len(uart.rx) == (16 if fifo else 1)
