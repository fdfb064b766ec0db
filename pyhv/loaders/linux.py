"""Linux: a bzImage through the x86 boot protocol, or an uncompressed ``vmlinux`` (ELF) through
its PVH entry note.

**bzImage** (boot protocol 2.12 or later, 64-bit entry): the protected-mode kernel is loaded
at its preferred address, the setup header is copied into a "zero page" (``boot_params``)
with the command line, the initrd (placed as high as the kernel allows) and an e820 map, and
the kernel is entered in long mode at ``load address + 0x200`` with RSI = the zero page.

**vmlinux / PVH**: the ELF's PT_LOAD segments go to their physical addresses and the kernel
is entered at its ``XEN_ELFNOTE_PHYS32_ENTRY`` in 32-bit protected mode, paging off, with
EBX = an ``hvm_start_info`` (command line, memory map, the initrd as module 0).

:func:`extract_vmlinux` unpacks the vmlinux inside a bzImage (gzip, xz, lzma, zstd if the
``zstandard`` module is present).
"""

from __future__ import annotations

import gzip
import lzma
import struct
from typing import TYPE_CHECKING

from ..errors import ImageFormatError, InvalidArgument
from . import elf as elf_loader
from .image import BootImage
from .layout import (
    BOOT_DATA_END,
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
    ram_end_below,
    write_boot_data,
)

if TYPE_CHECKING:
    from .image import Partition

HDRS = b"HdrS"
MIN_VERSION = 0x020C               # the 64-bit entry point (and xloadflags) appeared here
XLF_KERNEL_64 = 1
LOADED_HIGH, CAN_USE_HEAP = 0x01, 0x80
ENTRY_64_OFFSET = 0x200
E820_MAX = 128
PVH_MAGIC = 0x336EC578


def _u(data: bytes, offset: int, size: int) -> int:
    return int.from_bytes(data[offset:offset + size], "little")


def is_bzimage(data: bytes) -> bool:
    return len(data) >= 0x264 and data[0x202:0x206] == HDRS and _u(data, 0x1FE, 2) == 0xAA55


def _setup_header(data: bytes, name: str) -> tuple[int, int]:
    """(setup size in bytes, protocol version), after the checks the boot protocol asks."""
    if not is_bzimage(data):
        raise ImageFormatError(f"{name}: not a Linux bzImage (no HdrS setup header)")
    version = _u(data, 0x206, 2)
    if version < MIN_VERSION:
        raise ImageFormatError(f"{name}: boot protocol {version >> 8}.{version & 0xFF:02} is "
                               "too old for a 64-bit entry (2.12 needed)")
    if not _u(data, 0x236, 2) & XLF_KERNEL_64:
        raise ImageFormatError(f"{name}: the kernel has no 64-bit entry point (xloadflags)")
    if not data[0x211] & LOADED_HIGH:
        raise ImageFormatError(f"{name}: not a bzImage (the kernel does not load high)")
    setup_sects = data[0x1F1] or 4
    setup_size = (setup_sects + 1) * 512
    if setup_size >= len(data):
        raise ImageFormatError(f"{name}: truncated: the setup code is larger than the file")
    return setup_size, version


def extract_vmlinux(data: bytes, name: str = "image") -> bytes:
    """The ELF vmlinux inside a bzImage's compressed payload."""
    setup_size, _ = _setup_header(data, name)
    offset, length = _u(data, 0x248, 4), _u(data, 0x24C, 4)
    start = setup_size + offset
    if length == 0 or start + length > len(data):
        raise ImageFormatError(f"{name}: the compressed payload lies outside the file")
    payload = data[start:start + length]
    try:
        if payload[:2] == b"\x1f\x8b":
            out = gzip.decompress(payload)
        elif payload[:6] == b"\xfd7zXZ\x00":
            out = lzma.LZMADecompressor(lzma.FORMAT_XZ).decompress(payload)
        elif payload[:3] == b"\x5d\x00\x00":
            out = lzma.LZMADecompressor(lzma.FORMAT_ALONE).decompress(payload)
        elif payload[:4] == b"\x28\xb5\x2f\xfd":
            try:
                import zstandard
            except ImportError:
                raise ImageFormatError(f"{name}: a zstd payload needs the zstandard module") \
                    from None
            out = zstandard.ZstdDecompressor().decompressobj().decompress(payload)
        else:
            raise ImageFormatError(f"{name}: unknown payload compression "
                                   f"({payload[:4].hex()})")
    except (OSError, lzma.LZMAError, EOFError) as exc:
        raise ImageFormatError(f"{name}: the payload does not decompress: {exc}") from None
    if out[:4] != elf_loader.MAGIC:
        raise ImageFormatError(f"{name}: the payload is not an ELF vmlinux")
    return out


def _initrd_place(partition: Partition, size: int, limit: int, after: int) -> int:
    top = ram_end_below(partition, limit) & ~0xFFF
    at = (top - size) & ~0xFFF
    if size and at < page_up(after):
        raise ImageFormatError(f"the initrd ({size:#x} bytes) does not fit below {top:#x} "
                               "after the kernel: give the partition more memory")
    return at


def _cmdline(cmdline: str, limit: int) -> bytes:
    """The command line, NUL-terminated; ``limit`` is the most bytes it may have before its
    NUL (the boot protocol's ``cmdline_size``), and the boot data area bounds it too."""
    raw = cmdline.encode()
    most = min(limit, BOOT_DATA_END - STRINGS - 1)
    if len(raw) > most:
        raise InvalidArgument(f"the kernel command line has {len(raw)} bytes: at most {most} "
                              "fit (not counting its terminating NUL)")
    return raw + b"\0"


def load_bzimage(partition: Partition, data: bytes, name: str, cmdline: str,
                 initrd: tuple[bytes, str] | None) -> BootImage:
    setup_size, _ = _setup_header(data, name)
    check_boot_data(partition)
    kernel = data[setup_size:]
    align = _u(data, 0x230, 4) or 0x200000
    if align & (align - 1):
        raise ImageFormatError(f"{name}: kernel alignment {align:#x} is not a power of two")
    load_at = _u(data, 0x258, 8) or 0x1000000
    load_at = (load_at + align - 1) & ~(align - 1)
    init_size = max(_u(data, 0x260, 4), len(kernel))
    check_fits(partition, "Linux kernel", load_at, init_size)
    raw_cmdline = _cmdline(cmdline, _u(data, 0x238, 4) or 256)
    ramdisk, ramdisk_at = b"", 0
    if initrd is not None:
        ramdisk = initrd[0]
        limit = _u(data, 0x22C, 4) or 0x37FFFFFF
        ramdisk_at = _initrd_place(partition, len(ramdisk), limit + 1, load_at + init_size)
        check_fits(partition, "initrd", ramdisk_at, len(ramdisk))
    e820 = bounded_map(partition, E820_MAX, "the zero page's e820 table")

    zero_page = bytearray(4096)
    header_end = 0x202 + data[0x201]
    zero_page[0x1F1:header_end] = data[0x1F1:header_end]
    zero_page[0x210] = 0xFF                               # type_of_loader: undefined
    zero_page[0x211] |= LOADED_HIGH | CAN_USE_HEAP
    struct.pack_into("<H", zero_page, 0x1FA, 0xFFFF)     # vid_mode: normal
    struct.pack_into("<H", zero_page, 0x224, 0xFE00)     # heap_end_ptr
    struct.pack_into("<I", zero_page, 0x214, load_at)    # code32_start
    struct.pack_into("<I", zero_page, 0x228, STRINGS)    # cmd_line_ptr
    struct.pack_into("<II", zero_page, 0x218, ramdisk_at & 0xFFFFFFFF, len(ramdisk))
    struct.pack_into("<II", zero_page, 0x0C0, ramdisk_at >> 32, len(ramdisk) >> 32)
    zero_page[0x1E8] = len(e820)
    for i, (base, length, kind) in enumerate(e820):
        struct.pack_into("<QQI", zero_page, 0x2D0 + 20 * i, base, length, kind)

    payloads = [(load_at, kernel, len(kernel), "Linux kernel"),
                (ramdisk_at, ramdisk, len(ramdisk), "initrd")]
    regions = write_boot_data(partition, payloads, bytes(zero_page), "boot_params",
                              strings=raw_cmdline)
    return BootImage("linux", "long", load_at + ENTRY_64_OFFSET, {"rsi": INFO}, regions,
                     stack=STACK_TOP)


def load_pvh(partition: Partition, data: bytes, name: str, cmdline: str,
             initrd: tuple[bytes, str] | None,
             image: elf_loader.ElfImage | None = None) -> BootImage:
    if image is None:
        image = elf_loader.parse(data, name)
    entry = elf_loader.pvh_entry(image)
    if entry is None:
        raise ImageFormatError(f"{name}: the ELF has no PVH entry note "
                               "(XEN_ELFNOTE_PHYS32_ENTRY): not a PVH-bootable vmlinux")
    check_boot_data(partition)
    elf_loader.check(partition, image, "vmlinux")
    end = max(s.paddr + s.memsz for s in image.segments)
    raw_cmdline = _cmdline(cmdline, 4096)
    ramdisk, ramdisk_at = b"", 0
    if initrd is not None:
        ramdisk = initrd[0]
        ramdisk_at = _initrd_place(partition, len(ramdisk), 1 << 32, end)
        check_fits(partition, "initrd", ramdisk_at, len(ramdisk))
    memmap = bounded_map(partition, MEMMAP_SIZE // 24)
    start_info = struct.pack("<IIIIQQQQII", PVH_MAGIC, 1, 0, 1 if ramdisk else 0,
                             MODULES if ramdisk else 0, STRINGS, 0, MEMMAP, len(memmap), 0)
    table = b"".join(struct.pack("<QQII", base, length, kind, 0)
                     for base, length, kind in memmap)
    modules = struct.pack("<QQQQ", ramdisk_at, len(ramdisk), 0, 0) if ramdisk else b""

    payloads = elf_loader.payloads(image, "vmlinux") + [
        (ramdisk_at, ramdisk, len(ramdisk), "initrd")]
    regions = write_boot_data(partition, payloads, start_info, "hvm_start_info",
                              memmap=table, modules=modules, strings=raw_cmdline)
    return BootImage("pvh", "protected", entry, {"rbx": INFO}, regions, stack=STACK_TOP)


def load(partition: Partition, data: bytes, name: str, cmdline: str,
         initrd: tuple[bytes, str] | None,
         image: elf_loader.ElfImage | None = None) -> BootImage:
    """A bzImage, or (an ELF) a vmlinux with a PVH entry; ``image``: the vmlinux's
    :func:`elf.parse` result, when the caller has it."""
    if data[:4] == elf_loader.MAGIC:
        return load_pvh(partition, data, name, cmdline, initrd, image)
    return load_bzimage(partition, data, name, cmdline, initrd)
