"""Guest image loaders: flat binaries, ELF, multiboot (v1) kernels and Linux.

Each loader checks the whole image before writing anything into guest memory (a bad image
raises :class:`pyhv.ImageFormatError` and changes nothing) and returns a :class:`BootImage`
that says how to start it::

    image = pyhv.loaders.load(part, "kernel.elf", cmdline="console=ttyS0")
    cpu = image.create_vcpu(part)          # the mode, entry and registers the format needs
    part.run(timeout=10)

``format="auto"`` follows QEMU's ``-kernel``: a multiboot header first (many multiboot kernels
are also ELF files), then a Linux setup header, then ELF, and flat otherwise.  Loaders put
their boot data (multiboot info, Linux zero page, PVH start info, command lines, memory maps)
at GPA 0x10000-0x20000 and refuse images that would overlap it or pyhv's setup region.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import ImageFormatError, InvalidArgument

if TYPE_CHECKING:
    from ..core.memory import GuestMemory
    from ..core.vcpu import VCpu
    from .elf import ElfImage


class Partition(Protocol):
    """What loaders need of a partition (:class:`pyhv.Partition` is one): its memory, where
    pyhv's setup region lies, and a way to make the boot vCPU."""

    memory: GuestMemory
    setup_base: int

    def create_vcpu(self, mode: str = ..., entry: int = ..., stack: int | None = ...,
                    **kwargs: Any) -> VCpu: ...

FORMATS = ("auto", "flat", "elf", "multiboot", "linux")


@dataclass
class BootImage:
    """A loaded image: how to start it (mode, entry, registers) and what went where."""

    format: str                               # "flat", "elf", "multiboot", "linux", "pvh"
    mode: str                                 # the vCPU mode the format starts in
    entry: int
    registers: dict[str, int] = field(default_factory=dict)
    regions: list[tuple[int, int, str]] = field(default_factory=list)   # (gpa, size, what)
    stack: int | None = None

    def create_vcpu(self, partition: Partition, **kwargs: Any) -> VCpu:
        """The boot vCPU, in the state the format promises its image."""
        if self.stack is not None:
            kwargs.setdefault("stack", self.stack)
        cpu = partition.create_vcpu(mode=self.mode, entry=self.entry, **kwargs)
        if self.registers:
            cpu.regs.update(**self.registers)
        return cpu


def read_image(image: str | os.PathLike[str] | bytes) -> tuple[bytes, str]:
    """The image's bytes and a name for it (its path, for multiboot command lines)."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image), "image"
    path = os.fspath(image)
    try:
        with open(path, "rb") as f:
            return f.read(), path
    except OSError as exc:
        raise ImageFormatError(f"{path}: cannot read the image ({exc.strerror})") from None


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
         address: int | None = None, mode: str = "long", name: str | None = None) -> BootImage:
    """Load ``image`` (a path, or the image's bytes) into ``partition``'s memory.

    ``cmdline`` and ``initrd`` go to multiboot (the command line is the image path followed by
    ``cmdline``, the initrd the first module, as QEMU does) and Linux images; flat and ELF
    images have nowhere to put them, and refuse them (:class:`pyhv.InvalidArgument`).
    ``address`` and ``mode`` are for flat binaries (default 0x100000, long mode).  ``name``
    names the image in errors and multiboot command lines (default: its path).
    """
    from . import elf, flat, linux, multiboot
    if format not in FORMATS:
        raise InvalidArgument(f"unknown image format {format!r}; choose from {FORMATS}")
    data, path = read_image(image)
    name = path if name is None else name
    if not data:
        raise ImageFormatError(f"{name}: the image is empty")
    chosen, parsed = _detect(data) if format == "auto" else (format, None)
    if chosen in ("flat", "elf") and (cmdline or initrd is not None):
        raise InvalidArgument(f"{name}: a {chosen} image takes no command line or initrd "
                              "(only multiboot and Linux kernels do)")
    ramdisk = None if initrd is None else read_image(initrd)
    if chosen == "flat":
        return flat.load(partition, data, 0x100000 if address is None else address, mode)
    if chosen == "elf":
        return elf.load(partition, data, name, parsed)
    if chosen == "multiboot":
        return multiboot.load(partition, data, name, cmdline, ramdisk)
    return linux.load(partition, data, name, cmdline, ramdisk, parsed)


__all__ = ["BootImage", "load", "detect", "read_image", "FORMATS", "ImageFormatError"]
