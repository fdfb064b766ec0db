"""ACPI for a PC: the tables firmware leaves in memory, and the PM registers they describe.

:func:`build_tables` lays out RSDP (in the BIOS area, where the standard scan of
0xE0000-0xFFFFF finds it), RSDT, XSDT, FADT, FACS, MADT and a minimal DSDT, with their
checksums; :class:`PowerManagement` is the register block the FADT points at (QEMU's PIIX4
layout): PM1a event (0x600), PM1a control (0x604), the PM timer (0x608, 3.579545 MHz), GPE0
(0xAFE0) and the SMI command port (0xB2) that switches ACPI mode on.  Writing SLP_EN to PM1a
control with SLP_TYP 1 suspends to S3, with SLP_TYP 0 powers off (S5), as the DSDT's ``_S3`` and
``_S5`` say; the run then ends with a :class:`pyhv.exits.SystemEvent` ("suspend" or
"shutdown") that :class:`pyhv.machines.PC` acts on.

>>> tables = build_tables(cpus=2, base=0xE0000)
>>> sorted(tables.addresses)
['APIC', 'DSDT', 'FACP', 'FACS', 'RSD PTR ', 'RSDT', 'XSDT']
>>> hex(tables.addresses["RSD PTR "]), [len(t) for t in map(tables.table, ("RSDT", "XSDT"))]
('0xf0000', [44, 52])
>>> all(checksum_ok(tables.table(name)) for name in ("RSDT", "XSDT", "FACP", "APIC", "DSDT"))
True
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..core.buses import EndRun
from ..errors import InvalidArgument
from ..exits import SystemEvent
from .base import Device

if TYPE_CHECKING:
    from .host import DeviceHost

PM_BASE = 0x600
PM1A_EVT, PM1A_CNT, PM_TMR = PM_BASE, PM_BASE + 4, PM_BASE + 8
GPE0, GPE0_LEN = 0xAFE0, 4
SMI_CMD, ACPI_ENABLE, ACPI_DISABLE = 0xB2, 0xF1, 0xF0
SCI_IRQ = 9
PM_TIMER_HZ = 3579545
LAPIC_ADDRESS, IOAPIC_ADDRESS = 0xFEE00000, 0xFEC00000
RESET_PORT, RESET_VALUE = 0xCF9, 0x06
RTC_CENTURY = 0x32
OEM_ID, OEM_TABLE_ID, CREATOR = b"PYHV  ", b"PYHVPC  ", b"PYHV"
# PM1 status / enable bits, PM1 control bits
TMR_STS, RTC_STS, WAK_STS = 1 << 0, 1 << 10, 1 << 15
STS_WRITABLE = 0x8731           # TMR, BM, GBL, PWRBTN, SLPBTN, RTC, WAK: write 1 to clear
EN_WRITABLE = 0x0721            # TMR, GBL, PWRBTN, SLPBTN, RTC
RTC_EN = 1 << 10
SCI_EN, SLP_EN = 1 << 0, 1 << 13
SLP_TYP_SHIFT, SLP_TYP_MASK = 10, 0x7
S3_TYPE, S5_TYPE = 1, 0          # the values the DSDT's _S3 and _S5 give SLP_TYP
# MADT interrupt source overrides as QEMU's pc machine has them: the PIT's IRQ 0 on GSI 2,
# and the PCI/SCI IRQs 5, 9, 10, 11 level-triggered, active high
OVERRIDES = ((0, 2, 0x0000), (5, 5, 0x000D), (9, 9, 0x000D), (10, 10, 0x000D), (11, 11, 0x000D))
SYSTEM_EVENT_SHUTDOWN, SYSTEM_EVENT_SUSPEND = 1, 5      # KVM's numbers, as exits name them


def checksum(data: bytes | bytearray) -> int:
    """The byte that makes ``data`` sum to 0 mod 256."""
    return -sum(data) & 0xFF


def checksum_ok(data: bytes | bytearray) -> bool:
    return sum(data) & 0xFF == 0


def _header(signature: bytes, body: bytes, revision: int) -> bytes:
    """A system description table: the 36-byte header (checksum filled in) and ``body``."""
    length = 36 + len(body)
    raw = bytearray(struct.pack("<4sIBB6s8sI4sI", signature, length, revision, 0, OEM_ID,
                                OEM_TABLE_ID, 1, CREATOR, 1) + body)
    raw[9] = checksum(raw)
    return bytes(raw)


def _gas(space: int, width: int, address: int, access: int = 0) -> bytes:
    """A Generic Address Structure (space 1: system IO)."""
    return struct.pack("<BBBBQ", space, width, 0, access, address)


def _aml_name_package(name: bytes, values: tuple[int, ...]) -> bytes:
    """AML for ``Name(NAME, Package() {values...})`` (values 0 or 1, ZeroOp / OneOp)."""
    elements = bytes(values)
    body = bytes([len(values)]) + elements
    return b"\x08" + name + b"\x12" + bytes([len(body) + 1]) + body


def dsdt_body() -> bytes:
    """The sleep-state objects: ``_S3`` (SLP_TYP 1) and ``_S5`` (SLP_TYP 0), as QEMU's."""
    return (_aml_name_package(b"_S3_", (S3_TYPE, S3_TYPE, 0, 0)) +
            _aml_name_package(b"_S5_", (S5_TYPE, S5_TYPE, 0, 0)))


def fadt_body(facs: int, dsdt: int, timer_32bit: bool = False) -> bytes:
    """FADT revision 3 (ACPI 2.0), as a PIIX4 machine's."""
    flags = (1 << 0) | (1 << 2) | (1 << 5) | (1 << 7) | (1 << 10) | (1 << 15)
    # WBINVD, PROC_C1, SLP_BUTTON (none), RTC_S4, RESET_REG_SUP, USE_PLATFORM_CLOCK
    if timer_32bit:
        flags |= 1 << 8                                  # TMR_VAL_EXT
    body = struct.pack(
        "<IIBBHIBBBBIIIIIIIIBBBBBBBBHHHHBBBBBHBI",
        facs, dsdt, 0, 0, SCI_IRQ, SMI_CMD, ACPI_ENABLE, ACPI_DISABLE, 0, 0,
        PM1A_EVT, 0, PM1A_CNT, 0, 0, PM_TMR, GPE0, 0,
        4, 2, 0, 4, GPE0_LEN, 0, 0, 0,
        0xFFF, 0xFFFF,                                   # C2, C3 latencies: not supported
        0, 0, 0, 0, 0, 0, RTC_CENTURY,
        0x0003,                                          # IAPC_BOOT_ARCH: legacy devices, 8042
        0, flags)
    body += _gas(1, 8, RESET_PORT) + bytes([RESET_VALUE]) + bytes(3)
    body += struct.pack("<QQ", facs, dsdt)
    body += (_gas(1, 32, PM1A_EVT) + _gas(0, 0, 0) + _gas(1, 16, PM1A_CNT) + _gas(0, 0, 0) +
             _gas(0, 0, 0) + _gas(1, 32, PM_TMR) + _gas(1, GPE0_LEN * 8, GPE0) + _gas(0, 0, 0))
    return body


def facs_image() -> bytes:
    """FACS version 2: 64 bytes, waking vectors 0 until the OS writes them."""
    return struct.pack("<4sIIIIIQB3xI24x", b"FACS", 64, 0, 0, 0, 0, 0, 2, 0)


def madt_body(apic_ids: list[int], ioapic_id: int = 0) -> bytes:
    """MADT: the local APIC address and PC-AT compatibility, one processor entry per vCPU
    (x2APIC entries for IDs of 255 and up), the I/O APIC, QEMU's interrupt source overrides
    and LINT1 as NMI on every processor."""
    body = bytearray(struct.pack("<II", LAPIC_ADDRESS, 1))
    for uid, apic_id in enumerate(apic_ids):
        if apic_id < 255:
            body += struct.pack("<BBBBI", 0, 8, uid, apic_id, 1)
        else:
            body += struct.pack("<BBHIII", 9, 16, 0, apic_id, 1, uid)
    body += struct.pack("<BBBBII", 1, 12, ioapic_id, 0, IOAPIC_ADDRESS, 0)
    for source, gsi, flags in OVERRIDES:
        body += struct.pack("<BBBBIH", 2, 10, 0, source, gsi, flags)
    body += struct.pack("<BBBHB", 4, 6, 0xFF, 0, 1)
    if any(i >= 255 for i in apic_ids):
        body += struct.pack("<BBHIB3x", 0xA, 12, 0, 0xFFFFFFFF, 1)
    return bytes(body)


@dataclass
class AcpiTables:
    """The tables laid out from ``base``: the bytes (``image``) and where each one is."""

    base: int
    image: bytes
    addresses: dict[str, int] = field(default_factory=dict)

    def offset(self, signature: str) -> int:
        return self.addresses[signature] - self.base

    def table(self, signature: str) -> bytes:
        """One table's bytes, as long as its length field says (the RSDP: its 36 bytes)."""
        at = self.offset(signature)
        length_at = 20 if signature == "RSD PTR " else 4
        length = struct.unpack_from("<I", self.image, at + length_at)[0]
        return self.image[at:at + length]

    def ranges(self) -> list[tuple[int, int]]:
        """The guest-physical ``[start, end)`` ranges the tables occupy (the padding between
        the last table and the RSDP is free for an image's use)."""
        spans = sorted((at, at + len(self.table(name))) for name, at in self.addresses.items())
        merged: list[tuple[int, int]] = []
        for start, end in spans:
            if merged and start <= merged[-1][1] + 64:        # alignment gaps: one range
                merged[-1] = (merged[-1][0], max(merged[-1][1], end))
            else:
                merged.append((start, end))
        return merged


RSDP_ADDRESS = 0xF0000           # 16-byte aligned, inside the scan of 0xE0000-0xFFFFF


def build_tables(cpus: int, base: int = 0xE0000, timer_32bit: bool = False) -> AcpiTables:
    """The tables for a PC with ``cpus`` vCPUs (APIC IDs 0..cpus-1), from ``base`` up (the
    RSDP at 0xF0000), all below 1 MiB."""
    if not 1 <= cpus <= 4096:
        raise InvalidArgument(f"ACPI tables for {cpus} vCPUs: 1..4096")
    if not 0xE0000 <= base < RSDP_ADDRESS or base % 64:
        raise InvalidArgument(f"ACPI tables base {base:#x}: 64-byte aligned in 0xE0000-0xEFFFF")
    out = bytearray()
    addresses: dict[str, int] = {}

    def place(name: str, data: bytes, align: int = 16) -> int:
        out.extend(bytes(-len(out) % align))
        at = base + len(out)
        if at + len(data) > RSDP_ADDRESS:
            raise InvalidArgument(f"ACPI tables for {cpus} vCPUs do not fit below "
                                  f"{RSDP_ADDRESS:#x}")
        addresses[name] = at
        out.extend(data)
        return at

    facs = place("FACS", facs_image(), 64)
    dsdt = place("DSDT", _header(b"DSDT", dsdt_body(), 1))
    fadt = place("FACP", _header(b"FACP", fadt_body(facs, dsdt, timer_32bit), 3))
    madt = place("APIC", _header(b"APIC", madt_body(list(range(cpus))), 1))
    entries = [fadt, madt]
    rsdt = place("RSDT", _header(b"RSDT", struct.pack(f"<{len(entries)}I", *entries), 1))
    xsdt = place("XSDT", _header(b"XSDT", struct.pack(f"<{len(entries)}Q", *entries), 1))
    out.extend(bytes(RSDP_ADDRESS - base - len(out)))
    rsdp = bytearray(struct.pack("<8sB6sBIIQB3x", b"RSD PTR ", 0, OEM_ID, 2, rsdt, 36, xsdt,
                                 0))
    rsdp[8] = checksum(rsdp[:20])
    rsdp[32] = checksum(rsdp)
    addresses["RSD PTR "] = RSDP_ADDRESS
    out.extend(rsdp)
    return AcpiTables(base, bytes(out), addresses)


# -- the PM registers -------------------------------------------------------------------------
class PowerManagement(Device):
    """The ACPI register block of a PIIX4 (see the module docstring).

    The PM timer counts at 3.579545 MHz from the device's creation, 24 bits wide (QEMU's; 32
    with ``timer_32bit``); its status bit is kept as the timer's top bit toggles, but it
    raises no SCI.  ``clock`` gives nanoseconds (tests pass a fake).
    """

    name = "acpi-pm"

    def __init__(self, timer_32bit: bool = False,
                 clock: Callable[[], int] = time.monotonic_ns) -> None:
        self.timer_32bit = timer_32bit
        self.clock = clock
        self.epoch = clock()
        self.status = 0
        self.enable = 0
        self.control = 0
        self.gpe = bytearray(GPE0_LEN)
        self.sleep_type: int | None = None     # the SLP_TYP of the last sleep request
        self._timer_top = 0                    # the top bit at the last status read
        self._lock = threading.Lock()

    def attach(self, partition: DeviceHost) -> None:
        super().attach(partition)
        partition.add_io_handler(range(PM1A_EVT, PM1A_EVT + 4), read=self._evt_read,
                                 write=self._evt_write)
        partition.add_io_handler(range(PM1A_CNT, PM1A_CNT + 2), read=self._cnt_read,
                                 write=self._cnt_write)
        partition.add_io_handler(range(PM_TMR, PM_TMR + 4), read=self._timer_read)
        partition.add_io_handler(range(GPE0, GPE0 + GPE0_LEN), read=self._gpe_read,
                                 write=self._gpe_write)
        partition.add_io_handler(SMI_CMD, read=lambda p, s: 0, write=self._smi_command)

    # -- the timer ---------------------------------------------------------------------------
    def ticks(self) -> int:
        """The PM timer's count now (its full width)."""
        elapsed = self.clock() - self.epoch
        return elapsed * PM_TIMER_HZ // 1_000_000_000 & (0xFFFFFFFF if self.timer_32bit
                                                         else 0xFFFFFF)

    def _timer_read(self, port: int, size: int) -> int:
        value = self.ticks()
        shift = (port - PM_TMR) * 8
        return value >> shift & ((1 << 8 * size) - 1)

    def _timer_status(self) -> None:
        top = self.ticks() >> (31 if self.timer_32bit else 23) & 1
        if top != self._timer_top:
            self.status |= TMR_STS
            self._timer_top = top

    # -- PM1 event and control ---------------------------------------------------------------
    def _evt_read(self, port: int, size: int) -> int:
        with self._lock:
            self._timer_status()
            word = self.status | self.enable << 16
        shift = (port - PM1A_EVT) * 8
        return word >> shift & ((1 << 8 * size) - 1)

    def _evt_write(self, port: int, size: int, value: int) -> None:
        shift = (port - PM1A_EVT) * 8
        word = value << shift & 0xFFFFFFFF
        touched = ((1 << 8 * size) - 1) << shift & 0xFFFFFFFF
        with self._lock:
            if touched & 0xFFFF:
                self.status &= ~(word & STS_WRITABLE)
            if touched >> 16:
                keep = self.enable & ~(touched >> 16)
                self.enable = keep | (word >> 16 & EN_WRITABLE & touched >> 16)

    def _cnt_read(self, port: int, size: int) -> int:
        value = self.control & ~SLP_EN
        return value >> (port - PM1A_CNT) * 8 & ((1 << 8 * size) - 1)

    def _cnt_write(self, port: int, size: int, value: int) -> None:
        shift = (port - PM1A_CNT) * 8
        touched = ((1 << 8 * size) - 1) << shift & 0xFFFF
        value = value << shift & touched
        with self._lock:
            self.control = (self.control & ~touched) | (value & ~SLP_EN & 0x3C07)
        if value & SLP_EN:
            kind = value >> SLP_TYP_SHIFT & SLP_TYP_MASK
            if kind == S3_TYPE:
                self.sleep_type = kind
                raise EndRun(SystemEvent(SYSTEM_EVENT_SUSPEND, (kind,)))
            if kind == S5_TYPE:
                self.sleep_type = kind
                raise EndRun(SystemEvent(SYSTEM_EVENT_SHUTDOWN, (kind,)))
            # other sleep types have no _Sx object in the DSDT: nothing happens

    def _smi_command(self, port: int, size: int, value: int) -> None:
        value &= 0xFF
        with self._lock:
            if value == ACPI_ENABLE:
                self.control |= SCI_EN
            elif value == ACPI_DISABLE:
                self.control &= ~SCI_EN

    def _gpe_read(self, port: int, size: int) -> int:
        at = port - GPE0
        return int.from_bytes(self.gpe[at:at + size].ljust(size, b"\0"), "little")

    def _gpe_write(self, port: int, size: int, value: int) -> None:
        for i in range(size):
            at = port - GPE0 + i
            if at >= GPE0_LEN:
                break
            byte = value >> 8 * i & 0xFF
            if at < GPE0_LEN // 2:
                self.gpe[at] &= ~byte               # status: write 1 to clear
            else:
                self.gpe[at] = byte                 # enable

    # -- waking (the machine calls these around an S3 suspend) ---------------------------------
    @property
    def rtc_wake_enabled(self) -> bool:
        return bool(self.enable & RTC_EN)

    def woke(self, by_rtc: bool) -> None:
        """Resume from S3: WAK_STS (and RTC_STS when the RTC alarm woke the machine)."""
        with self._lock:
            self.status |= WAK_STS | (RTC_STS if by_rtc else 0)
            self.sleep_type = None

    def get_state(self) -> dict[str, Any]:
        return {"status": self.status, "enable": self.enable, "control": self.control,
                "gpe": self.gpe.hex(), "ticks": self.ticks()}

    def set_state(self, state: dict[str, Any]) -> None:
        with self._lock:
            self.status = int(state["status"]) & 0xFFFF
            self.enable = int(state["enable"]) & EN_WRITABLE
            self.control = int(state["control"]) & 0x3C07
            gpe = bytes.fromhex(state["gpe"])
            if len(gpe) == GPE0_LEN:
                self.gpe[:] = gpe
            # the timer goes on from where it was
            ticks = int(state.get("ticks", 0))
            self.epoch = self.clock() - ticks * 1_000_000_000 // PM_TIMER_HZ
