"""The base of pyhv's devices."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .host import DeviceHost


class Device:
    """Base of pyhv's devices: a name, an ``attach`` step and a snapshot-able state."""

    name = "device"

    def attach(self, partition: DeviceHost) -> None:
        """Register the device's handlers on ``partition`` (called by ``Partition.attach``)."""
        self.partition = partition

    def get_state(self) -> dict[str, Any]:
        """The device's state as JSON-able values (for snapshots)."""
        return {}

    def set_state(self, state: dict[str, Any]) -> None:
        """Take back a state from :meth:`get_state`."""
