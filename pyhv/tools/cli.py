"""The ``pyhv`` command: ``doctor``, ``demo``, ``run`` (in :mod:`pyhv.tools.run`), ``stress`` and
``fleet`` (in :mod:`pyhv.fleet.command`)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from ..argtypes import positive_float, positive_int
from ..errors import HypervisorError, HypervisorUnavailable
from ..fleet import command as fleet_command
from ..gdb.probe import debug_support
from ..version import __version__
from . import run as run_command
from .progress import Progress


def _doctor(args: argparse.Namespace) -> int:
    from ..core.hypervisor import Hypervisor, check, default
    from ..exits import Halt
    from ..partition import Partition
    from . import doctor

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
    hv = default() if args.device is None else Hypervisor(args.device)
    try:
        # a real guest: one `hlt` in long mode
        started = time.perf_counter()
        with Partition(memory="2M", hypervisor=hv) as part:
            part.memory.write(0x1000, b"\xf4")
            exit = part.create_vcpu(mode="long", entry=0x1000).run(timeout=10)
        took = (time.perf_counter() - started) * 1e3
        if not isinstance(exit, Halt):
            print(f"\nsmoke test: FAILED (expected a halt, got {exit!r})")
            return 1
        print(f"\nsmoke test: ok (a long-mode guest ran to `hlt` in {took:.1f} ms)")
        speed = doctor.measure(hv)
        features = doctor.feature_lines(hv)
        debugging = debug_support(hv).report()       # what gdb gets here (pyhv.gdb)
    except HypervisorError as exc:
        print(f"\nguest checks: FAILED ({exc})")
        return 1
    finally:
        if hv is not default():
            hv.close()
    print("\nspeed (measured here, best of 3):")
    print("\n".join(speed.lines()))
    print("features (probed by running guests):")
    print("\n".join(features))
    print("\n" + debugging)
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
          f"({caps.kind} KVM): running the built-in demo "
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


def _stress(args: argparse.Namespace) -> int:
    from . import stress

    if args.what == "fuzz":
        with Progress(args.count, "fuzz") as step:
            report = stress.fuzz(args.count, seed=args.seed, timeout=args.timeout,
                                 on_case=lambda *case: step())
        print(report.summary())
        return 0 if report.fds[0] == report.fds[1] else 1
    if args.what == "soak":
        ok = True
        # under AddressSanitizer (PYHV_SANITIZE=1) freed memory sits in its quarantine
        check_rss = not os.environ.get("PYHV_SANITIZE")
        for name, run in (("soak create/run/destroy", stress.soak_lifecycle),
                          ("soak snapshot/restore", stress.soak_snapshots)):
            with Progress(args.count, name) as step:
                soak = run(args.count, progress=step)
            print(soak.summary())
            ok = ok and soak.fds[0] == soak.fds[1] and (
                soak.rss_growth < stress.RSS_TOLERANCE or not check_rss)
        print(f"tolerance: no fd growth, RSS growth under {stress.RSS_TOLERANCE >> 20} MiB"
              + ("" if check_rss else " (RSS not judged under AddressSanitizer)"))
        return 0 if ok else 1
    if args.what == "races":
        seen, canceled = stress.cancel_races(args.count, seed=args.seed)
        print(f"{args.count} cancels: {canceled} runs canceled, {seen} exits, none lost")
        if args.count and not canceled:      # cancels are sticky: at least one must land
            print("no cancel stopped a run: cancel does not work", file=sys.stderr)
            return 1
        return 0
    from ..loaders.samples import sample_images
    samples = sample_images()
    with Progress(args.count * len(samples), "images") as step:
        images = stress.image_corpus(samples, args.count, seed=args.seed, progress=step)
    print(images.summary())
    return 0 if images.fds[0] == images.fds[1] else 1


def log_to_stderr(level: int) -> None:
    """Show the ``pyhv`` logger's records at ``level`` and above on stderr, one line each."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("pyhv: %(levelname)s: %(message)s"))
    logger = logging.getLogger("pyhv")
    logger.addHandler(handler)
    logger.setLevel(level)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyhv", description="Hyper-V style partitions and vCPUs for Python, on Linux KVM.")
    parser.add_argument("--version", action="version", version=f"pyhv {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log what pyhv does to stderr: -v decisions (INFO), -vv every "
                        "partition and vCPU (DEBUG)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    doctor = sub.add_parser("doctor", help="check KVM: backend, API version, capabilities",
                            description="Report the KVM backend (hardware or kvm_pvm), the API "
                            "version and the capabilities pyhv uses, run a one-instruction "
                            "guest, then measure what guests cost here (compute at CPL3 and "
                            "CPL0, exits) and probe features whose behaviour differs between "
                            "backends. Exit status 0 when pyhv can run guests here, 1 "
                            "otherwise.")
    doctor.add_argument("--device", help="KVM device to check (default /dev/kvm)")
    doctor.set_defaults(func=_doctor)
    demo = sub.add_parser("demo", help="run the built-in demo guest",
                          description="Run a built-in long-mode guest (pyhv/guests/demo.S) that "
                          "prints a greeting through COM1 and halts. Exit status 0 when it did.")
    demo.add_argument("--timeout", type=float, default=60.0, help="seconds (default 60)")
    demo.set_defaults(func=_demo)
    run = sub.add_parser(
        "run", help="boot a guest image (flat, ELF, multiboot, Linux)",
        description=run_command.DESCRIPTION, epilog=run_command.EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    run_command.add_arguments(run)
    run.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                     help="as pyhv -v: log to stderr (-vv for DEBUG)")
    run.set_defaults(func=run_command.main)
    stress = sub.add_parser(
        "stress", help="long checks: guest-code fuzzing, leak soaks, cancel races, bad images",
        description="The full-size versions of the hostile-input checks the test suite runs "
        "small. Exit status 0 when nothing leaked or broke.")
    stress.add_argument("what", choices=("fuzz", "soak", "races", "images"))
    stress.add_argument("--count", type=positive_int, default=None,
                        help="cases / cycles (defaults: fuzz 10000, soak 10000, races 1000, "
                        "images 2000 per format)")
    stress.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    stress.add_argument("--timeout", type=positive_float, default=0.25,
                        help="fuzz: seconds a random guest may run (default 0.25)")
    stress.set_defaults(func=_stress)
    fleet = sub.add_parser("fleet", help="run an image once per input on a fleet (Ray)",
                           description=fleet_command.SUMMARY)
    fleet_command.add_arguments(fleet)
    fleet.set_defaults(func=lambda args: fleet_command.main(args, progress=Progress))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:      # a command may report its usage errors itself (pyhv run: status 126)
        getattr(args, "usage_error", parser.error)(
            f"unrecognized arguments: {' '.join(extra)}")
    if getattr(args, "what", None) and args.count is None:
        args.count = {"fuzz": 10000, "soak": 10000, "races": 1000, "images": 2000}[args.what]
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if args.verbose:
        log_to_stderr(logging.INFO if args.verbose == 1 else logging.DEBUG)
    try:
        code = int(args.func(args))
        sys.stdout.flush()      # a closed pipe shows here, not as noise at interpreter exit
        return code
    except HypervisorError as exc:     # e.g. no usable /dev/kvm for `pyhv stress`
        print(f"pyhv {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"pyhv {args.command}: interrupted", file=sys.stderr)
        return 130     # 128 + SIGINT, what a shell reports for a tool stopped by Ctrl-C
    except BrokenPipeError:
        # `pyhv doctor | head`: the reader left; say nothing more, as other Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141     # 128 + SIGPIPE, what a shell reports for a tool killed by it

