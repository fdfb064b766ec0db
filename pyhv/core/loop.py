"""The run loop: one loop for both levels of running.

``VCpu.run()`` (:meth:`VcpuRunner.typed`) returns the first exit Python must see, typed;
``Partition.run()`` (:meth:`VcpuRunner.serve`) serves exits with the partition's handlers until
one ends the run.  Both go through the same trip into the guest (:meth:`VcpuRunner._next`):
bulk delivery of what the C core and the kernel collected, parking while the partition is
paused, Ctrl-C between trips, timeouts; and both judge the final exit the same way: an exit
whose kind is a ``fault`` poisons the partition, and in a handler-driven run so does an exit
nobody handled unless its kind is a ``clean_end``.  An exception raised by a handler (or an
output sink while the guest waits for an answer) stops the run, poisons the partition and
propagates from the run call.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass, field
from threading import get_ident
from time import monotonic_ns
from typing import TYPE_CHECKING, Any, Protocol

from .._native import VcpuFd
from .._native.decode import ExitContext, decode, new_io_out
from .._native.vcpu import (
    EXIT_CANCELED,
    EXIT_HALT,
    EXIT_INTERRUPTED,
    EXIT_IO,
    EXIT_MMIO,
    EXIT_MSR,
    EXIT_OUTPUT_FULL,
    EXIT_TIMEOUT,
    RUN_BULK,
    RUN_PORT_SHIFT,
    RUN_RIP_VALID,
    RUN_SINGLE_MASK,
    RUN_SINGLE_OUT,
    RUN_SIZE_SHIFT,
)
from ..errors import (
    ClosedError,
    HandlerError,
    HypervisorError,
    InvalidArgument,
    KvmError,
    PoisonedError,
    Timeout,
    UnhandledExit,
)
from ..exits import Canceled, Debug, Exit, GuestException, Halt, Syscall
from ..x86.debug import GuestDebug
from .buses import EndRun, Handler, RefuseAccess
from .stubs import Stubs

if TYPE_CHECKING:
    from .machine import Machine


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


class Debugger(Protocol):
    """What a debugger attached to a vCPU (``VCpu.attach_debugger``) is told, always in the
    thread running the vCPU (:mod:`pyhv.gdb` implements it)."""

    def starting(self, vcpu: Any) -> None:
        """A run of ``vcpu`` is about to begin (it is not claimed yet): may wait."""

    def intercept(self, vcpu: Any, exit: Exit) -> bool:
        """An exit decoded by a run, before it is returned, served or judged: True when the
        debugger took it and the run goes on into the guest."""

    def ended(self, vcpu: Any, exit: Exit | None) -> None:
        """A handler-driven run ended on ``exit`` (None: it raised), or a typed run returned
        an exit that ends the guest (a ``fault``, a ``machine_end``, a halt); the vCPU is
        released already.  May wait."""


def describe_debug(exit: Debug, settings: GuestDebug) -> Debug:
    """``exit`` with the address and access of the debug register that fired, from the
    vCPU's guest-debug ``settings``."""
    for index in exit.hits:
        if index < len(settings.hardware):
            bp = settings.hardware[index]
            if bp is not None:
                return dataclasses.replace(exit, address=bp.address, access=bp.access)
    return exit


def validate_timeout(timeout: float | None) -> float | None:
    if timeout is None:
        return None
    kind = type(timeout)
    if (kind is float or kind is int) and timeout > 0:
        return float(timeout)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise InvalidArgument(f"timeout must be a number of seconds > 0, not {timeout!r}")
    return float(timeout)


_new_io_out = new_io_out
_MISSING = object()
_LIMITS = {1: 1 << 8, 2: 1 << 16, 4: 1 << 32}
_BYTE = [bytes([i]) for i in range(256)]          # a one-byte OUT's data, made once
_SERVED, _ENDED = object(), object()


class VcpuRunner:
    """One vCPU's running: claiming it for a thread, the loop, parking and closing."""

    def __init__(self, vcpu: Any, fd: VcpuFd, machine: Machine) -> None:
        self.vcpu = vcpu                       # the public VCpu (for Timeout and results)
        self.fd = fd
        self.machine = machine
        self.stubs: Stubs | None = None        # set when the vCPU uses pyhv's stubs
        memory = machine.memory

        def code_at(rip: int) -> bool:
            gpa = fd.translate(rip)
            return gpa is not None and memory.is_ram(gpa)

        self.ctx = ExitContext(fd, lambda: fd.read_register("rip"), machine.backend_note,
                               code_at)
        self._claim = threading.Lock()
        self.slot = machine.life.new_slot()
        self.thread: int | None = None         # the thread running it now
        self.parked = False                    # in a run parked by pause()
        self.closing = False                   # close() waits for the run to end
        self.run_seconds = 0.0
        self.last_exit: Exit | None = None     # the latest exit handed to Python
        self.guest_debug = GuestDebug()        # what VCpu.set_guest_debug set
        self.debugger: Debugger | None = None  # VCpu.attach_debugger

    # -- claiming -----------------------------------------------------------------------------
    def _begin(self, timeout: float | None) -> int:
        """Claim the vCPU for a run on this thread; the deadline (0: none).  Every call that
        returns is paired with :meth:`_end`.  (This runs once per typed exit: it keeps to
        attribute reads and one lock.)"""
        if not self._claim.acquire(False):
            raise HypervisorError(f"vCPU {self.fd.id} is already running on another thread")
        machine = self.machine
        try:
            if not self.fd.open:
                raise ClosedError(f"vCPU {self.fd.id} is closed")
            if machine.before_first_run is not None:
                machine.first_run()
            machine.life.begin_run(self.slot)
        except BaseException:
            self._claim.release()
            raise
        self.thread = threading.get_ident()
        # CLOCK_MONOTONIC, the clock the C core's deadlines use
        return 0 if timeout is None else time.monotonic_ns() + int(timeout * 1e9)

    def _end(self, started: float) -> None:
        self.run_seconds += time.perf_counter() - started
        self.thread = None
        self.machine.life.end_run(self.slot)
        self._claim.release()

    def park(self) -> bool:
        """A run stopped by pause(): wait for resume(); False when the run must end."""
        self.parked = True
        try:
            return self.machine.life.park(lambda: self.closing)
        finally:
            self.parked = False

    def close(self) -> None:
        """Release the vCPU.  From another thread, a running vCPU is canceled and closed once
        its run returns (a run parked by pause() is woken to end instead)."""
        if self.fd.closed:
            return
        if self.thread == threading.get_ident():
            raise HypervisorError(f"vCPU {self.fd.id} cannot be closed from inside its own "
                                  "run; cancel it (or stop the partition) and close it after")
        self.closing = True
        self.machine.life.wake()
        while not self._claim.acquire(timeout=0.05):
            self.fd.cancel()
        try:
            self.fd.close()
            self.machine.life.drop_slot(self.slot)
        finally:
            self._claim.release()

    # -- one trip -----------------------------------------------------------------------------
    def _deliver(self, c: Any, serving: bool) -> None:
        try:
            self.machine.fast.deliver(self.fd, bool(c.output_pending), bool(c.coalesced_pending))
        except BaseException as exc:
            awaiting = (c.reason == EXIT_IO and c.io_in) or (c.reason == EXIT_MMIO and
                                                            not c.mmio_write)
            if awaiting and not serving:        # lost: the guest would read garbage
                self.machine.life.poison(
                    f"vCPU {self.fd.id}: {type(exc).__name__} in an output sink: {exc}")
            raise

    def _timeout(self, timeout: float | None, handled: int = 0) -> Timeout:
        return Timeout(self.vcpu, self.fd.read_registers(), timeout or 0.0, handled)

    # -- the typed run ------------------------------------------------------------------------
    def typed(self, timeout: float | None) -> Exit:
        """Run to the next exit Python must see and return it, typed.

        This is the README's loop, once per exit: claiming and releasing the vCPU are
        written out here (what _begin/_end do, without their frames), and a single OUT is
        decoded inline."""
        debugger = self.debugger
        if debugger is not None:
            debugger.starting(self.vcpu)
        claim = self._claim
        if not claim.acquire(False):
            raise HypervisorError(f"vCPU {self.fd.id} is already running on another thread")
        machine = self.machine
        life = machine.life
        slot = self.slot
        try:
            if not self.fd.open:
                raise ClosedError(f"vCPU {self.fd.id} is closed")
            if machine.before_first_run is not None:
                machine.first_run()
            slot.active = True                     # then look at `blocked` (lifecycle.py)
            if life.blocked:
                slot.active = False
                life.begin_run(slot)               # raises the error that applies
        except BaseException:
            claim.release()
            raise
        life.ever_ran = True
        self.thread = get_ident()
        deadline = 0 if timeout is None else monotonic_ns() + int(timeout * 1e9)
        ending: Exit | None = None     # told to the debugger once the vCPU is released
        try:
            c = self.fd.record
            enter = self.fd.enter
            while True:
                rc = enter(deadline)
                if rc & RUN_SINGLE_MASK == RUN_SINGLE_OUT:     # port and size in the summary
                    size = 1 << (rc >> RUN_SIZE_SHIFT & 3)
                    value = c.io_value
                    out: Exit = _new_io_out(c.rip if rc & RUN_RIP_VALID else None,
                                            rc >> RUN_PORT_SHIFT, size,
                                            _BYTE[value] if size == 1 else
                                            value.to_bytes(size, "little"), 1)
                    self.last_exit = out
                    return out
                if rc < 0:
                    raise KvmError(-rc, f"KVM_RUN on vCPU {self.fd.id}")
                if rc & RUN_BULK:
                    self._deliver(c, False)
                reason = rc & 0xFF
                if reason == EXIT_INTERRUPTED or reason == EXIT_OUTPUT_FULL:
                    continue     # Python runs its signal handlers (Ctrl-C...) here
                if reason == EXIT_CANCELED and life.paused:
                    if self.park():
                        continue
                if reason == EXIT_TIMEOUT:
                    raise self._timeout(timeout)
                exit = decode(c, self.ctx)
                if reason == EXIT_HALT and self.stubs is not None:
                    exit = self._stub_exit(exit)
                if type(exit) is Debug:
                    exit = describe_debug(exit, self.guest_debug)
                if debugger is not None and debugger.intercept(self.vcpu, exit):
                    continue
                break
            if exit.fault:
                life.poison(f"vCPU {self.fd.id}: {exit!r}", exit)
            if debugger is not None and (exit.fault or exit.machine_end or type(exit) is Halt):
                ending = exit
            self.last_exit = exit
            return exit
        finally:
            self.thread = None
            slot.active = False
            if life.paused:
                life.end_run(slot)                 # wakes pause()
            claim.release()
            if ending is not None and debugger is not None:
                debugger.ended(self.vcpu, ending)

    def _stub_exit(self, halt: Exit) -> Exit:
        assert self.stubs is not None and halt.rip is not None
        meaning = self.stubs.meaning(halt.rip)
        if meaning is None:
            return halt
        return self.stubs.exit_for(meaning, self.fd.current_seq())

    # -- the handler-driven run ---------------------------------------------------------------
    def serve(self, timeout: float | None) -> RunResult:
        """Serve exits with the partition's handlers until one ends the run."""
        machine = self.machine
        life = machine.life
        handled = 0
        debugger = self.debugger
        if debugger is not None:
            debugger.starting(self.vcpu)
        started = time.perf_counter()
        deadline = self._begin(timeout)
        handling = False     # an exception raised while handling an exit poisons
        final: Exit
        ended: Exit | None = None
        try:
            fd = self.fd
            c = fd.record
            enter = fd.enter
            port_cache = machine.io.port_cache
            find_port, find_mmio = machine.io.find, machine.mmio.find
            single_out, single_mask, missing = RUN_SINGLE_OUT, RUN_SINGLE_MASK, _MISSING
            h: Any
            answer = fd.answer
            limits = _LIMITS
            while True:
                rc = enter(deadline)
                handling = True
                if rc & single_mask == single_out:
                    # the hot path, kept inline: one OUT, nothing else pending (its port and
                    # size are in the summary)
                    port = rc >> RUN_PORT_SHIFT
                    h = port_cache.get(port, missing)
                    if h is missing:
                        h = find_port(port)
                    if h is not None and h.write is not None:
                        h.write(port, 1 << (rc >> RUN_SIZE_SHIFT & 3), c.io_value)
                        handled += 1
                        handling = False
                        continue
                elif rc == EXIT_IO and c.io_in and c.io_count == 1:
                    # the other hot path: one IN answered with a number that fits
                    port = c.io_port
                    h = port_cache.get(port, missing)
                    if h is missing:
                        h = find_port(port)
                    if h is not None and h.read is not None:
                        size = c.io_size
                        value = h.read(port, size)
                        if type(value) is int and 0 <= value < limits[size] and \
                                answer(c.seq, value) == 0:
                            handled += 1
                            handling = False
                            continue
                        # anything else (bytes, a bad answer): the general path says why
                        fd.complete_read(c.seq, value, size, 1, f"read handler for port {port:#x}")
                        handled += 1
                        handling = False
                        continue
                elif rc < 0:
                    raise KvmError(-rc, f"KVM_RUN on vCPU {fd.id}")
                elif rc & RUN_BULK:
                    self._deliver(c, True)
                reason = rc & 0xFF
                if reason == EXIT_IO:
                    h = find_port(c.io_port)
                    if h is not None and self._serve_io(h, c):
                        handled += 1
                        handling = False
                        continue
                elif reason == EXIT_MMIO:
                    h = find_mmio(c.mmio_gpa)
                    if h is not None and self._serve_mmio(h, c):
                        handled += 1
                        handling = False
                        continue
                elif reason == EXIT_MSR:
                    if self._serve_msr(c):
                        handled += 1
                    handling = False
                    continue
                elif reason == EXIT_INTERRUPTED or reason == EXIT_OUTPUT_FULL:
                    handling = False
                    continue   # Python runs its signal handlers (Ctrl-C...) here
                elif reason == EXIT_CANCELED and life.paused:
                    handling = False
                    if self.park():
                        continue
                elif reason == EXIT_TIMEOUT:
                    handling = False
                    raise self._timeout(timeout, handled)
                final = decode(c, self.ctx)
                if reason == EXIT_HALT and self.stubs is not None:
                    final = self._stub_exit(final)
                if type(final) is Debug:
                    final = describe_debug(final, self.guest_debug)
                if debugger is not None and debugger.intercept(self.vcpu, final):
                    handling = False
                    continue
                clean = False
                if reason == EXIT_HALT and self.stubs is not None:
                    served = self._serve_stub(final)
                    if served is _SERVED:
                        handled += 1
                        handling = False
                        continue
                    clean = served is _ENDED
                break
            handling = False
            self.last_exit = final
            if final.fault:
                life.poison(f"vCPU {fd.id}: {final!r}", final)
            elif not (final.clean_end or clean):
                life.poison(f"vCPU {fd.id} ended on {final!r}, which nothing handled", final)
            ended = final
        except EndRun as end:
            final = ended = end.exit           # a handler ended the run on purpose
            handled += 1
        except BaseException as exc:
            if handling:
                life.poison(f"vCPU {self.fd.id}: {type(exc).__name__} while handling an exit: "
                            f"{exc}")
            raise
        finally:
            self._end(started)
            if debugger is not None:
                debugger.ended(self.vcpu, ended)
        return RunResult(final, handled, time.perf_counter() - started, self.vcpu)

    def _serve_io(self, h: Handler, c: Any) -> bool:
        port, size, count = c.io_port, c.io_size, c.io_count
        if c.io_in:
            if h.read is None:
                return False
            value: Any
            if count == 1:
                value = h.read(port, size)
            else:
                value = [h.read(port, size) for _ in range(count)]
            self.fd.complete_read(c.seq, value, size, count, f"read handler for port {port:#x}")
            return True
        if h.write is None:
            return False
        if count == 1:
            h.write(port, size, c.io_value)
        else:
            data = self.fd.io_bytes()
            for i in range(0, size * count, size):
                h.write(port, size, int.from_bytes(data[i:i + size], "little"))
        return True

    def _serve_mmio(self, h: Handler, c: Any) -> bool:
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
        self.fd.complete_read(c.seq, h.read(gpa, size), size, 1,
                              f"read handler for GPA {gpa:#x}")
        return True

    def _serve_msr(self, c: Any) -> bool:
        """An RDMSR/WRMSR pyhv's MSR filter sent here: to the MSR bus's handler, or, with
        none (a hardened partition's denied MSR), #GP as the filter would give.  Whether a
        handler served it."""
        index = c.msr_index
        h = self.machine.msr.find(index)
        what = f"{'WRMSR' if c.msr_write else 'RDMSR'} {index:#x}"
        if h is None or (h.write if c.msr_write else h.read) is None:
            self.fd.complete_msr(c.seq, 0, True, what)
            return False
        try:
            if c.msr_write:
                assert h.write is not None
                h.write(index, 8, c.msr_value)
                self.fd.complete_msr(c.seq, 0, False, what)
                return True
            assert h.read is not None
            value = h.read(index, 8)
        except RefuseAccess:
            self.fd.complete_msr(c.seq, 0, True, what)
            return True
        if not (type(value) is int and 0 <= value < 1 << 64):
            raise HandlerError(f"{what}: the read handler answered {value!r}, not a 64-bit "
                               "unsigned int")
        self.fd.complete_msr(c.seq, value, False, what)
        return True

    def _serve_stub(self, exit: Exit) -> object:
        """A syscall or guest exception, served by the partition's handler for it: _SERVED,
        _ENDED (the syscall handler chose to end the run on it) or None (no handler)."""
        machine = self.machine
        if isinstance(exit, Syscall) and machine.syscall_handler is not None:
            result = machine.syscall_handler(exit.nr, exit.args)
            if result is None:
                return _ENDED
            exit.complete(result)
            return _SERVED
        if isinstance(exit, GuestException) and machine.exception_handler is not None:
            machine.exception_handler(exit)      # it may resume_at(); raising stops the run
            return _SERVED
        return None


def run_all(vcpus: list[Any], machine: Machine, timeout: float | None) -> list[RunResult]:
    """Serve every vCPU on a thread of its own until each run ends (see
    :meth:`pyhv.Partition.run_all`); results in vCPU order."""
    if not vcpus:
        raise HypervisorError("the partition has no vCPU: call create_vcpu() first")
    machine.first_run()                      # one reset point, before any thread runs
    poisoned_before = machine.life.poisoned  # else a poison comes from one of these runs
    results: list[RunResult | None] = [None] * len(vcpus)
    errors: list[BaseException] = []
    ended = threading.Event()

    def end_machine() -> None:
        # sticky cancels: a vCPU whose thread has not entered its run yet stops at once
        ended.set()
        for vcpu in vcpus:
            vcpu.cancel(quiet=True)

    def run_one(i: int, vcpu: Any) -> None:
        try:
            try:
                results[i] = result = vcpu.serve(timeout)
            except PoisonedError:
                if poisoned_before:
                    raise
                # another vCPU ended on an exit nobody handled before this one began (maybe
                # before that run could say so: `ended` is not enough): it is stopped like
                # the others
                results[i] = result = RunResult(Canceled(), 0, 0.0, vcpu)
            # the whole machine stopped (debug-exit, reset...), or this vCPU ended on an
            # exit nobody handled (the partition is poisoned): the others stop too
            if result.exit.machine_end or machine.life.poisoned:
                end_machine()
        except BaseException as exc:       # handed to the caller's thread below
            errors.append(exc)
            end_machine()

    threads = [threading.Thread(target=run_one, args=(i, v), name=f"pyhv-vcpu-{v.id}")
               for i, v in enumerate(vcpus)]
    for t in threads:
        t.start()
    try:
        for t in threads:
            t.join()
    except BaseException:                  # Ctrl-C while waiting: stop the guests
        machine.stop_all()
        for t in threads:
            t.join()
        raise
    if ended.is_set():                     # the runs are over: their cancels are spent
        for vcpu in vcpus:
            if not vcpu.closed:
                vcpu.clear_cancel()
    if errors:
        raise errors[0]
    return [r for r in results if r is not None]
