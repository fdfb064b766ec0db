"""Guests, setups and jobs for the fleet tests: module-level, so Ray's workers import them
(``tests.fleet.jobs``) like a user's own module.

The guest (long mode at 0x1000) does what ``rdi`` says with ``rsi``:
0: rax = 1 + 2 + ... + rsi, then hlt; 1: triple fault; 2: spin forever; 3: OUT rsi to port
0x80 (the setup's handler raises for 13), then hlt; 4: OUT to port 0x99, which nothing
handles.
"""

from __future__ import annotations

import os
import signal

import pyhv
from pyhv.testing import assemble

SUM, FAULT, SPIN, PORT, UNHANDLED = range(5)
UNLUCKY = 13

SOURCE = """
    cmp $1, %rdi
    je fault
    cmp $2, %rdi
    je spin
    cmp $3, %rdi
    je port
    cmp $4, %rdi
    je unhandled
    mov %rsi, %rcx
    xor %eax, %eax
    test %rcx, %rcx
    jz done
1:  add %rcx, %rax
    loop 1b
done:
    hlt
fault:
    lidt empty(%rip)
    ud2
spin:
    jmp spin
port:
    mov %esi, %eax
    out %al, $0x80
    hlt
unhandled:
    out %al, $0x99
    hlt
empty:
    .word 0
    .quad 0
"""


def build_template() -> pyhv.Partition:
    """The template partition (for a Fleet made from a function)."""
    part = pyhv.Partition(memory="1M")
    part.memory.write(0x1000, assemble(SOURCE, origin=0x1000))
    part.create_vcpu(mode="long", entry=0x1000)
    return part


def template() -> pyhv.Snapshot:
    with build_template() as part:
        return part.snapshot()


def expected(n: int) -> int:
    return n * (n + 1) // 2


def add_handlers(part: pyhv.Partition) -> None:
    """The setup: port 0x80 takes a byte, except the unlucky one."""
    def on_write(port: int, size: int, value: int) -> None:
        if value == UNLUCKY:
            raise ValueError(f"unlucky {value}")

    part.add_io_handler(0x80, write=on_write)


def run_op(part: pyhv.Partition, item: tuple[int, int]) -> int:
    """Run the guest on (op, value); rax at the halt."""
    op, value = item
    cpu = part.vcpus[0]
    cpu.regs.update(rdi=op, rsi=value)
    part.run(timeout=30).check()
    return cpu.regs.rax


def run_unchecked(part: pyhv.Partition, item: tuple[int, int]) -> str:
    """The same, returning how the run ended without checking it."""
    op, value = item
    part.vcpus[0].regs.update(rdi=op, rsi=value)
    return type(part.run(timeout=30).exit).__name__


def total(part: pyhv.Partition, n: int) -> int:
    """1 + ... + n, computed by the guest."""
    return run_op(part, (SUM, n))


def total_or_die(part: pyhv.Partition, n: int) -> int:
    """As total, but the input 7 kills its worker process (as the OOM killer would)."""
    if n == 7:
        os.kill(os.getpid(), signal.SIGKILL)
    return total(part, n)


def python_forever(part: pyhv.Partition, n: int) -> int:
    """As total, but the input 3 never returns and never enters the guest."""
    if n == 3:
        while True:
            pass
    return total(part, n)


def unpicklable(part: pyhv.Partition, n: int) -> object:
    """A value that cannot travel for the input 2 (a lock)."""
    import threading
    return threading.Lock() if n == 2 else total(part, n)


def pid(part: pyhv.Partition, n: int) -> int:
    return os.getpid()
