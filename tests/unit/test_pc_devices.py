"""pc-testdev (pyhv.devices.pc_testdev) and the PC's RTC additions (pyhv.devices.pc_rtc), on
a fake partition."""

from __future__ import annotations

import calendar
import time

import pytest

from pyhv.devices.pc_rtc import PcRtc
from pyhv.devices.pc_testdev import IOMEM, PcTestdev

from .fakehost import FakeHost


def make_testdev():
    host, dev = FakeHost(), PcTestdev()
    dev.attach(host)
    return host, dev


def test_pc_testdev_data_register_at_any_width_and_offset():
    host, dev = make_testdev()
    host.out(0xE0, 0x11223344, 4)
    assert host.inp(0xE0, 4) == 0x11223344 and host.inp(0xE2, 2) == 0x1122
    assert host.inp(0xE3, 1) == 0x11 and host.inp(0xE9, 1) == 0x33
    host.out(0xE1, 0xAB, 1)
    assert host.inp(0xE0, 4) == 0x1122AB44
    host.out(0xEA, 0xBEEF, 2)                     # the byte-wide alias
    assert host.inp(0xE8, 4) == 0xBEEFAB44
    host.out(0xE3, 0x1234, 2)                     # the part past the word is dropped
    assert host.inp(0xE0, 4) == 0x34EFAB44


def test_pc_testdev_irq_lines_drive_gsis_and_read_zero():
    host, dev = make_testdev()
    host.out(0x2000 + 14, 1)
    host.out(0x2000 + 14, 0)
    host.out(0x2000 + 23, 7)
    host.out(0x2000 + 5, 1, 2)                    # not a byte access: ignored, as QEMU's
    assert host.irq_changes == [(14, True), (14, False), (23, True)]
    assert host.inp(0x2000) == 0 and host.inp(0xE4, 4) == 0


def test_pc_testdev_without_an_irqchip_drives_nothing():
    host, dev = FakeHost(irqchip=False), PcTestdev()
    dev.attach(host)
    host.out(0x2000 + 4, 1)
    assert host.irq_changes == []


def test_pc_testdev_iomem_is_plain_memory_and_flushes_are_taken():
    host, dev = make_testdev()
    h = host.mmio.find(IOMEM)
    assert h is not None and (h.start, h.end) == (IOMEM, IOMEM + 0x10000)
    h.write(IOMEM + 8, 8, 0x0102030405060708)
    assert h.read(IOMEM + 8, 4) == 0x05060708 and h.read(IOMEM + 15, 1) == 0x01
    h.write(IOMEM + 0xFFFF, 1, 0xAA)
    assert h.read(IOMEM + 0xFFFF, 1) == 0xAA
    host.out(0xE4, 0x12345678, 4)
    host.out(0xE4, 0x1000, 2)                     # only 32-bit writes flush
    assert dev.flushed == [0x12345000]
    state = dev.get_state()
    other_host, other = make_testdev()
    other.set_state(state)
    assert other.data == dev.data and other.memory == dev.memory


def test_pc_testdev_without_iomem():
    host, dev = FakeHost(), PcTestdev(iomem=False)
    dev.attach(host)
    assert host.mmio.find(IOMEM) is None


# -- the RTC --------------------------------------------------------------------------------
class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def rtc_at(t: float, irqchip: bool = True):
    host, clock = FakeHost(irqchip=irqchip), Clock(t)
    rtc = PcRtc(clock=clock)
    rtc.attach(host)
    return host, rtc, clock


def reg(host, index, value=None):
    host.out(0x70, index)
    if value is None:
        return host.inp(0x71)
    host.out(0x71, value)
    return None


def test_uip_is_set_for_the_last_244_microseconds_of_a_second():
    host, rtc, clock = rtc_at(1_000_000_000.5)
    assert reg(host, 0x0A) == 0x26
    clock.t = 1_000_000_000.9998
    assert reg(host, 0x0A) == 0xA6
    clock.t = 1_000_000_001.0001
    assert reg(host, 0x0A) == 0x26
    reg(host, 0x0A, 0xFF)                         # UIP is read-only
    assert reg(host, 0x0A) & 0x7F == 0x7F
    clock.t = 1_000_000_001.9999
    reg(host, 0x0B, reg(host, 0x0B) | 0x80)       # SET: the clock stops, no update
    assert not reg(host, 0x0A) & 0x80


def test_status_c_reports_updates_and_alarms_and_clears_on_read():
    t0 = calendar.timegm((2024, 5, 6, 7, 8, 9))
    host, rtc, clock = rtc_at(t0 + 0.5)
    assert reg(host, 0x0C) == 0
    clock.t += 1
    assert reg(host, 0x0C) == 0x10                # UF: a second went by
    assert reg(host, 0x0C) == 0
    reg(host, 0x01, 0x12)                         # alarm at 07:08:12 (BCD)
    reg(host, 0x03, 0x08)
    reg(host, 0x05, 0x07)
    assert rtc.next_alarm() == t0 + 3
    clock.t = t0 + 3.2
    assert reg(host, 0x0C) == 0x30                # AF and UF, no IRQF: not enabled
    reg(host, 0x05, 0xC7)                         # hours: don't care
    assert rtc.next_alarm() == t0 + 3600 + 3      # the next hour's 08:12
    reg(host, 0x01, 0xC0)
    reg(host, 0x03, 0xC0)
    assert rtc.next_alarm() == t0 + 4             # every second
    reg(host, 0x0B, reg(host, 0x0B) | 0x20)       # AIE
    clock.t += 1
    assert reg(host, 0x0C) == 0xB0                # IRQF with AF


def test_alarms_in_binary_and_12_hour_formats():
    t0 = calendar.timegm((2024, 5, 6, 19, 0, 0))
    host, rtc, clock = rtc_at(t0)
    reg(host, 0x0B, 0x04)                         # binary, 12-hour
    reg(host, 0x01, 30)
    reg(host, 0x03, 0)
    reg(host, 0x05, 0x80 | 7)                     # 7 PM
    assert rtc.next_alarm() == t0 + 30
    reg(host, 0x05, 25)                           # no such hour: never
    assert rtc.next_alarm() is None


def test_alarm_and_update_interrupts_raise_irq8_until_status_c_is_read():
    host, rtc = FakeHost(), PcRtc()              # the real clock: the thread waits on it
    rtc.attach(host)
    try:
        reg(host, 0x0B, reg(host, 0x0B) | 0x10)   # UIE: an interrupt every second
        deadline = time.monotonic() + 5
        while not host.irq.get(8) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert host.irq.get(8) is True
        assert reg(host, 0x0C) & 0x90 == 0x90
        assert host.irq[8] is False
    finally:
        rtc.close()
    assert rtc._thread is not None and not rtc._thread.is_alive()


def test_without_an_irqchip_no_interrupt_thread_starts():
    host, rtc, clock = rtc_at(1_000_000_000.0, irqchip=False)
    reg(host, 0x0B, 0x22)
    assert rtc._thread is None
    rtc.close()


@pytest.mark.parametrize("seconds, expected", [(0xC0, 1.0), (0x59, 49.0)])
def test_next_alarm_from_a_given_time(seconds, expected):
    t0 = calendar.timegm((2024, 1, 1, 0, 0, 10))
    host, rtc, clock = rtc_at(t0)
    reg(host, 0x01, seconds)
    reg(host, 0x03, 0xC0)
    reg(host, 0x05, 0xC0)
    assert rtc.next_alarm() == t0 + expected
    assert rtc.alarm_interrupts is False and rtc.now() == t0


def test_a_pc_testdev_that_cannot_attach_leaves_nothing_behind():
    from pyhv import InvalidArgument
    host = FakeHost()
    host.remove_handler = lambda h: host.io.remove(h) if h.space == "io" else host.mmio.remove(h)
    host.add_io_handler(0x2005, write=lambda p, s, v: None)      # in the IRQ-line range
    with pytest.raises(InvalidArgument, match="pc-testdev: .*another device"):
        PcTestdev().attach(host)
    assert [h.start for h in host.io.handlers] == [0x2005] and not host.mmio.handlers
