"""Virtual processors: one object per KVM vCPU fd.

>>> cpu = part.create_vcpu(mode="long", entry=0x1000)   # doctest: +SKIP
>>> cpu.regs.rax = 7                                    # doctest: +SKIP
>>> ex = cpu.run(timeout=1.0)                           # exactly one exit  # doctest: +SKIP
"""

from __future__ import annotations

import errno
import threading
import time
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._ffi import ffi, lib
from .errors import ClosedError, HypervisorError, InvalidArgument, KvmError, Timeout, check_rc
from .exits import FAULTS, Exit, GuestException, Halt, Syscall, decode, kvm_exit_name
from .modes import ERROR_CODE_VECTORS, SYSCALL_STUB, decode_stub_halt, stub_range
from .registers import (
    Fpu,
    Registers,
    SpecialRegisters,
    SpecialRegs,
    fpu_from_c,
    fpu_to_c,
    sregs_from_c,
    sregs_to_c,
    to_u64,
)
from .system import CpuidEntry, _read_cpuid

if TYPE_CHECKING:
    from .partition import Partition

# what pyhv_vcpu_run returns: a reason in the low byte, PYHV_RUN_* flags above it
_IO = lib.PYHV_EXIT_IO
_MMIO = lib.PYHV_EXIT_MMIO
_HALT = lib.PYHV_EXIT_HALT
_INTERRUPTED = lib.PYHV_EXIT_INTERRUPTED
_TIMEOUT = lib.PYHV_EXIT_TIMEOUT
_OUTPUT_FULL = lib.PYHV_EXIT_OUTPUT_FULL
_CANCELED = lib.PYHV_EXIT_CANCELED
_BULK = lib.PYHV_RUN_BULK
_SINGLE_OUT = lib.PYHV_EXIT_IO | lib.PYHV_RUN_SINGLE_OUT


def _awaits_answer(c: Any) -> bool:
    """The exit in ``c`` is a read the guest waits on (IN, MMIO read)."""
    return bool((c.reason == _IO and c.io_in) or (c.reason == _MMIO and not c.mmio_write))


@dataclass(frozen=True)
class VCpuStats:
    """What a vCPU's runs did: exits by kind, where they were handled, where time went.

    ``exits_in_c`` were completed by the C core (buffered and constant ports, debug-exit)
    without reaching Python; ``exits_to_python`` were handed to Python.  ``guest_seconds`` is
    the time in the C run loop (the guest, and exits completed in C); ``host_seconds`` the
    rest of the time inside ``run`` calls (Python's handling, handlers included).
    """

    runs: int
    exits: Mapping[str, int]
    exits_in_c: int
    exits_to_python: int
    io_in: int
    io_out: int
    mmio_read: int
    mmio_write: int
    guest_seconds: float
    host_seconds: float


def _validate_timeout(timeout: float | None) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise InvalidArgument(f"timeout must be a number of seconds > 0, not {timeout!r}")
    return float(timeout)


class VCpu:
    """A virtual processor of a :class:`pyhv.Partition` (made by ``create_vcpu``).

    ``regs`` and ``sregs`` are live register views; :meth:`run` runs the guest until its next
    exit.  One thread at a time may run a vCPU; :meth:`cancel` may be called from any thread.
    """

    def __init__(self, partition: Partition, vcpu_id: int) -> None:
        out = ffi.new("struct pyhv_vcpu **")
        check_rc(lib.pyhv_vcpu_create(partition._vm_fd, vcpu_id,
                                      partition.hypervisor.vcpu_mmap_size, ffi.NULL, out),
                 f"KVM_CREATE_VCPU {vcpu_id}")
        self._ptr = out[0]
        self._finalizer = weakref.finalize(self, lib.pyhv_vcpu_destroy, self._ptr)
        self.id = vcpu_id
        self.partition = partition
        self.mode: str | None = None
        self.regs = Registers(self)
        self.sregs = SpecialRegisters(self)
        self._exit = ffi.new("struct pyhv_exit *")
        self._regs_c = ffi.new("struct pyhv_regs *")
        self._sregs_c = ffi.new("struct pyhv_sregs *")
        self._run_lock = threading.Lock()
        self._run_thread: int | None = None
        self._handle_lock = threading.Lock()     # cancel() vs destroying the C object
        self._parked = False                     # in a run parked by pause()
        self._closing = False                    # close() waits for this vCPU's run to end
        self._stats_c = ffi.new("struct pyhv_stats *")
        self._buffers: tuple[Any, Any] | None = None   # made on first bulk delivery
        self._run_seconds = 0.0
        self._run_started = 0.0
        self._deadline = 0                       # of the run in progress (see _begin)
        # pyhv's exception/syscall stubs (user mode, exceptions=True): halts in their page
        self._stubs = False
        self._stub_lo, self._stub_hi = partition.setup_base, partition.setup_base

    # -- lifetime -------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def _handle(self) -> Any:
        if not self._finalizer.alive:
            raise ClosedError(f"vCPU {self.id} is closed")
        return self._ptr

    def close(self) -> None:
        """Release the vCPU (idempotent).  From another thread, a running vCPU is canceled
        and closed once its run returns."""
        if not self._finalizer.alive:
            return
        if self._run_thread == threading.get_ident():
            raise HypervisorError(f"vCPU {self.id} cannot be closed from inside its own run; "
                                  "cancel it (or stop the partition) and close it afterwards")
        # a run on another thread holds the lock: keep canceling until it lets go (a run
        # parked by pause() is woken to end instead)
        self._closing = True
        self.partition._life.wake()
        while not self._run_lock.acquire(timeout=0.05):
            self.cancel(quiet=True)
        try:
            with self._handle_lock:
                self._finalizer()
        finally:
            self._run_lock.release()
        self.partition._forget_vcpu(self)

    def __enter__(self) -> VCpu:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"mode={self.mode}"
        return f"<pyhv.VCpu {self.id} {state}>"

    # -- running --------------------------------------------------------------------------
    def _begin(self, timeout: float | None) -> Any:
        """Claim the vCPU for a run on this thread and set its deadline; returns its handle.
        Every successful call is paired with :meth:`_end` (callers use try/finally)."""
        ptr = self._handle()
        if not self._run_lock.acquire(blocking=False):
            raise HypervisorError(f"vCPU {self.id} is already running on another thread")
        life = self.partition._life
        began = False
        try:
            if self.closed:
                raise ClosedError(f"vCPU {self.id} is closed")
            self.partition._first_run()
            life.begin_run()
            began = True
            # absolute CLOCK_MONOTONIC ns, passed to each pyhv_vcpu_run of this run (0: none)
            self._deadline = 0 if timeout is None else lib.pyhv_monotonic_ns() + int(timeout * 1e9)
        except BaseException:
            if began:
                life.end_run()
            self._run_lock.release()
            raise
        self._run_thread = threading.get_ident()
        self._run_started = time.perf_counter()
        return ptr

    def _end(self, ptr: Any, timeout: float | None) -> None:
        self._run_seconds += time.perf_counter() - self._run_started
        self._run_thread = None
        self.partition._life.end_run()
        self._run_lock.release()

    def _enter(self, ptr: Any) -> Any:
        """Run to the next exit Python must see; returns the filled exit struct.

        Output collected by buffered ports and writes queued in the coalesced ring are handed
        to their sinks first, so Python sees them in the order the guest made them."""
        c = self._exit
        while True:
            rc = lib.pyhv_vcpu_run(ptr, c, self._deadline)
            if rc < 0:
                raise KvmError(-rc, f"KVM_RUN on vCPU {self.id}")
            if rc & _BULK:
                try:
                    self.partition._deliver_bulk(self, c)
                except BaseException as exc:
                    if _awaits_answer(c):          # lost: the guest would read garbage
                        self.partition._life.poison(
                            f"vCPU {self.id}: {type(exc).__name__} in an output sink: {exc}")
                    raise
            reason = rc & 0xFF
            if reason == _CANCELED and self.partition._life.paused:
                if self._park():                 # pause(): wait for resume(), then go on
                    continue
                return c                         # closed while paused: the run ends
            if reason != _INTERRUPTED and reason != _OUTPUT_FULL:
                return c
            # a signal for Python (Ctrl-C...) has its handler run here, between bytecodes

    def run(self, timeout: float | None = None) -> Exit:
        """Run the guest until its next exit and return that exit, typed.

        ``timeout`` (seconds) bounds the run: past it, :class:`pyhv.Timeout` is raised with
        the vCPU's registers.  :meth:`cancel` from another thread makes the run return
        :class:`pyhv.exits.Canceled`.
        """
        timeout = _validate_timeout(timeout)
        ptr = self._begin(timeout)
        try:
            c = self._enter(ptr)
            if c.reason == _TIMEOUT:
                raise Timeout(self, self.regs.snapshot(), timeout or 0.0)
            exit = decode(c, self)
            if isinstance(exit, FAULTS):
                self.partition._life.poison(f"vCPU {self.id}: {exit!r}", exit)
            return exit
        finally:
            self._end(ptr, timeout)

    def _park(self) -> bool:
        self._parked = True
        try:
            return self.partition._life.park(lambda: self._closing)
        finally:
            self._parked = False

    def _bulk_buffers(self) -> tuple[Any, Any]:
        """Where this vCPU receives buffered-port output and coalesced writes."""
        if self._buffers is None:
            self._buffers = (ffi.new("uint8_t[]", lib.PYHV_OUTPUT_BUFFER),
                             ffi.new("struct pyhv_coalesced_write[]", 256))
        return self._buffers

    def _halt_exit(self, c: Any) -> Exit:
        """A halt, or, in pyhv's stub page, the guest exception or syscall it stands for."""
        rip = c.rip if c.rip_valid else self.regs.rip
        if self._stubs:
            linear = rip
            if not self._stub_lo < rip <= self._stub_hi and rip <= 0xFFFF:
                linear = self._load_sregs().cs.base + rip        # real mode
            if self._stub_lo < linear <= self._stub_hi:
                meaning = decode_stub_halt(self.partition.setup_base, linear)
                if meaning is not None:
                    return self._stub_exit(meaning, c.seq)
        return Halt(rip=rip)

    def _stub_exit(self, meaning: tuple[str, int], seq: int) -> Exit:
        kind, vector = meaning
        regs = self._load_regs()
        if kind == "syscall":
            args = (regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9)
            return Syscall(regs.rax, args, rip=regs.rcx, _vcpu=self, _seq=seq)
        width = int(kind[len("exception"):])
        size = width // 8
        memory = self.partition.memory
        sregs = self._load_sregs()
        frame = (sregs.ss.base + (regs.rsp & 0xFFFF)) if width == 16 else regs.rsp
        error_code = None
        if width != 16 and vector in ERROR_CODE_VECTORS:
            error_code = int.from_bytes(memory.read(frame, size), "little")
            frame += size
        words = memory.read(frame, 3 * size)
        rip, cs = (int.from_bytes(words[i:i + size], "little") for i in (0, size))
        if width == 16:
            rip += cs << 4
        syscall_entry = self.partition.setup_base + SYSCALL_STUB
        if vector == 14 and cs & 3 and rip == syscall_entry and sregs.cr2 == syscall_entry:
            # kvm_pvm runs a CPL3 `syscall` to LSTAR without entering ring 0, where fetching
            # the supervisor-only stub faults.  Finish it as sysret would: the stub's iretq
            # returns to RCX with RFLAGS from R11.
            memory.write(frame, regs.rcx.to_bytes(8, "little"))
            memory.write(frame + 16, regs.r11.to_bytes(8, "little"))
            return self._stub_exit(("syscall", 0), seq)
        return GuestException(vector, error_code, sregs.cr2 if vector == 14 else None,
                              bool(cs & 3), rip=rip, _vcpu=self, _frame=frame, _width=width,
                              _seq=seq)

    def _enable_stubs(self) -> None:
        self._stubs = True
        self._stub_lo, self._stub_hi = stub_range(self.partition.setup_base)

    @property
    def stats(self) -> VCpuStats:
        """Counters of this vCPU's runs (see :class:`VCpuStats`)."""
        check_rc(lib.pyhv_vcpu_get_stats(self._handle(), self._stats_c), "stats")
        s = self._stats_c
        exits = {kvm_exit_name(i): s.by_kvm_reason[i] for i in range(lib.PYHV_STAT_REASONS)
                 if s.by_kvm_reason[i]}
        guest = s.guest_ns / 1e9
        return VCpuStats(s.runs, exits, s.exits_in_c, s.exits_to_python, s.io_in, s.io_out,
                         s.mmio_read, s.mmio_write, guest, max(self._run_seconds - guest, 0.0))

    def reset_stats(self) -> None:
        """Zero the counters of :attr:`stats`."""
        lib.pyhv_vcpu_reset_stats(self._handle())
        self._run_seconds = 0.0

    def cancel(self, quiet: bool = False) -> None:
        """Stop the current run of this vCPU, or the next one if it is not running.  Safe from
        any thread; the run returns :class:`pyhv.exits.Canceled`.  On a closed vCPU it raises
        :class:`pyhv.ClosedError`, or does nothing with ``quiet=True``."""
        with self._handle_lock:            # close() cannot free it under us
            if not self._finalizer.alive:
                if quiet:
                    return
                raise ClosedError(f"vCPU {self.id} is closed")
            lib.pyhv_vcpu_cancel(self._ptr)

    # -- registers (the views in registers.py call these) ---------------------------------
    def _load_regs(self) -> Any:
        check_rc(lib.pyhv_vcpu_get_regs(self._handle(), self._regs_c), "KVM_GET_REGS")
        return self._regs_c

    def _store_regs(self, regs: Any) -> None:
        check_rc(lib.pyhv_vcpu_set_regs(self._handle(), regs), "KVM_SET_REGS")

    def _load_sregs(self) -> Any:
        check_rc(lib.pyhv_vcpu_get_sregs(self._handle(), self._sregs_c), "KVM_GET_SREGS")
        return self._sregs_c

    def _store_sregs(self, c: Any) -> None:
        check_rc(lib.pyhv_vcpu_set_sregs(self._handle(), c), "KVM_SET_SREGS",
                 "the kernel refused this segment/control register combination")

    def get_sregs(self) -> SpecialRegs:
        """The special registers as a frozen :class:`pyhv.SpecialRegs`."""
        return sregs_from_c(self._load_sregs())

    def set_sregs(self, sregs: SpecialRegs) -> None:
        """Load every special register from ``sregs``."""
        c = ffi.new("struct pyhv_sregs *")
        sregs_to_c(sregs, c)
        self._store_sregs(c)

    @property
    def fpu(self) -> Fpu:
        """x87/SSE state; assign an :class:`pyhv.Fpu` to load it."""
        c = ffi.new("struct pyhv_fpu *")
        check_rc(lib.pyhv_vcpu_get_fpu(self._handle(), c), "KVM_GET_FPU")
        return fpu_from_c(c)

    @fpu.setter
    def fpu(self, value: Fpu) -> None:
        c = ffi.new("struct pyhv_fpu *")
        fpu_to_c(value, c)
        check_rc(lib.pyhv_vcpu_set_fpu(self._handle(), c), "KVM_SET_FPU")

    def get_msrs(self, indices: Iterable[int]) -> dict[int, int]:
        """Read model-specific registers: ``{index: value}``."""
        idx = [to_u64("MSR index", i) for i in indices]
        if any(i > 0xFFFFFFFF for i in idx):
            raise InvalidArgument("MSR indices are 32-bit")
        values = ffi.new("uint64_t[]", max(len(idx), 1))
        done = ffi.new("uint32_t *")
        rc = lib.pyhv_vcpu_get_msrs(self._handle(), idx, values, len(idx), done)
        self._check_msrs(rc, done[0], idx, "KVM_GET_MSRS")
        return {i: values[n] for n, i in enumerate(idx)}

    def set_msrs(self, values: Mapping[int, int]) -> None:
        """Write model-specific registers from ``{index: value}``."""
        idx = [to_u64("MSR index", i) for i in values]
        if any(i > 0xFFFFFFFF for i in idx):
            raise InvalidArgument("MSR indices are 32-bit")
        vals = [to_u64(f"MSR {i:#x}", v) for i, v in values.items()]
        done = ffi.new("uint32_t *")
        rc = lib.pyhv_vcpu_set_msrs(self._handle(), idx, vals, len(idx), done)
        self._check_msrs(rc, done[0], idx, "KVM_SET_MSRS")

    @staticmethod
    def _check_msrs(rc: int, done: int, idx: list[int], op: str) -> None:
        if rc == -errno.EINVAL and done < len(idx):
            raise KvmError(errno.EINVAL, op, f"KVM refused MSR {idx[done]:#x}")
        check_rc(rc, op)

    def get_msr(self, index: int) -> int:
        """One MSR: ``cpu.get_msr(0xC0000080)`` (EFER)."""
        return self.get_msrs([index])[index]

    def set_msr(self, index: int, value: int) -> None:
        """Write one MSR."""
        self.set_msrs({index: value})

    def get_cpuid(self) -> tuple[CpuidEntry, ...]:
        """The CPUID table the guest sees."""
        ptr = self._handle()
        return _read_cpuid(lambda buf, cap, n: lib.pyhv_vcpu_get_cpuid(ptr, buf, cap, n),
                           "KVM_GET_CPUID2")

    def set_cpuid(self, entries: Iterable[CpuidEntry]) -> None:
        """Give the guest this CPUID table (e.g. an edited ``hypervisor.supported_cpuid()``)."""
        entries = list(entries)
        buf = ffi.new("struct pyhv_cpuid_entry[]", max(len(entries), 1))
        try:
            for i, e in enumerate(entries):
                buf[i] = (e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx)
        except (OverflowError, TypeError) as exc:
            raise InvalidArgument(f"bad CPUID entry: {exc}") from None
        check_rc(lib.pyhv_vcpu_set_cpuid(self._handle(), buf, len(entries)), "KVM_SET_CPUID2")
