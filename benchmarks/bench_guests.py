"""Benchmark rows of guests written in C (pyhv.testing), called from benchmarks/run.py:

``ucall_roundtrip_vs_c``
    a ``GUEST_SYNC`` answered by the host (user mode: an MMIO doorbell from ring 3, the
    record read and the answer written by Python) vs a raw C ``KVM_RUN`` loop taking the
    same exit with nothing to do.
``ucall_roundtrip_long_vs_c``
    the same at ring 0 (long mode: a port doorbell), vs the raw C loop on port OUTs.
``ucall_stepping_vs_run``
    a sync handed to the caller of ``GuestVM.syncs()`` (a thread handoff each way) vs one
    answered inside the run.
``guest_build_cached_ms``
    a second ``build_guest`` of the same source (a hash and a look in the cache) vs the
    first build of it (gcc, with the guest library already built).
``c_guest_user_vs_long``
    the same C loop in a user-mode (ring 3) guest vs a long-mode (ring 0) one: on software
    KVMs (kvm_pvm) ring 0 goes through KVM's instruction emulator.

    python benchmarks/bench_guests.py [--quick]     # these rows alone
"""

from __future__ import annotations

import ctypes
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import c_loops  # benchmarks/c_loops.py, beside this script

import pyhv
from pyhv.testing import GuestVM, assemble, build_guest

HERE = Path(__file__).resolve().parent
PAYLOAD = 0x100000
SYNCS = 2000
LOOP = """
void guest_main(int cpu)
{
    for (uint64_t i = 0; i < %d; i++)
        GUEST_SYNC(i);
}
"""
COMPUTE = """
void guest_main(int cpu)
{
    uint64_t x = 1;
    for (uint64_t i = 0; i < %d; i++)
        x = x * 6364136223846793005ull + i;
    GUEST_SYNC(x);
}
"""


def build_reference() -> ctypes.CDLL:
    """Compile benchmarks/c/guests_reference.c (the raw C doorbell loop) and load it."""
    lib = c_loops.load("guests_reference")
    lib.ref_doorbells_to_halt.argtypes = [ctypes.c_int, ctypes.c_int]
    lib.ref_doorbells_to_halt.restype = ctypes.c_long
    return lib


def raw_doorbells(ref: ctypes.CDLL, mode: str, count: int) -> Callable[[], float]:
    """A measurement: seconds per exit of ``count`` doorbell exits (an MMIO write from ring
    3, or a port OUT at ring 0) taken by the raw C loop, on a vCPU in ``mode``."""
    part = pyhv.Partition(memory="16M")
    ring = ("mov $0xd0000000, %edi\n1: movl %eax, (%rdi)" if mode == "user"
            else "mov $0x7e0, %dx\n1: out %eax, %dx")
    end = "ud2" if mode == "user" else "hlt"        # user mode: the stub's hlt ends the loop
    part.memory.write(PAYLOAD, assemble(f"mov ${count}, %ecx\n{ring}\nloop 1b\n{end}",
                                        origin=PAYLOAD))
    cpu = part.create_vcpu(mode=mode, entry=PAYLOAD, exceptions=mode != "user")
    regs, sregs = cpu.regs.snapshot(), cpu.get_sregs()
    mmap_size = part.hypervisor.vcpu_mmap_size

    def measure() -> float:
        cpu.set_sregs(sregs)
        cpu.regs.load(regs)
        began = time.perf_counter()
        rings = ref.ref_doorbells_to_halt(cpu.fd, mmap_size)
        took = time.perf_counter() - began
        assert rings == count, rings
        return took / count

    measure.partition = part           # type: ignore[attr-defined]  # closed by the caller
    return measure


def ucall_syncs(mode: str, count: int, stepping: bool = False) -> Callable[[], float]:
    """A measurement: seconds per ``GUEST_SYNC`` answered by the host (a fresh VM each time;
    its boot is not timed)."""
    image = build_guest(c=LOOP % count, mode=mode)

    def measure() -> float:
        with GuestVM(image) as vm:
            if stepping:
                began = time.perf_counter()
                for sync in vm.syncs(timeout=120):
                    sync.reply(sync.value)
                took = time.perf_counter() - began
            else:
                took = vm.run(timeout=120, answer=lambda s: s.value).elapsed
            assert vm.result is not None and len(vm.result.syncs) == count
        return took / count

    return measure


def build_times(repeats: int) -> tuple[float, float]:
    """(cached, first) seconds of build_guest for one new source, in a cache of its own
    whose guest library is already built."""
    with tempfile.TemporaryDirectory(prefix="pyhv-bench-cache-") as cache:
        build_guest(c=LOOP % 1, cache_dir=cache)                     # the library
        source = LOOP % 1 + f"/* {uuid.uuid4()} */\n"
        began = time.perf_counter()
        build_guest(c=source, cache_dir=cache)
        first = time.perf_counter() - began
        cached = []
        for _ in range(repeats):
            began = time.perf_counter()
            build_guest(c=source, cache_dir=cache)
            cached.append(time.perf_counter() - began)
    return min(cached), first


def compute(mode: str, iterations: int) -> Callable[[], float]:
    image = build_guest(c=COMPUTE % iterations, mode=mode)

    def measure() -> float:
        with GuestVM(image) as vm:
            took = vm.run(timeout=600).elapsed
        return took / iterations

    return measure


def bench_guests(repeats: int, row: Callable[..., Any],
                 best: Callable[[int, Callable[[], float], Callable[[], float]],
                                tuple[float, float, Any]]) -> list[Any]:
    """The rows (``row`` and ``best`` are benchmarks/run.py's)."""
    ref = build_reference()
    rows = []
    for mode, name, note in (
            ("user", "ucall_roundtrip_vs_c",
             "GUEST_SYNC answered by the host (ring 3, MMIO doorbell) vs a raw C KVM_RUN loop "
             "on the same exit"),
            ("long", "ucall_roundtrip_long_vs_c",
             "GUEST_SYNC answered by the host (ring 0, port doorbell) vs the raw C loop on "
             "port OUTs")):
        raw = raw_doorbells(ref, mode, SYNCS)
        ours, c, spread = best(repeats, ucall_syncs(mode, SYNCS), raw)
        raw.partition.close()                 # type: ignore[attr-defined]
        rows.append(row(name, ours * 1e6, "us/sync", c * 1e6, 1.5 if mode == "user" else None,
                        note, spread=spread))
    stepping, inline, spread = best(max(repeats // 2, 2),
                                    ucall_syncs("user", 500, stepping=True),
                                    ucall_syncs("user", 500))
    rows.append(row("ucall_stepping_vs_run", stepping * 1e6, "us/sync", inline * 1e6, None,
                    "a sync handed to a GuestVM.syncs() loop vs answered inside run()",
                    spread=spread))
    cached, first = build_times(max(repeats, 5))
    rows.append(row("guest_build_cached_ms", cached * 1e3, "ms", first * 1e3, 5,
                    "a second build_guest of the same source vs its first build (gcc)",
                    target_is_value=True))
    user, ring0, spread = best(2, compute("user", 2_000_000), compute("long", 20_000))
    rows.append(row("c_guest_user_vs_long", user * 1e9, "ns/iter", ring0 * 1e9, None,
                    "a C loop in a user-mode (ring 3) guest vs a long-mode (ring 0) guest",
                    spread=spread))
    return rows


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(HERE))
    import run  # benchmarks/run.py: Row, row, best, table

    repeats = 2 if "--quick" in argv else 11
    print(run.describe_host(run.build_reference()), flush=True)
    print(run.table(bench_guests(repeats, run.row, run.best)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
