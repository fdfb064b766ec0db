"""QEMU's educational PCI device ``edu`` (1234:11e8, revision 0x10): the registers and
behaviour of QEMU's, so drivers written against it work here.

BAR 0 is 1 MiB of memory; registers (32-bit accesses below 0x80, 32- or 64-bit from 0x80;
other widths read all ones and write nothing):

- 0x00 (RO) identification 0x010000ed; 0x04 (RW) liveness: reads back the inverse of what was
  written;
- 0x08 (RW) factorial: writing N computes N! (32-bit, wrapping) while 0x20 bit 0 is set;
  0x20 (RW) status: bit 0 "computing" (read-only), bit 7 "raise an interrupt when done";
- 0x24 (RO) interrupt status; 0x60 (WO) raise these interrupt status bits; 0x64 (WO)
  acknowledge (clear) them; the interrupt is INTA, or the MSI when the guest enabled it;
- 0x80 DMA source, 0x88 DMA destination, 0x90 DMA count, 0x98 DMA command (bit 0 start,
  bit 1 direction: 0 RAM to the device's buffer, 1 the buffer to RAM, bit 2 raise interrupt
  0x100 when done).  The device's 4 KiB buffer sits at device address 0x40000; addresses in
  RAM are masked to 28 bits, as QEMU's ``dma_mask``.

Unlike QEMU (which finishes the factorial on a thread and the DMA 100 ms later), pyhv
completes both before the guest's next instruction; a guest that polls the status or command
register as it should sees them done.  A DMA outside the device buffer or outside guest RAM
is refused (nothing is copied; QEMU only logs it), and needs bus mastering on, as on a real bus.

>>> dev = Edu()
>>> dev.mmio_write(0x04, 4, 0x12345678)
>>> hex(dev.mmio_read(0x00, 4)), hex(dev.mmio_read(0x04, 4)), hex(dev.mmio_read(0x02, 2))
('0x10000ed', '0xedcba987', '0xffff')
>>> dev.mmio_write(0x08, 4, 10)
>>> dev.mmio_read(0x08, 4), dev.mmio_read(0x20, 4) & 1
(3628800, 0)
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from .pci import Bar, PciDevice

log = logging.getLogger("pyhv")

IDENT = 0x010000ED
STATUS_COMPUTING, STATUS_IRQFACT = 0x01, 0x80
FACT_IRQ, DMA_IRQ = 0x001, 0x100
DMA_START, DMA_SIZE = 0x40000, 4096
DMA_RUN, DMA_TO_RAM, DMA_IRQ_CMD = 0x1, 0x2, 0x4
DMA_MASK = (1 << 28) - 1
MMIO_SIZE = 1 << 20


class Edu(PciDevice):
    """See the module docstring."""

    vendor_id, device_id, class_code, revision = 0x1234, 0x11E8, 0xFF0000, 0x10
    name = "edu"

    def __init__(self, dma_mask: int = DMA_MASK) -> None:
        super().__init__([Bar("mem", MMIO_SIZE, self.mmio_read, self.mmio_write)],
                         interrupt_pin=1)
        self.add_msi_capability()
        self.dma_mask = dma_mask
        self.addr4 = 0
        self.fact = 0
        self.status = 0
        self.irq_status = 0
        self.dma = {"src": 0, "dst": 0, "cnt": 0, "cmd": 0}
        self.buffer = bytearray(DMA_SIZE)
        self.refused_dma = 0                  # DMAs refused for bad bounds (for tests)
        self._edu_lock = threading.RLock()

    # -- registers --------------------------------------------------------------------------
    def mmio_read(self, offset: int, size: int) -> int:
        if (offset < 0x80 and size != 4) or (offset >= 0x80 and size not in (4, 8)):
            return (1 << 8 * size) - 1
        with self._edu_lock:
            value = {0x00: IDENT, 0x04: self.addr4, 0x08: self.fact, 0x20: self.status,
                     0x24: self.irq_status, 0x80: self.dma["src"], 0x88: self.dma["dst"],
                     0x90: self.dma["cnt"], 0x98: self.dma["cmd"]}.get(offset)
        if value is None:
            return (1 << 8 * size) - 1
        return value & ((1 << 8 * size) - 1)

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        if (offset < 0x80 and size != 4) or (offset >= 0x80 and size not in (4, 8)):
            return
        with self._edu_lock:
            if offset == 0x04:
                self.addr4 = ~value & 0xFFFFFFFF
            elif offset == 0x08:
                if not self.status & STATUS_COMPUTING:
                    self._factorial(value & 0xFFFFFFFF)
            elif offset == 0x20:
                self.status = (self.status & ~STATUS_IRQFACT) | (value & STATUS_IRQFACT)
            elif offset == 0x60:
                self.raise_irq(value & 0xFFFFFFFF)
            elif offset == 0x64:
                self.lower_irq(value & 0xFFFFFFFF)
            elif offset in (0x80, 0x88, 0x90):
                if not self.dma["cmd"] & DMA_RUN:
                    self.dma[{0x80: "src", 0x88: "dst", 0x90: "cnt"}[offset]] = value
            elif offset == 0x98 and value & DMA_RUN and not self.dma["cmd"] & DMA_RUN:
                self.dma["cmd"] = value
                self._dma()

    def _factorial(self, n: int) -> None:
        self.status |= STATUS_COMPUTING
        result = 1
        for k in range(2, n + 1):              # 32-bit wrap, as the device's arithmetic;
            result = result * k & 0xFFFFFFFF   # past 33! every product is 0 mod 2**32
            if result == 0:
                break
        self.fact = result
        self.status &= ~STATUS_COMPUTING
        if self.status & STATUS_IRQFACT:
            self.raise_irq(FACT_IRQ)

    def _dma(self) -> None:
        src, dst, cnt, cmd = (self.dma[k] for k in ("src", "dst", "cnt", "cmd"))
        to_ram = bool(cmd & DMA_TO_RAM)
        device_at = src if to_ram else dst
        ram_at = (dst if to_ram else src) & self.dma_mask
        memory = self.partition.memory if hasattr(self, "partition") else None
        ok = (DMA_START <= device_at and device_at + cnt <= DMA_START + DMA_SIZE and
              memory is not None and self.bus_master and memory.is_ram(ram_at, max(cnt, 1)))
        if not ok:
            self.refused_dma += 1
            log.info("edu: DMA %s of %#x bytes at %#x refused (outside the buffer, guest RAM "
                     "or with bus mastering off)", "to RAM" if to_ram else "from RAM", cnt,
                     ram_at)
        elif cnt:
            at = device_at - DMA_START
            assert memory is not None
            if to_ram:
                memory.write(ram_at, bytes(self.buffer[at:at + cnt]))
            else:
                self.buffer[at:at + cnt] = memory.read(ram_at, cnt)
        self.dma["cmd"] &= ~DMA_RUN
        if cmd & DMA_IRQ_CMD:
            self.raise_irq(DMA_IRQ)

    # -- the interrupt ----------------------------------------------------------------------
    def raise_irq(self, bits: int) -> None:
        self.irq_status |= bits
        if not self.irq_status or not hasattr(self, "partition"):
            return
        if self.msi_enabled:
            self.notify_msi()
        else:
            self.set_intx(True)

    def lower_irq(self, bits: int) -> None:
        self.irq_status &= ~bits
        if not self.irq_status and not self.msi_enabled:
            self.set_intx(False)

    def get_state(self) -> dict[str, Any]:
        return super().get_state() | {
            "addr4": self.addr4, "fact": self.fact, "status": self.status,
            "irq_status": self.irq_status, "dma": dict(self.dma), "buffer": self.buffer.hex()}

    def set_state(self, state: dict[str, Any]) -> None:
        super().set_state(state)
        with self._edu_lock:
            self.addr4 = int(state["addr4"]) & 0xFFFFFFFF
            self.fact = int(state["fact"]) & 0xFFFFFFFF
            self.status = int(state["status"]) & STATUS_IRQFACT
            self.irq_status = int(state["irq_status"]) & 0xFFFFFFFF
            self.dma = {k: int(state["dma"][k]) & (1 << 64) - 1 for k in self.dma}
            buffer = bytes.fromhex(state["buffer"])
            if len(buffer) == DMA_SIZE:
                self.buffer[:] = buffer
