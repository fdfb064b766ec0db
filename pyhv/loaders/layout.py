"""Where loaders put things, the memory map they report, and checks that images fit."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ImageFormatError
from ..memory import PAGE_SIZE
from ..modes import SETUP_MAX_SIZE

if TYPE_CHECKING:
    from ..partition import Partition

BOOT_DATA = 0x10000            # boot data area [0x10000, 0x20000)
BOOT_DATA_END = 0x20000
INFO = 0x10000                 # multiboot info / Linux zero page / PVH start info
MEMMAP = 0x11000               # memory map entries
MODULES = 0x12000              # module list
STRINGS = 0x13000              # command lines and names, to BOOT_DATA_END
STACK_TOP = BOOT_DATA          # a stack for the boot vCPU, below the boot data

E820_RAM, E820_RESERVED = 1, 2
EBDA, LEGACY = (0x9FC00, 0xA0000), (0xA0000, 0x100000)    # EBDA; VGA, option ROMs, BIOS


def reserved_ranges(partition: Partition) -> list[tuple[int, int]]:
    """Ranges a guest must not use as RAM, merged: the EBDA, the legacy hole below 1 MiB and
    pyhv's setup region."""
    setup = (partition.setup_base, partition.setup_base + SETUP_MAX_SIZE)
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted([EBDA, LEGACY, setup]):
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
    for lo, hi, name in ((BOOT_DATA, BOOT_DATA_END, "the loader's boot data area"),
                         (partition.setup_base, partition.setup_base + SETUP_MAX_SIZE,
                          "pyhv's setup region")):
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


def bounded_map(partition: Partition, entry_size: int) -> list[tuple[int, int, int]]:
    """The memory map, refused if it would spill past its page of the boot data area."""
    entries = memory_map(partition)
    if len(entries) * entry_size > MODULES - MEMMAP:
        raise ImageFormatError(f"{len(entries)} memory-map entries do not fit the boot data "
                               "area: use fewer memory slots")
    return entries


def page_up(value: int) -> int:
    return (value + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


def ram_end_below(partition: Partition, limit: int) -> int:
    """The end of the RAM slot at GPA 0, capped at ``limit``."""
    slot = partition.memory.slot_at(0)
    return 0 if slot is None else min(slot.end, limit)
