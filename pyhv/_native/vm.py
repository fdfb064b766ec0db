"""The VM fd (a *partition*): thin typed calls, one per KVM operation pyhv uses on it."""

from __future__ import annotations

import errno
import weakref
from collections.abc import Sequence

from ..errors import InvalidArgument, check_rc
from .binding import ffi, lib
from .memory import HostMapping, PageBitmap
from .system import SystemFd

# chip state for snapshots: the irqchip's three chips (512 bytes each) and the PIT
CHIPS = {"pic_master": 0, "pic_slave": 1, "ioapic": 2}
CHIP_SIZES = {"pic_master": 512, "pic_slave": 512, "ioapic": 512, "pit": 112}

MEM_READONLY = lib.KVM_MEM_READONLY
MEM_LOG_DIRTY_PAGES = lib.KVM_MEM_LOG_DIRTY_PAGES


class VmFd:
    """A KVM VM fd made with :meth:`create`; :meth:`close` is idempotent (and the GC's)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._finalizer = weakref.finalize(self, lib.pyhv_close, fd)

    @classmethod
    def create(cls, system: SystemFd, *, tss_addr: int, identity_map_addr: int,
               irqchip: bool = False, pit: bool = False) -> VmFd:
        """A VM set up for x86 (real-mode TSS and identity map), with the in-kernel irqchip
        and PIT when asked.  Nothing is left open when a step fails."""
        if pit and not irqchip:
            raise InvalidArgument("the in-kernel PIT needs the in-kernel irqchip")
        out = ffi.new("int *")
        check_rc(lib.pyhv_partition_create(system.fd, 0, out), "KVM_CREATE_VM")
        vm = cls(out[0])
        try:
            check_rc(lib.pyhv_partition_setup_x86(vm.fd, tss_addr, identity_map_addr),
                     "KVM_SET_TSS_ADDR / KVM_SET_IDENTITY_MAP_ADDR")
            if irqchip:
                check_rc(lib.pyhv_partition_create_irqchip(vm.fd), "KVM_CREATE_IRQCHIP")
            if pit:
                check_rc(lib.pyhv_partition_create_pit(vm.fd), "KVM_CREATE_PIT2")
        except BaseException:
            vm.close()
            raise
        return vm

    def close(self) -> None:
        self._finalizer()

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    # -- memory slots -----------------------------------------------------------------------
    def map_memory(self, slot: int, flags: int, gpa: int, size: int) -> HostMapping:
        """Fresh host memory registered as memory slot ``slot`` at ``gpa``."""
        mapping = HostMapping(size)
        rc = lib.pyhv_partition_set_slot(self.fd, slot, flags, gpa, size, mapping.pointer)
        if rc < 0:
            mapping.free()
            check_rc(rc, f"KVM_SET_USER_MEMORY_REGION [{gpa:#x}, +{size:#x})")
        return mapping

    def set_slot_flags(self, slot: int, flags: int, gpa: int, mapping: HostMapping) -> None:
        """Change a slot's flags (e.g. turn dirty logging on)."""
        check_rc(lib.pyhv_partition_set_slot(self.fd, slot, flags, gpa, mapping.size,
                                             mapping.pointer), "KVM_SET_USER_MEMORY_REGION")

    def unmap_memory(self, slot: int, gpa: int, mapping: HostMapping) -> None:
        """Delete the slot, then free its host memory."""
        check_rc(lib.pyhv_partition_set_slot(self.fd, slot, 0, gpa, 0, mapping.pointer),
                 "KVM_SET_USER_MEMORY_REGION (delete)")
        mapping.free()

    def merge_dirty_log(self, slot: int, scratch: PageBitmap, *into: PageBitmap | None) -> None:
        """Read (and so reset) KVM's dirty log of ``slot`` into ``scratch``, OR-ing it into
        each bitmap of ``into`` (up to two; None skips)."""
        first, second = (tuple(into) + (None, None))[:2]
        check_rc(lib.pyhv_partition_dirty_merge(
            self.fd, slot, first.c if first is not None else ffi.NULL, scratch.c, scratch.pages,
            second.c if second is not None else ffi.NULL), "KVM_GET_DIRTY_LOG")

    def restore_slot(self, slot: int, logging: bool, memory: HostMapping, image: HostMapping,
                     changed: PageBitmap, scratch: PageBitmap, host_dirty: PageBitmap,
                     user: PageBitmap | None) -> int:
        """The tracked restore of one slot in one C call: fold KVM's dirty log (when
        ``logging``; also into ``user``) and ``host_dirty`` into ``changed``, copy those pages
        from ``image`` to ``memory``, clear the bitmaps.  Returns the pages copied."""
        n = lib.pyhv_restore_slot(self.fd, slot, 1 if logging else 0, memory.pointer,
                                  image.pointer, changed.c, scratch.c, host_dirty.c,
                                  user.c if user is not None else ffi.NULL, changed.pages)
        return check_rc(int(n), "KVM_GET_DIRTY_LOG")

    # -- interrupts -------------------------------------------------------------------------
    def irq_line(self, line: int, level: bool) -> None:
        check_rc(lib.pyhv_partition_irq_line(self.fd, line, 1 if level else 0),
                 f"KVM_IRQ_LINE {line}")

    def save_chips(self, irqchip: bool, pit: bool) -> dict[str, bytes]:
        """The in-kernel interrupt controllers' and PIT's state, by name."""
        chips: dict[str, bytes] = {}
        if irqchip:
            for name, chip in CHIPS.items():
                buf = ffi.new("uint8_t[]", CHIP_SIZES[name])
                check_rc(lib.pyhv_partition_get_irqchip(self.fd, chip, buf),
                         f"KVM_GET_IRQCHIP {name}")
                chips[name] = bytes(buf)
        if pit:
            buf = ffi.new("uint8_t[]", CHIP_SIZES["pit"])
            check_rc(lib.pyhv_partition_get_pit(self.fd, buf), "KVM_GET_PIT2")
            chips["pit"] = bytes(buf)
        return chips

    def load_chips(self, chips: dict[str, bytes]) -> None:
        for name, state in chips.items():
            if len(state) != CHIP_SIZES[name]:
                raise InvalidArgument(f"{name} state must be {CHIP_SIZES[name]} bytes")
            if name == "pit":
                check_rc(lib.pyhv_partition_set_pit(self.fd, state), "KVM_SET_PIT2")
            else:
                check_rc(lib.pyhv_partition_set_irqchip(self.fd, CHIPS[name], state),
                         f"KVM_SET_IRQCHIP {name}")

    # -- MSRs -------------------------------------------------------------------------------
    def set_msr_filter(self, default_allow: bool, indices: Sequence[int]) -> None:
        """KVM's MSR filter: with ``default_allow``, ``indices`` are denied; without it, only
        ``indices`` are allowed.  Denied accesses #GP (or exit, see enable_user_msr)."""
        ordered = sorted(set(indices))
        if default_allow:
            raise InvalidArgument("this C core can only build allow-lists")  # TODO new API
        check_rc(lib.pyhv_partition_deny_msrs(self.fd, ordered, len(ordered)),
                 "KVM_X86_SET_MSR_FILTER")

    # -- fast paths the kernel offers -------------------------------------------------------
    def coalesced_zone(self, address: int, size: int, pio: bool, add: bool) -> None:
        check_rc(lib.pyhv_partition_coalesced_zone(self.fd, address, size, 1 if pio else 0,
                                                   1 if add else 0),
                 "KVM_REGISTER_COALESCED_MMIO" if add else "KVM_UNREGISTER_COALESCED_MMIO")

    def ioeventfd(self, address: int, size: int, pio: bool, datamatch: int | None) -> int:
        """An eventfd the kernel signals on guest writes to ``[address, +size)``."""
        fd = ffi.new("int *")
        check_rc(lib.pyhv_partition_ioeventfd(self.fd, address, size, 1 if pio else 0,
                                              0 if datamatch is None else 1, datamatch or 0, fd),
                 "KVM_IOEVENTFD")
        return int(fd[0])

    def ioeventfd_remove(self, address: int, size: int, pio: bool, datamatch: int | None,
                         fd: int) -> None:
        """Detach the eventfd and close it."""
        lib.pyhv_partition_ioeventfd_remove(self.fd, address, size, 1 if pio else 0,
                                            0 if datamatch is None else 1, datamatch or 0, fd)


def eventfd_take(fd: int) -> int:
    """The count of an eventfd (resetting it), 0 if nothing happened; never blocks."""
    count = ffi.new("uint64_t *")
    rc = lib.pyhv_eventfd_take(fd, count)
    if rc == -errno.EAGAIN:
        return 0
    check_rc(rc, "reading the doorbell eventfd")
    return int(count[0])


