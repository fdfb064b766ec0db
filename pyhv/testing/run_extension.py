"""``pyhv run`` with guests built by :func:`pyhv.testing.build_guest`: when the image is one
of them, its ucalls are served (prints to stdout, syncs answered 0 and noted on stderr);
``GUEST_DONE`` ends the run with exit status 0, a failed assertion with status 3 and the
failure on stderr.  Other images are left alone.

``pyhv run`` boots an ELF64 image in long mode and an ELF32 one in protected mode, at ring
0 and on one vCPU, without pyhv's exception reporting: a guest exception there is a triple
fault (status 2).  A user-mode image runs at ring 0 too (its ucalls work the same), but it
was built with SSE, which software KVMs (kvm_pvm) cannot emulate at ring 0.
"""

from __future__ import annotations

import argparse
import sys

from .. import exits
from ..core.buses import EndRun
from ..errors import HypervisorError, ImageFormatError, InvalidArgument
from ..partition import Partition
from . import layout
from .image import GuestImage
from .ucall import UcallChannel

FAILED_STATUS = 3            # (1 << 1) | 1: isa-debug-exit's status for the value 1


class GuestUcalls:
    """The ``pyhv run`` extension (see :data:`pyhv.tools.run.EXTENSIONS`)."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--no-ucalls", action="store_true",
                            help="do not serve the ucalls of pyhv.testing guests")

    def before_run(self, args: argparse.Namespace, partition: Partition) -> None:
        if getattr(args, "no_ucalls", False):
            return
        try:
            image = GuestImage.from_file(args.image)
        except (ImageFormatError, InvalidArgument):
            return                                  # not a pyhv.testing guest
        if args.cpus != 1:
            raise HypervisorError("a pyhv.testing guest runs on one vCPU under pyhv run; run "
                                  "SMP guests from Python (pyhv.testing.GuestVM(image, cpus))")
        serve(partition, image)


def serve(partition: Partition, image: GuestImage) -> None:
    """Serve vCPU 0's ucalls of ``image`` (loaded in ``partition``) as the module says."""
    channel = UcallChannel(partition.memory, image, 1)
    channel.write_info(1, sum(s.size for s in partition.memory.slots if s.gpa == 0))
    pieces: list[str] = []

    def doorbell(address: int, size: int, value: int) -> None:
        header = channel.header(0)
        command = header[0]
        channel.check_command(0, command)
        if command == layout.Command.SYNC:
            where = channel.string(header[4])
            print(f"pyhv run: guest sync {header[1]:#x}" + (f" at {where}:{header[5]}" if where
                                                             else "") + ", answered 0",
                  file=sys.stderr)
            channel.reply(0, 0)
            return
        text = channel.text(0, header[8])
        if command == layout.Command.PRINT:
            sys.stdout.write(text)
            sys.stdout.flush()
            pieces.append(text)
            return
        if command == layout.Command.DONE:
            raise EndRun(exits.Halt())
        failure = channel.failure(0, header, text, "".join(pieces))
        print(f"pyhv run: {failure}", file=sys.stderr)
        raise EndRun(exits.DebugExit(code=FAILED_STATUS, value=FAILED_STATUS >> 1,
                                     port=layout.UCALL_PORT))

    partition.add_io_handler(layout.UCALL_PORT, write=doorbell)
    partition.add_mmio_handler(layout.UCALL_MMIO, 4, write=doorbell)
