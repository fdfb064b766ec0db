"""QEMU's isa-debug-exit: a guest OUT of V ends the run with exit status ``(V << 1) | 1``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Device

if TYPE_CHECKING:
    from .host import DeviceHost


class IsaDebugExit(Device):
    """Handled entirely in C (:meth:`pyhv.Partition.add_debug_exit`): the run ends with a
    :class:`pyhv.exits.DebugExit`."""

    name = "debug-exit"

    def __init__(self, port: int = 0xF4) -> None:
        self.port = port

    def attach(self, partition: DeviceHost) -> None:
        super().attach(partition)
        partition.add_debug_exit(self.port)
