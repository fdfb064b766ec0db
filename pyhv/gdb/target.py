"""The debugged machine: stopping and resuming a partition's vCPUs for gdb, and what each
vCPU's run loop tells the debugger (:class:`pyhv.core.loop.Debugger`).

gdb's all-stop model maps onto the partition's pause: when gdb has the guest stopped, the
partition is paused (runs in progress are parked, so registers can be read, memory written,
snapshots taken) and runs not yet begun wait in :meth:`Controller.starting`.  A vCPU that
must stop (a breakpoint, a finished step) cancels itself and asks the server thread to pause
the partition; runs then park where they are, race-free, through the sticky cancel.

Stops are queued: several vCPUs may stop at once, gdb hears of one, the next resume reports
the following one without running the guest.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import exits
from ..core.lifecycle import PartitionState
from ..errors import GuestMemoryError, HypervisorError, StateError
from ..x86.debug import DEBUG_REGISTERS, HardwareBreakpoint, dr6_single_step
from ..x86.paging import paging_mode
from .breakpoints import HARDWARE, SOFTWARE, Breakpoints, Point, WatchHit
from .probe import DebugSupport

__all__ = ["Controller", "Stop", "VcpuView", "mode_of"]

log = logging.getLogger("pyhv.gdb")

# gdb's signal numbers (they are gdb's own, the same on every host)
SIGINT, SIGILL, SIGTRAP, SIGABRT, SIGFPE, SIGKILL, SIGBUS, SIGSEGV, SIGSYS = (
    2, 4, 5, 6, 8, 9, 10, 11, 12)
_VECTOR_SIGNALS = {0: SIGFPE, 1: SIGTRAP, 3: SIGTRAP, 6: SIGILL, 13: SIGSEGV, 14: SIGSEGV,
                   16: SIGFPE, 19: SIGFPE}
_WATCH_NAMES = {2: "watch", 3: "rwatch", 4: "awatch"}
# bytes that may precede an OUT/OUTS/HLT: operand/address size, rep, segment, lock, REX
_PREFIXES = frozenset(b"\x66\x67\xf2\xf3\x2e\x36\x3e\x26\x64\x65\xf0" + bytes(range(0x40, 0x50)))


@dataclass(frozen=True, eq=False)
class Stop:
    """Why gdb is told the guest stopped: ``signal`` on vCPU ``vcpu``, with ``reason``
    ("swbreak", "hwbreak", "watch", "rwatch", "awatch" or "") and the watched ``address``.
    ``final``: the vCPU cannot go on (a fault); ``exited``: the machine ended cleanly with
    this status."""

    vcpu: int
    signal: int
    reason: str = ""
    address: int | None = None
    final: bool = False
    exited: int | None = None


def signal_for(exit: exits.Exit) -> int:
    """The signal a run that ended on ``exit`` is reported with."""
    if isinstance(exit, exits.Shutdown):
        return SIGSEGV
    if isinstance(exit, (exits.InternalError, exits.FailEntry)):
        return SIGILL
    if isinstance(exit, exits.GuestException):
        return _VECTOR_SIGNALS.get(exit.vector, SIGSEGV)
    if isinstance(exit, (exits.Syscall, exits.InvalidExit)):
        return SIGSYS
    return SIGBUS                   # an access nobody handled (port, MMIO, MSR, ...)


def mode_of(vcpu: Any) -> str:
    """The mode a vCPU is in now: "real", "protected", "long" or "user" (CPL3)."""
    s = vcpu.get_sregs()
    if not s.cr0 & 1:
        return "real"
    if s.cs.dpl == 3:
        return "user"
    return "long" if s.efer & (1 << 10) else "protected"


def linear_pc(vcpu: Any) -> int:
    """The linear address of the next instruction (what debug registers compare)."""
    s = vcpu.get_sregs()
    rip = vcpu.read_register("rip")
    if s.efer & (1 << 10) and s.cs.l:
        return int(rip)
    return int(s.cs.base + rip) & 0xFFFFFFFF


def exits_after_step(code: bytes) -> tuple[int, bool] | None:
    """For an instruction whose single step a backend may lose (it exits to user space for
    a write, or halts): (its length, whether it is ``hlt``); None for any other.

    >>> exits_after_step(b"\\xe6\\x80"), exits_after_step(b"\\xf3\\x6e"), exits_after_step(b"\\x90")
    ((2, False), (2, False), None)
    """
    at = 0
    while at < min(len(code), 15) and code[at] in _PREFIXES:
        at += 1
    if at >= len(code):
        return None
    op = code[at]
    if op in (0xE6, 0xE7):                   # out imm8, al/ax
        return at + 2, False
    if op in (0xEE, 0xEF, 0x6E, 0x6F):       # out dx / outs
        return at + 1, False
    if op == 0xF4:
        return at + 1, True
    return None


class VcpuView:
    """Guest memory as one vCPU sees it (a :class:`pyhv.gdb.breakpoints.GuestView`), with
    page-crossing virtual reads and writes."""

    def __init__(self, vcpu: Any, memory: Any) -> None:
        self.vcpu = vcpu
        self.memory = memory

    def translate(self, gva: int) -> int | None:
        if gva >> 47 not in (0, 0x1FFFF) and not self._canonical(gva):
            return None               # KVM_TRANSLATE answers for these too: the CPU faults
        try:
            result: int | None = self.vcpu.translate(gva)
            return result
        except HypervisorError:
            return None

    def _canonical(self, gva: int) -> bool:
        regs = self.vcpu.paging_registers()
        mode = paging_mode(regs)
        if mode == "5-level":
            return gva >> 56 in (0, 0xFF)
        return mode not in ("4-level",) and gva < 1 << 32

    def read_physical(self, gpa: int, size: int) -> bytes | None:
        try:
            data: bytes = self.memory.read(gpa, size)
            return data
        except GuestMemoryError:
            return None

    def write_physical(self, gpa: int, data: bytes) -> bool:
        try:
            self.memory.write(gpa, data)
            return True
        except GuestMemoryError:
            return False

    def _pages(self, gva: int, size: int) -> list[tuple[int, int]] | int:
        """(gpa, length) per page of ``[gva, gva+size)``, or how many bytes lead up to the
        first unmapped page."""
        out, at, end = [], gva, gva + size
        while at < end:
            n = min(end, (at | 0xFFF) + 1) - at
            gpa = self.translate(at & ((1 << 64) - 1))
            if gpa is None or self.read_physical(gpa, n) is None:
                return at - gva
            out.append((gpa, n))
            at += n
        return out

    def peek(self, gva: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``gva`` from its page alone (one translation): what the
        step guard needs of the next instruction, once per step."""
        gpa = self.translate(gva)
        if gpa is None:
            return b""
        return self.read_physical(gpa, min(size, 0x1000 - (gva & 0xFFF))) or b""

    def read_virtual(self, gva: int, size: int) -> bytes:
        """What is readable from ``gva`` on: up to ``size`` bytes, fewer where a page is not
        mapped (empty when the first is not)."""
        pages = self._pages(gva, size)
        if isinstance(pages, int):
            return self.read_virtual(gva, pages) if pages else b""
        return b"".join(self.read_physical(gpa, n) or b"" for gpa, n in pages)

    def write_virtual(self, gva: int, data: bytes) -> bool:
        pages = self._pages(gva, len(data))
        if isinstance(pages, int):
            return False
        at = 0
        for gpa, n in pages:
            self.write_physical(gpa, data[at:at + n])
            at += n
        return True


class Controller:
    """Stops and resumes a partition's vCPUs for the gdb server (its methods named
    ``server_*`` run on the server thread), and is the :class:`pyhv.core.loop.Debugger` of
    each vCPU (the others run on the vCPUs' threads)."""

    def __init__(self, partition: Any, support: DebugSupport, wake: Callable[[], None], *,
                 hold: bool) -> None:
        self.part = partition
        self.support = support
        self.wake = wake
        self.vcpus = list(partition.vcpus)
        self.breakpoints = Breakpoints(support)
        self._cond = threading.Condition()
        self.hold = hold                   # runs not begun wait in starting()
        self.running = not hold            # what gdb believes
        self.session = False               # a gdb is attached
        self.killed = False
        self._pausing = False              # the server is pausing the partition
        self._paused_by_us = False
        self._events: deque[Stop] = deque()
        self._admitted: dict[int, float] = {}   # let through starting(), maybe not begun
        self._waiting: set[int] = set()          # waiting in starting()
        self._stepping: set[int] = set()     # vCPUs gdb asked to step
        self._helpers: dict[int, int] = {}   # vCPU -> address of a breakpoint that ends its step
        self._held: set[int] = set()         # vCPUs gdb left stopped while others run
        self._fatal: set[int] = set()        # vCPUs whose run ended on a fault, waiting
        self._reported: Stop | None = None
        self._exit_status: int | None = None   # the machine ended with this status
        self.steps_taken = 0                 # single steps served without stopping
        for vcpu in self.vcpus:
            vcpu.attach_debugger(self)

    def view(self, vcpu: Any) -> VcpuView:
        return VcpuView(vcpu, self.part.memory)

    def by_id(self, vcpu_id: int) -> Any:
        for vcpu in self.vcpus:
            if vcpu.id == vcpu_id:
                return vcpu
        raise KeyError(vcpu_id)

    # -- the Debugger protocol (vCPU threads) ----------------------------------------------
    def starting(self, vcpu: Any) -> None:
        with self._cond:
            self._waiting.add(vcpu.id)
            try:
                while self.hold and not self.killed and not self.part.closed:
                    self._cond.wait(0.5)               # -S, or gdb has the guest stopped
            finally:
                self._waiting.discard(vcpu.id)
            self._admitted[vcpu.id] = time.monotonic()

    def intercept(self, vcpu: Any, exit: exits.Exit) -> bool:
        kind = type(exit)
        if kind is exits.Debug:
            return self._on_debug(vcpu, exit)         # type: ignore[arg-type]
        if kind is exits.InternalError and exit.rip is not None and self.session:
            # kvm_pvm: int3 at ring 0 ends the run as an emulation failure at the int3
            if self.breakpoints.int3_at(exit.rip, self.view(vcpu)) is not None:
                return self._stop_here(vcpu, Stop(vcpu.id, SIGTRAP, "swbreak"))
        return False

    def ended(self, vcpu: Any, exit: exits.Exit | None) -> None:
        with self._cond:
            self._admitted.pop(vcpu.id, None)
            if not self.session or self.killed:
                return
        if exit is None:                       # the run raised (a timeout, a handler)
            self._report(Stop(vcpu.id, SIGABRT, final=True), wait=False)
        elif exit.fault or self.part.state is PartitionState.POISONED:
            self._report(Stop(vcpu.id, signal_for(exit), final=True), wait=True)
        else:
            if exit.machine_end and self._exit_status is None:   # what stopped the machine
                self._exit_status = exit.code & 0xFF if isinstance(exit, exits.DebugExit) \
                    else 0
            if not any(v.running_thread is not None for v in self.vcpus if v is not vcpu):
                self._report(Stop(vcpu.id, 0, exited=self._exit_status or 0), wait=False)

    # -- the vCPU side of stopping ---------------------------------------------------------
    def _on_debug(self, vcpu: Any, exit: exits.Debug) -> bool:
        if not self.session:
            return False
        vid = vcpu.id
        view = self.view(vcpu)
        helper = self._helpers.get(vid)
        if vid in self._held:
            return self._park_quietly(vcpu)
        if vid in self._stepping:
            return self._stop_here(vcpu, Stop(vid, SIGTRAP))
        if helper is not None and exit.pc == helper:
            # the breakpoint after an OUT or HLT that a single step would have lost
            del self._helpers[vid]
            self._configure(vcpu)
            return self._after_step(vcpu, exit.pc, view)
        for index in exit.hits:
            point = self.breakpoints.owner_of_register(index)
            if point is None:
                continue
            if point.kind in (SOFTWARE, HARDWARE):
                reason = "swbreak" if point.kind == SOFTWARE else "hwbreak"
                return self._stop_here(vcpu, Stop(vid, SIGTRAP, reason))
            return self._stop_here(vcpu, Stop(vid, SIGTRAP, _WATCH_NAMES[point.kind],
                                              point.address))
        if exit.exception == 3:
            point = self.breakpoints.int3_at(exit.pc, view)
            return self._stop_here(vcpu, Stop(vid, SIGTRAP, "swbreak" if point else ""))
        if dr6_single_step(exit.dr6) and self.breakpoints.needs_stepping:
            return self._after_step(vcpu, exit.pc, view)
        return self._stop_here(vcpu, Stop(vid, SIGTRAP))

    def _after_step(self, vcpu: Any, pc: int, view: VcpuView) -> bool:
        """One instruction stepped while breakpoints or watchpoints are emulated."""
        hit = self.breakpoints.step_hit(pc, view)
        if isinstance(hit, WatchHit):
            return self._stop_here(vcpu, Stop(vcpu.id, SIGTRAP, _WATCH_NAMES[hit.kind],
                                              hit.address))
        if isinstance(hit, Point):
            reason = "swbreak" if hit.kind == SOFTWARE else "hwbreak"
            return self._stop_here(vcpu, Stop(vcpu.id, SIGTRAP, reason))
        self.steps_taken += 1
        if self.support.guards_steps:
            self._guard_step(vcpu, pc, view)
        return True

    def _guard_step(self, vcpu: Any, pc: int, view: VcpuView) -> bool:
        """Before stepping the instruction at ``pc``: an OUT (whose step the backend loses)
        or HLT (which a step runs through) gets a breakpoint after it instead; True when
        one was set."""
        code = view.peek(pc, 15)
        if len(code) < 15 and code and all(b in _PREFIXES for b in code):
            code = view.read_virtual(pc, 15)      # prefixes up to a page's end
        fix = exits_after_step(code)
        if fix is None:
            return False
        length, _halt = fix
        shared = self.breakpoints.hardware()
        if len(shared) >= DEBUG_REGISTERS:
            return False
        self._helpers[vcpu.id] = pc + length
        vcpu.set_guest_debug(single_step=False, software_breakpoints=self._software(),
                             hardware=shared + [HardwareBreakpoint(pc + length)])
        return True

    def _stop_here(self, vcpu: Any, stop: Stop) -> bool:
        """Stop the guest here (this vCPU's thread, inside its run): queue ``stop``, have the
        server pause the partition, and go on into the run, which parks at once."""
        with self._cond:
            if not self.session or self.killed:
                return False
            self._events.append(stop)
            self._cond.notify_all()
        self.wake()
        return self._park_quietly(vcpu)

    def _park_quietly(self, vcpu: Any) -> bool:
        vcpu.cancel(quiet=True)                   # sticky: its next entry returns at once
        with self._cond:
            # until the server pauses the partition (or someone else does: a held vCPU
            # must not keep a pause() of the partition's owner waiting)
            while not (self._pausing or not self.session or self.killed or
                       self.part.state is PartitionState.PAUSED):
                self._cond.wait(0.01 if vcpu.id in self._held else 0.5)
        deadline = time.monotonic() + 5
        while self.part.state not in (PartitionState.PAUSED, PartitionState.CLOSED) and \
                self.session and not self.killed and time.monotonic() < deadline:
            time.sleep(0.0001)                    # pause() is being called right now
        return True

    def _report(self, stop: Stop, wait: bool) -> None:
        """A run that ended (this vCPU is released): queue ``stop`` and, for a fault, wait for
        gdb to look and decide."""
        with self._cond:
            self._events.append(stop)
            if wait:
                self._fatal.add(stop.vcpu)
            self._cond.notify_all()
        self.wake()
        with self._cond:
            if wait:
                while stop.vcpu in self._fatal and self.session and not self.killed and \
                        not self.part.closed:
                    self._cond.wait(0.5)
            elif stop.exited is not None:       # let the server tell gdb before we return
                deadline = time.monotonic() + 2
                while stop in self._events and self.session and time.monotonic() < deadline:
                    self._cond.wait(0.05)

    # -- the server side -------------------------------------------------------------------
    def server_take_stop(self) -> Stop | None:
        """The next stop to report, if any (the server then makes sure all is stopped)."""
        with self._cond:
            return self._events[0] if self._events else None

    def server_reported(self, stop: Stop) -> None:
        """``stop`` was told to gdb: the next resume takes it off the queue.  The machine's
        end needs no resume: it leaves the queue now."""
        with self._cond:
            self._reported = stop
            if stop.exited is not None and stop in self._events:
                self._events.remove(stop)
            self._cond.notify_all()

    def server_attach(self) -> None:
        """A gdb connected: stop the guest (QEMU does the same)."""
        with self._cond:
            self.session = True
            self._cond.notify_all()
        self.server_stop()

    def server_stop(self) -> None:
        """Stop every vCPU: runs in progress park, runs not begun wait."""
        with self._cond:
            self.hold = True
            self.running = False
        self._wait_admitted()
        with self._cond:
            self._pausing = True
            self._cond.notify_all()
        if self.part.state in (PartitionState.PAUSED, PartitionState.CLOSED):
            return
        if any(v.running_thread is not None for v in self.vcpus):
            try:
                self.part.pause()
                self._paused_by_us = True
            except (StateError, HypervisorError) as exc:
                log.debug("pausing for gdb: %s", exc)

    def _wait_admitted(self) -> None:
        """Runs let through starting() before the hold: wait until each has begun (a pause
        then parks it; a run that began during a pause would be refused) or its thread is
        back waiting in starting().  A thread that never begins (its caller went elsewhere)
        is given two seconds."""
        deadline = time.monotonic() + 2
        for vid in list(self._admitted):
            vcpu = self.by_id(vid)
            while vcpu.running_thread is None and vid not in self._waiting and \
                    not vcpu.closed and time.monotonic() < deadline:
                time.sleep(0.0005)
            self._admitted.pop(vid, None)

    def server_resume(self, actions: dict[int, str]) -> Stop | None:
        """Resume with ``actions`` ({vCPU id: "c" | "s" | "t"}); a stop still queued is returned
        instead (the guest does not run).  A vCPU with no action, or "t", stays stopped where
        a debug register is free for it."""
        with self._cond:
            if self._reported is not None and self._reported in self._events:
                self._events.remove(self._reported)      # the one gdb heard of last
            self._reported = None
            while self._events and not self._still_true(self._events[0]):
                self._events.popleft()
            if self._events:
                return self._events[0]
        with self._cond:
            self._stepping = {v for v, a in actions.items() if a == "s"}
            self._held = {v.id for v in self.vcpus if actions.get(v.id, "t") == "t"}
            self._helpers.clear()
            view = self.view(self.vcpus[0])
        self.breakpoints.refresh_watches(view)
        for vcpu in self.vcpus:
            self._configure(vcpu, resuming=True)
        with self._cond:
            self._held = {v for v in self._held if v in self._helpers}
            self._pausing = False
            self.running = True
            self._fatal.clear()
            self._cond.notify_all()
        self._release()
        return None

    def _release(self) -> None:
        """Resume the partition, then let runs waiting in starting() begin (in that order: a
        run begun while the partition is still paused would be refused)."""
        if self._paused_by_us:
            self._paused_by_us = False
            try:
                self.part.resume()
            except (StateError, HypervisorError) as exc:
                log.debug("resuming for gdb: %s", exc)
        with self._cond:
            self.hold = False
            self._cond.notify_all()

    def _still_true(self, stop: Stop) -> bool:
        """A queued breakpoint stop whose breakpoint gdb has removed since is dropped."""
        if stop.reason in ("swbreak", "hwbreak"):
            return bool(self.breakpoints.points)
        return True

    def _software(self) -> bool:
        return self.breakpoints.uses_int3 and self.support.software_breakpoints == "debug-exit"

    def _configure(self, vcpu: Any, resuming: bool = False) -> None:
        """Load a stopped vCPU's guest-debug settings for the coming run."""
        if vcpu.closed:
            return
        shared = self.breakpoints.hardware()
        vid = vcpu.id
        try:
            if resuming and vid in self._held:
                if len(shared) < DEBUG_REGISTERS:     # a breakpoint where it stands
                    pc = linear_pc(vcpu)
                    self._helpers[vid] = pc
                    vcpu.set_guest_debug(hardware=shared + [HardwareBreakpoint(pc)],
                                         software_breakpoints=self._software())
                    return
            if resuming and vid in self._stepping:
                if self.support.guards_steps and \
                        self._guard_step(vcpu, linear_pc(vcpu), self.view(vcpu)):
                    return
                vcpu.set_guest_debug(single_step=True, hardware=shared,
                                     software_breakpoints=self._software())
                return
            stepping = self.breakpoints.needs_stepping and self.session
            if resuming and stepping and self.support.guards_steps and \
                    self._guard_step(vcpu, linear_pc(vcpu), self.view(vcpu)):
                return
            vcpu.set_guest_debug(single_step=stepping, hardware=shared,
                                 software_breakpoints=self._software())
        except HypervisorError as exc:
            log.debug("guest debug for vCPU %d: %s", vid, exc)

    def server_finish_fatal(self) -> None:
        """gdb went on after a fault: the vCPUs that died are released (their runs return)."""
        with self._cond:
            self._fatal.clear()
            self._cond.notify_all()

    def server_detach(self) -> None:
        """gdb left: breakpoints out, guest debugging off, the guest runs on."""
        if self.running and not self.part.closed:
            self.server_stop()            # vCPU ioctls wait for a vCPU that is in the guest
        view = self.view(self.vcpus[0])
        self.breakpoints.remove_all(view)
        for vcpu in self.vcpus:
            if not vcpu.closed:
                try:
                    vcpu.set_guest_debug()
                except HypervisorError as exc:
                    log.debug("guest debug off for vCPU %d: %s", vcpu.id, exc)
        with self._cond:
            self.session = False
            self._events.clear()
            self._reported = None
            self._stepping.clear()
            self._held.clear()
            self._helpers.clear()
            self._fatal.clear()
            self._pausing = False
            self.running = True
            self._cond.notify_all()
        self._release()

    def server_kill(self) -> None:
        """gdb killed the guest: every run ends (``Canceled``), nothing is poisoned."""
        with self._cond:
            self.killed = True
        if not self.part.closed:
            self.part.stop()                 # sticky: runs not begun end at once too
        self.server_detach()

    def close(self) -> None:
        """The server is going away: detach from the vCPUs."""
        with self._cond:
            self.session = False
            self.hold = False
            self._cond.notify_all()
        for vcpu in self.vcpus:
            if vcpu.debugger is self:
                vcpu.attach_debugger(None)
