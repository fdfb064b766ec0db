"""The PCI bus and its devices (pyhv.devices.pci, pci_testdev, edu), driven through the
configuration ports as a guest drives them, on a fake partition."""

from __future__ import annotations

import pytest

from pyhv import InvalidArgument, exits
from pyhv.devices import registry
from pyhv.devices.edu import Edu
from pyhv.devices.pci import Bar, PciBus, PciDevice
from pyhv.devices.pci_testdev import PciTestdev

from .fakehost import FakeHost, FakeSlot


class PciHost(FakeHost):
    """FakeHost with what the PCI devices also ask of a partition."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.msis: list[tuple[int, int]] = []
        self.doorbells: list[FakeDoorbell] = []

    def remove_handler(self, handler) -> None:
        (self.io if handler.space == "io" else self.mmio).remove(handler)

    def add_doorbell(self, address, size=4, *, io=False, value=None):
        bell = FakeDoorbell(self, address, size, io, value)
        self.doorbells.append(bell)
        return bell

    def signal_msi(self, address: int, data: int) -> bool:
        self.msis.append((address, data))
        return True

    def mmio_read(self, gpa: int, size: int) -> int:
        h = self.mmio.find(gpa)
        assert h is not None, f"nothing at {gpa:#x}"
        return h.read(gpa, size)

    def mmio_write(self, gpa: int, size: int, value: int) -> None:
        h = self.mmio.find(gpa)
        assert h is not None, f"nothing at {gpa:#x}"
        h.write(gpa, size, value)


class FakeDoorbell:
    def __init__(self, host, address, size, io, value) -> None:
        self.host, self.address, self.size, self.io, self.value = host, address, size, io, value

    def close(self) -> None:
        self.host.doorbells.remove(self)


def config(host, slot, offset, size=4, fn=0, value=None):
    """A guest's configuration access through 0xCF8/0xCFC."""
    host.out(0xCF8, 0x80000000 | slot << 11 | fn << 8 | (offset & 0xFC), 4)
    port = 0xCFC + (offset & 3)
    if value is None:
        return host.inp(port, size)
    host.out(port, value, size)
    return None


def machine(*devices, **kwargs):
    host, bus = PciHost(**kwargs), PciBus()
    for device in devices:
        bus.plug(device)
    bus.assign_resources()
    bus.attach(host)
    for device in devices:
        device.attach(host)
    return host, bus


def test_the_bus_has_the_i440fx_functions_and_reads_all_ones_elsewhere():
    host, _ = machine()
    assert config(host, 0, 0) == 0x12378086
    assert config(host, 1, 0) == 0x70008086 and config(host, 1, 0x0C) >> 16 & 0x80
    assert config(host, 1, 0, fn=3) == 0x71138086
    assert config(host, 1, 0x40, fn=3) == 0x601                    # PM base
    assert config(host, 5, 0) == 0xFFFFFFFF and config(host, 0, 0, fn=1) == 0xFFFFFFFF
    assert config(host, 0, 2, 2) == 0x1237 and config(host, 0, 1, 1) == 0x80
    host.out(0xCF8, 0x00000000, 4)                                 # enable bit off
    assert host.inp(0xCFC, 4) == 0xFFFFFFFF
    assert host.inp(0xCF8, 4) == 0


def test_read_only_registers_stay_and_status_bits_clear_by_writing_one():
    host, _ = machine()
    config(host, 0, 0, value=0)
    assert config(host, 0, 0) == 0x12378086
    dev = PciTestdev()
    host, _ = machine(dev)
    dev.config[0x07] |= 0x20                            # e.g. a master abort latched
    config(host, 2, 6, 2, value=0x2000)
    assert not dev.config[0x07] & 0x20


def test_bar_sizing_and_firmware_placement():
    dev, edu = PciTestdev(), Edu()
    host, _ = machine(dev, edu)
    assert config(host, 2, 0x10) & 0xF == 0 and config(host, 2, 0x14) & 0x3 == 1   # mem, io
    bar0 = config(host, 2, 0x10)
    config(host, 2, 0x10, value=0xFFFFFFFF)
    assert config(host, 2, 0x10) == 0xFFFFF000                     # 4 KiB
    config(host, 2, 0x10, value=bar0)
    bar1 = config(host, 2, 0x14)
    config(host, 2, 0x14, value=0xFFFFFFFF)
    assert config(host, 2, 0x14) == 0xFFFFFF01                     # 256 ports
    config(host, 2, 0x14, value=bar1)
    config(host, 3, 0x10, value=0xFFFFFFFF)
    assert config(host, 3, 0x10) == 0xFFF00000                     # edu: 1 MiB
    assert edu.bar_address(0) == 0xFFF00000                        # until the guest restores it
    assert 0xE0000000 <= dev.bar_address(0) < 0xFEC00000 and dev.bar_address(0) % 0x1000 == 0
    assert 0xC000 <= dev.bar_address(1) < 0x10000 and dev.bar_address(1) % 0x100 == 0
    assert config(host, 2, 4, 2) & 0x3 == 0x3                      # IO and memory decode on


def test_a_bar_follows_its_address_and_the_decode_bits():
    edu = Edu()
    host, _ = machine(edu)
    old = edu.bar_address(0)
    assert host.mmio_read(old, 4) == 0x010000ED
    config(host, 2, 0x10, value=0xD0000000)
    assert host.mmio.find(old) is None and host.mmio_read(0xD0000000, 4) == 0x010000ED
    config(host, 2, 4, 2, value=0)                                 # decoding off
    assert host.mmio.find(0xD0000000) is None
    config(host, 2, 4, 2, value=0x2)
    assert host.mmio_read(0xD0000000, 4) == 0x010000ED


def test_a_bar_over_ram_or_another_bar_is_left_undecoded():
    host, _ = machine(Edu(), Edu(), memory=(FakeSlot(0, 256 << 20),))
    host.mmio.add(0x1000000, 0x100000, lambda a, s: 0, None)      # what RAM would refuse
    second = config(host, 3, 0x10)
    config(host, 3, 0x10, value=config(host, 2, 0x10))            # onto the first edu
    assert host.mmio.find(second) is None                          # gone from where it was
    assert host.mmio_read(config(host, 2, 0x10), 4) == 0x010000ED   # the first still answers


def test_intx_routes_through_the_pirq_registers_and_is_shared():
    a, b = Edu(), Edu()                                 # slots 2 and 3: PIRQB and PIRQC
    host, bus = machine(a, b)
    assert config(host, 2, 0x3C) & 0xFF == 10 and config(host, 3, 0x3C) & 0xFF == 11
    a.set_intx(True)
    assert host.irq == {10: True}
    assert config(host, 2, 6, 2) & 0x08                            # interrupt status
    config(host, 2, 4, 2, value=config(host, 2, 4, 2) | 0x400)     # interrupt disable
    assert host.irq[10] is False
    config(host, 2, 4, 2, value=config(host, 2, 4, 2) & ~0x400)
    assert host.irq[10] is True
    config(host, 1, 0x61, 1, value=11)                             # PIRQB to IRQ 11
    assert host.irq == {10: False, 11: True}
    b.set_intx(True)
    a.set_intx(False)
    assert host.irq[11] is True                                    # b still holds it
    b.set_intx(False)
    assert host.irq[11] is False
    config(host, 1, 0x61, 1, value=0x80)                           # routing disabled
    a.set_intx(True)
    assert host.irq[11] is False and host.irq[10] is False


def test_the_reset_control_register_asks_for_a_reset():
    asked = []
    host, bus = machine()
    bus.on_reset = lambda: asked.append(True)
    host.out(0xCF9, 0x02)
    assert not asked
    host.out(0xCF9, 0x06)
    assert asked == [True]


def test_plugging_is_checked():
    bus = PciBus()
    with pytest.raises(InvalidArgument, match="taken"):
        bus.plug(Edu(), 1)
    with pytest.raises(InvalidArgument, match="not on the bus"):
        bus.plug(Edu(), 32)
    with pytest.raises(InvalidArgument, match="not a PCI device"):
        bus.plug(object())  # type: ignore[arg-type]
    for _ in range(30):
        bus.plug(PciTestdev())
    with pytest.raises(InvalidArgument, match="full"):
        bus.plug(Edu())


@pytest.mark.parametrize("kind, size", [("io", 2), ("io", 512), ("mem", 8), ("mem", 0x3000),
                                        ("rom", 4096)])
def test_bad_bars_are_refused(kind, size):
    with pytest.raises(InvalidArgument):
        Bar(kind, size)


def test_pci_device_state_round_trip():
    edu = Edu()
    host, _ = machine(edu)
    config(host, 2, 0x10, value=0xD0000000)
    host.mmio_write(0xD0000004, 4, 7)
    state = edu.get_state()
    other = Edu()
    other_host, _ = machine(other)
    other.set_state(state)
    assert other.bar_address(0) == 0xD0000000 and other.addr4 == ~7 & 0xFFFFFFFF
    assert other_host.mmio_read(0xD0000000, 4) == 0x010000ED


# -- pci-testdev -----------------------------------------------------------------------------
def test_pci_testdev_runs_qemus_six_tests():
    dev = PciTestdev()
    host, _ = machine(dev)
    mem, io = dev.bar_address(0), dev.bar_address(1)
    names = []
    for kind, base, write, read in (("mem", mem, host.mmio_write, host.mmio_read),
                                    ("io", io, lambda a, s, v: host.out(a, v, s),
                                     lambda a, s: host.inp(a, s))):
        for test in range(4):
            write(base, 1, test)
            if test == 3:                                 # no such test: all reads 0
                assert read(base + 12, 4) == 0 and read(base + 1, 1) == 0
                continue
            assert read(base + 12, 4) == 0 and read(base + 1, 1) == 1
            names.append(bytes(read(base + 16 + i, 1) for i in range(24)).rstrip(b"\0"))
            offset, data = read(base + 4, 4), read(base + 8, 1)
            if kind == "io" and test == 0 or kind == "mem" and test == 0:
                for _ in range(16):
                    write(base + offset, 1, data)
                write(base + offset, 1, data ^ 1)          # not the data: not counted
                assert read(base + 12, 4) == 16
            else:
                # the eventfd tests hand the address to a doorbell (the kernel's ioeventfd)
                assert [(b.address, b.io, b.value) for b in host.doorbells] == [
                    (base + offset, kind == "io", None if test == 1 else 0xFA)]
    assert names == [b"mmio-no-eventfd", b"mmio-wildcard-eventfd", b"mmio-datamatch-eventfd",
                     b"portio-no-eventfd", b"portio-wildcard-eventfd",
                     b"portio-datamatch-eventfd"]
    assert host.doorbells == []                           # the last test stopped its own


def test_pci_testdev_offsets_and_data_are_qemus():
    assert [PciTestdev.offset(t) for t in range(6)] == [2048, 2049, 2050, 131, 132, 133]
    dev = PciTestdev()
    dev.mmio_write(0, 1, 1)
    assert dev.mmio_read(8, 1) == 0xCE and dev.mmio_read(4, 4) == 2049
    assert dev.mmio_read(16 + 21, 1) == 0                 # the NUL reads 0, past it too
    assert dev.mmio_read(1000, 4) == 0


# -- edu -------------------------------------------------------------------------------------
def edu_machine(**kwargs):
    edu = Edu()
    host, _ = machine(edu, **kwargs)
    return host, edu, edu.bar_address(0)


def test_edu_registers_and_access_widths():
    host, edu, bar = edu_machine()
    assert host.mmio_read(bar, 4) == 0x010000ED
    assert host.mmio_read(bar, 2) == 0xFFFF and host.mmio_read(bar + 0x80, 2) == 0xFFFF
    host.mmio_write(bar + 4, 2, 0x1234)                   # ignored: not 32 bits
    assert host.mmio_read(bar + 4, 4) == 0
    host.mmio_write(bar + 4, 4, 0)
    assert host.mmio_read(bar + 4, 4) == 0xFFFFFFFF
    host.mmio_write(bar + 8, 4, 13)
    assert host.mmio_read(bar + 8, 4) == 6227020800 & 0xFFFFFFFF
    host.mmio_write(bar + 8, 4, 100)
    assert host.mmio_read(bar + 8, 4) == 0                # 100! mod 2**32
    assert host.mmio_read(bar + 0x20, 4) == 0 and host.mmio_read(bar + 0x1000, 4) == 0xFFFFFFFF
    host.mmio_write(bar + 0x80, 8, 0x1122334455)
    assert host.mmio_read(bar + 0x80, 8) == 0x1122334455


def test_edu_interrupts_intx_then_msi():
    host, edu, bar = edu_machine()
    host.mmio_write(bar + 0x60, 4, 0x5)
    assert host.irq == {10: True} and host.mmio_read(bar + 0x24, 4) == 0x5
    host.mmio_write(bar + 0x64, 4, 0x1)
    assert host.irq[10] is True
    host.mmio_write(bar + 0x64, 4, 0x4)
    assert host.irq[10] is False
    host.mmio_write(bar + 0x20, 4, 0x80)                  # interrupt when the factorial is done
    host.mmio_write(bar + 0x08, 4, 4)
    assert host.irq[10] is True and host.mmio_read(bar + 0x24, 4) == 0x1
    host.mmio_write(bar + 0x64, 4, 0x1)
    cap = config(host, 2, 0x34, 1)
    assert cap == 0x40 and config(host, 2, cap, 1) == 0x05
    config(host, 2, cap + 4, value=0xFEE00000)
    config(host, 2, cap + 12, 2, value=0x41)
    config(host, 2, cap + 2, 2, value=0x0001)             # MSI on
    host.mmio_write(bar + 0x60, 4, 0x2)
    assert host.msis == []                                # bus mastering is off
    config(host, 2, 4, 2, value=config(host, 2, 4, 2) | 0x4)
    host.mmio_write(bar + 0x60, 4, 0x2)
    assert host.msis == [(0xFEE00000, 0x41)] and host.irq[10] is False


class RamHost(PciHost):
    """PciHost with 1 MiB of byte-addressable RAM at 0 for DMA."""

    def __init__(self) -> None:
        super().__init__(memory=(FakeSlot(0, 1 << 20),))
        self.ram = bytearray(1 << 20)
        self.memory.is_ram = lambda gpa, size=1: 0 <= gpa and gpa + size <= len(self.ram)
        self.memory.read = lambda gpa, size: bytes(self.ram[gpa:gpa + size])
        self.memory.write = lambda gpa, data: self.ram.__setitem__(slice(gpa, gpa + len(data)),
                                                                    data)


def test_edu_dma_copies_within_its_bounds_only():
    edu = Edu()
    host, bus = RamHost(), PciBus()
    bus.plug(edu)
    bus.assign_resources()
    bus.attach(host)
    edu.attach(host)
    bar = edu.bar_address(0)
    host.ram[0x1000:0x1010] = b"0123456789abcdef"

    def dma(src, dst, count, cmd):
        host.mmio_write(bar + 0x80, 8, src)
        host.mmio_write(bar + 0x88, 8, dst)
        host.mmio_write(bar + 0x90, 8, count)
        host.mmio_write(bar + 0x98, 8, cmd)

    dma(0x1000, 0x40000, 16, 1)                           # bus mastering off: refused
    assert edu.refused_dma == 1 and edu.buffer[:16] == bytes(16)
    config(host, 2, 4, 2, value=config(host, 2, 4, 2) | 0x4)
    dma(0x1000, 0x40000, 16, 1)
    assert edu.buffer[:16] == b"0123456789abcdef"
    dma(0x40004, 0x2000, 8, 1 | 2 | 4)
    assert host.ram[0x2000:0x2008] == b"456789ab" and host.irq[10] is True
    assert host.mmio_read(bar + 0x24, 4) == 0x100 and not host.mmio_read(bar + 0x98, 4) & 1
    for src, dst, count, cmd in ((0x1000, 0x40FF8, 16, 1),       # past the buffer
                                 (0x1000, 0x3FFF0, 16, 1),        # below it
                                 (0x40000, 0xFFFF8, 16, 3),       # past the end of RAM
                                 (0x1000, 0x40000, 1 << 63, 1)):  # a count that wraps
        dma(src, dst, count, cmd)
    assert edu.refused_dma == 5 and host.ram[0xFFFF8:] == bytes(8)


def test_registry_builds_the_pc_devices_with_qemus_options():
    assert isinstance(registry.create("edu,dma_mask=0xffffff,addr=05,id=e0"), Edu)
    dev = registry.create("pci-testdev,addr=0x1f")
    assert dev.slot == 0x1F
    assert registry.create("pc-testdev,id=t").name == "t"
    for spec, message in (("edu,addr=1", "slots 02-1f"), ("edu,addr=03.1", "function 0"),
                          ("edu,frob=1", "takes no option frob"), ("edu,id=a b", "device id"),
                          ("edu,dma_mask=0", "dma_mask"), ("pci-testdev,addr=zz", "not a PCI")):
        with pytest.raises(InvalidArgument, match=message):
            registry.create(spec)


def test_a_pci_device_without_a_bus_or_partition_is_inert():
    class Plain(PciDevice):
        vendor_id, device_id = 0x1234, 0x0001

    dev = Plain([Bar("io", 16)])
    dev.set_intx(True)                                    # no bus: nothing to drive
    dev.config_write(0x10, 4, 0xFFFFFFFF)
    assert dev.config_read(0x10, 4) == 0xFFFFFFF1
    assert exits.Halt() is not None
