"""The vCPU fd: thin typed calls over the C core's ``struct pyhv_vcpu`` (fd + run area).

The run loop (:mod:`pyhv.core.loop`) calls :attr:`VcpuFd.enter` once per trip into the guest
and reads the C core's exit summary, :attr:`VcpuFd.record` (``struct pyhv_exit``, documented
in ``csrc/pyhv_core.h``), field by field: that record is this layer's one seam into the hot
path, read-only above it.  Everything else goes through methods that take and return plain
Python values.
"""

from __future__ import annotations

import errno
import functools
import threading
import weakref
from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import ClosedError, InvalidArgument, KvmError, StaleExitError, check_rc
from ..exits import encode_answer, fits
from ..x86.cpuid import CpuidEntry
from ..x86.registers import GENERAL_REGISTERS, Fpu, Regs, SpecialRegs
from .binding import ffi, lib
from .structs import (
    VcpuSetup,
    cpuid_to_c,
    fpu_from_c,
    fpu_to_c,
    read_cpuid,
    regs_from_c,
    regs_to_c,
    sregs_from_c,
    sregs_to_c,
)
from .vm import VmFd

# What a run returns: a reason in the low byte, flags above it (csrc/pyhv_core.h)
EXIT_NONE = lib.PYHV_EXIT_NONE
EXIT_IO = lib.PYHV_EXIT_IO
EXIT_MMIO = lib.PYHV_EXIT_MMIO
EXIT_HALT = lib.PYHV_EXIT_HALT
EXIT_CANCELED = lib.PYHV_EXIT_CANCELED
EXIT_TIMEOUT = lib.PYHV_EXIT_TIMEOUT
EXIT_INTERRUPTED = lib.PYHV_EXIT_INTERRUPTED
EXIT_OUTPUT_FULL = lib.PYHV_EXIT_OUTPUT_FULL
EXIT_MSR = lib.PYHV_EXIT_MSR
RUN_BULK = lib.PYHV_RUN_BULK
RUN_SINGLE_OUT = lib.PYHV_EXIT_IO | lib.PYHV_RUN_SINGLE_OUT
# a summary is a single OUT with nothing pending when summary & RUN_SINGLE_MASK == RUN_SINGLE_OUT;
# then it carries the OUT's port, size and whether rip is valid (pyhv_core.h); an -errno
# summary never matches (errno values are below 0x200)
RUN_SINGLE_MASK = 0xFF | lib.PYHV_RUN_BULK | lib.PYHV_RUN_SINGLE_OUT
RUN_RIP_VALID = lib.PYHV_RUN_RIP_VALID
RUN_SIZE_SHIFT = lib.PYHV_RUN_SIZE_SHIFT
RUN_PORT_SHIFT = lib.PYHV_RUN_PORT_SHIFT

# what an exit may still wait for (pyhv_vcpu_pending)
PENDING_NONE, PENDING_IN, PENDING_MMIO_READ, PENDING_MSR = 0, 1, 2, 3

# fast-path port kinds
PORT_BUFFERED = lib.PYHV_PORT_BUFFERED
PORT_CONSTANT = lib.PYHV_PORT_CONSTANT
PORT_DEBUG_EXIT = lib.PYHV_PORT_DEBUG_EXIT
MAX_FAST_PORTS = lib.PYHV_MAX_FAST_PORTS
OUTPUT_BUFFER = lib.PYHV_OUTPUT_BUFFER

# whole-state blobs (struct pyhv_vcpu_state)
STATE_SIZE = ffi.sizeof("struct pyhv_vcpu_state")
STATE_VERSION = lib.PYHV_STATE_VERSION
STATE_MAX_MSRS = lib.PYHV_STATE_MAX_MSRS
STATE_XCRS = lib.PYHV_HAS_XCRS
STATE_DEBUGREGS = lib.PYHV_HAS_DEBUGREGS

STAT_REASONS = lib.PYHV_STAT_REASONS
_STAT_FIELDS = ("runs", "exits_in_c", "exits_to_python", "guest_ns", "io_in", "io_out",
                "mmio_read", "mmio_write", "msr_read", "msr_write")
_COALESCED_BATCH = 256
_EMPTY_SETUP = VcpuSetup()

# guest debugging (KVM_SET_GUEST_DEBUG control bits)
GUESTDBG_ENABLE = lib.KVM_GUESTDBG_ENABLE
GUESTDBG_SINGLESTEP = lib.KVM_GUESTDBG_SINGLESTEP
GUESTDBG_USE_SW_BP = lib.KVM_GUESTDBG_USE_SW_BP
GUESTDBG_USE_HW_BP = lib.KVM_GUESTDBG_USE_HW_BP
GUESTDBG_INJECT_DB = lib.KVM_GUESTDBG_INJECT_DB
GUESTDBG_INJECT_BP = lib.KVM_GUESTDBG_INJECT_BP

# where the fields of a struct kvm_run record lie (for building records in tests)
RUN_SIZE = lib.PYHV_RUN_SIZE
RUN_LAYOUT = {name[len("PYHV_RUN_OFF_"):].lower(): getattr(lib, name) for name in dir(lib)
              if name.startswith("PYHV_RUN_OFF_")}
_ESTALE = -errno.ESTALE


def check_state_blob(blob: bytes) -> bool:
    """Whether ``blob`` is a whole-state record this C core can load (size, version and
    MSR count), without touching any vCPU."""
    if len(blob) != STATE_SIZE:
        return False
    state = ffi.from_buffer("struct pyhv_vcpu_state *", blob)
    return bool(state.version == STATE_VERSION and state.nmsrs <= STATE_MAX_MSRS)


class VcpuFd:
    """One KVM vCPU: its fd, its run area and the C core's per-vCPU state.

    :meth:`close` (idempotent) frees it; :meth:`cancel` is safe from any thread, also
    against a concurrent close.  Running is the caller's to serialize (one thread at a time).
    """

    def __init__(self, vm: VmFd | None, vcpu_id: int, mmap_size: int, *,
                 irqchip: bool = False, setup: VcpuSetup | None = None) -> None:
        """Create vCPU ``vcpu_id`` of ``vm`` and apply ``setup`` (one C call); on failure
        nothing is left but the id, which KVM cannot free without the VM.  ``vm=None`` makes
        a *detached* vCPU: no kernel behind it, its runs report only records given to
        :meth:`inject_record` (for tests of the exit path without KVM)."""
        out = ffi.new("struct pyhv_vcpu **")
        if vm is None:
            check_rc(lib.pyhv_vcpu_create_detached(mmap_size, out), "a detached vCPU")
        else:
            init = (setup or _EMPTY_SETUP).init(irqchip)
            check_rc(lib.pyhv_vcpu_create(vm.fd, vcpu_id, mmap_size, init, out),
                     f"KVM_CREATE_VCPU {vcpu_id}")
        self.id = vcpu_id
        self._ptr = out[0]
        # True until close(): the run loop reads it once per run, without a call
        self.open = True
        self._finalizer = weakref.finalize(self, lib.pyhv_vcpu_destroy, self._ptr)
        self._lock = threading.Lock()           # cancel() vs close()
        self.record = ffi.new("struct pyhv_exit *")
        self._regs = ffi.new("struct pyhv_regs *")
        # the run loops' calls, bound to the C objects (not to self: no reference cycle)
        self.enter = functools.partial(lib.pyhv_vcpu_run, self._ptr, self.record)
        self.answer = functools.partial(lib.pyhv_vcpu_complete_in_value, self._ptr)
        self._out: Any = None                   # bulk buffers, made on first use

    @classmethod
    def detached(cls, mmap_size: int = 3 * 4096) -> VcpuFd:
        """A vCPU with no kernel behind it (see ``__init__``)."""
        return cls(None, 0, mmap_size)

    def inject_record(self, record: bytes) -> None:
        """Make the next run report ``record`` (a ``struct kvm_run``, laid out as
        :data:`RUN_LAYOUT` says) as if KVM had returned it."""
        check_rc(lib.pyhv_vcpu_inject_record(self._handle(), record, len(record)),
                 "injecting an exit record")

    def apply(self, setup: VcpuSetup) -> None:
        """Load the parts of a prepared initial state that it has."""
        ptr = self._handle()
        if setup.cpuid is not None:
            check_rc(lib.pyhv_vcpu_set_cpuid(ptr, setup.cpuid, setup.ncpuid), "KVM_SET_CPUID2")
        if setup.sregs is not None:
            check_rc(lib.pyhv_vcpu_set_sregs(ptr, setup.sregs), "KVM_SET_SREGS",
                     "the kernel refused this segment/control register combination")
        if setup.regs is not None:
            check_rc(lib.pyhv_vcpu_set_regs(ptr, setup.regs), "KVM_SET_REGS")
        if setup.nmsrs:
            done = ffi.new("uint32_t *")
            rc = lib.pyhv_vcpu_set_msrs(ptr, setup.msr_index, setup.msr_value, setup.nmsrs,
                                        done)
            _check_msrs(rc, done[0], list(ffi.unpack(setup.msr_index, setup.nmsrs)),
                        "KVM_SET_MSRS")

    # -- lifetime ---------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return not self.open

    def close(self) -> None:
        with self._lock:
            self.open = False
            self._finalizer()

    def _handle(self) -> Any:
        if not self.open:
            raise ClosedError(f"vCPU {self.id} is closed")
        return self._ptr

    @property
    def fd(self) -> int:
        return int(lib.pyhv_vcpu_fd(self._handle()))

    # -- running ----------------------------------------------------------------------------
    # enter(deadline_ns) -> int: one trip into the guest until an exit Python must see, or
    #   until the absolute CLOCK_MONOTONIC deadline (0: none); the exit summary (EXIT_* |
    #   RUN_* flags), with `record` filled.  Only while holding the run.
    # answer(seq, value) -> int: 0 or -errno, a single IN/MMIO read answered with a number
    #   the caller checked (fits the access).  Both are attributes: no Python frame per call.

    def join_halt_watch(self, watch: Any) -> None:
        """Make this vCPU a member of ``watch`` (a :class:`pyhv._native.halt.HaltWatch`;
        None leaves the current one); between runs only."""
        check_rc(lib.pyhv_vcpu_join_halt_watch(self._handle(),
                                                ffi.NULL if watch is None else watch.handle),
                 "joining a halt watch")
        self._halt_watch = watch          # the watch's wrapper lives as long as its members

    def cancel(self) -> bool:
        """Stop the current or next run; False when the vCPU is closed."""
        with self._lock:
            if not self.open:
                return False
            lib.pyhv_vcpu_cancel(self._ptr)
            return True

    def clear_cancel(self) -> None:
        with self._lock:
            if self.open:
                lib.pyhv_vcpu_clear_cancel(self._ptr)

    def current_seq(self) -> int:
        return int(self.record.seq)

    def pending(self) -> int:
        """What the latest exit still waits for: PENDING_NONE, _IN, _MMIO_READ or _MSR."""
        return int(lib.pyhv_vcpu_pending(self._handle()))

    def io_bytes(self) -> bytes:
        """The data of the current IO exit (size * count bytes, bounded by the C core)."""
        c = self.record
        data: bytes = ffi.buffer(c.io_data, c.io_size * c.io_count)[:]
        return data

    def complete_read(self, seq: int, value: Any, size: int, count: int, what: str) -> None:
        """Answer the IN / MMIO read of run ``seq`` with ``value`` (see encode_answer)."""
        ptr = self._handle()
        if count == 1 and fits(value, size):
            rc = lib.pyhv_vcpu_complete_in_value(ptr, seq, value)
        else:
            data = encode_answer(value, size, count, what)
            rc = lib.pyhv_vcpu_complete_in(ptr, seq, data, len(data))
        if rc == _ESTALE:
            raise StaleExitError(f"{what}: the vCPU has run since this exit (or it was "
                                 "answered already); complete an exit before running again")
        check_rc(rc, what)

    def complete_msr(self, seq: int, value: int, fault: bool, what: str) -> None:
        """Answer the MSR access of run ``seq``: ``value`` for a read; #GP if ``fault``."""
        rc = lib.pyhv_vcpu_complete_msr(self._handle(), seq, value, 1 if fault else 0)
        if rc == _ESTALE:
            raise StaleExitError(f"{what}: the vCPU has run since this exit (or it was "
                                 "answered already); complete an exit before running again")
        check_rc(rc, what)

    # -- debugging --------------------------------------------------------------------------
    def set_guest_debug(self, control: int, debugreg: list[int] | None = None) -> None:
        """``KVM_SET_GUEST_DEBUG``: ``control`` is KVM_GUESTDBG_* flags, ``debugreg`` DR0-DR7
        (eight values; DR4/DR5 unused)."""
        regs = list(debugreg or [0] * 8)
        if len(regs) != 8:
            raise InvalidArgument("guest debug takes 8 debug-register values (DR0-DR7)")
        check_rc(lib.pyhv_vcpu_set_guest_debug(self._handle(), control, regs),
                 "KVM_SET_GUEST_DEBUG")

    def translate(self, gva: int) -> int | None:
        """``KVM_TRANSLATE``: the guest-physical address of ``gva`` in the vCPU's current
        paging mode, or None where it is not mapped."""
        gpa, flags = ffi.new("uint64_t *"), ffi.new("uint32_t *")
        check_rc(lib.pyhv_vcpu_translate(self._handle(), gva, gpa, flags), "KVM_TRANSLATE")
        return int(gpa[0]) if flags[0] & 1 else None

    # -- registers --------------------------------------------------------------------------
    def read_register(self, name: str) -> int:
        regs = self._regs
        check_rc(lib.pyhv_vcpu_get_regs(self._handle(), regs), "KVM_GET_REGS")
        return int(getattr(regs, name))

    def read_registers(self) -> Regs:
        regs = self._regs
        check_rc(lib.pyhv_vcpu_get_regs(self._handle(), regs), "KVM_GET_REGS")
        return regs_from_c(regs)

    def write_registers(self, values: Mapping[str, int]) -> None:
        """Set the given general registers (64-bit values), the others unchanged."""
        ptr = self._handle()
        regs = self._regs
        if len(values) < len(GENERAL_REGISTERS):
            check_rc(lib.pyhv_vcpu_get_regs(ptr, regs), "KVM_GET_REGS")
        for name, value in values.items():
            setattr(regs, name, value)
        check_rc(lib.pyhv_vcpu_set_regs(ptr, regs), "KVM_SET_REGS")

    def set_all_registers(self, regs: Regs) -> None:
        c = self._regs
        regs_to_c(regs, c)
        check_rc(lib.pyhv_vcpu_set_regs(self._handle(), c), "KVM_SET_REGS")

    def get_sregs(self) -> SpecialRegs:
        c = ffi.new("struct pyhv_sregs *")
        check_rc(lib.pyhv_vcpu_get_sregs(self._handle(), c), "KVM_GET_SREGS")
        return sregs_from_c(c)

    def set_sregs(self, sregs: SpecialRegs) -> None:
        c = ffi.new("struct pyhv_sregs *")
        sregs_to_c(sregs, c)
        check_rc(lib.pyhv_vcpu_set_sregs(self._handle(), c), "KVM_SET_SREGS",
                 "the kernel refused this segment/control register combination")

    def get_fpu(self) -> Fpu:
        c = ffi.new("struct pyhv_fpu *")
        check_rc(lib.pyhv_vcpu_get_fpu(self._handle(), c), "KVM_GET_FPU")
        return fpu_from_c(c)

    def set_fpu(self, fpu: Fpu) -> None:
        c = ffi.new("struct pyhv_fpu *")
        fpu_to_c(fpu, c)
        check_rc(lib.pyhv_vcpu_set_fpu(self._handle(), c), "KVM_SET_FPU")

    def get_msrs(self, indices: list[int]) -> dict[int, int]:
        values = ffi.new("uint64_t[]", max(len(indices), 1))
        done = ffi.new("uint32_t *")
        rc = lib.pyhv_vcpu_get_msrs(self._handle(), indices, values, len(indices), done)
        _check_msrs(rc, done[0], indices, "KVM_GET_MSRS")
        return {i: int(values[n]) for n, i in enumerate(indices)}

    def set_msrs(self, indices: list[int], values: list[int]) -> None:
        done = ffi.new("uint32_t *")
        rc = lib.pyhv_vcpu_set_msrs(self._handle(), indices, values, len(indices), done)
        _check_msrs(rc, done[0], indices, "KVM_SET_MSRS")

    def get_cpuid(self) -> tuple[CpuidEntry, ...]:
        ptr = self._handle()
        return read_cpuid(lambda buf, cap, n: lib.pyhv_vcpu_get_cpuid(ptr, buf, cap, n),
                          "KVM_GET_CPUID2")

    def set_cpuid(self, entries: Iterable[CpuidEntry]) -> None:
        buf, n = cpuid_to_c(entries)
        check_rc(lib.pyhv_vcpu_set_cpuid(self._handle(), buf, n), "KVM_SET_CPUID2")

    # -- C fast paths -----------------------------------------------------------------------
    def set_fast_port(self, port: int, kind: int, value: int = 0) -> None:
        check_rc(lib.pyhv_vcpu_set_fast_port(self._handle(), port, kind, value),
                 f"fast path for port {port:#x}")

    def remove_fast_port(self, port: int) -> None:
        check_rc(lib.pyhv_vcpu_set_fast_port(self._handle(), port, lib.PYHV_PORT_NONE, 0),
                 f"removing the fast path of port {port:#x}")

    def enable_fast_port(self, port: int, enabled: bool) -> None:
        """Switch a fast port off (its exits go to Python) or on; safe from any thread."""
        with self._lock:
            if self.open:
                lib.pyhv_vcpu_enable_fast_port(self._ptr, port, 1 if enabled else 0)

    def _buffers(self) -> Any:
        if self._out is None:
            self._out = (ffi.new("uint8_t[]", OUTPUT_BUFFER),
                         ffi.new("struct pyhv_coalesced_write[]", _COALESCED_BATCH))
        return self._out

    def take_output(self, port: int) -> bytes:
        """What buffered port ``port`` collected (emptying its buffer)."""
        buf = self._buffers()[0]
        n = lib.pyhv_vcpu_take_output(self._handle(), port, buf, OUTPUT_BUFFER)
        return ffi.buffer(buf, n)[:] if n > 0 else b""

    def drain_coalesced(self) -> list[tuple[int, int, bool, int]]:
        """Writes queued in the VM's coalesced ring: (address, size, pio, value), in order."""
        entries = self._buffers()[1]
        ptr = self._handle()
        writes = []
        while True:
            n = check_rc(lib.pyhv_vcpu_drain_coalesced(ptr, entries, _COALESCED_BATCH),
                         "draining the coalesced ring")
            for i in range(n):
                e = entries[i]
                writes.append((int(e.address), int(e.len), bool(e.pio),
                               int.from_bytes(bytes(e.data)[: e.len], "little")))
            if n < _COALESCED_BATCH:
                return writes

    def stats(self) -> dict[str, Any]:
        """The C run loop's counters: the scalar ones by name, and ``by_kvm_reason``."""
        c = ffi.new("struct pyhv_stats *")
        check_rc(lib.pyhv_vcpu_get_stats(self._handle(), c), "stats")
        out: dict[str, Any] = {name: int(getattr(c, name)) for name in _STAT_FIELDS}
        out["by_kvm_reason"] = tuple(c.by_kvm_reason[i] for i in range(STAT_REASONS))
        return out

    def reset_stats(self) -> None:
        lib.pyhv_vcpu_reset_stats(self._handle())

    # -- whole state --------------------------------------------------------------------------
    def save_state(self, msrs: list[int], optional: int) -> bytes:
        """The vCPU's whole state as an opaque blob (``struct pyhv_vcpu_state``).  Raises
        :class:`BlockingIOError`-like :class:`pyhv.KvmError` EBUSY when an exit Python has
        not seen is pending."""
        state = ffi.new("struct pyhv_vcpu_state *")
        check_rc(lib.pyhv_vcpu_save_state(self._handle(), msrs, len(msrs), optional, state),
                 f"saving vCPU {self.id}")
        blob: bytes = ffi.buffer(state)[:]
        return blob

    def load_state(self, blob: bytes) -> None:
        state = ffi.from_buffer("struct pyhv_vcpu_state *", blob)
        check_rc(lib.pyhv_vcpu_load_state(self._handle(), state),
                 f"loading the state of vCPU {self.id}")

    def discard_pending(self) -> bool:
        """Finish the instruction an unanswered exit left the vCPU in (reads get all ones);
        True when guest code ran doing so (it may have written memory)."""
        return bool(check_rc(lib.pyhv_vcpu_discard_pending(self._handle()),
                             f"finishing the pending exit of vCPU {self.id}"))

    def restorable_msrs(self, candidates: Iterable[int]) -> list[int]:
        """Which of ``candidates`` KVM lets this vCPU read and write back."""
        indices = list(candidates)
        ok = ffi.new("uint32_t[]", max(len(indices), 1))
        n = check_rc(lib.pyhv_vcpu_restorable_msrs(self._handle(), indices, len(indices), ok),
                     "probing the MSRs a snapshot can save")
        return list(ffi.unpack(ok, n))


def _check_msrs(rc: int, done: int, indices: list[int], op: str) -> None:
    if rc == -errno.EINVAL and done < len(indices):
        raise KvmError(errno.EINVAL, op, f"KVM refused MSR {indices[done]:#x}")
    check_rc(rc, op)


def check_msr_indices(indices: Iterable[int]) -> list[int]:
    """``indices`` as a list of 32-bit ints, or InvalidArgument."""
    out = []
    for i in indices:
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i <= 0xFFFFFFFF:
            raise InvalidArgument(f"MSR index {i!r} is not a 32-bit unsigned int")
        out.append(i)
    return out
