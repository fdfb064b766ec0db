"""The ``pyhv`` command: ``pyhv doctor`` and ``pyhv demo``."""

from __future__ import annotations

import argparse
import sys
import time

from . import __version__
from .errors import HypervisorError, HypervisorUnavailable


def _doctor(args: argparse.Namespace) -> int:
    from .exits import Halt
    from .partition import Partition
    from .system import check

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
    from .demo import run_demo
    from .system import check

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
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args))
