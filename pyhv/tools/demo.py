"""The built-in demo guest: a long-mode program that greets over COM1 and halts.

Its source is ``pyhv/guests/demo.S``; ``demo.bin`` is that source assembled (a test keeps
the two in step), so the demo needs no toolchain.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources

from ..core.loop import RunResult
from ..partition import Partition

DEMO_ENTRY = 0x1000
COM1 = 0x3F8
COM1_LSR = COM1 + 5
LSR_TRANSMITTER_EMPTY = 0x60     # THRE | TEMT: always ready


def demo_image() -> bytes:
    """The assembled demo guest."""
    return resources.files("pyhv").joinpath("guests/demo.bin").read_bytes()


@dataclass(frozen=True)
class DemoOutcome:
    output: bytes
    result: RunResult
    port_writes: int
    status_reads: int
    setup_seconds: float


def run_demo(on_byte: Callable[[bytes], None] | None = None,
             timeout: float = 30.0) -> DemoOutcome:
    """Run the demo guest; ``on_byte`` sees each byte it prints, as it prints it."""
    output = bytearray()
    counts = {"writes": 0, "reads": 0}

    def transmit(port: int, size: int, value: int) -> None:
        counts["writes"] += 1
        byte = bytes([value & 0xFF])
        output.extend(byte)
        if on_byte:
            on_byte(byte)

    def line_status(port: int, size: int) -> int:
        counts["reads"] += 1
        return LSR_TRANSMITTER_EMPTY

    started = time.perf_counter()
    with Partition(memory="2M") as part:
        part.memory.write(DEMO_ENTRY, demo_image())
        part.create_vcpu(mode="long", entry=DEMO_ENTRY)
        part.add_io_handler(COM1, write=transmit)
        part.add_io_handler(COM1_LSR, read=line_status)
        setup = time.perf_counter() - started
        result = part.run(timeout=timeout)
    return DemoOutcome(bytes(output), result, counts["writes"], counts["reads"], setup)
