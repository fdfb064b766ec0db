"""Halts in pyhv's stub page: the guest exceptions and system calls they stand for.

A vCPU with stubs (user mode, or ``exceptions=True``) enters them through its IDT or its
``syscall`` MSRs; each stub starts with ``hlt``, so the halt's RIP says which one, and the
stack holds the CPU's exception frame (:mod:`pyhv.x86.setup`).
"""

from __future__ import annotations

from typing import Protocol

from .._native import VcpuFd
from ..exits import Exit, GuestException, Syscall
from ..x86.registers import to_u64
from ..x86.setup import (
    ERROR_CODE_VECTORS,
    SYSCALL_STUB,
    StubHalt,
    StubKind,
    decode_stub_halt,
    stub_range,
)


class GuestMemoryAccess(Protocol):
    def read(self, gpa: int, size: int) -> bytes: ...
    def write(self, gpa: int, data: bytes) -> None: ...


class StubFrames:
    """The vCPU side of :class:`pyhv.exits.GuestException` and :class:`pyhv.exits.Syscall`
    (the :class:`pyhv.exits.ExceptionFrames` protocol): one per vCPU."""

    def __init__(self, fd: VcpuFd, memory: GuestMemoryAccess) -> None:
        self._fd = fd
        self._memory = memory

    def current_seq(self) -> int:
        return self._fd.current_seq()

    def write_guest(self, gpa: int, data: bytes) -> None:
        self._memory.write(gpa, data)

    def set_result(self, value: int) -> None:
        self._fd.write_registers({"rax": to_u64("rax", value)})


class Stubs:
    """Recognises and decodes stub halts for one vCPU whose setup region is at ``base``."""

    def __init__(self, base: int, frames: StubFrames, fd: VcpuFd,
                 memory: GuestMemoryAccess) -> None:
        self.base = base
        self.lo, self.hi = stub_range(base)
        self._frames = frames
        self._fd = fd
        self._memory = memory

    def meaning(self, rip: int) -> StubHalt | None:
        """What a halt at ``rip`` means, if it is one of the stubs'."""
        linear = rip
        if not self.lo < rip <= self.hi and rip <= 0xFFFF:
            linear = self._fd.get_sregs().cs.base + rip        # real mode
        if self.lo < linear <= self.hi:
            return decode_stub_halt(self.base, linear)
        return None

    def exit_for(self, halt: StubHalt, seq: int) -> Exit:
        """The exception or syscall a stub halt stands for."""
        regs = self._fd.read_registers()
        if halt.kind is StubKind.SYSCALL:
            args = (regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9)
            return Syscall(regs.rax, args, rip=regs.rcx, _vcpu=self._frames, _seq=seq)
        width = halt.kind.width
        size = width // 8
        vector = halt.vector
        memory = self._memory
        sregs = self._fd.get_sregs()
        frame = (sregs.ss.base + (regs.rsp & 0xFFFF)) if width == 16 else regs.rsp
        error_code = None
        if width != 16 and vector in ERROR_CODE_VECTORS:
            error_code = int.from_bytes(memory.read(frame, size), "little")
            frame += size
        words = memory.read(frame, 3 * size)
        rip, cs = (int.from_bytes(words[i:i + size], "little") for i in (0, size))
        if width == 16:
            rip += cs << 4
        syscall_entry = self.base + SYSCALL_STUB
        if vector == 14 and cs & 3 and rip == syscall_entry and sregs.cr2 == syscall_entry:
            # kvm_pvm runs a CPL3 `syscall` to LSTAR without entering ring 0, where fetching
            # the supervisor-only stub faults.  Finish it as sysret would: the stub's iretq
            # returns to RCX with RFLAGS from R11.
            memory.write(frame, regs.rcx.to_bytes(8, "little"))
            memory.write(frame + 16, regs.r11.to_bytes(8, "little"))
            return self.exit_for(StubHalt(StubKind.SYSCALL), seq)
        return GuestException(vector, error_code, sregs.cr2 if vector == 14 else None,
                              bool(cs & 3), rip=rip, _vcpu=self._frames, _frame=frame,
                              _width=width, _seq=seq)
