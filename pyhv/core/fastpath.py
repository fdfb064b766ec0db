"""Exits that never reach Python one by one: ports the C core completes (buffered output,
constant answers, debug-exit), the kernel's coalesced MMIO/PIO zones, and doorbells (ioeventfd).

What the C core and the kernel collect reaches Python in bulk (:meth:`FastPaths.deliver`),
before any exit Python sees and when a run ends, so the guest's order holds.
"""

from __future__ import annotations

import enum
import threading
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from .._native import VcpuFd, VmFd, close_fd, eventfd_take
from .._native.vcpu import MAX_FAST_PORTS, PORT_BUFFERED, PORT_CONSTANT, PORT_DEBUG_EXIT
from ..errors import ClosedError, InvalidArgument, OverlapError
from .buses import OutputSink, WriteHandler

__all__ = ["Doorbell", "FastPaths", "FastPort", "PortKind"]


class PortKind(enum.IntEnum):
    """What the C core does with a fast port."""

    BUFFERED = PORT_BUFFERED        # OUT: bytes collected, handed to a sink in bulk
    CONSTANT = PORT_CONSTANT        # IN: answered with a fixed value
    DEBUG_EXIT = PORT_DEBUG_EXIT    # OUT of V ends the run: DebugExit(code=(V << 1) | 1)


@dataclass(eq=False)
class FastPort:
    """A port the C core completes (see :meth:`pyhv.Partition.add_buffered_port` and its
    siblings).  ``enabled = False`` sends its exits to Python again (to the handler it lies
    over, if any), from any thread; a device switches its fast paths as its state needs."""

    port: int
    kind: PortKind
    value: int = 0
    sink: OutputSink | None = field(default=None, repr=False)
    _paths: FastPaths | None = field(default=None, repr=False)
    _enabled: bool = field(default=True, repr=False)

    @property
    def enabled(self) -> bool:
        return self._enabled

    @enabled.setter
    def enabled(self, on: bool) -> None:
        if self._paths is None:
            raise InvalidArgument(f"{self!r} is not registered")
        self._enabled = bool(on)
        self._paths.apply_enabled(self)

    def detach(self) -> None:
        """Forget the registry (the port was removed)."""
        self._paths = None

    def __repr__(self) -> str:
        return f"<pyhv.FastPort {self.kind.name.lower()} port {self.port:#x}>"


class Doorbell:
    """An eventfd that the kernel signals on guest writes (see
    :meth:`pyhv.Partition.add_doorbell`).  :meth:`take` returns how many writes happened since
    the last call; :meth:`fileno` lets ``select``/``selectors`` wait for one."""

    def __init__(self, paths: FastPaths, fd: int, address: int, size: int, io: bool,
                 value: int | None) -> None:
        self.address, self.size, self.io, self.value = address, size, io, value
        self._paths = paths
        self._fd = fd
        # a partition dropped without close() still closes its eventfds
        self._finalizer = weakref.finalize(self, close_fd, fd)

    def fileno(self) -> int:
        if self._fd < 0:
            raise ClosedError("doorbell is closed")
        return self._fd

    def take(self) -> int:
        """Writes since the last call (0 if none); never blocks."""
        return eventfd_take(self.fileno())

    def close(self) -> None:
        """Detach the doorbell from the guest and close its eventfd (idempotent)."""
        if self._fd < 0:
            return
        fd, self._fd = self._fd, -1
        self._finalizer.detach()
        self._paths.forget_doorbell(self, fd)

    def __repr__(self) -> str:
        where = f"port {self.address:#x}" if self.io else f"GPA {self.address:#x}"
        return f"<pyhv.Doorbell {where} size={self.size}>"


@dataclass
class _Zone:
    start: int
    end: int
    pio: bool
    write: WriteHandler


class FastPaths:
    """A partition's fast ports, coalesced zones and doorbells, and their bulk delivery.

    ``vcpus()`` lists the partition's open vCPU fds: each gets the fast-port table (the C
    run loop reads its own copy), including vCPUs made later (:meth:`install`).
    """

    def __init__(self, vm: VmFd, vcpus: Callable[[], Iterable[VcpuFd]]) -> None:
        self._vm = vm
        self._vcpus = vcpus
        self.ports: dict[int, FastPort] = {}
        self._outputs: dict[int, OutputSink] = {}     # buffered port -> sink
        self._zones: list[_Zone] = []
        self._ring_lock = threading.Lock()            # one coalesced ring per VM
        self._doorbells: list[Doorbell] = []
        self._changed()

    def _changed(self) -> None:
        # plain attributes, read by the run loop once per run
        self.has_output = bool(self._outputs)          # buffered ports exist
        self.has_bulk = bool(self._outputs or self._zones)   # anything for bulk delivery

    # -- fast ports ---------------------------------------------------------------------------
    def add_port(self, port: int, kind: PortKind, value: int = 0,
                 sink: OutputSink | None = None) -> FastPort:
        """Register a fast port on every vCPU (the caller checked overlaps and quiet)."""
        if port in self.ports:
            raise OverlapError(f"port {port:#x} already has a handler")
        if len(self.ports) >= MAX_FAST_PORTS:
            raise InvalidArgument(f"at most {MAX_FAST_PORTS} fast-path ports")
        entry = FastPort(port, kind, value, sink, self)
        done = []
        try:
            for vcpu in self._vcpus():
                vcpu.set_fast_port(port, kind, value)
                done.append(vcpu)
        except BaseException:
            for vcpu in done:
                vcpu.remove_fast_port(port)
            raise
        self.ports[port] = entry
        if sink is not None:
            self._outputs[port] = sink
        self._changed()
        return entry

    def remove_port(self, entry: FastPort) -> None:
        if self.ports.get(entry.port) is not entry:
            raise InvalidArgument(f"{entry!r} is not registered here")
        for vcpu in self._vcpus():
            if entry.port in self._outputs:
                self._deliver_output(vcpu)        # what it collected goes out first
            vcpu.remove_fast_port(entry.port)
        del self.ports[entry.port]
        self._outputs.pop(entry.port, None)
        self._changed()
        entry.detach()

    def apply_enabled(self, entry: FastPort) -> None:
        for vcpu in self._vcpus():
            vcpu.enable_fast_port(entry.port, entry.enabled)

    def install(self, vcpu: VcpuFd) -> None:
        """Give a new vCPU the current fast-port table."""
        for entry in self.ports.values():
            vcpu.set_fast_port(entry.port, entry.kind, entry.value)
            if not entry.enabled:
                vcpu.enable_fast_port(entry.port, False)

    def overlaps(self, start: int, size: int) -> int | None:
        """A fast port in ``[start, start + size)``, or None."""
        return next((p for p in self.ports if start <= p < start + size), None)

    # -- coalesced zones ----------------------------------------------------------------------
    def add_zone(self, start: int, size: int, pio: bool, write: WriteHandler) -> None:
        self._vm.coalesced_zone(start, size, pio, True)
        self._zones.append(_Zone(start, start + size, pio, write))
        self._changed()

    def zone_at(self, start: int, pio: bool) -> _Zone | None:
        return next((z for z in self._zones if z.start == start and z.pio == pio), None)

    def remove_zone(self, zone: _Zone) -> None:
        self._vm.coalesced_zone(zone.start, zone.end - zone.start, zone.pio, False)
        self._zones.remove(zone)
        self._changed()

    # -- doorbells ----------------------------------------------------------------------------
    def add_doorbell(self, address: int, size: int, io: bool, value: int | None) -> Doorbell:
        fd = self._vm.ioeventfd(address, size, io, value)
        bell = Doorbell(self, fd, address, size, io, value)
        self._doorbells.append(bell)
        return bell

    def forget_doorbell(self, bell: Doorbell, fd: int) -> None:
        """A doorbell closes: detach its eventfd from the VM (if still open) and close it."""
        if bell in self._doorbells:
            self._doorbells.remove(bell)
        if self._vm.closed:
            close_fd(fd)
        else:
            self._vm.ioeventfd_remove(bell.address, bell.size, bell.io, bell.value, fd)

    def close(self) -> None:
        for bell in list(self._doorbells):
            bell.close()

    # -- bulk delivery ------------------------------------------------------------------------
    def deliver(self, vcpu: VcpuFd, output: bool, coalesced: bool) -> None:
        """Hand buffered-port output and coalesced writes to their sinks, in guest order:
        the ring first (its writes came before the exit that ended the run)."""
        if coalesced:
            self._drain_coalesced(vcpu)
        if output:
            self._deliver_output(vcpu)

    def deliver_all(self, vcpus: Iterable[VcpuFd]) -> None:
        """Empty every vCPU's buffers and the VM's ring (before a snapshot or restore)."""
        if not self.has_bulk:
            return
        for i, vcpu in enumerate(vcpus):
            self.deliver(vcpu, True, i == 0)      # the ring is the VM's: drained once

    def _deliver_output(self, vcpu: VcpuFd) -> None:
        # empty every buffer before calling any sink: a sink that raises must not leave
        # another port's bytes piling up in C
        taken = [(sink, vcpu.take_output(port)) for port, sink in self._outputs.items()]
        error: BaseException | None = None
        for sink, data in taken:
            if not data:
                continue
            try:
                sink(data)
            except BaseException as exc:   # the others still get theirs
                error = error or exc
        if error is not None:
            raise error

    def _drain_coalesced(self, vcpu: VcpuFd) -> None:
        with self._ring_lock:       # one ring, drained in order by whichever vCPU comes
            for address, size, pio, value in vcpu.drain_coalesced():
                for zone in self._zones:
                    if zone.start <= address < zone.end and zone.pio == pio:
                        zone.write(address, size, value)
                        break
