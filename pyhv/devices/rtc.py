"""The PC's CMOS real-time clock at ports 0x70 (index) and 0x71 (data).

It tells the host's current time (UTC), in BCD or binary and 12/24-hour form as status
register B asks; the guest may set the clock, which shifts it by an offset from the host's.
The other CMOS bytes are plain storage.

Setting the clock follows the MC146818: while register B's SET bit (bit 7) is on, the time
registers stop and writes only change them; clearing SET starts the clock from all of them
at once.  Without SET each write takes effect at once, composed with the other registers as
they read at that moment.  A combination that is no date (Feb 31, hour 25, a bad BCD digit)
keeps the registers stopped as written until further writes make it one, so a guest may set
the day before the month.  The weekday is a counter of its own, as on the chip: it starts
as the date's weekday, reads back what the guest writes and advances at midnight; setting
the date leaves it alone.
"""

from __future__ import annotations

import datetime
import time
from typing import TYPE_CHECKING, Any

from .base import Device

if TYPE_CHECKING:
    from .host import DeviceHost

INDEX, DATA = 0x70, 0x71
SECONDS, MINUTES, HOURS, WEEKDAY, DAY, MONTH, YEAR = 0x00, 0x02, 0x04, 0x06, 0x07, 0x08, 0x09
STATUS_A, STATUS_B, STATUS_C, STATUS_D, CENTURY = 0x0A, 0x0B, 0x0C, 0x0D, 0x32
B_SET, B_24H, B_BINARY = 0x80, 0x02, 0x04
TIME_REGISTERS = (SECONDS, MINUTES, HOURS, WEEKDAY, DAY, MONTH, YEAR, CENTURY)
# the fields a stopped clock holds, in this order: year (with the century), month, day of
# the month, hour (0-23), minute, second, weekday (1 = Sunday)
FIELDS = ("year", "month", "day", "hour", "minute", "second", "weekday")


def _bcd(value: int) -> int:
    return (value // 10) << 4 | value % 10


def _from_bcd(value: int) -> int:
    return (value >> 4) * 10 + (value & 0xF)


def _weekday(year: int, month: int, day: int) -> int:
    """1 = Sunday ... 7 = Saturday, as the RTC counts."""
    return datetime.date(year, month, day).isoweekday() % 7 + 1


class Rtc(Device):
    """The CMOS clock at ports 0x70/0x71; ``clock`` returns seconds since the epoch (UTC)."""

    name = "rtc"

    def __init__(self, clock: Any = time.time) -> None:
        self.clock = clock                # seconds since the epoch, UTC (tests pass a fake)
        self.index = 0
        self.offset = 0.0                 # guest time minus host time, after guest writes
        self.weekday_shift = 0            # the weekday counter minus the date's weekday
        self.held: list[int] | None = None   # FIELDS while the clock is stopped
        self.bad: dict[int, int] = {}     # time registers written with a bad BCD digit
        self.cmos = bytearray(128)
        self.cmos[STATUS_A] = 0x26        # 32.768 kHz base, 1024 Hz rate, no update running
        self.cmos[STATUS_B] = B_24H       # BCD, 24-hour
        self.cmos[STATUS_D] = 0x80        # battery good

    def attach(self, partition: DeviceHost) -> None:
        super().attach(partition)
        partition.add_io_handler(INDEX, write=self._write_index, read=lambda p, s: self.index)
        partition.add_io_handler(DATA, read=self._read_data, write=self._write_data)

    def _write_index(self, port: int, size: int, value: int) -> None:
        self.index = value & 0x7F         # bit 7 masks NMIs: nothing to do here

    def _fields(self) -> list[int]:
        """The time registers' values now (decoded, in FIELDS order)."""
        if self.held is not None:
            return list(self.held)
        now = time.gmtime(self.clock() + self.offset)
        weekday = (now.tm_wday + 1 + self.weekday_shift) % 7 + 1
        return [now.tm_year, now.tm_mon, now.tm_mday, now.tm_hour, now.tm_min, now.tm_sec,
                weekday]

    def _encode(self, value: int) -> int:
        return value if self.cmos[STATUS_B] & B_BINARY else _bcd(value)

    def _decode(self, value: int) -> int:
        return value if self.cmos[STATUS_B] & B_BINARY else _from_bcd(value)

    def _read_data(self, port: int, size: int) -> int:
        i = self.index
        if i not in TIME_REGISTERS:
            return self.cmos[i]
        if i in self.bad:
            return self.bad[i]                # held as written
        year, month, day, hour, minute, second, weekday = self._fields()
        if i == HOURS and not self.cmos[STATUS_B] & B_24H:
            return self._encode(hour % 12 or 12) | (0x80 if hour >= 12 else 0)
        value = {SECONDS: second, MINUTES: minute, HOURS: hour, WEEKDAY: weekday, DAY: day,
                 MONTH: month, YEAR: year % 100, CENTURY: year // 100}[i]
        return self._encode(value) & 0xFF

    def _write_data(self, port: int, size: int, value: int) -> None:
        i, value = self.index, value & 0xFF
        if i in (STATUS_C, STATUS_D):
            return                            # read-only
        if i == STATUS_B:
            was_set = self.cmos[STATUS_B] & B_SET
            if value & B_SET and not was_set:
                self.held = self._fields()    # the clock stops where it is
            self.cmos[STATUS_B] = value
            if was_set and not value & B_SET:
                self._start()                 # and starts again from what was written
            return
        if i not in TIME_REGISTERS:
            self.cmos[i] = value
            return
        fields = self._fields()
        digits = value & 0x7F if i == HOURS else value
        if not self.cmos[STATUS_B] & B_BINARY and (digits & 0xF > 9 or digits >> 4 > 9):
            # no BCD number: the clock stops with the register as written
            self.bad[i] = value
            self.held = fields
            return
        self.bad.pop(i, None)
        if i == HOURS and not self.cmos[STATUS_B] & B_24H:
            decoded = self._decode(value & 0x7F) % 12 + (12 if value & 0x80 else 0)
        else:
            decoded = self._decode(value)
        if i == CENTURY:
            fields[0] = decoded * 100 + fields[0] % 100
        elif i == YEAR:
            fields[0] = fields[0] // 100 * 100 + decoded
        else:
            position = {MONTH: 1, DAY: 2, HOURS: 3, MINUTES: 4, SECONDS: 5, WEEKDAY: 6}[i]
            fields[position] = decoded
        self.held = fields
        if not self.cmos[STATUS_B] & B_SET:
            self._start()

    def _start(self) -> None:
        """Run the clock from the held fields, if they make a date (else they stay held)."""
        assert self.held is not None
        if self.bad:
            return                            # a register still holds a bad digit
        year, month, day, hour, minute, second, weekday = self.held
        try:
            wanted = datetime.datetime(year, month, day, hour, minute, second,
                                       tzinfo=datetime.timezone.utc).timestamp()
        except (ValueError, OverflowError):
            return                            # no date yet: the registers keep what they hold
        self.offset = wanted - self.clock()
        self.weekday_shift = (weekday - _weekday(year, month, day)) % 7
        self.held = None

    def get_state(self) -> dict[str, Any]:
        return {"index": self.index, "offset": self.offset, "cmos": self.cmos.hex(),
                "weekday_shift": self.weekday_shift,
                "held": None if self.held is None else list(self.held),
                "bad": {str(reg): raw for reg, raw in self.bad.items()}}

    def set_state(self, state: dict[str, Any]) -> None:
        self.index = int(state["index"]) & 0x7F
        self.offset = float(state["offset"])
        self.cmos = bytearray(bytes.fromhex(state["cmos"]))
        self.weekday_shift = int(state.get("weekday_shift", 0)) % 7
        held = state.get("held")
        self.held = None if held is None or len(held) != len(FIELDS) else [int(v) for v in held]
        self.bad = {int(reg) & 0x7F: int(raw) & 0xFF for reg, raw in state.get("bad", {}).items()
                    if int(reg) & 0x7F in TIME_REGISTERS}
