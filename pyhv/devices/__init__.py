"""pyhv's device models: Python objects on the partition's port/MMIO dispatch.

A device attaches to a partition under a name (``part.devices[name]``) and, so that
snapshots carry it, keeps its state in a plain dict of JSON-able values.
"""

from __future__ import annotations

from typing import Any


class Device:
    """Base of pyhv's devices: a name and a snapshot-able state."""

    name = "device"

    def get_state(self) -> dict[str, Any]:
        """The device's state as JSON-able values (for snapshots)."""
        return {}

    def set_state(self, state: dict[str, Any]) -> None:
        """Take back a state from :meth:`get_state`."""


__all__ = ["Device"]
