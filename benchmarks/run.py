"""pyhv benchmarks: every row is measured side by side with its reference, in the same run.

    python benchmarks/run.py                 # print the table
    python benchmarks/run.py --json out.json # and write the rows as JSON
    python benchmarks/run.py --quick         # fewer repeats (a smoke run)

Each row: ``name``, ``value`` (pyhv), ``unit``, ``reference`` (the same work done the
reference way), ``ratio`` (value / reference) and ``target`` (the ratio pyhv aims to stay
under, or null).  The C references are built from ``benchmarks/c/reference.c`` here; the
Unicorn rows need ``pip install unicorn`` (the ``bench`` extra) and are skipped without it.
Timings are the best of several interleaved repeats: the machines are shared and noisy, and
the minimum is the least disturbed estimate of each side.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.util
import json
import mmap
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import bench_fleet  # the fleet's rows (benchmarks/bench_fleet.py: they need Ray)
import bench_gdb  # benchmarks/bench_gdb.py, beside this script
import bench_hyperv  # the Hyper-V rows (benchmarks/bench_hyperv.py)
import c_loops  # the raw C reference loops, compiled on first use
from bench_guests import bench_guests  # pyhv.testing's rows (guests written in C)
from bench_pc import bench_boot_smp  # the PC machine's row

import pyhv
from pyhv.testing import assemble

HERE = Path(__file__).resolve().parent

EXIT_PORT = 0x510
CODE = 0x1000
PAYLOAD = 0x100000


@dataclass
class Row:
    """``target`` bounds ``ratio``, or ``value`` itself when ``target_is_value``."""

    name: str
    value: float | None
    unit: str
    reference: float | None
    ratio: float | None
    target: float | None
    note: str = ""
    target_is_value: bool = False
    # how far the repeats moved: the lowest and highest ratio of an interleaved pair (or
    # value, when the target bounds the value)
    moves: tuple[float, float] | None = None

    @property
    def verdict(self) -> str:
        measured = self.value if self.target_is_value else self.ratio
        if self.target is None or measured is None:
            return ""
        return "ok" if measured <= self.target else "MISSED"


def build_reference() -> ctypes.CDLL:
    """Compile the raw C loops (benchmarks/c/reference.c) and load them."""
    lib = c_loops.load("reference")
    lib.ref_run_to_halt.argtypes = [ctypes.c_int, ctypes.c_int]
    lib.ref_run_to_halt.restype = ctypes.c_long
    lib.ref_create_run_destroy.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint64,
                                           ctypes.c_uint64, ctypes.c_int]
    lib.ref_create_run_destroy.restype = ctypes.c_long
    lib.ref_make_idle.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint64,
                                  ctypes.c_uint64]
    lib.ref_make_idle.restype = ctypes.c_long
    lib.ref_free_idle.restype = ctypes.c_long
    lib.ref_clock_ns.argtypes = [ctypes.c_int]
    lib.ref_clock_ns.restype = ctypes.c_double
    return lib


@dataclass(frozen=True)
class Spread:
    """Lowest and highest of one side's repeats, and of the ratio within each pair."""

    values: tuple[float, float]
    ratios: tuple[float, float]


def best(pairs: int, first: Callable[[], float],
         second: Callable[[], float]) -> tuple[float, float, Spread]:
    """Best (lowest) time of each of two measurements, run alternately ``pairs`` times, and
    how much the repeats moved."""
    a, b = [], []
    for _ in range(pairs):
        a.append(first())
        b.append(second())
    ratios = [x / y for x, y in zip(a, b, strict=True)]
    return min(a), min(b), Spread((min(a), max(a)), (min(ratios), max(ratios)))


def row(name: str, value: float, unit: str, reference: float, target: float | None,
        note: str = "", target_is_value: bool = False, spread: Spread | None = None,
        scale: float = 1.0) -> Row:
    """A row; ``spread`` (in seconds, shown times ``scale`` for value targets) says how far
    the repeats moved."""
    moves = None
    if spread is not None:
        lo, hi = spread.values if target_is_value else spread.ratios
        moves = (lo * scale, hi * scale) if target_is_value else (lo, hi)
    return Row(name, value, unit, reference, value / reference, target, note, target_is_value,
               moves)


# -- exits --------------------------------------------------------------------------------
def out_loop(count: int) -> bytes:
    """Long-mode guest: `count` OUTs to EXIT_PORT, then hlt."""
    return assemble(f"mov ${EXIT_PORT:#x}, %dx\nmov ${count}, %ecx\n"
                    "1: out %eax, %dx\nloop 1b\nhlt", origin=CODE)


@dataclass(frozen=True)
class ExitShares:
    """Where a Python-handled exit's time goes inside pyhv's handler-driven run, from the
    vCPU's own counters (best of the repeats, µs per exit): the C run loop (the kernel's
    round trip included) and Python (dispatch and the handler)."""

    c_loop_us: float
    python_us: float


def bench_exits(ref: ctypes.CDLL, repeats: int) -> tuple[list[Row], ExitShares]:
    count = 3000
    part = pyhv.Partition(memory="16M")
    part.memory.write(CODE, out_loop(count))
    cpu = part.create_vcpu(mode="long", entry=CODE)
    start = cpu.regs.snapshot()
    mmap_size = part.hypervisor.vcpu_mmap_size
    fd = cpu.fd
    seen = [0]

    def on_out(port: int, size: int, value: int) -> None:
        seen[0] += 1

    def raw_c() -> float:
        cpu.regs.load(start)
        began = time.perf_counter()
        outs = ref.ref_run_to_halt(fd, mmap_size)
        took = time.perf_counter() - began
        assert outs == count, outs
        return took / count

    in_c, in_python = [], []

    def python_handled() -> float:
        cpu.regs.load(start)
        seen[0] = 0
        cpu.reset_stats()
        result = part.run(timeout=60)
        assert result.halted and seen[0] == count
        stats = cpu.stats
        in_c.append(stats.guest_seconds / count)
        in_python.append(stats.host_seconds / count)
        return result.elapsed / count

    handler = part.add_io_handler(EXIT_PORT, write=on_out)
    py, c, spread = best(repeats, python_handled, raw_c)
    rows = [row("exit_python_vs_c", py * 1e6, "us/exit", c * 1e6, 1.15,
                "port OUT handled by a Python handler vs a raw C KVM_RUN loop, same vCPU",
                spread=spread)]
    part.remove_handler(handler)

    collected = bytearray()
    part.add_buffered_port(EXIT_PORT, collected.extend)

    def c_fast() -> float:
        cpu.regs.load(start)
        collected.clear()
        result = part.run(timeout=60)
        assert result.halted and len(collected) == 4 * count
        return result.elapsed / count

    fast, c, spread = best(repeats, c_fast, raw_c)
    rows.append(row("exit_cfast_vs_c", fast * 1e6, "us/exit", c * 1e6, 1.03,
                    "port OUT completed by pyhv's C core (buffered port) vs the raw C loop",
                    spread=spread))
    part.close()
    return rows, ExitShares(min(in_c) * 1e6, min(in_python) * 1e6)


def bench_typed_exits(ref: ctypes.CDLL, repeats: int) -> list[Row]:
    """The README's loop: ``cpu.run(timeout=5)`` in a ``match``, one OUT per exit; and a
    handler-driven run answering INs."""
    count = 3000
    part = pyhv.Partition(memory="16M")
    part.memory.write(CODE, out_loop(count))
    cpu = part.create_vcpu(mode="long", entry=CODE)
    start = cpu.regs.snapshot()
    mmap_size = part.hypervisor.vcpu_mmap_size
    fd = cpu.fd

    def raw_c() -> float:
        cpu.regs.load(start)
        began = time.perf_counter()
        assert ref.ref_run_to_halt(fd, mmap_size) == count
        return (time.perf_counter() - began) / count

    def typed() -> float:
        cpu.regs.load(start)
        outs = 0
        began = time.perf_counter()
        while True:
            match cpu.run(timeout=5):
                case pyhv.exits.IoOut(port=0x510, data=d):
                    outs += len(d) > 0
                case pyhv.exits.Halt():
                    break
                case other:
                    raise RuntimeError(f"unexpected {other!r}")
        took = time.perf_counter() - began
        assert outs == count
        return took / count

    py, c, spread = best(repeats, typed, raw_c)
    rows = [row("exit_typed_vs_c", py * 1e6, "us/exit", c * 1e6, 1.25,
                "cpu.run(timeout=5) + match per OUT (the README's loop) vs the raw C loop",
                spread=spread)]
    part.close()

    part = pyhv.Partition(memory="16M")
    part.memory.write(CODE, assemble(f"mov ${EXIT_PORT:#x}, %dx\nmov ${count}, %ecx\n"
                                     "1: in %dx, %al\nloop 1b\nhlt", origin=CODE))
    cpu = part.create_vcpu(mode="long", entry=CODE)
    start = cpu.regs.snapshot()
    fd = cpu.fd
    part.add_io_handler(EXIT_PORT, read=lambda port, size: 1)

    def handled_in() -> float:
        cpu.regs.load(start)
        result = part.run(timeout=60)
        assert result.halted and result.exits_handled == count
        return result.elapsed / count

    py, c, spread = best(repeats, handled_in, raw_c)
    rows.append(row("exit_in_python_vs_c", py * 1e6, "us/exit", c * 1e6, 1.20,
                    "port IN answered by a Python handler vs the raw C loop answering it",
                    spread=spread))
    part.close()
    return rows


# -- create, run, destroy -----------------------------------------------------------------
def bench_lifecycle(ref: ctypes.CDLL, repeats: int) -> tuple[Row, float]:
    n = 40
    halt = b"\xf4"

    def with_pyhv() -> float:
        began = time.perf_counter()
        for _ in range(n):
            with pyhv.Partition(memory="1M") as part:
                part.memory.write(CODE, halt)
                part.create_vcpu(mode="real", entry=CODE).run()
        return (time.perf_counter() - began) / n

    def raw_c() -> float:
        began = time.perf_counter()
        rc = ref.ref_create_run_destroy(halt, 1, CODE, 1 << 20, n)
        assert rc == 0, rc
        return (time.perf_counter() - began) / n

    py, c, spread = best(repeats, with_pyhv, raw_c)
    return row("create_run_destroy_vs_c", py * 1e3, "ms/cycle", c * 1e3, 1.1,
               "1 MiB real-mode guest: create, run to hlt, destroy; C sets CPUID too",
               spread=spread), py


# -- compute at CPL3 ----------------------------------------------------------------------
ITERATIONS = 100_000_000
COMPUTE = ("mov ${n}, %rcx\nxor %eax, %eax\n"
           "1: add %rcx, %rax\nimul $3, %rax\nror $7, %rax\ndec %rcx\njnz 1b\n")


def bench_compute(repeats: int) -> tuple[Row, float]:
    part = pyhv.Partition(memory="16M")
    part.memory.write(PAYLOAD, assemble(COMPUTE.format(n=ITERATIONS) + "int3", origin=PAYLOAD))
    cpu = part.create_vcpu(mode="user", entry=PAYLOAD)
    start, start_sregs = cpu.regs.snapshot(), cpu.get_sregs()   # back to CPL3 each time

    code = assemble(COMPUTE.format(n=ITERATIONS) + "ret")
    page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(code)
    native_fn = ctypes.CFUNCTYPE(ctypes.c_uint64)(
        ctypes.addressof(ctypes.c_char.from_buffer(page)))
    answer = []

    def in_guest() -> float:
        cpu.set_sregs(start_sregs)
        cpu.regs.load(start)
        began = time.perf_counter()
        ex = cpu.run(timeout=120)
        took = time.perf_counter() - began
        assert isinstance(ex, pyhv.exits.GuestException) and ex.vector == 3, ex
        answer.append(cpu.regs.rax)
        return took

    def native() -> float:
        began = time.perf_counter()
        answer.append(native_fn())
        return time.perf_counter() - began

    guest, host, spread = best(repeats, in_guest, native)
    assert len(set(answer)) == 1, "guest and host computed different results"
    part.close()
    per = 1e9 / ITERATIONS
    return row("cpl3_compute_vs_native", guest * per, "ns/iter", host * per, 1.05,
               "a 5-instruction loop at CPL3 in user mode vs the same bytes run on the host",
               spread=spread), guest * per


# -- snapshots ----------------------------------------------------------------------------
def bench_restore(repeats: int) -> Row:
    """A 64 MiB guest (all of it touched) that dirties 16 pages, restored to its snapshot:
    the tracked restore vs one that copies all touched memory."""
    part = pyhv.Partition(memory="64M")
    part.memory.fill(0, 64 << 20, 0x5A)
    part.memory.write(CODE, assemble("mov $0x1000000, %edi\nmov $16, %ecx\n"
                                     "1: movq $1, (%rdi)\nadd $4096, %rdi\nloop 1b\nhlt",
                                     origin=CODE))
    cpu = part.create_vcpu(mode="long", entry=CODE)
    snap = part.snapshot()

    def restore(full: bool) -> float:
        assert isinstance(cpu.run(timeout=30), pyhv.exits.Halt)
        if full:
            part.memory.untrack()           # forget what changed: copy everything touched
        began = time.perf_counter()
        copied = part.restore(snap)
        took = time.perf_counter() - began
        assert copied >= 16 and (full or copied <= 20), copied
        return took

    # not interleaved: a full restore copies 64 MiB, which would leave the next fast restore
    # with cold caches
    fast = [restore(False) for _ in range(repeats)]
    full = min(restore(True) for _ in range(max(repeats // 3, 2)))
    part.close()
    spread = Spread((min(fast), max(fast)), (min(fast) / full, max(fast) / full))
    return row("restore_64m_16dirty_us", min(fast) * 1e6, "us", full * 1e6, 50,
               "restore of a 64 MiB guest that dirtied 16 pages vs a full-memory-copy restore",
               target_is_value=True, spread=spread, scale=1e6)


def bench_pool(repeats: int) -> Row:
    halt = b"\xf4"
    with pyhv.Partition(memory="1M") as part:
        part.memory.write(CODE, halt)
        part.create_vcpu(mode="real", entry=CODE)
        template = part.snapshot()
    pool = pyhv.PartitionPool(template, size=1)
    n = 200

    def pooled() -> float:
        began = time.perf_counter()
        for _ in range(n):
            with pool.lease() as guest:
                guest.vcpus[0].run()
        return (time.perf_counter() - began) / n

    def fresh() -> float:
        began = time.perf_counter()
        for _ in range(n // 10):
            with pyhv.Partition(memory="1M") as part:
                part.memory.write(CODE, halt)
                part.create_vcpu(mode="real", entry=CODE).run()
        return (time.perf_counter() - began) / (n // 10)

    cycle, create, spread = best(max(repeats // 3, 2), pooled, fresh)
    pool.close()
    return row("pool_cycle_ms", cycle * 1e3, "ms", create * 1e3, 0.10,
               "pool acquire + run to hlt + release vs create -> run -> destroy",
               target_is_value=True, spread=spread, scale=1e3)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * mmap.PAGESIZE


def bench_idle_rss(ref: ctypes.CDLL) -> Row:
    """Host memory per idle partition (1 MiB of RAM, one vCPU that ran to hlt), 1,000 alive,
    beyond the guest RAM it touched; the same for raw C VMs."""
    import gc
    n = 1000
    halt = b"\xf4"
    gc.collect()
    before = rss_bytes()
    parts = []
    for _ in range(n):
        part = pyhv.Partition(memory="1M")
        part.memory.write(CODE, halt)
        part.create_vcpu(mode="real", entry=CODE).run()
        parts.append(part)
    gc.collect()
    grown = rss_bytes() - before
    touched = sum(slot.resident_bytes() for part in parts for slot in part.memory.slots)
    for part in parts:
        part.close()
    del parts
    gc.collect()

    before = rss_bytes()
    rc = ref.ref_make_idle(n, halt, 1, CODE, 1 << 20)
    assert rc == 0, rc
    c_grown = rss_bytes() - before
    ref.ref_free_idle()
    c_touched = n * mmap.PAGESIZE                     # the code page each VM ran
    mib = 1 << 20
    value = max(grown - touched, 0) / n / mib
    reference = max(c_grown - c_touched, 0) / n / mib
    # a raw C VM costs next to nothing beyond its pages: a ratio to ~0 would mean nothing
    ratio = value / reference if reference * mib >= 1024 else None
    return Row("idle_partition_rss_mib", value, "MiB", reference, ratio, 1.0,
               f"host RSS per idle partition beyond touched guest RAM, {n} alive, vs raw C VMs",
               target_is_value=True)


# -- Unicorn ------------------------------------------------------------------------------
def bench_unicorn(repeats: int, pyhv_cycle: float, pyhv_iter_ns: float,
                  pyhv_exit_us: float) -> list[Row]:
    try:
        import unicorn
        from unicorn import x86_const as x86
    except ImportError:
        note = "skipped: pip install unicorn (or pip install -e '.[bench]')"
        return [Row(n, None, u, None, None, None, note) for n, u in (
            ("unicorn_create_run", "ms/cycle"), ("unicorn_compute", "ns/iter"),
            ("unicorn_port_out_hook", "us/exit"))]

    def create_run() -> float:
        n = 40
        began = time.perf_counter()
        for _ in range(n):
            uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_16)
            uc.mem_map(0, 1 << 20)
            uc.mem_write(CODE, b"\xf4")
            uc.emu_start(CODE, CODE + 0x100)
            del uc
        return (time.perf_counter() - began) / n

    n_compute = 2_000_000
    code64 = assemble(COMPUTE.format(n=n_compute) + "hlt", origin=PAYLOAD)

    def compute() -> float:
        uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_64)
        uc.mem_map(PAYLOAD, 0x10000)
        uc.mem_write(PAYLOAD, code64)
        began = time.perf_counter()
        uc.emu_start(PAYLOAD, PAYLOAD + len(code64))
        return (time.perf_counter() - began) / n_compute

    outs = 3000
    out_code = assemble(f"mov ${EXIT_PORT:#x}, %dx\nmov ${outs}, %ecx\n"
                        "1: out %eax, %dx\nloop 1b\nhlt", origin=PAYLOAD)

    def port_hook() -> float:
        uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_64)
        uc.mem_map(PAYLOAD, 0x10000)
        uc.mem_write(PAYLOAD, out_code)
        seen = [0]

        def on_out(uc_: object, port: int, size: int, value: int, user: object) -> None:
            seen[0] += 1

        uc.hook_add(unicorn.UC_HOOK_INSN, on_out, None, 1, 0, x86.UC_X86_INS_OUT)
        began = time.perf_counter()
        uc.emu_start(PAYLOAD, PAYLOAD + len(out_code))
        took = time.perf_counter() - began
        assert seen[0] == outs
        return took / outs

    def fastest(fn: Callable[[], float]) -> float:
        return min(fn() for _ in range(max(repeats // 4, 2)))

    return [
        row("unicorn_create_run", pyhv_cycle * 1e3, "ms/cycle", fastest(create_run) * 1e3,
            None, "pyhv create+run+destroy vs Unicorn create+run of the same 1-byte guest"),
        row("unicorn_compute", pyhv_iter_ns, "ns/iter", fastest(compute) * 1e9, None,
            "pyhv user-mode loop vs the same loop under Unicorn's JIT"),
        row("unicorn_port_out_hook", pyhv_exit_us, "us/exit", fastest(port_hook) * 1e6, None,
            "pyhv Python-handled OUT vs a Unicorn UC_HOOK_INSN Python hook on OUT"),
    ]


# -- output -------------------------------------------------------------------------------
def python_call_ns() -> float:
    """ns per call of a Python function shaped like a port handler (the interpreter's speed
    here: most of an exit's Python cost is calls and attribute reads like this one)."""
    def handler(port: int, size: int, value: int) -> None:
        pass

    def loop(n: int) -> float:
        began = time.perf_counter()
        for i in range(n):
            handler(0x510, 4, i)
        return time.perf_counter() - began

    n = 200_000
    return min(loop(n) for _ in range(5)) / n * 1e9


def python_build() -> str:
    """How this CPython was built, as far as speed goes (PGO/LTO, a shared libpython)."""
    import sysconfig
    flags = str(sysconfig.get_config_var("CONFIG_ARGS") or "")
    traits = ["PGO" if "--enable-optimizations" in flags else "no PGO",
              "LTO" if "--with-lto" in flags else "no LTO"]
    if sysconfig.get_config_var("Py_ENABLE_SHARED"):
        traits.append("shared libpython")
    return ", ".join(traits)


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.1f} (5 min {five:.1f}) on {os.cpu_count()} CPUs"


def clocksource() -> str:
    try:
        with open("/sys/devices/system/clocksource/clocksource0/current_clocksource") as f:
            return f.read().strip()
    except OSError:
        return "unknown"


def describe_host(ref: ctypes.CDLL) -> str:
    """Which host the numbers are from: backend, CPU, kernel and its clock, Python, and how
    busy it is (what makes the same rows differ between hosts of one kind)."""
    caps = pyhv.check()
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor())
    clock = min(ref.ref_clock_ns(100_000) for _ in range(5))
    return (f"pyhv {pyhv.__version__}; backend {caps.backend} ({caps.kind} KVM); {cpu}; "
            f"kernel {platform.release()}, clocksource {clocksource()} (a clock read takes "
            f"{clock:.0f} ns); Python {platform.python_version()} ({python_build()}; a "
            f"handler-like call takes {python_call_ns():.0f} ns); {load()}")


def table(rows: list[Row]) -> str:
    lines = [f"{'name':26} {'pyhv':>10} {'reference':>10} {'unit':9} {'ratio':>7} "
             f"{'target':>7}  {'moves':>13}  verdict"]
    for r in rows:
        if r.value is None:
            lines.append(f"{r.name:26} {'-':>10} {'-':>10} {r.unit:9} {'-':>7} {'-':>7}  "
                         f"{'-':>13}  {r.note}")
            continue
        verdict = r.verdict
        target = "-" if r.target is None else (
            f"{r.target:g}{r.unit.split('/')[0]}" if r.target_is_value else f"{r.target:.2f}")
        ratio = "-" if r.ratio is None else f"{r.ratio:.3f}"
        moves = "-" if r.moves is None else (
            f"{r.moves[0]:.3g}-{r.moves[1]:.3g}{r.unit.split('/')[0]}" if r.target_is_value
            else f"{r.moves[0]:.2f}-{r.moves[1]:.2f}")
        lines.append(f"{r.name:26} {r.value:10.3f} {r.reference:10.3f} {r.unit:9} "
                     f"{ratio:>7} {target:>7}  {moves:>13}  {verdict}")
    return "\n".join(lines)


def exit_breakdown(rows: list[Row], shares: ExitShares) -> str:
    """Where an exit's time goes: the kernel's round trip (the raw C loop), pyhv's C run loop
    around it, and Python, the last two from the vCPU's counters inside the same runs (so
    a busy host moves them less than it moves the rows)."""
    kernel = next(r.reference for r in rows if r.name == "exit_python_vs_c")
    if kernel is None:
        return ""
    return (f"per Python-handled exit: {kernel:.2f} us in the kernel's round trip (raw C "
            f"loop); in pyhv's run {shares.c_loop_us:.2f} us in its C run loop (kernel "
            f"included: {shares.c_loop_us - kernel:+.2f} us against the raw loop) and "
            f"{shares.python_us:.2f} us in Python (dispatch and the handler)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args(argv)
    repeats = 2 if args.quick else 21

    ref = build_reference()
    print(describe_host(ref), flush=True)
    print("(each row: the best of interleaved repeats; 'moves' is the lowest and highest "
          "ratio of a repeat pair, or value for targets on the value)", flush=True)
    rows, shares = bench_exits(ref, repeats)
    rows += bench_typed_exits(ref, repeats)
    lifecycle, cycle = bench_lifecycle(ref, max(repeats // 2, 2))
    compute, iter_ns = bench_compute(max(repeats // 4, 2))
    rows += [lifecycle, compute]
    rows += [bench_restore(repeats), bench_pool(repeats), bench_idle_rss(ref)]
    rows += bench_unicorn(repeats, cycle, iter_ns, rows[0].value or 0.0)
    rows += [row(*m) if m[1] is not None else Row(m[0], None, m[2], None, None, None, m[5])
             for m in bench_gdb.measure(repeats)]            # benchmarks/bench_gdb.py
    rows += bench_hyperv.rows(ref, repeats, row)
    rows += bench_guests(max(repeats // 2, 2), row, best)
    rows.append(bench_boot_smp(max(repeats // 4, 2), row))
    rows += (bench_fleet.rows(repeats, Row) if importlib.util.find_spec("ray")   # with Ray only
             else bench_fleet.skipped(Row))
    print(table(rows))
    print(exit_breakdown(rows, shares))
    print(f"after the run: {load()}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([{k: v for k, v in asdict(r).items()
                        if k in ("name", "value", "unit", "reference", "ratio", "target",
                                 "moves")}
                       for r in rows], f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
