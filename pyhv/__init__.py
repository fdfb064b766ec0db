"""pyhv: Hyper-V style partitions and virtual processors for Python, on Linux KVM.

>>> import pyhv
>>> from pyhv import exits
>>> with pyhv.Partition(memory="16M") as part:
...     part.memory.write(0x1000, bytes.fromhex("b0 21 e6 f8 f4"))  # mov al,'!'; out 0xf8,al; hlt
...     cpu = part.create_vcpu(mode="long", entry=0x1000)
...     match cpu.run(timeout=5):
...         case exits.IoOut(port=0xF8, data=d): print(d)
b'!'

The package is layered: :mod:`pyhv._native` (the only user of the C core) below
:mod:`pyhv.x86` and :mod:`pyhv.exits` (plain values), :mod:`pyhv.core` (memory, vCPUs, the
run loop, buses, fast paths, lifecycle), then snapshots, devices and loaders, the
:class:`Partition` facade and pool, and the tools (CLI, demo, stress, testing).
"""

from __future__ import annotations

import logging

from . import devices, exits, hyperv, loaders, machines
from ._native import Feature
from .core.buses import EndRun, Handler, RefuseAccess, Space
from .core.fastpath import Doorbell, FastPort, PortKind
from .core.hypervisor import (
    OPTIONAL_FEATURES,
    REQUIRED_FEATURES,
    Capabilities,
    Hypervisor,
    check,
)
from .core.lifecycle import PartitionState
from .core.loop import RunResult
from .core.memory import GuestMemory, MemorySlot, parse_size
from .core.vcpu import VCpu, VCpuStats
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
from .hyperv import HyperV
from .partition import Partition
from .pool import PartitionPool
from .snapshot import Snapshot, SnapshotFormatError
from .version import __version__
from .x86.cpuid import CpuidEntry
from .x86.debug import GuestDebug, HardwareBreakpoint  # guest debugging (pyhv.gdb)
from .x86.registers import DescriptorTable, Fpu, Regs, Segment, SpecialRegs

# a library logs, the application decides where it goes (pyhv run -v turns it on)
logging.getLogger("pyhv").addHandler(logging.NullHandler())

__all__ = [
    "OPTIONAL_FEATURES",
    "REQUIRED_FEATURES",
    "FastPort",
    "Feature",
    "PortKind",
    "Space",
    "devices",
    "loaders",
    "machines",
    "Capabilities",
    "Doorbell",
    "EndRun",
    "RefuseAccess",
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
    "HyperV",
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
    "GuestDebug",           # guest debugging (pyhv.gdb)
    "HardwareBreakpoint",
    "hyperv",
    "parse_size",
]
