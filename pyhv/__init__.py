"""pyhv: Hyper-V style partitions and virtual processors for Python, on Linux KVM.

>>> import pyhv
>>> from pyhv import exits
>>> with pyhv.Partition(memory="16M") as part:                     # doctest: +SKIP
...     part.memory.write(0x1000, bytes.fromhex("b0 21 e6 f8 f4"))  # mov al,'!'; out 0xf8,al; hlt
...     cpu = part.create_vcpu(mode="long", entry=0x1000)
...     match cpu.run():
...         case exits.IoOut(port=0xF8, data=d): print(d)
b'!'
"""

from __future__ import annotations

from . import devices, exits, loaders
from .dispatch import EndRun, Handler, RunResult
from .errors import (
    ClosedError,
    GuestMemoryError,
    HandlerError,
    HypervisorError,
    HypervisorUnavailable,
    ImageFormatError,
    InvalidArgument,
    KvmError,
    MissingCapability,
    OverlapError,
    PoisonedError,
    SlotOverlapError,
    StaleExitError,
    StateError,
    Timeout,
    UnhandledExit,
)
from .lifecycle import PartitionState
from .memory import GuestMemory, MemorySlot, parse_size
from .partition import Doorbell, Partition
from .pool import PartitionPool
from .registers import DescriptorTable, Fpu, Regs, Segment, SpecialRegs
from .snapshot import Snapshot, SnapshotFormatError
from .system import Capabilities, CpuidEntry, Hypervisor, check
from .vcpu import VCpu, VCpuStats

try:
    from ._version import version as __version__
except ImportError:  # pragma: no cover - running from a tree that was never built
    __version__ = "0.0.0+unknown"

__all__ = [
    "devices",
    "loaders",
    "Capabilities",
    "Doorbell",
    "EndRun",
    "ImageFormatError",
    "PartitionPool",
    "PartitionState",
    "PoisonedError",
    "Snapshot",
    "SnapshotFormatError",
    "StateError",
    "VCpuStats",
    "ClosedError",
    "CpuidEntry",
    "DescriptorTable",
    "Fpu",
    "GuestMemory",
    "GuestMemoryError",
    "Handler",
    "HandlerError",
    "Hypervisor",
    "HypervisorError",
    "HypervisorUnavailable",
    "InvalidArgument",
    "KvmError",
    "MemorySlot",
    "MissingCapability",
    "OverlapError",
    "Partition",
    "Regs",
    "RunResult",
    "Segment",
    "SlotOverlapError",
    "SpecialRegs",
    "StaleExitError",
    "Timeout",
    "UnhandledExit",
    "VCpu",
    "__version__",
    "check",
    "exits",
    "parse_size",
]
