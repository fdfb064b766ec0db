"""``pyhv fleet run IMAGE --inputs DIR|FILE.jsonl --workers N``: boot IMAGE once per input on a
fleet, collect each run's serial output and exit status, write them as JSON lines.

Each input reaches the guest through fw_cfg, as the file ``opt/pyhv/input`` (its name as
``opt/pyhv/input-name``), and, for multiboot and Linux images, also as the first module /
initrd.  The machine is ``pyhv run``'s PC (a 16550 UART on COM1, an i8042, a CMOS clock,
fw_cfg, isa-debug-exit), with one vCPU; the exit status is ``pyhv run``'s.

Inputs: a directory (each regular file in it, by name), or a JSON-lines file, one object a
line: ``{"name": ..., "text": "..."}``, ``{"base64": "..."}`` or ``{"path": "file"}`` (relative
to the JSON-lines file), ``name`` optional.

>>> import json, tempfile, pathlib
>>> from pyhv.fleet.command import read_inputs
>>> with tempfile.TemporaryDirectory() as tmp:
...     lines = pathlib.Path(tmp, "in.jsonl")
...     _ = lines.write_text(json.dumps({"name": "a", "text": "hi"}) + "\\n" +
...                          json.dumps({"base64": "AAE="}) + "\\n")
...     count, items = read_inputs(str(lines))
...     count, list(items)
(2, [('a', b'hi'), ('2', b'\\x00\\x01')])
"""

from __future__ import annotations

import argparse
import base64
import binascii
import functools
import json
import os
import sys
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TextIO

from .. import devices, exits, loaders
from ..argtypes import integer, positive_float, positive_int
from ..core.memory import parse_size
from ..errors import HypervisorError, InvalidArgument, Timeout
from ..partition import Partition
from .results import Result

__all__ = ["DESCRIPTION", "EPILOG", "SUMMARY", "Machine", "add_arguments", "main", "read_inputs"]

SUMMARY = ("Guests on a fleet of workers, on Ray (pip install 'pyhv[fleet]'): 'pyhv fleet run' "
           "boots an image once per input and writes the results as JSON lines.")
DESCRIPTION = ("Boot IMAGE once per input on a fleet of workers (Ray; a local one by default), "
               "the input offered through fw_cfg (opt/pyhv/input) and, for multiboot and Linux "
               "images, as the initrd/module; write one JSON line per input with its serial "
               "output and exit status, and the fleet's counts at the end.")

EPILOG = """inputs:
  DIR            every regular file in DIR (by name); the input is the file's bytes
  FILE.jsonl     one JSON object a line: {"name": N, "text": T} | {"base64": B} | {"path": P}

each result line: {"input", "status", "exit", "serial", "seconds", "attempts", "worker"}
(+ "serial_base64" when the output is not UTF-8, "serial_truncated"); "status" is
pyhv run's exit status: (V << 1) | 1 for debug-exit V, 0 halt or reset, 2 triple fault,
4 an exit pyhv could not handle, 124 timeout.  An input that could not run has "status"
null and "error": {"kind", "message", "detail"}.

exit status:
  0   every input ran to an exit status
  4   some inputs could not run (their lines have "error")
  1   nothing ran (bad arguments or image, no KVM on the workers, Ray missing)
  130 interrupted (Ctrl-C); the lines written so far stay
"""

INPUT_FILE = "opt/pyhv/input"
INPUT_NAME_FILE = "opt/pyhv/input-name"
MAX_INPUT = 64 << 20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="fleet_command", metavar="COMMAND", required=True)
    run = sub.add_parser("run", help="boot an image once per input, results as JSON lines",
                         description=DESCRIPTION, epilog=EPILOG,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("image", help="the guest image (flat, ELF, multiboot, Linux)")
    run.add_argument("--inputs", required=True, metavar="DIR|FILE.jsonl",
                     help="a directory of input files, or a JSON-lines file")
    run.add_argument("--workers", type=positive_int, default=2, help="workers (default 2)")
    run.add_argument("--address", default=None,
                     help="Ray cluster: auto, ray://HOST:PORT or HOST:PORT (default: a local "
                     "Ray for this run)")
    run.add_argument("--output", "-o", default="-", help="results file (default: stdout)")
    run.add_argument("--timeout", type=positive_float, default=60.0,
                     help="seconds per input before its run counts as a timeout (default 60)")
    run.add_argument("--ordered", action="store_true", help="results in input order")
    run.add_argument("--format", choices=loaders.FORMATS, default="auto",
                     help="image format (default: detect)")
    run.add_argument("--memory", "-m", default="64M", help="guest RAM (default 64M)")
    run.add_argument("--append", default="", help="kernel command line")
    run.add_argument("--input-via", choices=("auto", "fw_cfg"), default="auto",
                     help="auto: fw_cfg, and the initrd/module for multiboot and Linux images; "
                     "fw_cfg: fw_cfg only (no reload of the image per input)")
    run.add_argument("--load-address", type=integer, default=None, metavar="ADDR",
                     help="flat images: load and entry address (default 0x100000)")
    run.add_argument("--mode", choices=("real", "protected", "long", "user"), default=None,
                     help="flat images: the mode to enter them in (default long)")
    run.add_argument("--debug-exit", type=integer, default=0xF4, metavar="PORT",
                     help="isa-debug-exit port (default 0xf4; 0 for none)")
    run.add_argument("--max-serial", type=_size, default=1 << 20, metavar="BYTES",
                     help="serial output kept per input (default 1M)")
    run.add_argument("--cpus-per-worker", type=positive_float, default=1.0, metavar="N",
                     help="CPUs each worker asks of Ray (default 1)")
    run.add_argument("--memory-per-worker", type=_size, default=None, metavar="BYTES",
                     help="memory each worker asks of Ray (default: none asked)")


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except InvalidArgument as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# -- inputs ---------------------------------------------------------------------------------
def read_inputs(where: str) -> tuple[int, Iterator[tuple[str, bytes]]]:
    """How many inputs ``where`` (a directory or a JSON-lines file) holds, and an iterator
    of ``(name, bytes)`` that reads them one at a time.  The file is checked whole first, so
    a bad line is refused before anything runs (:class:`pyhv.InvalidArgument`)."""
    if os.path.isdir(where):
        names = sorted(entry.name for entry in os.scandir(where) if entry.is_file())
        return len(names), (_read_file(os.path.join(where, name), name) for name in names)
    if not os.path.isfile(where):
        raise InvalidArgument(f"--inputs {where}: no such directory or file")
    count = 0
    with open(where, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                _parse_line(line, number, where, os.path.dirname(where), read=False)
                count += 1
    return count, _read_lines(where)


def _read_lines(where: str) -> Iterator[tuple[str, bytes]]:
    base = os.path.dirname(where)
    with open(where, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                yield _parse_line(line, number, where, base, read=True)


def _read_file(path: str, name: str) -> tuple[str, bytes]:
    try:
        size = os.path.getsize(path)
        if size > MAX_INPUT:
            raise InvalidArgument(f"input {path} is larger than {MAX_INPUT >> 20} MiB")
        with open(path, "rb") as f:
            return name, f.read()
    except OSError as exc:
        raise InvalidArgument(f"input {path}: {exc.strerror}") from None


def _parse_line(line: str, number: int, where: str, base: str, *,
                read: bool) -> tuple[str, bytes]:
    def bad(why: str) -> InvalidArgument:
        return InvalidArgument(f"{where}:{number}: {why}")

    try:
        entry = json.loads(line)
    except json.JSONDecodeError as exc:
        raise bad(f"not JSON ({exc.msg})") from None
    if not isinstance(entry, dict):
        raise bad("each line must be a JSON object")
    given = [key for key in ("text", "base64", "path") if key in entry]
    if len(given) != 1 or set(entry) - {"name", "text", "base64", "path"}:
        raise bad('each line holds "name" (optional) and one of "text", "base64", "path"')
    name = entry.get("name", str(number))
    if not isinstance(name, str) or not isinstance(entry[given[0]], str):
        raise bad("name, text, base64 and path are strings")
    value = entry[given[0]]
    if given[0] == "text":
        return name, value.encode()
    if given[0] == "base64":
        try:
            return name, base64.b64decode(value, validate=True)
        except binascii.Error:
            raise bad("base64 that does not decode") from None
    path = os.path.join(base, value)
    if not os.path.isfile(path):
        raise bad(f"no such input file {path}")
    return _read_file(path, name) if read else (name, b"")


# -- on the workers -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Machine:
    """What each worker builds: the image and the PC around it."""

    image: bytes
    image_name: str
    kind: str
    memory: int
    cmdline: str
    initrd: bool             # also give each input as the initrd / first module
    load_address: int | None
    mode: str | None
    debug_exit: int
    run_timeout: float
    max_serial: int


class SerialCapture:
    """COM1's output for one run, kept up to ``limit`` bytes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.truncated = False

    def __call__(self, data: bytes) -> None:
        room = self.limit - len(self.data)
        if len(data) > room:
            self.truncated = True
            data = data[:max(room, 0)]
        self.data += data


_captures: weakref.WeakKeyDictionary[Partition, SerialCapture] = weakref.WeakKeyDictionary()


def _load(machine: Machine, part: Partition, initrd: bytes | None) -> loaders.BootImage:
    return loaders.load(part, machine.image, machine.kind, name=machine.image_name,
                        cmdline=machine.cmdline, initrd=initrd,
                        address=machine.load_address, mode=machine.mode)


def build_template(machine: Machine) -> Partition:
    """The template partition: devices attached, the image loaded, the boot vCPU made."""
    irqchip = machine.kind == "linux"
    part = Partition(memory=machine.memory, irqchip=irqchip, pit=irqchip)
    try:
        setup(machine, part)
        _load(machine, part, None).create_vcpu(part)   # inputs come per run
        return part
    except BaseException:
        part.close()
        raise


def setup(machine: Machine, part: Partition) -> None:
    """pyhv run's PC devices, COM1 into a capture the job reads."""
    capture = SerialCapture(machine.max_serial)
    part.ignore_unclaimed_ports()
    part.attach(devices.Uart16550(capture))
    part.attach(devices.I8042())
    part.attach(devices.Rtc())
    part.attach(devices.FwCfg(cpus=1))
    if machine.debug_exit:
        part.attach(devices.IsaDebugExit(machine.debug_exit))
    _captures[part] = capture


def status_of(final: exits.Exit) -> int:
    """``pyhv run``'s exit status for how a run ended (:func:`pyhv.exits.run_status`)."""
    return exits.run_status(final)


def run_input(machine: Machine, part: Partition, item: tuple[str, bytes]) -> dict[str, Any]:
    """Boot the image with one input; its status, exit and serial output."""
    name, data = item
    capture = _captures[part]
    capture.data, capture.truncated = bytearray(), False
    fw_cfg = part.devices["fw_cfg"]
    assert isinstance(fw_cfg, devices.FwCfg)
    fw_cfg.add_file(INPUT_FILE, data)
    fw_cfg.add_file(INPUT_NAME_FILE, name.encode())
    if machine.initrd:
        _load(machine, part, data)          # the image again, with this input as its initrd
    try:
        final: exits.Exit | None = part.run(timeout=machine.run_timeout).exit
        status = status_of(final) if final is not None else exits.STATUS_UNHANDLED
    except Timeout:
        final, status = None, 124
    return {"status": status, "exit": "Timeout" if final is None else repr(final),
            "serial": bytes(capture.data), "serial_truncated": capture.truncated}


# -- the command ----------------------------------------------------------------------------------
def result_line(result: Result) -> dict[str, Any]:
    """One JSON line for a result."""
    name = result.input[0]
    line: dict[str, Any] = {"input": name}
    if result.value is not None:        # the guest ran to an end (a triple fault included)
        value = dict(result.value)
        serial: bytes = value.pop("serial")
        try:
            line.update(value, serial=serial.decode("utf-8"))
        except UnicodeDecodeError:
            line.update(value, serial=serial.decode("utf-8", "replace"),
                        serial_base64=base64.b64encode(serial).decode())
        if not line["serial_truncated"]:
            del line["serial_truncated"]
    else:
        assert result.failure is not None
        line.update(status=None, error={"kind": result.failure.kind,
                                        "message": result.failure.message,
                                        "detail": result.failure.detail})
    line.update(seconds=round(result.seconds, 6), attempts=result.attempts, worker=result.worker)
    return line


def main(args: argparse.Namespace,
         progress: Callable[[int, str], Any] | None = None) -> int:
    """``pyhv fleet run`` with parsed ``args``; ``progress(total, label)`` makes the progress
    context (``pyhv.tools.progress.Progress``).  The exit status (see :data:`EPILOG`)."""
    from .fleet import Fleet, FleetError

    out: TextIO | None = None
    try:
        try:
            total, items = read_inputs(args.inputs)
            image, image_name = loaders.read_image(args.image)
            kind = loaders.detect(image) if args.format == "auto" else args.format
            initrd = args.input_via == "auto" and kind in ("multiboot", "linux")
            machine = Machine(image, image_name, kind, parse_size(args.memory), args.append,
                              initrd, args.load_address, args.mode, args.debug_exit,
                              args.timeout, args.max_serial)
            out = sys.stdout if args.output == "-" else open(args.output, "w")  # noqa: SIM115
        except (HypervisorError, OSError) as exc:
            print(f"pyhv fleet run: {exc}", file=sys.stderr)
            return 1
        failed = 0
        with Fleet(functools.partial(build_template, machine), workers=args.workers,
                   setup=functools.partial(setup, machine), address=args.address,
                   cpus=args.cpus_per_worker, memory=args.memory_per_worker,
                   init_options={"log_to_driver": False, "logging_level": "WARNING"}) as fleet:
            job = functools.partial(run_input, machine)
            with (progress(total, "inputs") if progress else _NoProgress()) as step:
                # the fleet's own timeout backs the run's up (a guest's handler that hangs)
                for result in fleet.map(job, items, ordered=args.ordered,
                                        timeout=args.timeout + 5):
                    failed += result.value is None
                    out.write(json.dumps(result_line(result)) + "\n")
                    step()
            out.flush()
            print(fleet.stats.summary(), file=sys.stderr)
        return 4 if failed else 0
    except (HypervisorError, FleetError) as exc:
        print(f"pyhv fleet run: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:          # the fleet (and its local Ray) closed on the way out
        print("pyhv fleet run: interrupted", file=sys.stderr)
        return 130
    finally:
        if out is not None and out is not sys.stdout:
            out.close()


class _NoProgress:
    def __enter__(self) -> Callable[[], None]:
        return lambda: None

    def __exit__(self, *exc: object) -> None:
        pass
