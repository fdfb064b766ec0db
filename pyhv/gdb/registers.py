"""The registers gdb sees, in the order of the target descriptions pyhv sends: i386:x86-64
(general, segment, x87, SSE, segment bases, control registers) or i386 for 32-bit guests.

One table per architecture gives each register's name, size, type and where its value lives
in the vCPU's state; the target description XML, the ``g``/``G`` packets and ``p``/``P`` of one
register all come from it.

>>> amd64 = ARCHES["i386:x86-64"]
>>> [r.name for r in amd64.registers[:3]], amd64.number("rip"), amd64.size
(['rax', 'rbx', 'rcx'], 16, 600)
>>> b"<architecture>i386:x86-64</architecture>" in amd64.target_xml()
True
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..x86.registers import Fpu, Regs, SpecialRegs

__all__ = ["ARCHES", "Arch", "MachineState", "Register"]


@dataclass(frozen=True)
class MachineState:
    """A vCPU's registers as gdb reads them: general, special and x87/SSE."""

    regs: Regs
    sregs: SpecialRegs
    fpu: Fpu


Getter = Callable[[MachineState], bytes]
Setter = Callable[[MachineState, bytes], MachineState]


@dataclass(frozen=True)
class Register:
    name: str
    bits: int
    type: str
    feature: str
    group: str | None
    get: Getter
    set: Setter

    @property
    def size(self) -> int:
        return self.bits // 8


def _le(value: int, size: int) -> bytes:
    return (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")


def _int(data: bytes) -> int:
    return int.from_bytes(data, "little")


# -- where each kind of register lives ----------------------------------------------------------
def _general(field: str, bits: int) -> tuple[Getter, Setter]:
    size = bits // 8

    def get(s: MachineState) -> bytes:
        return _le(getattr(s.regs, field), size)

    def put(s: MachineState, data: bytes) -> MachineState:
        old = getattr(s.regs, field)
        mask = (1 << bits) - 1
        value = (old & ~mask) | (_int(data) & mask) if bits < 64 else _int(data)
        return dataclasses.replace(s, regs=dataclasses.replace(s.regs, **{field: value}))

    return get, put


def _selector(segment: str) -> tuple[Getter, Setter]:
    def get(s: MachineState) -> bytes:
        return _le(getattr(s.sregs, segment).selector, 4)

    def put(s: MachineState, data: bytes) -> MachineState:
        seg = dataclasses.replace(getattr(s.sregs, segment), selector=_int(data) & 0xFFFF)
        return dataclasses.replace(s, sregs=dataclasses.replace(s.sregs, **{segment: seg}))

    return get, put


def _base(segment: str, bits: int) -> tuple[Getter, Setter]:
    def get(s: MachineState) -> bytes:
        return _le(getattr(s.sregs, segment).base, bits // 8)

    def put(s: MachineState, data: bytes) -> MachineState:
        seg = dataclasses.replace(getattr(s.sregs, segment), base=_int(data))
        return dataclasses.replace(s, sregs=dataclasses.replace(s.sregs, **{segment: seg}))

    return get, put


def _control(field: str, bits: int) -> tuple[Getter, Setter]:
    def get(s: MachineState) -> bytes:
        return _le(getattr(s.sregs, field), bits // 8)

    def put(s: MachineState, data: bytes) -> MachineState:
        changes: dict[str, Any] = {field: _int(data)}
        return dataclasses.replace(s, sregs=dataclasses.replace(s.sregs, **changes))

    return get, put


def _fpu_scalar(field: str, bits: int = 32, shift: int = 0, width: int = 64
                ) -> tuple[Getter, Setter]:
    mask = (1 << width) - 1

    def get(s: MachineState) -> bytes:
        return _le((getattr(s.fpu, field) >> shift) & mask, bits // 8)

    def put(s: MachineState, data: bytes) -> MachineState:
        old = getattr(s.fpu, field)
        value = (old & ~(mask << shift)) | ((_int(data) & mask) << shift)
        return dataclasses.replace(s, fpu=dataclasses.replace(s.fpu, **{field: value}))

    return get, put


def _st(index: int) -> tuple[Getter, Setter]:
    def get(s: MachineState) -> bytes:
        return bytes(s.fpu.fpr[index][:10])

    def put(s: MachineState, data: bytes) -> MachineState:
        fpr = list(s.fpu.fpr)
        fpr[index] = bytes(data[:10]) + bytes(fpr[index][10:])
        return dataclasses.replace(s, fpu=dataclasses.replace(s.fpu, fpr=tuple(fpr)))

    return get, put


def _xmm(index: int) -> tuple[Getter, Setter]:
    def get(s: MachineState) -> bytes:
        return bytes(s.fpu.xmm[index])

    def put(s: MachineState, data: bytes) -> MachineState:
        xmm = list(s.fpu.xmm)
        xmm[index] = bytes(data)
        return dataclasses.replace(s, fpu=dataclasses.replace(s.fpu, xmm=tuple(xmm)))

    return get, put


def _tag_of(value: bytes) -> int:
    """The x87 tag of an 80-bit register: 0 valid, 1 zero, 2 special."""
    mantissa = _int(value[:8])
    exponent = _int(value[8:10]) & 0x7FFF
    if exponent == 0x7FFF:
        return 2
    if exponent == 0:
        return 1 if mantissa == 0 else 2
    return 0 if mantissa >> 63 else 2


def _ftag() -> tuple[Getter, Setter]:
    # KVM keeps FXSAVE's abridged tag (one "not empty" bit per physical register); gdb shows
    # the full tag word, two bits per physical register, worked out from the values
    def get(s: MachineState) -> bytes:
        top = (s.fpu.fsw >> 11) & 7
        word = 0
        for phys in range(8):
            if s.fpu.ftwx >> phys & 1:
                tag = _tag_of(bytes(s.fpu.fpr[(phys - top) & 7]))
            else:
                tag = 3
            word |= tag << (2 * phys)
        return _le(word, 4)

    def put(s: MachineState, data: bytes) -> MachineState:
        word = _int(data)
        abridged = sum(1 << p for p in range(8) if (word >> (2 * p)) & 3 != 3)
        return dataclasses.replace(s, fpu=dataclasses.replace(s.fpu, ftwx=abridged))

    return get, put


# -- the target descriptions ----------------------------------------------------------------------
CORE, SSE, SEGMENTS, SYSTEM = ("org.gnu.gdb.i386.core", "org.gnu.gdb.i386.sse",
                               "org.gnu.gdb.i386.segments", "org.pyhv.x86.system")

_TYPES = {
    CORE: """  <flags id="i386_eflags" size="4">
    <field name="CF" start="0" end="0"/><field name="" start="1" end="1"/>
    <field name="PF" start="2" end="2"/><field name="AF" start="4" end="4"/>
    <field name="ZF" start="6" end="6"/><field name="SF" start="7" end="7"/>
    <field name="TF" start="8" end="8"/><field name="IF" start="9" end="9"/>
    <field name="DF" start="10" end="10"/><field name="OF" start="11" end="11"/>
    <field name="NT" start="14" end="14"/><field name="RF" start="16" end="16"/>
    <field name="VM" start="17" end="17"/><field name="AC" start="18" end="18"/>
    <field name="VIF" start="19" end="19"/><field name="VIP" start="20" end="20"/>
    <field name="ID" start="21" end="21"/>
  </flags>
""",
    SSE: """  <vector id="v4f" type="ieee_single" count="4"/>
  <vector id="v2d" type="ieee_double" count="2"/>
  <vector id="v16i8" type="int8" count="16"/>
  <vector id="v8i16" type="int16" count="8"/>
  <vector id="v4i32" type="int32" count="4"/>
  <vector id="v2i64" type="int64" count="2"/>
  <union id="vec128">
    <field name="v4_float" type="v4f"/><field name="v2_double" type="v2d"/>
    <field name="v16_int8" type="v16i8"/><field name="v8_int16" type="v8i16"/>
    <field name="v4_int32" type="v4i32"/><field name="v2_int64" type="v2i64"/>
    <field name="uint128" type="uint128"/>
  </union>
  <flags id="i386_mxcsr" size="4">
    <field name="IE" start="0" end="0"/><field name="DE" start="1" end="1"/>
    <field name="ZE" start="2" end="2"/><field name="OE" start="3" end="3"/>
    <field name="UE" start="4" end="4"/><field name="PE" start="5" end="5"/>
    <field name="DAZ" start="6" end="6"/><field name="IM" start="7" end="7"/>
    <field name="DM" start="8" end="8"/><field name="ZM" start="9" end="9"/>
    <field name="OM" start="10" end="10"/><field name="UM" start="11" end="11"/>
    <field name="PM" start="12" end="12"/><field name="FZ" start="15" end="15"/>
  </flags>
""",
}


@dataclass(frozen=True)
class Arch:
    """One target description: its registers in gdb's numbering."""

    name: str
    registers: tuple[Register, ...]
    pc: str

    def number(self, name: str) -> int:
        for i, reg in enumerate(self.registers):
            if reg.name == name:
                return i
        raise KeyError(name)

    @property
    def size(self) -> int:
        """Bytes of a ``g`` reply (all registers)."""
        return sum(r.size for r in self.registers)

    @property
    def bits(self) -> int:
        return 64 if self.name == "i386:x86-64" else 32

    def target_xml(self) -> bytes:
        """The target description gdb fetches with ``qXfer:features:read:target.xml``."""
        lines = ['<?xml version="1.0"?>', '<!DOCTYPE target SYSTEM "gdb-target.dtd">',
                 "<target>", f"  <architecture>{self.name}</architecture>"]
        feature = None
        for number, reg in enumerate(self.registers):
            if reg.feature != feature:
                if feature is not None:
                    lines.append("</feature>")
                feature = reg.feature
                lines.append(f'<feature name="{feature}">')
                lines.append(_TYPES.get(feature, "").rstrip("\n"))
            group = f' group="{reg.group}"' if reg.group else ""
            lines.append(f'  <reg name="{reg.name}" bitsize="{reg.bits}" type="{reg.type}" '
                         f'regnum="{number}"{group}/>')
        lines += ["</feature>", "</target>", ""]
        return "\n".join(line for line in lines if line).encode()

    def read_all(self, state: MachineState) -> bytes:
        return b"".join(r.get(state) for r in self.registers)

    def write_all(self, state: MachineState, data: bytes) -> MachineState:
        """``state`` with every register gdb sent in a ``G`` (``data`` exactly :attr:`size`
        bytes; registers sent as unknown are the caller's to refuse)."""
        at = 0
        for reg in self.registers:
            state = reg.set(state, data[at:at + reg.size])
            at += reg.size
        return state


def _build(name: str) -> Arch:
    wide = name == "i386:x86-64"
    bits = 64 if wide else 32
    regs: list[Register] = []

    def add(reg_name: str, nbits: int, type_: str, feature: str, pair: tuple[Getter, Setter],
            group: str | None = None) -> None:
        regs.append(Register(reg_name, nbits, type_, feature, group, *pair))

    if wide:
        general = ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp"] + [
            f"r{i}" for i in range(8, 16)]
        for reg in general:
            kind = "data_ptr" if reg in ("rbp", "rsp") else "int64"
            add(reg, 64, kind, CORE, _general(reg, 64))
        add("rip", 64, "code_ptr", CORE, _general("rip", 64))
    else:
        for reg in ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi"):
            kind = "data_ptr" if reg in ("esp", "ebp") else "int32"
            add(reg, 32, kind, CORE, _general("r" + reg[1:], 32))
        add("eip", 32, "code_ptr", CORE, _general("rip", 32))
    add("eflags", 32, "i386_eflags", CORE, _general("rflags", 32))
    for seg in ("cs", "ss", "ds", "es", "fs", "gs"):
        add(seg, 32, "int32", CORE, _selector(seg))
    for i in range(8):
        add(f"st{i}", 80, "i387_ext", CORE, _st(i))
    add("fctrl", 32, "int", CORE, _fpu_scalar("fcw", width=16), "float")
    add("fstat", 32, "int", CORE, _fpu_scalar("fsw", width=16), "float")
    add("ftag", 32, "int", CORE, _ftag(), "float")
    add("fiseg", 32, "int", CORE, _fpu_scalar("last_ip", shift=32, width=16), "float")
    add("fioff", 32, "int", CORE, _fpu_scalar("last_ip", width=32), "float")
    add("foseg", 32, "int", CORE, _fpu_scalar("last_dp", shift=32, width=16), "float")
    add("fooff", 32, "int", CORE, _fpu_scalar("last_dp", width=32), "float")
    add("fop", 32, "int", CORE, _fpu_scalar("last_opcode", width=11), "float")
    for i in range(16 if wide else 8):
        add(f"xmm{i}", 128, "vec128", SSE, _xmm(i))
    add("mxcsr", 32, "i386_mxcsr", SSE, _fpu_scalar("mxcsr", width=32), "vector")
    # gdb's i386 (not amd64) numbering has no room for the segments feature's registers:
    # there, the bases are plain system registers
    bases = SEGMENTS if wide else SYSTEM
    add("fs_base", bits, "int", bases, _base("fs", bits), None if wide else "system")
    add("gs_base", bits, "int", bases, _base("gs", bits), None if wide else "system")
    for cr in ("cr0", "cr2", "cr3", "cr4") + (("cr8",) if wide else ()):
        add(cr, bits, "int", SYSTEM, _control(cr, bits), "system")
    add("efer", 64, "int", SYSTEM, _control("efer", 64), "system")
    return Arch(name, tuple(regs), "rip" if wide else "eip")


ARCHES = {name: _build(name) for name in ("i386:x86-64", "i386")}
