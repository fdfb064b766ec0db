"""Partitions (VMs): guest memory slots, vCPUs, handlers, and the handler-driven run.

>>> with pyhv.Partition(memory="16M") as part:                      # doctest: +SKIP
...     part.memory.write(0x1000, code)
...     cpu = part.create_vcpu(mode="long", entry=0x1000)
...     part.add_io_handler(0x3F8, write=lambda port, size, value: print(chr(value), end=""))
...     result = part.run(timeout=5)
"""

from __future__ import annotations

import errno
import threading
import weakref
from collections.abc import Iterable
from typing import Any

from . import system
from ._ffi import ffi, lib
from .devices import Device
from .dispatch import (
    AddressSpace,
    Handler,
    OutputSink,
    ReadHandler,
    RunResult,
    SyscallHandler,
    WriteHandler,
    run_with_handlers,
    sink_writer,
)
from .errors import (
    ClosedError,
    GuestMemoryError,
    HypervisorError,
    InvalidArgument,
    MissingCapability,
    OverlapError,
    SlotOverlapError,
    StateError,
    check_rc,
)
from .exits import DebugExit, Reset, Shutdown, SystemEvent
from .lifecycle import Lifecycle, PartitionState
from .memory import (
    PAGE_SIZE,
    GuestMemory,
    MemorySlot,
    allocate_host_memory,
    free_host_memory,
    parse_size,
)
from .modes import (
    DEFAULT_SETUP_BASE,
    MODES,
    PAGE_TABLES_OFFSET,
    check_mode,
    setup_vcpu,
    write_setup_region,
)
from .snapshot import (
    DirtyTracker,
    Snapshot,
    check_restorable,
    restore_snapshot,
    take_snapshot,
)
from .system import CpuidEntry
from .vcpu import VCpu, _validate_timeout

# KVM on Intel needs 4 pages of guest-physical space for real-mode emulation, below 4 GiB
# and outside every slot (the place QEMU uses too).
KVM_TSS_ADDR = 0xFFFBD000
KVM_IDENTITY_MAP_ADDR = 0xFFFBC000
KVM_RESERVED = (KVM_IDENTITY_MAP_ADDR, KVM_TSS_ADDR + 3 * PAGE_SIZE)
# the step pyhv_partition_create_x86 reports as failed -> the ioctl it made
_CREATE_STAGES = {lib.PYHV_STAGE_CREATE: "KVM_CREATE_VM", lib.PYHV_STAGE_TSS: "KVM_SET_TSS_ADDR",
                  lib.PYHV_STAGE_IDENTITY_MAP: "KVM_SET_IDENTITY_MAP_ADDR",
                  lib.PYHV_STAGE_IRQCHIP: "KVM_CREATE_IRQCHIP",
                  lib.PYHV_STAGE_PIT: "KVM_CREATE_PIT2"}
# RAM given as Partition(memory=...) fills GPA 0 up to here; the rest starts at 4 GiB
LOW_MEMORY_LIMIT = 3 << 30


class _Resources:
    """What a partition owns in the kernel and the host; released once, by close() or GC."""

    def __init__(self) -> None:
        self.vm_fd = -1
        self.mappings: dict[int, tuple[Any, int]] = {}   # slot -> (pointer, size)
        self.eventfds: set[int] = set()                    # doorbells

    def release(self) -> None:
        for fd in self.eventfds:
            lib.pyhv_close(fd)
        self.eventfds.clear()
        if self.vm_fd >= 0:
            lib.pyhv_close(self.vm_fd)
            self.vm_fd = -1
        for pointer, size in self.mappings.values():
            free_host_memory(pointer, size)
        self.mappings.clear()


def _as_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{name} must be an int, not {value!r}")
    return value


class Partition:
    """A partition (KVM VM): guest-physical memory, vCPUs, and port/MMIO handlers.

    ``memory`` (bytes, or a string like ``"16M"``) becomes a RAM slot at GPA 0 (beyond 3 GiB,
    the rest goes at GPA 4 GiB, leaving the PC's MMIO hole free); more slots come from
    :meth:`map_memory`.  ``setup_base`` places pyhv's GDT and page tables (:mod:`pyhv.modes`).
    ``resettable=True`` takes a reset point at the first run, for :meth:`reset`.
    ``irqchip=True`` gives the partition KVM's in-kernel PIC, IOAPIC and a LAPIC per vCPU
    (raise lines with :meth:`set_irq`; ``hlt`` then waits for an interrupt instead of
    exiting); ``pit=True`` adds the in-kernel PIT (it needs the irqchip).  ``hardened=True``
    is for guests you do not trust: every MSR outside a small allow-list (:data:`SAFE_MSRS`)
    raises #GP in the guest, and the default CPUID advertises no virtualization extensions
    (VMX, SVM) and no KVM paravirtual interface.
    Use it as a context manager, or call :meth:`close`.  Its life: :mod:`pyhv.lifecycle`.

    Example::

        with pyhv.Partition(memory="16M") as part:
            part.memory.write(0x1000, bytes.fromhex("b8 2a 00 00 00 f4"))  # mov eax,42; hlt
            cpu = part.create_vcpu(mode="long", entry=0x1000)
            assert isinstance(cpu.run(), pyhv.exits.Halt) and cpu.regs.rax == 42
    """

    def __init__(self, memory: int | str | None = None, *,
                 hypervisor: system.Hypervisor | None = None,
                 setup_base: int = DEFAULT_SETUP_BASE, resettable: bool = False,
                 irqchip: bool = False, pit: bool = False, hardened: bool = False) -> None:
        size = None if memory is None else parse_size(memory)
        if size is not None:
            self._check_slot_args(0, size)
        setup_base = _as_int("setup_base", setup_base)
        if setup_base % PAGE_SIZE or not 0 <= setup_base < (1 << 32):
            raise InvalidArgument(f"setup_base {setup_base:#x} must be page-aligned, below 4 GiB")
        if pit and not irqchip:
            raise InvalidArgument("the in-kernel PIT needs the in-kernel irqchip (irqchip=True)")
        self.hypervisor = hypervisor if hypervisor is not None else system.default()
        for cap, why in system.REQUIRED_CAPABILITIES.items():
            self.hypervisor.require(cap, why)
        if irqchip:
            self.hypervisor.require("KVM_CAP_IRQCHIP", "in-kernel interrupt controllers")
        if pit:
            self.hypervisor.require("KVM_CAP_PIT2", "the in-kernel PIT")
        self.irqchip, self.pit = bool(irqchip), bool(pit)
        self.hardened = bool(hardened)
        if hardened:
            self.hypervisor.require("KVM_CAP_X86_MSR_FILTER", "hardened partitions")
        self.setup_base = setup_base
        self.memory = GuestMemory()
        self._vcpus: list[VCpu] = []
        self._next_vcpu_id = 0
        self._io = AddressSpace("io", 0x10000, cached=True)
        self._mmio = AddressSpace("mmio", 1 << 64, cached=False)
        self._setup_written: str | None = None
        self._fast_ports: dict[int, tuple[int, int]] = {}       # port -> (kind, value)
        self._fast_enabled: dict[int, bool] = {}                # ports switched off/on
        self.unclaimed_ports: dict[int, int] = {}               # see ignore_unclaimed_ports
        self._outputs: dict[int, OutputSink] = {}                # buffered port -> sink
        self._coalesced: list[tuple[int, int, bool, WriteHandler]] = []
        self._ring_lock = threading.Lock()
        self._doorbells: list[Doorbell] = []
        self._syscall_handler: SyscallHandler | None = None
        self._life = Lifecycle()
        self._tracker: DirtyTracker | None = None
        self._reset_point: Snapshot | None = None
        self._resettable = resettable
        self._msrs_to_save: list[int] | None = None
        self._layout_version = 0        # bumped whenever slots or vCPUs come or go
        self.devices: dict[str, Device] = {}
        self._saved_device_states: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._max_slots = self.hypervisor.capability("KVM_CAP_NR_MEMSLOTS") or 32
        self._phys_limit = 1 << self.hypervisor.guest_phys_bits()

        self._res = _Resources()
        self._finalizer = weakref.finalize(self, self._res.release)
        try:
            out, stage = ffi.new("int *"), ffi.new("uint32_t *")
            flags = (lib.PYHV_PARTITION_IRQCHIP if irqchip else 0) | (
                lib.PYHV_PARTITION_PIT if pit else 0)
            rc = lib.pyhv_partition_create_x86(self.hypervisor.fd, flags, KVM_TSS_ADDR,
                                               KVM_IDENTITY_MAP_ADDR, stage, out)
            check_rc(rc, _CREATE_STAGES.get(stage[0], "KVM_CREATE_VM"))
            self._res.vm_fd = out[0]
            if hardened:
                allowed = sorted(SAFE_MSRS)
                check_rc(lib.pyhv_partition_set_msr_filter(self._res.vm_fd, 0, allowed,
                                                           len(allowed)),
                         "KVM_X86_SET_MSR_FILTER")
            if size is not None:
                low = min(size, LOW_MEMORY_LIMIT)
                self.map_memory(0, low)
                if size > low:   # above 3 GiB, as on a PC: the hole below 4 GiB is for MMIO
                    self.map_memory(1 << 32, size - low)
        except BaseException:
            self.close()
            raise

    # -- lifetime -------------------------------------------------------------------------
    @property
    def _vm_fd(self) -> int:
        if not self._finalizer.alive:
            raise ClosedError("partition is closed")
        return self._res.vm_fd

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def close(self) -> None:
        """Stop and release every vCPU, the VM and its memory (idempotent)."""
        if not self._finalizer.alive:
            return
        self._life.close()                  # parked runs wake up and end
        for vcpu in list(self._vcpus):
            vcpu.close()
        self._vcpus.clear()
        self._tracker = None
        self._reset_point = None
        for bell in list(self._doorbells):
            bell.close()
        for slot in self.memory.slots:
            self.memory._remove(slot)
        self._finalizer()

    def __enter__(self) -> Partition:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        if self.closed:
            return "<pyhv.Partition closed>"
        total = sum(s.size for s in self.memory.slots)
        return (f"<pyhv.Partition fd={self._res.vm_fd} {len(self.memory.slots)} slot(s) "
                f"{total >> 20} MiB, {len(self._vcpus)} vCPU(s)>")

    # -- memory ---------------------------------------------------------------------------
    def _check_slot_args(self, gpa: int, size: int) -> None:
        gpa = _as_int("gpa", gpa)
        size = _as_int("size", size)
        if size <= 0:
            raise InvalidArgument(f"memory size must be > 0, not {size}")
        if gpa < 0 or gpa % PAGE_SIZE or size % PAGE_SIZE:
            raise InvalidArgument(f"memory slot [{gpa:#x}, +{size:#x}) must start and end on a "
                                  f"{PAGE_SIZE:#x}-byte page boundary")

    def map_memory(self, gpa: int, size: int | str, *, readonly: bool = False,
                   dirty_log: bool = False) -> MemorySlot:
        """Back ``[gpa, gpa+size)`` with new host memory (a KVM memory slot).

        ``readonly=True`` makes a ROM: guest writes exit as MMIO writes.  ``dirty_log=True``
        tracks written pages (see :meth:`dirty_pages`).  Overlaps are refused.
        """
        size = parse_size(size)
        self._check_slot_args(gpa, size)
        if gpa + size > self._phys_limit:
            raise InvalidArgument(f"slot end {gpa + size:#x} is beyond the guest's physical "
                                  f"address width ({self._phys_limit:#x})")
        if gpa < KVM_RESERVED[1] and KVM_RESERVED[0] < gpa + size:
            raise SlotOverlapError(f"[{KVM_RESERVED[0]:#x}, {KVM_RESERVED[1]:#x}) is reserved "
                                   "for KVM's real-mode TSS and identity map")
        clash = self.memory.overlapping(gpa, size)
        if clash is not None:
            raise SlotOverlapError(f"slot [{gpa:#x}, {gpa + size:#x}) overlaps {clash}")
        if readonly and not self.hypervisor.capability("KVM_CAP_READONLY_MEM"):
            raise MissingCapability("KVM_CAP_READONLY_MEM", "read-only memory slots")
        used = {s.slot for s in self.memory.slots}
        slot_id = next(i for i in range(len(used) + 1) if i not in used)
        if slot_id >= self._max_slots:
            raise InvalidArgument(f"KVM allows {self._max_slots} memory slots per partition")
        flags = (lib.KVM_MEM_READONLY if readonly else 0) | (
            lib.KVM_MEM_LOG_DIRTY_PAGES if dirty_log else 0)

        vm_fd = self._vm_fd
        pointer = allocate_host_memory(size)
        rc = lib.pyhv_partition_set_slot(vm_fd, slot_id, flags, gpa, size, pointer)
        if rc < 0:
            free_host_memory(pointer, size)
            check_rc(rc, f"KVM_SET_USER_MEMORY_REGION [{gpa:#x}, +{size:#x})")
        self._res.mappings[slot_id] = (pointer, size)
        slot = MemorySlot(slot_id, gpa, size, readonly, dirty_log,
                          int(ffi.cast("uintptr_t", pointer)), pointer)
        self.memory._add(slot)
        self._layout_version += 1
        if self._setup_written == "long":
            try:
                self._prepare_setup_region(True, rewrite=True)   # map the new GiBs too
            except BaseException:
                self.unmap_memory(slot)
                raise
        return slot

    def unmap_memory(self, slot: MemorySlot | int) -> None:
        """Remove a slot (given as the slot or its GPA) and free its host memory."""
        if not isinstance(slot, MemorySlot):
            found = self.memory.slot_at(_as_int("gpa", slot))
            if found is None:
                raise GuestMemoryError(slot, 1, "no slot to unmap")
            slot = found
        if slot not in self.memory.slots:
            raise InvalidArgument(f"{slot} is not a slot of this partition")
        check_rc(lib.pyhv_partition_set_slot(self._vm_fd, slot.slot, 0, slot.gpa, 0, slot._pointer),
                 "KVM_SET_USER_MEMORY_REGION (delete)")
        self.memory._remove(slot)
        self._layout_version += 1
        pointer, size = self._res.mappings.pop(slot.slot)
        free_host_memory(pointer, size)

    def dirty_pages(self, slot: MemorySlot) -> list[int]:
        """GPAs of the pages of ``slot`` written since the last call (``dirty_log=True``
        slots only).  Reading the log resets it; writes that snapshot() or restore() read
        from the log in between are still reported."""
        from .snapshot import take_dirty_pages
        if not slot.dirty_log:
            raise InvalidArgument(f"{slot} was not mapped with dirty_log=True")
        bitmap = take_dirty_pages(self, slot)
        dirty = []
        for word_index in range((slot.size // PAGE_SIZE + 63) // 64):
            word = bitmap[word_index]
            while word:
                bit = (word & -word).bit_length() - 1
                dirty.append(slot.gpa + (word_index * 64 + bit) * PAGE_SIZE)
                word &= word - 1
        return dirty

    # -- vCPUs ----------------------------------------------------------------------------
    @property
    def vcpus(self) -> tuple[VCpu, ...]:
        return tuple(self._vcpus)

    def create_vcpu(self, mode: str = "long", entry: int = 0x1000, stack: int | None = None,
                    *, cpuid: Iterable[CpuidEntry] | None = None, exceptions: bool = False,
                    allow_port_io: bool = False) -> VCpu:
        """Add a vCPU ready to run at ``entry`` in ``mode``: "real", "protected", "long", or
        "user" (long mode at CPL3 under pyhv's ring-0 stub).

        ``stack`` is the initial stack pointer (default: ``setup_base``, or the end of RAM
        below it).  ``cpuid`` replaces the CPUID table (default: all KVM supports).
        ``exceptions=True`` reports guest exceptions as :class:`pyhv.exits.GuestException`
        (always on in user mode).  ``allow_port_io=True`` sets IOPL 3, so a user-mode payload
        may use ``in``/``out`` directly.  See :mod:`pyhv.modes` for each mode's machine state.
        """
        if mode not in MODES:
            raise InvalidArgument(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        entry = _as_int("entry", entry)
        if self.memory.slot_at(entry) is None:
            raise GuestMemoryError(entry, 1, "the entry point must lie in a memory slot")
        stack = self._default_stack(entry) if stack is None else _as_int("stack", stack)
        if self.irqchip and (mode == "user" or exceptions):
            raise InvalidArgument("user mode and exceptions=True report through `hlt`, which "
                                  "waits for interrupts in a partition with irqchip=True")
        # KVM cannot destroy a vCPU without its VM: a failure below burns this id
        vcpu_id = self._next_vcpu_id
        check_mode(self, mode, entry, stack, exceptions, vcpu_id)
        limit = self.hypervisor.capability("KVM_CAP_MAX_VCPUS") or 1
        if vcpu_id >= limit:
            raise InvalidArgument(f"KVM allows {limit} vCPUs per partition")
        table = None if cpuid is None else list(cpuid)
        vcpu = VCpu(self, vcpu_id)
        self._next_vcpu_id += 1
        try:
            if self.irqchip:
                lib.pyhv_vcpu_set_irqchip(vcpu._handle(), 1)
            if table is None:
                buf, n = self.hypervisor._vcpu_cpuid(vcpu_id, sanitized=self.hardened)
                check_rc(lib.pyhv_vcpu_set_cpuid(vcpu._handle(), buf, n), "KVM_SET_CPUID2")
            else:
                vcpu.set_cpuid(table)
            setup_vcpu(vcpu, mode, entry, stack, exceptions, allow_port_io)
            vcpu.mode = mode
            if mode == "user" or exceptions:
                vcpu._enable_stubs()
            for port, (kind, value) in self._fast_ports.items():
                check_rc(lib.pyhv_vcpu_set_fast_port(vcpu._handle(), port, kind, value),
                         f"fast path for port {port:#x}")
                if not self._fast_enabled.get(port, True):
                    lib.pyhv_vcpu_enable_fast_port(vcpu._handle(), port, 0)
        except BaseException:
            vcpu.close()
            raise
        self._vcpus.append(vcpu)
        self._layout_version += 1
        return vcpu

    def _forget_vcpu(self, vcpu: VCpu) -> None:
        """A closed vCPU leaves ``vcpus`` (snapshots then cover the others)."""
        if vcpu in self._vcpus:
            self._vcpus.remove(vcpu)
            self._layout_version += 1

    def _default_stack(self, entry: int) -> int:
        below = self.memory.slot_at(self.setup_base - 1)
        if below is not None and not below.readonly:
            return self.setup_base
        slot = self.memory.slot_at(entry)
        assert slot is not None
        return slot.end

    def _prepare_setup_region(self, long_mode: bool, rewrite: bool = False) -> int:
        """Write pyhv's GDT/page tables once per partition; returns CR3 for long mode."""
        with self._lock:
            want_long = long_mode or self._setup_written == "long"
            if rewrite or self._setup_written is None or (
                    want_long and self._setup_written != "long"):
                write_setup_region(self, want_long)
                self._setup_written = "long" if want_long else "protected"
        return self.setup_base + PAGE_TABLES_OFFSET

    # -- interrupts and devices -------------------------------------------------------------
    def set_irq(self, line: int, level: bool) -> None:
        """Drive interrupt ``line`` (ISA IRQ 0-15 on the PIC, or an IOAPIC pin up to 23) of
        the in-kernel irqchip high or low.  Safe from any thread."""
        if not self.irqchip:
            raise StateError("set_irq needs a partition made with irqchip=True")
        line = _as_int("line", line)
        if not 0 <= line < 24:
            raise InvalidArgument(f"interrupt line {line} is not 0..23")
        check_rc(lib.pyhv_partition_irq_line(self._vm_fd, line, 1 if level else 0),
                 f"KVM_IRQ_LINE {line}")

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
        device.attach(self)
        self.devices[device.name] = device
        saved = self._saved_device_states.pop(device.name, None)
        if saved is not None:        # a partition made from a snapshot: the device's state
            device.set_state(saved)
        return device

    def _enable_fast_port(self, port: int, enabled: bool) -> None:
        """Switch a fast-path port off (its exits go to Python) or on: from any thread."""
        for vcpu in self._vcpus:
            if not vcpu.closed:
                lib.pyhv_vcpu_enable_fast_port(vcpu._handle(), port, 1 if enabled else 0)
        self._fast_enabled[port] = enabled

    # -- lifecycle and snapshots ------------------------------------------------------------
    @property
    def state(self) -> PartitionState:
        """Where the partition is in its life (see :mod:`pyhv.lifecycle`)."""
        return self._life.state

    def pause(self) -> None:
        """Stop the guest where it is, from any thread: runs in progress are parked (they
        return only after :meth:`resume`) and new runs are refused.  Snapshots may be taken
        while paused."""
        if any(v._run_thread == threading.get_ident() for v in self._vcpus):
            raise StateError("a vCPU thread cannot pause its own partition; call pause() "
                             "from another thread, or stop() from a handler")

        def cancel_running() -> None:
            for vcpu in self._vcpus:
                if vcpu._run_thread is not None and not vcpu._parked:
                    vcpu.cancel(quiet=True)

        self._life.pause(cancel_running)

    def resume(self) -> None:
        """Let parked runs continue (and new ones start).  A stop() made during the pause
        takes effect now: the parked runs return ``Canceled``."""

        def reset_cancels(stopped: bool) -> None:
            for vcpu in self._vcpus:
                if vcpu.closed:
                    continue
                # the cancels pause() sent are spent; a stop() during the pause is not
                lib.pyhv_vcpu_clear_cancel(vcpu._handle())
                if stopped:
                    vcpu.cancel(quiet=True)

        self._life.resume(reset_cancels)

    def _state_msrs(self) -> list[int]:
        """The MSRs a snapshot saves: those KVM lists for save/restore that a vCPU can read
        and write back (KVM refuses some, e.g. paravirtual ones the CPUID does not offer)."""
        if self._msrs_to_save is None:
            candidates = self.hypervisor.msr_index_list()
            if not self._vcpus:
                return []
            ok = ffi.new("uint32_t[]", max(len(candidates), 1))
            n = lib.pyhv_vcpu_restorable_msrs(self._vcpus[0]._handle(), candidates,
                                            len(candidates), ok)
            check_rc(n, "probing the MSRs a snapshot can save")
            self._msrs_to_save = [ok[i] for i in range(min(n, lib.PYHV_STATE_MAX_MSRS))]
        return self._msrs_to_save

    def _flush_bulk(self) -> None:
        """Deliver what the C core and the kernel hold: every vCPU's buffered output, and the
        coalesced ring (one per VM, so drained once)."""
        if not (self._outputs or self._coalesced):
            return
        for i, vcpu in enumerate(self._vcpus):
            self._deliver_bulk(vcpu, _OutputOnly if i else _AllBulk)

    def snapshot(self) -> Snapshot:
        """Capture memory (touched pages of every slot), every vCPU's whole state and the
        state of pyhv's devices.  The partition must not be running (pause() it).  From here
        on writes are tracked, so :meth:`restore` of this snapshot copies only what changed."""
        self._life.require_quiet("take a snapshot")
        self._flush_bulk()
        return take_snapshot(self)

    def restore(self, snap: Snapshot) -> int:
        """Bring the partition back to ``snap`` (same slots and vCPUs): memory, vCPU state,
        devices.  Clears poisoning.  Restoring the latest snapshot taken or restored copies
        only the pages written since; any other snapshot costs a copy of the touched pages.
        Returns the number of pages copied."""
        if not isinstance(snap, Snapshot):
            raise InvalidArgument(f"restore() takes a pyhv.Snapshot, not {type(snap).__name__}")
        self._life.require_quiet("restore a snapshot")
        fast = check_restorable(self, snap)     # a snapshot that does not fit changes nothing
        self._flush_bulk()
        try:
            copied = restore_snapshot(self, snap, fast)
        except BaseException as exc:
            # memory and vCPUs may be half from the snapshot, half not: unusable until a
            # restore succeeds
            self._life.poison(f"a restore failed halfway ({type(exc).__name__}: {exc})")
            raise
        for vcpu in self._vcpus:              # a restored partition starts with no cancels
            lib.pyhv_vcpu_clear_cancel(vcpu._handle())
        self._life.cure()
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

    def _first_run(self) -> None:
        if not self._resettable or self._life.ever_ran:    # every run asks: keep it cheap
            return
        with self._lock:
            if self._resettable and self._reset_point is None and not self._life.ever_ran:
                self._reset_point = take_snapshot(self)

    @classmethod
    def from_snapshot(cls, snap: Snapshot, *,
                      hypervisor: system.Hypervisor | None = None) -> Partition:
        """A new partition with ``snap``'s memory slots, vCPUs and in-kernel interrupt
        controllers, in ``snap``'s state.  Handlers, fast-path ports and devices are Python
        objects, not part of the snapshot: register or attach them again; a device attached
        under a name the snapshot has takes its saved state."""
        part = cls(hypervisor=hypervisor, setup_base=snap.setup_base,
                   irqchip="pic_master" in snap.chips, pit="pit" in snap.chips,
                   hardened=snap.hardened)
        try:
            for slot_image in snap.slots:
                part.map_memory(slot_image.gpa, slot_image.size, readonly=slot_image.readonly,
                                dirty_log=slot_image.dirty_log)
            for vcpu_image in snap.vcpus:
                vcpu = VCpu(part, vcpu_image.id)
                part._vcpus.append(vcpu)
                part._layout_version += 1
                if part.irqchip:
                    lib.pyhv_vcpu_set_irqchip(vcpu._handle(), 1)
                part._next_vcpu_id = max(part._next_vcpu_id, vcpu_image.id + 1)
                vcpu.set_cpuid(vcpu_image.cpuid)
            part.restore(snap)
            part._saved_device_states = dict(snap.devices)   # for devices attached later
        except BaseException:
            part.close()
            raise
        return part

    # -- handlers and running -------------------------------------------------------------
    def add_io_handler(self, ports: int | range, read: ReadHandler | None = None,
                       write: WriteHandler | None = None) -> Handler:
        """Serve guest port IO on ``ports`` (one port or a ``range``) during :meth:`run`.

        ``read(port, size) -> int`` answers IN; ``write(port, size, value)`` takes OUT.
        """
        start, size = _port_span(ports)
        self._check_no_fast_port(start, size)
        return self._io.add(start, size, read, write)

    def _check_no_fast_port(self, start: int, size: int) -> None:
        for fast in self._fast_ports:
            if start <= fast < start + size:
                raise OverlapError(f"port {fast:#x} already has a handler")

    def add_mmio_handler(self, gpa: int, size: int, read: ReadHandler | None = None,
                         write: WriteHandler | None = None) -> Handler:
        """Serve guest MMIO in ``[gpa, gpa+size)`` during :meth:`run` (accesses there exit
        when no RAM is mapped, or for writes to a read-only slot).

        ``read(gpa, size) -> int`` answers reads; ``write(gpa, size, value)`` takes writes.
        """
        return self._mmio.add(gpa, size, read, write)

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

        self._io.set_fallback(read, write)

    def remove_handler(self, handler: Handler) -> None:
        """Unregister a handler returned by one of the ``add_*`` methods."""
        if handler.space == "io-fast":
            if self._fast_ports.get(handler.start) is None:
                raise InvalidArgument(f"{handler!r} is not registered here")
            self._life.require_quiet("remove a fast-path port")
            for vcpu in self._vcpus:
                if handler.start in self._outputs and not vcpu.closed:
                    self._deliver_bulk(vcpu, _OutputOnly)
                check_rc(lib.pyhv_vcpu_set_fast_port(vcpu._handle(), handler.start,
                                                     lib.PYHV_PORT_NONE, 0), "fast path")
            del self._fast_ports[handler.start]
            self._fast_enabled.pop(handler.start, None)
            self._outputs.pop(handler.start, None)
            return
        for i, (start, _end, pio, _write) in enumerate(self._coalesced):
            if start == handler.start and pio == (handler.space == "io"):
                # writes the kernel queued for this zone go to its handler first
                self._life.require_quiet("remove a coalesced zone")
                self._flush_bulk()
                check_rc(lib.pyhv_partition_coalesced_zone(self._vm_fd, start,
                                                           handler.end - start, pio, 0),
                         "KVM_UNREGISTER_COALESCED_MMIO")
                del self._coalesced[i]
                break
        try:
            (self._io if handler.space == "io" else self._mmio).remove(handler)
        except ValueError:
            raise InvalidArgument(f"{handler!r} is not registered here") from None

    # -- exits the C core or the kernel complete without Python ------------------------------
    def _add_fast_port(self, port: int, kind: int, value: int = 0, *, overlay: bool = False,
                       sink: OutputSink | None = None) -> Handler:
        """A port the C core completes.  ``overlay=True`` lets it lie over a Python handler
        of the same port, which then takes what C does not (a device's slow path)."""
        port = _as_int("port", port)
        if not 0 <= port <= 0xFFFF:
            raise InvalidArgument(f"port {port:#x} is not a 16-bit port")
        self._life.require_quiet("add a fast-path port")   # the C loop reads the table
        clash = None if overlay else self._io.claimed(port)
        if port in self._fast_ports or clash is not None:
            raise OverlapError(f"port {port:#x} already has a handler")
        if len(self._fast_ports) >= lib.PYHV_MAX_FAST_PORTS:
            raise InvalidArgument(f"at most {lib.PYHV_MAX_FAST_PORTS} fast-path ports")
        for vcpu in self._vcpus:
            check_rc(lib.pyhv_vcpu_set_fast_port(vcpu._handle(), port, kind, value),
                     f"fast path for port {port:#x}")
        self._fast_ports[port] = (kind, value)
        if sink is not None:
            self._outputs[port] = sink
        return Handler("io-fast", port, port + 1, None, None)

    def add_buffered_port(self, port: int, sink: OutputSink) -> Handler:
        """Collect the guest's OUTs to ``port`` in C and hand them to ``sink`` in bulk.

        ``sink`` is a callable taking ``bytes`` or a binary stream (anything with
        ``write``).  It gets the bytes when the buffer fills, before any exit Python sees,
        and when the run ends: a serial transmit register costs no Python call per byte.
        """
        return self._add_fast_port(port, lib.PYHV_PORT_BUFFERED, sink=sink_writer(sink))

    def add_constant_port(self, port: int, value: int) -> Handler:
        """Answer the guest's INs from ``port`` with ``value`` in C (e.g. a UART's line
        status "transmitter empty", which polling guests read before every byte)."""
        value = _as_int("value", value)
        if not 0 <= value <= 0xFFFFFFFF:
            raise InvalidArgument(f"constant {value:#x} does not fit 32 bits")
        return self._add_fast_port(port, lib.PYHV_PORT_CONSTANT, value)

    def add_debug_exit(self, port: int = 0xF4) -> Handler:
        """QEMU's isa-debug-exit: a guest OUT of V to ``port`` ends the run with a
        :class:`pyhv.exits.DebugExit` whose ``code`` is ``(V << 1) | 1``."""
        return self._add_fast_port(port, lib.PYHV_PORT_DEBUG_EXIT)

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
        cap = "KVM_CAP_COALESCED_PIO" if pio else "KVM_CAP_COALESCED_MMIO"
        self.hypervisor.require(cap, "coalesced writes")
        if not callable(write):
            raise InvalidArgument(f"write handler {write!r} is not callable")
        space = self._io if pio else self._mmio
        if pio:
            self._check_no_fast_port(start, size)
        # Writes the kernel does not queue (ring full, or a backend that exits anyway) reach
        # the same handler as ordinary exits, after the queued ones: the order holds.
        handler = space.add(start, size, read, write)
        rc = lib.pyhv_partition_coalesced_zone(self._vm_fd, start, size, pio, 1)
        if rc < 0:
            space.remove(handler)
            check_rc(rc, "KVM_REGISTER_COALESCED_MMIO")
        self._coalesced.append((start, start + size, pio, write))
        return handler

    def add_doorbell(self, address: int, size: int = 4, *, io: bool = False,
                     value: int | None = None) -> Doorbell:
        """An eventfd the kernel signals when the guest writes ``size`` bytes at ``address``
        (a port with ``io=True``), optionally only when it writes ``value``: the write costs
        no exit at all.  See :class:`Doorbell`."""
        address, size = _as_int("address", address), _as_int("size", size)
        if size not in (1, 2, 4, 8) or (io and (size == 8 or address > 0xFFFF)) or address < 0:
            raise InvalidArgument(f"bad doorbell {'port' if io else 'address'} {address:#x} "
                                  f"size {size}")
        self.hypervisor.require("KVM_CAP_IOEVENTFD", "doorbells")
        match = value is not None
        datamatch = _as_int("value", value) if match else 0
        if match and not 0 <= datamatch < 1 << (8 * size):
            raise InvalidArgument(f"doorbell value {datamatch:#x} does not fit {size} bytes")
        fd = ffi.new("int *")
        check_rc(lib.pyhv_partition_ioeventfd(self._vm_fd, address, size, io, match, datamatch,
                                              fd), "KVM_IOEVENTFD")
        bell = Doorbell(self, fd[0], address, size, io, value)
        self._doorbells.append(bell)
        self._res.eventfds.add(fd[0])
        return bell

    def _deliver_bulk(self, vcpu: VCpu, c: Any) -> None:
        """Hand buffered-port output and coalesced writes to their sinks (in guest order)."""
        if c.coalesced_pending:
            self._drain_coalesced(vcpu)
        if c.output_pending:
            # empty every buffer before calling any sink: a sink that raises must not leave
            # another port's bytes piling up in C
            buf = vcpu._bulk_buffers()[0]
            taken = []
            for port, write in self._outputs.items():
                n = lib.pyhv_vcpu_take_output(vcpu._handle(), port, buf, len(buf))
                if n > 0:
                    taken.append((write, ffi.buffer(buf, n)[:]))
            error: BaseException | None = None
            for write, data in taken:
                try:
                    write(data)
                except BaseException as exc:   # the others still get theirs
                    error = error or exc
            if error is not None:
                raise error

    def _drain_coalesced(self, vcpu: VCpu) -> None:
        entries = vcpu._bulk_buffers()[1]
        with self._ring_lock:                  # one ring per VM, shared by its vCPUs
            while True:
                n = lib.pyhv_vcpu_drain_coalesced(vcpu._handle(), entries, len(entries))
                check_rc(n, "draining the coalesced ring")
                for i in range(n):
                    e = entries[i]
                    for start, end, pio, write in self._coalesced:
                        if start <= e.address < end and bool(e.pio) == pio:
                            value = int.from_bytes(bytes(e.data)[: e.len], "little")
                            write(e.address, e.len, value)
                            break
                if n < len(entries):
                    return

    def set_syscall_handler(self, handler: SyscallHandler | None) -> None:
        """Serve user-mode ``syscall``s during :meth:`run`: ``handler(nr, args)`` returns the
        result (RAX) to resume the payload, or None to end the run on that
        :class:`pyhv.exits.Syscall`."""
        if handler is not None and not callable(handler):
            raise InvalidArgument(f"syscall handler {handler!r} is not callable")
        self._syscall_handler = handler

    def run(self, timeout: float | None = None, *, vcpu: VCpu | None = None) -> RunResult:
        """Run a vCPU (default: the first) serving exits with the registered handlers, until
        halt, shutdown, an exit nobody handles, or :meth:`stop`.

        An exception raised by a handler stops the run and propagates from here.  Past
        ``timeout`` seconds, :class:`pyhv.Timeout` is raised.
        """
        timeout = _validate_timeout(timeout)
        if vcpu is None:
            if not self._vcpus:
                if self.closed:
                    raise ClosedError("partition is closed")
                raise HypervisorError("the partition has no vCPU: call create_vcpu() first")
            vcpu = self._vcpus[0]
        elif vcpu.partition is not self:
            raise InvalidArgument(f"{vcpu!r} belongs to another partition")
        return run_with_handlers(vcpu, self._io, self._mmio, timeout, self._syscall_handler)

    def run_all(self, timeout: float | None = None) -> list[RunResult]:
        """Run every vCPU on a thread of its own, serving exits with the handlers, until each
        one ends (see :meth:`run`); returns their results in vCPU order.

        Handlers may then be called from several threads at once.  If a handler raises, or a
        vCPU times out, the other vCPUs are stopped and the first such exception propagates.
        An exit that ends the whole machine (debug-exit, reset, shutdown, a system event) on
        one vCPU stops the others too (their results are ``Canceled``).
        """
        timeout = _validate_timeout(timeout)
        vcpus = list(self._vcpus)
        if not vcpus:
            raise HypervisorError("the partition has no vCPU: call create_vcpu() first")
        self._first_run()                      # one reset point, before any thread runs
        results: list[RunResult | None] = [None] * len(vcpus)
        errors: list[BaseException] = []
        ended = threading.Event()

        def end_machine() -> None:
            # sticky cancels: a vCPU whose thread has not entered its run yet stops at once
            ended.set()
            for vcpu in vcpus:
                vcpu.cancel(quiet=True)

        def run_one(i: int, vcpu: VCpu) -> None:
            try:
                results[i] = result = self.run(timeout, vcpu=vcpu)
                if isinstance(result.exit, MACHINE_ENDS):
                    end_machine()              # the whole machine stopped, not one vCPU
            except BaseException as exc:       # handed to the caller's thread below
                errors.append(exc)
                end_machine()

        threads = [threading.Thread(target=run_one, args=(i, v), name=f"pyhv-vcpu-{v.id}")
                   for i, v in enumerate(vcpus)]
        for t in threads:
            t.start()
        try:
            for t in threads:
                t.join()
        except BaseException:                  # Ctrl-C while waiting: stop the guests
            self.stop()
            for t in threads:
                t.join()
            raise
        if ended.is_set():                     # the runs are over: their cancels are spent
            for vcpu in vcpus:
                if not vcpu.closed:
                    lib.pyhv_vcpu_clear_cancel(vcpu._handle())
        if errors:
            raise errors[0]
        return [r for r in results if r is not None]

    def stop(self) -> None:
        """Cancel the runs of every vCPU (from any thread); they return ``Canceled``.  A vCPU
        not running now returns ``Canceled`` from its next run; during a pause, the parked runs
        return ``Canceled`` when resumed."""
        self._life.stop_requested()
        for vcpu in list(self._vcpus):
            vcpu.cancel(quiet=True)


MACHINE_ENDS = (DebugExit, Reset, Shutdown, SystemEvent)

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
    return _as_int("port", ports), 1


class _OutputOnly:
    """Stands in for an exit struct when only buffered output needs delivering."""

    output_pending = 1
    coalesced_pending = 0


class _AllBulk:
    """Stands in for an exit struct to empty every bulk channel."""

    output_pending = 1
    coalesced_pending = 1


class Doorbell:
    """An eventfd that the kernel signals on guest writes (see
    :meth:`Partition.add_doorbell`).  :meth:`take` returns how many writes happened since the
    last call; :meth:`fileno` lets ``select``/``selectors`` wait for one."""

    def __init__(self, partition: Partition, fd: int, address: int, size: int, io: bool,
                 value: int | None) -> None:
        self.partition = partition
        self.address, self.size, self.io, self.value = address, size, io, value
        self._fd = fd

    def fileno(self) -> int:
        if self._fd < 0:
            raise ClosedError("doorbell is closed")
        return self._fd

    def take(self) -> int:
        """Writes since the last call (0 if none); never blocks."""
        count = ffi.new("uint64_t *")
        rc = lib.pyhv_eventfd_take(self.fileno(), count)
        if rc == -errno.EAGAIN:
            return 0
        check_rc(rc, "reading the doorbell eventfd")
        return int(count[0])

    def close(self) -> None:
        """Detach the doorbell from the guest and close its eventfd (idempotent)."""
        if self._fd < 0:
            return
        fd, self._fd = self._fd, -1
        self.partition._doorbells.remove(self)
        self.partition._res.eventfds.discard(fd)
        if not self.partition.closed:
            lib.pyhv_partition_ioeventfd_remove(
                self.partition._vm_fd, self.address, self.size, self.io,
                self.value is not None, self.value or 0, fd)
        else:
            lib.pyhv_close(fd)

    def __repr__(self) -> str:
        where = f"port {self.address:#x}" if self.io else f"GPA {self.address:#x}"
        return f"<pyhv.Doorbell {where} size={self.size}>"
