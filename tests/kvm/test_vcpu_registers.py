"""Register state: general, special, FPU, MSRs and CPUID, round-tripped through real guests."""

from __future__ import annotations

import dataclasses

import pytest

import pyhv
from pyhv import exits
from pyhv.x86.registers import GENERAL_REGISTERS

from ..conftest import boot

CHANGED_BY_GUEST = [n for n in GENERAL_REGISTERS if n not in ("rsp", "rip", "rflags")]


def test_general_registers_round_trip_through_the_guest(part):
    cpu = boot(part, "regs")
    assert isinstance(cpu.run(timeout=10), exits.Halt)
    values = {name: 0x1111_0000_0000_0000 * (i % 15 + 1) + i for i, name in
              enumerate(CHANGED_BY_GUEST)}
    cpu.regs.update(**values)
    assert {n: getattr(cpu.regs, n) for n in values} == values   # read back before running
    assert isinstance(cpu.run(timeout=10), exits.Halt)
    after = cpu.regs.snapshot()
    for name, value in values.items():
        assert getattr(after, name) == (value + 1) & (2**64 - 1), name


def test_single_register_attribute_access(part):
    cpu = boot(part, "regs")
    cpu.regs.rax = 7
    cpu.regs.r15 = -1                       # wraps like the CPU stores it
    assert cpu.regs.rax == 7 and cpu.regs.r15 == 2**64 - 1
    assert cpu.run(timeout=10) == exits.Halt(rip=0x1001)
    assert cpu.regs.rax == 7                # hlt kept it
    cpu.run(timeout=10)
    assert cpu.regs.rax == 8 and cpu.regs.r15 == 0


def test_snapshot_and_load(part):
    cpu = boot(part, "regs")
    snap = cpu.regs.snapshot()
    assert snap.rip == 0x1000 and snap.rflags & 2
    cpu.regs.load(dataclasses.replace(snap, rbx=99))
    assert cpu.regs.rbx == 99 and cpu.regs.rip == 0x1000
    assert "Registers(rax=" in repr(cpu.regs)


@pytest.mark.parametrize("bad", [2**64, -(2**63) - 1, "1", 1.5, True])
def test_bad_register_values_are_refused(part, bad):
    cpu = boot(part, "regs")
    with pytest.raises(pyhv.InvalidArgument):
        cpu.regs.rax = bad
    assert cpu.regs.rax == 0


def test_unknown_register_names(part):
    cpu = boot(part, "regs")
    with pytest.raises(AttributeError):
        cpu.regs.eax
    with pytest.raises(AttributeError):
        cpu.regs.update(xyz=1)
    with pytest.raises(AttributeError):
        cpu.sregs.cr9


def test_special_registers_round_trip(part):
    cpu = boot(part, "regs")
    sregs = cpu.get_sregs()
    cpu.sregs.cr2 = 0xDEAD000
    cpu.sregs.fs = dataclasses.replace(sregs.fs, base=0x12345000)
    after = cpu.get_sregs()
    assert after.cr2 == 0xDEAD000 and after.fs.base == 0x12345000
    assert after.cs == sregs.cs and after.cr3 == sregs.cr3
    assert isinstance(cpu.run(timeout=10), exits.Halt)      # still a valid long-mode state
    assert cpu.sregs.fs.base == 0x12345000
    with pytest.raises(pyhv.InvalidArgument):
        cpu.sregs.cs = 5
    with pytest.raises(pyhv.InvalidArgument):
        cpu.sregs.cr0 = 2**64


def test_guest_reads_a_segment_base_set_by_the_host(part):
    part.memory.write(0x1000, pyhv.testing.assemble("mov %fs:8, %rax\nhlt"))
    cpu = part.create_vcpu(mode="long", entry=0x1000)
    part.memory.write_u64(0x5008, 0xFEEDFACE)
    cpu.sregs.fs = dataclasses.replace(cpu.sregs.fs, base=0x5000)
    assert isinstance(cpu.run(timeout=10), exits.Halt)
    assert cpu.regs.rax == 0xFEEDFACE


def test_fpu_state_round_trip_seen_by_the_guest(part):
    # the guest copies xmm0 to memory; the host set xmm0 through the FPU state
    part.memory.write(0x1000, pyhv.testing.assemble("movdqu %xmm0, 0x3000\nhlt"))
    cpu = part.create_vcpu(mode="long", entry=0x1000)
    fpu = cpu.fpu
    pattern = bytes(range(16))
    cpu.fpu = dataclasses.replace(fpu, xmm=(pattern,) + fpu.xmm[1:])
    assert cpu.fpu.xmm[0] == pattern and cpu.fpu.mxcsr == fpu.mxcsr
    assert isinstance(cpu.run(timeout=10), exits.Halt)
    assert part.memory.read(0x3000, 16) == pattern
    with pytest.raises(pyhv.InvalidArgument):
        cpu.fpu = dataclasses.replace(fpu, xmm=(b"short",) + fpu.xmm[1:])


def test_msrs_round_trip_and_guest_rdmsr(part):
    IA32_SYSENTER_ESP = 0x175
    part.memory.write(0x1000, pyhv.testing.assemble(
        f"mov ${IA32_SYSENTER_ESP:#x}, %ecx\nrdmsr\nhlt"))
    cpu = part.create_vcpu(mode="long", entry=0x1000)
    cpu.set_msrs({IA32_SYSENTER_ESP: 0xABCD1234})
    assert cpu.get_msr(IA32_SYSENTER_ESP) == 0xABCD1234
    assert cpu.get_msrs([0xC0000080])[0xC0000080] & 0x500 == 0x500     # EFER: LME|LMA
    assert isinstance(cpu.run(timeout=10), exits.Halt)
    assert cpu.regs.rax == 0xABCD1234


def test_refused_msr_is_named(part):
    cpu = boot(part, "regs")
    with pytest.raises(pyhv.KvmError, match="0xdeadbeef"):
        cpu.get_msrs([0x175, 0xDEADBEEF])
    with pytest.raises(pyhv.InvalidArgument):
        cpu.get_msrs([1 << 33])


def test_cpuid_table_is_what_the_guest_sees(part):
    part.memory.write(0x1000, pyhv.testing.assemble("xor %eax, %eax\ncpuid\nhlt"))
    cpu = part.create_vcpu(mode="long", entry=0x1000)
    table = cpu.get_cpuid()
    leaf0 = next(e for e in table if e.function == 0)
    assert isinstance(cpu.run(timeout=10), exits.Halt)
    assert (cpu.regs.rbx, cpu.regs.rdx, cpu.regs.rcx) == (leaf0.ebx, leaf0.edx, leaf0.ecx)
    # the vCPU got KVM's supported table (KVM may drop leaves it will not expose, e.g. AMX)
    supported = {(e.function, e.index) for e in part.hypervisor.supported_cpuid()}
    assert {(e.function, e.index) for e in table} <= supported
    assert {0, 1, 7, 0x80000000, 0x80000001} <= {e.function for e in table}


def test_custom_cpuid_vendor_string(part):
    part.memory.write(0x1000, pyhv.testing.assemble("xor %eax, %eax\ncpuid\nhlt"))
    table = [dataclasses.replace(e, ebx=0x76687970, edx=0x76687970, ecx=0x76687970)
             if e.function == 0 else e for e in part.hypervisor.supported_cpuid()]  # "pyhv"
    cpu = part.create_vcpu(mode="long", entry=0x1000, cpuid=table)
    assert isinstance(cpu.run(timeout=10), exits.Halt)
    assert cpu.regs.rbx.to_bytes(4, "little") == b"pyhv"


def test_each_vcpu_gets_its_own_apic_id(part):
    part.memory.write(0x1000, b"\xf4")
    cpus = [part.create_vcpu(mode="long", entry=0x1000) for _ in range(2)]
    ids = [next(e for e in c.get_cpuid() if e.function == 1).ebx >> 24 for c in cpus]
    assert ids == [0, 1]
