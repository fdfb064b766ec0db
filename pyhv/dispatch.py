"""Handler-driven running: port and MMIO handlers, and the loop that serves them.

Handlers get plain numbers, one signature for port IO and MMIO (as in kvmtool)::

    def read(address: int, size: int) -> int          # or bytes of exactly `size`
    def write(address: int, size: int, value: int) -> None

``address`` is the port or the absolute guest-physical address.  String port IO
(``rep outsb``/``rep insb``) calls the handler once per element.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._ffi import ffi, lib
from .errors import InvalidArgument, KvmError, OverlapError, StaleExitError, Timeout, UnhandledExit
from .exits import CLEAN_ENDS, Exit, Halt, Syscall, decode, encode_answer
from .vcpu import (
    _BULK,
    _CANCELED,
    _HALT,
    _INTERRUPTED,
    _IO,
    _MMIO,
    _OUTPUT_FULL,
    _SINGLE_OUT,
    _TIMEOUT,
)

if TYPE_CHECKING:
    from .vcpu import VCpu

ReadHandler = Callable[[int, int], int | bytes]
WriteHandler = Callable[[int, int, int], None]
OutputSink = Callable[[bytes], Any]
SyscallHandler = Callable[[int, tuple[int, ...]], int | None]


class EndRun(Exception):  # noqa: N818 - a signal to the run loop, not an error
    """Raise from a handler to end the current run cleanly with ``exit`` as its final exit
    (a device that resets the machine raises ``EndRun(exits.Reset(...))``)."""

    def __init__(self, exit: Exit) -> None:
        super().__init__(exit)
        self.exit = exit


@dataclass(frozen=True, eq=False, slots=True)
class Handler:
    """A registered handler for ``[start, end)`` of a port or MMIO address space."""

    space: str                       # "io" or "mmio"
    start: int
    end: int
    read: ReadHandler | None
    write: WriteHandler | None

    def __repr__(self) -> str:
        return f"<pyhv.Handler {self.space} [{self.start:#x}, {self.end:#x})>"


class AddressSpace:
    """Non-overlapping ranges of one address space (ports or GPAs) mapped to handlers."""

    def __init__(self, space: str, limit: int, cached: bool) -> None:
        self.space = space
        self.limit = limit
        self._starts: list[int] = []
        self._handlers: list[Handler] = []
        # ports: 64K possible keys, so a per-port cache is bounded; MMIO is searched each time
        self._cache: dict[int, Handler | None] | None = {} if cached else None
        self.fallback: Handler | None = None    # takes what no range claims, if set

    def add(self, start: int, size: int, read: ReadHandler | None,
            write: WriteHandler | None) -> Handler:
        for name, value in (("start", start), ("size", size)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidArgument(f"{self.space} handler {name} must be an int, not {value!r}")
        if size <= 0 or start < 0 or start + size > self.limit:
            raise InvalidArgument(f"{self.space} handler range [{start:#x}, {start + size:#x}) "
                                  f"is empty or outside 0..{self.limit:#x}")
        if read is None and write is None:
            raise InvalidArgument("give a read handler, a write handler or both")
        for fn in (read, write):
            if fn is not None and not callable(fn):
                raise InvalidArgument(f"handler {fn!r} is not callable")
        i = bisect.bisect(self._starts, start)
        for neighbour in self._handlers[max(i - 1, 0):i + 1]:
            if neighbour.start < start + size and start < neighbour.end:
                raise OverlapError(f"{self.space} range [{start:#x}, {start + size:#x}) "
                                   f"overlaps {neighbour!r}")
        handler = Handler(self.space, start, start + size, read, write)
        self._starts.insert(i, start)
        self._handlers.insert(i, handler)
        if self._cache is not None:
            self._cache.clear()
        return handler

    def claimed(self, address: int) -> Handler | None:
        """The registered range holding ``address`` (never the fallback)."""
        i = bisect.bisect(self._starts, address) - 1
        return self._handlers[i] if i >= 0 and address < self._handlers[i].end else None

    def set_fallback(self, read: ReadHandler | None, write: WriteHandler | None) -> None:
        self.fallback = None if read is None and write is None else Handler(
            self.space, 0, self.limit, read, write)
        if self._cache is not None:
            self._cache.clear()

    def remove(self, handler: Handler) -> None:
        i = self._handlers.index(handler)
        del self._handlers[i]
        del self._starts[i]
        if self._cache is not None:
            self._cache.clear()

    def find(self, address: int) -> Handler | None:
        cache = self._cache
        if cache is not None:
            try:
                return cache[address]
            except KeyError:
                pass
        i = bisect.bisect(self._starts, address) - 1
        found = self._handlers[i] if i >= 0 and address < self._handlers[i].end else None
        if found is None:
            found = self.fallback
        if cache is not None:
            cache[address] = found
        return found

    @property
    def handlers(self) -> tuple[Handler, ...]:
        return tuple(self._handlers)


@dataclass(frozen=True)
class RunResult:
    """How a handler-driven run ended: the final exit, how many exits the handlers served,
    and the wall time."""

    exit: Exit
    exits_handled: int
    elapsed: float
    vcpu: Any = field(repr=False, compare=False, default=None)

    @property
    def halted(self) -> bool:
        return isinstance(self.exit, Halt)

    def check(self, *expected: type[Exit]) -> RunResult:
        """Return self if the run ended on one of ``expected`` (default: Halt), else raise
        :class:`pyhv.UnhandledExit`."""
        if not isinstance(self.exit, expected or (Halt,)):
            raise UnhandledExit(self.exit)
        return self



def sink_writer(sink: Any) -> OutputSink:
    """The callable that takes a sink's bytes: ``sink`` itself, or its ``write`` method (a
    binary stream); anything else is refused now rather than in the middle of a run."""
    write = sink.write if hasattr(sink, "write") else sink
    if not callable(write):
        raise InvalidArgument(f"sink {sink!r} is neither callable nor a stream")
    return write


_MISSING = object()
_LIMITS = {1: 1 << 8, 2: 1 << 16, 4: 1 << 32, 8: 1 << 64}


def _answer(ptr: Any, c: Any, value: Any, size: int, count: int, what: Callable[[], str]) -> None:
    """Hand a read handler's answer to the guest, checking its type and size."""
    if type(value) is int and count == 1 and 0 <= value < _LIMITS[size]:
        rc = lib.pyhv_vcpu_complete_in_value(ptr, c.seq, value)
    else:
        data = encode_answer(value, size, count, what())
        rc = lib.pyhv_vcpu_complete_in(ptr, c.seq, data, len(data))
    if rc < 0:
        raise StaleExitError(f"{what()}: could not complete (errno {-rc})")


def _serve_io(h: Handler, c: Any, ptr: Any) -> bool:
    port, size, count = c.io_port, c.io_size, c.io_count
    if c.io_in:
        if h.read is None:
            return False
        value: Any
        if count == 1:
            value = h.read(port, size)
        else:
            value = [h.read(port, size) for _ in range(count)]
        _answer(ptr, c, value, size, count, lambda: f"read handler for port {port:#x}")
        return True
    if h.write is None:
        return False
    if count == 1:
        h.write(port, size, c.io_value)
    else:
        data = ffi.buffer(c.io_data, size * count)[:]
        for i in range(0, size * count, size):
            h.write(port, size, int.from_bytes(data[i:i + size], "little"))
    return True


def _serve_mmio(h: Handler, c: Any, ptr: Any) -> bool:
    gpa, size = c.mmio_gpa, c.mmio_len
    if gpa + size > h.end:
        return False   # straddles the end of the handler's range
    if c.mmio_write:
        if h.write is None:
            return False
        h.write(gpa, size, c.mmio_value)
        return True
    if h.read is None:
        return False
    _answer(ptr, c, h.read(gpa, size), size, 1, lambda: f"read handler for GPA {gpa:#x}")
    return True


def _serve_syscall(vcpu: VCpu, c: Any,
                   handler: SyscallHandler | None) -> tuple[Exit | None, bool]:
    """A halt in pyhv's stubs: serve a syscall with ``handler``.  Returns (None, _) when
    served, else (the exit that ends the run, whether the handler chose to end it)."""
    ex = vcpu._halt_exit(c)
    if handler is None or not isinstance(ex, Syscall):
        return ex, isinstance(ex, Halt)
    result = handler(ex.nr, ex.args)
    if result is None:
        return ex, True
    ex.complete(result)
    return None, True


def run_with_handlers(vcpu: VCpu, io: AddressSpace, mmio: AddressSpace,
                      timeout: float | None,
                      syscall: SyscallHandler | None = None) -> RunResult:
    """Run ``vcpu``, serving port/MMIO exits (and user-mode syscalls) with the handlers, until
    an exit nobody handles (halt, shutdown, an unclaimed port...), a cancel, or ``timeout``."""
    handled = 0
    started = time.perf_counter()
    bulk = vcpu.partition._deliver_bulk
    port_cache = io._cache if io._cache is not None else {}
    life = vcpu.partition._life
    ptr = vcpu._begin(timeout)
    handling = False       # an exception raised while handling an exit poisons the partition
    final: Exit
    try:
        c = vcpu._exit
        run, deadline = lib.pyhv_vcpu_run, vcpu._deadline
        find_port, find_mmio = io.find, mmio.find
        single_out, missing = _SINGLE_OUT, _MISSING
        h: Any
        while True:
            rc = run(ptr, c, deadline)
            handling = True
            if rc == single_out:
                # the hot path, kept inline: one OUT, nothing else pending
                port = c.io_port
                h = port_cache.get(port, missing)
                if h is missing:
                    h = find_port(port)
                if h is not None and h.write is not None:
                    h.write(port, c.io_size, c.io_value)
                    handled += 1
                    handling = False
                    continue
            elif rc < 0:
                raise KvmError(-rc, f"KVM_RUN on vCPU {vcpu.id}")
            elif rc & _BULK:
                bulk(vcpu, c)
            reason = rc & 0xFF
            clean = False
            if reason == _IO:
                h = find_port(c.io_port)
                if h is not None and _serve_io(h, c, ptr):
                    handled += 1
                    handling = False
                    continue
            elif reason == _MMIO:
                h = find_mmio(c.mmio_gpa)
                if h is not None and _serve_mmio(h, c, ptr):
                    handled += 1
                    handling = False
                    continue
            elif reason == _HALT and vcpu._stubs:
                ended, clean = _serve_syscall(vcpu, c, syscall)
                if ended is None:
                    handled += 1
                    handling = False
                    continue
                final = ended
                break
            elif reason == _CANCELED and life.paused:
                handling = False
                if vcpu._park():             # pause(): wait for resume(), then go on
                    continue
            elif reason == _INTERRUPTED or reason == _OUTPUT_FULL:
                handling = False
                continue   # Python runs its signal handlers (Ctrl-C...) here
            elif reason == _TIMEOUT:
                handling = False
                raise Timeout(vcpu, vcpu.regs.snapshot(), timeout or 0.0, handled)
            final = decode(c, vcpu)
            break
        handling = False
        if not clean and not isinstance(final, CLEAN_ENDS):
            life.poison(f"vCPU {vcpu.id} ended on {final!r}, which nothing handled", final)
    except EndRun as end:
        final = end.exit                   # a handler ended the run on purpose
        handled += 1
    except BaseException as exc:
        if handling:
            life.poison(f"vCPU {vcpu.id}: {type(exc).__name__} while handling an exit: {exc}")
        raise
    finally:
        vcpu._end(ptr, timeout)
    return RunResult(final, handled, time.perf_counter() - started, vcpu)
