"""Typed VM exits: what :meth:`pyhv.VCpu.run` returns, one frozen dataclass per kind.

They work with ``match``::

    match cpu.run():
        case exits.IoOut(port=0x3F8, data=d): print(d.decode())
        case exits.IoIn(port=0x60) as io: io.complete(0x5A)
        case exits.MmioRead(gpa=a, size=n) as m: m.complete(0)
        case exits.MmioWrite(gpa=a, data=d): ...
        case exits.Halt() | exits.Shutdown(): ...

Every exit carries ``rip``, the guest's instruction pointer after the exit (None where the
backend does not report it cheaply).  :class:`IoIn` and :class:`MmioRead` must be answered
with ``complete()`` before the vCPU runs again; an unanswered read sees all ones (0xFF...),
like a read from an empty bus.
"""

from __future__ import annotations

import errno
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from ._ffi import ffi, lib
from .errors import HandlerError, StaleExitError, check_rc
from .system import detect_backend

if TYPE_CHECKING:
    from .vcpu import VCpu

_KVM_EXIT_NAMES = (
    "UNKNOWN", "EXCEPTION", "IO", "HYPERCALL", "DEBUG", "HLT", "MMIO", "IRQ_WINDOW_OPEN",
    "SHUTDOWN", "FAIL_ENTRY", "INTR", "SET_TPR", "TPR_ACCESS", "S390_SIEIC", "S390_RESET",
    "DCR", "NMI", "INTERNAL_ERROR", "OSI", "PAPR_HCALL", "S390_UCONTROL", "WATCHDOG",
    "S390_TSCH", "EPR", "SYSTEM_EVENT", "S390_STSI", "IOAPIC_EOI", "HYPERV", "ARM_NISV",
    "X86_RDMSR", "X86_WRMSR", "DIRTY_RING_FULL", "AP_RESET_HOLD", "X86_BUS_LOCK", "XEN",
    "RISCV_SBI", "RISCV_CSR", "NOTIFY", "LOONGARCH_IOCSR", "MEMORY_FAULT",
)


def kvm_exit_name(reason: int) -> str:
    """``KVM_EXIT_*`` name of a raw exit reason."""
    if 0 <= reason < len(_KVM_EXIT_NAMES):
        return "KVM_EXIT_" + _KVM_EXIT_NAMES[reason]
    return f"KVM_EXIT_{reason}"




def encode_answer(value: Any, size: int, count: int, what: str) -> bytes:
    """The bytes the guest reads for an IN / MMIO read answered with ``value``.

    ``value`` is an int (one element of ``size`` bytes), ``bytes`` of exactly
    ``size * count`` bytes, or a sequence of ``count`` ints (string IN).
    """
    if isinstance(value, int) and not isinstance(value, bool):
        if count != 1:
            raise HandlerError(f"{what}: a string read of {count} elements needs bytes or a "
                               f"sequence of {count} ints, not one int")
        if not 0 <= value < 1 << (8 * size):
            raise HandlerError(f"{what}: answer {value:#x} does not fit in {size} byte(s)")
        return value.to_bytes(size, "little")
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        if len(data) != size * count:
            raise HandlerError(f"{what}: answer has {len(data)} bytes, the guest reads "
                               f"{size * count}")
        return data
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != count:
            raise HandlerError(f"{what}: {len(value)} values for {count} elements")
        return b"".join(encode_answer(v, size, 1, what) for v in value)
    raise HandlerError(f"{what}: answer must be an int or bytes, not {type(value).__name__}")


_HEX_FIELDS = frozenset({"rip", "port", "gpa", "pc", "dr6", "dr7", "hardware_reason", "cr2",
                         "error_code"})


@dataclass(frozen=True, slots=True, repr=False)
class Exit:
    """Base of all exits."""

    rip: int | None = field(default=None, kw_only=True)

    def __repr__(self) -> str:
        parts = []
        for f in fields(self):
            if not f.repr or f.kw_only:
                continue
            value = getattr(self, f.name)
            parts.append(f"{f.name}={value:#x}" if f.name in _HEX_FIELDS and isinstance(value, int)
                         else f"{f.name}={value!r}")
        if self.rip is not None:
            parts.append(f"rip={self.rip:#x}")
        return f"{type(self).__name__}({', '.join(parts)})"


@dataclass(frozen=True, slots=True, repr=False)
class _Completable(Exit):
    _vcpu: Any = field(default=None, kw_only=True, repr=False, compare=False)
    _seq: int = field(default=0, kw_only=True, repr=False, compare=False)

    def _answer(self, value: Any, size: int, count: int, what: str) -> None:
        if self._vcpu is None:
            raise StaleExitError(f"{what}: this exit does not belong to a vCPU")
        ptr = self._vcpu._handle()
        if count == 1 and isinstance(value, int) and not isinstance(value, bool):
            encode_answer(value, size, 1, what)       # range check only
            rc = lib.pyhv_vcpu_complete_in_value(ptr, self._seq, value)
        else:
            data = encode_answer(value, size, count, what)
            rc = lib.pyhv_vcpu_complete_in(ptr, self._seq, data, len(data))
        if rc == -_ESTALE:
            raise StaleExitError(f"{what}: the vCPU has run since this exit; complete an exit "
                                 "before running the vCPU again")
        check_rc(rc, what)


@dataclass(frozen=True, slots=True, repr=False)
class IoOut(Exit):
    """The guest wrote ``data`` to ``port`` (``count`` elements of ``size`` bytes: count > 1
    for string IO such as ``rep outsb``)."""

    port: int
    size: int
    data: bytes
    count: int = 1

    @property
    def value(self) -> int:
        """The first (usually only) element as a number."""
        return int.from_bytes(self.data[: self.size], "little")

    @property
    def values(self) -> tuple[int, ...]:
        """Every element as a number."""
        s = self.size
        return tuple(int.from_bytes(self.data[i:i + s], "little")
                     for i in range(0, len(self.data), s))


@dataclass(frozen=True, slots=True, repr=False)
class IoIn(_Completable):
    """The guest reads ``count`` elements of ``size`` bytes from ``port``; answer with
    :meth:`complete` before the next run."""

    port: int
    size: int
    count: int = 1

    def complete(self, value: int | bytes | Sequence[int]) -> None:
        """Give the guest ``value``: an int for a single read, or bytes / a sequence of ints
        for a string read (``rep insb``).  Sizes are checked."""
        self._answer(value, self.size, self.count, f"IN from port {self.port:#x}")


@dataclass(frozen=True, slots=True, repr=False)
class MmioRead(_Completable):
    """The guest reads ``size`` bytes at ``gpa``, where no RAM is mapped; answer with
    :meth:`complete`."""

    gpa: int
    size: int

    def complete(self, value: int | bytes) -> None:
        """Give the guest ``value`` (an int that fits ``size`` bytes, or exactly ``size``
        bytes)."""
        self._answer(value, self.size, 1, f"MMIO read at {self.gpa:#x}")


@dataclass(frozen=True, slots=True, repr=False)
class MmioWrite(Exit):
    """The guest wrote ``data`` (``size`` bytes) to ``gpa``: no RAM there, or a read-only
    slot."""

    gpa: int
    size: int
    data: bytes

    @property
    def value(self) -> int:
        return int.from_bytes(self.data, "little")


@dataclass(frozen=True, slots=True, repr=False)
class Halt(Exit):
    """The guest executed ``hlt`` (with no in-kernel interrupt controller to wait on)."""


@dataclass(frozen=True, slots=True, repr=False)
class Shutdown(Exit):
    """The guest triple-faulted (or otherwise asked the CPU to shut down)."""


_INTERNAL_ERRORS = {
    1: "emulation failure: KVM could not emulate the instruction at RIP",
    2: "an exception occurred while delivering another exception (simultaneous exceptions)",
    3: "event delivery failed: a fault while delivering an interrupt or exception, often a "
       "missing or broken IDT/GDT entry or an unmapped stack",
    4: "the hardware exited for a reason KVM did not expect",
}


@dataclass(frozen=True, slots=True, repr=False)
class InternalError(Exit):
    """KVM could not continue the guest (``KVM_EXIT_INTERNAL_ERROR``).

    ``instruction`` holds the bytes of the instruction KVM failed to emulate, when the
    kernel reports them (empty otherwise).
    """

    suberror: int
    data: tuple[int, ...] = ()
    message: str = ""
    instruction: bytes = b""


@dataclass(frozen=True, slots=True, repr=False)
class FailEntry(Exit):
    """The hardware refused to enter the guest (invalid guest state)."""

    hardware_reason: int
    cpu: int


_SYSTEM_EVENTS = {1: "shutdown", 2: "reset", 3: "crash", 4: "wakeup", 5: "suspend", 6: "sev_term"}


@dataclass(frozen=True, slots=True, repr=False)
class SystemEvent(Exit):
    """A platform event (``KVM_EXIT_SYSTEM_EVENT``): ``kind`` is "shutdown", "reset", ..."""

    type: int
    data: tuple[int, ...] = ()

    @property
    def kind(self) -> str:
        return _SYSTEM_EVENTS.get(self.type, f"event {self.type}")


@dataclass(frozen=True, slots=True, repr=False)
class Debug(Exit):
    """A guest-debug exit (breakpoint, single step) when guest debugging is enabled."""

    exception: int
    pc: int
    dr6: int
    dr7: int


@dataclass(frozen=True, slots=True, repr=False)
class Hypercall(Exit):
    """A hypercall that KVM hands to user space."""

    nr: int
    args: tuple[int, ...]


@dataclass(frozen=True, slots=True, repr=False)
class Canceled(Exit):
    """The run was stopped by :meth:`pyhv.VCpu.cancel` / :meth:`pyhv.Partition.stop`."""


@dataclass(frozen=True, slots=True, repr=False)
class DebugExit(Exit):
    """The guest wrote ``value`` to a debug-exit port (QEMU's isa-debug-exit): the run ended
    with exit status ``code`` = ``(value << 1) | 1``."""

    code: int
    value: int
    port: int


@dataclass(frozen=True, slots=True, repr=False)
class Reset(Exit):
    """The guest asked the machine to reset (e.g. i8042 command 0xFE); ``source`` says how."""

    source: str


_EXCEPTION_NAMES = {
    0: "#DE divide error", 1: "#DB debug", 2: "NMI", 3: "#BP breakpoint", 4: "#OF overflow",
    5: "#BR bound range", 6: "#UD invalid opcode", 7: "#NM device not available",
    8: "#DF double fault", 10: "#TS invalid TSS", 11: "#NP segment not present",
    12: "#SS stack fault", 13: "#GP general protection", 14: "#PF page fault",
    16: "#MF x87 error", 17: "#AC alignment check", 18: "#MC machine check",
    19: "#XM SIMD error", 20: "#VE virtualization", 21: "#CP control protection",
}


@dataclass(frozen=True, slots=True, repr=False)
class GuestException(Exit):
    """The guest raised CPU exception ``vector`` (user mode, or ``exceptions=True``).

    ``rip`` is where it happened (the faulting instruction for faults, the next one for traps
    such as ``int3``), ``error_code`` is None for vectors without one, ``cr2`` is the faulting
    address of a page fault, ``user`` tells whether the guest was at CPL3.  Running the vCPU
    again returns to ``rip`` (re-executing a fault) unless :meth:`resume_at` moves it.
    """

    vector: int
    error_code: int | None
    cr2: int | None = None
    user: bool = False
    _vcpu: Any = field(default=None, kw_only=True, repr=False, compare=False)
    _frame: int = field(default=0, kw_only=True, repr=False, compare=False)
    _width: int = field(default=64, kw_only=True, repr=False, compare=False)
    _seq: int = field(default=0, kw_only=True, repr=False, compare=False)

    @property
    def name(self) -> str:
        return _EXCEPTION_NAMES.get(self.vector, f"vector {self.vector}")

    def resume_at(self, rip: int) -> None:
        """Return from the exception to ``rip`` instead (e.g. past a faulting instruction)."""
        if self._vcpu is None:
            raise StaleExitError("this exception does not belong to a vCPU")
        if self._vcpu._exit.seq != self._seq:   # its frame on the guest stack may be reused
            raise StaleExitError("the vCPU has run since this exception; move it first")
        size = self._width // 8
        if not 0 <= rip < 1 << self._width:
            raise HandlerError(f"rip {rip:#x} does not fit {self._width}-bit code")
        self._vcpu.partition.memory.write(self._frame, rip.to_bytes(size, "little"))


@dataclass(frozen=True, slots=True, repr=False)
class Syscall(_Completable):
    """The user-mode payload executed ``syscall``: ``nr`` (RAX) and six ``args`` (RDI, RSI,
    RDX, R10, R8, R9).  :meth:`complete` sets the result (RAX); running the vCPU again
    returns to the payload after the ``syscall``, at ``rip``."""

    nr: int
    args: tuple[int, ...]

    def complete(self, result: int) -> None:
        """Return ``result`` to the payload in RAX (negative values wrap, as -errno does)."""
        if self._vcpu is None or self._vcpu._exit.seq != self._seq:
            raise StaleExitError("the vCPU has run since this syscall; complete it first")
        self._vcpu.regs.rax = result


@dataclass(frozen=True, slots=True, repr=False)
class InvalidExit(Exit):
    """The kernel described an exit whose sizes or offsets pyhv refuses to trust."""

    kvm_reason: int
    data: tuple[int, ...]
    message: str


@dataclass(frozen=True, slots=True, repr=False)
class Unknown(Exit):
    """An exit pyhv does not decode; ``reason`` is the raw ``KVM_EXIT_*`` value."""

    reason: int
    name: str
    data: tuple[int, ...] = ()


# exits after which the guest cannot simply go on: they poison the partition
FAULTS = (Shutdown, InternalError, FailEntry, InvalidExit)
# exits that end a handler-driven run cleanly (anything else nobody handled poisons it)
CLEAN_ENDS = (Halt, DebugExit, Canceled, Reset)


# -- decoding the C core's struct pyhv_exit ------------------------------------------------
_ESTALE = errno.ESTALE


def _words(c: Any) -> tuple[int, ...]:
    return tuple(c.data[i] for i in range(min(c.ndata, 16)))


def _rip(c: Any) -> int | None:
    return c.rip if c.rip_valid else None


def _io(c: Any, vcpu: VCpu) -> Exit:
    if c.io_in:
        return IoIn(c.io_port, c.io_size, c.io_count, rip=_rip(c), _vcpu=vcpu, _seq=c.seq)
    data = ffi.buffer(c.io_data, c.io_size * c.io_count)[:]
    return IoOut(c.io_port, c.io_size, data, c.io_count, rip=_rip(c))


def _mmio(c: Any, vcpu: VCpu) -> Exit:
    if c.mmio_write:
        return MmioWrite(c.mmio_gpa, c.mmio_len, bytes(c.mmio_data)[: c.mmio_len], rip=_rip(c))
    return MmioRead(c.mmio_gpa, c.mmio_len, rip=_rip(c), _vcpu=vcpu, _seq=c.seq)


_backend = functools.lru_cache(maxsize=1)(detect_backend)
_EMULATION_FAILURE = 1
_FLAG_INSTRUCTION_BYTES = 1


def _failed_instruction(words: tuple[int, ...]) -> bytes:
    """Instruction bytes of an emulation failure: data[0] holds flags, then a size byte and
    up to 15 instruction bytes follow (KVM's ``emulation_failure`` layout)."""
    if len(words) < 2 or not words[0] & _FLAG_INSTRUCTION_BYTES:
        return b""
    raw = b"".join(w.to_bytes(8, "little") for w in words[1:3])
    size = min(raw[0], 15)
    return raw[1:1 + size]


def _internal(c: Any, vcpu: VCpu) -> Exit:
    words = _words(c)
    rip = _rip(c)
    if rip is None:
        rip = vcpu.regs.rip
    text = _INTERNAL_ERRORS.get(c.code, f"suberror {c.code}")
    message = f"KVM internal error at rip={rip:#x}: {text}"
    instruction = _failed_instruction(words) if c.code == _EMULATION_FAILURE else b""
    if instruction:
        message += f" (bytes at rip: {instruction.hex(' ')})"
        if _backend() == "kvm_pvm":
            message += ("; kvm_pvm also reports this way some instructions that should raise "
                        "#UD or #BP at ring 0, such as xgetbv with CR4.OSXSAVE off, rdpru, "
                        "invpcid or int3")
    elif words:
        message += "; data " + " ".join(f"{w:#x}" for w in words)
    return InternalError(c.code, words, message, instruction, rip=rip)


def _unknown(c: Any, vcpu: VCpu) -> Exit:
    return Unknown(c.kvm_reason, kvm_exit_name(c.kvm_reason), _words(c), rip=_rip(c))


def _invalid(c: Any, vcpu: VCpu) -> Exit:
    words = _words(c)
    return InvalidExit(c.kvm_reason, words,
                       f"{kvm_exit_name(c.kvm_reason)} with implausible fields {words}",
                       rip=_rip(c))


_BUILDERS: dict[int, Callable[[Any, VCpu], Exit]] = {
    lib.PYHV_EXIT_IO: _io,
    lib.PYHV_EXIT_MMIO: _mmio,
    lib.PYHV_EXIT_HALT: lambda c, v: v._halt_exit(c),
    lib.PYHV_EXIT_SHUTDOWN: lambda c, v: Shutdown(rip=_rip(c)),
    lib.PYHV_EXIT_INTERNAL_ERROR: _internal,
    lib.PYHV_EXIT_FAIL_ENTRY: lambda c, v: FailEntry(c.data[0], c.data[1], rip=_rip(c)),
    lib.PYHV_EXIT_SYSTEM_EVENT: lambda c, v: SystemEvent(c.code, _words(c), rip=_rip(c)),
    lib.PYHV_EXIT_DEBUG: lambda c, v: Debug(c.code, c.data[0], c.data[1], c.data[2],
                                            rip=_rip(c)),
    lib.PYHV_EXIT_HYPERCALL: lambda c, v: Hypercall(c.data[0], _words(c)[1:], rip=_rip(c)),
    lib.PYHV_EXIT_CANCELED: lambda c, v: Canceled(),
    lib.PYHV_EXIT_UNKNOWN: _unknown,
    lib.PYHV_EXIT_DEBUG_EXIT: lambda c, v: DebugExit((c.data[0] << 1) | 1, c.data[0], c.data[1],
                                                     rip=_rip(c)),
    lib.PYHV_EXIT_BAD_EXIT: _invalid,
}


def decode(c: Any, vcpu: VCpu) -> Exit:
    """Build the typed exit for the C core's ``struct pyhv_exit`` ``c``."""
    return _BUILDERS.get(c.reason, _unknown)(c, vcpu)


__all__ = [
    "CLEAN_ENDS",
    "FAULTS",
    "Canceled",
    "Debug",
    "DebugExit",
    "Exit",
    "FailEntry",
    "GuestException",
    "Halt",
    "Hypercall",
    "InternalError",
    "InvalidExit",
    "IoIn",
    "IoOut",
    "MmioRead",
    "MmioWrite",
    "Reset",
    "Shutdown",
    "Syscall",
    "SystemEvent",
    "Unknown",
    "decode",
    "encode_answer",
    "kvm_exit_name",
]
