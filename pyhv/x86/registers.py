"""x86 register state as plain values: frozen snapshots and live views over a vCPU.

>>> from pyhv.x86.registers import Regs, Segment
>>> Regs(rax=7, rip=0x1000).rax
7
>>> hex(Regs(rip=0x1000).rip)
'0x1000'
>>> Segment(base=0xFFFF0000, selector=0xF000, type=0xB)
Segment(base=0xffff0000, limit=0xffff, selector=0xf000, type=0xb, present=1, s=1)

The live views (``cpu.regs``, ``cpu.sregs``) read and write a vCPU through the small
:class:`RegisterFile` protocol, which :class:`pyhv.VCpu` implements.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from ..errors import InvalidArgument

MASK64 = (1 << 64) - 1

GENERAL_REGISTERS = (
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
    "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags",
)


def to_u64(name: str, value: int) -> int:
    """Accept -2**63 .. 2**64-1 (negative values wrap, as the CPU would store them).

    >>> hex(to_u64("rax", -1))
    '0xffffffffffffffff'
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{name} must be an int, not {type(value).__name__}")
    if not -(1 << 63) <= value <= MASK64:
        raise InvalidArgument(f"{name}={value:#x} does not fit in 64 bits")
    return value & MASK64


def _hex_repr(obj: Any, always: tuple[str, ...] = ()) -> str:
    """``Name(field=0x..., ...)``: fields that differ from their defaults, and ``always``."""
    parts = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.name not in always and value == f.default:
            continue
        if isinstance(value, int) and not isinstance(value, bool) and value > 9:
            parts.append(f"{f.name}={value:#x}")
        else:
            parts.append(f"{f.name}={value!r}")
    return f"{type(obj).__name__}({', '.join(parts)})"


@dataclass(frozen=True, repr=False)
class Regs:
    """A snapshot of the general registers (``KVM_GET_REGS``); its repr is in hex."""

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

    def __repr__(self) -> str:
        return _hex_repr(self, GENERAL_REGISTERS)


@dataclass(frozen=True, repr=False)
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

    def __repr__(self) -> str:
        return _hex_repr(self, ("base", "limit", "selector", "type", "present", "s"))


@dataclass(frozen=True, repr=False)
class DescriptorTable:
    """GDTR or IDTR: base and limit."""

    base: int = 0
    limit: int = 0xFFFF

    def __repr__(self) -> str:
        return _hex_repr(self, ("base", "limit"))


SEGMENT_REGISTERS = ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt")
TABLE_REGISTERS = ("gdt", "idt")
CONTROL_REGISTERS = ("cr0", "cr2", "cr3", "cr4", "cr8", "efer", "apic_base")


@dataclass(frozen=True, repr=False)
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

    def __repr__(self) -> str:
        return _hex_repr(self, SEGMENT_REGISTERS + TABLE_REGISTERS + CONTROL_REGISTERS)


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

    def __post_init__(self) -> None:
        if len(self.fpr) != 8 or len(self.xmm) != 16:
            raise InvalidArgument("Fpu needs 8 fpr and 16 xmm registers")
        for name, regs in (("fpr", self.fpr), ("xmm", self.xmm)):
            for i, reg in enumerate(regs):
                if not isinstance(reg, (bytes, bytearray)) or len(reg) != 16:
                    raise InvalidArgument(f"{name}[{i}] must be 16 bytes")


class RegisterFile(Protocol):
    """What the live views need of a vCPU (:class:`pyhv.VCpu` provides it)."""

    def read_register(self, name: str) -> int:
        """One general register."""

    def read_registers(self) -> Regs:
        """Every general register."""

    def write_registers(self, values: dict[str, int]) -> None:
        """Set some general registers (checked values), the others unchanged."""

    def get_sregs(self) -> SpecialRegs:
        """The special registers."""

    def set_sregs(self, sregs: SpecialRegs) -> None:
        """Load every special register."""


_GENERAL_SET = frozenset(GENERAL_REGISTERS)


class Registers:
    """Live view of a vCPU's general registers: each attribute reads or writes the vCPU.

    Reads after an exit cost no ioctl where KVM offers sync regs; writes are handed to the
    kernel at the next entry.  Use :meth:`update` to set several at once.
    """

    __slots__ = ("_file",)
    _file: RegisterFile

    if TYPE_CHECKING:  # the attributes __getattr__ provides
        rax: int; rbx: int; rcx: int; rdx: int; rsi: int; rdi: int; rsp: int; rbp: int
        r8: int; r9: int; r10: int; r11: int; r12: int; r13: int; r14: int; r15: int
        rip: int; rflags: int

    def __init__(self, file: RegisterFile) -> None:
        object.__setattr__(self, "_file", file)

    def __getattr__(self, name: str) -> int:
        if name in _GENERAL_SET:
            return self._file.read_register(name)
        raise AttributeError(f"no general register named {name!r}")

    def __setattr__(self, name: str, value: int) -> None:
        if name not in _GENERAL_SET:
            raise AttributeError(f"no general register named {name!r}")
        self._file.write_registers({name: to_u64(name, value)})

    def update(self, **values: int) -> None:
        """Set several registers with one write: ``cpu.regs.update(rax=1, rip=0x1000)``."""
        unknown = set(values) - _GENERAL_SET
        if unknown:
            raise AttributeError(f"no general register named {sorted(unknown)[0]!r}")
        self._file.write_registers({name: to_u64(name, v) for name, v in values.items()})

    def snapshot(self) -> Regs:
        """All general registers as a frozen :class:`Regs`."""
        return self._file.read_registers()

    def load(self, regs: Regs) -> None:
        """Set every general register from a :class:`Regs`."""
        self.update(**dataclasses.asdict(regs))

    def __repr__(self) -> str:
        return repr(self.snapshot()).replace("Regs(", "Registers(", 1)


_SPECIAL_SET = frozenset(SEGMENT_REGISTERS + TABLE_REGISTERS + CONTROL_REGISTERS)


class SpecialRegisters:
    """Live view of a vCPU's special registers: ``cpu.sregs.cr0``, ``cpu.sregs.cs = seg``.

    Each read is one ``KVM_GET_SREGS``; each write is a read-modify-write.  For several
    changes, take :meth:`snapshot`, ``dataclasses.replace`` it and :meth:`load` it back.
    """

    __slots__ = ("_file",)
    _file: RegisterFile

    if TYPE_CHECKING:  # the attributes __getattr__ provides
        cs: Segment; ds: Segment; es: Segment; fs: Segment; gs: Segment; ss: Segment
        tr: Segment; ldt: Segment; gdt: DescriptorTable; idt: DescriptorTable
        cr0: int; cr2: int; cr3: int; cr4: int; cr8: int; efer: int; apic_base: int

    def __init__(self, file: RegisterFile) -> None:
        object.__setattr__(self, "_file", file)

    def snapshot(self) -> SpecialRegs:
        return self._file.get_sregs()

    def load(self, sregs: SpecialRegs) -> None:
        self._file.set_sregs(sregs)

    def __getattr__(self, name: str) -> Any:
        if name in _SPECIAL_SET:
            return getattr(self._file.get_sregs(), name)
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
        self._file.set_sregs(dataclasses.replace(self._file.get_sregs(), **{name: value}))

    def __repr__(self) -> str:
        return repr(self.snapshot())
