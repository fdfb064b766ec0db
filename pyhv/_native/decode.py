"""Exit decoding: the C core's exit summary (``struct pyhv_exit``) into typed exits.

Halts come back as :class:`pyhv.exits.Halt`; whether one stands for a guest exception or a
system call (a halt in pyhv's stub page) is the vCPU's to say, above this layer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..exits import (
    Canceled,
    Debug,
    DebugExit,
    Exit,
    FailEntry,
    Halt,
    Hypercall,
    InternalError,
    InvalidExit,
    IoIn,
    IoOut,
    MmioRead,
    MmioWrite,
    MsrRead,
    MsrWrite,
    Shutdown,
    SystemEvent,
    Unknown,
    fast_constructor,
    kvm_exit_name,
)
from .binding import ffi, lib

_INTERNAL_ERRORS = {
    1: "emulation failure: KVM could not emulate the instruction at RIP",
    2: "an exception occurred while delivering another exception (simultaneous exceptions)",
    3: "event delivery failed: a fault while delivering an interrupt or exception, often a "
       "missing or broken IDT/GDT entry or an unmapped stack",
    4: "the hardware exited for a reason KVM did not expect",
}
_EMULATION_FAILURE = 1
_FLAG_INSTRUCTION_BYTES = 1


class ExitContext:
    """What decoding needs besides the record: who completes reads, the RIP when the
    record lacks it, and notes about the backend for error messages."""

    def __init__(self, completer: Any, rip: Callable[[], int], backend_note: str = "",
                 code_at: Callable[[int], bool] | None = None) -> None:
        self.completer = completer
        self.rip = rip
        self.backend_note = backend_note
        # whether guest RAM holds the code at a guest-virtual address (None: not known)
        self.code_at = code_at


def _words(c: Any) -> tuple[int, ...]:
    return tuple(c.data[i] for i in range(min(c.ndata, 16)))


def _rip(c: Any) -> int | None:
    return c.rip if c.rip_valid else None


# the exits every run loop sees most, built without the frozen dataclasses' __init__
new_io_out = _new_io_out = fast_constructor(IoOut)   # rip, port, size, data, count
_new_io_in = fast_constructor(IoIn)            # rip, _vcpu, _seq, port, size, count
_new_mmio_read = fast_constructor(MmioRead)    # rip, _vcpu, _seq, gpa, size
_new_mmio_write = fast_constructor(MmioWrite)  # rip, gpa, size, data
_new_halt = fast_constructor(Halt)             # rip


def _io(c: Any, ctx: ExitContext) -> Exit:
    rip = c.rip if c.rip_valid else None
    if c.io_in:
        return _new_io_in(rip, ctx.completer, c.seq, c.io_port, c.io_size, c.io_count)
    size = c.io_size
    count = c.io_count
    if count == 1:
        data = c.io_value.to_bytes(size, "little")
    else:
        data = ffi.buffer(c.io_data, size * count)[:]
    return _new_io_out(rip, c.io_port, size, data, count)


def _mmio(c: Any, ctx: ExitContext) -> Exit:
    rip = c.rip if c.rip_valid else None
    if c.mmio_write:
        return _new_mmio_write(rip, c.mmio_gpa, c.mmio_len,
                               c.mmio_value.to_bytes(c.mmio_len, "little"))
    return _new_mmio_read(rip, ctx.completer, c.seq, c.mmio_gpa, c.mmio_len)


def failed_instruction(words: tuple[int, ...]) -> bytes:
    """Instruction bytes of an emulation failure: data[0] holds flags, then a size byte and
    up to 15 instruction bytes follow (KVM's ``emulation_failure`` layout)."""
    if len(words) < 2 or not words[0] & _FLAG_INSTRUCTION_BYTES:
        return b""
    raw = b"".join(w.to_bytes(8, "little") for w in words[1:3])
    size = min(raw[0], 15)
    return raw[1:1 + size]


def _internal(c: Any, ctx: ExitContext) -> Exit:
    words = _words(c)
    rip = _rip(c)
    if rip is None:
        rip = ctx.rip()
    text = _INTERNAL_ERRORS.get(c.code, f"suberror {c.code}")
    message = f"KVM internal error at rip={rip:#x}: {text}"
    instruction = failed_instruction(words) if c.code == _EMULATION_FAILURE else b""
    if c.code == _EMULATION_FAILURE and not instruction and ctx.code_at is not None and \
            not ctx.code_at(rip):
        # KVM could not even fetch the instruction: say why, not "could not emulate"
        message = (f"KVM internal error at rip={rip:#x}: RIP is not in guest RAM (no memory "
                   "slot holds the code there, or the page tables do not map it)")
        return InternalError(c.code, words, message, b"", rip=rip)
    if instruction:
        message += f" (bytes at rip: {instruction.hex(' ')})"
        if ctx.backend_note:
            message += "; " + ctx.backend_note
    elif words:
        message += "; data " + " ".join(f"{w:#x}" for w in words)
    return InternalError(c.code, words, message, instruction, rip=rip)


def _unknown(c: Any, ctx: ExitContext) -> Exit:
    return Unknown(c.kvm_reason, kvm_exit_name(c.kvm_reason), _words(c), rip=_rip(c))


def _invalid(c: Any, ctx: ExitContext) -> Exit:
    words = _words(c)
    return InvalidExit(c.kvm_reason, words,
                       f"{kvm_exit_name(c.kvm_reason)} with implausible fields {words}",
                       rip=_rip(c))


def _msr(c: Any, ctx: ExitContext) -> Exit:
    rip = c.rip if c.rip_valid else None
    if c.msr_write:
        return MsrWrite(c.msr_index, c.msr_value, c.msr_reason, rip=rip, _vcpu=ctx.completer,
                        _seq=c.seq)
    return MsrRead(c.msr_index, c.msr_reason, rip=rip, _vcpu=ctx.completer, _seq=c.seq)


def _halt(c: Any, ctx: ExitContext) -> Exit:
    return _new_halt(c.rip if c.rip_valid else ctx.rip())


_BUILDERS: dict[int, Callable[[Any, ExitContext], Exit]] = {
    lib.PYHV_EXIT_IO: _io,
    lib.PYHV_EXIT_MMIO: _mmio,
    lib.PYHV_EXIT_HALT: _halt,
    lib.PYHV_EXIT_SHUTDOWN: lambda c, ctx: Shutdown(rip=_rip(c)),
    lib.PYHV_EXIT_INTERNAL_ERROR: _internal,
    lib.PYHV_EXIT_FAIL_ENTRY: lambda c, ctx: FailEntry(c.data[0], c.data[1], rip=_rip(c)),
    lib.PYHV_EXIT_SYSTEM_EVENT: lambda c, ctx: SystemEvent(c.code, _words(c), rip=_rip(c)),
    lib.PYHV_EXIT_DEBUG: lambda c, ctx: Debug(c.code, c.data[0], c.data[1], c.data[2],
                                              rip=_rip(c)),
    lib.PYHV_EXIT_HYPERCALL: lambda c, ctx: Hypercall(c.data[0], _words(c)[1:], rip=_rip(c)),
    lib.PYHV_EXIT_CANCELED: lambda c, ctx: Canceled(),
    lib.PYHV_EXIT_UNKNOWN: _unknown,
    lib.PYHV_EXIT_DEBUG_EXIT: lambda c, ctx: DebugExit((c.data[0] << 1) | 1, c.data[0],
                                                       c.data[1], rip=_rip(c)),
    lib.PYHV_EXIT_BAD_EXIT: _invalid,
    lib.PYHV_EXIT_MSR: _msr,
}


def decode(c: Any, ctx: ExitContext) -> Exit:
    """The typed exit for the C core's exit summary ``c``."""
    return _BUILDERS.get(c.reason, _unknown)(c, ctx)
