"""What a device may ask of the partition it is attached to: :class:`DeviceHost`.

Devices see only this protocol (which :class:`pyhv.Partition` implements), never the
partition's insides, so a device can also be tested against a small fake host.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ..core.buses import Handler, OutputSink, ReadHandler, WriteHandler
from ..core.fastpath import Doorbell, FastPort
from ..core.memory import GuestMemory


class DeviceHost(Protocol):
    """The partition's side of a device: handlers, fast ports, IRQ lines, memory."""

    irqchip: bool
    memory: GuestMemory

    @property
    def vcpus(self) -> Sequence[object]: ...

    def add_io_handler(self, ports: int | range, read: ReadHandler | None = None,
                       write: WriteHandler | None = None) -> Handler: ...

    def add_mmio_handler(self, gpa: int, size: int, read: ReadHandler | None = None,
                         write: WriteHandler | None = None) -> Handler: ...

    def add_buffered_port(self, port: int, sink: OutputSink, *,
                          overlay: bool = False) -> FastPort: ...

    def add_constant_port(self, port: int, value: int, *, overlay: bool = False) -> FastPort: ...

    def add_debug_exit(self, port: int = 0xF4) -> FastPort: ...

    def add_doorbell(self, address: int, size: int = 4, *, io: bool = False,
                     value: int | None = None) -> Doorbell: ...

    def remove_handler(self, handler: Handler | FastPort) -> None: ...

    def set_irq(self, line: int, level: bool) -> None: ...

    def signal_msi(self, address: int, data: int) -> bool: ...
