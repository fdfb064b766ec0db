"""The PC's MC146818 clock with what :class:`pyhv.devices.Rtc` leaves out: the update-in-
progress flag, the alarm, status register C and IRQ 8, so guests can wait for the next second
(status A's UIP bit is set for the last 244 µs of each second), set an alarm (registers 1, 3
and 5; a value with its two top bits set matches any), read what happened in status C (IRQF,
AF alarm, UF update ended; reading clears them) and take interrupts: with the in-kernel
irqchip, IRQ 8 rises when an event status B enables (AIE, UIE) happens, and falls when status
C is read.  The periodic interrupt (PIE) is not provided.  :meth:`PcRtc.next_alarm` tells a
suspended machine when its alarm wakes it.

>>> rtc = PcRtc(clock=lambda: 1_000_000_000.5)       # 2001-09-09 01:46:40.5 UTC
>>> rtc.cmos[1], rtc.cmos[3], rtc.cmos[5] = 0x50, 0xC0, 0xC0   # alarm at hh:mm:50 (BCD)
>>> rtc.next_alarm() - 1_000_000_000
10.0
"""

from __future__ import annotations

import math
import threading
import time
from typing import TYPE_CHECKING, Any

from .base import Device
from .rtc import B_24H, B_BINARY, B_SET, DATA, INDEX, STATUS_A, STATUS_B, STATUS_C, Rtc

if TYPE_CHECKING:
    from .host import DeviceHost

SECONDS_ALARM, MINUTES_ALARM, HOURS_ALARM = 0x01, 0x03, 0x05
UIP, DONT_CARE = 0x80, 0xC0
B_UIE, B_AIE, B_PIE = 0x10, 0x20, 0x40
C_IRQF, C_AF, C_UF = 0x80, 0x20, 0x10
UIP_HOLD = 244e-6              # 8 cycles of the 32.768 kHz time base before each update
RTC_IRQ = 8
DAY = 86400


class PcRtc(Rtc):
    """See the module docstring; ``clock`` returns seconds since the epoch (UTC)."""

    name = "rtc"

    def __init__(self, clock: Any = time.time) -> None:
        super().__init__(clock)
        self.flags = 0                    # status C bits not yet read
        self.since = self._now()          # guest time of the last status C read
        self.irq_raised = False
        self._rtc_lock = threading.RLock()
        self._wake = threading.Condition(self._rtc_lock)
        self._thread: threading.Thread | None = None
        self._closed = False

    def _now(self) -> float:
        return float(self.clock() + self.offset)

    def now(self) -> float:
        """The guest's time, seconds since the epoch (the host's plus what the guest set)."""
        return self._now()

    @property
    def alarm_interrupts(self) -> bool:
        """Whether the guest enabled the alarm interrupt (status B AIE)."""
        return bool(self.cmos[STATUS_B] & B_AIE)

    # -- registers --------------------------------------------------------------------------
    def attach(self, partition: DeviceHost) -> None:
        Device.attach(self, partition)       # the handlers are this class's, over Rtc's
        partition.add_io_handler(INDEX, write=self._write_index, read=lambda p, s: self.index)
        partition.add_io_handler(DATA, read=self._data_in, write=self._data_out)

    def _data_in(self, port: int, size: int) -> int:
        with self._rtc_lock:
            if self.index == STATUS_A:
                frac = self._now() % 1.0
                uip = self.held is None and frac >= 1.0 - UIP_HOLD
                return (self.cmos[STATUS_A] & 0x7F) | (UIP if uip else 0)
            if self.index == STATUS_C:
                value = self._status_c()
                self.flags = 0
                self.since = self._now()
                self._lower()
                self._wake.notify_all()
                return value
            return self._read_data(port, size)

    def _data_out(self, port: int, size: int, value: int) -> None:
        with self._rtc_lock:
            if self.index == STATUS_A:
                self.cmos[STATUS_A] = value & 0x7F          # UIP is read-only
                return
            self._write_data(port, size, value)
            if self.index == STATUS_B:
                self._start_thread()
                self._wake.notify_all()

    # -- what happened since status C was read ----------------------------------------------
    def _events(self, until: float) -> int:
        """The status C event bits (AF, UF) for (since, until]."""
        bits = 0
        if self.held is None and math.floor(until) > math.floor(self.since):
            bits |= C_UF
        alarm = self.next_alarm(self.since)
        if alarm is not None and alarm <= until:
            bits |= C_AF
        return bits

    def _status_c(self) -> int:
        flags = self.flags | self._events(self._now())
        if flags & self.cmos[STATUS_B] & (C_AF | C_UF):   # AIE and UIE sit over AF and UF
            flags |= C_IRQF
        return flags

    def _alarm_field(self, register: int) -> int | None:
        raw = self.cmos[register]
        if raw & DONT_CARE == DONT_CARE:
            return None
        binary = self.cmos[STATUS_B] & B_BINARY
        if register == HOURS_ALARM and not self.cmos[STATUS_B] & B_24H:
            hour = (raw & 0x7F) if binary else (raw >> 4 & 0x7) * 10 + (raw & 0xF)
            if not 1 <= hour <= 12:
                return 99                         # no such hour: never matches
            return hour % 12 + (12 if raw & 0x80 else 0)
        return raw if binary else (raw >> 4) * 10 + (raw & 0xF)

    def next_alarm(self, after: float | None = None) -> float | None:
        """Guest time (seconds since the epoch) of the first alarm second after ``after``
        (default: now), or None when the alarm registers can never match (or the clock is
        stopped)."""
        if self.held is not None:
            return None
        want = [self._alarm_field(r) for r in (HOURS_ALARM, MINUTES_ALARM, SECONDS_ALARM)]
        hour, minute, second = want
        if (hour is not None and hour > 23) or (minute is not None and minute > 59) or (
                second is not None and second > 59):
            return None
        start = math.floor(self._now() if after is None else after) + 1
        t = start
        while t < start + DAY + 1:
            tod = t % DAY
            h, m, s = tod // 3600, tod // 60 % 60, tod % 60
            if hour is not None and h != hour:
                t += 3600 - tod % 3600            # the next hour
            elif minute is not None and m != minute:
                t += 60 - s                       # the next minute
            elif second is not None and s != second:
                t += 1
            else:
                return float(t)
        return None

    # -- IRQ 8 ------------------------------------------------------------------------------
    def _due(self) -> float | None:
        """When the next enabled event happens (guest time), or None."""
        b = self.cmos[STATUS_B]
        if self.held is not None or b & B_SET:
            return None
        times = []
        if b & B_UIE:
            times.append(math.floor(self._now()) + 1.0)
        if b & B_AIE:
            alarm = self.next_alarm()
            if alarm is not None:
                times.append(alarm)
        return min(times) if times else None

    def _start_thread(self) -> None:
        part = getattr(self, "partition", None)
        if (self._thread is None and not self._closed and part is not None and part.irqchip
                and self.cmos[STATUS_B] & (B_AIE | B_UIE)):
            self._thread = threading.Thread(target=self._interrupts, name="pyhv-rtc",
                                            daemon=True)
            self._thread.start()

    def _interrupts(self) -> None:
        with self._rtc_lock:
            while not self._closed:
                if self.irq_raised:
                    self._wake.wait()             # until status C is read
                    continue
                self.flags |= self._events(self._now())
                if self._status_c() & C_IRQF:
                    self.irq_raised = True
                    try:
                        self.partition.set_irq(RTC_IRQ, True)
                    except Exception:            # the partition closed under us
                        return
                    continue
                due = self._due()
                if due is None:
                    self._wake.wait()
                else:
                    self._wake.wait(min(max(due - self._now(), 0.001), 1.0))

    def _lower(self) -> None:
        if self.irq_raised:
            self.irq_raised = False
            try:
                self.partition.set_irq(RTC_IRQ, False)
            except Exception:
                pass

    def close(self) -> None:
        """Stop the interrupt thread (idempotent)."""
        with self._rtc_lock:
            self._closed = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def get_state(self) -> dict[str, Any]:
        return super().get_state() | {"flags": self.flags}

    def set_state(self, state: dict[str, Any]) -> None:
        with self._rtc_lock:
            super().set_state(state)
            self.flags = int(state.get("flags", 0)) & (C_AF | C_UF)
            self.since = self._now()
