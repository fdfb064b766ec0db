"""A pool of ready partitions, each handed out in the state of a template snapshot.

>>> import pyhv
>>> with pyhv.Partition(memory="1M") as part:
...     part.memory.write(0x1000, bytes.fromhex("48 ff c0 f4"))   # inc %rax; hlt
...     _ = part.create_vcpu(mode="long", entry=0x1000)
...     template = part.snapshot()
>>> with pyhv.PartitionPool(template, size=2) as pool:
...     for _ in range(3):
...         with pool.lease() as guest:             # always in the template's state
...             print(guest.run(timeout=5).exit, guest.vcpus[0].regs.rax)
Halt(rip=0x1004) 1
Halt(rip=0x1004) 1
Halt(rip=0x1004) 1

"Get a fresh guest, run it, give it back" then skips VM creation entirely: giving a partition
back restores the template, which copies only the pages the guest dirtied.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

from .core.hypervisor import Hypervisor
from .errors import ClosedError, InvalidArgument
from .partition import Partition
from .snapshot import Snapshot


class PartitionPool:
    """Partitions built from ``template`` (see :meth:`Partition.from_snapshot`), kept ready.

    ``setup(partition)`` runs once for each new partition, to register the handlers and
    buffered ports that a snapshot does not carry.  ``size`` partitions are made up front;
    more are made on demand when all are out.
    """

    def __init__(self, template: Snapshot, *, size: int = 1,
                 setup: Callable[[Partition], None] | None = None,
                 hypervisor: Hypervisor | None = None) -> None:
        if not isinstance(template, Snapshot):
            raise InvalidArgument("a pool needs a pyhv.Snapshot as its template")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise InvalidArgument(f"pool size must be an int >= 0, not {size!r}")
        self.template = template
        self._setup = setup
        self._hypervisor = hypervisor
        self._free: list[Partition] = []
        self._out: set[Partition] = set()
        self._lock = threading.Lock()
        self._closed = False
        try:
            for _ in range(size):
                self._free.append(self._new())
        except BaseException:
            self.close()
            raise

    def _new(self) -> Partition:
        part = Partition.from_snapshot(self.template, hypervisor=self._hypervisor)
        try:
            if self._setup is not None:
                self._setup(part)
        except BaseException:
            part.close()
            raise
        return part

    def acquire(self) -> Partition:
        """A partition in the template's state (made now if none is free)."""
        with self._lock:
            if self._closed:
                raise ClosedError("the pool is closed")
            part = self._free.pop() if self._free else None
        if part is None:
            part = self._new()
        with self._lock:
            self._out.add(part)
        return part

    def release(self, part: Partition) -> None:
        """Give ``part`` back: it is restored to the template, ready for the next acquire.
        A partition that cannot be restored (closed, still running) is dropped."""
        with self._lock:
            if part not in self._out:
                raise InvalidArgument(f"{part!r} was not acquired from this pool")
            self._out.discard(part)
        try:
            part.restore(self.template)
        except BaseException:          # Ctrl-C too: half restored, it is not the pool's
            part.close()
            raise
        with self._lock:
            if self._closed:
                part.close()
            else:
                self._free.append(part)

    @contextlib.contextmanager
    def lease(self) -> Iterator[Partition]:
        """``with pool.lease() as part:`` acquire, and release at the end of the block."""
        part = self.acquire()
        try:
            yield part
        finally:
            if part.closed:
                with self._lock:
                    self._out.discard(part)
            else:
                self.release(part)

    @property
    def free(self) -> int:
        return len(self._free)

    def close(self) -> None:
        """Close the free partitions; those still out are closed when released."""
        with self._lock:
            self._closed = True
            free, self._free = self._free, []
        for part in free:
            part.close()

    def __enter__(self) -> PartitionPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
