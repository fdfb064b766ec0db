"""vCPU register state: live views (``cpu.regs.rax = 7``) and frozen snapshots.

>>> cpu.regs.rax = 7                       # doctest: +SKIP
>>> cpu.regs.rax                           # doctest: +SKIP
7
>>> snap = cpu.regs.snapshot()             # a frozen Regs  # doctest: +SKIP
>>> cpu.sregs.cr0 & 1                      # protected mode?  # doctest: +SKIP
1
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ._ffi import ffi
from .errors import InvalidArgument

if TYPE_CHECKING:
    from .vcpu import VCpu

MASK64 = (1 << 64) - 1

GENERAL_REGISTERS = (
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
    "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags",
)


def to_u64(name: str, value: int) -> int:
    """Accept -2**63 .. 2**64-1 (negative values wrap, as the CPU would store them)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{name} must be an int, not {type(value).__name__}")
    if not -(1 << 63) <= value <= MASK64:
        raise InvalidArgument(f"{name}={value:#x} does not fit in 64 bits")
    return value & MASK64


@dataclass(frozen=True)
class Regs:
    """A snapshot of the general registers (``KVM_GET_REGS``)."""

    rax: int = 0
    rbx: int = 0
    rcx: int = 0
    rdx: int = 0
    rsi: int = 0
    rdi: int = 0
    rsp: int = 0
    rbp: int = 0
    r8: int = 0
    r9: int = 0
    r10: int = 0
    r11: int = 0
    r12: int = 0
    r13: int = 0
    r14: int = 0
    r15: int = 0
    rip: int = 0
    rflags: int = 0x2


class Registers:
    """Live view of a vCPU's general registers: each attribute reads or writes the vCPU.

    Reads after an exit cost no ioctl where KVM offers sync regs; writes are handed to the
    kernel at the next entry.  Use :meth:`update` to set several at once.
    """

    __slots__ = ("_vcpu",)

    if TYPE_CHECKING:
        _vcpu: VCpu
        rax: int; rbx: int; rcx: int; rdx: int; rsi: int; rdi: int; rsp: int; rbp: int
        r8: int; r9: int; r10: int; r11: int; r12: int; r13: int; r14: int; r15: int
        rip: int; rflags: int

    def __init__(self, vcpu: VCpu) -> None:
        object.__setattr__(self, "_vcpu", vcpu)

    def __getattr__(self, name: str) -> int:
        if name in _GENERAL_SET:
            return getattr(self._vcpu._load_regs(), name)
        raise AttributeError(f"no general register named {name!r}")

    def __setattr__(self, name: str, value: int) -> None:
        if name not in _GENERAL_SET:
            raise AttributeError(f"no general register named {name!r}")
        self.update(**{name: value})

    def update(self, **values: int) -> None:
        """Set several registers with one write: ``cpu.regs.update(rax=1, rip=0x1000)``."""
        unknown = set(values) - _GENERAL_SET
        if unknown:
            raise AttributeError(f"no general register named {sorted(unknown)[0]!r}")
        checked = {name: to_u64(name, v) for name, v in values.items()}
        regs = self._vcpu._load_regs()
        for name, v in checked.items():
            setattr(regs, name, v)
        self._vcpu._store_regs(regs)

    def snapshot(self) -> Regs:
        """All general registers as a frozen :class:`Regs`."""
        regs = self._vcpu._load_regs()
        return Regs(*(getattr(regs, n) for n in GENERAL_REGISTERS))

    def load(self, regs: Regs) -> None:
        """Set every general register from a :class:`Regs`."""
        self.update(**dataclasses.asdict(regs))

    def __repr__(self) -> str:
        return repr(self.snapshot()).replace("Regs(", "Registers(", 1)


_GENERAL_SET = frozenset(GENERAL_REGISTERS)


@dataclass(frozen=True)
class Segment:
    """A segment register with its hidden part (base, limit, attributes)."""

    base: int = 0
    limit: int = 0xFFFF
    selector: int = 0
    type: int = 3
    present: int = 1
    dpl: int = 0
    db: int = 0
    s: int = 1
    l: int = 0  # noqa: E741 - the architectural name
    g: int = 0
    avl: int = 0
    unusable: int = 0

    FIELDS: ClassVar[tuple[str, ...]] = (
        "base", "limit", "selector", "type", "present", "dpl", "db", "s", "l", "g", "avl",
        "unusable")


@dataclass(frozen=True)
class DescriptorTable:
    """GDTR or IDTR: base and limit."""

    base: int = 0
    limit: int = 0xFFFF


SEGMENT_REGISTERS = ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt")
TABLE_REGISTERS = ("gdt", "idt")
CONTROL_REGISTERS = ("cr0", "cr2", "cr3", "cr4", "cr8", "efer", "apic_base")


@dataclass(frozen=True)
class SpecialRegs:
    """A snapshot of the special registers (``KVM_GET_SREGS``)."""

    cs: Segment
    ds: Segment
    es: Segment
    fs: Segment
    gs: Segment
    ss: Segment
    tr: Segment
    ldt: Segment
    gdt: DescriptorTable
    idt: DescriptorTable
    cr0: int
    cr2: int
    cr3: int
    cr4: int
    cr8: int
    efer: int
    apic_base: int
    interrupt_bitmap: tuple[int, int, int, int] = (0, 0, 0, 0)


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
    except (OverflowError, TypeError) as exc:
        raise InvalidArgument(f"special register value out of range: {exc}") from None


class SpecialRegisters:
    """Live view of a vCPU's special registers: ``cpu.sregs.cr0``, ``cpu.sregs.cs = seg``.

    Each read is one ``KVM_GET_SREGS``; each write is a read-modify-write.  For several
    changes, take :meth:`snapshot`, ``dataclasses.replace`` it and :meth:`load` it back.
    """

    __slots__ = ("_vcpu",)

    if TYPE_CHECKING:
        _vcpu: VCpu
        cs: Segment; ds: Segment; es: Segment; fs: Segment; gs: Segment; ss: Segment
        tr: Segment; ldt: Segment; gdt: DescriptorTable; idt: DescriptorTable
        cr0: int; cr2: int; cr3: int; cr4: int; cr8: int; efer: int; apic_base: int

    def __init__(self, vcpu: VCpu) -> None:
        object.__setattr__(self, "_vcpu", vcpu)

    def snapshot(self) -> SpecialRegs:
        return self._vcpu.get_sregs()

    def load(self, sregs: SpecialRegs) -> None:
        self._vcpu.set_sregs(sregs)

    def __getattr__(self, name: str) -> Any:
        if name in _SPECIAL_SET:
            return getattr(self._vcpu.get_sregs(), name)
        raise AttributeError(f"no special register named {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in _SPECIAL_SET:
            raise AttributeError(f"no special register named {name!r}")
        if name in CONTROL_REGISTERS:
            value = to_u64(name, value)
        elif name in SEGMENT_REGISTERS and not isinstance(value, Segment):
            raise InvalidArgument(f"{name} takes a pyhv.Segment, not {type(value).__name__}")
        elif name in TABLE_REGISTERS and not isinstance(value, DescriptorTable):
            raise InvalidArgument(f"{name} takes a pyhv.DescriptorTable")
        self._vcpu.set_sregs(dataclasses.replace(self._vcpu.get_sregs(), **{name: value}))

    def __repr__(self) -> str:
        return repr(self.snapshot())


_SPECIAL_SET = frozenset(SEGMENT_REGISTERS + TABLE_REGISTERS + CONTROL_REGISTERS)


@dataclass(frozen=True)
class Fpu:
    """x87/SSE state (``KVM_GET_FPU``): 8 x87 registers and 16 XMM registers as 16-byte
    ``bytes`` each, plus control/status words and MXCSR."""

    fpr: tuple[bytes, ...]
    fcw: int
    fsw: int
    ftwx: int
    last_opcode: int
    last_ip: int
    last_dp: int
    xmm: tuple[bytes, ...]
    mxcsr: int

    SCALARS: ClassVar[tuple[str, ...]] = (
        "fcw", "fsw", "ftwx", "last_opcode", "last_ip", "last_dp", "mxcsr")


def fpu_from_c(c: Any) -> Fpu:
    return Fpu(
        fpr=tuple(bytes(ffi.buffer(c.fpr[i])) for i in range(8)),
        xmm=tuple(bytes(ffi.buffer(c.xmm[i])) for i in range(16)),
        **{name: getattr(c, name) for name in Fpu.SCALARS},
    )


def fpu_to_c(f: Fpu, c: Any) -> None:
    if len(f.fpr) != 8 or len(f.xmm) != 16:
        raise InvalidArgument("Fpu needs 8 fpr and 16 xmm registers")
    for i, reg in enumerate(f.fpr):
        if len(reg) != 16:
            raise InvalidArgument(f"fpr[{i}] must be 16 bytes")
        ffi.memmove(c.fpr[i], reg, 16)
    for i, reg in enumerate(f.xmm):
        if len(reg) != 16:
            raise InvalidArgument(f"xmm[{i}] must be 16 bytes")
        ffi.memmove(c.xmm[i], reg, 16)
    try:
        for name in Fpu.SCALARS:
            setattr(c, name, getattr(f, name))
    except (OverflowError, TypeError) as exc:
        raise InvalidArgument(f"FPU value out of range: {exc}") from None
