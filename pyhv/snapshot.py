"""Snapshots: a partition's memory, vCPU state and pyhv device state, in memory or on disk.

>>> snap = part.snapshot()                  # the guest must not be running (pause() it)
>>> part.run(); part.restore(snap)          # back to the snapshot: only dirtied pages copy
>>> snap.save("guest.pyhvsnap")
>>> other = pyhv.Partition.from_snapshot(pyhv.Snapshot.load("guest.pyhvsnap"))

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

import errno
import hashlib
import json
import os
import struct
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._ffi import ffi, lib
from .errors import HypervisorError, InvalidArgument, StateError, check_rc
from .memory import PAGE_SIZE, MemorySlot, allocate_host_memory, free_host_memory
from .modes import MODES
from .system import CpuidEntry

if TYPE_CHECKING:
    from .partition import Partition

MAGIC = b"PYHVSNAP"
FORMAT_MAJOR = 1
FORMAT_MINOR = 2          # 1.1: irqchip/PIT state ("chips"); 1.2: "hardened"
STATE_SIZE = ffi.sizeof("struct pyhv_vcpu_state")
MAX_SLOT_IMAGE = 1 << 38      # 256 GiB: a slot no snapshot file may claim beyond
MAX_VCPU_ID = 1023             # the highest vCPU id a snapshot file may name
_SETUP_WRITTEN = (None, "protected", "long")
_PREFIX = struct.Struct("<8sHHI")
_U64 = struct.Struct("<Q")
_RUN = struct.Struct("<QQ")


class SnapshotFormatError(HypervisorError, ValueError):
    """A snapshot file is corrupt, truncated, from a newer pyhv, or not a snapshot at all."""


def _words(pages: int) -> int:
    return (pages + 63) // 64


class PageImage:
    """A slot's memory as of a snapshot: a private host mapping (untouched pages stay
    unallocated and read as zero) and a bitmap of the pages that may hold data."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.pages = size // PAGE_SIZE
        self.data = allocate_host_memory(size)
        self._finalizer = weakref.finalize(self, free_host_memory, self.data, size)
        self.populated = ffi.new("uint64_t[]", max(_words(self.pages), 1))

    def bitmap_copy(self) -> Any:
        copy = ffi.new("uint64_t[]", max(_words(self.pages), 1))
        ffi.memmove(copy, self.populated, ffi.sizeof(self.populated))
        return copy

    def runs(self) -> list[tuple[int, int]]:
        """(first page, page count) of each run of populated pages."""
        runs: list[tuple[int, int]] = []
        bits = self.populated
        page = 0
        while page < self.pages:
            word = bits[page // 64] >> (page % 64)
            if not word:
                page = (page // 64 + 1) * 64
                continue
            page += (word & -word).bit_length() - 1
            start = page
            while page < self.pages and bits[page // 64] >> (page % 64) & 1:
                page += 1
            runs.append((start, page - start))
        return runs

    @property
    def populated_bytes(self) -> int:
        words = ffi.unpack(self.populated, len(self.populated))
        return sum(word.bit_count() for word in words) * PAGE_SIZE


@dataclass
class SlotImage:
    """One memory slot of a snapshot."""

    gpa: int
    size: int
    readonly: bool
    dirty_log: bool
    image: PageImage = field(repr=False)


@dataclass
class VcpuImage:
    """One vCPU of a snapshot: its kernel state, CPUID table and pyhv mode."""

    id: int
    mode: str | None
    stubs: bool
    cpuid: tuple[CpuidEntry, ...] = field(repr=False)
    state: Any = field(repr=False)            # struct pyhv_vcpu_state *


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
            lib.pyhv_pages_drop_zero(s.image.data, s.image.populated, s.image.pages)
        header = {
            "pyhv_version": self.pyhv_version,
            "state_size": STATE_SIZE,
            "state_version": lib.PYHV_STATE_VERSION,
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
                        put(ffi.buffer(s.image.data + first * PAGE_SIZE, n * PAGE_SIZE))
                for v in self.vcpus:
                    put(ffi.buffer(v.state))
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
        data = self.f.read(n)
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
        if header["state_size"] != STATE_SIZE or \
                header["state_version"] != lib.PYHV_STATE_VERSION:
            raise self.fail("its vCPU state layout differs from this pyhv's")
        self.check(isinstance(header["slots"], list) and isinstance(header["vcpus"], list),
                   "slots and vCPUs are not lists")
        if len(header["slots"]) > 4096 or len(header["vcpus"]) > 1024:
            raise self.fail("implausible numbers of slots or vCPUs")
        setup_base = self.integer(header["setup_base"], "setup_base", high=(1 << 32) - 1)
        self.check(setup_base % PAGE_SIZE == 0, f"setup_base {setup_base:#x} not page-aligned")
        setup_written = header["setup_written"]
        self.check(setup_written in _SETUP_WRITTEN, f"unknown setup_written {setup_written!r}")
        devices = header["devices"]
        self.check(isinstance(devices, dict) and all(
            isinstance(k, str) and isinstance(v, dict) for k, v in devices.items()),
            "device states are not a map of names to states")
        self._legacy_fast_ports(header.get("fast_ports", {}))
        chips = {}
        raw_chips = header.get("chips", {})
        self.check(isinstance(raw_chips, dict), "damaged interrupt-controller state")
        for name, state in raw_chips.items():
            self.check(name in _CHIP_SIZES and isinstance(state, str),
                       "damaged interrupt-controller state")
            chips[name] = bytes.fromhex(state)
            self.check(len(chips[name]) == _CHIP_SIZES[name], "damaged interrupt-controller state")
        version = header["pyhv_version"]
        self.check(isinstance(version, str), "pyhv_version is not a string")
        hardened = self.flag(header.get("hardened", False), "hardened")
        slots = [self._slot(s) for s in header["slots"]]
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
            self.take_into(ffi.buffer(image.data + first * PAGE_SIZE, n * PAGE_SIZE))
            lib.pyhv_bitmap_set(image.populated, first, n)
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
        state = ffi.new("struct pyhv_vcpu_state *")
        self.take_into(ffi.buffer(state))
        if state.version != lib.PYHV_STATE_VERSION or \
                state.nmsrs > lib.PYHV_STATE_MAX_MSRS:
            raise self.fail("damaged vCPU state")
        return VcpuImage(vcpu_id, mode, stubs, tuple(cpuid), state)


def capture_slot(pointer: Any, size: int) -> PageImage:
    """Copy the touched pages of a slot's host memory into a new image."""
    image = PageImage(size)
    check_rc(lib.pyhv_memory_resident(pointer, image.pages, image.populated), "mincore")
    lib.pyhv_copy_pages(image.data, pointer, image.bitmap_copy(), image.pages)
    return image


# -- taking and restoring (Partition's snapshot/restore/from_snapshot call these) ----------
# Pages of each dirty_log=True slot the guest wrote that Partition.dirty_pages() has not
# reported yet.  KVM's log has one reader's worth of state (reading it resets it): whoever reads
# it (snapshot, restore, dirty_pages) ORs what it read in here.
_user_dirty: weakref.WeakKeyDictionary[MemorySlot, Any] = weakref.WeakKeyDictionary()


def user_dirty(slot: MemorySlot) -> Any:
    """The bitmap of ``slot``'s guest writes kept for dirty_pages(); NULL for slots without
    ``dirty_log``, whose log is pyhv's own."""
    if not slot.dirty_log:
        return ffi.NULL
    bitmap = _user_dirty.get(slot)
    if bitmap is None:
        bitmap = _user_dirty[slot] = ffi.new("uint64_t[]", max(_words(slot.size // PAGE_SIZE),
                                                                1))
    return bitmap


def take_dirty_pages(partition: Partition, slot: MemorySlot) -> Any:
    """The pages of ``slot`` (a dirty_log=True one) the guest wrote since the last call, as a
    bitmap; the current restore tracking keeps what the log said too."""
    pages = slot.size // PAGE_SIZE
    words = max(_words(pages), 1)
    tracker = partition._tracker
    changed = ffi.NULL
    if tracker is not None and tracker.layout_version == partition._layout_version:
        changed = tracker.changed[slot.slot]
    fresh = ffi.new("uint64_t[]", words)
    user = user_dirty(slot)
    check_rc(lib.pyhv_partition_dirty_merge(partition._vm_fd, slot.slot, changed, fresh, pages,
                                            user), "KVM_GET_DIRTY_LOG")
    lib.pyhv_bitmap_move(fresh, user, words)
    return fresh


class DirtyTracker:
    """Pages of each slot changed since a base snapshot: the kernel's dirty log records the
    guest's writes, the slots' own bitmaps the host's.  Restoring the base copies only those."""

    def __init__(self, partition: Partition, base: Snapshot) -> None:
        self.base = base
        self.layout_version = partition._layout_version    # slots and vCPUs when made
        self.changed: dict[int, Any] = {}
        self._scratch: dict[int, Any] = {}
        vm_fd = partition._vm_fd
        for slot in partition.memory.slots:
            pages = slot.size // PAGE_SIZE
            words = max(_words(pages), 1)
            self.changed[slot.slot] = ffi.new("uint64_t[]", words)
            self._scratch[slot.slot] = scratch = ffi.new("uint64_t[]", words)
            if not slot.readonly and not slot._logging:
                flags = lib.KVM_MEM_LOG_DIRTY_PAGES
                check_rc(lib.pyhv_partition_set_slot(vm_fd, slot.slot, flags, slot.gpa,
                                                     slot.size, slot._pointer),
                         "turning on dirty logging")
                slot._logging = True
            # start from a clean log (what it held stays for dirty_pages()) and host bitmap
            if slot._logging:
                check_rc(lib.pyhv_partition_dirty_merge(vm_fd, slot.slot, ffi.NULL, scratch,
                                                        pages, user_dirty(slot)),
                         "KVM_GET_DIRTY_LOG")
            ffi.memmove(slot._host_dirty, bytes(words * 8), words * 8)


_CHIPS = {"pic_master": 0, "pic_slave": 1, "ioapic": 2}
_CHIP_SIZES = {"pic_master": 512, "pic_slave": 512, "ioapic": 512, "pit": 112}


def save_chips(partition: Partition) -> dict[str, bytes]:
    chips: dict[str, bytes] = {}
    vm_fd = partition._vm_fd
    if partition.irqchip:
        for name, chip in _CHIPS.items():
            buf = ffi.new("uint8_t[]", _CHIP_SIZES[name])
            check_rc(lib.pyhv_partition_get_irqchip(vm_fd, chip, buf), f"KVM_GET_IRQCHIP {name}")
            chips[name] = bytes(buf)
    if partition.pit:
        buf = ffi.new("uint8_t[]", _CHIP_SIZES["pit"])
        check_rc(lib.pyhv_partition_get_pit(vm_fd, buf), "KVM_GET_PIT2")
        chips["pit"] = bytes(buf)
    return chips


def load_chips(partition: Partition, chips: dict[str, bytes]) -> None:
    vm_fd = partition._vm_fd
    for name, state in chips.items():
        if name == "pit":
            check_rc(lib.pyhv_partition_set_pit(vm_fd, state), "KVM_SET_PIT2")
        else:
            check_rc(lib.pyhv_partition_set_irqchip(vm_fd, _CHIPS[name], state),
                     f"KVM_SET_IRQCHIP {name}")


def _optional_parts(partition: Partition) -> int:
    """The optional vCPU-state parts the backend offers (the hypervisor caches the answers),
    so that saving does not try, and fail, the others every time."""
    caps = partition.hypervisor.capability
    return ((lib.PYHV_HAS_XCRS if caps("KVM_CAP_XCRS") else 0) |
            (lib.PYHV_HAS_DEBUGREGS if caps(lib.PYHV_KVM_CAP_DEBUGREGS) else 0))


def take_snapshot(partition: Partition) -> Snapshot:
    """A :class:`Snapshot` of ``partition`` (which is not running)."""
    from . import __version__
    msrs = partition._state_msrs()
    optional = _optional_parts(partition)
    vcpus = []
    for vcpu in partition.vcpus:
        state = ffi.new("struct pyhv_vcpu_state *")
        rc = lib.pyhv_vcpu_save_state(vcpu._handle(), msrs, len(msrs), optional, state)
        if rc == -errno.EBUSY:
            raise StateError(f"vCPU {vcpu.id} is inside an instruction that needs another exit "
                             "(e.g. the second half of a 16-byte MMIO access): run it to that "
                             "exit, answer it, and take the snapshot after")
        check_rc(rc, f"saving vCPU {vcpu.id}")
        vcpus.append(VcpuImage(vcpu.id, vcpu.mode, vcpu._stubs, vcpu.get_cpuid(), state))
    slots = [SlotImage(s.gpa, s.size, s.readonly, s.dirty_log, capture_slot(s._pointer, s.size))
             for s in partition.memory.slots]
    devices = {name: dev.get_state() for name, dev in partition.devices.items()}
    snap = Snapshot(slots, vcpus, partition.setup_base, partition._setup_written,
                    devices, __version__, save_chips(partition), partition.hardened)
    partition._tracker = DirtyTracker(partition, snap)
    return snap


def check_layout(partition: Partition, snap: Snapshot) -> None:
    if snap.setup_base != partition.setup_base:
        raise InvalidArgument("the snapshot's setup_base differs from this partition's: "
                              f"{snap.setup_base:#x} vs {partition.setup_base:#x}")
    if snap.hardened != partition.hardened:
        raise InvalidArgument(f"the snapshot was taken with hardened={snap.hardened}, this "
                              f"partition has hardened={partition.hardened}")
    mine = tuple((s.gpa, s.size, s.readonly) for s in partition.memory.slots)
    if mine != snap.layout():
        raise InvalidArgument("the snapshot's memory slots differ from this partition's: "
                              f"{list(snap.layout())} vs {list(mine)}")
    chips = (set(_CHIPS) if partition.irqchip else set()) | ({"pit"} if partition.pit else set())
    if set(snap.chips) != chips:
        raise InvalidArgument("the snapshot's interrupt controllers differ from this partition's")
    if [v.id for v in partition.vcpus] != [v.id for v in snap.vcpus]:
        raise InvalidArgument("the snapshot's vCPUs differ from this partition's: "
                              f"{[v.id for v in snap.vcpus]} vs {[v.id for v in partition.vcpus]}")


def check_restorable(partition: Partition, snap: Snapshot) -> bool:
    """Raise unless ``snap`` fits ``partition`` (nothing is changed); returns whether the
    tracked (fast) restore applies: ``snap`` is the base of the dirty tracking."""
    tracker = partition._tracker
    fast = (tracker is not None and tracker.base is snap
            and tracker.layout_version == partition._layout_version)
    if not fast:
        check_layout(partition, snap)
    return fast


def _restore_memory(partition: Partition, snap: Snapshot, fast: bool) -> int:
    """Copy back the pages that may differ from ``snap``; returns how many were copied."""
    tracker = partition._tracker
    copied = 0
    for slot, image in zip(partition.memory.slots, snap.slots, strict=True):
        pages = image.image.pages
        if fast:
            assert tracker is not None
            n = lib.pyhv_restore_slot(partition._vm_fd, slot.slot, slot._logging,
                                      slot._pointer, image.image.data,
                                      tracker.changed[slot.slot], tracker._scratch[slot.slot],
                                      slot._host_dirty, user_dirty(slot), pages)
            copied += check_rc(n, "KVM_GET_DIRTY_LOG")
            continue
        # any other snapshot: whatever may differ, pages touched now or holding data there
        changed = image.image.bitmap_copy()
        check_rc(lib.pyhv_memory_resident(slot._pointer, pages, changed), "page residency")
        copied += lib.pyhv_copy_pages(slot._pointer, image.image.data, changed, pages)
    return copied


def restore_snapshot(partition: Partition, snap: Snapshot, fast: bool) -> int:
    """Bring ``partition`` (not running, checked by :func:`check_restorable`) back to
    ``snap``; returns the number of pages copied."""
    copied = _restore_memory(partition, snap, fast)
    # A vCPU stopped inside an instruction (string IO, a split MMIO access) must finish it
    # before its state can be loaded; that runs after the memory copy, so the instruction
    # at its RIP is already the snapshot's (a random `rep insb` would otherwise go on for
    # up to 2^32 rounds).  What the finish wrote is copied back in a second, short pass.
    finished = 0
    for vcpu in partition.vcpus:
        finished |= check_rc(lib.pyhv_vcpu_discard_pending(vcpu._handle()),
                             f"finishing the pending exit of vCPU {vcpu.id}")
    if finished:
        copied += _restore_memory(partition, snap, fast)
    for vcpu, vcpu_image in zip(partition.vcpus, snap.vcpus, strict=True):
        check_rc(lib.pyhv_vcpu_load_state(vcpu._handle(), vcpu_image.state),
                 f"loading the state of vCPU {vcpu.id}")
        vcpu.mode = vcpu_image.mode
        if vcpu_image.stubs:
            vcpu._enable_stubs()
        else:          # the snapshot's vCPU had no stubs: halts there are plain halts
            vcpu._stubs = False
            vcpu._stub_lo = vcpu._stub_hi = partition.setup_base
    load_chips(partition, snap.chips)
    for name, state in snap.devices.items():
        device = partition.devices.get(name)
        if device is not None:
            device.set_state(state)
    partition._setup_written = snap.setup_written
    if not fast:
        partition._tracker = DirtyTracker(partition, snap)
    return copied
