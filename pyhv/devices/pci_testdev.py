"""QEMU's ``pci-testdev`` (1b36:0005): tests of port-IO and MMIO writes, with and without
ioeventfd, as the KVM unit tests (and their ``vmexit`` benchmarks) drive it.

BAR 0 is 4 KiB of memory, BAR 1 256 ports; both serve the same six tests.  Writing test
number ``t`` (0-2) to offset 0 of a BAR starts test ``t`` of that BAR's kind (mmio tests 0-2,
portio tests 3-5: "no-eventfd", "wildcard-eventfd", "datamatch-eventfd"); reads then return
the test's header byte by byte::

    0  u8  test      1  u8  width (1)     4  u32 offset     8  u8 data     12  u32 count
    16 name, NUL-terminated ("mmio-no-eventfd", ...)

A write of ``width`` bytes at ``offset`` (and, for the data-matching tests, with value
``data``) counts in ``count``.  The two eventfd tests attach a doorbell (KVM's ioeventfd) to
that address while they run, so those writes complete in the kernel and ``count`` stays 0, as
with QEMU on KVM; a guest treats either 0 or the number it wrote as a pass.

>>> dev = PciTestdev()
>>> dev.mmio_write(0, 1, 2)                 # start mmio test 2 (no partition: no doorbell)
>>> bytes(dev.mmio_read(16 + i, 1) for i in range(22)).rstrip(b"\\0")
b'mmio-datamatch-eventfd'
>>> hex(dev.mmio_read(4, 4)), hex(dev.mmio_read(8, 1))
('0x802', '0xfa')
"""

from __future__ import annotations

import logging
import struct
from typing import Any

from ..errors import HypervisorError
from .pci import Bar, PciDevice

log = logging.getLogger("pyhv")

TESTS = ("no-eventfd", "wildcard-eventfd", "datamatch-eventfd")
KINDS = ("mmio", "portio")
DATAMATCH, NOMATCH = 0xFA, 0xCE
IOSIZE, MEMSIZE = 128, 2048
HEADER = struct.Struct("<BBxxIBxxxI")        # test, width, offset, data, count


class PciTestdev(PciDevice):
    """See the module docstring."""

    vendor_id, device_id, class_code, revision = 0x1B36, 0x0005, 0xFF0000, 0x00
    name = "pci-testdev"

    def __init__(self) -> None:
        super().__init__([Bar("mem", MEMSIZE * 2, self.mmio_read, self.mmio_write),
                          Bar("io", IOSIZE * 2, self.pio_read, self.pio_write)])
        self.current = -1                    # the running test (0-5), -1 none
        self.counts = [0] * (len(TESTS) * len(KINDS))
        self._doorbell: Any = None

    @staticmethod
    def offset(test: int) -> int:
        """Where test ``test`` counts writes (QEMU: its region's size plus its number)."""
        return (MEMSIZE if test < len(TESTS) else IOSIZE) + test

    @staticmethod
    def match(test: int) -> bool:
        return TESTS[test % len(TESTS)] != "wildcard-eventfd"

    def header(self, test: int) -> bytes:
        name = f"{KINDS[test // len(TESTS)]}-{TESTS[test % len(TESTS)]}".encode()
        return HEADER.pack(test, 1, self.offset(test), DATAMATCH if self.match(test)
                           else NOMATCH, self.counts[test]) + name + b"\0"

    # -- the registers ----------------------------------------------------------------------
    def _read(self, offset: int, size: int) -> int:
        # QEMU serves these one byte at a time: a wider access reads consecutive header bytes
        if self.current < 0:
            return 0
        data = self.header(self.current)
        return int.from_bytes(bytes(data[offset + i] if offset + i + 1 < len(data) else 0
                                    for i in range(size)), "little")

    def _write(self, kind: int, offset: int, size: int, value: int) -> None:
        for i in range(size):                 # one byte at a time, as QEMU's device
            self._write_byte(kind, offset + i, value >> (8 * i) & 0xFF)

    def _write_byte(self, kind: int, offset: int, value: int) -> None:
        if offset == 0:
            self._stop()
            if value < len(TESTS):
                self._start(kind * len(TESTS) + value)
            return
        test = self.current
        if test < 0 or offset != self.offset(test):
            return
        if self.match(test) and value != DATAMATCH:
            return
        self.counts[test] = (self.counts[test] + 1) & 0xFFFFFFFF

    def _start(self, test: int) -> None:
        self.counts[test] = 0
        self.current = test
        host = getattr(self, "partition", None)
        if TESTS[test % len(TESTS)] == "no-eventfd" or host is None:
            return
        bar = 0 if test < len(TESTS) else 1
        if not self._decoding(bar):
            return
        address = self.bar_address(bar) + self.offset(test)
        try:
            self._doorbell = host.add_doorbell(address, 1, io=bar == 1,
                                               value=DATAMATCH if self.match(test) else None)
        except HypervisorError as exc:        # no ioeventfd here: the device counts instead
            log.info("pci-testdev: no doorbell for test %d (%s)", test, exc)

    def _stop(self) -> None:
        if self._doorbell is not None:
            self._doorbell.close()
            self._doorbell = None
        self.current = -1

    def _decoding(self, bar: int) -> bool:
        command = self.config[0x04]
        return bool(command & (0x2 if bar == 0 else 0x1)) and self.bar_address(bar) != 0

    def remap(self) -> None:
        if getattr(self, "_doorbell", None) is not None:
            self._stop()                      # its address moves: the test ends, as a reset
        super().remap()

    def mmio_read(self, offset: int, size: int) -> int:
        return self._read(offset, size)

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        self._write(0, offset, size, value)

    def pio_read(self, offset: int, size: int) -> int:
        return self._read(offset, size)

    def pio_write(self, offset: int, size: int, value: int) -> None:
        self._write(1, offset, size, value)

    def get_state(self) -> dict[str, Any]:
        return super().get_state() | {"current": self.current, "counts": list(self.counts)}

    def set_state(self, state: dict[str, Any]) -> None:
        super().set_state(state)
        self._stop()
        counts = [int(c) & 0xFFFFFFFF for c in state.get("counts", [])]
        if len(counts) == len(self.counts):
            self.counts = counts
        current = int(state.get("current", -1))
        if 0 <= current < len(self.counts):
            saved = self.counts[current]
            self._start(current)
            self.counts[current] = saved
