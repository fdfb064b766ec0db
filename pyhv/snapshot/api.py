"""The snapshot half of :class:`pyhv.Partition`'s API: snapshot, restore, reset points and
partitions made from snapshots."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from ..core.hypervisor import Hypervisor
from ..core.machine import Machine
from ..core.memory import MemorySlot
from ..core.vcpu import create_vcpu
from ..errors import InvalidArgument, StateError
from . import persist
from .format import Snapshot
from .persist import Persistent

P = TypeVar("P", bound="SnapshotApi")


class SnapshotApi:
    """Mixed into :class:`pyhv.Partition`, which provides the attributes below."""

    _machine: Machine
    devices: Mapping[str, Persistent]
    _reset_point: Snapshot | None
    _saved_device_states: dict[str, dict[str, Any]]
    _next_vcpu_id: int

    map_memory: Callable[..., MemorySlot]
    close: Callable[[], None]

    def snapshot(self) -> Snapshot:
        """Capture memory (touched pages of every slot), every vCPU's whole state and the
        state of pyhv's devices.  The partition must not be running (pause() it).  From here
        on writes are tracked, so :meth:`restore` of this snapshot copies only what changed."""
        self._machine.life.require_quiet("take a snapshot")
        self._machine.fast.deliver_all(self._machine.vcpu_fds())
        return persist.take(self._machine, self.devices)

    def restore(self, snap: Snapshot) -> int:
        """Bring the partition back to ``snap`` (same slots and vCPUs): memory, vCPU state,
        devices.  Clears poisoning.  Restoring the latest snapshot taken or restored copies
        only the pages written since; any other snapshot costs a copy of the touched pages.
        Returns the number of pages copied."""
        if not isinstance(snap, Snapshot):
            raise InvalidArgument(f"restore() takes a pyhv.Snapshot, not {type(snap).__name__}")
        machine = self._machine
        machine.life.require_quiet("restore a snapshot")
        persist.check_fits(machine, snap)       # a snapshot that does not fit changes nothing
        machine.fast.deliver_all(machine.vcpu_fds())
        try:
            copied = persist.restore(machine, self.devices, snap)
        except BaseException as exc:
            # memory and vCPUs may be half from the snapshot, half not: unusable until a
            # restore succeeds
            machine.life.poison(f"a restore failed halfway ({type(exc).__name__}: {exc})")
            raise
        for vcpu in self._machine.vcpus:     # a restored partition starts with no cancels
            vcpu.clear_cancel()
        machine.life.cure()
        return copied

    def set_reset_point(self) -> Snapshot:
        """Make the current state the one :meth:`reset` returns to (and return it)."""
        self._reset_point = self.snapshot()
        return self._reset_point

    def reset(self) -> int:
        """Back to the reset point: the state at the first run of a ``resettable=True``
        partition, or at the last :meth:`set_reset_point`."""
        if self._reset_point is None:
            raise StateError("no reset point: create the partition with resettable=True "
                             "(the first run sets it) or call set_reset_point()")
        return self.restore(self._reset_point)

    @classmethod
    def from_snapshot(cls: type[P], snap: Snapshot, *,
                      hypervisor: Hypervisor | None = None) -> P:
        """A new partition with ``snap``'s memory slots, vCPUs and in-kernel interrupt
        controllers, in ``snap``'s state.  Handlers, fast-path ports and devices are Python
        objects, not part of the snapshot: register or attach them again; a device attached
        under a name the snapshot has takes its saved state."""
        make: Callable[..., P] = cls
        part = make(hypervisor=hypervisor, setup_base=snap.setup_base,
                   irqchip="pic_master" in snap.chips, pit="pit" in snap.chips,
                   hardened=snap.hardened)
        try:
            cls._rebuild(part, snap)
        except BaseException:
            part.close()
            raise
        return part

    def _rebuild(self, snap: Snapshot) -> None:
        """Make ``snap``'s slots and vCPUs here and restore it (for :meth:`from_snapshot`)."""
        for image in snap.slots:
            self.map_memory(image.gpa, image.size, readonly=image.readonly,
                            dirty_log=image.dirty_log)
        for vcpu_image in snap.vcpus:
            self._next_vcpu_id = max(self._next_vcpu_id, vcpu_image.id + 1)
            create_vcpu(self, self._machine, vcpu_image.id, mode=None, cpuid=vcpu_image.cpuid)
        self.restore(snap)
        self._saved_device_states = dict(snap.devices)   # for devices attached later
