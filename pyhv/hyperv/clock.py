"""The partition reference clock: 100 ns units since the clock started, as the guest reads it
from TIME_REF_COUNT and from the reference TSC page.

Both readings are one function of the guest's TSC, ``((tsc * scale) >> 64) + offset``: the
MSR handler reads the vCPU's TSC at the exit and computes exactly what the page's formula
gives at that TSC, so to the guest the two never disagree, on any vCPU.  Host timers
(the synthetic timers) need the reference time without a vCPU at hand: the clock keeps a
calibration pair (guest TSC, host ``CLOCK_MONOTONIC``) refreshed at every exit that reads
the TSC, and extrapolates with the TSC frequency.

>>> from pyhv.hyperv.clock import ReferenceClock
>>> clock = ReferenceClock(tsc_khz=2_000_000)          # a 2 GHz TSC
>>> clock.start(tsc=5_000_000_000, mono_ns=0)           # started at TSC 5e9
>>> clock.at_tsc(5_000_000_000), clock.at_tsc(7_000_000_000)   # 0, then one second later
(0, 10000000)
>>> clock.now(mono_ns=500_000_000)                      # half a second later, by the host
5000000
>>> import struct; seq, _, scale, offset = struct.unpack("<IIQq", clock.page(7)); seq, offset
(7, -24999999)
"""

from __future__ import annotations

import struct
import threading
import time
from typing import Any

TSC_PAGE = struct.Struct("<IIQq")       # sequence, reserved, scale, offset
REF_HZ = 10_000_000                      # reference time counts 100 ns units


class ReferenceClock:
    """Reference time from the guest TSC of ``tsc_khz`` (None: unknown, then from the host's
    monotonic clock alone, and the TSC page tells the guest to use the MSR)."""

    def __init__(self, tsc_khz: int | None) -> None:
        self.tsc_khz = tsc_khz if tsc_khz and tsc_khz > 0 else None
        # scale: 2^64 * (100 ns ticks per TSC tick), so ((tsc * scale) >> 64) counts ticks
        self.scale = ((REF_HZ // 1000) << 64) // self.tsc_khz if self.tsc_khz else 0
        self.offset = 0
        self.started = False
        self._lock = threading.Lock()
        self._tsc0 = 0           # calibration: guest TSC ...
        self._mono0 = 0          # ... and host CLOCK_MONOTONIC ns at the same moment
        self._ref0 = 0           # without a TSC frequency: reference time at _mono0

    @property
    def tsc_page_valid(self) -> bool:
        """Whether the guest may compute the time from the TSC page."""
        return self.tsc_khz is not None

    def start(self, tsc: int, mono_ns: int | None = None) -> None:
        """Start the clock at 0 now (``tsc`` is the guest TSC now)."""
        mono = time.monotonic_ns() if mono_ns is None else mono_ns
        with self._lock:
            self.offset = -((tsc * self.scale) >> 64)
            self._tsc0, self._mono0, self._ref0 = tsc, mono, 0
            self.started = True

    def at_tsc(self, tsc: int) -> int:
        """Reference time when the guest TSC reads ``tsc`` (the page's formula)."""
        if not self.tsc_khz:
            return self.now()
        return max(((tsc * self.scale) >> 64) + self.offset, 0)

    def observe(self, tsc: int, mono_ns: int | None = None) -> int:
        """A fresh (guest TSC, host time) pair: refresh the calibration; the reference time
        at ``tsc``."""
        mono = time.monotonic_ns() if mono_ns is None else mono_ns
        if not self.started:
            self.start(tsc, mono)
        ref = self.at_tsc(tsc)
        if self.tsc_khz:
            with self._lock:
                self._tsc0, self._mono0 = tsc, mono
        return ref

    def now(self, mono_ns: int | None = None) -> int:
        """The reference time now by the host's clock (extrapolated from the calibration)."""
        mono = time.monotonic_ns() if mono_ns is None else mono_ns
        with self._lock:
            tsc0, mono0, ref0 = self._tsc0, self._mono0, self._ref0
        if not self.tsc_khz:
            return max(ref0 + (mono - mono0) // 100, 0)
        return self.at_tsc(tsc0 + (mono - mono0) * self.tsc_khz // 1_000_000)

    def mono_at(self, ref: int) -> int:
        """The host ``CLOCK_MONOTONIC`` ns at which the reference time reaches ``ref``."""
        mono = time.monotonic_ns()
        return mono + (ref - self.now(mono)) * 100

    def page(self, sequence: int) -> bytes:
        """The reference TSC page's first bytes (sequence 0 when the TSC cannot be used)."""
        if not self.tsc_khz:
            return TSC_PAGE.pack(0, 0, 0, 0)
        return TSC_PAGE.pack(sequence, 0, self.scale, self.offset)

    # -- snapshots ------------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        return {"offset": self.offset, "started": self.started, "ref": self.now()}

    def set_state(self, state: dict[str, Any], tsc: int | None) -> None:
        """Take back :meth:`get_state`; ``tsc`` is the (restored) guest TSC now, if known."""
        mono = time.monotonic_ns()
        with self._lock:
            self.offset = int(state["offset"])
            self.started = bool(state["started"])
            self._mono0 = mono
            self._ref0 = int(state["ref"])          # what counts without a TSC frequency
            if tsc is not None:
                self._tsc0 = tsc
