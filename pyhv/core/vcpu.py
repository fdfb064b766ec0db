"""Virtual processors: one object per KVM vCPU fd.

>>> import pyhv
>>> with pyhv.Partition(memory="16M") as part:
...     part.memory.write(0x1000, bytes.fromhex("48 01 d8 f4"))   # add %rbx, %rax; hlt
...     cpu = part.create_vcpu(mode="long", entry=0x1000)
...     cpu.regs.update(rax=40, rbx=2)
...     exit = cpu.run(timeout=5)                                 # exactly one exit
...     exit, cpu.regs.rax
(Halt(rip=0x1004), 42)
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .._native import VcpuFd
from .._native.structs import VcpuSetup
from .._native.vcpu import (
    GUESTDBG_ENABLE,
    GUESTDBG_SINGLESTEP,
    GUESTDBG_USE_HW_BP,
    GUESTDBG_USE_SW_BP,
    check_msr_indices,
)
from ..errors import ClosedError, GuestMemoryError, InvalidArgument, KvmError
from ..exits import Exit, kvm_exit_name
from ..x86.cpuid import CpuidEntry, for_vcpu
from ..x86.debug import GuestDebug, HardwareBreakpoint, debug_registers
from ..x86.modes import initial_state, needs_setup_region
from ..x86.paging import PagingRegisters, Translation, walk
from ..x86.registers import Fpu, Registers, Regs, SpecialRegisters, SpecialRegs, to_u64
from .loop import Debugger, RunResult, VcpuRunner, validate_timeout
from .machine import Machine
from .stubs import StubFrames, Stubs

__all__ = ["VCpu", "VCpuStats", "create_vcpu"]

log = logging.getLogger("pyhv")


@dataclass(frozen=True)
class VCpuStats:
    """What a vCPU's runs did: exits by kind, where they were handled, where time went.

    ``exits_in_c`` were completed by the C core (buffered and constant ports, debug-exit)
    without reaching Python; ``exits_to_python`` were handed to Python.  ``guest_seconds`` is
    the time in the C run loop (the guest, and exits completed in C); ``host_seconds`` the
    rest of the time inside handler-driven runs (Python's handling, handlers included; a
    typed ``run()`` hands each exit to its caller, and its own few steps are not timed).
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


class VCpu:
    """A virtual processor of a :class:`pyhv.Partition` (made by ``create_vcpu``).

    ``regs`` and ``sregs`` are live register views; :meth:`run` runs the guest until its next
    exit.  One thread at a time may run a vCPU; :meth:`cancel` may be called from any thread.
    """

    def __init__(self, partition: Any, machine: Machine, fd: VcpuFd, mode: str | None) -> None:
        self.id = fd.id
        self.partition = partition
        self.mode = mode
        self._fd = fd
        self._machine = machine
        self._runner = VcpuRunner(self, fd, machine)
        self._frames = StubFrames(fd, machine.memory)
        self.regs = Registers(self)
        self.sregs = SpecialRegisters(self)

    # -- lifetime -------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._fd.closed

    def close(self) -> None:
        """Release the vCPU (idempotent).  From another thread, a running vCPU is canceled
        and closed once its run returns."""
        if self._fd.closed:
            return
        self._runner.close()
        self._machine.forget_vcpu(self)

    def __enter__(self) -> VCpu:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"mode={self.mode}"
        return f"<pyhv.VCpu {self.id} {state}>"

    @property
    def fd(self) -> int:
        """The KVM vCPU file descriptor (for tools that drive it directly)."""
        return self._fd.fd

    # -- running --------------------------------------------------------------------------
    def run(self, timeout: float | None = None) -> Exit:
        """Run the guest until its next exit and return that exit, typed.

        ``timeout`` (seconds) bounds the run: past it, :class:`pyhv.Timeout` is raised with
        the vCPU's registers.  :meth:`cancel` from another thread makes the run return
        :class:`pyhv.exits.Canceled`.
        """
        if timeout is not None and not ((type(timeout) is float or type(timeout) is int)
                                        and timeout > 0):
            timeout = validate_timeout(timeout)       # raises (the check above is the fast one)
        return self._runner.typed(timeout)

    def serve(self, timeout: float | None = None) -> RunResult:
        """Run serving exits with the partition's handlers until halt, an exit nobody
        handles, a cancel or ``timeout``: what ``partition.run(vcpu=this)`` does."""
        return self._runner.serve(validate_timeout(timeout))

    def cancel(self, quiet: bool = False) -> None:
        """Stop the current run of this vCPU, or the next one if it is not running.  Safe from
        any thread; the run returns :class:`pyhv.exits.Canceled`.  On a closed vCPU it raises
        :class:`pyhv.ClosedError`, or does nothing with ``quiet=True``."""
        if not self._fd.cancel() and not quiet:
            raise ClosedError(f"vCPU {self.id} is closed")

    @property
    def running_thread(self) -> int | None:
        """The ident of the thread inside a run of this vCPU now, or None."""
        return self._runner.thread

    @property
    def parked(self) -> bool:
        """Whether its run is parked by :meth:`pyhv.Partition.pause`."""
        return self._runner.parked

    @property
    def awaiting_answer(self) -> Exit | None:
        """The exit this vCPU waits for an answer to (an :class:`~pyhv.exits.IoIn`,
        :class:`~pyhv.exits.MmioRead` or MSR exit not yet completed), or None."""
        if self._fd.closed or not self._fd.pending():
            return None
        return self._runner.last_exit

    def clear_cancel(self) -> None:
        """Forget a cancel no run has consumed yet."""
        self._fd.clear_cancel()

    @property
    def stats(self) -> VCpuStats:
        """Counters of this vCPU's runs (see :class:`VCpuStats`)."""
        s = self._fd.stats()
        exits = {kvm_exit_name(i): n for i, n in enumerate(s["by_kvm_reason"]) if n}
        guest = s["guest_ns"] / 1e9
        return VCpuStats(s["runs"], exits, s["exits_in_c"], s["exits_to_python"], s["io_in"],
                         s["io_out"], s["mmio_read"], s["mmio_write"], guest,
                         max(self._runner.run_seconds - guest, 0.0))

    def reset_stats(self) -> None:
        """Zero the counters of :attr:`stats`."""
        self._fd.reset_stats()
        self._runner.run_seconds = 0.0

    # -- stubs ------------------------------------------------------------------------------
    @property
    def uses_stubs(self) -> bool:
        """Whether halts in pyhv's stub page report guest exceptions and syscalls."""
        return self._runner.stubs is not None

    def use_stubs(self, enabled: bool) -> None:
        """Report (or stop reporting) halts in pyhv's stub page as exceptions and syscalls
        (set by ``create_vcpu`` for user mode and ``exceptions=True``)."""
        self._runner.stubs = (Stubs(self._machine.setup_base, self._frames, self._fd,
                                    self._machine.memory) if enabled else None)

    # -- registers (the RegisterFile protocol of the live views) ---------------------------
    def read_register(self, name: str) -> int:
        return self._fd.read_register(name)

    def read_registers(self) -> Regs:
        return self._fd.read_registers()

    def write_registers(self, values: dict[str, int]) -> None:
        self._fd.write_registers(values)

    def get_sregs(self) -> SpecialRegs:
        """The special registers as a frozen :class:`pyhv.SpecialRegs`."""
        return self._fd.get_sregs()

    def set_sregs(self, sregs: SpecialRegs) -> None:
        """Load every special register from ``sregs``."""
        self._fd.set_sregs(sregs)

    @property
    def fpu(self) -> Fpu:
        """x87/SSE state; assign an :class:`pyhv.Fpu` to load it."""
        return self._fd.get_fpu()

    @fpu.setter
    def fpu(self, value: Fpu) -> None:
        self._fd.set_fpu(value)

    def get_msrs(self, indices: Iterable[int]) -> dict[int, int]:
        """Read model-specific registers: ``{index: value}``."""
        return self._fd.get_msrs(check_msr_indices(indices))

    def set_msrs(self, values: Mapping[int, int]) -> None:
        """Write model-specific registers from ``{index: value}``."""
        indices = check_msr_indices(values)
        self._fd.set_msrs(indices, [to_u64(f"MSR {i:#x}", values[i]) for i in indices])

    def get_msr(self, index: int) -> int:
        """One MSR: ``cpu.get_msr(0xC0000080)`` (EFER)."""
        return self.get_msrs([index])[index]

    def set_msr(self, index: int, value: int) -> None:
        """Write one MSR."""
        self.set_msrs({index: value})

    def get_cpuid(self) -> tuple[CpuidEntry, ...]:
        """The CPUID table the guest sees."""
        return self._fd.get_cpuid()

    def set_cpuid(self, entries: Iterable[CpuidEntry]) -> None:
        """Give the guest this CPUID table (e.g. an edited ``hypervisor.supported_cpuid()``)."""
        self._fd.set_cpuid(entries)

    # -- guest debugging ----------------------------------------------------------------------
    @property
    def guest_debug(self) -> GuestDebug:
        """The guest-debug settings last given to :meth:`set_guest_debug`."""
        return self._runner.guest_debug

    def set_guest_debug(self, *, single_step: bool = False, software_breakpoints: bool = False,
                        hardware: Iterable[HardwareBreakpoint | None] = ()) -> None:
        """Debug the guest (``KVM_SET_GUEST_DEBUG``): ``single_step`` ends each run after one
        instruction, ``software_breakpoints`` has ``int3`` end the run instead of reaching
        the guest, ``hardware`` loads up to four :class:`pyhv.HardwareBreakpoint` into DR0-DR3
        (None leaves one free).  Each event ends the run with an :class:`pyhv.exits.Debug`
        saying why (its ``address``/``access`` name the debug register that fired).  With no
        arguments, guest debugging is off.  What a backend delivers differs (kvm_pvm: see
        ``pyhv.gdb.probe.debug_support()``).

        >>> import pyhv
        >>> with pyhv.Partition(memory="16M") as part:
        ...     part.memory.write(0x1000, bytes.fromhex("90 90 f4"))   # nop; nop; hlt
        ...     cpu = part.create_vcpu(mode="long", entry=0x1000)
        ...     cpu.set_guest_debug(hardware=[pyhv.HardwareBreakpoint(0x1001)])
        ...     hit = cpu.run(timeout=5)
        ...     cpu.set_guest_debug(single_step=True)
        ...     step = cpu.run(timeout=5)
        ...     cpu.set_guest_debug()
        ...     hit.reason, hex(hit.pc), step.reason, hex(step.pc), cpu.run(timeout=5)
        ('breakpoint', '0x1001', 'step', '0x1002', Halt(rip=0x1003))
        """
        settings = GuestDebug(bool(single_step), bool(software_breakpoints), tuple(hardware))
        control = 0
        if settings.enabled:
            control = GUESTDBG_ENABLE
            if settings.single_step:
                control |= GUESTDBG_SINGLESTEP
            if settings.software_breakpoints:
                control |= GUESTDBG_USE_SW_BP
            if any(bp is not None for bp in settings.hardware):
                control |= GUESTDBG_USE_HW_BP
        self._fd.set_guest_debug(control, debug_registers(settings.hardware))
        self._runner.guest_debug = settings

    def translate(self, gva: int, *, method: str = "auto") -> int | None:
        """The guest-physical address of guest-virtual ``gva`` in the vCPU's current paging
        mode (none, 32-bit, PAE, 4- or 5-level), or None where nothing is mapped.
        ``method="auto"`` asks KVM (``KVM_TRANSLATE``) and, where the kernel cannot, walks
        the page tables in Python (:mod:`pyhv.x86.paging`); "kvm" and "walk" use only one.

        >>> import pyhv
        >>> with pyhv.Partition(memory="16M") as part:
        ...     cpu = part.create_vcpu(mode="long", entry=0x1000)
        ...     hex(cpu.translate(0x1234)), hex(cpu.translate(0x1234, method="walk"))
        ('0x1234', '0x1234')
        """
        if isinstance(gva, bool) or not isinstance(gva, int) or not 0 <= gva < 1 << 64:
            raise InvalidArgument(f"guest-virtual address {gva!r} is not a 64-bit unsigned int")
        if method not in ("auto", "kvm", "walk"):
            raise InvalidArgument(f"translate method {method!r}: auto, kvm or walk")
        if method != "walk":
            try:
                return self._fd.translate(gva)
            except KvmError:
                if method == "kvm":
                    raise
                # a backend without KVM_TRANSLATE: walk the tables here
        found = self.walk(gva)
        return None if found is None else found.gpa

    def walk(self, gva: int) -> Translation | None:
        """Walk the page tables for ``gva`` in Python: the page it lies in and the access the
        tables allow, or None where it is not mapped (tables outside guest memory included)."""
        return walk(self.paging_registers(), gva, self._read_table)

    def paging_registers(self) -> PagingRegisters:
        """CR0, CR3, CR4 and EFER: what chooses the paging mode and the page tables."""
        s = self._fd.get_sregs()
        return PagingRegisters(s.cr0, s.cr3, s.cr4, s.efer)

    def _read_table(self, gpa: int, size: int) -> bytes | None:
        try:
            return self._machine.memory.read(gpa, size)
        except GuestMemoryError:
            return None

    @property
    def debugger(self) -> Debugger | None:
        """The debugger attached to this vCPU's runs (:class:`pyhv.core.loop.Debugger`)."""
        return self._runner.debugger

    def attach_debugger(self, debugger: Debugger | None) -> None:
        """Have ``debugger`` see this vCPU's runs begin and end and its exits before they are
        returned or served (None detaches it).  This is how :mod:`pyhv.gdb` stops and steps
        the guest inside ``run()``, ``serve()`` and ``Partition.run()``."""
        self._runner.debugger = debugger

    # -- snapshots (the vCPU's part) ---------------------------------------------------------
    def save_state(self, msrs: list[int], optional: int) -> bytes:
        """The whole architectural state as an opaque blob (for snapshots)."""
        return self._fd.save_state(msrs, optional)

    def load_state(self, blob: bytes) -> None:
        self._fd.load_state(blob)

    def discard_pending(self) -> bool:
        """Finish an instruction an unanswered exit left this vCPU inside (before loading
        state); True when guest code ran."""
        return self._fd.discard_pending()

    def restorable_msrs(self, candidates: Iterable[int]) -> list[int]:
        return self._fd.restorable_msrs(candidates)


def create_vcpu(partition: Any, machine: Machine, vcpu_id: int, *, mode: str | None,
                entry: int = 0, stack: int = 0, cpuid: Iterable[CpuidEntry] | None = None,
                exceptions: bool = False, allow_port_io: bool = False) -> VCpu:
    """Make vCPU ``vcpu_id`` of ``machine`` (arguments already checked) and set it up for
    ``mode``; ``mode=None`` leaves KVM's reset state (a snapshot's state comes next).  On
    failure nothing is left but the id, which KVM cannot free without its VM.

    The C structs of a vCPU's start (CPUID table, registers, MSRs) are prepared once per
    kind of vCPU and kept by the hypervisor handle: a guest made again and again (a test
    suite, a fuzzer) pays for them once."""
    hypervisor = machine.hypervisor
    if mode is not None and needs_setup_region(mode, exceptions):
        machine.setup.prepare(mode in ("long", "user"))
    key = None
    if cpuid is None:
        key = ("vcpu", vcpu_id, machine.hardened, machine.irqchip, mode, machine.setup_base,
               entry, stack, exceptions, allow_port_io)
        table = hypervisor.memo(("cpuid", machine.hardened, vcpu_id), lambda: VcpuSetup(
            for_vcpu(hypervisor.default_cpuid(sanitized=machine.hardened), vcpu_id)))
    else:
        table = VcpuSetup(cpuid)
    ready = hypervisor.recall(key) if key is not None else None
    fd = VcpuFd(machine.vm, vcpu_id, hypervisor.vcpu_mmap_size, irqchip=machine.irqchip,
                setup=ready if ready is not None else table)
    try:
        if ready is None and mode is not None:
            reset = hypervisor.memo(("reset", machine.irqchip, vcpu_id == 0), fd.get_sregs)
            start = initial_state(mode, vcpu_id, machine.setup_base, entry=entry, stack=stack,
                                  reset=reset, exceptions=exceptions,
                                  allow_port_io=allow_port_io)
            state = VcpuSetup(sregs=start.sregs, regs=start.regs, msrs=start.msrs)
            fd.apply(state)
            if key is not None:
                hypervisor.remember(key, table.merged(state))
        machine.fast.install(fd)
    except BaseException:
        fd.close()
        raise
    vcpu = VCpu(partition, machine, fd, mode)
    if mode == "user" or exceptions:
        vcpu.use_stubs(True)
    machine.add_vcpu(vcpu, fd)
    log.debug("vCPU %d created (%s mode)", vcpu_id, mode)
    return vcpu
