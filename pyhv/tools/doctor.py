"""What ``pyhv doctor`` measures and probes on this host, beyond KVM's capability list.

The backend's name only says what speed to *expect*; these say what the host does: short
timed loops of guest compute (at CPL3 and at CPL0, against the same bytes run on the host)
and of exits (handled in Python, completed in C), and probes of features whose behaviour
differs between backends.

>>> from pyhv.tools import doctor
>>> speed = doctor.measure()
>>> speed.cpl3_ns > 0 and speed.cpl0_ns > 0 and speed.exit_python_us > 0
True
>>> [line.split(":")[0] for line in speed.lines()]
['  CPL3 compute', '  CPL0 compute', '  exits']
"""

from __future__ import annotations

import ctypes
import mmap
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..core import probes
from ..core.hypervisor import Hypervisor
from ..exits import GuestException, Halt
from ..partition import Partition

__all__ = ["FEATURE_CHECKS", "Speed", "feature_lines", "measure"]

_CODE = 0x1000
_PAYLOAD = 0x100000
_EXIT_PORT = 0x510
_EXITS = 2000
_REPEATS = 3
_LONG_ENOUGH = 0.02          # seconds a compute run must last to be timed fairly
_COMPUTE_BUDGET = 1.0        # seconds all the doublings of one compute measurement may take

# The guests, encoded here so that the doctor needs no assembler (tests/unit/test_doctor.py
# checks them against their sources).  The loop is benchmarks/run.py's: five instructions an
# iteration, ``n`` iterations (below 2**31).
LOOP_SOURCE = ("mov ${n}, %rcx; xor %eax, %eax; 1: add %rcx, %rax; imul $3, %rax; "
               "ror $7, %rax; dec %rcx; jnz 1b")
EXITS_SOURCE = f"mov ${_EXIT_PORT:#x}, %dx; mov ${{n}}, %ecx; 1: out %eax, %dx; loop 1b; hlt"
INT3, HLT, RET = b"\xcc", b"\xf4", b"\xc3"


def loop_code(n: int, end: bytes) -> bytes:
    """:data:`LOOP_SOURCE` for ``n`` iterations, then ``end`` (one instruction)."""
    return (b"\x48\xc7\xc1" + n.to_bytes(4, "little") +
            bytes.fromhex("31c04801c8486bc00348c1c80748ffc975f0") + end)


def exits_code(n: int) -> bytes:
    """:data:`EXITS_SOURCE`: ``n`` OUTs to the exit port, then ``hlt``."""
    return b"\x66\xba" + _EXIT_PORT.to_bytes(2, "little") + b"\xb9" + n.to_bytes(4, "little") + \
        bytes.fromhex("efe2fdf4")


# what the ratios mean (guest time over host time, CPL0 time over CPL3 time): native and
# emulated code differ by three orders of magnitude, so a busy machine's noise (a guest run
# preempted for a while) must not turn one into the other
NATIVE_WITHIN = 3.0
EMULATED_PAST = 20.0


@dataclass(frozen=True)
class Speed:
    """Measured here: ns per loop iteration at CPL3 and CPL0 in a guest and on the host
    (None where the host refused an executable page), and µs per exit handled in Python and
    completed in pyhv's C core."""

    cpl3_ns: float
    cpl0_ns: float
    host_ns: float | None
    exit_python_us: float
    exit_c_us: float

    def lines(self) -> list[str]:
        """The doctor's report of these numbers, each with what it means."""
        if self.host_ns is None:
            cpl3 = (f"  CPL3 compute: {self.cpl3_ns:.2f} ns per loop iteration in a user-mode "
                    "guest (the host refused an executable page to compare with)")
        else:
            ratio = self.cpl3_ns / self.host_ns
            verdict = ("runs natively" if ratio <= NATIVE_WITHIN
                       else f"{ratio:.1f}x slower than native")
            cpl3 = (f"  CPL3 compute: {self.cpl3_ns:.2f} ns per loop iteration in a user-mode "
                    f"guest, {self.host_ns:.2f} on the host ({ratio:.2f}x): {verdict}")
        slower = self.cpl0_ns / self.cpl3_ns
        if slower >= EMULATED_PAST:
            meaning = "ring-0 guest code is emulated"
        elif slower <= NATIVE_WITHIN:
            meaning = "ring-0 guest code runs as fast as ring-3 code"
        else:
            meaning = "ring-0 guest code is slower than ring-3 code"
        cpl0 = (f"  CPL0 compute: {self.cpl0_ns:.2f} ns per iteration in a long-mode guest, "
                f"{slower:.0f}x the CPL3 time: {meaning}")
        exits = (f"  exits: {self.exit_python_us:.2f} us per port OUT handled by a Python "
                 f"handler, {self.exit_c_us:.2f} us completed in pyhv's C core (a guest pays "
                 f"this per exit: {1e6 / self.exit_python_us:,.0f} handled exits a second)")
        return [cpl3, cpl0, exits]


def _best(repeats: int, run: Callable[[], float]) -> float:
    return min(run() for _ in range(repeats))


def _compute_ns(part: Partition, mode: str, first: int) -> float:
    """ns per iteration of the loop in a ``mode`` vCPU: doubled from ``first`` iterations
    until a run lasts long enough to time, best of the repeats at that count."""
    entry = _PAYLOAD if mode == "user" else _CODE
    end = INT3 if mode == "user" else HLT         # int3: pyhv's stubs report it at CPL3
    cpu = part.create_vcpu(mode=mode, entry=entry)
    start, start_sregs = cpu.regs.snapshot(), cpu.get_sregs()
    budget_ends = time.perf_counter() + _COMPUTE_BUDGET

    def once(n: int) -> float:
        part.memory.write(entry, loop_code(n, end))
        cpu.set_sregs(start_sregs)
        cpu.regs.load(start)
        began = time.perf_counter()
        ex = cpu.run(timeout=30)
        took = time.perf_counter() - began
        if not isinstance(ex, GuestException if mode == "user" else Halt):
            raise RuntimeError(f"the {mode}-mode compute loop ended on {ex!r}")
        return took

    n = first
    while (took := once(n)) < _LONG_ENOUGH and time.perf_counter() < budget_ends:
        n *= 2
    return min(took, _best(_REPEATS - 1, lambda: once(n))) / n * 1e9


def _host_ns() -> float | None:
    """The same loop run on the host (ns per iteration), or None without an executable page."""
    n = 1 << 23
    code = loop_code(n, RET)
    try:
        page = mmap.mmap(-1, mmap.PAGESIZE,
                         prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except OSError:
        return None
    with page:
        page.write(code)
        anchor = ctypes.c_char.from_buffer(page)
        loop = ctypes.CFUNCTYPE(ctypes.c_uint64)(ctypes.addressof(anchor))
        del anchor                 # the buffer export must end before the page closes

        def once() -> float:
            began = time.perf_counter()
            loop()
            return time.perf_counter() - began

        return _best(_REPEATS, once) / n * 1e9


def _exit_us(hypervisor: Hypervisor | None) -> tuple[float, float]:
    """µs per OUT: handled by a Python handler, then completed by a C buffered port."""
    with Partition(memory="2M", hypervisor=hypervisor) as part:
        part.memory.write(_CODE, exits_code(_EXITS))
        cpu = part.create_vcpu(mode="long", entry=_CODE)
        start = cpu.regs.snapshot()

        def once() -> float:
            cpu.regs.load(start)
            result = part.run(timeout=30).check()
            return result.elapsed / _EXITS * 1e6

        handler = part.add_io_handler(_EXIT_PORT, write=lambda port, size, value: None)
        python = _best(_REPEATS, once)
        part.remove_handler(handler)
        part.add_buffered_port(_EXIT_PORT, lambda data: None)
        return python, _best(_REPEATS, once)


def measure(hypervisor: Hypervisor | None = None) -> Speed:
    """Time the loops (about half a second on kvm_pvm, less on hardware KVM)."""
    with Partition(memory="4M", hypervisor=hypervisor) as part:
        cpl3 = _compute_ns(part, "user", 1 << 20)
    with Partition(memory="4M", hypervisor=hypervisor) as part:
        cpl0 = _compute_ns(part, "long", 1 << 8)
    python, in_c = _exit_us(hypervisor)
    return Speed(cpl3, cpl0, _host_ns(), python, in_c)


# -- probed features: one function per line, each given the handle (add yours here) --------
def _port_io_line(hv: Hypervisor) -> str:
    if probes.port_io_at_cpl3(hv):
        return ("  port IO at CPL3 (allow_port_io=True): yes, an OUT under IOPL 3 reached the "
                "host")
    return ("  port IO at CPL3 (allow_port_io=True): no, an OUT under IOPL 3 raised #GP "
            "(the backend ignores the guest's IOPL); create_vcpu(allow_port_io=True) raises "
            "MissingCapability")


FEATURE_CHECKS: list[Callable[[Hypervisor], str]] = [_port_io_line]


def feature_lines(hv: Hypervisor) -> list[str]:
    """One line per probed feature (:data:`FEATURE_CHECKS`)."""
    return [check(hv) for check in FEATURE_CHECKS]
