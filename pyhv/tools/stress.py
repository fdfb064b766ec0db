"""Long-running checks that a guest cannot hurt the host process: a seeded guest-code fuzzer,
leak soaks, cancel races and a corrupt-image corpus.  ``pyhv stress ...`` runs them at full
size; the test suite runs the same functions small.

    pyhv stress fuzz --count 100000 --seed 1      # random code in every mode
    pyhv stress soak --cycles 10000               # create/run/destroy and snapshot/restore
    pyhv stress races --count 1000                # cancel while running
    pyhv stress images --count 5000 --seed 1      # mutated images through every loader
"""

from __future__ import annotations

import collections
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .. import exits
from ..errors import HypervisorError, ImageFormatError, Timeout
from ..partition import Partition
from ..x86.modes import MODES

FUZZ_ENTRY = 0x100000          # above pyhv's setup region, so every mode can run there
FUZZ_MEMORY = "4M"
REAL_ENTRY = 0x7000            # real mode runs below 1 MiB
MAX_EXITS_PER_CASE = 64
RSS_TOLERANCE = 4 << 20        # soak RSS growth allowed for allocator noise

# Long-mode guests at 0x1000, encoded here so that `pyhv stress` needs no assembler;
# tests/unit/test_stress.py checks each against its source in GUEST_SOURCES.
SOAK_LIFECYCLE_GUEST = bytes.fromhex("bf0000200048c70701000000b055e680f4")
SOAK_SNAPSHOT_GUEST = bytes.fromhex("bf00004000b90800000048890f4881c700100000e2f4f4")
CANCEL_RACE_GUEST = bytes.fromhex("31c066ba1005efffc0ebfb")
GUEST_SOURCES = {
    "SOAK_LIFECYCLE_GUEST": "mov $0x200000, %edi; movq $1, (%rdi); mov $0x55, %al; "
                            "out %al, $0x80; hlt",
    "SOAK_SNAPSHOT_GUEST": "mov $0x400000, %edi; mov $8, %ecx; 1: movq %rcx, (%rdi); "
                           "add $4096, %rdi; loop 1b; hlt",
    "CANCEL_RACE_GUEST": "xor %eax, %eax; mov $0x510, %dx; 1: out %eax, %dx; inc %eax; jmp 1b",
}


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@dataclass
class FuzzReport:
    """What a fuzz run saw: cases per mode, final exits by kind, the slowest case."""

    cases: int = 0
    seed: int = 0
    by_mode: collections.Counter[str] = field(default_factory=collections.Counter)
    exits: collections.Counter[str] = field(default_factory=collections.Counter)
    timeouts: int = 0
    longest: float = 0.0
    fds: tuple[int, int] = (0, 0)
    rss: tuple[int, int] = (0, 0)

    def summary(self) -> str:
        kinds = ", ".join(f"{k} {n}" for k, n in self.exits.most_common())
        return (f"{self.cases} random guests (seed {self.seed}; "
                f"{', '.join(f'{m} {n}' for m, n in sorted(self.by_mode.items()))}); "
                f"ended on: {kinds}; timeouts {self.timeouts}; slowest {self.longest:.3f} s; "
                f"fds {self.fds[0]} -> {self.fds[1]}; RSS {self.rss[0] >> 20} -> "
                f"{self.rss[1] >> 20} MiB")


def _fuzz_partition(mode: str) -> tuple[Partition, Any, int]:
    part = Partition(memory=FUZZ_MEMORY)
    try:
        part.ignore_unclaimed_ports()
        entry = REAL_ENTRY if mode == "real" else FUZZ_ENTRY
        part.memory.write(entry, b"\xf4")
        part.create_vcpu(mode=mode, entry=entry, exceptions=mode != "user")
        return part, part.snapshot(), entry
    except BaseException:
        part.close()
        raise


def _answer(ex: exits.Exit, rng: random.Random) -> None:
    """Complete a read with a random answer of the right size."""
    if isinstance(ex, exits.IoIn):
        ex.complete(rng.randbytes(ex.size * ex.count))
    elif isinstance(ex, exits.MmioRead):
        ex.complete(rng.randbytes(ex.size))
    elif isinstance(ex, exits.Syscall):
        ex.complete(rng.getrandbits(64))


def fuzz(count: int, seed: int = 0, modes: tuple[str, ...] = MODES, length: int = 48,
         timeout: float = 0.25,
         on_case: Callable[[int, str, bytes, exits.Exit | None], None] | None = None
         ) -> FuzzReport:
    """Run ``count`` random byte strings as guest code, spread over ``modes``.

    Each case starts from the same snapshot (a partition per mode, restored between cases),
    may make up to 64 exits (reads answered with random bytes), and must end in a typed exit
    or a :class:`pyhv.Timeout` within ``timeout`` seconds.  Anything else propagates.
    Case ``i`` draws its code and answers from its own generator (seeded by ``seed`` and
    ``i``), so it is the same case whatever the cases before it did: ``on_case(i, mode,
    code, final)`` sees the same codes in every run of a seed (``final`` is None for a
    timeout).
    """
    from ..core.hypervisor import default
    default()                         # the shared /dev/kvm handle is not a leak
    report = FuzzReport(seed=seed)
    report.fds = (fd_count(), 0)
    report.rss = (rss_bytes(), 0)
    setups: dict[str, tuple[Partition, Any, int]] = {}
    try:
        for mode in modes:
            setups[mode] = _fuzz_partition(mode)
        for case in range(count):
            mode = modes[case % len(modes)]
            part, snap, entry = setups[mode]
            part.restore(snap)
            rng = random.Random(f"pyhv-fuzz:{seed}:{case}")
            code = rng.randbytes(length)
            part.memory.write(entry, code)
            cpu = part.vcpus[0]
            started = time.monotonic()
            final: exits.Exit | None = None
            try:
                for _ in range(MAX_EXITS_PER_CASE):
                    left = timeout - (time.monotonic() - started)
                    if left <= 0:
                        raise Timeout(cpu, cpu.regs.snapshot(), timeout)
                    final = cpu.run(timeout=left)
                    if isinstance(final, (exits.IoIn, exits.MmioRead, exits.Syscall)):
                        _answer(final, rng)
                    elif not isinstance(final, (exits.IoOut, exits.MmioWrite)):
                        break
                name = type(final).__name__
            except Timeout:
                report.timeouts += 1
                name = "Timeout"
                final = None
            report.exits[name] += 1
            report.by_mode[mode] += 1
            report.cases += 1
            report.longest = max(report.longest, time.monotonic() - started)
            if on_case is not None:
                on_case(case, mode, code, final)
    finally:
        for part, _, _ in setups.values():
            part.close()
    report.fds = (report.fds[0], fd_count())
    report.rss = (report.rss[0], rss_bytes())
    return report


@dataclass
class SoakReport:
    name: str
    cycles: int
    fds: tuple[int, int]
    rss: tuple[int, int]
    seconds: float

    @property
    def rss_growth(self) -> int:
        return self.rss[1] - self.rss[0]

    def summary(self) -> str:
        return (f"{self.name}: {self.cycles} cycles in {self.seconds:.1f} s; fds "
                f"{self.fds[0]} -> {self.fds[1]}; RSS {self.rss[0] / 2**20:.1f} -> "
                f"{self.rss[1] / 2**20:.1f} MiB ({self.rss_growth / 2**20:+.2f})")


def _soak(name: str, cycles: int, step: Callable[[], None], warmup: int,
          progress: Callable[[], None] | None = None) -> SoakReport:
    import gc
    for _ in range(warmup):          # let allocator pools and caches settle first
        step()
    gc.collect()
    fds, rss = fd_count(), rss_bytes()
    started = time.monotonic()
    for _ in range(cycles):
        step()
        if progress is not None:
            progress()
    gc.collect()
    return SoakReport(name, cycles, (fds, fd_count()), (rss, rss_bytes()),
                      time.monotonic() - started)


def soak_lifecycle(cycles: int, progress: Callable[[], None] | None = None) -> SoakReport:
    """Create a partition, run a guest that touches memory and does port IO, destroy it."""
    code = SOAK_LIFECYCLE_GUEST

    def step() -> None:
        with Partition(memory="4M") as part:
            part.add_io_handler(0x80, write=lambda *a: None)
            part.memory.write(0x1000, code)
            part.create_vcpu(mode="long", entry=0x1000)
            result = part.run(timeout=10)
            if not result.halted:
                raise HypervisorError(f"soak guest ended on {result.exit!r}")

    return _soak("create/run/destroy", cycles, step, warmup=min(cycles, 50), progress=progress)


def soak_snapshots(cycles: int, progress: Callable[[], None] | None = None) -> SoakReport:
    """Snapshot a guest, run it (it dirties memory), restore, on one partition."""
    part = Partition(memory="16M")
    try:
        part.memory.write(0x1000, SOAK_SNAPSHOT_GUEST)
        part.create_vcpu(mode="long", entry=0x1000)
        base = part.snapshot()
    except BaseException:
        part.close()
        raise

    def step() -> None:
        nonlocal base
        if not isinstance(part.vcpus[0].run(timeout=10), exits.Halt):
            raise HypervisorError("snapshot soak guest did not halt")
        part.restore(base)
        base = part.snapshot()       # a new snapshot each cycle: the old one must be freed

    try:
        return _soak("snapshot/restore", cycles, step, warmup=min(cycles, 50),
                     progress=progress)
    finally:
        part.close()


def cancel_races(count: int, seed: int = 0) -> tuple[int, int]:
    """Cancel a vCPU ``count`` times at random moments while it makes port exits; returns
    (exits seen, cancels seen).  Raises if an exit is lost, repeated or out of order."""
    with Partition(memory="1M") as part:
        part.memory.write(0x1000, CANCEL_RACE_GUEST)
        cpu = part.create_vcpu(mode="long", entry=0x1000)
        done = threading.Event()

        def canceller() -> None:
            rng = random.Random(seed)
            for _ in range(count):
                time.sleep(rng.random() * 0.0004)
                cpu.cancel()
            done.set()

        expected, canceled = 0, 0

        def next_out(last: bool) -> None:
            nonlocal expected, canceled
            ex = cpu.run(timeout=30)
            while isinstance(ex, exits.Canceled):
                canceled += 1
                if not last:
                    return
                ex = cpu.run(timeout=30)   # a cancel after the last run: delivered once
            if not isinstance(ex, exits.IoOut) or ex.port != 0x510 or ex.value != expected:
                raise HypervisorError(f"cancel race: expected OUT {expected}, got {ex!r}")
            expected += 1

        thread = threading.Thread(target=canceller)
        thread.start()
        try:
            while not done.is_set():
                next_out(last=False)
        finally:
            thread.join()
        next_out(last=True)
        if canceled > count:
            raise HypervisorError(f"cancel race: {canceled} cancels seen for {count} made")
        return expected, canceled


def mutations(data: bytes, rng: random.Random, count: int) -> Iterator[bytes]:
    """Broken versions of ``data``: truncations, byte flips, overwritten words."""
    for _ in range(count):
        kind = rng.randrange(4)
        blob = bytearray(data)
        if kind == 0:
            yield bytes(blob[: rng.randrange(len(blob))])
            continue
        for _ in range(rng.randint(1, 8)):
            at = rng.randrange(min(len(blob), 4096) if kind == 1 else len(blob))
            if kind == 3:
                blob[at:at + 4] = rng.choice([b"\xff\xff\xff\xff", b"\0\0\0\0",
                                              b"\xff\xff\xff\x7f", rng.randbytes(4)])
            else:
                blob[at] ^= 1 << rng.randrange(8)
        yield bytes(blob)


@dataclass
class ImageReport:
    images: int = 0
    refused: int = 0
    loaded: int = 0
    by_format: collections.Counter[str] = field(default_factory=collections.Counter)
    fds: tuple[int, int] = (0, 0)

    def summary(self) -> str:
        return (f"{self.images} mutated images ({dict(self.by_format)}): {self.refused} "
                f"refused with ImageFormatError, {self.loaded} still loadable; fds "
                f"{self.fds[0]} -> {self.fds[1]}")


def image_corpus(samples: dict[str, bytes], count: int, seed: int = 0,
                 progress: Callable[[], None] | None = None) -> ImageReport:
    """Feed ``count`` mutations of each sample image (format -> bytes) to its loader: each must
    load or raise :class:`pyhv.ImageFormatError` having written nothing.  Anything else
    propagates."""
    from .. import loaders
    from ..core.hypervisor import default
    default()
    rng = random.Random(seed)
    report = ImageReport(fds=(fd_count(), 0))
    with Partition(memory="64M") as part:
        pristine = part.snapshot()
        for fmt, sample in samples.items():
            loader = {"elf32": "elf", "pvh": "linux"}.get(fmt, fmt)
            for blob in mutations(sample, rng, count):
                if progress is not None:
                    progress()
                report.images += 1
                report.by_format[fmt] += 1
                try:
                    loaders.load(part, blob, loader)
                except ImageFormatError:
                    report.refused += 1
                    if part.restore(pristine):
                        raise HypervisorError(f"a refused {fmt} image wrote guest memory") \
                            from None
                    continue
                report.loaded += 1
                part.restore(pristine)
    report.fds = (report.fds[0], fd_count())
    return report
