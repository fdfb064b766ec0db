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

import threading
from collections.abc import Iterable
from typing import Any

from ._native import Feature, VmFd
from .core import hypervisor as hv
from .core.buses import (
    Handler,
    OutputSink,
    ReadHandler,
    SyscallHandler,
    WriteHandler,
    sink_writer,
)
from .core.fastpath import Doorbell, FastPort, PortKind
from .core.lifecycle import PartitionState
from .core.loop import RunResult, run_all, validate_timeout
from .core.machine import ExceptionHandler, Machine
from .core.memory import PAGE_SIZE, GuestMemory, MemorySlot, as_int, parse_size
from .core.vcpu import VCpu, create_vcpu
from .devices import Device
from .errors import (
    ClosedError,
    GuestMemoryError,
    HypervisorError,
    InvalidArgument,
    OverlapError,
    StateError,
)
from .snapshot import persist
from .snapshot.format import Snapshot
from .x86.cpuid import CpuidEntry
from .x86.modes import MODES, check_mode
from .x86.setup import DEFAULT_SETUP_BASE

__all__ = ["KVM_TSS_ADDR", "LOW_MEMORY_LIMIT", "SAFE_MSRS", "Partition"]

# KVM on Intel needs 4 pages of guest-physical space for real-mode emulation, below 4 GiB
# and outside every slot (the place QEMU uses too).
KVM_TSS_ADDR = 0xFFFBD000
KVM_IDENTITY_MAP_ADDR = 0xFFFBC000
KVM_RESERVED = (KVM_IDENTITY_MAP_ADDR, KVM_TSS_ADDR + 3 * PAGE_SIZE)
# RAM given as Partition(memory=...) fills GPA 0 up to here; the rest starts at 4 GiB
LOW_MEMORY_LIMIT = 3 << 30

# What a hardened partition's guest may still read and write: the MSRs an ordinary kernel
# needs to run (TSC, PAT, SYSENTER, EFER, syscall and segment-base MSRs, TSC_AUX, APIC base).
SAFE_MSRS = frozenset({
    0x10, 0x1B, 0x174, 0x175, 0x176, 0x277, 0xC0000080, 0xC0000081, 0xC0000082, 0xC0000083,
    0xC0000084, 0xC0000100, 0xC0000101, 0xC0000102, 0xC0000103,
})


def _port_span(ports: int | range) -> tuple[int, int]:
    if isinstance(ports, range):
        if ports.step != 1 or not ports:
            raise InvalidArgument(f"port range {ports} must be non-empty with step 1")
        return ports.start, len(ports)
    return as_int("port", ports), 1


class Partition:
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
    (VMX, SVM) and no KVM paravirtual interface.
    Use it as a context manager, or call :meth:`close`.  Its life: :mod:`pyhv.core.lifecycle`.
    """

    def __init__(self, memory: int | str | None = None, *,
                 hypervisor: hv.Hypervisor | None = None,
                 setup_base: int = DEFAULT_SETUP_BASE, resettable: bool = False,
                 irqchip: bool = False, pit: bool = False, hardened: bool = False) -> None:
        size = None if memory is None else parse_size(memory)
        if size is not None:
            GuestMemory.check_range(0, size)
        setup_base = as_int("setup_base", setup_base)
        if setup_base % PAGE_SIZE or not 0 <= setup_base < (1 << 32):
            raise InvalidArgument(f"setup_base {setup_base:#x} must be page-aligned, below 4 GiB")
        if pit and not irqchip:
            raise InvalidArgument("the in-kernel PIT needs the in-kernel irqchip (irqchip=True)")
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
        vm = VmFd.create(self.hypervisor.system, tss_addr=KVM_TSS_ADDR,
                         identity_map_addr=KVM_IDENTITY_MAP_ADDR, irqchip=irqchip, pit=pit)
        self._vm = vm
        try:
            self.memory = GuestMemory(vm, max_slots=caps(Feature.NR_MEMSLOTS) or 32,
                                      phys_limit=1 << self.hypervisor.guest_phys_bits(),
                                      reserved=KVM_RESERVED,
                                      readonly_ok=bool(caps(Feature.READONLY_MEM)))
            self._machine = Machine(self.hypervisor, vm, self.memory, setup_base=setup_base,
                                    irqchip=self.irqchip, pit=self.pit, hardened=self.hardened)
            if hardened:
                vm.set_msr_filter(False, sorted(SAFE_MSRS))
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

    # -- lifetime -------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._vm.closed

    def close(self) -> None:
        """Stop and release every vCPU, the VM and its memory (idempotent)."""
        if self._vm.closed:
            return
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

    def _require_open(self) -> None:
        if self._vm.closed:
            raise ClosedError("partition is closed")

    # -- memory ---------------------------------------------------------------------------
    def map_memory(self, gpa: int, size: int | str, *, readonly: bool = False,
                   dirty_log: bool = False) -> MemorySlot:
        """Back ``[gpa, gpa+size)`` with new host memory (a KVM memory slot).

        ``readonly=True`` makes a ROM: guest writes exit as MMIO writes.  ``dirty_log=True``
        tracks written pages (see :meth:`dirty_pages`).  Overlaps are refused.
        """
        slot = self.memory.map(gpa, parse_size(size), readonly=readonly, dirty_log=dirty_log)
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
        may use ``in``/``out`` directly.  See :mod:`pyhv.x86.modes` for each mode's state.
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

    # -- interrupts and devices -------------------------------------------------------------
    def set_irq(self, line: int, level: bool) -> None:
        """Drive interrupt ``line`` (ISA IRQ 0-15 on the PIC, or an IOAPIC pin up to 23) of
        the in-kernel irqchip high or low.  Safe from any thread."""
        if not self.irqchip:
            raise StateError("set_irq needs a partition made with irqchip=True")
        line = as_int("line", line)
        if not 0 <= line < 24:
            raise InvalidArgument(f"interrupt line {line} is not 0..23")
        self._require_open()
        self._vm.irq_line(line, level)

    def pulse_irq(self, line: int) -> None:
        """Raise and lower ``line``: one edge for an edge-triggered (ISA) interrupt."""
        self.set_irq(line, True)
        self.set_irq(line, False)

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

    def snapshot(self) -> Snapshot:
        """Capture memory (touched pages of every slot), every vCPU's whole state and the
        state of pyhv's devices.  The partition must not be running (pause() it).  From here
        on writes are tracked, so :meth:`restore` of this snapshot copies only what changed."""
        self._machine.life.require_quiet("take a snapshot")
        self._machine.fast.deliver_all(self._machine.vcpu_fds())
        return persist.take(self._machine, self.devices)

    def restore(self, snap: Snapshot) -> int:
        """Bring the partition back to ``snap`` (same slots and vCPUs): memory, vCPU state,
        devices.  Clears poisoning.  Restoring the latest snapshot taken or restored copies
        only the pages written since; any other snapshot costs a copy of the touched pages.
        Returns the number of pages copied."""
        if not isinstance(snap, Snapshot):
            raise InvalidArgument(f"restore() takes a pyhv.Snapshot, not {type(snap).__name__}")
        machine = self._machine
        machine.life.require_quiet("restore a snapshot")
        persist.check_fits(machine, snap)       # a snapshot that does not fit changes nothing
        machine.fast.deliver_all(machine.vcpu_fds())
        try:
            copied = persist.restore(machine, self.devices, snap)
        except BaseException as exc:
            # memory and vCPUs may be half from the snapshot, half not: unusable until a
            # restore succeeds
            machine.life.poison(f"a restore failed halfway ({type(exc).__name__}: {exc})")
            raise
        for vcpu in self.vcpus:              # a restored partition starts with no cancels
            vcpu.clear_cancel()
        machine.life.cure()
        return copied

    def set_reset_point(self) -> Snapshot:
        """Make the current state the one :meth:`reset` returns to (and return it)."""
        self._reset_point = self.snapshot()
        return self._reset_point

    def reset(self) -> int:
        """Back to the reset point: the state at the first run of a ``resettable=True``
        partition, or at the last :meth:`set_reset_point`."""
        if self._reset_point is None:
            raise StateError("no reset point: create the partition with resettable=True "
                             "(the first run sets it) or call set_reset_point()")
        return self.restore(self._reset_point)

    @classmethod
    def from_snapshot(cls, snap: Snapshot, *,
                      hypervisor: hv.Hypervisor | None = None) -> Partition:
        """A new partition with ``snap``'s memory slots, vCPUs and in-kernel interrupt
        controllers, in ``snap``'s state.  Handlers, fast-path ports and devices are Python
        objects, not part of the snapshot: register or attach them again; a device attached
        under a name the snapshot has takes its saved state."""
        part = cls(hypervisor=hypervisor, setup_base=snap.setup_base,
                   irqchip="pic_master" in snap.chips, pit="pit" in snap.chips,
                   hardened=snap.hardened)
        try:
            cls._rebuild(part, snap)
        except BaseException:
            part.close()
            raise
        return part

    def _rebuild(self, snap: Snapshot) -> None:
        """Make ``snap``'s slots and vCPUs here and restore it (for :meth:`from_snapshot`)."""
        for image in snap.slots:
            self.map_memory(image.gpa, image.size, readonly=image.readonly,
                            dirty_log=image.dirty_log)
        for vcpu_image in snap.vcpus:
            self._next_vcpu_id = max(self._next_vcpu_id, vcpu_image.id + 1)
            create_vcpu(self, self._machine, vcpu_image.id, mode=None, cpuid=vcpu_image.cpuid)
        self.restore(snap)
        self._saved_device_states = dict(snap.devices)   # for devices attached later

    # -- handlers -------------------------------------------------------------------------
    def add_io_handler(self, ports: int | range, read: ReadHandler | None = None,
                       write: WriteHandler | None = None) -> Handler:
        """Serve guest port IO on ``ports`` (one port or a ``range``) during :meth:`run`.

        ``read(port, size) -> int`` answers IN; ``write(port, size, value)`` takes OUT.
        """
        self._require_open()
        start, size = _port_span(ports)
        self._check_no_fast_port(start, size)
        return self._machine.io.add(start, size, read, write)

    def add_mmio_handler(self, gpa: int, size: int, read: ReadHandler | None = None,
                         write: WriteHandler | None = None) -> Handler:
        """Serve guest MMIO in ``[gpa, gpa+size)`` during :meth:`run` (accesses there exit
        when no RAM is mapped, or for writes to a read-only slot).

        ``read(gpa, size) -> int`` answers reads; ``write(gpa, size, value)`` takes writes.
        """
        self._require_open()
        return self._machine.mmio.add(gpa, size, read, write)

    def _check_no_fast_port(self, start: int, size: int) -> None:
        port = self._machine.fast.overlaps(start, size)
        if port is not None:
            raise OverlapError(f"port {port:#x} already has a handler")

    def ignore_unclaimed_ports(self) -> None:
        """Treat ports no handler claims like an empty ISA bus: INs read all ones and OUTs
        vanish, instead of ending the run.  Real kernels probe many such ports; the ones
        touched are counted in :attr:`unclaimed_ports` (port -> accesses)."""
        counts = self.unclaimed_ports

        def read(port: int, size: int) -> int:
            counts[port] = counts.get(port, 0) + 1
            return (1 << (8 * size)) - 1

        def write(port: int, size: int, value: int) -> None:
            counts[port] = counts.get(port, 0) + 1

        self._machine.io.set_fallback(read, write)

    def remove_handler(self, handler: Handler | FastPort) -> None:
        """Unregister a handler returned by one of the ``add_*`` methods."""
        machine = self._machine
        if isinstance(handler, FastPort):
            machine.life.require_quiet("remove a fast-path port")
            machine.fast.remove_port(handler)
            return
        space = machine.io if handler.space == "io" else machine.mmio
        if handler not in space:
            raise InvalidArgument(f"{handler!r} is not registered here")
        zone = machine.fast.zone_at(handler.start, handler.space == "io")
        if zone is not None:
            # writes the kernel queued for this zone go to its handler first
            machine.life.require_quiet("remove a coalesced zone")
            machine.fast.deliver_all(machine.vcpu_fds())
            machine.fast.remove_zone(zone)
        space.remove(handler)

    def set_syscall_handler(self, handler: SyscallHandler | None) -> None:
        """Serve user-mode ``syscall``s during :meth:`run`: ``handler(nr, args)`` returns the
        result (RAX) to resume the payload, or None to end the run on that
        :class:`pyhv.exits.Syscall`."""
        if handler is not None and not callable(handler):
            raise InvalidArgument(f"syscall handler {handler!r} is not callable")
        self._machine.syscall_handler = handler

    def set_exception_handler(self, handler: ExceptionHandler | None) -> None:
        """Serve guest exceptions during :meth:`run`: ``handler(exit)`` gets each
        :class:`pyhv.exits.GuestException` (user mode or ``exceptions=True``) and may
        ``exit.resume_at(...)``; returning goes on with the guest, raising stops the run."""
        if handler is not None and not callable(handler):
            raise InvalidArgument(f"exception handler {handler!r} is not callable")
        self._machine.exception_handler = handler

    # -- exits the C core or the kernel complete without Python ------------------------------
    def _add_fast_port(self, port: int, kind: PortKind, value: int = 0, *,
                       overlay: bool = False, sink: OutputSink | None = None) -> FastPort:
        """``overlay=True`` lets the port lie over a Python handler of the same port, which
        then takes what C does not (a device's slow path)."""
        port = as_int("port", port)
        if not 0 <= port <= 0xFFFF:
            raise InvalidArgument(f"port {port:#x} is not a 16-bit port")
        self._require_open()
        self._machine.life.require_quiet("add a fast-path port")   # the C loop reads the table
        if not overlay and self._machine.io.claimed(port) is not None:
            raise OverlapError(f"port {port:#x} already has a handler")
        return self._machine.fast.add_port(port, kind, value, sink)

    def add_buffered_port(self, port: int, sink: OutputSink, *,
                          overlay: bool = False) -> FastPort:
        """Collect the guest's OUTs to ``port`` in C and hand them to ``sink`` in bulk.

        ``sink`` is a callable taking ``bytes`` or a binary stream (anything with
        ``write``).  It gets the bytes when the buffer fills, before any exit Python sees,
        and when the run ends: a serial transmit register costs no Python call per byte.
        ``overlay=True`` lets it lie over an IO handler of the same port (which then gets the
        exits while :attr:`FastPort.enabled` is False).
        """
        return self._add_fast_port(port, PortKind.BUFFERED, overlay=overlay,
                                   sink=sink_writer(sink))

    def add_constant_port(self, port: int, value: int, *, overlay: bool = False) -> FastPort:
        """Answer the guest's INs from ``port`` with ``value`` in C (e.g. a UART's line
        status "transmitter empty", which polling guests read before every byte)."""
        value = as_int("value", value)
        if not 0 <= value <= 0xFFFFFFFF:
            raise InvalidArgument(f"constant {value:#x} does not fit 32 bits")
        return self._add_fast_port(port, PortKind.CONSTANT, value, overlay=overlay)

    def add_debug_exit(self, port: int = 0xF4) -> FastPort:
        """QEMU's isa-debug-exit: a guest OUT of V to ``port`` ends the run with a
        :class:`pyhv.exits.DebugExit` whose ``code`` is ``(V << 1) | 1``."""
        return self._add_fast_port(port, PortKind.DEBUG_EXIT)

    def add_coalesced_mmio(self, gpa: int, size: int, write: WriteHandler,
                           read: ReadHandler | None = None) -> Handler:
        """Let the kernel queue guest writes to ``[gpa, gpa+size)`` in its coalesced ring
        (no exit per write); ``write(gpa, size, value)`` gets them in bulk, in order, before
        any exit Python sees (writes that do exit, e.g. when the ring is full, reach it too,
        in order).  Reads still exit, to ``read`` if given."""
        return self._add_coalesced(gpa, size, write, read, pio=False)

    def add_coalesced_io(self, ports: int | range, write: WriteHandler,
                         read: ReadHandler | None = None) -> Handler:
        """The port-IO twin of :meth:`add_coalesced_mmio` (``KVM_CAP_COALESCED_PIO``).  Some
        backends (kvm_pvm) exit on these writes anyway; ``write`` then gets them one by one."""
        start, size = _port_span(ports)
        return self._add_coalesced(start, size, write, read, pio=True)

    def _add_coalesced(self, start: int, size: int, write: WriteHandler,
                       read: ReadHandler | None, pio: bool) -> Handler:
        self.hypervisor.require(Feature.COALESCED_PIO if pio else Feature.COALESCED_MMIO,
                                "coalesced writes")
        if not callable(write):
            raise InvalidArgument(f"write handler {write!r} is not callable")
        self._require_open()
        space = self._machine.io if pio else self._machine.mmio
        if pio:
            self._check_no_fast_port(start, size)
        # Writes the kernel does not queue (ring full, or a backend that exits anyway) reach
        # the same handler as ordinary exits, after the queued ones: the order holds.
        handler = space.add(start, size, read, write)
        try:
            self._machine.fast.add_zone(start, size, pio, write)
        except BaseException:
            space.remove(handler)
            raise
        return handler

    def add_doorbell(self, address: int, size: int = 4, *, io: bool = False,
                     value: int | None = None) -> Doorbell:
        """An eventfd the kernel signals when the guest writes ``size`` bytes at ``address``
        (a port with ``io=True``), optionally only when it writes ``value``: the write costs
        no exit at all.  See :class:`pyhv.Doorbell`."""
        address, size = as_int("address", address), as_int("size", size)
        if size not in (1, 2, 4, 8) or (io and (size == 8 or address > 0xFFFF)) or address < 0:
            raise InvalidArgument(f"bad doorbell {'port' if io else 'address'} {address:#x} "
                                  f"size {size}")
        self.hypervisor.require(Feature.IOEVENTFD, "doorbells")
        if value is not None and not 0 <= as_int("value", value) < 1 << (8 * size):
            raise InvalidArgument(f"doorbell value {value:#x} does not fit {size} bytes")
        self._require_open()
        return self._machine.fast.add_doorbell(address, size, io, value)

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
        return run_all(list(self._machine.vcpus), self._machine, validate_timeout(timeout))

    def stop(self) -> None:
        """Cancel the runs of every vCPU (from any thread); they return ``Canceled``.  A vCPU
        not running now returns ``Canceled`` from its next run; during a pause, the parked runs
        return ``Canceled`` when resumed."""
        self._machine.stop_all()

