"""The ``pyhv`` command: ``pyhv doctor`` and ``pyhv demo``."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable

from ..errors import HypervisorError, HypervisorUnavailable
from ..version import __version__


def _doctor(args: argparse.Namespace) -> int:
    from ..core.hypervisor import check
    from ..exits import Halt
    from ..partition import Partition

    try:
        caps = check(args.device)
    except HypervisorUnavailable as exc:
        print(f"pyhv doctor: KVM is not usable: {exc.strerror}", file=sys.stderr)
        return 1
    print(f"pyhv {__version__}")
    print(caps.report())
    if not caps.ok:
        print(f"\nNOT READY: missing {', '.join(caps.missing)}")
        return 1
    if args.device is None:
        # a real guest: one `hlt` in long mode
        started = time.perf_counter()
        try:
            with Partition(memory="2M") as part:
                part.memory.write(0x1000, b"\xf4")
                exit = part.create_vcpu(mode="long", entry=0x1000).run(timeout=10)
        except HypervisorError as exc:
            print(f"\nsmoke test: FAILED ({exc})")
            return 1
        took = (time.perf_counter() - started) * 1e3
        if not isinstance(exit, Halt):
            print(f"\nsmoke test: FAILED (expected a halt, got {exit!r})")
            return 1
        print(f"\nsmoke test: ok (a long-mode guest ran to `hlt` in {took:.1f} ms)")
    print("\nREADY")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from ..core.hypervisor import check
    from .demo import run_demo

    try:
        caps = check()
    except HypervisorUnavailable as exc:
        print(f"pyhv demo: KVM is not usable: {exc.strerror}", file=sys.stderr)
        return 1
    print(f"pyhv {__version__} on {caps.backend} "
          f"({'hardware' if caps.hardware else 'software'} KVM): running the built-in demo "
          "guest (long mode, 2 MiB RAM)")
    at_line_start = [True]

    def show(byte: bytes) -> None:
        if at_line_start[0]:
            sys.stdout.write("guest> ")
        sys.stdout.write(byte.decode("latin-1"))
        sys.stdout.flush()
        at_line_start[0] = byte == b"\n"

    try:
        outcome = run_demo(on_byte=show, timeout=args.timeout)
    except HypervisorError as exc:
        print(f"\npyhv demo: {exc}", file=sys.stderr)
        return 1
    result = outcome.result
    ended = type(result.exit).__name__.lower()
    print(f"demo: guest {'halted' if result.halted else 'ended with ' + ended} after "
          f"{result.exits_handled} exits handled in Python ({outcome.port_writes} COM1 writes, "
          f"{outcome.status_reads} line-status reads) in {result.elapsed * 1e3:.1f} ms "
          f"(+{outcome.setup_seconds * 1e3:.1f} ms setup)")
    return 0 if result.halted and outcome.output.startswith(b"Hello") else 1


RUN_EPILOG = """exit status:
  (V << 1) | 1   the guest wrote V to the debug-exit port (QEMU's isa-debug-exit; low 8 bits)
  0              the guest halted, or reset the machine (i8042)
  2              the guest triple-faulted (shutdown)
  3              the guest stopped on an exit pyhv could not handle (internal error, ...)
  124            the timeout passed
  1              pyhv could not run the image (bad image or arguments, no KVM)
"""


def _int(text: str) -> int:
    return int(text, 0)


def _run(args: argparse.Namespace) -> int:
    from .. import devices, exits, loaders
    from ..errors import Timeout
    from ..partition import Partition

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


def _stress(args: argparse.Namespace) -> int:
    from . import stress

    if args.what == "fuzz":
        report = stress.fuzz(args.count, seed=args.seed, timeout=args.timeout)
        print(report.summary())
        return 0 if report.fds[0] == report.fds[1] else 1
    if args.what == "soak":
        ok = True
        # under AddressSanitizer (PYHV_SANITIZE=1) freed memory sits in its quarantine
        check_rss = not os.environ.get("PYHV_SANITIZE")
        for run in (stress.soak_lifecycle, stress.soak_snapshots):
            soak = run(args.count)
            print(soak.summary())
            ok = ok and soak.fds[0] == soak.fds[1] and (
                soak.rss_growth < stress.RSS_TOLERANCE or not check_rss)
        print(f"tolerance: no fd growth, RSS growth under {stress.RSS_TOLERANCE >> 20} MiB"
              + ("" if check_rss else " (RSS not judged under AddressSanitizer)"))
        return 0 if ok else 1
    if args.what == "races":
        seen, canceled = stress.cancel_races(args.count, seed=args.seed)
        print(f"{args.count} cancels: {canceled} runs canceled, {seen} exits, none lost")
        return 0
    from ..loaders.samples import sample_images
    images = stress.image_corpus(sample_images(), args.count, seed=args.seed)
    print(images.summary())
    return 0 if images.fds[0] == images.fds[1] else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyhv", description="Hyper-V style partitions and vCPUs for Python, on Linux KVM.")
    parser.add_argument("--version", action="version", version=f"pyhv {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    doctor = sub.add_parser("doctor", help="check KVM: backend, API version, capabilities",
                            description="Report the KVM backend (hardware or kvm_pvm) and what "
                            "that means for speed, the API version and the capabilities pyhv "
                            "uses, then run a one-instruction guest. Exit status 0 when pyhv "
                            "can run guests here, 1 otherwise.")
    doctor.add_argument("--device", help="KVM device to check (default /dev/kvm); skips the "
                        "guest smoke test")
    doctor.set_defaults(func=_doctor)
    demo = sub.add_parser("demo", help="run the built-in demo guest",
                          description="Run a built-in long-mode guest (pyhv/guests/demo.S) that "
                          "prints a greeting through COM1 and halts. Exit status 0 when it did.")
    demo.add_argument("--timeout", type=float, default=60.0, help="seconds (default 60)")
    demo.set_defaults(func=_demo)
    run = sub.add_parser(
        "run", help="boot a guest image (flat, ELF, multiboot, Linux)",
        description="Boot IMAGE with a 16550 UART on COM1, an i8042, a CMOS clock, fw_cfg and "
        "the debug-exit port; flags are spelled like QEMU's where they mean the same.",
        epilog=RUN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("image", help="the guest image")
    run.add_argument("--format", choices=("auto", "flat", "elf", "multiboot", "linux"),
                     default="auto", help="image format (default: detect, like QEMU -kernel)")
    run.add_argument("--memory", "-m", default="64M", help="guest RAM (default 64M)")
    run.add_argument("--cpus", "-smp", type=int, default=1, help="vCPUs (default 1)")
    run.add_argument("--append", default="", help="kernel command line")
    run.add_argument("--initrd", help="initial ramdisk / first multiboot module")
    run.add_argument("--serial", default="stdio",
                     help="COM1 output: stdio (default), file:PATH or none")
    run.add_argument("--timeout", type=float, default=None, help="seconds before giving up")
    run.add_argument("--debug-exit", type=_int, default=0xF4, metavar="PORT",
                     help="isa-debug-exit port (default 0xf4; 0 for none)")
    run.add_argument("--address", type=_int, default=None,
                     help="flat images: load and entry address (default 0x100000)")
    run.add_argument("--mode", choices=("real", "protected", "long", "user"), default="long",
                     help="flat images: the mode to enter them in (default long)")
    chip = run.add_mutually_exclusive_group()
    chip.add_argument("--irqchip", dest="irqchip", action="store_true", default=None,
                      help="in-kernel PIC/IOAPIC/LAPIC and PIT (default: for Linux or SMP)")
    chip.add_argument("--no-irqchip", dest="irqchip", action="store_false")
    run.set_defaults(func=_run)
    stress = sub.add_parser(
        "stress", help="long checks: guest-code fuzzing, leak soaks, cancel races, bad images",
        description="The full-size versions of the hostile-input checks the test suite runs "
        "small. Exit status 0 when nothing leaked or broke.")
    stress.add_argument("what", choices=("fuzz", "soak", "races", "images"))
    stress.add_argument("--count", type=int, default=None,
                        help="cases / cycles (defaults: fuzz 10000, soak 10000, races 1000, "
                        "images 2000 per format)")
    stress.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    stress.add_argument("--timeout", type=float, default=0.25,
                        help="fuzz: seconds a random guest may run (default 0.25)")
    stress.set_defaults(func=_stress)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "what", None) and args.count is None:
        args.count = {"fuzz": 10000, "soak": 10000, "races": 1000, "images": 2000}[args.what]
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        code = int(args.func(args))
        sys.stdout.flush()      # a closed pipe shows here, not as noise at interpreter exit
        return code
    except HypervisorError as exc:     # e.g. no usable /dev/kvm for `pyhv stress`
        print(f"pyhv {args.command}: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # `pyhv doctor | head`: the reader left; say nothing more, as other Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141     # 128 + SIGPIPE, what a shell reports for a tool killed by it

