"""The native seam: the only importer of pyhv's compiled C core (``pyhv._core``).

One thin typed wrapper per kernel fd kind, like rust-vmm's kvm-ioctls:
:class:`~pyhv._native.system.SystemFd` (``/dev/kvm``) → :class:`~pyhv._native.vm.VmFd` (a VM,
pyhv's partition) → :class:`~pyhv._native.vcpu.VcpuFd`; host memory and page bitmaps
(:mod:`~pyhv._native.memory`); exit decoding (:mod:`~pyhv._native.decode`); and KVM's
capabilities as a typed :class:`~pyhv._native.features.Feature` enum.  Each wrapper turns the C
core's ``0 / -errno`` into :class:`pyhv.KvmError` and takes and returns plain Python values
(pyhv's x86 dataclasses, bytes, ints); no cffi object leaves this package except the exit
summary the run loop reads (see :mod:`pyhv._native.vcpu`).
"""

from .binding import KICK_SIGNAL
from .features import Feature
from .memory import PAGE_SIZE, HostMapping, PageBitmap
from .system import SystemFd, close_fd, monotonic_ns
from .vcpu import VcpuFd
from .vm import VmFd, eventfd_take

__all__ = [
    "KICK_SIGNAL",
    "PAGE_SIZE",
    "Feature",
    "HostMapping",
    "PageBitmap",
    "SystemFd",
    "VcpuFd",
    "VmFd",
    "close_fd",
    "eventfd_take",
    "monotonic_ns",
]
