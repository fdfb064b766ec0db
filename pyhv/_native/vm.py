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

# the step pyhv_partition_create_x86 reports as failed -> the ioctl it made
_CREATE_STAGES = {lib.PYHV_STAGE_CREATE: "KVM_CREATE_VM", lib.PYHV_STAGE_TSS: "KVM_SET_TSS_ADDR",
                  lib.PYHV_STAGE_IDENTITY_MAP: "KVM_SET_IDENTITY_MAP_ADDR",
                  lib.PYHV_STAGE_IRQCHIP: "KVM_CREATE_IRQCHIP",
                  lib.PYHV_STAGE_PIT: "KVM_CREATE_PIT2"}

MSR_EXIT_INVAL = lib.KVM_MSR_EXIT_REASON_INVAL
MSR_EXIT_UNKNOWN = lib.KVM_MSR_EXIT_REASON_UNKNOWN
MSR_EXIT_FILTER = lib.KVM_MSR_EXIT_REASON_FILTER

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
        out, stage = ffi.new("int *"), ffi.new("uint32_t *")
        flags = (lib.PYHV_PARTITION_IRQCHIP if irqchip else 0) | (
            lib.PYHV_PARTITION_PIT if pit else 0)
        rc = lib.pyhv_partition_create_x86(system.fd, flags, tss_addr, identity_map_addr,
                                           stage, out)
        check_rc(rc, _CREATE_STAGES.get(stage[0], "KVM_CREATE_VM"))
        return cls(out[0])

    def close(self) -> None:
        self._finalizer()

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    # -- memory slots -----------------------------------------------------------------------
    def map_memory(self, slot: int, flags: int, gpa: int, size: int) -> HostMapping:
        """Fresh host memory registered as memory slot ``slot`` at ``gpa`` (one C call)."""
        out = ffi.new("void **")
        check_rc(lib.pyhv_partition_map_memory(self.fd, slot, flags, gpa, size, out),
                 f"KVM_SET_USER_MEMORY_REGION [{gpa:#x}, +{size:#x})")
        return HostMapping(size, out[0])

    def set_slot_flags(self, slot: int, flags: int, gpa: int, mapping: HostMapping) -> None:
        """Change a slot's flags (e.g. turn dirty logging on)."""
        check_rc(lib.pyhv_partition_set_slot(self.fd, slot, flags, gpa, mapping.size,
                                             mapping.pointer), "KVM_SET_USER_MEMORY_REGION")

    def unmap_memory(self, slot: int, gpa: int, mapping: HostMapping) -> None:
        """Delete the slot, then free its host memory."""
        check_rc(lib.pyhv_partition_unmap_memory(self.fd, slot, gpa, mapping.pointer,
                                                 mapping.size),
                 "KVM_SET_USER_MEMORY_REGION (delete)")
        mapping.detach()

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
        check_rc(lib.pyhv_partition_set_msr_filter(self.fd, 1 if default_allow else 0, ordered,
                                                   len(ordered)), "KVM_X86_SET_MSR_FILTER")

    def enable_user_msr(self, reasons: int) -> None:
        """RDMSR/WRMSR that KVM would fault for ``reasons`` (MSR_EXIT_* bits) exit to user
        space instead (``KVM_CAP_X86_USER_SPACE_MSR``)."""
        check_rc(lib.pyhv_partition_enable_user_msr(self.fd, reasons),
                 "KVM_ENABLE_CAP KVM_CAP_X86_USER_SPACE_MSR")

    def signal_msi(self, address: int, data: int) -> bool:
        """Inject an MSI (``KVM_SIGNAL_MSI``): True when delivered, False when the guest
        blocked it."""
        return check_rc(lib.pyhv_partition_signal_msi(self.fd, address, data),
                        "KVM_SIGNAL_MSI") > 0

    def set_gsi_routing(self, routes: Sequence[tuple[int, int, int]]) -> None:
        """Replace KVM's GSI routing with ``routes``: (gsi, chip, pin), chip 0/1 the PICs,
        2 the IOAPIC (``KVM_SET_GSI_ROUTING``)."""
        gsi = [r[0] for r in routes]
        chip = [r[1] for r in routes]
        pin = [r[2] for r in routes]
        check_rc(lib.pyhv_partition_set_gsi_routing(self.fd, gsi, chip, pin, len(routes)),
                 "KVM_SET_GSI_ROUTING")

    def pit_reinject(self, reinject: bool) -> None:
        """Whether the in-kernel PIT reinjects the ticks a guest missed (KVM's default) or
        drops them (``KVM_REINJECT_CONTROL``)."""
        check_rc(lib.pyhv_partition_pit_reinject(self.fd, 1 if reinject else 0),
                 "KVM_REINJECT_CONTROL")

    def firmware_chips(self, master_base: int, slave_base: int, unmasked: int, level: int,
                       pit: bool) -> None:
        """The PICs (and PIT) as PC firmware leaves them (see pyhv_core.h)."""
        check_rc(lib.pyhv_partition_firmware_chips(self.fd, master_base, slave_base, unmasked,
                                                   level, 1 if pit else 0),
                 "KVM_SET_IRQCHIP / KVM_SET_PIT2")

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


