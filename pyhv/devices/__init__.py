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

from .base import Device
from .debugexit import IsaDebugExit
from .fwcfg import FwCfg
from .i8042 import I8042
from .rtc import Rtc
from .uart import Uart16550

__all__ = ["Device", "Uart16550", "I8042", "Rtc", "FwCfg", "IsaDebugExit"]
