"""pyhv's PC devices attached to a fake host (tests/unit/fakehost.py) and driven as a guest
would drive them: the 16550 UART, the CMOS clock, the i8042, fw_cfg and isa-debug-exit."""

from __future__ import annotations

import calendar
import io
import json
import struct

import pytest

from pyhv import EndRun, InvalidArgument, PortKind, devices, exits
from pyhv.devices import I8042, FwCfg, IsaDebugExit, Rtc, Uart16550

from .fakehost import FakeHost, FakeSlot

COM1 = 0x3F8
THR = RBR = DLL = COM1
IER = DLM = COM1 + 1
IIR = FCR = COM1 + 2
LCR, MCR, LSR, MSR, SCR = COM1 + 3, COM1 + 4, COM1 + 5, COM1 + 6, COM1 + 7


def uart_on(host: FakeHost | None = None, **kwargs) -> tuple[Uart16550, FakeHost, list[bytes]]:
    host = host or FakeHost()
    sent: list[bytes] = []
    uart = Uart16550(sent.append, **kwargs)
    uart.attach(host)
    return uart, host, sent


def fast_paths(host: FakeHost) -> tuple[bool, bool]:
    """(THR fast path on, LSR fast path on)."""
    return host.fast[THR].enabled, host.fast[LSR].enabled


# -- UART ---------------------------------------------------------------------------------
def test_uart_registers_its_ports_and_fast_paths():
    uart, host, _ = uart_on()
    assert uart.name == "com1"
    handler = host.io.claimed(COM1)
    assert (handler.start, handler.end) == (COM1, COM1 + 8) and handler.read and handler.write
    thr, lsr = host.fast[THR], host.fast[LSR]
    assert (thr.kind, thr.overlay, lsr.kind, lsr.value, lsr.overlay) == (
        PortKind.BUFFERED, True, PortKind.CONSTANT, 0x60, True)     # THRE | TEMT
    assert fast_paths(host) == (True, True) and host.irq_changes == []


def test_uart_transmits_through_the_fast_path_and_the_handler_alike():
    uart, host, sent = uart_on()
    host.out(THR, ord("h"))                              # the C buffered port
    assert host.inp(LSR) == 0x60
    host.out(LCR, 0x80)                                  # DLAB: the fast paths go off
    host.out(LCR, 0x03)
    host.out(IER, 0x02)                                  # THRE interrupts: THR to Python
    assert not host.fast[THR].enabled
    host.out(THR, ord("i"))
    assert b"".join(sent) == b"hi"


def test_uart_without_a_sink_keeps_what_it_sent():
    host = FakeHost()
    uart = Uart16550()
    uart.attach(host)
    host.out(THR, 0x41)
    host.out(IER, 0x02)
    host.out(THR, 0x42)
    assert uart.transmitted == bytearray(b"AB")


def test_uart_writes_to_a_stream():
    out = io.BytesIO()
    host = FakeHost()
    Uart16550(out).attach(host)
    host.out(THR, 0x21)
    assert out.getvalue() == b"!"


def test_uart_divisor_latch():
    uart, host, sent = uart_on()
    host.out(IER, 0x01)
    host.out(LCR, 0x83)                                  # DLAB, 8N1
    assert fast_paths(host) == (False, False)
    host.out(DLL, 0x03)
    host.out(DLM, 0x00)
    assert (host.inp(DLL), host.inp(DLM), uart.divisor) == (0x03, 0x00, 3)
    assert uart.ier == 0x01 and sent == []               # neither IER nor THR was written
    host.out(DLM, 0x01)
    assert uart.divisor == 0x103
    host.out(LCR, 0x03)
    assert host.inp(LCR) == 0x03 and host.inp(IER) == 0x01 and fast_paths(host) == (True, True)


def test_uart_loopback_receives_what_it_sends():
    uart, host, sent = uart_on()
    host.out(MCR, 0x1B)                                  # loop, OUT2, RTS, DTR
    assert fast_paths(host) == (False, False)
    host.out(THR, 0x42)
    assert host.inp(LSR) == 0x61                         # data ready
    assert host.inp(RBR) == 0x42 and host.inp(LSR) == 0x60 and sent == []
    assert host.inp(MCR) == 0x1B
    host.out(MCR, 0x00)
    assert fast_paths(host) == (True, True)


@pytest.mark.parametrize("mcr, msr", [
    (0x00, 0xB0),                       # not looped: DCD, DSR and CTS, a cable that is there
    (0x10, 0x00), (0x11, 0x20), (0x12, 0x10), (0x14, 0x40), (0x18, 0x80), (0x1A, 0x90),
    (0x1F, 0xF0),                       # loop: RTS->CTS, DTR->DSR, OUT1->RI, OUT2->DCD
])
def test_uart_modem_status(mcr, msr):
    _, host, _ = uart_on()
    host.out(MCR, mcr)
    assert host.inp(MSR) == msr


@pytest.mark.parametrize("fcr, depth", [(0x00, 1), (0x01, 16)], ids=["no-fifo", "fifo"])
def test_uart_loopback_holds_what_its_fifo_holds(fcr, depth):
    uart, host, _ = uart_on()
    host.out(FCR, fcr)
    host.out(MCR, 0x10)
    for byte in range(40):
        host.out(THR, byte)
    assert list(uart.rx) == list(range(depth))           # the rest overran
    assert [host.inp(RBR) for _ in range(depth + 1)] == list(range(depth)) + [0]


def test_uart_fifo_control():
    uart, host, _ = uart_on()
    assert host.inp(IIR) == 0x01                         # FIFOs off, nothing pending
    host.out(FCR, 0x01)
    assert host.inp(IIR) == 0xC1 and uart.fifo
    uart.feed(b"abc")
    host.out(FCR, 0x03)                                  # clear the receive FIFO
    assert not uart.rx and host.inp(LSR) == 0x60


def test_uart_interrupt_identification_priorities():
    uart, host, _ = uart_on()
    host.out(IER, 0x03)                                  # RX and THRE; THR is empty: THRE
    uart.feed(b"xy")
    assert host.inp(IIR) == 0x04                         # received data first
    assert host.inp(IIR) == 0x04                         # (reading it acknowledges nothing)
    assert host.inp(RBR) == ord("x") and host.inp(IIR) == 0x04
    assert host.inp(RBR) == ord("y")
    assert host.inp(IIR) == 0x02                         # then THRE, which the read acks
    assert host.inp(IIR) == 0x01


def test_uart_thre_interrupt_raises_and_acknowledges_the_irq_line():
    uart, host, sent = uart_on()
    host.out(IER, 0x02)                                  # enabling it with THR empty
    assert host.irq_changes == [(4, True)] and uart.irq_level
    assert host.inp(IIR) == 0x02
    assert host.irq_changes == [(4, True), (4, False)]
    host.out(THR, ord("a"))                              # sent at once: empty again
    assert host.irq[4] and sent == [b"a"]
    host.inp(IIR)
    host.out(IER, 0x00)
    host.out(IER, 0x02)                                  # re-enabling raises it again
    assert host.irq_changes == [(4, True), (4, False), (4, True), (4, False), (4, True)]


def test_uart_receive_interrupt_follows_the_data():
    uart, host, _ = uart_on(irq=3, base=COM1)
    host.out(IER, 0x01)
    uart.feed(b"ab")
    assert host.irq_changes == [(3, True)] and host.fast[LSR].enabled is False
    assert host.inp(LSR) == 0x61 and host.inp(RBR) == ord("a") and host.irq[3]
    assert host.inp(RBR) == ord("b")
    assert host.irq_changes == [(3, True), (3, False)] and host.fast[LSR].enabled


def test_uart_without_an_irqchip_drives_no_line():
    uart, host, _ = uart_on(FakeHost(irqchip=False))    # set_irq there would raise
    host.out(IER, 0x03)
    uart.feed(b"z")
    assert uart.irq_level and host.inp(IIR) == 0x04 and host.irq_changes == []


@pytest.mark.parametrize("lcr, mcr, ier, rx, fast", [
    (0x03, 0x00, 0x00, b"", (True, True)),
    (0x83, 0x00, 0x00, b"", (False, False)),         # divisor latch: both to Python
    (0x03, 0x10, 0x00, b"", (False, False)),         # loopback: both to Python
    (0x03, 0x00, 0x02, b"", (False, True)),          # THRE interrupts: the transmit register
    (0x03, 0x00, 0x01, b"", (True, True)),           # RX interrupts alone change nothing
    (0x03, 0x00, 0x00, b"k", (True, False)),         # data to receive: the line status
    (0x03, 0x00, 0x03, b"k", (False, False)),
])
def test_uart_switches_its_fast_paths_as_its_state_needs(lcr, mcr, ier, rx, fast):
    uart, host, _ = uart_on()
    host.out(IER, ier)
    host.out(MCR, mcr)
    uart.feed(rx)
    host.out(LCR, lcr)
    assert fast_paths(host) == fast
    assert host.python_handles(LSR) == (not fast[1])


def test_uart_scratch_register_and_an_empty_receive_buffer():
    _, host, _ = uart_on()
    host.out(SCR, 0x5A)
    assert host.inp(SCR) == 0x5A and host.inp(RBR) == 0


def test_uart_state_round_trip():
    uart, host, _ = uart_on()
    host.out(LCR, 0x83)
    host.out(DLL, 0x01)
    host.out(LCR, 0x03)
    host.out(FCR, 0x01)
    host.out(MCR, 0x0B)
    host.out(SCR, 0x77)
    host.out(IER, 0x03)
    uart.feed(b"\x01\x02")
    state = uart.get_state()
    assert state == {"ier": 0x03, "lcr": 0x03, "mcr": 0x0B, "scr": 0x77, "divisor": 1,
                     "fifo": True, "thre_pending": True, "rx": [1, 2]}
    assert json.loads(json.dumps(state)) == state                # JSON-able, for snapshots
    other, other_host, _ = uart_on()
    other.set_state(state)
    assert other.get_state() == state
    assert other_host.irq == {4: True} and fast_paths(other_host) == (False, False)
    assert other_host.inp(IIR) == 0xC4 and other_host.inp(RBR) == 1


def test_uart_set_state_masks_what_it_is_given():
    uart, host, _ = uart_on()
    uart.set_state({"ier": 0x1FF, "lcr": 3, "mcr": 0xFF, "scr": 0x100, "divisor": 0x12345,
                    "fifo": 1, "thre_pending": 0, "rx": [0x141]})
    assert (uart.ier, uart.mcr, uart.scr, uart.divisor, list(uart.rx)) == (0xFF, 0xFF, 0,
                                                                           0x2345, [0x41])


def test_uart_at_another_base():
    host = FakeHost()
    com2 = Uart16550(base=0x2F8, irq=3, name="com2")
    com2.attach(host)
    assert com2.name == "com2" and host.io.claimed(0x2FF) and host.io.claimed(0x3F8) is None
    host.out(0x2F9, 0x02)
    assert host.irq_changes == [(3, True)]


def test_a_uart_refuses_an_output_that_cannot_take_bytes():
    with pytest.raises(InvalidArgument, match="neither callable nor a stream"):
        Uart16550(42)


def test_a_uart_fed_before_it_is_attached_delivers_the_bytes():
    uart = Uart16550()
    uart.feed(b"early")
    host = FakeHost()
    uart.attach(host)
    assert bytes(host.inp(RBR) for _ in range(5)) == b"early"


# -- CMOS clock ---------------------------------------------------------------------------
class Clock:
    def __init__(self, *when: int) -> None:
        self.now = float(calendar.timegm((*when, 0, 0, 0)))

    def __call__(self) -> float:
        return self.now


def rtc_on(*when: int) -> tuple[Rtc, FakeHost, Clock]:
    clock = Clock(*when)
    rtc = Rtc(clock=clock)
    host = FakeHost()
    rtc.attach(host)
    return rtc, host, clock


def cmos_read(host: FakeHost, reg: int) -> int:
    host.out(0x70, reg)
    return host.inp(0x71)


def cmos_write(host: FakeHost, reg: int, value: int) -> None:
    host.out(0x70, reg)
    host.out(0x71, value)


TIME = (0x00, 0x02, 0x04, 0x06, 0x07, 0x08, 0x09, 0x32)   # s, m, h, weekday, d, m, y, century


def clock_reads(host: FakeHost) -> list[int]:
    return [cmos_read(host, reg) for reg in TIME]


def test_rtc_reads_the_time_in_bcd_24_hour_by_default():
    rtc, host, _ = rtc_on(2031, 7, 24, 13, 45, 56)       # a Thursday
    assert rtc.name == "rtc"
    assert clock_reads(host) == [0x56, 0x45, 0x13, 0x05, 0x24, 0x07, 0x31, 0x20]
    assert [cmos_read(host, r) for r in (0x0A, 0x0B, 0x0C, 0x0D)] == [0x26, 0x02, 0x00, 0x80]


def test_rtc_binary_mode():
    _, host, _ = rtc_on(2031, 7, 24, 13, 45, 56)
    cmos_write(host, 0x0B, 0x06)                          # binary, 24-hour
    assert clock_reads(host) == [56, 45, 13, 5, 24, 7, 31, 20]


@pytest.mark.parametrize("hour, bcd, binary", [(0, 0x12, 12), (1, 0x01, 1), (11, 0x11, 11),
                                               (12, 0x92, 0x80 | 12), (13, 0x81, 0x81),
                                               (23, 0x91, 0x80 | 11)])
def test_rtc_12_hour_mode(hour, bcd, binary):
    _, host, _ = rtc_on(2031, 7, 24, hour, 30, 0)
    cmos_write(host, 0x0B, 0x00)                          # BCD, 12-hour
    assert cmos_read(host, 0x04) == bcd
    cmos_write(host, 0x0B, 0x04)                          # binary, 12-hour
    assert cmos_read(host, 0x04) == binary


@pytest.mark.parametrize("written, hour", [(0x12, 0), (0x01, 1), (0x92, 12), (0x81, 13),
                                           (0x91, 23)])
def test_rtc_takes_a_12_hour_time(written, hour):
    _, host, _ = rtc_on(2031, 7, 24, 5, 30, 0)
    cmos_write(host, 0x0B, 0x00)
    cmos_write(host, 0x04, written)
    cmos_write(host, 0x0B, 0x02)                          # back to 24-hour BCD
    assert cmos_read(host, 0x04) == int(str(hour), 16)


def test_rtc_runs_from_a_time_the_guest_sets():
    _, host, clock = rtc_on(2031, 7, 24, 13, 45, 56)
    cmos_write(host, 0x09, 0x40)                          # 2040, at once (no SET)
    cmos_write(host, 0x04, 0x08)
    clock.now += 61
    assert clock_reads(host)[:3] == [0x57, 0x46, 0x08] and cmos_read(host, 0x09) == 0x40


def test_rtc_set_stops_the_clock_until_it_is_cleared():
    _, host, clock = rtc_on(2031, 7, 24, 23, 59, 50)
    cmos_write(host, 0x0B, 0x82)                          # SET
    clock.now += 100
    assert cmos_read(host, 0x00) == 0x50                  # stopped
    cmos_write(host, 0x00, 0x55)
    cmos_write(host, 0x08, 0x12)
    clock.now += 100
    assert cmos_read(host, 0x00) == 0x55 and cmos_read(host, 0x08) == 0x12
    cmos_write(host, 0x0B, 0x02)                          # runs from 2031-12-24 23:59:55
    clock.now += 3
    assert clock_reads(host)[:3] == [0x58, 0x59, 0x23] and cmos_read(host, 0x07) == 0x24


def test_rtc_a_date_that_is_no_date_stays_as_written_until_one_is_made():
    _, host, clock = rtc_on(2031, 2, 10, 13, 45, 56)      # no SET: each write at once
    cmos_write(host, 0x07, 0x31)                          # February 31: no such day
    clock.now += 10
    assert cmos_read(host, 0x07) == 0x31 and cmos_read(host, 0x00) == 0x56   # held
    cmos_write(host, 0x08, 0x01)                          # January 31: a date, runs again
    clock.now += 2
    assert cmos_read(host, 0x07) == 0x31 and cmos_read(host, 0x08) == 0x01
    assert cmos_read(host, 0x00) == 0x58


def test_rtc_february_29th_needs_a_leap_year():
    _, host, _ = rtc_on(2031, 1, 10, 13, 45, 56)
    cmos_write(host, 0x0B, 0x82)
    cmos_write(host, 0x08, 0x02)
    cmos_write(host, 0x07, 0x29)
    cmos_write(host, 0x0B, 0x02)                          # 2031-02-29: held
    assert (cmos_read(host, 0x07), cmos_read(host, 0x08)) == (0x29, 0x02)
    cmos_write(host, 0x09, 0x32)                          # 2032: a leap year
    assert (cmos_read(host, 0x07), cmos_read(host, 0x08), cmos_read(host, 0x09)) == (0x29, 2,
                                                                                     0x32)


def test_rtc_an_hour_of_25_is_held():
    _, host, clock = rtc_on(2031, 1, 10, 13, 45, 56)
    cmos_write(host, 0x04, 0x25)
    clock.now += 5
    assert cmos_read(host, 0x04) == 0x25 and cmos_read(host, 0x00) == 0x56


def test_rtc_a_bad_bcd_digit_is_held_as_written():
    _, host, _ = rtc_on(2031, 1, 10, 13, 45, 56)
    cmos_write(host, 0x02, 0x1A)                          # minutes "1A": no such BCD number
    assert cmos_read(host, 0x02) == 0x1A


@pytest.mark.parametrize("before, after", [
    ((2031, 12, 31, 23, 59, 59), [0x00, 0x00, 0x00, 0x05, 0x01, 0x01, 0x32, 0x20]),
    ((2099, 12, 31, 23, 59, 59), [0x00, 0x00, 0x00, 0x06, 0x01, 0x01, 0x00, 0x21]),
    ((2032, 2, 28, 23, 59, 59), [0x00, 0x00, 0x00, 0x01, 0x29, 0x02, 0x32, 0x20]),
    ((2031, 2, 28, 23, 59, 59), [0x00, 0x00, 0x00, 0x07, 0x01, 0x03, 0x31, 0x20]),
])
def test_rtc_date_rollover(before, after):
    _, host, clock = rtc_on(*before)
    clock.now += 1
    assert clock_reads(host) == after


def test_rtc_weekday_is_a_counter_of_its_own():
    _, host, clock = rtc_on(2031, 7, 24, 23, 59, 58)      # Thursday (5)
    assert cmos_read(host, 0x06) == 5
    cmos_write(host, 0x06, 0x02)                          # the guest calls it Monday
    assert cmos_read(host, 0x06) == 2
    cmos_write(host, 0x07, 0x10)                          # setting the date leaves it alone
    assert cmos_read(host, 0x06) == 2
    clock.now += 2                                        # midnight: Tuesday by its counter
    assert cmos_read(host, 0x06) == 3 and cmos_read(host, 0x07) == 0x11


def test_rtc_other_cmos_bytes_are_storage_and_c_d_are_read_only():
    rtc, host, _ = rtc_on(2031, 7, 24, 13, 45, 56)
    cmos_write(host, 0x40, 0xA5)
    cmos_write(host, 0x7F, 0x11)
    cmos_write(host, 0x0C, 0xFF)
    cmos_write(host, 0x0D, 0x00)
    assert [cmos_read(host, r) for r in (0x40, 0x7F, 0x0C, 0x0D)] == [0xA5, 0x11, 0x00, 0x80]
    host.out(0x70, 0x80 | 0x40)                           # bit 7 masks NMIs: not an index bit
    assert host.inp(0x70) == 0x40 and host.inp(0x71) == 0xA5


def test_rtc_state_round_trip():
    rtc, host, clock = rtc_on(2031, 7, 24, 13, 45, 56)
    cmos_write(host, 0x40, 0x5A)
    cmos_write(host, 0x06, 0x01)
    cmos_write(host, 0x0B, 0x86)                          # SET, binary: stopped
    cmos_write(host, 0x00, 30)
    state = rtc.get_state()
    assert json.loads(json.dumps(state)) == state and state["held"] is not None
    other = Rtc(clock=clock)
    other_host = FakeHost()
    other.attach(other_host)
    other.set_state(state)
    assert other.get_state() == state
    clock.now += 50
    for h in (host, other_host):
        cmos_write(h, 0x0B, 0x06)                         # both run from the same moment
    clock.now += 1
    assert clock_reads(host) == clock_reads(other_host) == [31, 45, 13, 1, 24, 7, 31, 20]
    assert cmos_read(other_host, 0x40) == 0x5A


# the clock driven through its handlers directly (these came from the KVM tests, which
# needed no guest for them)
FIXED_TIME = calendar.timegm((2031, 7, 24, 13, 45, 56, 0, 0, 0))


def test_rtc_binary_and_12_hour_modes_and_guest_set_time():
    rtc = devices.Rtc(clock=lambda: FIXED_TIME)

    def read(reg):
        rtc._write_index(0x70, 1, reg)
        return rtc._read_data(0x71, 1)

    def write(reg, value):
        rtc._write_index(0x70, 1, reg)
        rtc._write_data(0x71, 1, value)

    write(0x0B, 0x04)                                   # binary, 12-hour
    assert read(0x04) == 0x80 | 1 and read(0x00) == 56  # 1 PM
    write(0x0B, 0x02)                                   # BCD, 24-hour
    write(0x09, 0x32)                                   # the guest sets the year to 2032
    assert read(0x09) == 0x32 and read(0x07) == 0x24
    state = rtc.get_state()
    other = devices.Rtc(clock=lambda: FIXED_TIME)
    other.set_state(state)
    other._write_index(0x70, 1, 0x09)
    assert other._read_data(0x71, 1) == 0x32


def test_rtc_stops_while_set_and_keeps_its_weekday_counter():
    now = [float(calendar.timegm((2031, 7, 24, 23, 59, 50, 0, 0, 0)))]   # a Thursday
    rtc = devices.Rtc(clock=lambda: now[0])

    def read(reg):
        rtc._write_index(0x70, 1, reg)
        return rtc._read_data(0x71, 1)

    def write(reg, value):
        rtc._write_index(0x70, 1, reg)
        rtc._write_data(0x71, 1, value)

    assert read(0x06) == 5                       # Thursday (1 = Sunday)
    write(0x0B, 0x82)                            # SET: the clock stops
    now[0] += 100
    assert read(0x00) == 0x50 and read(0x04) == 0x23
    write(0x00, 0x55)
    assert read(0x00) == 0x55
    other = devices.Rtc(clock=lambda: now[0])
    other.set_state(rtc.get_state())             # a stopped clock survives a snapshot
    for clock in (rtc, other):
        clock._write_index(0x70, 1, 0x0B)
        clock._write_data(0x71, 1, 0x02)         # SET cleared: runs from 23:59:55
    now[0] += 3
    assert read(0x00) == 0x58 and read(0x07) == 0x24
    write(0x06, 0x02)                            # the guest calls it Monday
    now[0] += 2
    assert read(0x07) == 0x25 and read(0x06) == 3   # midnight: Tuesday by its counter
    other._write_index(0x70, 1, 0x07)
    assert other._read_data(0x71, 1) == 0x25


# -- i8042 --------------------------------------------------------------------------------
def i8042_on() -> tuple[I8042, FakeHost]:
    kbd = I8042()
    host = FakeHost()
    kbd.attach(host)
    return kbd, host


@pytest.mark.parametrize("command", [0xFE, 0xF0, 0xFC])
def test_i8042_pulsing_the_reset_line_ends_the_run_with_a_reset(command):
    kbd, host = i8042_on()
    with pytest.raises(EndRun) as info:
        host.io.find(0x64).write(0x64, 1, command)
    assert info.value.exit == exits.Reset(source=f"i8042 command {command:#04x}")
    assert info.value.exit.clean_end and info.value.exit.machine_end


@pytest.mark.parametrize("command", [0xFF, 0xF1, 0xFD])
def test_i8042_pulses_without_bit_0_do_not_reset(command):
    _, host = i8042_on()
    assert host.out(0x64, command) is None


def test_i8042_output_port_reads_back_and_bit_0_resets():
    _, host = i8042_on()
    host.out(0x64, 0xD0)
    assert host.inp(0x64) & 0x01 and host.inp(0x60) == 0x03     # reset line high, A20 on
    host.out(0x64, 0xD1)
    host.out(0x60, 0x01)                                       # A20 off
    host.out(0x64, 0xD0)
    assert host.inp(0x60) == 0x01
    host.out(0x64, 0xD1)
    assert host.out(0x60, 0x02) == exits.Reset(source="i8042 output port bit 0 cleared")


def test_i8042_controller_commands():
    kbd, host = i8042_on()
    replies = []
    for command in (0xAA, 0xAB, 0xA9, 0x20):
        host.out(0x64, command)
        replies.append(host.inp(0x60))
    assert replies == [0x55, 0x00, 0x00, 0x45]
    host.out(0x64, 0x60)
    host.out(0x60, 0x47)
    assert kbd.command_byte == 0x47
    for command, expected in ((0xA7, 0x67), (0xAD, 0x77), (0xA8, 0x57), (0xAE, 0x47)):
        host.out(0x64, command)
        host.out(0x64, 0x20)
        assert host.inp(0x60) == expected, hex(command)


def test_i8042_status_and_the_output_buffer():
    _, host = i8042_on()
    assert host.inp(0x64) == 0x04 and host.inp(0x60) == 0      # system flag; nothing waits
    host.out(0x64, 0xD3)
    assert host.inp(0x64) == 0x0C                              # last write was a command
    host.out(0x60, 0x5A)                                       # as if from the mouse
    host.out(0x64, 0xD2)
    host.out(0x60, 0x5B)                                       # as if from the keyboard
    assert host.inp(0x64) == 0x25                              # full, system, aux data
    assert host.inp(0x60) == 0x5A
    assert host.inp(0x64) == 0x05 and host.inp(0x60) == 0x5B
    host.out(0x60, 0xF4)                                       # a keyboard command: acked
    assert host.inp(0x60) == 0xFA and host.inp(0x64) == 0x04


def test_i8042_state_round_trip():
    kbd, host = i8042_on()
    host.out(0x64, 0xD1)
    host.out(0x60, 0x01)
    host.out(0x64, 0xD3)
    host.out(0x60, 0x99)
    host.out(0x64, 0x60)                                       # waiting for its data byte
    state = kbd.get_state()
    assert state == {"output": [0x99], "output_aux": [True], "command_byte": 0x45,
                     "output_port": 0x01, "pending": 0x60, "last_was_command": True}
    other, other_host = i8042_on()
    other.set_state(json.loads(json.dumps(state)))
    assert other.get_state() == state
    assert other_host.inp(0x64) == 0x2D and other_host.inp(0x60) == 0x99
    other_host.out(0x60, 0x44)
    assert other.command_byte == 0x44


def test_i8042_takes_an_older_state():
    kbd, _ = i8042_on()
    kbd.set_state({"output": [1, 2], "command_byte": 0x45, "pending": None,
                   "last_was_command": False})
    assert kbd.output_aux == [False, False] and kbd.output_port == 0x03


# -- fw_cfg -------------------------------------------------------------------------------
def fw_cfg_on(**kwargs) -> tuple[FwCfg, FakeHost]:
    host = FakeHost(memory=[FakeSlot(0, 64 << 20), FakeSlot(0xFFFF0000, 64 << 10, True),
                            FakeSlot(1 << 32, 32 << 20)], vcpus=kwargs.pop("vcpus", 2))
    fw = FwCfg(**kwargs)
    fw.attach(host)
    return fw, host


def item(host: FakeHost, selector: int, length: int, size: int = 1) -> bytes:
    host.out(0x510, selector, size=2)
    return b"".join(host.inp(0x511, size).to_bytes(size, "little")
                    for _ in range(length // size))


def test_fw_cfg_signature_and_id():
    fw, host = fw_cfg_on()
    assert fw.name == "fw_cfg"
    assert item(host, 0x0000, 8) == b"QEMU\0\0\0\0"           # zeros past the item
    assert item(host, 0x0001, 4) == struct.pack("<I", 1)       # the traditional interface
    assert host.inp(0x510, 2) == 0x0001


def test_fw_cfg_ram_size_and_cpu_counts_default_to_the_partitions():
    _, host = fw_cfg_on()
    assert item(host, 0x0003, 8) == struct.pack("<Q", 96 << 20)   # RAM slots, not the ROM
    assert item(host, 0x0005, 2) == item(host, 0x000F, 2) == struct.pack("<H", 2)
    _, host = fw_cfg_on(ram_size=1 << 30, cpus=4, vcpus=0)
    assert item(host, 0x0003, 8) == struct.pack("<Q", 1 << 30)
    assert item(host, 0x0005, 2) == struct.pack("<H", 4)
    _, host = fw_cfg_on(vcpus=0)
    assert item(host, 0x0005, 2) == struct.pack("<H", 1)          # at least one


def test_fw_cfg_file_directory_and_files():
    fw, host = fw_cfg_on()
    fw.add_file("etc/boot-menu-wait", b"\x00\x05")
    fw.add_file("opt/pyhv/payload", bytes(range(256)) * 3)
    raw = item(host, 0x0019, 4 + 2 * 64)
    assert struct.unpack_from(">I", raw) == (2,)                  # big-endian, as QEMU's
    entries = [struct.unpack_from(">IHH56s", raw, 4 + 64 * i) for i in range(2)]
    assert entries == [(2, 0x20, 0, b"etc/boot-menu-wait".ljust(56, b"\0")),
                       (768, 0x21, 0, b"opt/pyhv/payload".ljust(56, b"\0"))]
    assert item(host, 0x0021, 768, size=4) == bytes(range(256)) * 3
    assert item(host, 0x0020, 4) == b"\x00\x05\x00\x00"
    assert item(host, 0x0022, 4) == bytes(4)                      # no such file


@pytest.mark.parametrize("selector, data", [
    (0x8003, bytes(8)),                   # architecture-specific (QEMU's e820): not offered
    (0x8000, bytes(8)),
    (0x4003, struct.pack("<Q", 96 << 20)),   # the write-channel bit reads as clear
    (0x0002, bytes(8)),                   # an item pyhv does not offer
    (0x3FFF, bytes(8)),
])
def test_fw_cfg_selectors(selector, data):
    _, host = fw_cfg_on()
    assert item(host, selector, 8) == data


def test_fw_cfg_reads_of_several_bytes_are_little_endian():
    _, host = fw_cfg_on()
    host.out(0x510, 0, size=2)
    assert host.inp(0x511, 4) == int.from_bytes(b"QEMU", "little")


@pytest.mark.parametrize("name", ["", "x" * 56, "é" * 28])
def test_fw_cfg_refuses_bad_file_names(name):
    with pytest.raises(InvalidArgument, match="empty or too long"):
        FwCfg().add_file(name, b"")


def test_fw_cfg_state_round_trip_keeps_a_read_in_progress():
    fw, host = fw_cfg_on()
    fw.add_file("etc/x", b"abcdef")
    host.out(0x510, 0x20, size=2)
    assert host.inp(0x511) == ord("a")
    state = fw.get_state()
    assert state == {"selector": 0x20, "offset": 1, "files": {"etc/x": "616263646566"}}
    other, other_host = fw_cfg_on()
    other.set_state(json.loads(json.dumps(state)))
    assert other.get_state() == state and other_host.inp(0x511) == ord("b")


# -- isa-debug-exit -------------------------------------------------------------------------
@pytest.mark.parametrize("port", [0xF4, 0x501])
def test_debug_exit_registers_its_port(port):
    host = FakeHost()
    dev = IsaDebugExit(port) if port != 0xF4 else IsaDebugExit()
    dev.attach(host)
    assert dev.name == "debug-exit" and dev.get_state() == {}
    assert list(host.fast) == [port] and host.fast[port].kind is PortKind.DEBUG_EXIT
    assert host.out(port, 0x31) == exits.DebugExit(0x63, 0x31, port)


def test_every_device_states_only_json():
    host = FakeHost()
    devices = [Uart16550(), I8042(), Rtc(clock=lambda: 0.0), FwCfg(), IsaDebugExit()]
    for device in devices:
        device.attach(host)
    names = [d.name for d in devices]
    assert names == ["com1", "i8042", "rtc", "fw_cfg", "debug-exit"]
    states = {d.name: d.get_state() for d in devices}
    assert json.loads(json.dumps(states)) == states
