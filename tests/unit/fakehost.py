"""A fake of the partition a device is attached to (pyhv.devices.host.DeviceHost), and a
guest's view of it: ``out``/``inp`` reach the device the way guest port IO would reach it
in a real partition (an enabled fast port first, else the IO handler under it).

The handler table is pyhv's own AddressSpace; only what the kernel and the C run loop would
do (IRQ lines, fast ports) is faked, as plain records.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pyhv import EndRun, Handler, OverlapError, PortKind, Space, StateError, exits
from pyhv.core.buses import AddressSpace, sink_writer


@dataclass(eq=False)
class FakeFastPort:
    """What the C core would do with a port; ``enabled`` as pyhv.FastPort has it."""

    port: int
    kind: PortKind
    value: int = 0
    sink: Any = None
    overlay: bool = False
    enabled: bool = True


@dataclass
class FakeSlot:
    gpa: int
    size: int
    readonly: bool = False


@dataclass
class FakeMemory:
    slots: tuple[FakeSlot, ...] = field(default_factory=tuple)


class FakeHost:
    """A DeviceHost: records what devices register and the IRQ lines they drive."""

    def __init__(self, irqchip: bool = True, memory: Sequence[FakeSlot] = (FakeSlot(0, 16 << 20),),
                 vcpus: int = 1) -> None:
        self.irqchip = irqchip
        self.memory = FakeMemory(tuple(memory))
        self._vcpus = [object() for _ in range(vcpus)]
        self.io = AddressSpace(Space.IO, 0x10000, cached=True)
        self.mmio = AddressSpace(Space.MMIO, 1 << 52, cached=False)
        self.fast: dict[int, FakeFastPort] = {}
        self.irq: dict[int, bool] = {}               # line -> level
        self.irq_changes: list[tuple[int, bool]] = []

    # -- the DeviceHost protocol ----------------------------------------------------------
    @property
    def vcpus(self) -> Sequence[object]:
        return tuple(self._vcpus)

    def add_io_handler(self, ports: int | range, read=None, write=None) -> Handler:
        if isinstance(ports, range):
            start, size = ports.start, len(ports)
        else:
            start, size = ports, 1
        for port in range(start, start + size):
            fast = self.fast.get(port)
            if fast is not None and not fast.overlay:
                raise OverlapError(f"port {port:#x} is a fast port")
        return self.io.add(start, size, read, write)

    def add_mmio_handler(self, gpa: int, size: int, read=None, write=None) -> Handler:
        return self.mmio.add(gpa, size, read, write)

    def _add_fast(self, port: int, kind: PortKind, value: int = 0, sink: Any = None,
                  overlay: bool = False) -> FakeFastPort:
        if port in self.fast or (self.io.claimed(port) is not None and not overlay):
            raise OverlapError(f"port {port:#x} is taken")
        fast = FakeFastPort(port, kind, value, sink, overlay)
        self.fast[port] = fast
        return fast

    def add_buffered_port(self, port: int, sink, *, overlay: bool = False) -> FakeFastPort:
        return self._add_fast(port, PortKind.BUFFERED, sink=sink_writer(sink), overlay=overlay)

    def add_constant_port(self, port: int, value: int, *, overlay: bool = False) -> FakeFastPort:
        return self._add_fast(port, PortKind.CONSTANT, value, overlay=overlay)

    def add_debug_exit(self, port: int = 0xF4) -> FakeFastPort:
        return self._add_fast(port, PortKind.DEBUG_EXIT)

    def set_irq(self, line: int, level: bool) -> None:
        if not self.irqchip:
            raise StateError("set_irq needs a partition made with irqchip=True")
        self.irq[line] = bool(level)
        self.irq_changes.append((line, bool(level)))

    # -- the guest's side -----------------------------------------------------------------
    def out(self, port: int, value: int, size: int = 1) -> exits.Exit | None:
        """A guest OUT; returns the exit that ends the run, if it ends it (a debug-exit
        port, or a handler raising EndRun)."""
        fast = self.fast.get(port)
        if fast is not None and fast.enabled:
            if fast.kind is PortKind.BUFFERED:
                fast.sink(value.to_bytes(size, "little"))
                return None
            if fast.kind is PortKind.DEBUG_EXIT:
                return exits.DebugExit((value << 1) | 1, value, port)
        handler = self.io.find(port)
        assert handler is not None and handler.write is not None, f"nothing takes OUT {port:#x}"
        try:
            handler.write(port, size, value)
        except EndRun as end:
            return end.exit
        return None

    def inp(self, port: int, size: int = 1) -> int:
        """A guest IN."""
        fast = self.fast.get(port)
        if fast is not None and fast.enabled and fast.kind is PortKind.CONSTANT:
            return fast.value
        handler = self.io.find(port)
        assert handler is not None and handler.read is not None, f"nothing answers IN {port:#x}"
        value = handler.read(port, size)
        assert isinstance(value, int) and 0 <= value < 1 << (8 * size), value
        return value

    def python_handles(self, port: int) -> bool:
        """Whether a guest access to ``port`` reaches Python (no enabled fast port)."""
        fast = self.fast.get(port)
        return fast is None or not fast.enabled
