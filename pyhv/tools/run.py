"""``pyhv run IMAGE``: boot an image on a PC-like machine, with QEMU's flags where they mean
the same.

Other packages add flags and machine setup through :data:`EXTENSIONS`: each entry has
``add_arguments(parser)`` and ``before_run(args, partition)`` (called after the image is
loaded and the vCPUs made, before the guest runs).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Protocol

from .. import devices, exits, loaders
from ..errors import HypervisorError, Timeout
from ..gdb.cli import GdbRunExtension
from ..hyperv.run_extension import EXTENSION as HYPERV_EXTENSION
from ..partition import Partition
from ..testing.run_extension import GuestUcalls

DESCRIPTION = ("Boot IMAGE with a 16550 UART on COM1, an i8042, a CMOS clock, fw_cfg and the "
               "debug-exit port; flags are spelled like QEMU's where they mean the same.")


class RunExtension(Protocol):
    """A package's part in ``pyhv run`` (its flags, and what it sets up before the run)."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def before_run(self, args: argparse.Namespace, partition: Partition) -> None: ...


# the packages that take part (they register themselves here; see the module docstring)
EXTENSIONS: list[RunExtension] = []
EXTENSIONS.append(GdbRunExtension())          # -gdb, -s, -S (pyhv.gdb)
EXTENSIONS.append(HYPERV_EXTENSION)      # pyhv.hyperv: --cpu MODEL,hv-... (and --device)
EXTENSIONS.append(GuestUcalls())     # pyhv.testing: the ucalls of guests written in C


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", help="the guest image")
    parser.add_argument("--format", choices=("auto", "flat", "elf", "multiboot", "linux"),
                        default="auto", help="image format (default: detect, like QEMU -kernel)")
    parser.add_argument("--memory", "-m", default="64M", help="guest RAM (default 64M)")
    parser.add_argument("--cpus", "-smp", type=int, default=1, help="vCPUs (default 1)")
    parser.add_argument("--append", default="", help="kernel command line")
    parser.add_argument("--initrd", help="initial ramdisk / first multiboot module")
    parser.add_argument("--serial", default="stdio",
                        help="COM1 output: stdio (default), file:PATH or none")
    parser.add_argument("--timeout", type=float, default=None, help="seconds before giving up")
    parser.add_argument("--debug-exit", type=_int, default=0xF4, metavar="PORT",
                        help="isa-debug-exit port (default 0xf4; 0 for none)")
    parser.add_argument("--address", type=_int, default=None,
                        help="flat images: load and entry address (default 0x100000)")
    parser.add_argument("--mode", choices=("real", "protected", "long", "user"), default="long",
                        help="flat images: the mode to enter them in (default long)")
    chip = parser.add_mutually_exclusive_group()
    chip.add_argument("--irqchip", dest="irqchip", action="store_true", default=None,
                         help="in-kernel PIC/IOAPIC/LAPIC and PIT (default: for Linux or SMP)")
    chip.add_argument("--no-irqchip", dest="irqchip", action="store_false")
    for extension in EXTENSIONS:
        extension.add_arguments(parser)


EPILOG = """exit status:
  (V << 1) | 1   the guest wrote V to the debug-exit port (QEMU's isa-debug-exit; low 8 bits)
  0              the guest halted, or reset the machine (i8042)
  2              the guest triple-faulted (shutdown)
  3              the guest stopped on an exit pyhv could not handle (internal error, ...)
  124            the timeout passed
  1              pyhv could not run the image (bad image or arguments, no KVM)
"""


def _int(text: str) -> int:
    return int(text, 0)


def main(args: argparse.Namespace) -> int:
    """Run ``pyhv run`` with parsed ``args``; the exit status (see :data:`EPILOG`)."""
    serial_file = None
    sink: Callable[[bytes], object]
    try:
        if args.serial == "stdio":
            def sink(data: bytes) -> None:
                sys.stdout.buffer.write(data)
                sys.stdout.buffer.flush()
        elif args.serial.startswith("file:"):
            serial_file = open(args.serial[5:], "wb")   # noqa: SIM115 - closed below
            sink = serial_file.write
        elif args.serial == "none":
            def sink(data: bytes) -> None:
                pass
        else:
            raise HypervisorError(f"--serial {args.serial!r}: use stdio, file:PATH or none")
        data, name = loaders.read_image(args.image)
        kind = loaders.detect(data) if args.format == "auto" else args.format
        irqchip = args.irqchip if args.irqchip is not None else (
            kind == "linux" or args.cpus > 1)
        if args.cpus > 1 and not irqchip:
            raise HypervisorError("--cpus above 1 needs the in-kernel irqchip (no --no-irqchip)")
        with Partition(memory=args.memory, irqchip=irqchip, pit=irqchip) as part:
            part.ignore_unclaimed_ports()
            part.attach(devices.Uart16550(sink))
            part.attach(devices.I8042())
            part.attach(devices.Rtc())
            part.attach(devices.FwCfg(cpus=args.cpus))
            if args.debug_exit:
                part.attach(devices.IsaDebugExit(args.debug_exit))
            image = loaders.load(part, data, kind, name=name,   # the file is read once
                                 cmdline=args.append, initrd=args.initrd,
                                 address=args.address, mode=args.mode)
            image.create_vcpu(part)
            for _ in range(args.cpus - 1):     # application processors wait for a SIPI
                part.create_vcpu(mode="real", entry=0, stack=0x1000)
            for extension in EXTENSIONS:
                extension.before_run(args, part)
            try:
                results = part.run_all(timeout=args.timeout) if args.cpus > 1 else [
                    part.run(timeout=args.timeout)]
            except Timeout:
                print(f"pyhv run: timeout after {args.timeout:g} s", file=sys.stderr)
                return 124
        final = next((r.exit for r in results if not isinstance(r.exit, exits.Canceled)),
                     results[0].exit)
        if isinstance(final, exits.DebugExit):
            return final.code & 0xFF
        if isinstance(final, (exits.Halt, exits.Reset)):
            return 0
        if isinstance(final, exits.Shutdown):
            print("pyhv run: the guest triple-faulted", file=sys.stderr)
            return 2
        print(f"pyhv run: the guest stopped on {final!r}", file=sys.stderr)
        return 3
    except HypervisorError as exc:
        print(f"pyhv run: {exc}", file=sys.stderr)
        return 1
    finally:
        if serial_file is not None:
            serial_file.close()
