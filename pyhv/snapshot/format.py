"""The snapshot file format: :class:`Snapshot` in memory, :meth:`Snapshot.save` and
:meth:`Snapshot.load` on disk.

**On disk** (``save``/``load``)::

    b"PYHVSNAP"  u16 major  u16 minor  u32 header length  header (JSON, UTF-8)
    per slot:    u64 run count, (u64 first page, u64 pages) per run, then the runs' bytes
    per vCPU:    the C core's ``struct pyhv_vcpu_state`` (``state_size`` bytes)
    SHA-256 of everything above (32 bytes)

Memory is stored sparsely: only pages that were ever touched and are not all zero.  A file
of a newer major format, of another vCPU-state layout, with a bad checksum or with a header
that does not hold what pyhv writes is refused with :class:`SnapshotFormatError`.

The header's ``fast_ports`` is always empty: fast-path ports are Python-side registrations,
never part of a snapshot.  Older files that list some still load (the list is ignored), and
the empty entry stays so that older pyhv versions, which require it, read newer files.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from typing import Any

from .._native.vcpu import STATE_SIZE, STATE_VERSION, check_state_blob
from .._native.vm import CHIP_SIZES
from ..core.memory import PAGE_SIZE, PageImage, SlotImage
from ..core.setup_region import WRITTEN
from ..errors import HypervisorError
from ..x86.cpuid import CpuidEntry
from ..x86.modes import MODES

MAGIC = b"PYHVSNAP"
FORMAT_MAJOR = 1
FORMAT_MINOR = 2          # 1.1: irqchip/PIT state ("chips"); 1.2: "hardened"
MAX_SLOT_IMAGE = 1 << 38      # 256 GiB: a slot no snapshot file may claim beyond
MAX_VCPU_ID = 1023             # the highest vCPU id a snapshot file may name
_PREFIX = struct.Struct("<8sHHI")
_U64 = struct.Struct("<Q")
_RUN = struct.Struct("<QQ")


class SnapshotFormatError(HypervisorError, ValueError):
    """A snapshot file is corrupt, truncated, from a newer pyhv, or not a snapshot at all."""


@dataclass
class VcpuImage:
    """One vCPU of a snapshot: its kernel state, CPUID table and pyhv mode."""

    id: int
    mode: str | None
    stubs: bool
    cpuid: tuple[CpuidEntry, ...] = field(repr=False)
    state: bytes = field(repr=False)          # the C core's struct pyhv_vcpu_state


@dataclass
class Snapshot:
    """Everything needed to bring a partition back to one moment, or to rebuild it."""

    slots: list[SlotImage]
    vcpus: list[VcpuImage]
    setup_base: int
    setup_written: str | None
    devices: dict[str, dict[str, Any]]         # name -> state of pyhv's Python devices
    pyhv_version: str = ""
    chips: dict[str, bytes] = field(default_factory=dict)   # in-kernel irqchip / PIT state
    hardened: bool = False                                  # Partition(hardened=True)

    def layout(self) -> tuple[tuple[int, int, bool], ...]:
        return tuple((s.gpa, s.size, s.readonly) for s in self.slots)

    @property
    def memory_bytes(self) -> int:
        """Bytes of guest memory the snapshot holds (touched pages only)."""
        return sum(s.image.populated_bytes for s in self.slots)

    # -- disk ------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the snapshot to ``path`` (see the module docstring for the format).  The
        file appears complete or not at all."""
        for s in self.slots:   # keep only pages with data
            s.image.drop_zero_pages()
        header = {
            "pyhv_version": self.pyhv_version,
            "state_size": STATE_SIZE,
            "state_version": STATE_VERSION,
            "setup_base": self.setup_base,
            "setup_written": self.setup_written,
            "slots": [{"gpa": s.gpa, "size": s.size, "readonly": s.readonly,
                       "dirty_log": s.dirty_log} for s in self.slots],
            "vcpus": [{"id": v.id, "mode": v.mode, "stubs": v.stubs,
                       "cpuid": [list(_cpuid_tuple(e)) for e in v.cpuid]} for v in self.vcpus],
            "fast_ports": {},           # never part of a snapshot; older pyhv reads it
            "devices": self.devices,
            "chips": {name: state.hex() for name, state in self.chips.items()},
            "hardened": self.hardened,
        }
        blob = json.dumps(header, sort_keys=True).encode()
        tmp = f"{os.fspath(path)}.tmp{os.getpid()}"
        digest = hashlib.sha256()
        try:
            with open(tmp, "wb") as f:
                def put(data: bytes | memoryview) -> None:
                    digest.update(data)
                    f.write(data)
                put(_PREFIX.pack(MAGIC, FORMAT_MAJOR, FORMAT_MINOR, len(blob)))
                put(blob)
                for s in self.slots:
                    runs = s.image.runs()
                    put(_U64.pack(len(runs)))
                    put(b"".join(_RUN.pack(first, n) for first, n in runs))
                    for first, n in runs:
                        put(s.image.data.view(first * PAGE_SIZE, n * PAGE_SIZE))
                for v in self.vcpus:
                    put(v.state)
                f.write(digest.digest())
                f.flush()
                os.fsync(f.fileno())    # on disk before the rename: complete after a crash too
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Snapshot:
        """Read a snapshot written by :meth:`save`; refuses newer, foreign or damaged files."""
        with open(path, "rb") as f:
            return _Reader(f, os.fspath(path)).read()


def _cpuid_tuple(e: CpuidEntry) -> tuple[int, ...]:
    return (e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx)


class _Reader:
    """Reads and checks a snapshot file, hashing as it goes."""

    def __init__(self, f: Any, name: str) -> None:
        self.f = f
        self.name = name
        self.digest = hashlib.sha256()
        self.total = os.fstat(f.fileno()).st_size

    def fail(self, why: str) -> SnapshotFormatError:
        return SnapshotFormatError(f"{self.name}: {why}")

    def take(self, n: int) -> bytes:
        data: bytes = self.f.read(n)
        if len(data) != n:
            raise self.fail("truncated")
        self.digest.update(data)
        return data

    def take_into(self, buffer: Any) -> None:
        view = memoryview(buffer)
        if self.f.readinto(view) != len(view):
            raise self.fail("truncated")
        self.digest.update(view)

    def check(self, ok: bool, why: str) -> None:
        if not ok:
            raise self.fail(why)

    def integer(self, value: Any, what: str, low: int = 0, high: int = (1 << 64) - 1) -> int:
        """``value`` if it is an integer (not a bool, float or string) in [low, high]."""
        self.check(type(value) is int and low <= value <= high, f"implausible {what} {value!r}")
        return int(value)

    def flag(self, value: Any, what: str) -> bool:
        self.check(type(value) is bool, f"{what} is not true or false")
        return bool(value)

    def read(self) -> Snapshot:
        if self.total < _PREFIX.size + 32:
            raise self.fail("too short to be a pyhv snapshot")
        magic, major, minor, length = _PREFIX.unpack(self.take(_PREFIX.size))
        if magic != MAGIC:
            raise self.fail("not a pyhv snapshot (bad magic)")
        if major > FORMAT_MAJOR:
            raise self.fail(f"snapshot format {major}.{minor} is newer than this pyhv reads "
                            f"({FORMAT_MAJOR}.x): upgrade pyhv")
        if length > self.total:
            raise self.fail("header length beyond the end of the file")
        try:
            snap = self._header(json.loads(self.take(length)))
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError,
                RecursionError) as exc:
            # RecursionError: deeply nested JSON; OverflowError: 1e999 where a number belongs
            if isinstance(exc, SnapshotFormatError):
                raise
            raise self.fail(f"malformed header ({type(exc).__name__}: {exc})"[:300]) from None
        expected = self.digest.digest()
        stored = self.f.read(32)
        if stored != expected:
            raise self.fail("checksum mismatch: the file is damaged")
        if self.f.read(1):
            raise self.fail("data after the checksum")
        return snap

    def _header(self, header: Any) -> Snapshot:
        self.check(isinstance(header, dict), "the header is not a JSON object")
        if header["state_size"] != STATE_SIZE or header["state_version"] != STATE_VERSION:
            raise self.fail("its vCPU state layout differs from this pyhv's")
        self.check(isinstance(header["slots"], list) and isinstance(header["vcpus"], list),
                   "slots and vCPUs are not lists")
        if len(header["slots"]) > 4096 or len(header["vcpus"]) > 1024:
            raise self.fail("implausible numbers of slots or vCPUs")
        setup_base = self.integer(header["setup_base"], "setup_base", high=(1 << 32) - 1)
        self.check(setup_base % PAGE_SIZE == 0, f"setup_base {setup_base:#x} not page-aligned")
        setup_written = header["setup_written"]
        self.check(setup_written in WRITTEN, f"unknown setup_written {setup_written!r}")
        devices = header["devices"]
        self.check(isinstance(devices, dict) and all(
            isinstance(k, str) and isinstance(v, dict) for k, v in devices.items()),
            "device states are not a map of names to states")
        self._legacy_fast_ports(header.get("fast_ports", {}))
        chips = {}
        raw_chips = header.get("chips", {})
        self.check(isinstance(raw_chips, dict), "damaged interrupt-controller state")
        for name, state in raw_chips.items():
            self.check(name in CHIP_SIZES and isinstance(state, str),
                       "damaged interrupt-controller state")
            chips[name] = bytes.fromhex(state)
            self.check(len(chips[name]) == CHIP_SIZES[name],
                       "damaged interrupt-controller state")
        version = header["pyhv_version"]
        self.check(isinstance(version, str), "pyhv_version is not a string")
        hardened = self.flag(header.get("hardened", False), "hardened")
        slots = [self._slot(s) for s in header["slots"]]
        spans = sorted((s.gpa, s.gpa + s.size) for s in slots)
        for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
            self.check(end <= start, f"memory slots overlap at {start:#x}")
        vcpus = [self._vcpu(v) for v in header["vcpus"]]
        ids = [v.id for v in vcpus]
        self.check(len(set(ids)) == len(ids), "two vCPUs with one id")
        return Snapshot(slots, vcpus, setup_base, setup_written, dict(devices), version,
                        chips, hardened)

    def _legacy_fast_ports(self, ports: Any) -> None:
        """Older files list fast-path ports, which nothing restores: the list is ignored but
        must still be well formed (port -> [kind, value])."""
        self.check(isinstance(ports, dict), "damaged fast-port list")
        for port, kind_value in ports.items():
            self.check(isinstance(port, str) and port.isdigit() and int(port) <= 0xFFFF and
                       isinstance(kind_value, list) and len(kind_value) == 2,
                       "damaged fast-port list")
            for part in kind_value:
                self.integer(part, "fast-port entry", high=(1 << 32) - 1)

    def _slot(self, s: dict[str, Any]) -> SlotImage:
        self.check(isinstance(s, dict), "a slot is not a JSON object")
        gpa = self.integer(s["gpa"], "slot address", high=1 << 52)
        size = self.integer(s["size"], "slot size", high=MAX_SLOT_IMAGE)
        readonly, dirty_log = self.flag(s["readonly"], "readonly"), \
            self.flag(s["dirty_log"], "dirty_log")
        if size <= 0 or size % PAGE_SIZE or gpa % PAGE_SIZE or gpa + size > 1 << 52:
            raise self.fail(f"implausible slot [{gpa:#x}, +{size:#x})")
        try:
            image = PageImage(size)
        except HypervisorError as exc:
            raise self.fail(f"cannot map a {size:#x}-byte slot image ({exc})") from None
        (count,) = _U64.unpack(self.take(8))
        if count > image.pages or count * _RUN.size > self.total:
            raise self.fail("implausible page-run count")
        raw = self.take(count * _RUN.size)
        for i in range(count):
            first, n = _RUN.unpack_from(raw, i * _RUN.size)
            if n == 0 or first + n > image.pages:
                raise self.fail(f"page run {first}+{n} outside its slot")
            self.take_into(image.data.view(first * PAGE_SIZE, n * PAGE_SIZE))
            image.populated.set_range(first, n)
        return SlotImage(gpa, size, readonly, dirty_log, image)

    def _vcpu(self, v: dict[str, Any]) -> VcpuImage:
        self.check(isinstance(v, dict), "a vCPU is not a JSON object")
        vcpu_id = self.integer(v["id"], "vCPU id", high=MAX_VCPU_ID)
        mode = v["mode"]
        self.check(mode is None or mode in MODES, f"unknown vCPU mode {mode!r}")
        stubs = self.flag(v["stubs"], "stubs")
        self.check(isinstance(v["cpuid"], list) and len(v["cpuid"]) <= 4096,
                   "damaged CPUID table")
        cpuid = []
        for entry in v["cpuid"]:
            self.check(isinstance(entry, list) and len(entry) == 7, "damaged CPUID table")
            cpuid.append(CpuidEntry(*(self.integer(x, "CPUID value", high=(1 << 32) - 1)
                                      for x in entry)))
        state = self.take(STATE_SIZE)
        if not check_state_blob(state):
            raise self.fail("damaged vCPU state")
        return VcpuImage(vcpu_id, mode, stubs, tuple(cpuid), state)


