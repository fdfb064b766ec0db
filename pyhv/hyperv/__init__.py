"""Hyper-V enlightenments in user space: the guest interface of Microsoft's Hypervisor
Top-Level Functional Specification (TLFS) on any KVM, served by pyhv.

>>> import pyhv
>>> from pyhv.hyperv import HyperV
>>> with pyhv.Partition(memory="16M") as part:
...     part.memory.write(0x1000, bytes.fromhex("b8 00 00 00 40 0f a2 f4"))  # cpuid 0x40000000
...     cpu = part.create_vcpu(mode="long", entry=0x1000)
...     hv = part.attach(HyperV("hv-vpindex,hv-time"))
...     _ = part.run(timeout=5)
...     regs = cpu.regs.snapshot()
>>> b"".join(r.to_bytes(4, "little") for r in (regs.rbx, regs.rcx, regs.rdx)).decode()
'Microsoft Hv'

See ``docs/hyperv.md`` for what is implemented and how.
"""

from __future__ import annotations

from . import tlfs
from .clock import ReferenceClock
from .device import HyperV, VpState
from .features import IMPLEMENTED, Enlightenments
from .hypercalls import HYPERCALL_PORT, Hypercall, HypercallFailed
from .synic import PostResult, SynIC
from .testdev import HypervTestDev

__all__ = [
    "HYPERCALL_PORT",
    "IMPLEMENTED",
    "Enlightenments",
    "HyperV",
    "Hypercall",
    "HypercallFailed",
    "HypervTestDev",
    "PostResult",
    "ReferenceClock",
    "SynIC",
    "VpState",
    "tlfs",
]
