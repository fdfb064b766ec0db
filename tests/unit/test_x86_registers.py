"""Register values (pyhv.x86.registers): to_u64, the frozen dataclasses and their hex reprs,
and the live views over a register file (here a dict standing in for the kernel's vCPU)."""

from __future__ import annotations

import dataclasses

import pytest

from pyhv import DescriptorTable, Fpu, InvalidArgument, Regs, Segment, SpecialRegs
from pyhv.x86.registers import GENERAL_REGISTERS, Registers, SpecialRegisters, to_u64


@pytest.mark.parametrize("value, stored", [(0, 0), (1, 1), (-1, 2**64 - 1),
                                           (2**64 - 1, 2**64 - 1), (-(2**63), 2**63)])
def test_to_u64_accepts_64_bit_values_and_wraps_negative_ones(value, stored):
    assert to_u64("rax", value) == stored


@pytest.mark.parametrize("value, match", [
    (2**64, "rax=0x10000000000000000 does not fit in 64 bits"),
    (-(2**63) - 1, "does not fit in 64 bits"),
    (True, "rax must be an int, not bool"),
    (1.5, "rax must be an int, not float"),
    ("1", "rax must be an int, not str"),
    (None, "rax must be an int, not NoneType"),
])
def test_to_u64_refuses(value, match):
    with pytest.raises(InvalidArgument, match=match):
        to_u64("rax", value)


def test_regs_defaults_and_repr_in_hex():
    regs = Regs(rax=7, rip=0x1000, r15=2**64 - 1)
    assert dataclasses.astuple(Regs()) == (0,) * 17 + (2,)        # rflags: bit 1 is fixed
    assert tuple(f.name for f in dataclasses.fields(Regs)) == GENERAL_REGISTERS
    assert repr(regs) == (
        "Regs(rax=7, rbx=0, rcx=0, rdx=0, rsi=0, rdi=0, rsp=0, rbp=0, r8=0, r9=0, r10=0, "
        "r11=0, r12=0, r13=0, r14=0, r15=0xffffffffffffffff, rip=0x1000, rflags=2)")
    with pytest.raises(dataclasses.FrozenInstanceError):
        regs.rax = 1


def test_segment_and_table_reprs_show_what_matters_in_hex():
    assert repr(Segment()) == ("Segment(base=0, limit=0xffff, selector=0, type=3, present=1, "
                               "s=1)")
    assert repr(Segment(base=0xFFFF0000, selector=0xF000, type=0xB, dpl=3, l=1)) == (
        "Segment(base=0xffff0000, limit=0xffff, selector=0xf000, type=0xb, present=1, dpl=3, "
        "s=1, l=1)")
    assert repr(DescriptorTable(0x80000, 0x137)) == "DescriptorTable(base=0x80000, limit=0x137)"


def test_special_regs_repr_lists_segments_tables_and_control_registers():
    sregs = SpecialRegs(*[Segment()] * 8, DescriptorTable(), DescriptorTable(0x1000, 0xFFF),
                        cr0=0x80000011, cr2=0, cr3=0x86000, cr4=0x20, cr8=0, efer=0x500,
                        apic_base=0xFEE00900)
    text = repr(sregs)
    assert text.startswith("SpecialRegs(cs=Segment(base=0, limit=0xffff")
    for part in ("idt=DescriptorTable(base=0x1000, limit=0xfff)", "cr0=0x80000011", "cr2=0",
                 "cr3=0x86000", "cr4=0x20", "efer=0x500", "apic_base=0xfee00900"):
        assert part in text
    assert "interrupt_bitmap" not in text                       # the default is left out


def fpu(**changes):
    values = dict(fpr=(bytes(16),) * 8, fcw=0x37F, fsw=0, ftwx=0, last_opcode=0, last_ip=0,
                  last_dp=0, xmm=(bytes(16),) * 16, mxcsr=0x1F80)
    values.update(changes)
    return Fpu(**values)


@pytest.mark.parametrize("changes, match", [
    (dict(fpr=(bytes(16),) * 7), "8 fpr and 16 xmm"),
    (dict(xmm=(bytes(16),) * 17), "8 fpr and 16 xmm"),
    (dict(xmm=(bytes(16),) * 15 + (bytes(15),)), r"xmm\[15\] must be 16 bytes"),
    (dict(fpr=("x" * 16,) + (bytes(16),) * 7), r"fpr\[0\] must be 16 bytes"),
])
def test_fpu_refuses_malformed_registers(changes, match):
    with pytest.raises(InvalidArgument, match=match):
        fpu(**changes)


def test_fpu_accepts_bytearrays():
    assert fpu(xmm=(bytearray(16),) * 16).mxcsr == 0x1F80


class FakeRegisterFile:
    """Stands in for a vCPU (the kernel's registers): a dict, and a log of calls."""

    def __init__(self) -> None:
        self.general = dict(Regs().__dict__)
        self.sregs = SpecialRegs(*[Segment()] * 8, DescriptorTable(), DescriptorTable(),
                                 cr0=0x10, cr2=0, cr3=0, cr4=0, cr8=0, efer=0, apic_base=0)
        self.writes: list[dict[str, int]] = []

    def read_register(self, name):
        return self.general[name]

    def read_registers(self):
        return Regs(**self.general)

    def write_registers(self, values):
        self.writes.append(dict(values))
        self.general.update(values)

    def get_sregs(self):
        return self.sregs

    def set_sregs(self, sregs):
        self.sregs = sregs


def test_the_general_register_view_reads_and_writes_checked_values():
    file = FakeRegisterFile()
    regs = Registers(file)
    regs.rax = -1
    assert file.general["rax"] == 2**64 - 1 and regs.rax == 2**64 - 1
    regs.update(rip=0x1000, rsp=0x8000)
    assert file.writes[-1] == {"rip": 0x1000, "rsp": 0x8000}       # one write for both
    assert regs.snapshot() == Regs(rax=2**64 - 1, rip=0x1000, rsp=0x8000)
    regs.load(Regs(rbx=5))
    assert len(file.writes[-1]) == 18 and file.general["rax"] == 0 and regs.rbx == 5
    assert repr(regs).startswith("Registers(rax=0, rbx=5,")
    with pytest.raises(InvalidArgument):
        regs.rcx = 2**64
    with pytest.raises(AttributeError, match="no general register named 'eax'"):
        regs.eax
    with pytest.raises(AttributeError, match="'eax'"):
        regs.eax = 1
    with pytest.raises(AttributeError, match="'xyz'"):
        regs.update(rax=1, xyz=2)
    assert file.general["rcx"] == 0 and file.general["rax"] == 0   # refused writes: nothing


def test_the_special_register_view_checks_types_and_writes_back():
    file = FakeRegisterFile()
    sregs = SpecialRegisters(file)
    sregs.cr0 = 0x80000011
    sregs.cs = Segment(selector=0x10, type=0xB, l=1)
    sregs.gdt = DescriptorTable(0x80000, 0x137)
    assert file.sregs.cr0 == 0x80000011 and file.sregs.cs.selector == 0x10
    assert sregs.gdt == DescriptorTable(0x80000, 0x137) and sregs.snapshot() is file.sregs
    with pytest.raises(InvalidArgument, match="cs takes a pyhv.Segment, not int"):
        sregs.cs = 0x10
    with pytest.raises(InvalidArgument, match="gdt takes a pyhv.DescriptorTable"):
        sregs.gdt = Segment()
    with pytest.raises(InvalidArgument):
        sregs.cr4 = -(2**64)
    with pytest.raises(AttributeError, match="no special register named 'cr5'"):
        sregs.cr5 = 0
    assert file.sregs.cs.selector == 0x10 and file.sregs.cr4 == 0
