"""Micro-benchmark of a Python-visible exit: a long-mode guest doing 3000 `out`s, driven by
``cpu.run(timeout=5)`` in the README's typed ``match`` loop (and once without a timeout).

    python benchmarks/typed_loop.py [repeats]

Prints the best and median microseconds per exit of the repeats (each run is 3001 exits: the
OUTs and the final hlt).  The best is the least disturbed estimate on a shared machine.
"""

from __future__ import annotations

import sys
import time

import pyhv
from pyhv import exits
from pyhv.testing import assemble

OUTS = 3000
CODE = 0x1000


def main() -> None:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 15
    code = assemble(f"mov $0x510, %dx\nmov ${OUTS}, %ecx\n1: out %eax, %dx\nloop 1b\nhlt",
                    origin=CODE)
    with pyhv.Partition(memory="16M") as part:
        part.memory.write(CODE, code)
        cpu = part.create_vcpu(mode="long", entry=CODE)
        start = cpu.regs.snapshot()
        results: dict[float | None, list[float]] = {5: [], None: []}
        for _ in range(repeats):
            for timeout, times in results.items():      # interleaved: same conditions
                cpu.regs.load(start)
                seen = 0
                began = time.perf_counter()
                while True:
                    match cpu.run(timeout=timeout):
                        case exits.IoOut():
                            seen += 1
                        case exits.Halt():
                            break
                        case other:
                            raise RuntimeError(f"unexpected {other!r}")
                times.append((time.perf_counter() - began) / (OUTS + 1) * 1e6)
                assert seen == OUTS
        for timeout, times in results.items():
            times.sort()
            print(f"typed loop, timeout={timeout}: best {times[0]:.2f} us/exit, "
                  f"median {times[len(times) // 2]:.2f}")


if __name__ == "__main__":
    main()
