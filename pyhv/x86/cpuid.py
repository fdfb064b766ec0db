"""CPUID tables as plain values, and the edits pyhv makes to them.

>>> from pyhv.x86.cpuid import CpuidEntry, for_vcpu, sanitized
>>> table = [CpuidEntry(1, 0, 0, 0x806F8, 0x00020800, 1 << 5, 0),
...          CpuidEntry(0x40000000, 0, 0, 0x40000001, 0x4B4D564B, 0, 0)]
>>> [hex(e.function) for e in sanitized(table)]          # no KVM paravirtual leaves
['0x1']
>>> sanitized(table)[0].ecx & (1 << 5)                    # and no VMX
0
>>> hex(for_vcpu(table, 3)[0].ebx)                        # vCPU 3's APIC ID in EBX[31:24]
'0x3020800'
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["CpuidEntry", "for_vcpu", "phys_bits", "sanitized"]


@dataclass(frozen=True)
class CpuidEntry:
    """One CPUID leaf/subleaf as KVM stores it (``flags`` is KVM's ``KVM_CPUID_FLAG_*``)."""

    function: int
    index: int
    flags: int
    eax: int
    ebx: int
    ecx: int
    edx: int

    def __repr__(self) -> str:
        return (f"CpuidEntry(function={self.function:#x}, index={self.index}, "
                f"flags={self.flags:#x}, eax={self.eax:#x}, ebx={self.ebx:#x}, "
                f"ecx={self.ecx:#x}, edx={self.edx:#x})")


# What a hardened partition hides from its guest's CPUID
VMX = (1, "ecx", 1 << 5)
SVM = (0x80000001, "ecx", 1 << 2)
HYPERVISOR_LEAVES = range(0x40000000, 0x40000100)


def sanitized(table: Iterable[CpuidEntry]) -> list[CpuidEntry]:
    """``table`` without VMX/SVM and without the hypervisor leaves (0x4000_00xx)."""
    out = []
    for e in table:
        if e.function in HYPERVISOR_LEAVES:
            continue
        for function, register, bit in (VMX, SVM):
            if e.function == function:
                e = dataclasses.replace(e, **{register: getattr(e, register) & ~bit})
        out.append(e)
    return out


def for_vcpu(table: Iterable[CpuidEntry], vcpu_id: int) -> list[CpuidEntry]:
    """``table`` as vCPU ``vcpu_id`` sees it: its APIC ID in leaf 1 EBX[31:24] and its
    x2APIC ID in leaves 0xB/0x1F EDX."""
    out = []
    for e in table:
        if e.function == 1:
            e = dataclasses.replace(e, ebx=(e.ebx & 0x00FFFFFF) | (vcpu_id & 0xFF) << 24)
        elif e.function in (0xB, 0x1F):
            e = dataclasses.replace(e, edx=vcpu_id)
        out.append(e)
    return out


def phys_bits(table: Iterable[CpuidEntry]) -> int:
    """Guest-physical address width (leaf 0x80000008 EAX[7:0]); 36 when the table hides it."""
    return next((e.eax & 0xFF for e in table if e.function == 0x80000008), 0) or 36
