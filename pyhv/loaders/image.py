"""What a loader returns (:class:`BootImage`), what it needs of a partition, and reading an
image file."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import ImageFormatError

if TYPE_CHECKING:
    from collections.abc import Iterable

    from ..core.memory import GuestMemory
    from ..core.vcpu import VCpu
    from ..x86.cpuid import CpuidEntry


class Partition(Protocol):
    """What loaders need of a partition (:class:`pyhv.Partition` is one): its memory, where
    pyhv's setup region lies, and a way to make the boot vCPU."""

    memory: GuestMemory
    setup_base: int

    def create_vcpu(self, mode: str = ..., entry: int = ..., stack: int | None = ..., *,
                    cpuid: Iterable[CpuidEntry] | None = ..., exceptions: bool = ...,
                    allow_port_io: bool = ...) -> VCpu: ...

@dataclass(repr=False)
class BootImage:
    """A loaded image: how to start it (mode, entry, registers) and what went where."""

    format: str                               # "flat", "elf", "multiboot", "linux", "pvh"
    mode: str                                 # the vCPU mode the format starts in
    entry: int
    registers: dict[str, int] = field(default_factory=dict)
    regions: list[tuple[int, int, str]] = field(default_factory=list)   # (gpa, size, what)
    stack: int | None = None

    def __repr__(self) -> str:
        regions = ", ".join(f"({gpa:#x}, {size:#x}, {what!r})" for gpa, size, what in self.regions)
        stack = "None" if self.stack is None else f"{self.stack:#x}"
        registers = {name: f"{value:#x}" for name, value in self.registers.items()}
        return (f"BootImage(format={self.format!r}, mode={self.mode!r}, entry={self.entry:#x}, "
                f"registers={registers}, regions=[{regions}], stack={stack})")

    def create_vcpu(self, partition: Partition, **kwargs: Any) -> VCpu:
        """The boot vCPU, in the state the format promises its image."""
        if self.stack is not None:
            kwargs.setdefault("stack", self.stack)
        cpu = partition.create_vcpu(mode=self.mode, entry=self.entry, **kwargs)
        logging.getLogger("pyhv").info("boot vCPU: %s mode at %#x", self.mode, self.entry)
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


