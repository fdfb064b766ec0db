"""QEMU's ``pc-testdev``: the ISA test device the KVM unit tests use.

- ports 0xE0-0xE3: a 32-bit register, read and written at any width and offset (little-endian
  bytes of one word);
- ports 0xE8-0xEB: the same register, byte by byte (wider accesses are split into bytes);
- port 0xE4: a 32-bit write of a guest-physical address "flushes" that page (QEMU drops the
  host mapping so KVM must fault it in again; pyhv checks the address and accepts it: the
  page's contents are unchanged either way); reads 0;
- ports 0x2000-0x2017: byte writes drive interrupt lines 0-23 (GSIs, so line 0 is the PIT's
  line, routed as the PC routes it), reads 0;
- MMIO 0xFF000000-0xFF00FFFF: 64 KiB of plain device memory (every access exits, so
  instruction emulation on MMIO is exercised).

>>> import pyhv
>>> with pyhv.Partition(memory="1M") as part:
...     dev = part.attach(PcTestdev())
...     dev.ioport_write(0xE1, 1, 0xAB)
...     hex(dev.ioport_read(0xE0, 4)), hex(dev.ioport_read(0xE9, 1))
('0xab00', '0xab')
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ..errors import HypervisorError, InvalidArgument
from .base import Device

if TYPE_CHECKING:
    from .host import DeviceHost

log = logging.getLogger("pyhv")

IOPORT, FLUSH, IOPORT_BYTE, IRQ_LINES = 0xE0, 0xE4, 0xE8, 0x2000
IRQ_COUNT = 24
IOMEM, IOMEM_SIZE = 0xFF000000, 0x10000


class PcTestdev(Device):
    """See the module docstring; ``iomem=False`` leaves out the MMIO region."""

    name = "pc-testdev"

    def __init__(self, iomem: bool = True) -> None:
        self.data = 0                           # the 32-bit register
        self.memory = bytearray(IOMEM_SIZE)
        self.iomem = iomem
        self.flushed: list[int] = []            # pages flushed (the last few, for tests)

    def attach(self, partition: DeviceHost) -> None:
        super().attach(partition)
        done: list[Any] = []
        try:        # all or nothing: a second pc-testdev (say) leaves no half of itself
            for ports, read, write in (
                    (range(IOPORT, IOPORT + 4), self.ioport_read, self.ioport_write),
                    (range(FLUSH, FLUSH + 4), lambda p, s: 0, self._flush),
                    (range(IOPORT_BYTE, IOPORT_BYTE + 4), self.ioport_read, self.ioport_write),
                    (range(IRQ_LINES, IRQ_LINES + IRQ_COUNT), lambda p, s: 0, self._irq_line)):
                done.append(partition.add_io_handler(ports, read=read, write=write))
            if self.iomem:
                done.append(partition.add_mmio_handler(IOMEM, IOMEM_SIZE, read=self._iomem_read,
                                                       write=self._iomem_write))
        except HypervisorError as exc:
            for handler in done:
                partition.remove_handler(handler)
            raise InvalidArgument(f"pc-testdev: {exc} (is another device there?)") from None

    # the register: an access at port p of n bytes covers bytes p%4 .. p%4+n-1 (bytes past
    # the word are dropped, as a 32-bit register has no more)
    def ioport_read(self, port: int, size: int) -> int:
        shift = (port & 3) * 8
        return (self.data >> shift) & ((1 << 8 * size) - 1)

    def ioport_write(self, port: int, size: int, value: int) -> None:
        shift = (port & 3) * 8
        mask = ((1 << 8 * size) - 1) << shift & 0xFFFFFFFF
        self.data = (self.data & ~mask | (value << shift) & mask) & 0xFFFFFFFF

    def _flush(self, port: int, size: int, value: int) -> None:
        if port != FLUSH or size != 4:
            return                              # QEMU takes 32-bit writes only
        page = value & ~0xFFF
        self.flushed = (self.flushed + [page])[-16:]

    def _irq_line(self, port: int, size: int, value: int) -> None:
        if size != 1:
            return                              # byte accesses only, as QEMU's
        part = self.partition
        if part.irqchip:
            part.set_irq(port - IRQ_LINES, bool(value))
        else:
            log.info("pc-testdev: IRQ line %d set without an irqchip", port - IRQ_LINES)

    def _iomem_read(self, gpa: int, size: int) -> int:
        offset = gpa - IOMEM
        return int.from_bytes(self.memory[offset:offset + size].ljust(size, b"\0"), "little")

    def _iomem_write(self, gpa: int, size: int, value: int) -> None:
        offset = gpa - IOMEM
        end = min(offset + size, IOMEM_SIZE)
        self.memory[offset:end] = value.to_bytes(size, "little")[:end - offset]

    def get_state(self) -> dict[str, Any]:
        return {"data": self.data, "iomem": self.memory.hex()}

    def set_state(self, state: dict[str, Any]) -> None:
        self.data = int(state["data"]) & 0xFFFFFFFF
        memory = bytes.fromhex(state.get("iomem", ""))
        if len(memory) == IOMEM_SIZE:
            self.memory[:] = memory
