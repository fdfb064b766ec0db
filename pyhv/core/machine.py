"""What a partition's vCPUs and run loops share: the VM fd, its memory, lifecycle, buses,
fast paths and the handlers for stub exits.

:class:`pyhv.Partition` builds one :class:`Machine` and is the public face of it; vCPUs
and the run loop see only this, never the partition.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from .._native import Feature, VcpuFd, VmFd
from .._native.halt import HaltWatch
from .._native.vcpu import STATE_DEBUGREGS, STATE_MAX_MSRS, STATE_XCRS
from .._native.vm import CHIPS, MSR_EXIT_FILTER
from ..exits import GuestException
from .buses import AddressSpace, Space, SyscallHandler
from .fastpath import FastPaths
from .hypervisor import Hypervisor
from .lifecycle import Lifecycle
from .memory import GuestMemory
from .setup_region import SetupRegion

ExceptionHandler = Callable[[GuestException], Any]

# What a hardened partition's guest may still read and write: the MSRs an ordinary kernel
# needs to run (TSC, PAT, SYSENTER, EFER, syscall and segment-base MSRs, TSC_AUX, APIC base).
SAFE_MSRS = frozenset({
    0x10, 0x1B, 0x174, 0x175, 0x176, 0x277, 0xC0000080, 0xC0000081, 0xC0000082, 0xC0000083,
    0xC0000084, 0xC0000100, 0xC0000101, 0xC0000102, 0xC0000103,
})
# MSR handlers may cover this many MSRs in all (KVM's filter bitmaps bound what it can deny)
MAX_HANDLED_MSRS = 1 << 16


class Machine:
    """A partition's shared run-time parts (see the module docstring)."""

    def __init__(self, hypervisor: Hypervisor, vm: VmFd, memory: GuestMemory, *,
                 setup_base: int, irqchip: bool, pit: bool, hardened: bool,
                 halt_watch: bool = False) -> None:
        self.hypervisor = hypervisor
        self.vm = vm
        self.memory = memory
        self.setup_base = setup_base
        self.setup = SetupRegion(setup_base, memory)
        self.irqchip, self.pit, self.hardened = irqchip, pit, hardened
        self.life = Lifecycle()
        self.io = AddressSpace(Space.IO, 0x10000, cached=True)
        self.mmio = AddressSpace(Space.MMIO, 1 << 64, cached=False)
        self.msr = AddressSpace(Space.MSR, 1 << 32, cached=True)
        self.fast = FastPaths(vm, self.vcpu_fds)
        self.syscall_handler: SyscallHandler | None = None
        self.exception_handler: ExceptionHandler | None = None
        self.backend_note = hypervisor.backend_note
        self._vcpus: list[tuple[Any, VcpuFd]] = []
        self.vcpu_layout = 0               # bumped whenever a vCPU comes or goes
        # called before the first run of any vCPU (a resettable partition's reset point)
        self.before_first_run: Callable[[], object] | None = None
        self._first_lock = threading.Lock()
        self._state_msrs: list[int] | None = None
        self._user_msr = False             # KVM sends filtered MSR accesses to user space
        # with the irqchip, runs end as a halt once every vCPU is halted for good (halt.c)
        self.halt_watch = HaltWatch(vm) if halt_watch and irqchip else None

    # -- vCPUs --------------------------------------------------------------------------------
    def add_vcpu(self, vcpu: Any, fd: VcpuFd) -> None:
        if self.halt_watch is not None:
            fd.join_halt_watch(self.halt_watch)
        self._vcpus.append((vcpu, fd))
        self.vcpu_layout += 1

    def forget_vcpu(self, vcpu: Any) -> None:
        """A closed vCPU leaves the partition (snapshots then cover the others)."""
        before = len(self._vcpus)
        self._vcpus = [(v, fd) for v, fd in self._vcpus if v is not vcpu]
        if len(self._vcpus) != before:
            self.vcpu_layout += 1

    @property
    def vcpus(self) -> list[Any]:
        return [v for v, _fd in self._vcpus]

    def vcpu_fds(self) -> list[VcpuFd]:
        return [fd for _v, fd in self._vcpus if not fd.closed]

    # -- running ------------------------------------------------------------------------------
    def first_run(self) -> None:
        """Run the first-run hook once, before any vCPU enters the guest."""
        hook = self.before_first_run
        if hook is None:
            return
        with self._first_lock:
            if self.before_first_run is not None:
                self.before_first_run = None
                hook()

    def state_msrs(self) -> list[int]:
        """The MSRs a snapshot saves: those KVM lists for save/restore that a vCPU can read
        and write back (KVM refuses some, e.g. paravirtual ones the CPUID does not offer)."""
        if self._state_msrs is None:
            vcpus = self.vcpus
            if not vcpus:
                return []
            ok = vcpus[0].restorable_msrs(self.hypervisor.msr_index_list())
            self._state_msrs = ok[:STATE_MAX_MSRS]
        return self._state_msrs

    def state_parts(self) -> int:
        """The optional vCPU-state parts this backend offers, so saving does not try (and
        fail) the others every time."""
        caps = self.hypervisor.capability
        return ((STATE_XCRS if caps(Feature.XCRS) else 0) |
                (STATE_DEBUGREGS if caps(Feature.DEBUGREGS) else 0))

    def save_chips(self) -> dict[str, bytes]:
        """The in-kernel interrupt controllers' and PIT's state, by name."""
        return self.vm.save_chips(self.irqchip, self.pit)

    def chip_names(self) -> set[str]:
        return (set(CHIPS) if self.irqchip else set()) | ({"pit"} if self.pit else set())

    def update_msr_filter(self) -> None:
        """Make KVM's MSR filter match the MSR handlers (and hardening): the handled MSRs exit
        to user space (PYHV_EXIT_MSR); a hardened partition denies everything else but
        :data:`SAFE_MSRS` (#GP, through the same exits once any MSR handler exists)."""
        handled: set[int] = set()
        for handler in self.msr.handlers:
            handled.update(range(handler.start, handler.end))
        if handled and not self._user_msr:
            self.vm.enable_user_msr(MSR_EXIT_FILTER)
            self._user_msr = True
        if self.hardened:
            self.vm.set_msr_filter(False, sorted(SAFE_MSRS - handled))
        else:
            self.vm.set_msr_filter(True, sorted(handled))

    def stop_all(self) -> None:
        """Cancel every vCPU's run (sticky: one not running stops at its next run; during a
        pause, the parked runs return when resumed)."""
        self.life.stop_requested()
        for fd in self.vcpu_fds():
            fd.cancel()
