"""The handler-registration half of :class:`pyhv.Partition`'s API: port, MMIO and MSR
handlers on the buses, handlers for stub exits, and the exits the C core or the kernel
complete without Python (fast ports, coalesced zones, doorbells)."""

from __future__ import annotations

from .._native import Feature
from ..errors import ClosedError, InvalidArgument, OverlapError
from .buses import (
    Handler,
    OutputSink,
    ReadHandler,
    SyscallHandler,
    WriteHandler,
    sink_writer,
)
from .fastpath import Doorbell, FastPort, PortKind
from .hypervisor import Hypervisor
from .machine import MAX_HANDLED_MSRS, ExceptionHandler, Machine
from .memory import as_int


def _port_span(ports: int | range) -> tuple[int, int]:
    if isinstance(ports, range):
        if ports.step != 1 or not ports:
            raise InvalidArgument(f"port range {ports} must be non-empty with step 1")
        return ports.start, len(ports)
    return as_int("port", ports), 1


class HandlerRegistration:
    """Mixed into :class:`pyhv.Partition`, which provides ``_machine`` and ``hypervisor``."""

    _machine: Machine
    hypervisor: Hypervisor
    unclaimed_ports: dict[int, int]

    def _require_open(self) -> None:
        if self._machine.vm.closed:
            raise ClosedError("partition is closed")

    # -- handlers -------------------------------------------------------------------------
    def add_io_handler(self, ports: int | range, read: ReadHandler | None = None,
                       write: WriteHandler | None = None) -> Handler:
        """Serve guest port IO on ``ports`` (one port or a ``range``) during :meth:`run`.

        ``read(port, size) -> int`` answers IN; ``write(port, size, value)`` takes OUT.
        """
        self._require_open()
        start, size = _port_span(ports)
        self._check_no_fast_port(start, size)
        return self._machine.io.add(start, size, read, write)

    def add_mmio_handler(self, gpa: int, size: int, read: ReadHandler | None = None,
                         write: WriteHandler | None = None) -> Handler:
        """Serve guest MMIO in ``[gpa, gpa+size)`` during :meth:`run` (accesses there exit
        when no RAM is mapped, or for writes to a read-only slot).

        ``read(gpa, size) -> int`` answers reads; ``write(gpa, size, value)`` takes writes.
        A range over RAM is refused (the guest's accesses there never exit); over a ROM only
        a write handler makes sense.
        """
        self._require_open()
        memory = self._machine.memory
        if isinstance(gpa, int) and isinstance(size, int) and size > 0:
            clash = memory.overlapping(gpa, size)
            if clash is not None and (not clash.readonly or read is not None):
                what = "RAM" if not clash.readonly else "a ROM, whose reads never exit"
                raise OverlapError(f"MMIO range [{gpa:#x}, {gpa + size:#x}) lies over {what} "
                                   f"({clash}): its handler would never see those accesses")
        return self._machine.mmio.add(gpa, size, read, write)

    def add_msr_handler(self, msrs: int | range, read: ReadHandler | None = None,
                        write: WriteHandler | None = None) -> Handler:
        """Serve the guest's RDMSR/WRMSR of ``msrs`` (one index or a ``range``) during
        :meth:`run`, through KVM's MSR filter and user-space MSR exits: ``read(index, 8) ->
        int`` answers RDMSR, ``write(index, 8, value)`` takes WRMSR; a missing handler,
        or one that raises :class:`pyhv.RefuseAccess`, faults the guest (#GP).  In a typed
        run the accesses come back as :class:`pyhv.exits.MsrRead` / :class:`pyhv.exits.MsrWrite`.
        """
        self.hypervisor.require(Feature.X86_USER_SPACE_MSR, "MSR handlers")
        self.hypervisor.require(Feature.X86_MSR_FILTER, "MSR handlers")
        self._require_open()
        if isinstance(msrs, range):
            if msrs.step != 1 or not msrs:
                raise InvalidArgument(f"MSR range {msrs} must be non-empty with step 1")
            start, size = msrs.start, len(msrs)
        else:
            start, size = as_int("MSR index", msrs), 1
        machine = self._machine
        total = sum(h.end - h.start for h in machine.msr.handlers) + size
        if total > MAX_HANDLED_MSRS:
            raise InvalidArgument(f"MSR handlers may cover at most {MAX_HANDLED_MSRS} MSRs")
        handler = machine.msr.add(start, size, read, write)
        try:
            machine.update_msr_filter()
        except BaseException:
            machine.msr.remove(handler)
            machine.update_msr_filter()
            raise
        return handler

    def _check_no_fast_port(self, start: int, size: int) -> None:
        port = self._machine.fast.overlaps(start, size)
        if port is not None:
            raise OverlapError(f"port {port:#x} already has a handler")

    def ignore_unclaimed_ports(self) -> None:
        """Treat ports no handler claims like an empty ISA bus: INs read all ones and OUTs
        vanish, instead of ending the run.  Real kernels probe many such ports; the ones
        touched are counted in :attr:`unclaimed_ports` (port -> accesses)."""
        counts = self.unclaimed_ports

        def read(port: int, size: int) -> int:
            counts[port] = counts.get(port, 0) + 1
            return (1 << (8 * size)) - 1

        def write(port: int, size: int, value: int) -> None:
            counts[port] = counts.get(port, 0) + 1

        self._machine.io.set_fallback(read, write)

    def remove_handler(self, handler: Handler | FastPort) -> None:
        """Unregister a handler returned by one of the ``add_*`` methods."""
        machine = self._machine
        if isinstance(handler, FastPort):
            machine.life.require_quiet("remove a fast-path port")
            machine.fast.remove_port(handler)
            return
        if handler.space == "msr":
            if handler not in machine.msr:
                raise InvalidArgument(f"{handler!r} is not registered here")
            machine.msr.remove(handler)
            machine.update_msr_filter()
            return
        space = machine.io if handler.space == "io" else machine.mmio
        if handler not in space:
            raise InvalidArgument(f"{handler!r} is not registered here")
        zone = machine.fast.zone_at(handler.start, handler.space == "io")
        if zone is not None:
            # writes the kernel queued for this zone go to its handler first
            machine.life.require_quiet("remove a coalesced zone")
            machine.fast.deliver_all(machine.vcpu_fds())
            machine.fast.remove_zone(zone)
        space.remove(handler)

    def set_syscall_handler(self, handler: SyscallHandler | None) -> None:
        """Serve user-mode ``syscall``s during :meth:`run`: ``handler(nr, args)`` returns the
        result (RAX) to resume the payload, or None to end the run on that
        :class:`pyhv.exits.Syscall`."""
        if handler is not None and not callable(handler):
            raise InvalidArgument(f"syscall handler {handler!r} is not callable")
        self._machine.syscall_handler = handler

    def set_exception_handler(self, handler: ExceptionHandler | None) -> None:
        """Serve guest exceptions during :meth:`run`: ``handler(exit)`` gets each
        :class:`pyhv.exits.GuestException` (user mode or ``exceptions=True``) and may
        ``exit.resume_at(...)``; returning goes on with the guest, raising stops the run."""
        if handler is not None and not callable(handler):
            raise InvalidArgument(f"exception handler {handler!r} is not callable")
        self._machine.exception_handler = handler

    # -- exits the C core or the kernel complete without Python ------------------------------
    def _add_fast_port(self, port: int, kind: PortKind, value: int = 0, *,
                       overlay: bool = False, sink: OutputSink | None = None) -> FastPort:
        """``overlay=True`` lets the port lie over a Python handler of the same port, which
        then takes what C does not (a device's slow path)."""
        port = as_int("port", port)
        if not 0 <= port <= 0xFFFF:
            raise InvalidArgument(f"port {port:#x} is not a 16-bit port")
        self._require_open()
        self._machine.life.require_quiet("add a fast-path port")   # the C loop reads the table
        if not overlay and self._machine.io.claimed(port) is not None:
            raise OverlapError(f"port {port:#x} already has a handler")
        return self._machine.fast.add_port(port, kind, value, sink)

    def add_buffered_port(self, port: int, sink: OutputSink, *,
                          overlay: bool = False) -> FastPort:
        """Collect the guest's OUTs to ``port`` in C and hand them to ``sink`` in bulk.

        ``sink`` is a callable taking ``bytes`` or a binary stream (anything with
        ``write``).  It gets the bytes when the buffer fills, before any exit Python sees,
        and when the run ends: a serial transmit register costs no Python call per byte.
        ``overlay=True`` lets it lie over an IO handler of the same port (which then gets the
        exits while :attr:`FastPort.enabled` is False).
        """
        return self._add_fast_port(port, PortKind.BUFFERED, overlay=overlay,
                                   sink=sink_writer(sink))

    def add_constant_port(self, port: int, value: int, *, overlay: bool = False) -> FastPort:
        """Answer the guest's INs from ``port`` with ``value`` in C (e.g. a UART's line
        status "transmitter empty", which polling guests read before every byte)."""
        value = as_int("value", value)
        if not 0 <= value <= 0xFFFFFFFF:
            raise InvalidArgument(f"constant {value:#x} does not fit 32 bits")
        return self._add_fast_port(port, PortKind.CONSTANT, value, overlay=overlay)

    def add_debug_exit(self, port: int = 0xF4) -> FastPort:
        """QEMU's isa-debug-exit: a guest OUT of V to ``port`` ends the run with a
        :class:`pyhv.exits.DebugExit` whose ``code`` is ``(V << 1) | 1``."""
        return self._add_fast_port(port, PortKind.DEBUG_EXIT)

    def add_coalesced_mmio(self, gpa: int, size: int, write: WriteHandler,
                           read: ReadHandler | None = None) -> Handler:
        """Let the kernel queue guest writes to ``[gpa, gpa+size)`` in its coalesced ring
        (no exit per write); ``write(gpa, size, value)`` gets them in bulk, in order, before
        any exit Python sees (writes that do exit, e.g. when the ring is full, reach it too,
        in order).  Reads still exit, to ``read`` if given."""
        return self._add_coalesced(gpa, size, write, read, pio=False)

    def add_coalesced_io(self, ports: int | range, write: WriteHandler,
                         read: ReadHandler | None = None) -> Handler:
        """The port-IO twin of :meth:`add_coalesced_mmio` (``KVM_CAP_COALESCED_PIO``).  Some
        backends (kvm_pvm) exit on these writes anyway; ``write`` then gets them one by one."""
        start, size = _port_span(ports)
        return self._add_coalesced(start, size, write, read, pio=True)

    def _add_coalesced(self, start: int, size: int, write: WriteHandler,
                       read: ReadHandler | None, pio: bool) -> Handler:
        self.hypervisor.require(Feature.COALESCED_PIO if pio else Feature.COALESCED_MMIO,
                                "coalesced writes")
        if not callable(write):
            raise InvalidArgument(f"write handler {write!r} is not callable")
        self._require_open()
        space = self._machine.io if pio else self._machine.mmio
        if pio:
            self._check_no_fast_port(start, size)
        # Writes the kernel does not queue (ring full, or a backend that exits anyway) reach
        # the same handler as ordinary exits, after the queued ones: the order holds.
        handler = space.add(start, size, read, write)
        try:
            self._machine.fast.add_zone(start, size, pio, write)
        except BaseException:
            space.remove(handler)
            raise
        return handler

    def add_doorbell(self, address: int, size: int = 4, *, io: bool = False,
                     value: int | None = None) -> Doorbell:
        """An eventfd the kernel signals when the guest writes ``size`` bytes at ``address``
        (a port with ``io=True``), optionally only when it writes ``value``: the write costs
        no exit at all.  See :class:`pyhv.Doorbell`."""
        address, size = as_int("address", address), as_int("size", size)
        if size not in (1, 2, 4, 8) or (io and (size == 8 or address > 0xFFFF)) or address < 0:
            raise InvalidArgument(f"bad doorbell {'port' if io else 'address'} {address:#x} "
                                  f"size {size}")
        self.hypervisor.require(Feature.IOEVENTFD, "doorbells")
        if value is not None and not 0 <= as_int("value", value) < 1 << (8 * size):
            raise InvalidArgument(f"doorbell value {value:#x} does not fit {size} bytes")
        self._require_open()
        return self._machine.fast.add_doorbell(address, size, io, value)
