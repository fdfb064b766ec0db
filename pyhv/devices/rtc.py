"""The PC's CMOS real-time clock at ports 0x70 (index) and 0x71 (data).

It tells the host's current time (UTC), in BCD or binary and 12/24-hour form as status
register B asks; the guest may set the clock, which shifts it by an offset from the host's.
The other CMOS bytes are plain storage.
"""

from __future__ import annotations

import calendar
import time
from typing import TYPE_CHECKING, Any

from . import Device

if TYPE_CHECKING:
    from ..partition import Partition

INDEX, DATA = 0x70, 0x71
SECONDS, MINUTES, HOURS, WEEKDAY, DAY, MONTH, YEAR = 0x00, 0x02, 0x04, 0x06, 0x07, 0x08, 0x09
STATUS_A, STATUS_B, STATUS_C, STATUS_D, CENTURY = 0x0A, 0x0B, 0x0C, 0x0D, 0x32
B_24H, B_BINARY = 0x02, 0x04
TIME_REGISTERS = (SECONDS, MINUTES, HOURS, WEEKDAY, DAY, MONTH, YEAR, CENTURY)


def _bcd(value: int) -> int:
    return (value // 10) << 4 | value % 10


def _from_bcd(value: int) -> int:
    return (value >> 4) * 10 + (value & 0xF)


class Rtc(Device):
    """The CMOS clock at ports 0x70/0x71; ``clock`` returns seconds since the epoch (UTC)."""

    name = "rtc"

    def __init__(self, clock: Any = time.time) -> None:
        self.clock = clock                # seconds since the epoch, UTC (tests pass a fake)
        self.index = 0
        self.offset = 0.0                 # guest time minus host time, after guest writes
        self.cmos = bytearray(128)
        self.cmos[STATUS_A] = 0x26        # 32.768 kHz base, 1024 Hz rate, no update running
        self.cmos[STATUS_B] = B_24H       # BCD, 24-hour
        self.cmos[STATUS_D] = 0x80        # battery good

    def attach(self, partition: Partition) -> None:
        super().attach(partition)
        partition.add_io_handler(INDEX, write=self._write_index, read=lambda p, s: self.index)
        partition.add_io_handler(DATA, read=self._read_data, write=self._write_data)

    def _write_index(self, port: int, size: int, value: int) -> None:
        self.index = value & 0x7F         # bit 7 masks NMIs: nothing to do here

    def _now(self) -> time.struct_time:
        return time.gmtime(self.clock() + self.offset)

    def _encode(self, value: int) -> int:
        return value if self.cmos[STATUS_B] & B_BINARY else _bcd(value)

    def _decode(self, value: int) -> int:
        return value if self.cmos[STATUS_B] & B_BINARY else _from_bcd(value)

    def _read_data(self, port: int, size: int) -> int:
        i = self.index
        if i not in TIME_REGISTERS:
            return self.cmos[i]
        now = self._now()
        if i == HOURS and not self.cmos[STATUS_B] & B_24H:
            hour = now.tm_hour % 12 or 12
            return self._encode(hour) | (0x80 if now.tm_hour >= 12 else 0)
        value = {SECONDS: now.tm_sec, MINUTES: now.tm_min, HOURS: now.tm_hour,
                 WEEKDAY: (now.tm_wday + 1) % 7 + 1, DAY: now.tm_mday, MONTH: now.tm_mon,
                 YEAR: now.tm_year % 100, CENTURY: now.tm_year // 100}[i]
        return self._encode(value)

    def _write_data(self, port: int, size: int, value: int) -> None:
        i, value = self.index, value & 0xFF
        if i in (STATUS_C, STATUS_D):
            return                            # read-only
        if i not in TIME_REGISTERS or i == WEEKDAY:
            self.cmos[i] = value
            return
        now = self._now()
        fields = [now.tm_year, now.tm_mon, now.tm_mday, now.tm_hour, now.tm_min, now.tm_sec]
        position = {YEAR: 0, MONTH: 1, DAY: 2, HOURS: 3, MINUTES: 4, SECONDS: 5}
        decoded = self._decode(value & 0x7F if i == HOURS else value)
        if i == CENTURY:
            fields[0] = decoded * 100 + fields[0] % 100
        elif i == YEAR:
            fields[0] = fields[0] // 100 * 100 + decoded
        else:
            fields[position[i]] = decoded
        try:
            wanted = calendar.timegm((*fields, 0, 0, 0))
        except (ValueError, OverflowError):
            return                            # an impossible date: ignored, like hardware
        self.offset = wanted - self.clock()

    def get_state(self) -> dict[str, Any]:
        return {"index": self.index, "offset": self.offset, "cmos": self.cmos.hex()}

    def set_state(self, state: dict[str, Any]) -> None:
        self.index = int(state["index"]) & 0x7F
        self.offset = float(state["offset"])
        self.cmos = bytearray(bytes.fromhex(state["cmos"]))
