"""Partitions (VMs): the facade over a VM's parts (memory, vCPUs, buses, fast paths,
lifecycle, snapshots, devices).

>>> import pyhv
>>> with pyhv.Partition(memory="16M") as part:
...     part.memory.write(0x1000, bytes.fromhex("b0 21 e6 f8 f4"))   # mov $'!',%al; out %al,$0xf8
...     cpu = part.create_vcpu(mode="long", entry=0x1000)
...     seen = []
...     _ = part.add_io_handler(0xF8, write=lambda port, size, value: seen.append(chr(value)))
...     result = part.run(timeout=5)
...     result.exit, seen
(Halt(rip=0x1005), ['!'])
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import Any

from ._native import Feature, VmFd
from .core import hypervisor as hv
from .core.interrupts import InterruptControl
from .core.lifecycle import PartitionState
from .core.loop import RunResult, run_all, validate_timeout
from .core.machine import SAFE_MSRS, Machine
from .core.memory import PAGE_SIZE, GuestMemory, MemorySlot, as_int, parse_size
from .core.probes import require_port_io_at_cpl3
from .core.registration import HandlerRegistration
from .core.vcpu import VCpu, create_vcpu
from .devices import Device
from .errors import (
    GuestMemoryError,
    HypervisorError,
    InvalidArgument,
    SlotOverlapError,
    StateError,
)
from .snapshot.api import SnapshotApi
from .snapshot.format import Snapshot
from .x86.cpuid import CpuidEntry
from .x86.modes import MODES, check_mode
from .x86.setup import DEFAULT_SETUP_BASE

__all__ = ["KVM_TSS_DEFAULT", "LOW_MEMORY_LIMIT", "SAFE_MSRS", "Partition"]

log = logging.getLogger("pyhv")

# KVM on Intel needs 4 pages of guest-physical space for real-mode emulation, below 4 GiB
# and outside every slot: an identity-map page, then a 3-page TSS.  By default they end
# 16 MiB below 4 GiB, where QEMU puts them, so a ROM of up to 16 MiB can end at 4 GiB.
KVM_TSS_DEFAULT = 0xFEFFC000
KVM_TSS_SIZE = 4 * PAGE_SIZE
# RAM given as Partition(memory=...) fills GPA 0 up to here; the rest starts at 4 GiB
LOW_MEMORY_LIMIT = 3 << 30



class Partition(SnapshotApi, HandlerRegistration, InterruptControl):
    """A partition (KVM VM): guest-physical memory, vCPUs, and port/MMIO handlers.

    ``memory`` (bytes, or a string like ``"16M"``) becomes a RAM slot at GPA 0 (beyond 3 GiB,
    the rest goes at GPA 4 GiB, leaving the PC's MMIO hole free); more slots come from
    :meth:`map_memory`.  ``setup_base`` places pyhv's GDT and page tables (:mod:`pyhv.x86.setup`).
    ``resettable=True`` takes a reset point at the first run, for :meth:`reset`.
    ``irqchip=True`` gives the partition KVM's in-kernel PIC, IOAPIC and a LAPIC per vCPU
    (raise lines with :meth:`set_irq`; ``hlt`` then waits for an interrupt instead of
    exiting); ``pit=True`` adds the in-kernel PIT (it needs the irqchip).  ``hardened=True``
    is for guests you do not trust: every MSR outside a small allow-list (:data:`SAFE_MSRS`)
    raises #GP in the guest, and the default CPUID advertises no virtualization extensions
    (VMX, SVM) and no KVM paravirtual interface.  ``kvm_tss`` places the 4 pages of
    guest-physical space KVM needs for real-mode emulation on Intel (outside every slot;
    default ``0xFEFFC000``, as QEMU, so firmware up to 16 MiB can end at 4 GiB).
    ``halt_watch=True`` (with the irqchip) ends the runs as a :class:`pyhv.exits.Halt` once
    every vCPU is halted with interrupts off and nothing can wake it (or waits for a SIPI),
    where they would otherwise sleep in KVM for ever; it looks every 50 ms while they run.
    Use it as a context manager, or call :meth:`close`.  Its life: :mod:`pyhv.core.lifecycle`.
    """

    def __init__(self, memory: int | str | None = None, *,
                 hypervisor: hv.Hypervisor | None = None,
                 setup_base: int = DEFAULT_SETUP_BASE, resettable: bool = False,
                 irqchip: bool = False, pit: bool = False, hardened: bool = False,
                 kvm_tss: int = KVM_TSS_DEFAULT, halt_watch: bool = False) -> None:
        size = None if memory is None else parse_size(memory)
        if size is not None:
            GuestMemory.check_range(0, size)
        setup_base = as_int("setup_base", setup_base)
        if setup_base % PAGE_SIZE or not 0 <= setup_base < (1 << 32):
            raise InvalidArgument(f"setup_base {setup_base:#x} must be page-aligned, below 4 GiB")
        if pit and not irqchip:
            raise InvalidArgument("the in-kernel PIT needs the in-kernel irqchip (irqchip=True)")
        kvm_tss = as_int("kvm_tss", kvm_tss)
        if kvm_tss % PAGE_SIZE or not 0 <= kvm_tss <= (1 << 32) - KVM_TSS_SIZE:
            raise InvalidArgument(f"kvm_tss {kvm_tss:#x} must be page-aligned, its 4 pages "
                                  "below 4 GiB")
        self.kvm_tss = kvm_tss
        self.hypervisor = hypervisor if hypervisor is not None else hv.default()
        self.hypervisor.require_basics()
        if irqchip:
            self.hypervisor.require(Feature.IRQCHIP, "in-kernel interrupt controllers")
        if pit:
            self.hypervisor.require(Feature.PIT2, "the in-kernel PIT")
        if hardened:
            self.hypervisor.require(Feature.X86_MSR_FILTER, "hardened partitions")
        self.irqchip, self.pit, self.hardened = bool(irqchip), bool(pit), bool(hardened)
        self.setup_base = setup_base
        self.devices: dict[str, Device] = {}
        self.unclaimed_ports: dict[int, int] = {}               # see ignore_unclaimed_ports
        self._saved_device_states: dict[str, dict[str, Any]] = {}
        self._reset_point: Snapshot | None = None
        self._next_vcpu_id = 0
        self._lock = threading.Lock()
        caps = self.hypervisor.capability
        vm = VmFd.create(self.hypervisor.system, tss_addr=kvm_tss + PAGE_SIZE,
                         identity_map_addr=kvm_tss, irqchip=irqchip, pit=pit)
        self._vm = vm
        try:
            self.memory = GuestMemory(vm, max_slots=caps(Feature.NR_MEMSLOTS) or 32,
                                      phys_limit=1 << self.hypervisor.guest_phys_bits(),
                                      reserved=(kvm_tss, kvm_tss + KVM_TSS_SIZE),
                                      readonly_ok=bool(caps(Feature.READONLY_MEM)))
            self._machine = Machine(self.hypervisor, vm, self.memory, setup_base=setup_base,
                                    irqchip=self.irqchip, pit=self.pit, hardened=self.hardened,
                                    halt_watch=halt_watch)
            if hardened:
                self._machine.update_msr_filter()
            if resettable:
                self._machine.before_first_run = self.set_reset_point
            if size is not None:
                low = min(size, LOW_MEMORY_LIMIT)
                self.map_memory(0, low)
                if size > low:   # above 3 GiB, as on a PC: the hole below 4 GiB is for MMIO
                    self.map_memory(1 << 32, size - low)
        except BaseException:
            if hasattr(self, "memory"):
                self.memory.close()
            vm.close()
            raise
        log.debug("partition fd %d created (irqchip=%s, pit=%s, hardened=%s)", vm.fd, irqchip,
                  pit, hardened)

    # -- lifetime -------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._vm.closed

    def close(self) -> None:
        """Stop and release every vCPU, the VM and its memory (idempotent)."""
        if self._vm.closed:
            return
        log.debug("partition fd %d closed", self._vm.fd)
        machine = self._machine
        machine.life.close()                  # parked runs wake up and end
        for vcpu in machine.vcpus:
            vcpu.close()
        self._reset_point = None
        machine.fast.close()
        self._vm.close()
        self.memory.close()

    def __enter__(self) -> Partition:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        if self.closed:
            return "<pyhv.Partition closed>"
        total = sum(s.size for s in self.memory.slots)
        return (f"<pyhv.Partition fd={self._vm.fd} {len(self.memory.slots)} slot(s) "
                f"{total >> 20} MiB, {len(self.vcpus)} vCPU(s)>")

    # -- memory ---------------------------------------------------------------------------
    def map_memory(self, gpa: int, size: int | str, *, readonly: bool = False,
                   dirty_log: bool = False) -> MemorySlot:
        """Back ``[gpa, gpa+size)`` with new host memory (a KVM memory slot).

        ``readonly=True`` makes a ROM: guest writes exit as MMIO writes.  ``dirty_log=True``
        tracks written pages (see :meth:`dirty_pages`).  Overlaps are refused, with other
        slots and with MMIO handlers that the new memory would hide.
        """
        size = parse_size(size)
        for handler in self._machine.mmio.handlers:
            if isinstance(gpa, int) and handler.start < gpa + size and gpa < handler.end and (
                    not readonly or handler.read is not None):
                raise SlotOverlapError(f"memory [{gpa:#x}, {gpa + size:#x}) would hide "
                                       f"{handler!r}")
        slot = self.memory.map(gpa, size, readonly=readonly, dirty_log=dirty_log)
        try:
            self._machine.setup.refresh()       # long-mode page tables map the new GiBs too
        except BaseException:
            self.memory.unmap(slot)
            raise
        return slot

    def unmap_memory(self, slot: MemorySlot | int) -> None:
        """Remove a slot (given as the slot or its GPA) and free its host memory."""
        self.memory.unmap(slot)

    def dirty_pages(self, slot: MemorySlot) -> list[int]:
        """GPAs of the pages of ``slot`` written since the last call (``dirty_log=True``
        slots only).  Reading the log resets it; writes that snapshot() or restore() read
        from the log in between are still reported."""
        return self.memory.dirty_pages(slot)

    # -- vCPUs ----------------------------------------------------------------------------
    @property
    def vcpus(self) -> tuple[VCpu, ...]:
        return tuple(self._machine.vcpus)

    def create_vcpu(self, mode: str = "long", entry: int = 0x1000, stack: int | None = None,
                    *, cpuid: Iterable[CpuidEntry] | None = None, exceptions: bool = False,
                    allow_port_io: bool = False) -> VCpu:
        """Add a vCPU ready to run at ``entry`` in ``mode``: "real", "protected", "long", or
        "user" (long mode at CPL3 under pyhv's ring-0 stub).

        ``stack`` is the initial stack pointer (default: ``setup_base``, or the end of RAM
        below it).  ``cpuid`` replaces the CPUID table (default: all KVM supports).
        ``exceptions=True`` reports guest exceptions as :class:`pyhv.exits.GuestException`
        (always on in user mode).  ``allow_port_io=True`` sets IOPL 3, so a user-mode payload
        may use ``in``/``out`` directly; where the backend ignores the guest's IOPL at CPL3
        (kvm_pvm, found by a probe: :mod:`pyhv.core.probes`) it raises
        :class:`pyhv.MissingCapability`.  See :mod:`pyhv.x86.modes` for each mode's state.
        """
        self._require_open()
        if mode not in MODES:
            raise InvalidArgument(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        entry = as_int("entry", entry)
        if self.memory.slot_at(entry) is None:
            raise GuestMemoryError(entry, 1, "the entry point must lie in a memory slot")
        stack = self._default_stack(entry) if stack is None else as_int("stack", stack)
        if self.irqchip and (mode == "user" or exceptions):
            raise InvalidArgument("user mode and exceptions=True report through `hlt`, which "
                                  "waits for interrupts in a partition with irqchip=True")
        vcpu_id = self._next_vcpu_id
        check_mode(mode, entry, stack, exceptions, vcpu_id, self.setup_base, self.memory.spans())
        limit = self.hypervisor.capability(Feature.MAX_VCPUS) or 1
        if vcpu_id >= limit:
            raise InvalidArgument(f"KVM allows {limit} vCPUs per partition")
        if allow_port_io and mode == "user":   # at CPL0 IOPL changes nothing
            require_port_io_at_cpl3(self.hypervisor)
        self._next_vcpu_id += 1      # KVM cannot destroy a vCPU without its VM: a failure burns it
        return create_vcpu(self, self._machine, vcpu_id, mode=mode, entry=entry, stack=stack,
                           cpuid=cpuid, exceptions=exceptions, allow_port_io=allow_port_io)

    def _default_stack(self, entry: int) -> int:
        below = self.memory.slot_at(self.setup_base - 1)
        if below is not None and not below.readonly:
            return self.setup_base
        slot = self.memory.slot_at(entry)
        assert slot is not None
        return slot.end

    # -- devices ----------------------------------------------------------------------------
    def attach(self, device: Device) -> Device:
        """Attach one of pyhv's devices (see :mod:`pyhv.devices`): it registers its handlers
        and its state joins snapshots under ``device.name``."""
        if not isinstance(device, Device):
            raise InvalidArgument(f"{device!r} is not a pyhv.devices.Device")
        if device.name in self.devices:
            raise InvalidArgument(f"a device named {device.name!r} is attached already")
        self._require_open()
        device.attach(self)
        self.devices[device.name] = device
        saved = self._saved_device_states.pop(device.name, None)
        if saved is not None:        # a partition made from a snapshot: the device's state
            device.set_state(saved)
        return device

    # -- lifecycle and snapshots ------------------------------------------------------------
    @property
    def state(self) -> PartitionState:
        """Where the partition is in its life (see :mod:`pyhv.core.lifecycle`)."""
        return self._machine.life.state

    def pause(self) -> None:
        """Stop the guest where it is, from any thread: runs in progress are parked (they
        return only after :meth:`resume`) and new runs are refused.  Snapshots may be taken
        while paused."""
        vcpus = self.vcpus
        if any(v.running_thread == threading.get_ident() for v in vcpus):
            raise StateError("a vCPU thread cannot pause its own partition; call pause() "
                             "from another thread, or stop() from a handler")
        def cancel_running() -> None:
            for vcpu in vcpus:
                if vcpu.running_thread is not None and not vcpu.parked:
                    vcpu.cancel(quiet=True)

        self._machine.life.pause(cancel_running)

    def resume(self) -> None:
        """Let parked runs continue (and new ones start).  A stop() made during the pause
        takes effect now: the parked runs return ``Canceled``."""

        def reset_cancels(stopped: bool) -> None:
            for vcpu in self.vcpus:
                vcpu.clear_cancel()           # the cancels pause() sent are spent
                if stopped:
                    vcpu.cancel(quiet=True)   # a stop() during the pause is not

        self._machine.life.resume(reset_cancels)

    # -- running --------------------------------------------------------------------------
    def run(self, timeout: float | None = None, *, vcpu: VCpu | None = None) -> RunResult:
        """Run a vCPU (default: the first) serving exits with the registered handlers, until
        halt, shutdown, an exit nobody handles, or :meth:`stop`.

        An exception raised by a handler stops the run and propagates from here.  Past
        ``timeout`` seconds, :class:`pyhv.Timeout` is raised.
        """
        timeout = validate_timeout(timeout)
        if vcpu is None:
            vcpus = self._machine.vcpus
            if not vcpus:
                self._require_open()
                raise HypervisorError("the partition has no vCPU: call create_vcpu() first")
            vcpu = vcpus[0]
        elif vcpu.partition is not self:
            raise InvalidArgument(f"{vcpu!r} belongs to another partition")
        return vcpu.serve(timeout)

    def run_all(self, timeout: float | None = None) -> list[RunResult]:
        """Run every vCPU on a thread of its own, serving exits with the handlers, until each
        one ends (see :meth:`run`); returns their results in vCPU order.

        Handlers may then be called from several threads at once.  If a handler raises, or a
        vCPU times out, the other vCPUs are stopped and the first such exception propagates.
        An exit that ends the whole machine (debug-exit, reset, shutdown, a system event), or
        one nobody handled, on one vCPU stops the others too (their results are ``Canceled``).
        """
        self._require_open()
        return run_all(list(self._machine.vcpus), self._machine, validate_timeout(timeout))

    def stop(self) -> None:
        """Cancel the runs of every vCPU (from any thread); they return ``Canceled``.  A vCPU
        not running now returns ``Canceled`` from its next run; during a pause, the parked runs
        return ``Canceled`` when resumed."""
        self._machine.stop_all()

