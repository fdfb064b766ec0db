"""A PCI bus as a PC has it: configuration mechanism #1 (address at port 0xCF8, data at
0xCFC-0xCFF), an i440FX-like host bridge at 00:00.0, a PIIX3-like ISA bridge at 00:01.0 that
routes INTx through its PIRQ registers, and the devices plugged into slots 2 and up.

>>> from pyhv.devices.pci import PciBus, PciDevice, Bar
>>> bus = PciBus()
>>> class Thing(PciDevice):
...     vendor_id, device_id, class_code = 0x1234, 0x5678, 0xFF0000
...     def __init__(self):
...         super().__init__([Bar("mem", 0x1000, read=lambda off, size: 0)])
>>> slot = bus.plug(Thing())
>>> bus.assign_resources()                 # what firmware does: BARs, IRQ lines, commands
>>> bus.config_read(0, slot, 0, 0x00, 4) == 0x56781234
True
>>> dev = bus.device(0, slot, 0)
>>> bus.config_write(0, slot, 0, 0x10, 4, 0xFFFFFFFF)   # BAR sizing, as an OS does it
>>> hex(bus.config_read(0, slot, 0, 0x10, 4))
'0xfffff000'

Each device has a 256-byte configuration space (type 0 header) with write masks: the command
register, BARs (sized by their natural alignment), the interrupt line, and capability registers
a device opens (MSI).  A BAR is live while its decode bit in the command register is on: the
bus registers its handlers on the partition at the programmed address (an address that would
overlap RAM or another device is left undecoded instead, as a conflict on real hardware).
INTx: a device raises its pin; the bus ORs the pins sharing a PIRQ line ((pin + slot - 1) mod
4, as QEMU's i440FX wires them) and drives the ISA IRQ the PIIX3 routes that PIRQ to.
"""

from __future__ import annotations

import logging
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import HypervisorError, InvalidArgument
from .base import Device

if TYPE_CHECKING:
    from ..core.buses import Handler
    from .host import DeviceHost

log = logging.getLogger("pyhv")

CONFIG_ADDRESS, CONFIG_DATA, RESET_CONTROL = 0xCF8, 0xCFC, 0xCF9
VENDOR, DEVICE, COMMAND, STATUS, REVISION, CLASS = 0x00, 0x02, 0x04, 0x06, 0x08, 0x09
HEADER_TYPE, BAR0, SUBSYSTEM_VENDOR, SUBSYSTEM = 0x0E, 0x10, 0x2C, 0x2E
ROM, CAP_POINTER = 0x30, 0x34
INTERRUPT_LINE, INTERRUPT_PIN = 0x3C, 0x3D
CMD_IO, CMD_MEMORY, CMD_MASTER, CMD_INTX_DISABLE = 0x1, 0x2, 0x4, 0x400
STATUS_INTERRUPT, STATUS_CAP_LIST = 0x08, 0x10
CAP_MSI = 0x05
MSI_ENABLE = 0x0001
SLOTS, FUNCTIONS = 32, 8
# what firmware gives BARs (SeaBIOS-like): IO from 0xC000 up, memory down from below the
# I/O APIC (0xFEC00000), each naturally aligned
IO_WINDOW = (0xC000, 0x10000)
MEMORY_WINDOW = (0xE0000000, 0xFEC00000)
# the ISA IRQs the PIIX3 routes PIRQ A-D to out of reset firmware (SeaBIOS's choice)
PIRQ_DEFAULT = (10, 10, 11, 11)
PIRQ_DISABLED = 0x80

ReadFn = Callable[[int, int], int]
WriteFn = Callable[[int, int, int], None]


@dataclass
class Bar:
    """A base address register: ``kind`` "io" or "mem", ``size`` a power of two (at least 4
    for IO, 16 for memory), and the handlers for accesses inside it, given the offset from
    the BAR's start: ``read(offset, size) -> int``, ``write(offset, size, value)``."""

    kind: str
    size: int
    read: ReadFn | None = None
    write: WriteFn | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("io", "mem"):
            raise InvalidArgument(f"BAR kind {self.kind!r}: choose io or mem")
        smallest = 4 if self.kind == "io" else 16
        largest = 256 if self.kind == "io" else 1 << 31
        if self.size < smallest or self.size > largest or self.size & (self.size - 1):
            raise InvalidArgument(f"{self.kind} BAR of {self.size:#x} bytes: a power of two "
                                  f"in {smallest}..{largest:#x}")


class PciDevice(Device):
    """Base of a PCI function: subclasses set ``vendor_id``, ``device_id``, ``class_code``
    (class, subclass, prog-if as 24 bits), ``revision``, and pass their BARs and interrupt
    pin (0 none, 1-4 INTA-D) to ``__init__``.  ``config`` holds the configuration space."""

    vendor_id = 0xFFFF
    device_id = 0xFFFF
    class_code = 0xFF0000
    revision = 0
    subsystem_vendor_id = 0x1AF4          # what QEMU gives its devices (Red Hat, Qumranet)
    subsystem_id = 0x1100
    header_type = 0
    name = "pci-device"

    def __init__(self, bars: list[Bar] | None = None, interrupt_pin: int = 0) -> None:
        self.bars: list[Bar] = list(bars or [])
        if len(self.bars) > 6:
            raise InvalidArgument("a PCI function has at most 6 BARs")
        if not 0 <= interrupt_pin <= 4:
            raise InvalidArgument(f"interrupt pin {interrupt_pin} is not 0..4")
        self.config = bytearray(256)
        self.wmask = bytearray(256)            # the bits a guest may write
        self.w1c = bytearray(256)              # the bits a guest clears by writing 1
        self.bus: PciBus | None = None
        self.address = (0, 0, 0)               # bus, slot, function once plugged
        self.intx_level = False
        self._cap_end = 0x40                   # where the next capability goes
        self._msi_at = 0
        struct.pack_into("<HH", self.config, VENDOR, self.vendor_id, self.device_id)
        self.config[REVISION] = self.revision
        self.config[CLASS:CLASS + 3] = self.class_code.to_bytes(3, "little")
        self.config[HEADER_TYPE] = self.header_type
        struct.pack_into("<HH", self.config, SUBSYSTEM_VENDOR, self.subsystem_vendor_id,
                         self.subsystem_id)
        self.config[INTERRUPT_PIN] = interrupt_pin
        self._mask(COMMAND, CMD_IO | CMD_MEMORY | CMD_MASTER | 0x40 | 0x100 | CMD_INTX_DISABLE,
                   2)
        struct.pack_into("<H", self.w1c, STATUS, 0xF900)   # error bits: write 1 to clear
        self.config[0x0C] = 0                               # cache line size
        self.wmask[0x0C] = self.wmask[0x0D] = 0xFF          # cache line, latency timer
        self.wmask[INTERRUPT_LINE] = 0xFF
        for i, bar in enumerate(self.bars):
            mask = ~(bar.size - 1) & 0xFFFFFFFF
            struct.pack_into("<I", self.wmask, BAR0 + 4 * i, mask & ~(0x3 if bar.kind == "io"
                                                                      else 0xF))
            self.config[BAR0 + 4 * i] = 0x1 if bar.kind == "io" else 0x0   # 32-bit memory
        self._decoded: list[tuple[int, Handler] | None] = [None] * len(self.bars)
        self._lock = threading.RLock()

    def attach(self, partition: DeviceHost) -> None:
        super().attach(partition)
        self.remap()                           # BARs placed before it was attached

    def _mask(self, offset: int, mask: int, size: int) -> None:
        self.wmask[offset:offset + size] = mask.to_bytes(size, "little")

    # -- capabilities -----------------------------------------------------------------------
    def add_msi_capability(self) -> int:
        """A 64-bit MSI capability with one vector (as QEMU's msi_init gives ``edu``); its
        offset."""
        at = self._cap_end
        self.config[at], self.config[at + 1] = CAP_MSI, self.config[CAP_POINTER]
        self.config[CAP_POINTER] = at
        struct.pack_into("<H", self.config, at + 2, 0x0080)        # 64-bit capable, 1 vector
        self._mask(at + 2, MSI_ENABLE | 0x0070, 2)                  # enable, multiple enable
        self._mask(at + 4, 0xFFFFFFFC, 4)                           # address (dword aligned)
        self._mask(at + 8, 0xFFFFFFFF, 4)                           # upper address
        self._mask(at + 12, 0xFFFF, 2)                              # data
        self.config[STATUS] |= STATUS_CAP_LIST
        self._cap_end = at + 14 + 2
        self._msi_at = at
        return at

    @property
    def msi_enabled(self) -> bool:
        return bool(self._msi_at and self.config[self._msi_at + 2] & MSI_ENABLE)

    def notify_msi(self) -> bool:
        """Send the MSI the guest programmed (only with the capability enabled and bus
        mastering on); whether it was delivered."""
        at = self._msi_at
        if not self.msi_enabled or not self.config[COMMAND] & CMD_MASTER:
            return False
        low, high, data = struct.unpack_from("<IIH", self.config, at + 4)
        return bool(self.partition.signal_msi(high << 32 | low, data))

    # -- interrupts -------------------------------------------------------------------------
    def set_intx(self, level: bool) -> None:
        """Drive this function's INTx pin (level-triggered, shared with others on its
        PIRQ line)."""
        with self._lock:
            self.intx_level = bool(level)
            if level:
                self.config[STATUS] |= STATUS_INTERRUPT
            else:
                self.config[STATUS] &= ~STATUS_INTERRUPT
        if self.bus is not None:
            self.bus.intx_changed()

    @property
    def intx_asserted(self) -> bool:
        return self.intx_level and not struct.unpack_from("<H", self.config, COMMAND)[0] & \
            CMD_INTX_DISABLE

    @property
    def bus_master(self) -> bool:
        return bool(self.config[COMMAND] & CMD_MASTER)

    # -- configuration space ----------------------------------------------------------------
    def config_read(self, offset: int, size: int) -> int:
        with self._lock:
            return int.from_bytes(self.config[offset:offset + size], "little")

    def config_write(self, offset: int, size: int, value: int) -> None:
        with self._lock:
            for i in range(size):
                at = offset + i
                byte = value >> (8 * i) & 0xFF
                mask = self.wmask[at]
                self.config[at] = (self.config[at] & ~mask) | (byte & mask)
                self.config[at] &= ~(byte & self.w1c[at])
            touched = range(offset, offset + size)
            if COMMAND in touched or COMMAND + 1 in touched or any(
                    BAR0 <= at < BAR0 + 4 * len(self.bars) for at in touched):
                self.remap()
        if COMMAND + 1 in range(offset, offset + size) and self.bus is not None:
            self.bus.intx_changed()               # interrupt disable may have changed

    def bar_address(self, index: int) -> int:
        raw: int = struct.unpack_from("<I", self.config, BAR0 + 4 * index)[0]
        return raw & (~0x3 if self.bars[index].kind == "io" else ~0xF) & 0xFFFFFFFF

    def set_bar_address(self, index: int, address: int) -> None:
        """Program BAR ``index`` (as firmware does before the OS runs)."""
        bar = self.bars[index]
        low = 0x1 if bar.kind == "io" else 0x0
        struct.pack_into("<I", self.config, BAR0 + 4 * index,
                         (address & ~(bar.size - 1) & 0xFFFFFFFF) | low)
        self.remap()

    def remap(self) -> None:
        """Follow the command register and BARs: register each decoded BAR at its address."""
        host = getattr(self, "partition", None)
        if host is None:
            return
        command = self.config[COMMAND]
        for i, bar in enumerate(self.bars):
            on = command & (CMD_IO if bar.kind == "io" else CMD_MEMORY)
            address = self.bar_address(i)
            current = self._decoded[i]
            limit = 0x10000 if bar.kind == "io" else 1 << 32
            wanted = on and 0 < address and address + bar.size <= limit
            if current is not None and (not wanted or current[0] != address):
                host.remove_handler(current[1])
                self._decoded[i] = None
            if wanted and self._decoded[i] is None:
                self._decoded[i] = self._decode(host, i, bar, address)

    def _decode(self, host: DeviceHost, index: int, bar: Bar,
                address: int) -> tuple[int, Handler] | None:
        def read(at: int, size: int) -> int:
            return bar.read(at - address, size) if bar.read is not None else (1 << 8 * size) - 1

        def write(at: int, size: int, value: int) -> None:
            if bar.write is not None:
                bar.write(at - address, size, value)

        try:
            if bar.kind == "io":
                handler = host.add_io_handler(range(address, address + bar.size), read, write)
            else:
                handler = host.add_mmio_handler(address, bar.size, read, write)
        except HypervisorError as exc:       # over RAM or another device: not decoded
            log.info("%s BAR%d at %#x not decoded: %s", self.name, index, address, exc)
            return None
        return address, handler

    def get_state(self) -> dict[str, Any]:
        return {"config": self.config.hex(), "intx": self.intx_level}

    def set_state(self, state: dict[str, Any]) -> None:
        config = bytes.fromhex(state["config"])
        if len(config) == 256:
            self.config[:] = config
        self.intx_level = bool(state.get("intx", False))
        self.remap()


class HostBridge(PciDevice):
    """The i440FX host bridge (00:00.0), as QEMU's ``pc`` machine has it."""

    vendor_id, device_id, class_code, revision = 0x8086, 0x1237, 0x060000, 0x02
    name = "i440fx"


class IsaBridge(PciDevice):
    """The PIIX3 PCI-to-ISA bridge (00:01.0): its PIRQ route registers (0x60-0x63) say which
    ISA IRQ each PCI interrupt line drives (bit 7 disables a line)."""

    vendor_id, device_id, class_code = 0x8086, 0x7000, 0x060100
    header_type = 0x80                     # multi-function: the PIIX has more functions
    name = "piix3"

    def __init__(self) -> None:
        super().__init__()
        self.config[0x60:0x64] = bytes(PIRQ_DEFAULT)
        self.wmask[0x60:0x64] = b"\x8f" * 4

    def route(self, pirq: int) -> int | None:
        value = self.config[0x60 + pirq]
        return None if value & PIRQ_DISABLED or value >= 16 else value

    def config_write(self, offset: int, size: int, value: int) -> None:
        super().config_write(offset, size, value)
        if offset < 0x64 and offset + size > 0x60 and self.bus is not None:
            self.bus.intx_changed()


class PowerManagement(PciDevice):
    """The PIIX4 power-management function (00:01.3): its PM base register (0x40) reads
    0x601, the ACPI registers pyhv's PM device serves at 0x600 (the FADT says the same)."""

    vendor_id, device_id, class_code, revision = 0x8086, 0x7113, 0x068000, 0x03
    name = "piix4-pm"

    def __init__(self, pm_base: int = 0x600, sci_irq: int = 9) -> None:
        super().__init__()
        struct.pack_into("<I", self.config, 0x40, pm_base | 1)
        self.config[0x80] = 1                              # PM registers enabled
        self.config[INTERRUPT_LINE] = sci_irq
        self.config[INTERRUPT_PIN] = 1


class PciBus(Device):
    """Bus 0 of a PC (see the module docstring); :meth:`plug` adds devices before the run."""

    name = "pci"

    def __init__(self) -> None:
        self.functions: dict[tuple[int, int], PciDevice] = {}    # (slot, function)
        self.address = 0                     # the last value written to 0xCF8
        self.host_bridge = HostBridge()
        self.isa_bridge = IsaBridge()
        self.plug(self.host_bridge, 0)
        self.plug(self.isa_bridge, 1)
        self.plug(PowerManagement(), 1, 3)
        self._levels: dict[int, bool] = {}   # ISA IRQ -> level driven now
        self._lock = threading.Lock()
        self.on_reset: Callable[[], None] | None = None   # port 0xCF9 asks for a reset

    # -- plugging ---------------------------------------------------------------------------
    def plug(self, device: PciDevice, slot: int | None = None, function: int = 0) -> int:
        """Put ``device`` in ``slot`` (default: the first free one from 2); its slot."""
        if not isinstance(device, PciDevice):
            raise InvalidArgument(f"{device!r} is not a PCI device")
        if slot is None:
            slot = next((s for s in range(2, SLOTS) if (s, 0) not in self.functions), None)
            if slot is None:
                raise InvalidArgument("the PCI bus is full (31 slots)")
        if not 0 <= slot < SLOTS or not 0 <= function < FUNCTIONS:
            raise InvalidArgument(f"PCI address 00:{slot:02x}.{function} is not on the bus")
        if (slot, function) in self.functions:
            raise InvalidArgument(f"PCI slot 00:{slot:02x}.{function} is taken")
        self.functions[(slot, function)] = device
        device.bus = self
        device.address = (0, slot, function)
        return slot

    def device(self, bus: int, slot: int, function: int) -> PciDevice | None:
        return self.functions.get((slot, function)) if bus == 0 else None

    def assign_resources(self) -> None:
        """What firmware does before the OS: place every BAR (IO from 0xC000, memory below
        0xFEC00000, largest first, naturally aligned), write each interrupt line, and turn on
        IO and memory decoding."""
        io_next = IO_WINDOW[0]
        mem_top = MEMORY_WINDOW[1]
        bars = [(bar.size, bar.kind, dev, i) for dev in self.functions.values()
                for i, bar in enumerate(dev.bars)]
        for size, kind, dev, i in sorted(bars, key=lambda b: -b[0]):
            if kind == "io":
                at = (io_next + size - 1) & ~(size - 1)
                if at + size > IO_WINDOW[1]:
                    raise InvalidArgument("the PCI devices' IO BARs do not fit 0xC000-0xFFFF")
                io_next = at + size
            else:
                at = (mem_top - size) & ~(size - 1)
                if at < MEMORY_WINDOW[0]:
                    raise InvalidArgument("the PCI devices' memory BARs do not fit the hole "
                                          "below 4 GiB")
                mem_top = at
            dev.set_bar_address(i, at)
        for (slot, _function), dev in self.functions.items():
            pin = dev.config[INTERRUPT_PIN]
            if pin and not isinstance(dev, PowerManagement):
                irq = self.isa_bridge.route(self.pirq(slot, pin))
                dev.config[INTERRUPT_LINE] = 0xFF if irq is None else irq
            if dev.bars:
                dev.config_write(COMMAND, 2, dev.config_read(COMMAND, 2) | CMD_IO | CMD_MEMORY)

    @staticmethod
    def pirq(slot: int, pin: int) -> int:
        """The PIRQ line (0-3 for A-D) of INTx pin ``pin`` (1-4) in ``slot``, as the i440FX
        wires them."""
        return (pin - 1 + slot - 1) & 3

    # -- the ports --------------------------------------------------------------------------
    def attach(self, partition: DeviceHost) -> None:
        super().attach(partition)
        partition.add_io_handler(range(CONFIG_ADDRESS, CONFIG_ADDRESS + 4),
                                 read=self._address_read, write=self._address_write)
        partition.add_io_handler(range(CONFIG_DATA, CONFIG_DATA + 4), read=self._data_read,
                                 write=self._data_write)
        for device in self.functions.values():
            if device.name not in ("i440fx", "piix3", "piix4-pm"):
                continue                      # the machine attaches the others itself
            device.attach(partition)

    def _address_read(self, port: int, size: int) -> int:
        if port == CONFIG_ADDRESS and size == 4:
            return self.address
        return (1 << 8 * size) - 1 if port != RESET_CONTROL else 0

    def _address_write(self, port: int, size: int, value: int) -> None:
        if port == CONFIG_ADDRESS and size == 4:
            self.address = value & 0x80FFFFFC
        elif port == RESET_CONTROL and size == 1 and value & 0x04 and self.on_reset:
            self.on_reset()                  # PIIX reset control: "reset CPU" (0x06, 0x0E)

    def _target(self, port: int, size: int) -> tuple[PciDevice, int] | None:
        address = self.address
        if not address & 0x80000000:
            return None
        bus, slot, function = address >> 16 & 0xFF, address >> 11 & 0x1F, address >> 8 & 0x7
        offset = (address & 0xFC) + (port - CONFIG_DATA)
        if offset + size > 256 or offset % size:
            return None                      # an access that straddles registers
        device = self.device(bus, slot, function)
        return None if device is None else (device, offset)

    def _data_read(self, port: int, size: int) -> int:
        target = self._target(port, size)
        if target is None:
            return (1 << 8 * size) - 1       # no device: the bus reads all ones
        return target[0].config_read(target[1], size)

    def _data_write(self, port: int, size: int, value: int) -> None:
        target = self._target(port, size)
        if target is not None:
            target[0].config_write(target[1], size, value)

    # direct access (tests, firmware)
    def config_read(self, bus: int, slot: int, function: int, offset: int, size: int) -> int:
        device = self.device(bus, slot, function)
        return (1 << 8 * size) - 1 if device is None else device.config_read(offset, size)

    def config_write(self, bus: int, slot: int, function: int, offset: int, size: int,
                     value: int) -> None:
        device = self.device(bus, slot, function)
        if device is not None:
            device.config_write(offset, size, value)

    # -- INTx routing -----------------------------------------------------------------------
    def intx_changed(self) -> None:
        """Recompute the ISA IRQ levels the PCI interrupt lines drive, and drive the ones
        that changed."""
        levels: dict[int, bool] = {}
        for (slot, _function), dev in self.functions.items():
            pin = dev.config[INTERRUPT_PIN]
            if not pin or isinstance(dev, PowerManagement):
                continue
            irq = self.isa_bridge.route(self.pirq(slot, pin))
            if irq is not None:
                levels[irq] = levels.get(irq, False) or dev.intx_asserted
        host = getattr(self, "partition", None)
        with self._lock:
            for irq in sorted(set(levels) | set(self._levels)):
                level = levels.get(irq, False)
                if level != self._levels.get(irq, False) and host is not None and host.irqchip:
                    host.set_irq(irq, level)
                self._levels[irq] = level

    def get_state(self) -> dict[str, Any]:
        return {"address": self.address}

    def set_state(self, state: dict[str, Any]) -> None:
        self.address = int(state["address"]) & 0x80FFFFFC
