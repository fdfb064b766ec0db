"""The PC machine's boot cost: ``boot_smp2_to_first_exit_ms``, the time from starting
``pyhv run`` (a new process, as a user starts it) to the first byte a 2-vCPU multiboot kernel
writes to COM1, beside the same kernel with 1 vCPU (the reference).

    python benchmarks/bench_pc.py [repeats]      # this row alone

The kernel is a few instructions: a multiboot header (its own load addresses), then one OUT to
COM1 and ``cli; hlt``; the application processor waits for a SIPI it never gets, so the
difference is what a second vCPU costs the PC machine's start (its creation, LAPIC, CPUID,
the halt watch, the threads of a run on several vCPUs).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pyhv.testing import assemble

KERNEL = """
    .long 0x1BADB002, 0x00010000, -(0x1BADB002 + 0x00010000)
    .long 0x100000, 0x100000, 0, 0, entry       # header, load, load end, bss end, entry
entry:
    mov $0x3f8, %dx
    mov $'!', %al
    out %al, %dx
    cli
1:  hlt
    jmp 1b
"""


def kernel(directory: Path) -> Path:
    path = directory / "first_byte.bin"
    path.write_bytes(assemble(KERNEL, bits=32, origin=0x100000))
    return path


def first_byte_ms(image: Path, cpus: int) -> float:
    """Milliseconds from starting ``pyhv run`` to the guest's first serial byte."""
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "pyhv", "run", str(image), "-smp",
                              str(cpus), "--timeout", "60"], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL)
    try:
        assert child.stdout is not None
        byte = child.stdout.read(1)
        took = (time.perf_counter() - started) * 1e3
        if byte != b"!":
            raise RuntimeError(f"pyhv run gave {byte!r}, not the kernel's first byte")
    finally:
        child.wait(timeout=120)
    return took


def bench_boot_smp(repeats: int, row: Callable[..., Any]) -> Any:
    """The row, made by ``row(name, value, unit, reference, target, note)``."""
    with tempfile.TemporaryDirectory() as tmp:
        image = kernel(Path(tmp))
        smp1, smp2 = [], []
        for _ in range(repeats):            # interleaved: the machine's noise hits both
            smp1.append(first_byte_ms(image, 1))
            smp2.append(first_byte_ms(image, 2))
    return row("boot_smp2_to_first_exit_ms", min(smp2), "ms", min(smp1), 1.5,
               "pyhv run to the first COM1 byte, 2 vCPUs vs 1")


def main() -> None:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    result = bench_boot_smp(repeats, lambda *args: args)
    name, value, unit, reference, target, note = result
    print(f"{name}: {value:.1f} {unit} (1 vCPU: {reference:.1f} {unit}, ratio "
          f"{value / reference:.2f}, target {target}) on {os.uname().release}")


if __name__ == "__main__":
    main()
