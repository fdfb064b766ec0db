"""QEMU's fw_cfg, legacy port interface: a 16-bit selector at 0x510, data bytes at 0x511.

Items: the signature ("QEMU"), the interface ID, RAM size, CPU counts, the file directory,
and any files added with :meth:`FwCfg.add_file` (``etc/...`` style names, as QEMU uses).
Numbers are little-endian, the file directory big-endian, as in QEMU.  Selectors with bit 15
set are QEMU's architecture-specific items (its e820 table, ACPI tables): none is offered, so
they read as empty.  The selected item's bytes are taken once, when it is selected.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

from ..errors import InvalidArgument
from .base import Device

if TYPE_CHECKING:
    from .host import DeviceHost

SELECTOR, DATA = 0x510, 0x511
SIGNATURE, ID, RAM_SIZE, NB_CPUS, MAX_CPUS, FILE_DIR = 0x00, 0x01, 0x03, 0x05, 0x0F, 0x19
FILE_FIRST = 0x20
ARCH_LOCAL, ENTRY_MASK = 0x8000, 0x3FFF    # bit 14 (the write channel) reads as clear
NAME_SIZE = 56


class FwCfg(Device):
    """``ram_size`` and ``cpus`` default to the partition's RAM and vCPU count when attached."""

    name = "fw_cfg"

    def __init__(self, ram_size: int | None = None, cpus: int | None = None) -> None:
        self.ram_size = ram_size
        self.cpus = cpus
        self.files: dict[str, bytes] = {}
        self.selector = 0
        self.offset = 0
        self._data: bytes | None = None   # the selected item's bytes, taken when selected

    def add_file(self, name: str, data: bytes) -> None:
        """Offer ``data`` to the guest as fw_cfg file ``name``."""
        if not name or len(name.encode()) >= NAME_SIZE:
            raise InvalidArgument(f"fw_cfg file name {name!r} is empty or too long")
        if len(self.files) >= 0x4000 - FILE_FIRST:
            raise InvalidArgument("too many fw_cfg files")
        self.files[name] = bytes(data)
        self._data = None

    def attach(self, partition: DeviceHost) -> None:
        super().attach(partition)
        partition.add_io_handler(SELECTOR, write=self._select, read=lambda p, s: self.selector)
        partition.add_io_handler(DATA, read=self._read)

    def _item(self, key: int) -> bytes:
        """The data of item ``key`` (the selector without its write-channel bit); empty for
        architecture-specific items (bit 15, QEMU's e820 table and the like) and unknown
        keys."""
        if key & ARCH_LOCAL:
            return b""
        key &= ENTRY_MASK
        if key >= FILE_FIRST:
            files = list(self.files.values())
            return files[key - FILE_FIRST] if key - FILE_FIRST < len(files) else b""
        part = self.partition
        if key == SIGNATURE:
            return b"QEMU"
        if key == ID:
            return struct.pack("<I", 1)
        if key == RAM_SIZE:
            ram = self.ram_size if self.ram_size is not None else sum(
                s.size for s in part.memory.slots if not s.readonly)
            return struct.pack("<Q", ram)
        if key in (NB_CPUS, MAX_CPUS):
            cpus = self.cpus if self.cpus is not None else max(len(part.vcpus), 1)
            return struct.pack("<H", cpus)
        if key == FILE_DIR:
            return struct.pack(">I", len(self.files)) + b"".join(
                struct.pack(">IHH", len(data), FILE_FIRST + i, 0)
                + name.encode().ljust(NAME_SIZE, b"\0")
                for i, (name, data) in enumerate(self.files.items()))
        return b""

    def _select(self, port: int, size: int, value: int) -> None:
        self.selector = value & 0xFFFF
        self.offset = 0
        self._data = self._item(self.selector)

    def _read(self, port: int, size: int) -> int:
        if self._data is None:                # after set_state or add_file
            self._data = self._item(self.selector)
        out = self._data[self.offset:self.offset + size].ljust(size, b"\0")
        self.offset += size
        return int.from_bytes(out, "little")

    def get_state(self) -> dict[str, Any]:
        return {"selector": self.selector, "offset": self.offset,
                "files": {name: data.hex() for name, data in self.files.items()}}

    def set_state(self, state: dict[str, Any]) -> None:
        self.selector = int(state["selector"]) & 0xFFFF
        self.offset = int(state["offset"])
        self.files = {str(n): bytes.fromhex(d) for n, d in state["files"].items()}
        self._data = None
