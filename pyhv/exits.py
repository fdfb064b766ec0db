"""Typed VM exits: what :meth:`pyhv.VCpu.run` returns, one frozen dataclass per kind.

They work with ``match``:

>>> from pyhv import exits
>>> def describe(exit: exits.Exit) -> str:
...     match exit:
...         case exits.IoOut(port=0x3F8, data=d): return f"serial {d!r}"
...         case exits.MmioWrite(gpa=a, data=d): return f"MMIO write at {a:#x}"
...         case exits.Halt() | exits.Shutdown(): return "stopped"
...         case _: return "other"
>>> describe(exits.IoOut(0x3F8, 1, b"A"))
"serial b'A'"
>>> describe(exits.Halt(rip=0x1001)), exits.Halt(rip=0x1001)
('stopped', Halt(rip=0x1001))

Every exit carries ``rip``, the guest's instruction pointer after the exit (None where the
backend does not report it cheaply).  :class:`IoIn`, :class:`MmioRead` and the MSR exits
must be answered with ``complete()`` before the vCPU runs again; an unanswered read sees all
ones (0xFF...), like a read from an empty bus, and an unanswered MSR access faults (#GP).

Each kind says how it bears on a run (class attributes, not lists kept elsewhere):
``fault`` (the guest cannot go on: the partition is poisoned), ``clean_end`` (ends a
handler-driven run without poisoning it) and ``machine_end`` (the whole machine stopped, so
:meth:`pyhv.Partition.run_all` stops every vCPU).

This module is plain data: it imports nothing of KVM.  Exits that take an answer hold the
object that delivers it (:class:`Completer`), given by whoever decoded them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Protocol, TypeVar

from .errors import HandlerError, StaleExitError

__all__ = [
    "STATUS_HALT",
    "STATUS_TRIPLE_FAULT",
    "STATUS_UNHANDLED",
    "Canceled",
    "Completer",
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
    "MsrRead",
    "MsrWrite",
    "Reset",
    "Shutdown",
    "Syscall",
    "SystemEvent",
    "Unknown",
    "run_status",
    "encode_answer",
    "fast_constructor",
    "kvm_exit_name",
]

_KVM_EXIT_NAMES = (
    "UNKNOWN", "EXCEPTION", "IO", "HYPERCALL", "DEBUG", "HLT", "MMIO", "IRQ_WINDOW_OPEN",
    "SHUTDOWN", "FAIL_ENTRY", "INTR", "SET_TPR", "TPR_ACCESS", "S390_SIEIC", "S390_RESET",
    "DCR", "NMI", "INTERNAL_ERROR", "OSI", "PAPR_HCALL", "S390_UCONTROL", "WATCHDOG",
    "S390_TSCH", "EPR", "SYSTEM_EVENT", "S390_STSI", "IOAPIC_EOI", "HYPERV", "ARM_NISV",
    "X86_RDMSR", "X86_WRMSR", "DIRTY_RING_FULL", "AP_RESET_HOLD", "X86_BUS_LOCK", "XEN",
    "RISCV_SBI", "RISCV_CSR", "NOTIFY", "LOONGARCH_IOCSR", "MEMORY_FAULT",
)


def kvm_exit_name(reason: int) -> str:
    """``KVM_EXIT_*`` name of a raw exit reason.

    >>> kvm_exit_name(2), kvm_exit_name(500)
    ('KVM_EXIT_IO', 'KVM_EXIT_500')
    """
    if 0 <= reason < len(_KVM_EXIT_NAMES):
        return "KVM_EXIT_" + _KVM_EXIT_NAMES[reason]
    return f"KVM_EXIT_{reason}"


_LIMITS = {1: 1 << 8, 2: 1 << 16, 4: 1 << 32, 8: 1 << 64}


def encode_answer(value: Any, size: int, count: int, what: str) -> bytes:
    """The bytes the guest reads for an IN / MMIO read answered with ``value``.

    ``value`` is an int (one element of ``size`` bytes), ``bytes`` of exactly
    ``size * count`` bytes, or a sequence of ``count`` ints (string IN).

    >>> encode_answer(0x1234, 2, 1, "IN"), encode_answer([1, 2], 1, 2, "IN")
    (b'4\\x12', b'\\x01\\x02')
    >>> encode_answer(256, 1, 1, "IN from port 0x60")
    Traceback (most recent call last):
    pyhv.errors.HandlerError: IN from port 0x60: answer 0x100 does not fit in 1 byte(s)
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


def fits(value: Any, size: int) -> bool:
    """``value`` is a plain int that fits ``size`` bytes (the common answer, checked fast)."""
    return type(value) is int and 0 <= value < _LIMITS[size]


class Completer(Protocol):
    """Who delivers the answer of an exit that takes one (the vCPU that made it)."""

    def complete_read(self, seq: int, value: Any, size: int, count: int, what: str) -> None:
        """Give the guest ``value`` for the IN/MMIO read of run ``seq``."""

    def complete_msr(self, seq: int, value: int, fault: bool, what: str) -> None:
        """Answer the MSR access of run ``seq``: ``value`` for a read, or #GP if ``fault``."""

    def current_seq(self) -> int:
        """The number of the vCPU's latest run (an exit of an older one is stale)."""


class ExceptionFrames(Protocol):
    """What :class:`GuestException` and :class:`Syscall` need of their vCPU."""

    def current_seq(self) -> int:
        """The number of the vCPU's latest run."""

    def write_guest(self, gpa: int, data: bytes) -> None:
        """Write guest memory (the exception frame's return address)."""

    def set_result(self, value: int) -> None:
        """Set RAX (a system call's result)."""


_HEX_FIELDS = frozenset({"rip", "port", "gpa", "pc", "dr6", "dr7", "hardware_reason", "cr2",
                         "error_code", "index", "value"})


@dataclass(frozen=True, slots=True, repr=False)
class Exit:
    """Base of all exits."""

    fault: ClassVar[bool] = False          # the guest cannot go on: poisons the partition
    clean_end: ClassVar[bool] = False      # ends a handler-driven run without poisoning it
    machine_end: ClassVar[bool] = False    # the whole machine stopped (run_all stops all)

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

    def _completer(self, what: str) -> Completer:
        if self._vcpu is None:
            raise StaleExitError(f"{what}: this exit does not belong to a vCPU")
        vcpu: Completer = self._vcpu
        return vcpu


@dataclass(frozen=True, slots=True, repr=False)
class IoOut(Exit):
    """The guest wrote ``data`` to ``port`` (``count`` elements of ``size`` bytes: count > 1
    for string IO such as ``rep outsb``).

    >>> out = IoOut(0xE9, 2, b"\\x01\\x00\\x02\\x00", 2)
    >>> out.value, out.values
    (1, (1, 2))
    """

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
        for a string read (``rep insb``).  Sizes are checked; a second answer raises
        :class:`pyhv.StaleExitError`."""
        what = f"IN from port {self.port:#x}"
        self._completer(what).complete_read(self._seq, value, self.size, self.count, what)


@dataclass(frozen=True, slots=True, repr=False)
class MmioRead(_Completable):
    """The guest reads ``size`` bytes at ``gpa``, where no RAM is mapped; answer with
    :meth:`complete`."""

    gpa: int
    size: int

    def complete(self, value: int | bytes) -> None:
        """Give the guest ``value`` (an int that fits ``size`` bytes, or exactly ``size``
        bytes)."""
        what = f"MMIO read at {self.gpa:#x}"
        self._completer(what).complete_read(self._seq, value, self.size, 1, what)


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


_MSR_REASONS = {1: "invalid", 2: "unknown", 4: "filter"}


@dataclass(frozen=True, slots=True, repr=False)
class MsrRead(_Completable):
    """The guest executed ``rdmsr`` of ``index``, which pyhv routes to user space (see
    :meth:`pyhv.Partition.add_msr_handler`).  :meth:`complete` gives EDX:EAX; :meth:`fail`
    (or no answer at all) raises #GP in the guest."""

    index: int
    reason: int = 4

    @property
    def why(self) -> str:
        """Why KVM handed it to user space: "filter", "unknown" or "invalid"."""
        return _MSR_REASONS.get(self.reason, f"reason {self.reason}")

    def complete(self, value: int) -> None:
        """The guest reads ``value`` (64 bits)."""
        what = f"RDMSR {self.index:#x}"
        if not fits(value, 8):
            raise HandlerError(f"{what}: answer {value!r} is not a 64-bit unsigned int")
        self._completer(what).complete_msr(self._seq, value, False, what)

    def fail(self) -> None:
        """Raise #GP in the guest, as an unimplemented MSR does."""
        what = f"RDMSR {self.index:#x}"
        self._completer(what).complete_msr(self._seq, 0, True, what)


@dataclass(frozen=True, slots=True, repr=False)
class MsrWrite(_Completable):
    """The guest executed ``wrmsr`` of ``value`` to ``index``.  :meth:`complete` accepts it;
    :meth:`fail` (or no answer) raises #GP in the guest."""

    index: int
    value: int
    reason: int = 4

    @property
    def why(self) -> str:
        return _MSR_REASONS.get(self.reason, f"reason {self.reason}")

    def complete(self) -> None:
        """Accept the write: the guest goes on after the ``wrmsr``."""
        what = f"WRMSR {self.index:#x}"
        self._completer(what).complete_msr(self._seq, 0, False, what)

    def fail(self) -> None:
        """Raise #GP in the guest."""
        what = f"WRMSR {self.index:#x}"
        self._completer(what).complete_msr(self._seq, 0, True, what)


@dataclass(frozen=True, slots=True, repr=False)
class Halt(Exit):
    """The guest executed ``hlt`` (with no in-kernel interrupt controller to wait on)."""

    clean_end: ClassVar[bool] = True


@dataclass(frozen=True, slots=True, repr=False)
class Shutdown(Exit):
    """The guest triple-faulted (or otherwise asked the CPU to shut down)."""

    fault: ClassVar[bool] = True
    machine_end: ClassVar[bool] = True


@dataclass(frozen=True, slots=True, repr=False)
class InternalError(Exit):
    """KVM could not continue the guest (``KVM_EXIT_INTERNAL_ERROR``).

    ``instruction`` holds the bytes of the instruction KVM failed to emulate, when the
    kernel reports them (empty otherwise).
    """

    fault: ClassVar[bool] = True

    suberror: int
    data: tuple[int, ...] = ()
    message: str = ""
    instruction: bytes = b""


@dataclass(frozen=True, slots=True, repr=False)
class FailEntry(Exit):
    """The hardware refused to enter the guest (invalid guest state)."""

    fault: ClassVar[bool] = True

    hardware_reason: int
    cpu: int


_SYSTEM_EVENTS = {1: "shutdown", 2: "reset", 3: "crash", 4: "wakeup", 5: "suspend", 6: "sev_term"}


@dataclass(frozen=True, slots=True, repr=False)
class SystemEvent(Exit):
    """A platform event (``KVM_EXIT_SYSTEM_EVENT``): ``kind`` is "shutdown", "reset", ..."""

    machine_end: ClassVar[bool] = True

    type: int
    data: tuple[int, ...] = ()

    @property
    def kind(self) -> str:
        return _SYSTEM_EVENTS.get(self.type, f"event {self.type}")


@dataclass(frozen=True, slots=True, repr=False)
class Debug(Exit):
    """A guest-debug exit (breakpoint, single step, watchpoint) when guest debugging is on
    (:meth:`pyhv.VCpu.set_guest_debug`).  It is a stop the debugger asked for: it ends a
    handler-driven run without poisoning it.

    ``exception`` is the vector (1: #DB, 3: ``int3``), ``pc`` where the guest stopped, ``dr6``
    what the debug status register said (``dr7`` is what KVM reported, stale on some
    backends).  :attr:`reason` and :attr:`hits` say why; for a hardware breakpoint or
    watchpoint, ``address`` and ``access`` are those of the debug register that fired (filled
    in from the vCPU's settings).

    >>> Debug(1, 0x1005, 0xFFFF4FF0, 0).reason
    'step'
    >>> hit = Debug(1, 0x1010, 0xFFFF0FF2, 0, address=0x3000, access="write")
    >>> hit.reason, hit.hits, hit
    ('watchpoint', (1,), Debug(exception=1, pc=0x1010, dr6=0xffff0ff2, dr7=0x0, \
address=0x3000, access='write'))
    """

    clean_end: ClassVar[bool] = True

    exception: int
    pc: int
    dr6: int
    dr7: int
    address: int | None = field(default=None, kw_only=True)
    access: str | None = field(default=None, kw_only=True)

    @property
    def hits(self) -> tuple[int, ...]:
        """The debug registers (0-3) DR6 says fired."""
        return tuple(i for i in range(4) if self.dr6 >> i & 1) if self.exception == 1 else ()

    @property
    def reason(self) -> str:
        """"software_breakpoint" (``int3``), "breakpoint" (a hardware execution breakpoint),
        "watchpoint" (a data breakpoint), "step" (a single step) or "unknown"."""
        if self.exception == 3:
            return "software_breakpoint"
        if self.hits:
            return "breakpoint" if self.access in (None, "execute") else "watchpoint"
        if self.exception == 1 and self.dr6 & (1 << 14):
            return "step"
        return "unknown"

    def __repr__(self) -> str:
        text = Exit.__repr__(self)
        if self.address is None:
            return text
        extra = f", address={self.address:#x}, access={self.access!r}"
        cut = text.rfind(", rip=") if self.rip is not None else len(text) - 1
        return text[:cut] + extra + text[cut:]


@dataclass(frozen=True, slots=True, repr=False)
class Hypercall(Exit):
    """A hypercall that KVM hands to user space."""

    nr: int
    args: tuple[int, ...]


@dataclass(frozen=True, slots=True, repr=False)
class Canceled(Exit):
    """The run was stopped by :meth:`pyhv.VCpu.cancel` / :meth:`pyhv.Partition.stop`."""

    clean_end: ClassVar[bool] = True


@dataclass(frozen=True, slots=True, repr=False)
class DebugExit(Exit):
    """The guest wrote ``value`` to a debug-exit port (QEMU's isa-debug-exit): the run ended
    with exit status ``code`` = ``(value << 1) | 1``."""

    clean_end: ClassVar[bool] = True
    machine_end: ClassVar[bool] = True

    code: int
    value: int
    port: int


@dataclass(frozen=True, slots=True, repr=False)
class Reset(Exit):
    """The guest asked the machine to reset (e.g. i8042 command 0xFE); ``source`` says how."""

    clean_end: ClassVar[bool] = True
    machine_end: ClassVar[bool] = True

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

    >>> GuestException(14, 2, cr2=0xdead0000, user=True, rip=0x100000).name
    '#PF page fault'
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
        vcpu: ExceptionFrames | None = self._vcpu
        if vcpu is None:
            raise StaleExitError("this exception does not belong to a vCPU")
        if vcpu.current_seq() != self._seq:   # its frame on the guest stack may be reused
            raise StaleExitError("the vCPU has run since this exception; move it first")
        if isinstance(rip, bool) or not isinstance(rip, int) or not 0 <= rip < 1 << self._width:
            raise HandlerError(f"rip {rip!r} does not fit {self._width}-bit code")
        vcpu.write_guest(self._frame, rip.to_bytes(self._width // 8, "little"))


@dataclass(frozen=True, slots=True, repr=False)
class Syscall(_Completable):
    """The user-mode payload executed ``syscall``: ``nr`` (RAX) and six ``args`` (RDI, RSI,
    RDX, R10, R8, R9).  :meth:`complete` sets the result (RAX); running the vCPU again
    returns to the payload after the ``syscall``, at ``rip``."""

    nr: int
    args: tuple[int, ...]

    def complete(self, result: int) -> None:
        """Return ``result`` to the payload in RAX (negative values wrap, as -errno does)."""
        vcpu: ExceptionFrames | None = self._vcpu
        if vcpu is None or vcpu.current_seq() != self._seq:
            raise StaleExitError("the vCPU has run since this syscall; complete it first")
        vcpu.set_result(result)


@dataclass(frozen=True, slots=True, repr=False)
class InvalidExit(Exit):
    """The kernel described an exit whose sizes or offsets pyhv refuses to trust."""

    fault: ClassVar[bool] = True

    kvm_reason: int
    data: tuple[int, ...]
    message: str


@dataclass(frozen=True, slots=True, repr=False)
class Unknown(Exit):
    """An exit pyhv does not decode; ``reason`` is the raw ``KVM_EXIT_*`` value."""

    reason: int
    name: str
    data: tuple[int, ...] = ()


E = TypeVar("E", bound="Exit")


def fast_constructor(cls: type[E]) -> Callable[..., E]:
    """A function that builds a ``cls`` from all its field values, in field order (keyword-only
    ones included), for decoders on the hot path: a frozen dataclass's ``__init__`` sets each
    field through ``object.__setattr__``; this sets the slots directly.  The result is the
    same object ``cls(...)`` makes.

    >>> make = fast_constructor(IoOut)            # rip, port, size, data, count
    >>> make(0x1004, 0x3F8, 1, b"A", 1) == IoOut(0x3F8, 1, b"A", 1, rip=0x1004)
    True
    """
    names = [f.name for f in fields(cls)]
    namespace: dict[str, Any] = {"new": object.__new__, "cls": cls}
    lines = [f"def make({', '.join(names)}):", "    obj = new(cls)"]
    for name in names:
        owner = next(k for k in cls.__mro__ if name in getattr(k, "__slots__", ()))
        namespace[f"set_{name}"] = owner.__dict__[name].__set__
        lines.append(f"    set_{name}(obj, {name})")
    lines.append("    return obj")
    exec("\n".join(lines), namespace)       # noqa: S102 - code built from field names above
    make: Callable[..., E] = namespace["make"]
    return make


# -- what pyhv's commands exit with -------------------------------------------------------------
STATUS_HALT, STATUS_TRIPLE_FAULT, STATUS_UNHANDLED = 0, 2, 4


def run_status(final: Exit) -> int:
    """The exit status ``pyhv run`` (and ``pyhv fleet run`` per input) gives a run that ended
    on ``final``: ``(V << 1) | 1`` (its low 8 bits) for a debug-exit write of V, as QEMU's
    isa-debug-exit; 0 for a halt, a reset, a power-off or an S3 suspend; 2 for a triple fault;
    4 for anything else (an exit pyhv could not handle).

    >>> run_status(DebugExit(code=3, value=1, port=0xF4)), run_status(Halt())
    (3, 0)
    >>> run_status(Shutdown()), run_status(Canceled())
    (2, 4)
    """
    if isinstance(final, DebugExit):
        return final.code & 0xFF
    if isinstance(final, (Halt, Reset)):
        return STATUS_HALT
    if isinstance(final, SystemEvent) and final.kind in ("shutdown", "suspend", "reset"):
        return STATUS_HALT
    if isinstance(final, Shutdown):
        return STATUS_TRIPLE_FAULT
    return STATUS_UNHANDLED
