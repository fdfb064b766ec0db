"""Stateful corners a new user met: firmware layouts, handlers that could never fire,
closed partitions, stub exits in handler-driven runs, one vCPU's unhandled exit under
run_all."""

from __future__ import annotations

import time

import pytest

import pyhv
from pyhv import exits
from pyhv.testing import assemble


def test_a_16m_rom_can_end_at_4g_and_a_vcpu_start_at_the_reset_vector(kvm):
    # firmware layout: a ROM whose last bytes hold the reset vector, as on a PC
    with pyhv.Partition(memory="1M") as part:
        rom = part.map_memory(0xFF000000, "16M", readonly=True)
        # at 0xFFFFFFF0: mov $0x2a, %ax; hlt  (real mode, CS base 0xFFFF0000)
        part.memory.write(0xFFFFFFF0, assemble("mov $0x2a, %ax\nhlt", bits=16))
        cpu = part.create_vcpu(mode="real", entry=0xFFFFFFF0, stack=0x7000)
        assert cpu.sregs.cs.base == 0xFFFF0000 and cpu.sregs.cs.selector == 0xF000
        assert cpu.regs.rip == 0xFFF0
        ex = cpu.run(timeout=10)
        assert isinstance(ex, exits.Halt) and cpu.regs.rax & 0xFFFF == 0x2A
        assert rom.end == 1 << 32


def test_the_kvm_tss_pages_can_be_moved_and_are_refused_to_slots(kvm):
    with pyhv.Partition(memory="1M", kvm_tss=0xE0000000) as part:
        with pytest.raises(pyhv.SlotOverlapError, match="kvm_tss"):
            part.map_memory(0xE0000000, 0x1000)
        part.map_memory(0xFEFFC000, 0x4000)          # the default place is free now
    with pytest.raises(pyhv.InvalidArgument):
        pyhv.Partition(memory="1M", kvm_tss=0xE0000001)


def test_mmio_handlers_over_ram_are_refused_both_ways(part):
    with pytest.raises(pyhv.OverlapError, match="RAM"):
        part.add_mmio_handler(0x1000, 0x100, read=lambda gpa, size: 0)
    rom = part.map_memory(0x2000000, 0x1000, readonly=True)
    with pytest.raises(pyhv.OverlapError, match="ROM"):
        part.add_mmio_handler(rom.gpa, 0x100, read=lambda gpa, size: 0)
    writes = part.add_mmio_handler(rom.gpa, 0x100, write=lambda gpa, size, value: None)
    assert writes.space == "mmio"
    part.add_mmio_handler(0xD0000000, 0x1000, read=lambda gpa, size: 0)
    with pytest.raises(pyhv.SlotOverlapError, match="hide"):
        part.map_memory(0xD0000000, 0x1000)
    with pytest.raises(pyhv.SlotOverlapError, match="hide"):
        part.map_memory(0xD0000000, 0x1000, readonly=True)


def test_exception_handler_serves_guest_exceptions_in_a_handler_driven_run(part):
    # a user-mode payload that faults twice (a #PF and a #UD), each resumed past the
    # faulting instruction by the handler, then makes a syscall that ends the run
    code = assemble("movq (0x7ff000000000), %rax\nud2\nmov $60, %eax\nsyscall",
                    origin=0x100000)
    part.memory.write(0x100000, code)
    part.create_vcpu(mode="user", entry=0x100000, stack=0x200000)
    seen = []

    def on_exception(ex: exits.GuestException) -> None:
        seen.append((ex.vector, ex.cr2))
        length = 8 if ex.vector == 14 else 2     # movq moffs64 is 10 bytes; ud2 is 2
        ex.resume_at(ex.rip + (10 if ex.vector == 14 else length))

    part.set_exception_handler(on_exception)
    part.set_syscall_handler(lambda nr, args: None)       # end the run on the syscall
    result = part.run(timeout=10)
    assert isinstance(result.exit, exits.Syscall) and result.exit.nr == 60
    assert seen == [(14, 0x7FF000000000), (6, None)]
    assert part.state is pyhv.PartitionState.STOPPED


def test_an_exception_handler_that_raises_stops_and_poisons(part):
    part.memory.write(0x100000, assemble("ud2", origin=0x100000))
    part.create_vcpu(mode="user", entry=0x100000, stack=0x200000)

    def refuse(ex):
        raise RuntimeError(f"no {ex.name}")

    part.set_exception_handler(refuse)
    with pytest.raises(RuntimeError, match="#UD"):
        part.run(timeout=10)
    assert part.state is pyhv.PartitionState.POISONED


def test_run_all_stops_every_vcpu_when_one_ends_on_an_exit_nobody_handles(kvm):
    with pyhv.Partition(memory="16M") as part:
        part.memory.write(0x1000, assemble("mov $0x77, %dx\nout %al, %dx\nhlt", origin=0x1000))
        part.memory.write(0x2000, assemble("1: jmp 1b", origin=0x2000))
        first = part.create_vcpu(mode="long", entry=0x1000, stack=0x70000)
        part.create_vcpu(mode="long", entry=0x2000, stack=0x60000)
        began = time.monotonic()
        results = part.run_all()                       # no timeout: it used to hang
        assert time.monotonic() - began < 5
        assert isinstance(results[0].exit, exits.IoOut) and results[0].vcpu is first
        assert isinstance(results[1].exit, exits.Canceled)
        assert part.state is pyhv.PartitionState.POISONED


def test_a_second_complete_raises_instead_of_replacing_the_answer(part):
    part.memory.write(0x1000, assemble("in $0x60, %al\nout %al, $0x61\nhlt", origin=0x1000))
    cpu = part.create_vcpu(mode="long", entry=0x1000)
    ex = cpu.run(timeout=10)
    assert isinstance(ex, exits.IoIn)
    ex.complete(0x42)
    with pytest.raises(pyhv.StaleExitError, match="answered already"):
        ex.complete(0x43)
    out = cpu.run(timeout=10)
    assert isinstance(out, exits.IoOut) and out.value == 0x42


def test_a_snapshot_refuses_while_an_exit_waits_for_its_answer(part, tmp_path):
    part.memory.write(0x1000, assemble("in $0x60, %al\nout %al, $0x61\nhlt", origin=0x1000))
    cpu = part.create_vcpu(mode="long", entry=0x1000)
    ex = cpu.run(timeout=10)
    assert cpu.awaiting_answer is ex
    with pytest.raises(pyhv.StateError, match="IoIn"):
        part.snapshot()
    ex.complete(0x42)                     # still answerable: nothing answered it for us
    assert cpu.awaiting_answer is None
    snap = part.snapshot()
    out = cpu.run(timeout=10)
    assert isinstance(out, exits.IoOut) and out.value == 0x42
    part.restore(snap)                    # the answer is part of the snapshot
    out = cpu.run(timeout=10)
    assert isinstance(out, exits.IoOut) and out.value == 0x42


def test_fetching_code_outside_guest_ram_says_so(part):
    # mov $0x40000000, %rax; jmp *%rax -- mapped by pyhv's page tables, but no slot there
    part.memory.write(0x1000, bytes.fromhex("48 b8 00 00 00 40 00 00 00 00 ff e0"))
    cpu = part.create_vcpu(mode="long", entry=0x1000)
    ex = cpu.run(timeout=10)
    assert isinstance(ex, exits.InternalError) and ex.rip == 0x40000000
    assert "RIP is not in guest RAM" in ex.message and "could not emulate" not in ex.message


def test_pyhv_logs_under_its_own_logger(part, caplog):
    import logging
    caplog.set_level(logging.DEBUG, logger="pyhv")
    part.memory.write(0x1000, bytes.fromhex("0f 0b"))           # ud2 at CPL0, no IDT
    cpu = part.create_vcpu(mode="long", entry=0x1000)
    assert any("vCPU 0 created" in r.getMessage() for r in caplog.records)
    cpu.run(timeout=10)                                          # a triple fault: poisoned
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings and "poisoned" in warnings[0].getMessage()


def test_every_operation_on_a_closed_partition_or_vcpu_is_a_closed_error(kvm):
    part = pyhv.Partition(memory="2M")
    slot = part.memory.slots[0]
    part.memory.write(0x1000, b"\xf4")
    cpu = part.create_vcpu(mode="long", entry=0x1000)
    snap = part.snapshot()
    part.close()
    refused = {
        "memory.read": lambda: part.memory.read(0, 1),
        "memory.write": lambda: part.memory.write(0, b"x"),
        "memory.fill": lambda: part.memory.fill(0, 1),
        "map_memory": lambda: part.map_memory(0x400000, 0x1000),
        "unmap_memory": lambda: part.unmap_memory(slot),
        "dirty_pages": lambda: part.dirty_pages(slot),
        "create_vcpu": lambda: part.create_vcpu(mode="real", entry=0x1000),
        "add_io_handler": lambda: part.add_io_handler(0x60, read=lambda p, s: 0),
        "add_mmio_handler": lambda: part.add_mmio_handler(0xD0000000, 4, read=lambda a, s: 0),
        "add_buffered_port": lambda: part.add_buffered_port(0x3F8, print),
        "add_debug_exit": lambda: part.add_debug_exit(),
        "add_doorbell": lambda: part.add_doorbell(0x600, io=True),
        "attach": lambda: part.attach(pyhv.devices.Rtc()),
        "set_irq": lambda: pyhv.Partition.set_irq(part, 4, True),
        "snapshot": part.snapshot,
        "restore": lambda: part.restore(snap),
        "pause": part.pause,
        "run": part.run,
        "run_all": part.run_all,
        "cpu.run": cpu.run,
        "cpu.regs": lambda: cpu.regs.rax,
        "cpu.sregs": lambda: cpu.sregs.cr0,
        "cpu.get_msrs": lambda: cpu.get_msrs([0x10]),
        "cpu.cancel": cpu.cancel,
        "cpu.stats": lambda: cpu.stats,
    }
    wrong = {}
    for name, operation in refused.items():
        try:
            operation()
        except pyhv.ClosedError:
            continue
        except Exception as exc:                 # noqa: BLE001 - reported below
            wrong[name] = repr(exc)
        else:
            wrong[name] = "no error"
    assert not wrong, wrong
    part.close()                                  # still idempotent
    cpu.close()


def test_ctrl_c_during_a_long_command_exits_130_without_a_traceback(kvm):
    import signal
    import subprocess
    import sys
    proc = subprocess.Popen([sys.executable, "-m", "pyhv", "stress", "fuzz", "--count",
                             "1000000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        time.sleep(3)                              # well into the fuzz loop
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:                    # left running, it would fuzz for hours
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, (proc.returncode, err)
    assert "Traceback" not in err and "interrupted" in err
