"""Hardened partitions: MSRs denied by default, CPUID without virtualization extensions, and
memory that a reset gives back exactly."""

from __future__ import annotations

import dataclasses

import pytest

import pyhv
from pyhv import exits
from pyhv.partition import SAFE_MSRS
from pyhv.testing import assemble


def rdmsr_guest(index: int) -> bytes:
    return assemble(f"mov ${index:#x}, %ecx\nrdmsr\nmov %eax, %ebx\nhlt", origin=0x100000)


def test_msrs_outside_the_allow_list_raise_gp(kvm):
    with pyhv.Partition(memory="4M", hardened=True) as part:
        part.memory.write(0x100000, rdmsr_guest(0xC0000080))               # EFER: allowed
        cpu = part.create_vcpu(mode="long", entry=0x100000, exceptions=True)
        assert isinstance(cpu.run(timeout=10), exits.Halt) and cpu.regs.rbx & 0x500 == 0x500
    for index in (0x3A, 0x4B564D01, 0xC0010015):      # feature control, KVM PV, AMD HWCR
        assert index not in SAFE_MSRS
        with pyhv.Partition(memory="4M", hardened=True) as part:
            part.memory.write(0x100000, rdmsr_guest(index))
            cpu = part.create_vcpu(mode="long", entry=0x100000, exceptions=True)
            ex = cpu.run(timeout=10)
            assert isinstance(ex, exits.GuestException) and ex.vector == 13, (hex(index), ex)
    with pyhv.Partition(memory="4M") as part:          # not hardened: KVM's own MSR answers
        part.memory.write(0x100000, rdmsr_guest(0x4B564D01))
        assert isinstance(part.create_vcpu(mode="long", entry=0x100000).run(timeout=10),
                          exits.Halt)


def test_cpuid_shows_no_virtualization(kvm):
    with pyhv.Partition(memory="4M", hardened=True) as part:
        part.memory.write(0x100000, assemble(
            "mov $1, %eax\ncpuid\nmov %ecx, %esi\nmov $0x80000001, %eax\ncpuid\nhlt",
            origin=0x100000))
        cpu = part.create_vcpu(mode="long", entry=0x100000)
        table = cpu.get_cpuid()
        assert not [e for e in table if 0x40000000 <= e.function < 0x40000100]
        assert isinstance(cpu.run(timeout=10), exits.Halt)
        assert not cpu.regs.rsi & (1 << 5)                  # VMX
        assert not cpu.regs.rcx & (1 << 2)                  # SVM


VMX, SVM = 1 << 5, 1 << 2
KVM_SIGNATURE = 0x4B4D564B               # "KVMK", EBX of leaf 0x40000000


def guest_view(hv: pyhv.Hypervisor, hardened: bool) -> tuple[int, int, int, bool]:
    """What a guest's CPUID instruction shows: leaf 1 ECX, leaf 0x80000001 ECX and leaf
    0x40000000 EBX; and whether its vCPU's table has hypervisor leaves."""
    with pyhv.Partition(memory="4M", hypervisor=hv, hardened=hardened) as part:
        part.memory.write(0x100000, assemble(
            "mov $1, %eax\ncpuid\nmov %ecx, %esi\nmov $0x80000001, %eax\ncpuid\n"
            "mov %ecx, %edi\nmov $0x40000000, %eax\ncpuid\nhlt", origin=0x100000))
        cpu = part.create_vcpu(mode="long", entry=0x100000)
        assert isinstance(cpu.run(timeout=10), exits.Halt)
        leaves = any(0x40000000 <= e.function < 0x40000100 for e in cpu.get_cpuid())
        return cpu.regs.rsi, cpu.regs.rdi, cpu.regs.rbx, leaves


@pytest.mark.parametrize("hardened", [False, True])
def test_what_a_guest_is_shown_when_kvm_offers_vmx_and_svm(kvm, monkeypatch, hardened):
    # kvm_pvm offers neither VMX nor SVM, so there the filter's work on them would go unseen:
    # the handle is given a supported CPUID with both, and the guest's own CPUID is compared
    # with what it shows from the unedited table (kvm_pvm adds host bits of its own to what
    # it is given, so the unedited run is the baseline, not the table)
    with pyhv.Hypervisor() as hv:
        base_leaf1, base_ext, _, _ = guest_view(hv, hardened)
    with pyhv.Hypervisor() as hv:
        offered = tuple(dataclasses.replace(e, ecx=e.ecx | VMX) if e.function == 1 else
                        dataclasses.replace(e, ecx=e.ecx | SVM) if e.function == 0x80000001
                        else e for e in hv.supported_cpuid())
        monkeypatch.setattr(hv, "supported_cpuid", lambda: offered)
        leaf1, ext, signature, leaves = guest_view(hv, hardened)
    if hardened:
        assert (leaf1, ext) == (base_leaf1 & ~VMX, base_ext & ~SVM)
        assert not leaves and signature != KVM_SIGNATURE
    else:
        assert (leaf1, ext) == (base_leaf1 | VMX, base_ext | SVM)
        assert leaves and signature == KVM_SIGNATURE


def test_reset_gives_back_every_byte(kvm):
    # the guest scribbles over all of its RAM above 1 MiB; the reset point comes back exactly
    with pyhv.Partition(memory="8M", resettable=True, hardened=True) as part:
        part.memory.write(0x1000, assemble(
            "mov $0x100000, %edi\nmov $0x1C0000, %ecx\nmov $0xDEADBEEF, %eax\nrep stosl\nhlt",
            origin=0x1000))
        part.memory.write(0x300000, b"host data at the reset point")
        cpu = part.create_vcpu(mode="long", entry=0x1000)
        before = part.memory.read(0, 8 << 20)
        assert isinstance(cpu.run(timeout=60), exits.Halt)
        assert part.memory.read(0x300000, 4) == b"\xef\xbe\xad\xde"
        part.reset()
        assert part.memory.read(0, 8 << 20) == before


def test_each_hardened_vcpu_reports_its_own_apic_ids(kvm):
    with pyhv.Partition(memory="4M", hardened=True) as part:
        part.memory.write(0x100000, assemble(
            "mov $1, %eax\ncpuid\nmov %ebx, %esi\nmov $0xb, %eax\nxor %ecx, %ecx\ncpuid\nhlt",
            origin=0x100000))
        cpus = [part.create_vcpu(mode="long", entry=0x100000, stack=0x70000 - 0x1000 * i)
                for i in range(2)]
        has_x2apic_leaf = any(e.function == 0xB for e in cpus[1].get_cpuid())
        for cpu in cpus:
            assert isinstance(cpu.run(timeout=10), exits.Halt)
            assert cpu.regs.rsi >> 24 == cpu.id                 # initial APIC ID
            if has_x2apic_leaf:
                assert cpu.regs.rdx == cpu.id                   # x2APIC ID: was 0 for all
