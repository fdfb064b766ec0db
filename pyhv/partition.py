"""Partitions (VMs): guest memory slots, vCPUs, handlers, and the handler-driven run.

>>> with pyhv.Partition(memory="16M") as part:                      # doctest: +SKIP
...     part.memory.write(0x1000, code)
...     cpu = part.create_vcpu(mode="long", entry=0x1000)
...     part.add_io_handler(0x3F8, write=lambda port, size, value: print(chr(value), end=""))
...     result = part.run(timeout=5)
"""

from __future__ import annotations

import dataclasses
import threading
import weakref
from collections.abc import Iterable
from typing import Any

from . import system
from ._ffi import ffi, lib
from .dispatch import AddressSpace, Handler, ReadHandler, RunResult, WriteHandler, run_with_handlers
from .errors import (
    ClosedError,
    GuestMemoryError,
    HypervisorError,
    InvalidArgument,
    MissingCapability,
    SlotOverlapError,
    check_rc,
)
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
from .system import CpuidEntry
from .vcpu import VCpu, _validate_timeout

# KVM on Intel needs 4 pages of guest-physical space for real-mode emulation, below 4 GiB
# and outside every slot (the place QEMU uses too).
KVM_TSS_ADDR = 0xFFFBD000
KVM_IDENTITY_MAP_ADDR = 0xFFFBC000
KVM_RESERVED = (KVM_IDENTITY_MAP_ADDR, KVM_TSS_ADDR + 3 * PAGE_SIZE)
# RAM given as Partition(memory=...) fills GPA 0 up to here; the rest starts at 4 GiB
LOW_MEMORY_LIMIT = 3 << 30


class _Resources:
    """What a partition owns in the kernel and the host; released once, by close() or GC."""

    def __init__(self) -> None:
        self.vm_fd = -1
        self.mappings: dict[int, tuple[Any, int]] = {}   # slot -> (pointer, size)

    def release(self) -> None:
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
    Use it as a context manager, or call :meth:`close`.

    Example::

        with pyhv.Partition(memory="16M") as part:
            part.memory.write(0x1000, bytes.fromhex("b8 2a 00 00 00 f4"))  # mov eax,42; hlt
            cpu = part.create_vcpu(mode="long", entry=0x1000)
            assert isinstance(cpu.run(), pyhv.exits.Halt) and cpu.regs.rax == 42
    """

    def __init__(self, memory: int | str | None = None, *,
                 hypervisor: system.Hypervisor | None = None,
                 setup_base: int = DEFAULT_SETUP_BASE) -> None:
        size = None if memory is None else parse_size(memory)
        if size is not None:
            self._check_slot_args(0, size)
        setup_base = _as_int("setup_base", setup_base)
        if setup_base % PAGE_SIZE or not 0 <= setup_base < (1 << 32):
            raise InvalidArgument(f"setup_base {setup_base:#x} must be page-aligned, below 4 GiB")
        self.hypervisor = hypervisor if hypervisor is not None else system.default()
        for cap, why in system.REQUIRED_CAPABILITIES.items():
            self.hypervisor.require(cap, why)
        self.setup_base = setup_base
        self.memory = GuestMemory()
        self._vcpus: list[VCpu] = []
        self._next_vcpu_id = 0
        self._io = AddressSpace("io", 0x10000, cached=True)
        self._mmio = AddressSpace("mmio", 1 << 64, cached=False)
        self._setup_written: str | None = None
        self._lock = threading.Lock()
        self._max_slots = self.hypervisor.capability("KVM_CAP_NR_MEMSLOTS") or 32
        self._phys_limit = 1 << self.hypervisor.guest_phys_bits()

        self._res = _Resources()
        self._finalizer = weakref.finalize(self, self._res.release)
        try:
            out = ffi.new("int *")
            check_rc(lib.pyhv_partition_create(self.hypervisor.fd, 0, out), "KVM_CREATE_VM")
            self._res.vm_fd = out[0]
            check_rc(lib.pyhv_partition_setup_x86(self._res.vm_fd, KVM_TSS_ADDR,
                                                  KVM_IDENTITY_MAP_ADDR),
                     "KVM_SET_TSS_ADDR / KVM_SET_IDENTITY_MAP_ADDR")
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
        for vcpu in self._vcpus:
            vcpu.close()
        self._vcpus.clear()
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
        pointer, size = self._res.mappings.pop(slot.slot)
        free_host_memory(pointer, size)

    def dirty_pages(self, slot: MemorySlot) -> list[int]:
        """GPAs of the pages of ``slot`` written since the last call (``dirty_log=True``
        slots only).  Reading the log resets it."""
        if not slot.dirty_log:
            raise InvalidArgument(f"{slot} was not mapped with dirty_log=True")
        pages = slot.size // PAGE_SIZE
        bitmap = ffi.new("uint64_t[]", (pages + 63) // 64)
        check_rc(lib.pyhv_partition_get_dirty_log(self._vm_fd, slot.slot, bitmap),
                 "KVM_GET_DIRTY_LOG")
        dirty = []
        for word_index in range((pages + 63) // 64):
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
                    *, cpuid: Iterable[CpuidEntry] | None = None) -> VCpu:
        """Add a vCPU ready to run at ``entry`` in ``mode`` ("real", "protected", "long").

        ``stack`` is the initial stack pointer (default: ``setup_base``, or the end of RAM
        below it).  ``cpuid`` replaces the CPUID table (default: all KVM supports).  See
        :mod:`pyhv.modes` for the machine state of each mode.
        """
        if mode not in MODES:
            raise InvalidArgument(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        entry = _as_int("entry", entry)
        if self.memory.slot_at(entry) is None:
            raise GuestMemoryError(entry, 1, "the entry point must lie in a memory slot")
        stack = self._default_stack(entry) if stack is None else _as_int("stack", stack)
        check_mode(self, mode, entry, stack)
        # KVM cannot destroy a vCPU without its VM: a failure below burns this id
        vcpu_id = self._next_vcpu_id
        limit = self.hypervisor.capability("KVM_CAP_MAX_VCPUS") or 1
        if vcpu_id >= limit:
            raise InvalidArgument(f"KVM allows {limit} vCPUs per partition")
        table = list(self.hypervisor.supported_cpuid() if cpuid is None else cpuid)
        vcpu = VCpu(self, vcpu_id)
        self._next_vcpu_id += 1
        try:
            vcpu.set_cpuid(_with_apic_id(table, vcpu_id) if cpuid is None else table)
            setup_vcpu(vcpu, mode, entry, stack)
            vcpu.mode = mode
        except BaseException:
            vcpu.close()
            raise
        self._vcpus.append(vcpu)
        return vcpu

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

    # -- handlers and running -------------------------------------------------------------
    def add_io_handler(self, ports: int | range, read: ReadHandler | None = None,
                       write: WriteHandler | None = None) -> Handler:
        """Serve guest port IO on ``ports`` (one port or a ``range``) during :meth:`run`.

        ``read(port, size) -> int`` answers IN; ``write(port, size, value)`` takes OUT.
        """
        if isinstance(ports, range):
            if ports.step != 1 or not ports:
                raise InvalidArgument(f"port range {ports} must be non-empty with step 1")
            return self._io.add(ports.start, len(ports), read, write)
        return self._io.add(ports, 1, read, write)

    def add_mmio_handler(self, gpa: int, size: int, read: ReadHandler | None = None,
                         write: WriteHandler | None = None) -> Handler:
        """Serve guest MMIO in ``[gpa, gpa+size)`` during :meth:`run` (accesses there exit
        when no RAM is mapped, or for writes to a read-only slot).

        ``read(gpa, size) -> int`` answers reads; ``write(gpa, size, value)`` takes writes.
        """
        return self._mmio.add(gpa, size, read, write)

    def remove_handler(self, handler: Handler) -> None:
        """Unregister a handler returned by ``add_io_handler`` / ``add_mmio_handler``."""
        try:
            (self._io if handler.space == "io" else self._mmio).remove(handler)
        except ValueError:
            raise InvalidArgument(f"{handler!r} is not registered here") from None

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
        return run_with_handlers(vcpu, self._io, self._mmio, timeout)

    def stop(self) -> None:
        """Cancel the runs of every vCPU (from any thread); they return ``Canceled``."""
        for vcpu in list(self._vcpus):
            if not vcpu.closed:
                vcpu.cancel()


def _with_apic_id(table: list[CpuidEntry], vcpu_id: int) -> list[CpuidEntry]:
    """CPUID with this vCPU's APIC ID in leaf 1 EBX[31:24] and leaves 0xB/0x1F EDX."""
    out = []
    for e in table:
        if e.function == 1:
            e = dataclasses.replace(e, ebx=(e.ebx & 0x00FFFFFF) | (vcpu_id & 0xFF) << 24)
        elif e.function in (0xB, 0x1F):
            e = dataclasses.replace(e, edx=vcpu_id)
        out.append(e)
    return out

