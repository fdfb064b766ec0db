"""The vCPU's debug API on the real /dev/kvm: set_guest_debug and the Debug exits it brings,
translate (KVM_TRANSLATE and the Python page walk agreeing in every mode, mappings built
here included), and the run loop's debugger seam."""

from __future__ import annotations

import struct

import pytest

import pyhv
from pyhv import HardwareBreakpoint, exits
from pyhv.gdb.probe import debug_support
from pyhv.testing import assemble

NOPS = bytes.fromhex("90 90 90 f4")


def test_single_step_and_a_hardware_breakpoint(part):
    part.memory.write(0x1000, NOPS)
    cpu = part.create_vcpu(mode="long", entry=0x1000)
    cpu.set_guest_debug(single_step=True)
    step = cpu.run(timeout=5)
    assert (step.reason, step.pc) == ("step", 0x1001)
    cpu.set_guest_debug(hardware=[None, HardwareBreakpoint(0x1003)])
    hit = cpu.run(timeout=5)
    assert (hit.reason, hit.pc, hit.hits, hit.address, hit.access) == (
        "breakpoint", 0x1003, (1,), 0x1003, "execute")
    assert cpu.guest_debug.hardware[1] == HardwareBreakpoint(0x1003)
    cpu.set_guest_debug()
    assert cpu.run(timeout=5) == exits.Halt(rip=0x1004)
    assert part.state is pyhv.PartitionState.STOPPED          # Debug exits poison nothing


def test_a_debug_exit_ends_a_handler_driven_run_cleanly(part):
    part.memory.write(0x1000, NOPS)
    cpu = part.create_vcpu(mode="long", entry=0x1000)
    cpu.set_guest_debug(hardware=[HardwareBreakpoint(0x1002)])
    result = part.run(timeout=5)
    assert isinstance(result.exit, exits.Debug) and result.exit.pc == 0x1002
    cpu.set_guest_debug()
    assert part.run(timeout=5).halted


def test_write_watchpoints_where_the_backend_delivers_them(part):
    part.memory.write(0x1000, assemble("movl $1, 0x3000\nhlt"))
    cpu = part.create_vcpu(mode="long", entry=0x1000)
    cpu.set_guest_debug(hardware=[HardwareBreakpoint(0x3000, "write", 4)])
    exit = cpu.run(timeout=5)
    if debug_support().write_watchpoints:
        assert (exit.reason, exit.address, exit.access) == ("watchpoint", 0x3000, "write")
    else:                                                     # kvm_pvm: not delivered
        assert isinstance(exit, exits.Halt)


@pytest.mark.parametrize("kwargs", [{"hardware": [HardwareBreakpoint(0)] * 5},
                                    {"hardware": [0x1000]}])
def test_bad_settings_change_nothing(part, kwargs):
    cpu = part.create_vcpu(mode="long", entry=0x1000)
    cpu.set_guest_debug(single_step=True)
    with pytest.raises(pyhv.InvalidArgument):
        cpu.set_guest_debug(**kwargs)
    assert cpu.guest_debug.single_step


@pytest.mark.parametrize("mode", ["real", "protected", "long", "user"])
def test_translate_agrees_with_the_page_walk_in_every_mode(part, mode):
    entry = 0x100000 if mode == "user" else 0x1000
    part.memory.write(entry, b"\xf4")
    cpu = part.create_vcpu(mode=mode, entry=entry)
    for gva in (0, 0x1234, 0x7FF000, 0xFFFFF):
        assert cpu.translate(gva, method="kvm") == cpu.translate(gva, method="walk") == gva
    beyond = 0x0000_7000_0000_0000
    if mode in ("long", "user"):
        assert cpu.translate(beyond) is None and cpu.walk(beyond) is None
    with pytest.raises(pyhv.InvalidArgument):
        cpu.translate(-1)
    with pytest.raises(pyhv.InvalidArgument):
        cpu.translate(0, method="guess")


def _higher_half_tables(part: pyhv.Partition, root: int) -> None:
    """4-level tables mapping the low 2 MiB at 0 and 0xffffffff80000000 -> 0x200000."""
    def put(gpa: int, value: int) -> None:
        part.memory.write(gpa, struct.pack("<Q", value))
    put(root, (root + 0x1000) | 3)                      # PML4[0]
    put(root + 0x1000, (root + 0x2000) | 3)              # PDPT[0]
    put(root + 0x2000, 0x0 | 0x83)                       # PD[0]: 2 MiB at 0
    put(root + 511 * 8, (root + 0x3000) | 3)             # PML4[511]
    put(root + 0x3000 + 510 * 8, (root + 0x4000) | 3)    # PDPT[510]
    put(root + 0x4000, (root + 0x5000) | 3)              # PD[0]
    put(root + 0x5000 + 5 * 8, 0x205000 | 3)             # PT[5] -> 0x205000


def test_translate_follows_a_guest_s_own_page_tables(part):
    part.memory.write(0x1000, b"\xf4")
    cpu = part.create_vcpu(mode="long", entry=0x1000)
    root = 0x400000
    _higher_half_tables(part, root)
    cpu.sregs.cr3 = root
    va = 0xFFFFFFFF80005123
    assert cpu.translate(va, method="kvm") == cpu.translate(va, method="walk") == 0x205123
    assert cpu.translate(va + 0x1000) is None and cpu.walk(va + 0x1000) is None
    assert cpu.walk(0x1000).page_size == 2 << 20


ENABLE_PAGING = """
    mov $0x10000, %eax
    mov %eax, %cr3
    mov %cr4, %eax
    or $CR4_BITS, %eax
    mov %eax, %cr4
    mov %cr0, %eax
    or $0x80000000, %eax
    mov %eax, %cr0
    jmp 1f
1:  mov 0x40002345, %eax
    hlt
"""


@pytest.mark.parametrize("paging", ["32-bit", "pae"])
def test_32_bit_and_pae_paging_agree_with_kvm(part, paging):
    """A protected-mode guest turns paging on itself; then KVM and the walk must agree."""
    pae = paging == "pae"
    code = ENABLE_PAGING.replace("CR4_BITS", "0x20" if pae else "0x10")
    part.memory.write(0x1000, assemble(code, bits=32))
    if pae:   # PDPT at 0x10000: 0-1 GiB through a 2 MiB identity page, 1-2 GiB a table
        part.memory.write(0x10000, struct.pack("<QQ", 0x12000 | 1, 0x13000 | 1))
        part.memory.write(0x12000, struct.pack("<Q", 0x83))
        part.memory.write(0x13000, struct.pack("<Q", 0x11000 | 3))
        part.memory.write(0x11000 + 2 * 8, struct.pack("<Q", 0x5000 | 3))
    else:     # a directory at 0x10000: a 4 MiB identity page, a table for 0x40000000
        part.memory.write(0x10000, struct.pack("<I", 0x83))
        part.memory.write(0x10000 + (0x40000000 >> 22) * 4, struct.pack("<I", 0x11000 | 3))
        part.memory.write(0x11000 + 2 * 4, struct.pack("<I", 0x5000 | 3))
    part.memory.write(0x5345, b"ABCD")
    cpu = part.create_vcpu(mode="protected", entry=0x1000)
    exit = cpu.run(timeout=5)
    if isinstance(exit, exits.Shutdown) and pyhv.check().backend == "kvm_pvm":
        pytest.skip("kvm_pvm cannot run a 32-bit guest with paging on (its mov to CR0 "
                    "triple-faults); tests/unit/test_x86_paging.py covers these walks")
    assert isinstance(exit, exits.Halt) and cpu.regs.rax == 0x44434241
    for gva, gpa in ((0x40002345, 0x5345), (0x1000, 0x1000), (0x40003000, None)):
        assert cpu.translate(gva, method="kvm") == cpu.translate(gva, method="walk") == gpa


class Recorder:
    """A debugger that takes every Debug exit it sees once."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def starting(self, vcpu) -> None:
        self.calls.append("starting")

    def intercept(self, vcpu, exit) -> bool:
        self.calls.append(type(exit).__name__)
        if isinstance(exit, exits.Debug):
            vcpu.set_guest_debug()
            return True
        return False

    def ended(self, vcpu, exit) -> None:
        self.calls.append(f"ended {type(exit).__name__}")


def test_the_debugger_seam_sees_runs_and_takes_exits(part):
    part.memory.write(0x1000, NOPS)
    cpu = part.create_vcpu(mode="long", entry=0x1000)
    recorder = Recorder()
    cpu.attach_debugger(recorder)
    cpu.set_guest_debug(single_step=True)
    assert part.run(timeout=5).halted                  # the step was taken, not returned
    assert recorder.calls == ["starting", "Debug", "Halt", "ended Halt"]
    cpu.attach_debugger(None)
    assert cpu.debugger is None
