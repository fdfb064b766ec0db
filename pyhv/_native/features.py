"""KVM capabilities as a typed enum (values from ``<linux/kvm.h>``, through the cffi build).

>>> from pyhv._native.features import Feature
>>> Feature.IRQCHIP.kvm_name
'KVM_CAP_IRQCHIP'
>>> Feature.parse("KVM_CAP_NR_MEMSLOTS") is Feature.NR_MEMSLOTS
True
"""

from __future__ import annotations

import enum

from ..errors import InvalidArgument
from .binding import lib


class Feature(enum.IntEnum):
    """A KVM capability (``KVM_CAP_<name>``) that pyhv checks, uses or reports."""

    USER_MEMORY = lib.KVM_CAP_USER_MEMORY
    SET_TSS_ADDR = lib.KVM_CAP_SET_TSS_ADDR
    SET_IDENTITY_MAP_ADDR = lib.KVM_CAP_SET_IDENTITY_MAP_ADDR
    EXT_CPUID = lib.KVM_CAP_EXT_CPUID
    NR_MEMSLOTS = lib.KVM_CAP_NR_MEMSLOTS
    NR_VCPUS = lib.KVM_CAP_NR_VCPUS
    MAX_VCPUS = lib.KVM_CAP_MAX_VCPUS
    MAX_VCPU_ID = lib.KVM_CAP_MAX_VCPU_ID
    READONLY_MEM = lib.KVM_CAP_READONLY_MEM
    IMMEDIATE_EXIT = lib.KVM_CAP_IMMEDIATE_EXIT
    SYNC_REGS = lib.KVM_CAP_SYNC_REGS
    IRQCHIP = lib.KVM_CAP_IRQCHIP
    SPLIT_IRQCHIP = lib.KVM_CAP_SPLIT_IRQCHIP
    PIT2 = lib.KVM_CAP_PIT2
    COALESCED_MMIO = lib.KVM_CAP_COALESCED_MMIO
    COALESCED_PIO = lib.KVM_CAP_COALESCED_PIO
    IOEVENTFD = lib.KVM_CAP_IOEVENTFD
    IRQFD = lib.KVM_CAP_IRQFD
    SET_GUEST_DEBUG = lib.KVM_CAP_SET_GUEST_DEBUG
    XSAVE = lib.KVM_CAP_XSAVE
    XCRS = lib.KVM_CAP_XCRS
    DEBUGREGS = lib.PYHV_KVM_CAP_DEBUGREGS
    VCPU_EVENTS = lib.KVM_CAP_VCPU_EVENTS
    X86_USER_SPACE_MSR = lib.KVM_CAP_X86_USER_SPACE_MSR
    X86_MSR_FILTER = lib.KVM_CAP_X86_MSR_FILTER
    DIRTY_LOG_RING = lib.KVM_CAP_DIRTY_LOG_RING
    MANUAL_DIRTY_LOG_PROTECT2 = lib.KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2
    HYPERV = lib.KVM_CAP_HYPERV
    TSC_CONTROL = lib.KVM_CAP_TSC_CONTROL
    X86_TRIPLE_FAULT_EVENT = lib.KVM_CAP_X86_TRIPLE_FAULT_EVENT
    BINARY_STATS_FD = lib.KVM_CAP_BINARY_STATS_FD

    @property
    def kvm_name(self) -> str:
        """The kernel's name for it, ``KVM_CAP_...``."""
        return "KVM_CAP_" + self.name

    @classmethod
    def parse(cls, name: str | int) -> Feature:
        """A feature from its member, its ``KVM_CAP_*`` name, its short name or its number."""
        if isinstance(name, cls):
            return name
        try:
            if isinstance(name, str):
                return cls[name.upper().removeprefix("KVM_CAP_")]
            if isinstance(name, int) and not isinstance(name, bool):
                return cls(name)
        except (KeyError, ValueError):
            pass
        raise InvalidArgument(f"{name!r} is not a KVM capability pyhv knows "
                              f"(one of {', '.join(f.kvm_name for f in cls)})")


__all__ = ["Feature"]
