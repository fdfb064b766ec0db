"""Halt watches (``csrc/halt.c``): the runs of a VM's vCPUs end as a halt once every one of
them is halted with interrupts off and nothing can wake it (with the in-kernel irqchip such a
guest would otherwise sleep in KVM for ever)."""

from __future__ import annotations

import weakref

from ..errors import InvalidArgument, check_rc
from .binding import ffi, lib
from .vm import VmFd

HALT_FOR_GOOD = lib.PYHV_HALT_FOR_GOOD      # the exit code of such a halt


class HaltWatch:
    """One VM's watch; vCPUs join it with :meth:`pyhv._native.VcpuFd.join_halt_watch`.  Each
    member running a guest looks at itself every ``interval`` seconds (a kick out of the
    guest and a few ioctls), so a dead machine's runs end within about that long."""

    def __init__(self, vm: VmFd, interval: float = 0.05) -> None:
        if not 0.001 <= interval <= 60:
            raise InvalidArgument(f"halt watch interval {interval!r} is not 0.001..60 s")
        out = ffi.new("struct pyhv_halt_watch **")
        check_rc(lib.pyhv_halt_watch_create(vm.fd, int(interval * 1e9), out), "a halt watch")
        self.handle = out[0]
        self.interval = interval
        # members hold references of their own in C: the watch outlives them as needed
        self._finalizer = weakref.finalize(self, lib.pyhv_halt_watch_destroy, self.handle)

    @property
    def ended(self) -> bool:
        """Whether the latest verdict (halted for good) still holds."""
        return bool(lib.pyhv_halt_watch_ended(self.handle))
