"""Snapshots: a partition's memory, vCPU state and pyhv device state, in memory or on disk.

>>> import pyhv
>>> with pyhv.Partition(memory="16M") as part:
...     part.memory.write(0x1000, bytes.fromhex("48 ff c0 f4"))    # inc %rax; hlt
...     cpu = part.create_vcpu(mode="long", entry=0x1000)
...     snap = part.snapshot()                     # not running (pause() it if it is)
...     _ = cpu.run(timeout=5); ran = cpu.regs.rax
...     _ = part.restore(snap)                     # only the pages dirtied since are copied
...     ran, cpu.regs.rax
(1, 0)

:mod:`pyhv.snapshot.format` holds the file format (:meth:`Snapshot.save`,
:meth:`Snapshot.load`); :mod:`pyhv.snapshot.persist` puts the parts' own states together.
"""

from .._native.vcpu import STATE_SIZE
from .format import (
    FORMAT_MAJOR,
    FORMAT_MINOR,
    MAGIC,
    Snapshot,
    SnapshotFormatError,
    VcpuImage,
)

__all__ = ["FORMAT_MAJOR", "FORMAT_MINOR", "MAGIC", "STATE_SIZE", "Snapshot", "SnapshotFormatError",
           "VcpuImage"]
