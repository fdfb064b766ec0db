"""x86 debug registers as plain values: what ``KVM_SET_GUEST_DEBUG`` takes (DR0-DR3 and DR7)
and what a debug exit's DR6 says.

>>> bp = HardwareBreakpoint(0x1000)                       # execute at 0x1000
>>> watch = HardwareBreakpoint(0x3000, "write", 4)        # 4-byte write watchpoint
>>> regs = debug_registers([bp, watch])
>>> [hex(r) for r in regs[:2]], hex(regs[7])
(['0x1000', '0x3000'], '0xd0020a')
>>> dr6_hits(0xFFFF0FF2), dr6_single_step(0xFFFF4FF0)
((1,), True)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import InvalidArgument

__all__ = ["ACCESSES", "DEBUG_REGISTERS", "GuestDebug", "HardwareBreakpoint", "debug_registers",
           "dr6_hits", "dr6_single_step"]

DEBUG_REGISTERS = 4                       # DR0-DR3: how many hardware breakpoints x86 has
# DR7's R/W field for each access kind (0b10, I/O breakpoints, needs CR4.DE: not offered)
ACCESSES = {"execute": 0b00, "write": 0b01, "access": 0b11}
_LENGTHS = {1: 0b00, 2: 0b01, 8: 0b10, 4: 0b11}
_DR6_BS = 1 << 14                         # single step
_DR7_GE = 1 << 9                          # "exact" breakpoints (recommended to set)


@dataclass(frozen=True)
class HardwareBreakpoint:
    """One debug register: break on ``access`` ("execute", "write" or "access" = read or
    write) of ``size`` bytes (1, 2, 4 or 8, aligned to it) at guest-virtual ``address``.

    >>> HardwareBreakpoint(0x1001, "write", 4)
    Traceback (most recent call last):
    pyhv.errors.InvalidArgument: a 4-byte watchpoint must be 4-byte aligned, not at 0x1001
    """

    address: int
    access: str = "execute"
    size: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.address, bool) or not isinstance(self.address, int) or \
                not 0 <= self.address < 1 << 64:
            raise InvalidArgument(f"breakpoint address {self.address!r} is not a 64-bit "
                                  "unsigned int")
        if self.access not in ACCESSES:
            raise InvalidArgument(f"breakpoint access {self.access!r}: choose one of "
                                  f"{', '.join(ACCESSES)}")
        if self.access == "execute" and self.size != 1:
            raise InvalidArgument("an execution breakpoint has size 1")
        if self.size not in _LENGTHS:
            raise InvalidArgument(f"watchpoint size {self.size!r}: 1, 2, 4 or 8 bytes")
        if self.address % self.size:
            raise InvalidArgument(f"a {self.size}-byte watchpoint must be {self.size}-byte "
                                  f"aligned, not at {self.address:#x}")


@dataclass(frozen=True)
class GuestDebug:
    """A vCPU's guest-debug settings (``VCpu.guest_debug``): single-stepping, software
    breakpoints (``int3`` reported to the host) and up to four hardware breakpoints, the
    index in ``hardware`` being the debug register (DR0-DR3).

    >>> GuestDebug(single_step=True).enabled, GuestDebug().enabled
    (True, False)
    """

    single_step: bool = False
    software_breakpoints: bool = False
    hardware: tuple[HardwareBreakpoint | None, ...] = field(default=())

    def __post_init__(self) -> None:
        if len(self.hardware) > DEBUG_REGISTERS:
            raise InvalidArgument(f"x86 has {DEBUG_REGISTERS} debug registers, not "
                                  f"{len(self.hardware)}")
        for bp in self.hardware:
            if bp is not None and not isinstance(bp, HardwareBreakpoint):
                raise InvalidArgument(f"{bp!r} is not a pyhv.HardwareBreakpoint")

    @property
    def enabled(self) -> bool:
        return self.single_step or self.software_breakpoints or any(
            bp is not None for bp in self.hardware)


def debug_registers(hardware: Sequence[HardwareBreakpoint | None]) -> list[int]:
    """DR0-DR7 (eight values, DR4/DR5 zero) enabling ``hardware`` in DR0 onwards (None leaves
    a register free)."""
    if len(hardware) > DEBUG_REGISTERS:
        raise InvalidArgument(f"x86 has {DEBUG_REGISTERS} debug registers, not {len(hardware)}")
    regs = [0] * 8
    dr7 = 0
    for i, bp in enumerate(hardware):
        if bp is None:
            continue
        regs[i] = bp.address
        dr7 |= 1 << (2 * i + 1)                      # G(i): enabled for every task
        dr7 |= (ACCESSES[bp.access] | _LENGTHS[bp.size] << 2) << (16 + 4 * i)
    regs[7] = dr7 | (_DR7_GE if dr7 else 0)
    return regs


def dr6_hits(dr6: int) -> tuple[int, ...]:
    """Which debug registers (0-3) a debug exception's DR6 says were hit."""
    return tuple(i for i in range(DEBUG_REGISTERS) if dr6 >> i & 1)


def dr6_single_step(dr6: int) -> bool:
    """Whether DR6 reports a single step (BS)."""
    return bool(dr6 & _DR6_BS)
