"""pyhv.gdb: debug guests with GNU gdb, as under QEMU's ``-s -S``.

>>> import pyhv, pyhv.gdb
>>> with pyhv.Partition(memory="16M") as part:
...     part.memory.write(0x1000, b"\\xf4")                        # hlt
...     cpu = part.create_vcpu(mode="long", entry=0x1000)
...     with pyhv.gdb.serve(part, "tcp:127.0.0.1:0") as server:   # gdb: target remote ...
...         part.run(timeout=5).exit                              # no gdb came: it just runs
Halt(rip=0x1001)

``serve(part, "tcp::1234", wait=True)`` is ``-s -S``: the vCPUs wait for gdb's ``continue``.
See ``docs/gdb.md`` for the whole recipe, the packets served and what each backend can do
(:func:`debug_support`).
"""

from __future__ import annotations

from typing import Any

from .probe import DebugSupport, debug_support
from .server import GdbServer, parse_address

__all__ = ["DebugSupport", "GdbServer", "debug_support", "parse_address", "serve"]


def serve(partition: Any, address: str = "tcp::1234", *, wait: bool = False,
          arch: str | None = None) -> GdbServer:
    """Serve gdb for ``partition``'s vCPUs on ``address`` (``tcp::PORT``, ``tcp:HOST:PORT``,
    ``unix:PATH``) from a background thread; ``wait=True`` keeps the vCPUs from running until
    gdb continues.  Returns the started :class:`GdbServer` (a context manager)."""
    return GdbServer(partition, address, wait=wait, arch=arch)
