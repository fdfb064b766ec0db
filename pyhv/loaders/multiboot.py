"""Multiboot (version 1) kernels, as GRUB and QEMU's ``-kernel`` load them.

The header is searched in the first 8 KiB (4-byte aligned, magic 0x1BADB002, checksum).  With
flag bit 16 the header's own addresses place the image (the "a.out kludge"); otherwise the
kernel must be ELF and its segments are loaded.  The kernel starts in 32-bit protected mode
with paging off and flat segments, EAX = 0x2BADB002 and EBX = the multiboot information:
lower/upper memory, the memory map, the command line (the image path, then the appended
text, as QEMU does), the boot loader name, and the modules (``initrd`` is the first).  A kernel
that requires video mode information (header flag 2) is refused, as the specification asks
of a loader that cannot provide a required feature: pyhv has no display.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from ..errors import ImageFormatError, InvalidArgument
from . import elf as elf_loader
from .image import BootImage
from .layout import (
    BOOT_DATA_END,
    E820_RAM,
    INFO,
    MEMMAP,
    MEMMAP_SIZE,
    MODULES,
    STACK_TOP,
    STRINGS,
    bounded_map,
    check_boot_data,
    check_fits,
    page_up,
    write_boot_data,
)

if TYPE_CHECKING:
    from .image import Partition

MAGIC = 0x1BADB002
BOOTLOADER_MAGIC = 0x2BADB002
SEARCH = 8192
FLAG_ALIGN_MODULES, FLAG_MEMORY_INFO, FLAG_VIDEO, FLAG_AOUT_KLUDGE = 1, 2, 4, 1 << 16
# the required features (bits 0-15) pyhv provides; the spec has a loader refuse a kernel that
# requires any other, video mode information (bit 2) included: pyhv has no display
UNDERSTOOD = FLAG_ALIGN_MODULES | FLAG_MEMORY_INFO
INFO_MEMORY, INFO_CMDLINE, INFO_MODULES, INFO_MMAP, INFO_LOADER_NAME = 1, 4, 8, 64, 512


def find_header(data: bytes) -> tuple[int, int] | None:
    """(offset, flags) of the multiboot header, or None."""
    limit = min(len(data), SEARCH) - 12
    for offset in range(0, limit + 1, 4):
        magic, flags, checksum = struct.unpack_from("<III", data, offset)
        if magic == MAGIC and (magic + flags + checksum) & 0xFFFFFFFF == 0:
            return offset, flags
    return None


def _aout_segment(data: bytes, offset: int, name: str) -> tuple[elf_loader.Segment, int]:
    """The image the a.out-kludge header fields describe, and its entry point."""
    if offset + 32 > len(data):
        raise ImageFormatError(f"{name}: multiboot header truncated")
    header_addr, load_addr, load_end, bss_end, entry = struct.unpack_from("<5I", data,
                                                                          offset + 12)
    if load_addr > header_addr or header_addr - load_addr > offset:
        raise ImageFormatError(f"{name}: multiboot load address {load_addr:#x} is not at or "
                               f"before the header address {header_addr:#x} in the file")
    start = offset - (header_addr - load_addr)
    size = (len(data) - start) if load_end == 0 else load_end - load_addr
    if load_end and load_end < load_addr or start + size > len(data) or size <= 0:
        raise ImageFormatError(f"{name}: multiboot load range [{load_addr:#x}, {load_end:#x}) "
                               "does not fit the file")
    memsz = size if bss_end == 0 else bss_end - load_addr
    if memsz < size:
        raise ImageFormatError(f"{name}: multiboot bss end {bss_end:#x} is before the load end")
    if not load_addr <= entry < load_addr + memsz:
        raise ImageFormatError(f"{name}: multiboot entry {entry:#x} is outside the image")
    return elf_loader.Segment(load_addr, load_addr, data[start:start + size], memsz), entry


def load(partition: Partition, data: bytes, name: str, cmdline: str,
         initrd: tuple[bytes, str] | None) -> BootImage:
    found = find_header(data)
    if found is None:
        raise ImageFormatError(f"{name}: no multiboot header in its first {SEARCH} bytes")
    offset, flags = found
    unknown = flags & 0xFFFF & ~UNDERSTOOD
    if unknown:
        video = " (video mode information: pyhv has no display)" if unknown & FLAG_VIDEO else ""
        raise ImageFormatError(f"{name}: the kernel requires multiboot features pyhv does not "
                               f"provide (flags {unknown:#x}){video}")
    if flags & FLAG_AOUT_KLUDGE:
        segment, entry = _aout_segment(data, offset, name)
        image = elf_loader.ElfImage(32, entry, [segment], [])
    else:
        image = elf_loader.parse(data, name)
        entry = image.physical(image.entry)
    end = max(s.paddr + s.memsz for s in image.segments)
    check_boot_data(partition)
    elf_loader.check(partition, image, "multiboot kernel")

    # the boot information, built and checked before anything is written
    full_cmdline = f"{name} {cmdline}".strip() if cmdline else name
    strings = bytearray()

    def string(text: str) -> int:
        at = STRINGS + len(strings)
        strings.extend(text.encode() + b"\0")
        return at

    cmdline_at = string(full_cmdline)
    loader_at = string("pyhv")
    modules = []
    if initrd is not None:
        module_data, module_name = initrd
        module_at = page_up(end)
        check_fits(partition, "multiboot module", module_at, len(module_data))
        modules.append((module_at, module_data, string(module_name)))
    if STRINGS + len(strings) > BOOT_DATA_END:
        raise InvalidArgument("the multiboot command line and names are too long")

    entries = bounded_map(partition, MEMMAP_SIZE // 24)
    mmap = b"".join(struct.pack("<IQQI", 20, base, length, kind)
                    for base, length, kind in entries)
    ram = [(b, n) for b, n, k in entries if k == E820_RAM]
    lower = next((n for b, n in ram if b == 0), 0) // 1024
    upper = next((n for b, n in ram if b == 0x100000), 0) // 1024
    info_flags = INFO_MEMORY | INFO_CMDLINE | INFO_MMAP | INFO_LOADER_NAME | \
        (INFO_MODULES if modules else 0)
    info = struct.pack("<IIIIIII", info_flags, lower, upper, 0, cmdline_at, len(modules),
                       MODULES) + bytes(16) + struct.pack("<II", len(mmap), MEMMAP) + \
        bytes(12) + struct.pack("<I", loader_at)
    module_list = b"".join(struct.pack("<IIII", at, at + len(blob), name_at, 0)
                           for at, blob, name_at in modules)

    payloads = elf_loader.payloads(image, "multiboot kernel") + [
        (at, blob, len(blob), "multiboot module") for at, blob, _ in modules]
    regions = write_boot_data(partition, payloads, info, "multiboot information",
                              memmap=mmap, modules=module_list, strings=bytes(strings),
                              strings_what="command line and names")
    return BootImage("multiboot", "protected", entry,
                     {"rax": BOOTLOADER_MAGIC, "rbx": INFO}, regions, stack=STACK_TOP)
