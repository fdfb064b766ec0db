"""Conversions between the C core's small structs and pyhv's plain x86 dataclasses."""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterable
from typing import Any

from ..errors import InvalidArgument, check_rc
from ..x86.cpuid import CpuidEntry
from ..x86.registers import (
    CONTROL_REGISTERS,
    GENERAL_REGISTERS,
    SEGMENT_REGISTERS,
    TABLE_REGISTERS,
    DescriptorTable,
    Fpu,
    Regs,
    Segment,
    SpecialRegs,
)
from .binding import ffi, lib

MAX_CPUID_ENTRIES = 4096


def regs_from_c(c: Any) -> Regs:
    return Regs(*(getattr(c, n) for n in GENERAL_REGISTERS))


def regs_to_c(regs: Regs, c: Any) -> None:
    for name in GENERAL_REGISTERS:
        setattr(c, name, getattr(regs, name))


def sregs_from_c(c: Any) -> SpecialRegs:
    values: dict[str, Any] = {}
    for name in SEGMENT_REGISTERS:
        seg = getattr(c, name)
        values[name] = Segment(*(getattr(seg, f) for f in Segment.FIELDS))
    for name in TABLE_REGISTERS:
        t = getattr(c, name)
        values[name] = DescriptorTable(t.base, t.limit)
    for name in CONTROL_REGISTERS:
        values[name] = getattr(c, name)
    values["interrupt_bitmap"] = tuple(c.interrupt_bitmap)
    return SpecialRegs(**values)


def sregs_to_c(s: SpecialRegs, c: Any) -> None:
    try:
        for name in SEGMENT_REGISTERS:
            seg, dst = getattr(s, name), getattr(c, name)
            for f in Segment.FIELDS:
                setattr(dst, f, getattr(seg, f))
        for name in TABLE_REGISTERS:
            t, dst = getattr(s, name), getattr(c, name)
            dst.base, dst.limit = t.base, t.limit
        for name in CONTROL_REGISTERS:
            setattr(c, name, getattr(s, name))
        for i, word in enumerate(s.interrupt_bitmap):
            c.interrupt_bitmap[i] = word
    except (OverflowError, TypeError, AttributeError) as exc:
        raise InvalidArgument(f"special register value out of range: {exc}") from None


def fpu_from_c(c: Any) -> Fpu:
    return Fpu(
        fpr=tuple(bytes(ffi.buffer(c.fpr[i])) for i in range(8)),
        xmm=tuple(bytes(ffi.buffer(c.xmm[i])) for i in range(16)),
        **{name: getattr(c, name) for name in Fpu.SCALARS},
    )


def fpu_to_c(f: Fpu, c: Any) -> None:
    for i, reg in enumerate(f.fpr):
        ffi.memmove(c.fpr[i], reg, 16)
    for i, reg in enumerate(f.xmm):
        ffi.memmove(c.xmm[i], reg, 16)
    try:
        for name in Fpu.SCALARS:
            setattr(c, name, getattr(f, name))
    except (OverflowError, TypeError) as exc:
        raise InvalidArgument(f"FPU value out of range: {exc}") from None


def cpuid_to_c(entries: Iterable[CpuidEntry]) -> tuple[Any, int]:
    """A C array of the table (never empty: C wants a valid pointer) and its length."""
    table = list(entries)
    if len(table) > MAX_CPUID_ENTRIES:
        raise InvalidArgument(f"a CPUID table holds at most {MAX_CPUID_ENTRIES} entries")
    buf = ffi.new("struct pyhv_cpuid_entry[]", max(len(table), 1))
    try:
        for i, e in enumerate(table):
            buf[i] = (e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx)
    except (OverflowError, TypeError, AttributeError) as exc:
        raise InvalidArgument(f"bad CPUID entry: {exc}") from None
    return buf, len(table)


def read_cpuid(query: Callable[[Any, int, Any], int], operation: str) -> tuple[CpuidEntry, ...]:
    """Call ``query(buffer, capacity, count_out)`` with a buffer that grows until KVM's
    table fits; the entries as :class:`CpuidEntry`."""
    cap = 512
    while True:
        buf = ffi.new("struct pyhv_cpuid_entry[]", cap)
        n = ffi.new("uint32_t *")
        rc = query(buf, cap, n)
        if rc == -errno.E2BIG and cap < MAX_CPUID_ENTRIES:
            cap *= 2
            continue
        check_rc(rc, operation)
        return tuple(
            CpuidEntry(e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx)
            for e in (buf[i] for i in range(n[0]))
        )


class VcpuSetup:
    """A vCPU's initial state prepared as C structs once, to be applied to any number of new
    vCPUs (see :class:`pyhv._native.vcpu.VcpuFd`): its CPUID table, special and general
    registers and MSRs, each optional."""

    __slots__ = ("cpuid", "ncpuid", "sregs", "regs", "msr_index", "msr_value", "nmsrs",
                 "_init")

    def __init__(self, cpuid: Iterable[CpuidEntry] | None = None, sregs: SpecialRegs | None = None,
                 regs: Regs | None = None, msrs: dict[int, int] | None = None) -> None:
        self.cpuid: Any = None
        self.ncpuid = 0
        if cpuid is not None:
            self.cpuid, self.ncpuid = cpuid_to_c(cpuid)
        self.sregs: Any = None
        if sregs is not None:
            self.sregs = ffi.new("struct pyhv_sregs *")
            sregs_to_c(sregs, self.sregs)
        self.regs: Any = None
        if regs is not None:
            self.regs = ffi.new("struct pyhv_regs *")
            regs_to_c(regs, self.regs)
        items = sorted((msrs or {}).items())
        self.nmsrs = len(items)
        self.msr_index: Any = ffi.new("uint32_t[]", [i for i, _ in items]) if items else None
        self.msr_value: Any = ffi.new("uint64_t[]", [v for _, v in items]) if items else None
        self._init: Any = None

    def init(self, irqchip: bool) -> Any:
        """The ``struct pyhv_vcpu_init *`` that applies this setup (built once per flag)."""
        flags = lib.PYHV_VCPU_IRQCHIP if irqchip else 0
        init = self._init
        if init is None or init.flags != flags:
            init = ffi.new("struct pyhv_vcpu_init *")
            init.flags = flags
            init.cpuid = self.cpuid if self.cpuid is not None else ffi.NULL
            init.ncpuid = self.ncpuid
            init.sregs = self.sregs if self.sregs is not None else ffi.NULL
            init.regs = self.regs if self.regs is not None else ffi.NULL
            init.msr_index = self.msr_index if self.msr_index is not None else ffi.NULL
            init.msr_value = self.msr_value if self.msr_value is not None else ffi.NULL
            init.nmsrs = self.nmsrs
            self._init = init
        return init

    def merged(self, other: VcpuSetup) -> VcpuSetup:
        """This setup with ``other``'s parts where it has them."""
        out = VcpuSetup()
        for name in VcpuSetup.__slots__[:-1]:
            mine, theirs = getattr(self, name), getattr(other, name)
            setattr(out, name, theirs if theirs is not None and theirs != 0 else mine)
        return out
