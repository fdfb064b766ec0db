"""Guest-physical memory: slots (host mappings registered with KVM), bounds-checked access,
dirty pages, and memory images for snapshots.

>>> import pyhv
>>> with pyhv.Partition(memory="16M") as part:
...     part.memory.write(0x1000, b"\\xf4")
...     part.memory.read_u8(0x1000), part.memory.slots[0]
(244, MemorySlot(slot=0, gpa=0x0, size=0x1000000, readonly=False, dirty_log=False))

Each :class:`MemorySlot` owns its host mapping and its page bitmaps: pages the host wrote
(KVM's dirty log only sees the guest's writes), pages the guest wrote that
:meth:`GuestMemory.dirty_pages` has not reported yet, and, while a snapshot is the restore
base, the pages changed since it.  Whoever reads KVM's dirty log (which resets it) ORs what
it read into every bitmap that wants it, so no reader loses another's writes.
"""

from __future__ import annotations

import bisect
import re
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from .._native import PAGE_SIZE, HostMapping, PageBitmap, VmFd
from .._native.vm import MEM_LOG_DIRTY_PAGES, MEM_READONLY
from ..errors import (
    ClosedError,
    GuestMemoryError,
    InvalidArgument,
    MissingCapability,
    SlotOverlapError,
)

__all__ = ["PAGE_SIZE", "GuestMemory", "MemorySlot", "PageImage", "SlotImage", "parse_size"]

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(value: int | str) -> int:
    """Bytes from an int or a string such as ``"64K"``, ``"16M"``, ``"1G"`` or ``"2MiB"``.

    >>> parse_size("16M"), parse_size(4096), parse_size("1GiB")
    (16777216, 4096, 1073741824)
    """
    if type(value) is int:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return value                  # an int subclass
    if not isinstance(value, str):
        raise InvalidArgument(f"a size must be an int or a string like '16M', not {value!r}")
    match = _SIZE_RE.match(value)
    if not match:
        raise InvalidArgument(f"cannot read {value!r} as a size (try '64K', '16M' or '1G')")
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


def as_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{name} must be an int, not {value!r}")
    return value


class PageImage:
    """A slot's memory as of a snapshot: a private host mapping (untouched pages stay
    unallocated and read as zero) and a bitmap of the pages that may hold data."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.pages = size // PAGE_SIZE
        self.data = HostMapping(size)
        self.populated = PageBitmap(self.pages)

    def runs(self) -> list[tuple[int, int]]:
        """(first page, page count) of each run of populated pages."""
        return self.populated.runs()

    def drop_zero_pages(self) -> None:
        """Forget populated pages that hold only zeros (before writing the image out)."""
        self.data.drop_zero_pages(self.populated)

    @property
    def populated_bytes(self) -> int:
        return self.populated.count() * PAGE_SIZE


@dataclass
class SlotImage:
    """One memory slot of a snapshot."""

    gpa: int
    size: int
    readonly: bool
    dirty_log: bool
    image: PageImage = field(repr=False)


@dataclass(eq=False, repr=False)
class MemorySlot:
    """A range of guest-physical memory backed by a host mapping (one KVM memory slot).

    ``readonly`` slots make guest writes exit as :class:`pyhv.exits.MmioWrite`; the host may
    still write them (that is how a ROM gets its contents).
    """

    slot: int
    gpa: int
    size: int
    readonly: bool
    dirty_log: bool
    host_address: int
    _mapping: HostMapping = field(compare=False)
    _vm: VmFd = field(compare=False)

    def __post_init__(self) -> None:
        pages = self.size // PAGE_SIZE
        self._host_dirty = PageBitmap(pages)      # pages the host wrote
        self._logging = self.dirty_log            # KVM keeps a dirty log of this slot
        self._scratch = PageBitmap(pages)         # one read of KVM's log
        # the guest's writes dirty_pages() has not reported (dirty_log slots only)
        self._unreported = PageBitmap(pages) if self.dirty_log else None
        self._changed: PageBitmap | None = None   # since the restore base, while tracked

    def __repr__(self) -> str:
        return (f"MemorySlot(slot={self.slot}, gpa={self.gpa:#x}, size={self.size:#x}, "
                f"readonly={self.readonly}, dirty_log={self.dirty_log})")

    @property
    def end(self) -> int:
        """First GPA past the slot."""
        return self.gpa + self.size

    @property
    def pages(self) -> int:
        return self.size // PAGE_SIZE

    def __contains__(self, gpa: int) -> bool:
        return self.gpa <= gpa < self.end

    # -- host access (offsets checked by GuestMemory) ---------------------------------------
    def read(self, offset: int, length: int) -> bytes:
        return self._mapping.read(offset, length)

    def write(self, offset: int, data: memoryview) -> None:
        self._mapping.write(offset, data)
        self._touched(offset, len(data))

    def fill(self, offset: int, length: int, byte: int) -> None:
        self._mapping.fill(offset, length, byte)
        self._touched(offset, length)

    def _touched(self, offset: int, length: int) -> None:
        if length:
            first = offset // PAGE_SIZE
            self._host_dirty.set_range(first, (offset + length - 1) // PAGE_SIZE - first + 1)

    # -- dirty pages ------------------------------------------------------------------------
    def read_dirty_log(self) -> None:
        """Fold KVM's dirty log (reading resets it) into the bitmaps that want it."""
        if self._logging:
            self._vm.merge_dirty_log(self.slot, self._scratch, self._changed, self._unreported)

    def take_unreported(self) -> list[int]:
        """GPAs of the pages the guest wrote since the last call (``dirty_log`` slots)."""
        assert self._unreported is not None
        self.read_dirty_log()
        pages = list(self._unreported)
        self._unreported.clear()
        return [self.gpa + page * PAGE_SIZE for page in pages]

    def resident_bytes(self) -> int:
        """Host memory this slot really uses: its pages that hold data (touched by the guest
        or the host; present or swapped out)."""
        pages = PageBitmap(self.pages)
        self._mapping.mark_resident(pages)
        return pages.count() * PAGE_SIZE

    # -- images -----------------------------------------------------------------------------
    def capture(self) -> SlotImage:
        """Copy the touched pages into a new image."""
        image = PageImage(self.size)
        self._mapping.mark_resident(image.populated)
        image.data.copy_pages_from(self._mapping, image.populated.copy())
        return SlotImage(self.gpa, self.size, self.readonly, self.dirty_log, image)

    def track(self) -> None:
        """Start counting the pages changed from now on (the restore base is now)."""
        if not self.readonly and not self._logging:
            self._vm.set_slot_flags(self.slot, MEM_LOG_DIRTY_PAGES, self.gpa, self._mapping)
            self._logging = True
        self._changed = None
        self.read_dirty_log()              # a clean log (what it held stays unreported)
        self._host_dirty.clear()
        self._changed = PageBitmap(self.pages)

    def restore(self, image: SlotImage, tracked: bool) -> int:
        """Copy back from ``image`` the pages that may differ: with ``tracked``, those
        changed since the base (one C call); else every page touched now or populated there.
        Returns how many were copied."""
        if tracked and self._changed is not None:
            return self._vm.restore_slot(self.slot, self._logging, self._mapping,
                                         image.image.data, self._changed, self._scratch,
                                         self._host_dirty, self._unreported)
        changed = image.image.populated.copy()
        self._mapping.mark_resident(changed)
        return self._mapping.copy_pages_from(image.image.data, changed)

    def release(self, vm_open: bool) -> None:
        """Delete the KVM slot (when the VM is still open) and free the host memory."""
        if vm_open:
            self._vm.unmap_memory(self.slot, self.gpa, self._mapping)
        else:
            self._mapping.free()


class GuestMemory:
    """Reads and writes guest-physical memory across all of a partition's slots, and owns
    the slots (:meth:`pyhv.Partition.map_memory` adds them).

    Every access is checked: a range that touches a GPA with no slot behind it raises
    :class:`pyhv.GuestMemoryError` and changes nothing.  A range may span adjacent slots.
    """

    def __init__(self, vm: VmFd, *, max_slots: int, phys_limit: int,
                 reserved: tuple[int, int], readonly_ok: bool) -> None:
        self._vm = vm
        self._max_slots = max_slots
        self._phys_limit = phys_limit
        self._reserved = reserved
        self._readonly_ok = readonly_ok
        self._slots: list[MemorySlot] = []     # sorted by gpa, never overlapping
        self._starts: list[int] = []
        self._closed = False
        self.layout_version = 0                # bumped whenever a slot comes or goes
        self._tracked_base: object | None = None   # the snapshot slots restore() is fast for
        self._tracked_version = -1

    # -- slots ------------------------------------------------------------------------------
    @staticmethod
    def check_range(gpa: int, size: int) -> None:
        gpa = as_int("gpa", gpa)
        size = as_int("size", size)
        if size <= 0:
            raise InvalidArgument(f"memory size must be > 0, not {size}")
        if gpa < 0 or gpa % PAGE_SIZE or size % PAGE_SIZE:
            raise InvalidArgument(f"memory slot [{gpa:#x}, +{size:#x}) must start and end on a "
                                  f"{PAGE_SIZE:#x}-byte page boundary")

    def map(self, gpa: int, size: int, *, readonly: bool = False,
            dirty_log: bool = False) -> MemorySlot:
        """A new slot of fresh host memory at ``[gpa, gpa+size)`` (see
        :meth:`pyhv.Partition.map_memory`)."""
        self._require_open()
        self.check_range(gpa, size)
        if gpa + size > self._phys_limit:
            raise InvalidArgument(f"slot end {gpa + size:#x} is beyond the guest's physical "
                                  f"address width ({self._phys_limit:#x})")
        lo, hi = self._reserved
        if gpa < hi and lo < gpa + size:
            raise SlotOverlapError(f"[{lo:#x}, {hi:#x}) is reserved for KVM's real-mode TSS "
                                   "and identity map (move them with Partition(kvm_tss=...))")
        clash = self.overlapping(gpa, size)
        if clash is not None:
            raise SlotOverlapError(f"slot [{gpa:#x}, {gpa + size:#x}) overlaps {clash}")
        if readonly and not self._readonly_ok:
            raise MissingCapability("KVM_CAP_READONLY_MEM", "read-only memory slots")
        used = {s.slot for s in self._slots}
        slot_id = next(i for i in range(len(used) + 1) if i not in used)
        if slot_id >= self._max_slots:
            raise InvalidArgument(f"KVM allows {self._max_slots} memory slots per partition")
        flags = (MEM_READONLY if readonly else 0) | (MEM_LOG_DIRTY_PAGES if dirty_log else 0)
        mapping = self._vm.map_memory(slot_id, flags, gpa, size)
        slot = MemorySlot(slot_id, gpa, size, readonly, dirty_log, mapping.address, mapping,
                          self._vm)
        i = bisect.bisect(self._starts, gpa)
        self._slots.insert(i, slot)
        self._starts.insert(i, gpa)
        self.layout_version += 1
        return slot

    def unmap(self, slot: MemorySlot | int) -> None:
        """Remove a slot (given as the slot or its GPA) and free its host memory."""
        self._require_open()
        if not isinstance(slot, MemorySlot):
            found = self.slot_at(as_int("gpa", slot))
            if found is None:
                raise GuestMemoryError(slot, 1, "no slot to unmap")
            slot = found
        if slot not in self._slots:
            raise InvalidArgument(f"{slot} is not a slot of this partition")
        slot.release(vm_open=True)
        i = self._slots.index(slot)
        del self._slots[i]
        del self._starts[i]
        self.layout_version += 1

    def close(self) -> None:
        """Free every slot's host memory (the VM is going away; idempotent)."""
        for slot in self._slots:
            slot.release(vm_open=False)
        self._slots.clear()
        self._starts.clear()
        self._closed = True

    def _require_open(self) -> None:
        if self._closed:
            raise ClosedError("partition is closed")

    def overlapping(self, gpa: int, size: int) -> MemorySlot | None:
        """The first slot overlapping ``[gpa, gpa+size)``, or None."""
        i = bisect.bisect(self._starts, gpa) - 1
        for slot in self._slots[max(i, 0):]:
            if slot.gpa >= gpa + size:
                break
            if slot.end > gpa:
                return slot
        return None

    def slot_at(self, gpa: int) -> MemorySlot | None:
        """The slot holding ``gpa``, or None."""
        i = bisect.bisect(self._starts, gpa) - 1
        if i >= 0 and gpa < self._slots[i].end:
            return self._slots[i]
        return None

    @property
    def slots(self) -> tuple[MemorySlot, ...]:
        return tuple(self._slots)

    def spans(self) -> list[tuple[int, int, bool]]:
        """(gpa, size, readonly) of each slot, in GPA order."""
        return [(s.gpa, s.size, s.readonly) for s in self._slots]

    def __iter__(self) -> Iterator[MemorySlot]:
        return iter(tuple(self._slots))

    def is_ram(self, gpa: int, size: int = 1) -> bool:
        """Whether ``[gpa, gpa+size)`` lies in slots (RAM or ROM) with no gap."""
        try:
            self._pieces(gpa, size)
        except (GuestMemoryError, InvalidArgument):
            return False
        return True

    # -- access ---------------------------------------------------------------------------
    def _pieces(self, gpa: int, size: int) -> list[tuple[MemorySlot, int, int]]:
        """(slot, offset in slot, length) pieces covering [gpa, gpa+size), or raise."""
        if isinstance(gpa, bool) or not isinstance(gpa, int) or gpa < 0:
            raise InvalidArgument(f"a guest-physical address must be an int >= 0, not {gpa!r}")
        if size < 0:
            raise InvalidArgument(f"size must be >= 0, not {size}")
        if self._closed:
            raise ClosedError("partition is closed")
        pieces = []
        at, left = gpa, size
        while left:
            slot = self.slot_at(at)
            if slot is None:
                raise GuestMemoryError(gpa, size, f"nothing at {at:#x}")
            n = min(left, slot.end - at)
            pieces.append((slot, at - slot.gpa, n))
            at += n
            left -= n
        return pieces

    def read(self, gpa: int, size: int) -> bytes:
        """``size`` bytes from guest-physical address ``gpa``."""
        pieces = self._pieces(gpa, size)
        if len(pieces) == 1:
            slot, offset, n = pieces[0]
            return slot.read(offset, n)
        return b"".join(s.read(o, n) for s, o, n in pieces)

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        """Copy ``data`` to guest-physical address ``gpa`` (read-only slots included)."""
        view = memoryview(data).cast("B")
        done = 0
        for slot, offset, n in self._pieces(gpa, len(view)):
            slot.write(offset, view[done:done + n])
            done += n

    def fill(self, gpa: int, size: int, byte: int = 0) -> None:
        """Set ``size`` bytes at ``gpa`` to ``byte``."""
        if not 0 <= byte <= 0xFF:
            raise InvalidArgument(f"fill byte must be 0..255, not {byte}")
        for slot, offset, n in self._pieces(gpa, size):
            slot.fill(offset, n, byte)

    def _unpack(self, fmt: str, gpa: int) -> int:
        return int(struct.unpack(fmt, self.read(gpa, struct.calcsize(fmt)))[0])

    def _pack(self, fmt: str, gpa: int, value: int) -> None:
        try:
            data = struct.pack(fmt, value)
        except struct.error as exc:
            raise InvalidArgument(f"{value!r} does not fit: {exc}") from None
        self.write(gpa, data)

    # little-endian integers at a GPA: read_u8/16/32/64 and write_u8/16/32/64
    def read_u8(self, gpa: int) -> int:
        return self._unpack("<B", gpa)

    def read_u16(self, gpa: int) -> int:
        return self._unpack("<H", gpa)

    def read_u32(self, gpa: int) -> int:
        return self._unpack("<I", gpa)

    def read_u64(self, gpa: int) -> int:
        return self._unpack("<Q", gpa)

    def write_u8(self, gpa: int, value: int) -> None:
        self._pack("<B", gpa, value)

    def write_u16(self, gpa: int, value: int) -> None:
        self._pack("<H", gpa, value)

    def write_u32(self, gpa: int, value: int) -> None:
        self._pack("<I", gpa, value)

    def write_u64(self, gpa: int, value: int) -> None:
        self._pack("<Q", gpa, value)

    # -- dirty pages ------------------------------------------------------------------------
    def dirty_pages(self, slot: MemorySlot) -> list[int]:
        """GPAs of the pages of ``slot`` the guest wrote since the last call (see
        :meth:`pyhv.Partition.dirty_pages`)."""
        self._require_open()
        if slot not in self._slots:
            raise InvalidArgument(f"{slot} is not a slot of this partition")
        if not slot.dirty_log:
            raise InvalidArgument(f"{slot} was not mapped with dirty_log=True")
        return slot.take_unreported()

    # -- images (the memory part of snapshots) ------------------------------------------------
    def capture(self) -> list[SlotImage]:
        """Every slot's touched pages, as images."""
        return [slot.capture() for slot in self._slots]

    def track(self, base: object) -> None:
        """Make ``base`` (a snapshot's slot images) the one :meth:`restore` is fast for:
        from now on changed pages are counted."""
        for slot in self._slots:
            slot.track()
        self._tracked_base, self._tracked_version = base, self.layout_version

    def untrack(self) -> None:
        """Forget the restore base: the next restore copies every touched page."""
        self._tracked_base, self._tracked_version = None, -1

    def tracks(self, base: object) -> bool:
        """Whether restoring ``base`` may copy only the pages changed since it."""
        return self._tracked_base is base and self._tracked_version == self.layout_version

    def check_fits(self, images: list[SlotImage]) -> None:
        """Raise :class:`pyhv.InvalidArgument` unless ``images`` are this memory's layout."""
        mine = [(s.gpa, s.size, s.readonly) for s in self._slots]
        theirs = [(s.gpa, s.size, s.readonly) for s in images]
        if mine != theirs:
            raise InvalidArgument("the snapshot's memory slots differ from this partition's: "
                                  f"{theirs} vs {mine}")

    def restore(self, images: list[SlotImage], finish: Callable[[], bool] | None = None) -> int:
        """Copy ``images`` back (checked by :meth:`check_fits`); returns the pages copied.

        ``finish`` runs after the copy and says whether guest code ran (a vCPU finishing an
        instruction it was stopped in, which may have written memory): then the pages are
        copied again, so that memory ends as the images say.  ``images`` becomes the
        restore base."""
        tracked = self.tracks(images)
        copied = sum(slot.restore(image, tracked)
                     for slot, image in zip(self._slots, images, strict=True))
        if finish is not None and finish():
            copied += sum(slot.restore(image, tracked)
                          for slot, image in zip(self._slots, images, strict=True))
        if not tracked:
            self.track(images)
        return copied
