"""``pyhv run``'s gdb flags, spelled as QEMU's: ``-gdb DEV``, ``-s`` (``-gdb tcp::1234``) and
``-S`` (the vCPUs wait for gdb's ``continue``)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import HypervisorError
from .server import GdbServer

__all__ = ["GdbRunExtension"]


class GdbRunExtension:
    """A ``pyhv run`` extension (see ``pyhv.tools.run.EXTENSIONS``)."""

    def __init__(self) -> None:
        self.server: GdbServer | None = None

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("debugging with gdb (QEMU's flags)")
        group.add_argument("-gdb", metavar="DEV", default=None,
                           help="serve gdb on DEV: tcp::PORT (localhost), tcp:HOST:PORT or "
                           "unix:PATH; then in gdb: target remote :PORT")
        group.add_argument("-s", dest="gdb_default", action="store_true",
                           help="shorthand for -gdb tcp::1234")
        group.add_argument("-S", dest="gdb_wait", action="store_true",
                           help="do not start the vCPUs until gdb continues")

    def before_run(self, args: argparse.Namespace, partition: Any) -> None:
        address = args.gdb or ("tcp::1234" if args.gdb_default else None)
        if address is None:
            if args.gdb_wait:
                raise HypervisorError("-S waits for gdb: give -s or -gdb DEV too")
            return
        self.server = GdbServer(partition, address, wait=args.gdb_wait)
        print(f"pyhv run: gdb server on {self.server.address}"
              + ("; the guest waits for gdb to continue" if args.gdb_wait else ""),
              file=sys.stderr, flush=True)
