"""Guest image loaders: flat binaries, ELF, multiboot (v1) kernels and Linux.

Each loader checks the whole image before writing anything into guest memory (a bad image
raises :class:`pyhv.ImageFormatError` and changes nothing) and returns a :class:`BootImage`
that says how to start it:

>>> import pyhv
>>> with pyhv.Partition(memory="4M") as part:
...     image = pyhv.loaders.load(part, bytes.fromhex("f4"), "flat")   # or a path; "auto"
...     cpu = image.create_vcpu(part)       # the mode, entry and registers the format needs
...     image.format, hex(image.entry), part.run(timeout=10).exit
('flat', '0x100000', Halt(rip=0x100001))

``format="auto"`` follows QEMU's ``-kernel``: a multiboot header first (many multiboot kernels
are also ELF files), then a Linux setup header, then ELF, and flat otherwise.  Loaders put
their boot data (multiboot info, Linux zero page, PVH start info, command lines, memory maps)
at GPA 0x10000-0x20000 and refuse images that would overlap it or pyhv's setup region.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from ..errors import ImageFormatError, InvalidArgument
from .image import BootImage, Partition, read_image

if TYPE_CHECKING:
    from .elf import ElfImage

log = logging.getLogger("pyhv")

FORMATS = ("auto", "flat", "elf", "multiboot", "linux")


def detect(data: bytes) -> str:
    """The format ``load(format="auto")`` would use for ``data``."""
    return _detect(data)[0]


def _detect(data: bytes) -> tuple[str, ElfImage | None]:
    """The format, and for an ELF the parsed image (so that the loader need not parse it
    again)."""
    from . import elf, linux, multiboot
    if multiboot.find_header(data) is not None:
        return "multiboot", None
    if linux.is_bzimage(data):
        return "linux", None
    if data[:4] == elf.MAGIC:
        try:
            parsed = elf.parse(data)
        except ImageFormatError:
            return "elf", None                # the ELF loader says what is wrong with it
        return ("linux" if elf.pvh_entry(parsed) is not None else "elf"), parsed
    return "flat", None


def load(partition: Partition, image: str | os.PathLike[str] | bytes, format: str = "auto", *,
         cmdline: str = "", initrd: str | os.PathLike[str] | bytes | None = None,
         address: int | None = None, mode: str | None = None,
         name: str | None = None) -> BootImage:
    """Load ``image`` (a path, or the image's bytes) into ``partition``'s memory.

    ``cmdline`` and ``initrd`` go to multiboot (the command line is the image path followed by
    ``cmdline``, the initrd the first module, as QEMU does) and Linux images; flat and ELF
    images have nowhere to put them, and refuse them (:class:`pyhv.InvalidArgument`).
    ``address`` and ``mode`` are for flat binaries (default 0x100000, long mode); the other
    formats say where they load and how they start, and refuse them.  ``name`` names the
    image in errors and multiboot command lines (default: its path).
    """
    from . import elf, flat, linux, multiboot
    if format not in FORMATS:
        raise InvalidArgument(f"unknown image format {format!r}; choose from {FORMATS}")
    data, path = read_image(image)
    name = path if name is None else name
    if not data:
        raise ImageFormatError(f"{name}: the image is empty")
    chosen, parsed = _detect(data) if format == "auto" else (format, None)
    log.info("%s: loading %d bytes as %s%s", name, len(data), chosen,
             " (detected)" if format == "auto" else "")
    if chosen in ("flat", "elf") and (cmdline or initrd is not None):
        article = "an" if chosen[0] in "aeiou" else "a"
        raise InvalidArgument(f"{name}: {article} {chosen} image takes no command line or initrd "
                              "(only multiboot and Linux kernels do)")
    if chosen != "flat" and (address is not None or mode is not None):
        article = "an" if chosen[0] in "aeiou" else "a"
        raise InvalidArgument(f"{name}: address and mode are for flat images only ({article} "
                              f"{chosen} image says where it loads and how it starts)")
    ramdisk = None if initrd is None else read_image(initrd)
    if chosen == "flat":
        return flat.load(partition, data, 0x100000 if address is None else address,
                         "long" if mode is None else mode)
    if chosen == "elf":
        return elf.load(partition, data, name, parsed)
    if chosen == "multiboot":
        return multiboot.load(partition, data, name, cmdline, ramdisk)
    return linux.load(partition, data, name, cmdline, ramdisk, parsed)


__all__ = ["BootImage", "FORMATS", "ImageFormatError", "Partition", "detect", "load", "read_image"]
