"""Where loaders put things, the memory map they report, checks that images fit, and the
last step every loader with boot data shares (:func:`write_boot_data`)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..core.memory import PAGE_SIZE
from ..errors import ImageFormatError
from ..x86.setup import SETUP_MAX_SIZE

if TYPE_CHECKING:
    from .image import Partition

BOOT_DATA = 0x10000            # boot data area [0x10000, 0x20000)
BOOT_DATA_END = 0x20000
INFO = 0x10000                 # multiboot info / Linux zero page / PVH start info
MEMMAP = 0x11000               # memory map entries
MODULES = 0x12000              # module list
STRINGS = 0x13000              # command lines and names, to BOOT_DATA_END
MEMMAP_SIZE = MODULES - MEMMAP
STACK_TOP = BOOT_DATA          # a stack for the boot vCPU, below the boot data

E820_RAM, E820_RESERVED = 1, 2
EBDA, LEGACY = (0x9FC00, 0xA0000), (0xA0000, 0x100000)    # EBDA; VGA, option ROMs, BIOS


def setup_region(partition: Partition) -> tuple[int, int]:
    """[start, end) of pyhv's setup region in ``partition``."""
    return partition.setup_base, partition.setup_base + SETUP_MAX_SIZE


def reserved_ranges(partition: Partition) -> list[tuple[int, int]]:
    """Ranges a guest must not use as RAM, merged: the EBDA, the legacy hole below 1 MiB and
    pyhv's setup region."""
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted([EBDA, LEGACY, setup_region(partition)]):
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
        else:
            merged.append((lo, hi))
    return merged


def memory_map(partition: Partition) -> list[tuple[int, int, int]]:
    """(base, length, type) entries, e820 style: RAM slots with the reserved ranges cut out
    (and listed as reserved), sorted."""
    entries: list[tuple[int, int, int]] = []
    reserved = sorted(reserved_ranges(partition))
    for slot in partition.memory.slots:
        if slot.readonly:
            continue
        pieces = [(slot.gpa, slot.end)]
        for lo, hi in reserved:
            cut = []
            for a, b in pieces:
                if hi <= a or lo >= b:
                    cut.append((a, b))
                    continue
                if a < lo:
                    cut.append((a, lo))
                if hi < b:
                    cut.append((hi, b))
            pieces = cut
        entries += [(a, b - a, E820_RAM) for a, b in pieces]
    entries += [(lo, hi - lo, E820_RESERVED) for lo, hi in reserved]
    return sorted(entries)


def check_fits(partition: Partition, what: str, gpa: int, size: int) -> None:
    """Refuse to place ``size`` bytes at ``gpa`` outside writable RAM, over the boot data
    area, or over pyhv's setup region."""
    end = gpa + size
    if gpa < 0 or size < 0:
        raise ImageFormatError(f"{what}: negative address or size")
    if size == 0:
        return
    at = gpa
    while at < end:
        slot = partition.memory.slot_at(at)
        if slot is None or slot.readonly:
            raise ImageFormatError(f"{what} [{gpa:#x}, {end:#x}) lies outside guest RAM "
                                   f"(nothing at {at:#x})")
        at = slot.end
    for (lo, hi), name in (((BOOT_DATA, BOOT_DATA_END), "the loader's boot data area"),
                           (setup_region(partition), "pyhv's setup region")):
        if gpa < hi and lo < end:
            raise ImageFormatError(f"{what} [{gpa:#x}, {end:#x}) overlaps {name} "
                                   f"[{lo:#x}, {hi:#x})")


def check_boot_data(partition: Partition) -> None:
    """The boot data area must be writable RAM: checked before a loader writes anything."""
    for at in range(BOOT_DATA, BOOT_DATA_END, PAGE_SIZE):
        slot = partition.memory.slot_at(at)
        if slot is None or slot.readonly:
            raise ImageFormatError(f"the loader's boot data area [{BOOT_DATA:#x}, "
                                   f"{BOOT_DATA_END:#x}) is not RAM in this partition")


def bounded_map(partition: Partition, max_entries: int,
                where: str = "the boot data area") -> list[tuple[int, int, int]]:
    """The memory map, refused if it has more than ``max_entries`` entries (what fits
    ``where``)."""
    entries = memory_map(partition)
    if len(entries) > max_entries:
        raise ImageFormatError(f"{len(entries)} memory-map entries do not fit {where} (at most "
                               f"{max_entries}): use fewer memory slots")
    return entries


# what a loader writes besides the boot data: (gpa, data, size in memory, what); the bytes
# past the data, up to the size, are zeroed (an ELF segment's BSS)
Payload = tuple[int, bytes, int, str]


def write_payloads(partition: Partition,
                   payloads: Iterable[Payload]) -> list[tuple[int, int, str]]:
    """Write ``payloads`` (already checked to fit); the regions they take."""
    memory = partition.memory
    regions = []
    for at, data, size, what in payloads:
        if not size:
            continue
        memory.write(at, data)
        if size > len(data):
            memory.fill(at + len(data), size - len(data))
        regions.append((at, size, what))
    return regions


def write_boot_data(partition: Partition, payloads: Iterable[Payload], info: bytes, what: str,
                    *, memmap: bytes = b"", modules: bytes = b"", strings: bytes = b"",
                    strings_what: str = "command line") -> list[tuple[int, int, str]]:
    """A loader's last step, once every check has passed: write the ``payloads`` (kernel,
    initrd, modules), zero the boot data tables and write them (``info`` at INFO, then the
    memory map, module list and strings).  The regions written, for ``BootImage.regions``."""
    tables = ((INFO, info, what, MEMMAP), (MEMMAP, memmap, "memory map", MODULES),
              (MODULES, modules, "module list", STRINGS),
              (STRINGS, strings, strings_what, BOOT_DATA_END))
    for at, data, name, end in tables:
        if len(data) > end - at:          # the loaders size them: a bug if this fires
            raise ImageFormatError(f"the {name} ({len(data):#x} bytes) overflows its part of "
                                   "the boot data area")
    regions = write_payloads(partition, payloads)
    partition.memory.fill(INFO, STRINGS - INFO)
    for at, data, name, _ in tables:
        if data:
            partition.memory.write(at, data)
            regions.append((at, len(data), name))
    return regions


def page_up(value: int) -> int:
    return (value + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


def ram_end_below(partition: Partition, limit: int) -> int:
    """The end of the RAM slot at GPA 0, capped at ``limit``."""
    slot = partition.memory.slot_at(0)
    return 0 if slot is None else min(slot.end, limit)
