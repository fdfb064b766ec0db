"""pyhv's PC devices: Python objects on the partition's port dispatch, with the C fast paths
where one fits.  Attach them with :meth:`pyhv.Partition.attach`:

>>> import pyhv, io
>>> with pyhv.Partition(memory="16M") as part:
...     uart = part.attach(pyhv.devices.Uart16550(output=io.BytesIO()))   # COM1, IRQ 4
...     _ = part.attach(pyhv.devices.I8042())   # command 0xFE ends the run with exits.Reset
...     _ = part.attach(pyhv.devices.Rtc())     # CMOS clock at 0x70/0x71
...     _ = part.attach(pyhv.devices.FwCfg())   # QEMU's fw_cfg at 0x510/0x511
...     _ = part.attach(pyhv.devices.IsaDebugExit())   # QEMU's isa-debug-exit at 0xF4
...     sorted(part.devices)
['com1', 'debug-exit', 'fw_cfg', 'i8042', 'rtc']

Devices see the partition only through :class:`~pyhv.devices.host.DeviceHost`.

Each device keeps its state in JSON-able values (``get_state``/``set_state``), so snapshots
carry it.
"""

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


from .debugexit import IsaDebugExit  # noqa: E402
from .fwcfg import FwCfg  # noqa: E402
from .i8042 import I8042  # noqa: E402
from .rtc import Rtc  # noqa: E402
from .uart import Uart16550  # noqa: E402

__all__ = ["Device", "Uart16550", "I8042", "Rtc", "FwCfg", "IsaDebugExit"]
