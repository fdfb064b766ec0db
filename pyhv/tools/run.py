"""``pyhv run IMAGE``: boot an image on the PC machine (:class:`pyhv.machines.PC`), with
QEMU's flags where they mean the same, in both spellings (``-kernel`` / ``--kernel``), so a
QEMU command line for ``-kernel`` boot works by replacing the program name.

Other packages add flags and machine setup through :data:`EXTENSIONS`: each entry has
``add_arguments(parser)`` and ``before_run(args, partition)``, called after the image is loaded
and the vCPUs made, before the guest runs; ``args.machine`` is then the
:class:`~pyhv.machines.PC` (``add_device``, ``vcpus``, ``partition``), ``args.image`` the
image's path and ``args.cpus`` the vCPU count.  The ``hv-*`` / ``hv_*`` entries of ``-cpu``
are the PC's own (they attach :class:`pyhv.hyperv.HyperV`).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from typing import IO, NoReturn, Protocol

from .. import exits
from ..argtypes import integer
from ..core.memory import parse_size
from ..devices import registry
from ..errors import HypervisorError, ImageFormatError, InvalidArgument, Timeout
from ..gdb.cli import GdbRunExtension
from ..machines import PC
from ..partition import Partition
from ..testing.run_extension import GuestUcalls
from ..x86 import cpu_models

DESCRIPTION = ("Boot IMAGE on a PC: the in-kernel irqchip and PIT, COM1, i8042, CMOS clock, "
               "fw_cfg, isa-debug-exit at 0xf4, ACPI (PM timer, S3), PCI (i440FX); flags are "
               "spelled like QEMU's, with one dash or two.")


class RunExtension(Protocol):
    """A package's part in ``pyhv run`` (its flags, and what it sets up before the run)."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def before_run(self, args: argparse.Namespace, partition: Partition) -> None: ...


# the packages that take part (they register themselves here; see the module docstring)
EXTENSIONS: list[RunExtension] = []
EXTENSIONS.append(GdbRunExtension())     # -gdb, -s, -S (pyhv.gdb)
EXTENSIONS.append(GuestUcalls())         # pyhv.testing: the ucalls of guests written in C

EPILOG = """exit status:
  (V << 1) | 1   the guest wrote V to an isa-debug-exit port (always odd; low 8 bits)
  0              the guest halted for good, reset or powered off the machine
  2              the guest triple-faulted (shutdown)
  4              the guest stopped on an exit pyhv could not handle
  124            the timeout passed
  126            the image cannot be run (bad image or arguments, no KVM)
  130            interrupted (Ctrl-C)

QEMU flags accepted for compatibility: -nodefaults, -display none, -nographic,
-enable-kvm, -accel kvm, -machine pc[,accel=kvm][,pit=on|off][,kernel-irqchip=on|off],
-global kvm-pit.lost_tick_policy=delay|discard, -no-reboot (pyhv never reboots),
-name.
-device help and -cpu help list what pyhv provides.
"""

HALT, TRIPLE_FAULT, UNHANDLED = exits.STATUS_HALT, exits.STATUS_TRIPLE_FAULT, exits.STATUS_UNHANDLED
TIMEOUT, CANNOT_RUN, INTERRUPTED = 124, 126, 130


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.allow_abbrev = False              # -m is not -machine, -s is not -smp

    def refuse(message: str) -> NoReturn:    # a usage error is "cannot run" (126), not 2
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(CANNOT_RUN)

    parser.error = refuse  # type: ignore[method-assign]
    parser.set_defaults(usage_error=refuse)  # what `pyhv` calls for arguments nobody took
    parser.add_argument("image", nargs="?", help="the guest image (or -kernel IMAGE)")
    parser.add_argument("-kernel", "--kernel", metavar="IMAGE", help="the guest image")
    parser.add_argument("-append", "--append", default="", help="kernel command line")
    parser.add_argument("-initrd", "--initrd", help="initial ramdisk / first multiboot module")
    parser.add_argument("-m", "--memory", default="128M", metavar="SIZE",
                        help="guest RAM: MiB when no suffix, or K/M/G (default 128M, QEMU's)")
    parser.add_argument("-smp", "--cpus", default="1", metavar="N",
                        help="vCPUs: N, or cpus=N[,sockets=S,cores=C,threads=T]")
    parser.add_argument("-cpu", "--cpu", default="qemu64", metavar="MODEL",
                        help="CPU model and features, QEMU's syntax: host, max, qemu64 (the "
                        "default), kvm64, ...[,+feat][,-feat][,vendor=...] (-cpu help)")
    parser.add_argument("-device", "--device", action="append", default=[], metavar="NAME",
                        help="add a device: NAME[,opt=val...], QEMU's names (-device help)")
    parser.add_argument("-serial", "--serial", default="stdio",
                        help="COM1 output: stdio (default), file:PATH, none or null")
    parser.add_argument("--timeout", type=float, default=None, help="seconds before giving up")
    parser.add_argument("--format", choices=("auto", "flat", "elf", "multiboot", "linux"),
                        default="auto", help="image format (default: detect, like QEMU -kernel)")
    parser.add_argument("--debug-exit", type=integer, default=0xF4, metavar="PORT",
                        help="isa-debug-exit port (default 0xf4; 0 for none)")
    parser.add_argument("--address", type=integer, default=None,
                        help="flat images: load and entry address (default 0x100000)")
    parser.add_argument("--mode", choices=("real", "protected", "long", "user"), default=None,
                        help="flat images: the mode to enter them in (default long)")
    chip = parser.add_mutually_exclusive_group()
    chip.add_argument("--irqchip", dest="irqchip", action="store_true", default=True,
                      help="in-kernel PIC/IOAPIC/LAPIC and PIT (the default)")
    chip.add_argument("--no-irqchip", dest="irqchip", action="store_false",
                      help="no interrupt controllers: one vCPU, hlt ends the run")
    compat = parser.add_argument_group("QEMU's other flags (the ones pyhv takes)")
    compat.add_argument("-no-reboot", "--no-reboot", action="store_true",
                        help="pyhv never reboots: a reset always ends the run")
    compat.add_argument("-nodefaults", "--nodefaults", action="store_true")
    compat.add_argument("-nographic", "--nographic", action="store_true")
    compat.add_argument("-enable-kvm", "--enable-kvm", action="store_true")
    compat.add_argument("-display", "--display", choices=("none",))
    compat.add_argument("-vga", "--vga", choices=("none",))
    compat.add_argument("-monitor", "--monitor", choices=("none",))
    compat.add_argument("-accel", "--accel", choices=("kvm",))
    compat.add_argument("-name", "--name")
    compat.add_argument("-machine", "-M", "--machine", action="append", default=[],
                        metavar="pc[,PROP=VALUE...]",
                        help="the i440FX pc only; pit=on|off, kernel-irqchip=on|off, accel=kvm")
    compat.add_argument("-global", "--global", dest="globals", action="append", default=[],
                        metavar="DRIVER.PROP=VALUE",
                        help="kvm-pit.lost_tick_policy=delay|discard only")
    for extension in EXTENSIONS:
        extension.add_arguments(parser)


# -- reading QEMU's values --------------------------------------------------------------------
def memory_size(text: str) -> int:
    """``-m``: MiB when no suffix (QEMU's), ``size=`` accepted.

    >>> memory_size("512"), memory_size("1G"), memory_size("size=64M")
    (536870912, 1073741824, 67108864)
    """
    text = text.strip()
    if text.startswith("size="):
        text = text[5:]
    if "," in text:
        raise InvalidArgument(f"-m {text}: slots= and maxmem= (memory hotplug) are not provided")
    return parse_size(text + "M" if text.isdigit() else text)


def cpu_count(text: str) -> int:
    """``-smp``: ``N`` or ``[cpus=]N[,sockets=S][,cores=C][,threads=T][,maxcpus=M]``.

    >>> cpu_count("4"), cpu_count("cpus=2,sockets=1"), cpu_count("sockets=2,cores=2")
    (4, 2, 4)
    """
    fields: dict[str, int] = {}
    for i, item in enumerate(text.split(",")):
        key, sep, value = item.partition("=")
        if not sep and i == 0:
            key, value = "cpus", key
        if key not in ("cpus", "sockets", "dies", "clusters", "cores", "threads", "maxcpus"):
            raise InvalidArgument(f"-smp {text}: unknown property {key!r}")
        try:
            fields[key] = int(value)
        except ValueError:
            raise InvalidArgument(f"-smp {text}: {key}={value!r} is not a number") from None
    topology = math.prod(fields.get(k, 1) for k in ("sockets", "dies", "clusters", "cores",
                                                     "threads"))
    cpus = fields.get("cpus", topology)
    if cpus < 1:
        raise InvalidArgument(f"-smp {text}: at least one vCPU")
    if fields.get("maxcpus", cpus) != cpus:
        raise InvalidArgument(f"-smp {text}: maxcpus above cpus (CPU hotplug) is not provided")
    return cpus


def machine_options(values: list[str]) -> dict[str, str]:
    """``-machine`` values: the type (only ``pc`` and QEMU's i440FX types) and properties."""
    props: dict[str, str] = {}
    for value in values:
        for i, item in enumerate(value.split(",")):
            key, sep, prop = item.partition("=")
            if not sep and i == 0:
                key, prop = "type", key
            props[key] = prop
    kind = props.pop("type", "pc")
    if kind not in ("pc", "none") and not kind.startswith(("pc-i440fx", "pc-")) or \
            kind.startswith("pc-q35"):
        raise InvalidArgument(f"-machine {kind}: pyhv provides the i440FX pc machine only")
    accepted = {"accel": ("kvm",), "pit": ("on", "off"), "kernel-irqchip": ("on", "off"),
                "vmport": ("off",), "usb": ("off",), "smm": ("off", "on"), "hpet": ("off",),
                "sata": ("off",), "graphics": ("off",)}
    for key, prop in props.items():
        if key not in accepted or prop not in accepted[key]:
            raise InvalidArgument(f"-machine {key}={prop}: not provided (pyhv takes "
                                  + ", ".join(f"{k}={'|'.join(v)}" for k, v in accepted.items())
                                  + ")")
    return props


def pit_reinject(values: list[str]) -> bool:
    """``-global`` values: only ``kvm-pit.lost_tick_policy=delay|discard`` is provided; whether
    the PIT reinjects lost ticks (delay, KVM's default) after them."""
    reinject = True
    for value in values:
        driver, _, rest = value.partition(".")
        prop, _, setting = rest.partition("=")
        if driver != "kvm-pit" or prop != "lost_tick_policy" or setting not in ("discard",
                                                                              "delay"):
            raise InvalidArgument(f"-global {value}: not provided")
        reinject = setting == "delay"
    return reinject


def device_help() -> str:
    """``-device help``: QEMU's layout, so scripts that grep for a device find it."""
    return "\n".join(f'name "{name}", desc "{text}"' for name, text in registry.describe())


def cpu_help() -> str:
    names = ", ".join(list(cpu_models.PASSTHROUGH) + list(cpu_models.MODELS))
    return (f"Available CPUs: {names}\nRecognized CPUID flags:\n  " +
            " ".join(sorted(cpu_models.FEATURES)))


def _serial_sink(spec: str) -> tuple[Callable[[bytes], object], IO[bytes] | None]:
    """COM1's sink for ``-serial`` and the file to close afterwards."""
    if spec in ("stdio", "mon:stdio"):
        def sink(data: bytes) -> None:
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
        return sink, None
    if spec.startswith("file:"):
        try:
            out = open(spec[5:], "wb")   # noqa: SIM115 - closed by main
        except OSError as exc:
            raise InvalidArgument(f"-serial {spec}: {exc.strerror}") from None
        return out.write, out
    if spec in ("none", "null"):
        return (lambda data: None), None
    raise InvalidArgument(f"--serial {spec!r}: use stdio, file:PATH, none or null")


# -- running -------------------------------------------------------------------------------------
def main(args: argparse.Namespace) -> int:
    """Run ``pyhv run`` with parsed ``args``; the exit status (see :data:`EPILOG`)."""
    if "help" in args.device or "?" in args.device:
        print(device_help())
        return 0
    if args.cpu in ("help", "?"):
        print(cpu_help())
        return 0
    opened: list[IO[bytes]] = []
    try:
        return _run(args, opened)
    except KeyboardInterrupt:
        print("pyhv run: interrupted", file=sys.stderr)
        return INTERRUPTED
    finally:
        for f in opened:
            f.close()


def _run(args: argparse.Namespace, opened: list[IO[bytes]]) -> int:
    try:
        image = args.kernel or args.image
        if args.kernel and args.image and args.kernel != args.image:
            raise InvalidArgument(f"two images: {args.image} and -kernel {args.kernel}")
        if not image:
            raise InvalidArgument("no image: give IMAGE or -kernel IMAGE")
        props = machine_options(args.machine)     # the flags first, then the image, as QEMU
        reinject = pit_reinject(args.globals)
        irqchip = args.irqchip and props.get("kernel-irqchip", "on") == "on"
        cpus = cpu_count(args.cpus)
        memory = memory_size(args.memory)
        cpu_models.parse(args.cpu)
        sink, out = _serial_sink(args.serial)
        if out is not None:
            opened.append(out)
        if cpus > 1 and not irqchip:
            raise InvalidArgument("-smp above 1 needs the in-kernel irqchip (no --no-irqchip)")
        devices = [registry.create(spec) for spec in args.device]
        try:
            open(image, "rb").close()         # QEMU's words, which scripts look for
        except OSError as exc:
            raise InvalidArgument(f"could not load kernel '{image}': {exc.strerror}") from None
        pc = PC(memory=memory, cpus=cpus, cpu=args.cpu, devices=devices, irqchip=irqchip,
                pit=props.get("pit", "on") == "on", pit_reinject=reinject, serial=sink,
                debug_exit=args.debug_exit or None)
    except HypervisorError as exc:
        print(f"pyhv run: {exc}", file=sys.stderr)
        return CANNOT_RUN
    with pc:
        try:
            pc.load(image, args.format, cmdline=args.append, initrd=args.initrd,
                    address=args.address, mode=args.mode)
            for name in pc.missing_features:
                print(f"pyhv run: warning: KVM cannot give the guest CPU feature {name!r} "
                      f"(-cpu {args.cpu}): left out", file=sys.stderr)
            args.machine, args.image, args.cpus = pc, image, cpus    # as read, for extensions
            for extension in EXTENSIONS:
                extension.before_run(args, pc.partition)
        except HypervisorError as exc:
            print(f"pyhv run: {exc}", file=sys.stderr)
            return CANNOT_RUN
        try:
            result = pc.run(timeout=args.timeout)
        except Timeout:
            print(f"pyhv run: timeout after {args.timeout:g} s", file=sys.stderr)
            return TIMEOUT
        except ImageFormatError as exc:
            print(f"pyhv run: {exc}", file=sys.stderr)
            return CANNOT_RUN
        except HypervisorError as exc:        # a handler failed, KVM refused the guest...
            print(f"pyhv run: the guest stopped: {exc}", file=sys.stderr)
            return UNHANDLED
    return exit_status(result.exit)


def exit_status(final: exits.Exit) -> int:
    """The status ``pyhv run`` gives the machine's final exit (see :data:`EPILOG` and
    :func:`pyhv.exits.run_status`), saying on stderr what is not a plain ending."""
    status = exits.run_status(final)
    if isinstance(final, exits.SystemEvent) and final.kind == "suspend":
        print("pyhv run: the guest suspended to S3 with no wake-up armed", file=sys.stderr)
    elif status == TRIPLE_FAULT:
        print("pyhv run: the guest triple-faulted", file=sys.stderr)
    elif status == UNHANDLED:
        print(f"pyhv run: the guest stopped on {final!r}", file=sys.stderr)
    return status
