"""The gdb rows of ``benchmarks/run.py``: ``gdb_stepi_per_s`` and ``gdb_attach_to_prompt_ms``.

* ``gdb_stepi_per_s``: instructions a real gdb steps per second with ``stepi N`` (each step
  a ``vCont;s`` round trip, a stop of the partition and a register read), beside the
  reference: single steps per second of a typed ``cpu.run()`` loop with single-stepping on
  (what the backend gives before any protocol).
* ``gdb_attach_to_prompt_ms``: a batch gdb that attaches, reads ``rip`` and detaches, beside
  the same gdb loading the same ELF without a target (gdb's own start-up).

Each returns tuples (name, value, unit, reference, target, note); value None when gdb is
missing.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pyhv
import pyhv.gdb
from pyhv import loaders
from pyhv.testing import assemble

# a 64-bit ELF: a loop the steps go round, with a symbol gdb can show
SOURCE = """
    .globl _start, spin
_start:
spin:
    inc %rax
    add $2, %rbx
    jmp spin
"""
STEPS = 400
Measurement = tuple[str, "float | None", str, "float | None", "float | None", str]


def _elf(out: Path) -> Path:
    src, obj, elf = out / "g.s", out / "g.o", out / "g.elf"
    src.write_text(".code64\n" + SOURCE)
    subprocess.run(["as", "--64", "-o", str(obj), str(src)], check=True)
    subprocess.run(["ld", "-m", "elf_x86_64", "-Ttext", "0x100000", "-e", "_start", "-o",
                    str(elf), str(obj)], check=True)
    return elf


def _served(elf: Path) -> tuple[pyhv.Partition, pyhv.gdb.GdbServer, threading.Thread]:
    part = pyhv.Partition(memory="8M")
    loaders.load(part, elf.read_bytes(), "elf", name="g").create_vcpu(part)
    server = pyhv.gdb.serve(part, "tcp:127.0.0.1:0", wait=True)
    runner = threading.Thread(target=lambda: part.run(timeout=600), daemon=True)
    runner.start()
    return part, server, runner


def _gdb(elf: Path, *commands: str) -> float:
    argv = ["gdb", "-nx", "-batch"]
    for c in commands:
        argv += ["-ex", c]
    began = time.perf_counter()
    subprocess.run(argv + [str(elf)], check=True, capture_output=True, timeout=300)
    return time.perf_counter() - began


def _typed_steps(seconds: float = 0.3) -> float:
    with pyhv.Partition(memory="8M") as part:
        part.memory.write(0x1000, assemble("1: inc %rax\nadd $2, %rbx\njmp 1b", origin=0x1000))
        cpu = part.create_vcpu(mode="long", entry=0x1000)
        cpu.set_guest_debug(single_step=True)
        n, began = 0, time.perf_counter()
        while time.perf_counter() - began < seconds:
            cpu.run(timeout=5)
            n += 1
        return n / (time.perf_counter() - began)


def measure(repeats: int) -> list[Measurement]:
    if shutil.which("gdb") is None or shutil.which("as") is None:
        note = "skipped: needs gdb (apt-get install gdb)"
        return [("gdb_stepi_per_s", None, "steps/s", None, None, note),
                ("gdb_attach_to_prompt_ms", None, "ms", None, None, note)]
    rounds = max(2, repeats // 4)
    with tempfile.TemporaryDirectory(prefix="pyhv-bench-gdb-") as tmp:
        elf = _elf(Path(tmp))
        part, server, runner = _served(elf)
        target = f"target remote 127.0.0.1:{server.port}"
        try:
            base = min(_gdb(elf, target, "detach") for _ in range(rounds))
            stepping = min(_gdb(elf, target, f"stepi {STEPS}", "detach")
                           for _ in range(rounds))
            attach = min(_gdb(elf, target, "info registers rip", "detach")
                         for _ in range(rounds))
        finally:
            server.close()
            part.stop()
            runner.join(30)
            part.close()
        alone = min(_gdb(elf, "info address spin") for _ in range(rounds))
    per_step = max(stepping - base, 1e-9) / STEPS
    typed = max(_typed_steps() for _ in range(rounds))
    return [
        ("gdb_stepi_per_s", 1 / per_step, "steps/s", typed, None,
         f"`stepi {STEPS}` in a batch gdb vs single steps of a typed cpu.run() loop"),
        ("gdb_attach_to_prompt_ms", attach * 1e3, "ms", alone * 1e3, None,
         "gdb -batch: attach, info registers rip, detach vs gdb loading the ELF alone"),
    ]
