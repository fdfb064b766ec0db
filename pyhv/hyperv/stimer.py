"""Synthetic timers STIMER0-3 of one vCPU, and the host thread that fires them.

A timer counts in reference time (100 ns units, :mod:`pyhv.hyperv.clock`).  Periodic timers
fire every COUNT units from when they are enabled; one-shot timers fire when the reference
time reaches COUNT.  In message mode an expiry posts ``HVMSG_TIMER_EXPIRED`` (timer index,
expiration time, delivery time) to SINTx of the vCPU's SynIC; while that slot is busy the
timer waits (and is not re-armed) until the guest's EOM lets the message in.  In direct
mode it raises the timer's own APIC vector.  A periodic timer that fell behind delivers its
missed expirations one after another, unless it is "lazy", which skips them.

>>> from pyhv.hyperv.stimer import TimerScheduler
>>> import threading
>>> fired = threading.Event()
>>> scheduler = TimerScheduler(ready=lambda: True, alive=lambda: True)
>>> import time; scheduler.schedule("t", time.monotonic_ns() + 1_000_000, fired.set)
>>> fired.wait(5)
True
>>> scheduler.close()
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from ..errors import InvalidArgument
from . import tlfs
from .clock import ReferenceClock
from .synic import TIMER_SOURCE, PostResult, Refused, SynIC, WaitingMessage, message_bytes

log = logging.getLogger("pyhv.hyperv")

IDLE_CHECK_NS = 100_000_000     # how often a waiting thread looks whether its partition lives
# A periodic timer is not re-armed sooner than this after an expiry reached the guest: its
# expiration times stay exact, but a guest cannot make the host thread spin with a 100 ns
# period (message mode is paced by the guest's EOMs anyway; direct mode is not)
MIN_REARM_NS = 100_000
NOT_RUNNING_RETRY_NS = 2_000_000  # a due timer waits this long while no vCPU runs


class TimerScheduler:
    """Calls at host ``CLOCK_MONOTONIC`` deadlines, on one thread that exists only while
    something is scheduled.  A call due while ``ready()`` is False (no vCPU runs: a pause, a
    snapshot) waits until it is True; the thread ends once ``alive()`` is False."""

    def __init__(self, ready: Callable[[], bool], alive: Callable[[], bool]) -> None:
        self._ready, self._alive = ready, alive
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[tuple[int, int, str]] = []
        self._calls: dict[str, tuple[int, Callable[[], object]]] = {}
        self._seq = 0
        self._thread: threading.Thread | None = None
        self._closed = False
        self.errors: list[BaseException] = []       # what calls raised (the thread goes on)

    def schedule(self, key: str, deadline_ns: int, call: Callable[[], object]) -> None:
        """Call ``call()`` at ``deadline_ns``, replacing what ``key`` had scheduled."""
        with self._cond:
            if self._closed:
                return
            self._seq += 1
            self._calls[key] = (self._seq, call)
            heapq.heappush(self._heap, (deadline_ns, self._seq, key))
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="pyhv-hyperv-timers",
                                                daemon=True)
                self._thread.start()
            self._cond.notify()

    def cancel(self, key: str) -> None:
        with self._cond:
            self._calls.pop(key, None)

    def pending(self) -> int:
        with self._cond:
            return len(self._calls)

    def close(self) -> None:
        """Cancel everything and wait for the thread to end (idempotent)."""
        with self._cond:
            self._closed = True
            self._calls.clear()
            self._heap.clear()
            thread = self._thread
            self._cond.notify()
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _next_due(self) -> Callable[[], object] | None:
        """Wait for the next due call (None: time to end the thread).  Holds the lock."""
        while True:
            if self._closed or not self._alive():
                return None
            while self._heap and self._calls.get(self._heap[0][2], (None,))[0] != \
                    self._heap[0][1]:
                heapq.heappop(self._heap)            # canceled or replaced
            if not self._heap:
                return None
            deadline, _seq, key = self._heap[0]
            now = time.monotonic_ns()
            if deadline > now:
                self._cond.wait(min(deadline - now, IDLE_CHECK_NS) / 1e9)
                continue
            if not self._ready():
                self._cond.wait(NOT_RUNNING_RETRY_NS / 1e9)
                continue
            heapq.heappop(self._heap)
            return self._calls.pop(key)[1]

    def _loop(self) -> None:
        while True:
            with self._cond:
                call = self._next_due()
                if call is None:
                    self._thread = None
                    return
            try:
                call()
            except BaseException as exc:   # noqa: BLE001 - a timer must not kill the thread
                log.warning("a synthetic timer's expiry failed: %s: %s", type(exc).__name__,
                            exc)
                self.errors.append(exc)


class SyntheticTimers:
    """STIMER0-3 of the vCPU whose SynIC is ``synic``."""

    def __init__(self, synic: SynIC, clock: ReferenceClock, scheduler: TimerScheduler,
                 direct_allowed: bool) -> None:
        self.synic = synic
        self.clock = clock
        self.scheduler = scheduler
        self.direct_allowed = direct_allowed
        self.lock = synic.lock
        self.config = [0] * tlfs.STIMER_COUNT
        self.count = [0] * tlfs.STIMER_COUNT
        self.expiration: list[int | None] = [None] * tlfs.STIMER_COUNT  # reference time
        self.waiting = [False] * tlfs.STIMER_COUNT   # its message waits for the slot
        self.expirations = [0] * tlfs.STIMER_COUNT   # delivered, for tests and stats

    def _key(self, i: int) -> str:
        return f"vp{self.synic.vp_index}.{TIMER_SOURCE}{i}"

    def _source(self, i: int) -> str:
        return f"{TIMER_SOURCE}{i}"

    # -- MSRs -----------------------------------------------------------------------------
    def read_msr(self, index: int) -> int:
        i, is_count = divmod(index - tlfs.HV_X64_MSR_STIMER0_CONFIG, 2)
        with self.lock:
            return self.count[i] if is_count else self.config[i]

    def write_msr(self, index: int, value: int, now: int) -> None:
        """A guest WRMSR of STIMERi_CONFIG or _COUNT; ``now`` is the reference time."""
        i, is_count = divmod(index - tlfs.HV_X64_MSR_STIMER0_CONFIG, 2)
        with self.lock:
            if is_count:
                self._stop(i)
                self.count[i] = value
                if value == 0:
                    self.config[i] &= ~tlfs.STIMER_ENABLE
                elif self.config[i] & tlfs.STIMER_AUTO_ENABLE:
                    self.config[i] |= tlfs.STIMER_ENABLE
            else:
                if value & ~tlfs.STIMER_WRITABLE:
                    raise Refused(index)
                if value & tlfs.STIMER_DIRECT and not self.direct_allowed:
                    raise Refused(index)
                self._stop(i)
                if not value & tlfs.STIMER_DIRECT and tlfs.stimer_sint(value) == 0:
                    value &= ~tlfs.STIMER_ENABLE      # SINT0 means "no SINT": disabled
                self.config[i] = value
            if self.config[i] & tlfs.STIMER_ENABLE and self.count[i]:
                self._start(i, now)                 # a count of 0 arms nothing (as KVM)

    def _stop(self, i: int) -> None:
        self.scheduler.cancel(self._key(i))
        self.synic.withdraw(self._source(i))
        self.expiration[i] = None
        self.waiting[i] = False

    def _start(self, i: int, now: int) -> None:
        if self.config[i] & tlfs.STIMER_PERIODIC:
            self._arm(i, now + self.count[i])
        else:
            self._arm(i, self.count[i])           # absolute; in the past fires at once

    def _arm(self, i: int, expiration: int, not_before_ns: int = 0) -> None:
        self.expiration[i] = expiration
        self.scheduler.schedule(self._key(i), max(self.clock.mono_at(expiration),
                                                  not_before_ns),
                                lambda: self._expire(i, expiration))

    # -- expiry ---------------------------------------------------------------------------
    def _expire(self, i: int, expiration: int) -> None:
        with self.lock:
            config = self.config[i]
            if not config & tlfs.STIMER_ENABLE or self.expiration[i] != expiration:
                return                                 # reprogrammed meanwhile
            if config & tlfs.STIMER_DIRECT:
                self.synic.interrupt(tlfs.stimer_vector(config))
                self._delivered(i, expiration)
                return
            self.waiting[i] = True
            result = self.synic.post(tlfs.stimer_sint(config), WaitingMessage(
                self._source(i), lambda: self._message(i, expiration),
                lambda: self._delivered(i, expiration)))
            if result is PostResult.BUSY:
                log.debug("STIMER%d of VP %d: a message already waits", i,
                          self.synic.vp_index)

    def _message(self, i: int, expiration: int) -> bytes:
        payload = (i.to_bytes(4, "little") + bytes(4) + expiration.to_bytes(8, "little") +
                   self.clock.now().to_bytes(8, "little"))
        return message_bytes(tlfs.HVMSG_TIMER_EXPIRED, payload)

    def _delivered(self, i: int, expiration: int) -> None:
        """The expiry reached the guest: one-shot timers disable, periodic ones re-arm."""
        self.waiting[i] = False
        self.expirations[i] += 1
        config = self.config[i]
        if not config & tlfs.STIMER_PERIODIC:
            self.config[i] = config & ~tlfs.STIMER_ENABLE
            self.expiration[i] = None
            return
        period = self.count[i]
        following = expiration + period
        now = self.clock.now()
        if following <= now and config & tlfs.STIMER_LAZY:
            following = now + period - (now - expiration) % period   # skip the missed ones
        self._arm(i, following, time.monotonic_ns() + MIN_REARM_NS)

    # -- snapshots ------------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        with self.lock:
            return {"config": list(self.config), "count": list(self.count),
                    "expiration": list(self.expiration), "waiting": list(self.waiting)}

    def set_state(self, state: dict[str, Any]) -> None:
        """Take back :meth:`get_state` (the clock already restored): armed timers arm again
        on the host, a waiting expiry waits again for its slot."""
        with self.lock:
            for i in range(tlfs.STIMER_COUNT):
                self._stop(i)
            try:
                config = [int(v) for v in state["config"]]
                count = [int(v) for v in state["count"]]
                expiration = [None if v is None else int(v) for v in state["expiration"]]
                waiting = [bool(v) for v in state["waiting"]]
            except (KeyError, TypeError, ValueError):
                raise InvalidArgument("a synthetic timer state is malformed") from None
            if not len(config) == len(count) == len(expiration) == len(waiting) == \
                    tlfs.STIMER_COUNT:
                raise InvalidArgument("a synthetic timer state needs 4 timers")
            self.config, self.count = config, count
            for i in range(tlfs.STIMER_COUNT):
                exp = expiration[i]
                if exp is None or not config[i] & tlfs.STIMER_ENABLE:
                    continue
                if waiting[i]:
                    self.expiration[i] = exp
                    self._expire(i, exp)
                else:
                    self._arm(i, exp)
