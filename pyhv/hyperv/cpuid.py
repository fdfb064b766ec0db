"""The Hyper-V CPUID leaves 0x40000000-0x40000006 for a set of enlightenments, and a vCPU's
table with them in place of KVM's own hypervisor leaves.

>>> from pyhv.hyperv.cpuid import hyperv_leaves
>>> from pyhv.hyperv.features import Enlightenments
>>> leaves = {e.function: e for e in hyperv_leaves(Enlightenments.parse("hv-time"), 2)}
>>> vendor = leaves[0x40000000]
>>> (vendor.ebx.to_bytes(4, "little") + vendor.ecx.to_bytes(4, "little")
...  + vendor.edx.to_bytes(4, "little")).decode()
'Microsoft Hv'
>>> hex(leaves[0x40000001].eax), hex(leaves[0x40000003].eax)     # "Hv#1"; ref count, TSC page
('0x31237648', '0x222')
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from ..x86.cpuid import HYPERVISOR_LEAVES, CpuidEntry
from . import tlfs
from .features import Enlightenments

# what 0x40000002 reports: Windows Server 2016's hypervisor (build 14393, 10.0), as QEMU does
VERSION_BUILD = 14393
VERSION_MAJOR_MINOR = (10 << 16) | 0
HYPERVISOR_PRESENT = (1, "ecx", 1 << 31)


def _text(s: str) -> tuple[int, int, int]:
    raw = s.encode("ascii").ljust(12, b"\0")
    return tuple(int.from_bytes(raw[i:i + 4], "little") for i in (0, 4, 8))  # type: ignore


def privileges(hv: Enlightenments) -> tuple[int, int]:
    """0x40000003 EAX (synthetic MSRs) and EBX (hypercalls) for ``hv``."""
    eax = tlfs.PRIV_HYPERCALL                       # GUEST_OS_ID and HYPERCALL: always
    for feature, bits in (("vpindex", tlfs.PRIV_VP_INDEX), ("runtime", tlfs.PRIV_VP_RUNTIME),
                          ("time", tlfs.PRIV_TIME_REF_COUNT | tlfs.PRIV_REFERENCE_TSC),
                          ("synic", tlfs.PRIV_SYNIC), ("stimer", tlfs.PRIV_SYNTHETIC_TIMERS),
                          ("vapic", tlfs.PRIV_APIC_ACCESS), ("reset", tlfs.PRIV_RESET),
                          ("frequencies", tlfs.PRIV_FREQUENCIES)):
        if feature in hv:
            eax |= bits
    ebx = tlfs.PRIV_POST_MESSAGES | tlfs.PRIV_SIGNAL_EVENTS if "synic" in hv else 0
    return eax, ebx


def misc_features(hv: Enlightenments) -> int:
    """0x40000003 EDX."""
    edx = 0
    if "frequencies" in hv:
        edx |= tlfs.FEAT_FREQUENCY_MSRS
    if "crash" in hv:
        edx |= tlfs.FEAT_CRASH_MSRS
    if "stimer-direct" in hv:
        edx |= tlfs.FEAT_STIMER_DIRECT
    return edx


def recommendations(hv: Enlightenments) -> int:
    """0x40000004 EAX.  AutoEOI is always deprecated: an in-kernel LAPIC sets the ISR bit
    when it delivers a vector, and user space cannot clear it at that moment.  The APIC MSRs
    (hv-vapic) are offered but not recommended, unlike QEMU: each access is an exit to user
    space, slower than the in-kernel LAPIC, and their EOI cannot end a level-triggered
    IOAPIC interrupt (see :mod:`pyhv.hyperv.lapic`)."""
    eax = tlfs.HINT_DEPRECATE_AUTOEOI
    if "reset" in hv:
        eax |= tlfs.HINT_RESET_MSR
    if "relaxed" in hv:
        eax |= tlfs.HINT_RELAXED_TIMING
    if "ipi" in hv:
        eax |= tlfs.HINT_CLUSTER_IPI | tlfs.HINT_EX_PROCESSOR_MASKS
    return eax


def hyperv_leaves(hv: Enlightenments, max_vcpus: int) -> list[CpuidEntry]:
    """The leaves 0x40000000-0x40000006 a guest sees for ``hv`` in a partition of up to
    ``max_vcpus`` vCPUs."""
    vendor = _text(hv.vendor_id)
    eax3, ebx3 = privileges(hv)
    return [
        CpuidEntry(tlfs.CPUID_VENDOR, 0, 0, tlfs.CPUID_MAX_LEAF, *vendor),
        CpuidEntry(tlfs.CPUID_INTERFACE, 0, 0, tlfs.INTERFACE_HV1, 0, 0, 0),
        CpuidEntry(tlfs.CPUID_VERSION, 0, 0, VERSION_BUILD, VERSION_MAJOR_MINOR, 0, 0),
        CpuidEntry(tlfs.CPUID_FEATURES, 0, 0, eax3, ebx3, 0, misc_features(hv)),
        CpuidEntry(tlfs.CPUID_RECOMMENDATIONS, 0, 0, recommendations(hv), hv.spinlocks, 0, 0),
        CpuidEntry(tlfs.CPUID_LIMITS, 0, 0, max_vcpus, max_vcpus, 0, 0),
        CpuidEntry(tlfs.CPUID_HARDWARE, 0, 0, 0, 0, 0, 0),
    ]


def with_hyperv(table: Iterable[CpuidEntry], leaves: Iterable[CpuidEntry]) -> list[CpuidEntry]:
    """``table`` with its hypervisor leaves (KVM's "KVMKVMKVM" ones) replaced by ``leaves``,
    and the "hypervisor present" bit (leaf 1 ECX[31]) set."""
    out = []
    function, register, bit = HYPERVISOR_PRESENT
    for e in table:
        if e.function in HYPERVISOR_LEAVES:
            continue
        if e.function == function:
            e = dataclasses.replace(e, **{register: getattr(e, register) | bit})
        out.append(e)
    return out + list(leaves)
