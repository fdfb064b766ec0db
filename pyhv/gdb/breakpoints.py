"""gdb's breakpoints and watchpoints (``Z0``-``Z4``) made with what the backend delivers:
``int3`` written into guest memory, debug registers (four, shared by every kind), or
single-stepping (a breakpoint reached step by step, a write seen by comparing the watched
bytes after each instruction).  :mod:`pyhv.gdb.probe` says which route applies where.

Guest memory is reached through a :class:`GuestView` (translation with one vCPU's page
tables, physical reads and writes), so this module stays plain logic.

>>> from pyhv.gdb.probe import DebugSupport
>>> pvm = DebugSupport("kvm_pvm", True, True, False, "emulation-failure", False, False,
...                    False, True, True)
>>> view = FlatView(bytearray(b"\\x90" * 0x100))
>>> table = Breakpoints(pvm)
>>> table.insert(0, 0x10, 1, view, "long").route, view.memory[0x10]      # int3 written
('int3', 204)
>>> table.insert(2, 0x20, 4, view, "long").route                         # emulated watch
'step'
>>> table.insert(1, 0x30, 1, view, "long").route, table.hardware()
('hardware', [HardwareBreakpoint(address=48, access='execute', size=1)])
>>> table.hide(0x10, view.read_virtual(0x10, 2))                         # gdb sees the nop
b'\\x90\\x90'
>>> table.remove(0, 0x10, 1, view), view.memory[0x10]
(True, 144)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from ..x86.debug import DEBUG_REGISTERS, HardwareBreakpoint
from .probe import DebugSupport

__all__ = ["BreakpointError", "Breakpoints", "FlatView", "GuestView", "Point", "WatchHit"]

# Z packet types
SOFTWARE, HARDWARE, WRITE, READ, ACCESS = 0, 1, 2, 3, 4
_ACCESS = {WRITE: "write", READ: "access", ACCESS: "access"}
MAX_WATCH = 4096                 # bytes one emulated watchpoint may cover
INT3 = 0xCC


class BreakpointError(Exception):
    """A breakpoint that cannot be made: ``unsupported`` (gdb then tries another way) or
    not (an error reply)."""

    def __init__(self, message: str, unsupported: bool = False) -> None:
        super().__init__(message)
        self.unsupported = unsupported


class GuestView(Protocol):
    """Guest memory as one vCPU sees it."""

    def translate(self, gva: int) -> int | None:
        """The guest-physical address of ``gva``, or None."""

    def read_physical(self, gpa: int, size: int) -> bytes | None:
        """``size`` bytes of RAM at ``gpa``, or None outside RAM."""

    def write_physical(self, gpa: int, data: bytes) -> bool:
        """Write RAM at ``gpa``; False outside RAM."""


class FlatView:
    """A view of a bytearray with identity translation (for examples and tests)."""

    def __init__(self, memory: bytearray) -> None:
        self.memory = memory

    def translate(self, gva: int) -> int | None:
        return gva if gva < len(self.memory) else None

    def read_physical(self, gpa: int, size: int) -> bytes | None:
        return bytes(self.memory[gpa:gpa + size]) if gpa + size <= len(self.memory) else None

    def write_physical(self, gpa: int, data: bytes) -> bool:
        if gpa + len(data) > len(self.memory):
            return False
        self.memory[gpa:gpa + len(data)] = data
        return True

    def read_virtual(self, gva: int, size: int) -> bytes | None:
        return self.read_physical(gva, size)


@dataclass
class Point:
    """One ``Z`` packet's breakpoint or watchpoint, and how it is made."""

    kind: int
    address: int
    length: int
    route: str                                   # int3 | hardware | step
    registers: list[HardwareBreakpoint] = field(default_factory=list)
    gpa: int | None = None                       # int3: where the byte was replaced
    saved: int = 0                               # int3: the byte it replaced
    pieces: list[tuple[int, int]] = field(default_factory=list)   # step watch: (gpa, size)
    last: bytes = b""                            # step watch: the watched bytes, last seen


@dataclass(frozen=True)
class WatchHit:
    kind: int
    address: int


def split_aligned(address: int, length: int) -> list[tuple[int, int]]:
    """``[address, address+length)`` as aligned 1/2/4/8-byte pieces (what debug registers
    can watch).

    >>> split_aligned(0x1003, 6)
    [(4099, 1), (4100, 4), (4104, 1)]
    """
    out = []
    while length > 0:
        size = 8
        while size > 1 and (address % size or size > length):
            size //= 2
        out.append((address, size))
        address += size
        length -= size
    return out


class Breakpoints:
    """The breakpoints and watchpoints gdb has inserted, made as ``support`` allows."""

    def __init__(self, support: DebugSupport) -> None:
        self.support = support
        self.points: dict[tuple[int, int, int], Point] = {}

    # -- inserting and removing ------------------------------------------------------------------
    def insert(self, kind: int, address: int, length: int, view: GuestView, mode: str) -> Point:
        """Make breakpoint ``kind`` (0-4) at ``address`` for code in ``mode``, or raise
        :class:`BreakpointError`.  Inserting one that exists already is a no-op."""
        key = (kind, address, length)
        if key in self.points:
            return self.points[key]
        if kind == SOFTWARE:
            route = self.support.breakpoint_route(mode)
        elif kind == HARDWARE:
            user = mode == "user"
            if self.support.user_hardware_breakpoints if user else \
                    self.support.hardware_breakpoints:
                route = "hardware"
            else:
                route = "step" if self.support.single_step and not user else "none"
        elif kind in (WRITE, READ, ACCESS):
            route = self.support.watchpoint_route(_ACCESS[kind] if kind != READ else "read",
                                                  mode)
        else:
            raise BreakpointError(f"breakpoint type {kind}", unsupported=True)
        if route == "none":
            # gdb then says the target cannot (and for Z0 would write int3 itself: no use)
            raise BreakpointError(f"{self.support.backend} cannot deliver breakpoint type "
                                  f"{kind} in {mode} mode", unsupported=kind != SOFTWARE)
        point = Point(kind, address, length, route)
        if route == "int3":
            self._patch(point, view)
        elif route == "hardware":
            self._allocate(point)
        elif kind != SOFTWARE and kind != HARDWARE:
            self._watch(point, view)
        self.points[key] = point
        return point

    def remove(self, kind: int, address: int, length: int, view: GuestView) -> bool:
        """Take one out (False when there was none)."""
        point = self.points.pop((kind, address, length), None)
        if point is None:
            return False
        if point.route == "int3":
            self._unpatch(point, view)
        return True

    def remove_all(self, view: GuestView) -> None:
        for point in list(self.points.values()):
            self.remove(point.kind, point.address, point.length, view)

    def _patch(self, point: Point, view: GuestView) -> None:
        gpa = view.translate(point.address)
        original = view.read_physical(gpa, 1) if gpa is not None else None
        if gpa is None or original is None:
            raise BreakpointError(f"no RAM at {point.address:#x} for a breakpoint")
        if any(p.route == "int3" and p.gpa == gpa for p in self.points.values()):
            other = next(p for p in self.points.values() if p.route == "int3" and p.gpa == gpa)
            point.gpa, point.saved = gpa, other.saved          # two gdb names for one byte
            return
        if not view.write_physical(gpa, bytes((INT3,))):
            raise BreakpointError(f"cannot write the breakpoint at {point.address:#x}")
        point.gpa, point.saved = gpa, original[0]

    def _unpatch(self, point: Point, view: GuestView) -> None:
        assert point.gpa is not None
        if any(p.route == "int3" and p.gpa == point.gpa for p in self.points.values()):
            return                                              # still needed by another
        current = view.read_physical(point.gpa, 1)
        if current == bytes((INT3,)):                           # the guest left it alone
            view.write_physical(point.gpa, bytes((point.saved,)))

    def _allocate(self, point: Point) -> None:
        if point.kind in (SOFTWARE, HARDWARE):
            registers = [HardwareBreakpoint(point.address)]
        else:
            if point.length > 8 * DEBUG_REGISTERS:
                raise BreakpointError(f"a {point.length}-byte watchpoint needs more than "
                                      f"{DEBUG_REGISTERS} debug registers")
            registers = [HardwareBreakpoint(a, _ACCESS[point.kind], n)
                         for a, n in split_aligned(point.address, point.length)]
        if len(self.hardware()) + len(registers) > DEBUG_REGISTERS:
            raise BreakpointError(f"all {DEBUG_REGISTERS} debug registers are in use")
        point.registers = registers

    def _watch(self, point: Point, view: GuestView) -> None:
        if not 0 < point.length <= MAX_WATCH:
            raise BreakpointError(f"a watchpoint covers 1 to {MAX_WATCH} bytes here")
        if sum(1 for p in self.points.values() if p.route == "step" and p.kind >= WRITE) >= \
                DEBUG_REGISTERS:
            raise BreakpointError(f"at most {DEBUG_REGISTERS} watchpoints")
        at, end = point.address, point.address + point.length
        while at < end:
            gpa = view.translate(at)
            size = min(end, (at | 0xFFF) + 1) - at
            if gpa is None or view.read_physical(gpa, size) is None:
                raise BreakpointError(f"no RAM at {at:#x} to watch")
            point.pieces.append((gpa, size))
            at += size
        point.last = self._watched(point, view)

    def _watched(self, point: Point, view: GuestView) -> bytes:
        return b"".join(view.read_physical(gpa, size) or b"" for gpa, size in point.pieces)

    # -- what the vCPUs need ---------------------------------------------------------------
    def hardware(self) -> list[HardwareBreakpoint]:
        """The debug registers every vCPU gets, in order."""
        return [r for p in self.points.values() for r in p.registers]

    def owner_of_register(self, index: int) -> Point | None:
        """The point debug register ``index`` belongs to."""
        at = 0
        for p in self.points.values():
            if at <= index < at + len(p.registers):
                return p
            at += len(p.registers)
        return None

    @property
    def needs_stepping(self) -> bool:
        """Whether some point is made by single-stepping."""
        return any(p.route == "step" for p in self.points.values())

    @property
    def uses_int3(self) -> bool:
        return any(p.route == "int3" for p in self.points.values())

    def int3_at(self, address: int, view: GuestView) -> Point | None:
        """The int3 breakpoint at guest-virtual ``address``, if one is there."""
        for p in self.points.values():
            if p.route == "int3" and p.address == address:
                return p
        gpa = view.translate(address) if self.uses_int3 else None
        for p in self.points.values():
            if p.route == "int3" and gpa is not None and p.gpa == gpa:
                return p
        return None

    def step_hit(self, pc: int, view: GuestView) -> Point | WatchHit | None:
        """After one single step, at ``pc``: the breakpoint reached or the watchpoint whose
        bytes changed (their new value becomes the one compared next), or None."""
        hit: Point | WatchHit | None = None
        for p in self.points.values():
            if p.route != "step":
                continue
            if p.kind in (SOFTWARE, HARDWARE):
                if p.address == pc and hit is None:
                    hit = p
                continue
            now = self._watched(p, view)
            if now != p.last:
                p.last = now
                if hit is None:
                    hit = WatchHit(p.kind, p.address)
        return hit

    def refresh_watches(self, view: GuestView) -> None:
        """Take the watched bytes as they are now (gdb or the host may have written them)."""
        for p in self.points.values():
            if p.route == "step" and p.kind >= WRITE:
                p.last = self._watched(p, view)

    def hide(self, address: int, data: bytes) -> bytes:
        """``data`` read at ``address`` with the bytes int3 replaced shown as they were."""
        if not self.uses_int3:
            return data
        out = bytearray(data)
        for p in self.points.values():
            if p.route == "int3" and address <= p.address < address + len(data):
                out[p.address - address] = p.saved
        return bytes(out)

    def write_through(self, address: int, data: bytes) -> bytes:
        """gdb writes ``data`` at ``address``: where it covers an int3, remember the new byte
        as the original and keep the int3 in memory.  Returns what to write."""
        if not self.uses_int3:
            return data
        out = bytearray(data)
        for p in self.points.values():
            if p.route == "int3" and address <= p.address < address + len(data):
                p.saved = out[p.address - address]
                out[p.address - address] = INT3
        return bytes(out)
