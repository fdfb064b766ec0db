"""Guest-physical memory: slots (host mappings registered with KVM) and bounds-checked access.

>>> part = pyhv.Partition(memory="16M")                 # doctest: +SKIP
>>> part.memory.write(0x1000, b"\\xf4")                  # doctest: +SKIP
>>> part.memory.read_u8(0x1000)                         # doctest: +SKIP
244
"""

from __future__ import annotations

import bisect
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ._ffi import ffi, lib
from .errors import GuestMemoryError, InvalidArgument

PAGE_SIZE = 4096

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(value: int | str) -> int:
    """Bytes from an int or a string such as ``"64K"``, ``"16M"``, ``"1G"`` or ``"2MiB"``.

    >>> parse_size("16M"), parse_size(4096), parse_size("1GiB")
    (16777216, 4096, 1073741824)
    """
    if type(value) is int:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return value                  # an int subclass
    if not isinstance(value, str):
        raise InvalidArgument(f"a size must be an int or a string like '16M', not {value!r}")
    match = _SIZE_RE.match(value)
    if not match:
        raise InvalidArgument(f"cannot read {value!r} as a size (try '64K', '16M' or '1G')")
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


@dataclass(eq=False)
class MemorySlot:
    """A range of guest-physical memory backed by a host mapping (one KVM memory slot).

    ``readonly`` slots make guest writes exit as :class:`pyhv.exits.MmioWrite`; the host may
    still write them (that is how a ROM gets its contents).
    """

    slot: int
    gpa: int
    size: int
    readonly: bool
    dirty_log: bool
    host_address: int = field(repr=False)
    _pointer: Any = field(repr=False, compare=False, default=None)
    # pages the host wrote (the kernel's dirty log only sees the guest's writes)
    _host_dirty: Any = field(repr=False, compare=False, default=None)
    _logging: bool = field(repr=False, compare=False, default=False)   # KVM logs this slot

    def __post_init__(self) -> None:
        self._host_dirty = ffi.new("uint64_t[]", max((self.size // PAGE_SIZE + 63) // 64, 1))
        self._logging = self.dirty_log

    def _touched(self, offset: int, length: int) -> None:
        if length:
            first = offset // PAGE_SIZE
            lib.pyhv_bitmap_set(self._host_dirty, first,
                                (offset + length - 1) // PAGE_SIZE - first + 1)

    @property
    def end(self) -> int:
        """First GPA past the slot."""
        return self.gpa + self.size

    def __contains__(self, gpa: int) -> bool:
        return self.gpa <= gpa < self.end


class GuestMemory:
    """Reads and writes guest-physical memory across all of a partition's slots.

    Every access is checked: a range that touches a GPA with no slot behind it raises
    :class:`pyhv.GuestMemoryError` and changes nothing.  A range may span adjacent slots.
    """

    def __init__(self) -> None:
        self._slots: list[MemorySlot] = []     # sorted by gpa, never overlapping
        self._starts: list[int] = []

    # -- slot bookkeeping (Partition calls these) -----------------------------------------
    def _add(self, slot: MemorySlot) -> None:
        i = bisect.bisect(self._starts, slot.gpa)
        self._slots.insert(i, slot)
        self._starts.insert(i, slot.gpa)

    def _remove(self, slot: MemorySlot) -> None:
        i = self._slots.index(slot)
        del self._slots[i]
        del self._starts[i]

    def overlapping(self, gpa: int, size: int) -> MemorySlot | None:
        """The first slot overlapping ``[gpa, gpa+size)``, or None."""
        i = bisect.bisect(self._starts, gpa) - 1
        for slot in self._slots[max(i, 0):]:
            if slot.gpa >= gpa + size:
                break
            if slot.end > gpa:
                return slot
        return None

    def slot_at(self, gpa: int) -> MemorySlot | None:
        """The slot holding ``gpa``, or None."""
        i = bisect.bisect(self._starts, gpa) - 1
        if i >= 0 and gpa < self._slots[i].end:
            return self._slots[i]
        return None

    @property
    def slots(self) -> tuple[MemorySlot, ...]:
        return tuple(self._slots)

    def __iter__(self) -> Iterator[MemorySlot]:
        return iter(tuple(self._slots))

    # -- access ---------------------------------------------------------------------------
    def _pieces(self, gpa: int, size: int) -> list[tuple[MemorySlot, int, int]]:
        """(slot, offset in slot, length) pieces covering [gpa, gpa+size), or raise."""
        if isinstance(gpa, bool) or not isinstance(gpa, int) or gpa < 0:
            raise InvalidArgument(f"a guest-physical address must be an int >= 0, not {gpa!r}")
        if size < 0:
            raise InvalidArgument(f"size must be >= 0, not {size}")
        pieces = []
        at, left = gpa, size
        while left:
            slot = self.slot_at(at)
            if slot is None:
                raise GuestMemoryError(gpa, size, f"nothing at {at:#x}")
            n = min(left, slot.end - at)
            pieces.append((slot, at - slot.gpa, n))
            at += n
            left -= n
        return pieces

    def read(self, gpa: int, size: int) -> bytes:
        """``size`` bytes from guest-physical address ``gpa``."""
        pieces = self._pieces(gpa, size)
        if len(pieces) == 1:
            slot, offset, n = pieces[0]
            return ffi.buffer(slot._pointer + offset, n)[:]
        return b"".join(ffi.buffer(s._pointer + o, n)[:] for s, o, n in pieces)

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        """Copy ``data`` to guest-physical address ``gpa`` (read-only slots included)."""
        view = memoryview(data).cast("B")
        pieces = self._pieces(gpa, len(view))
        done = 0
        for slot, offset, n in pieces:
            ffi.memmove(slot._pointer + offset, view[done:done + n], n)
            slot._touched(offset, n)
            done += n

    def fill(self, gpa: int, size: int, byte: int = 0) -> None:
        """Set ``size`` bytes at ``gpa`` to ``byte``."""
        if not 0 <= byte <= 0xFF:
            raise InvalidArgument(f"fill byte must be 0..255, not {byte}")
        for slot, offset, n in self._pieces(gpa, size):
            ffi.buffer(slot._pointer + offset, n)[:] = bytes([byte]) * n
            slot._touched(offset, n)

    def _unpack(self, fmt: str, gpa: int) -> int:
        return struct.unpack(fmt, self.read(gpa, struct.calcsize(fmt)))[0]

    def _pack(self, fmt: str, gpa: int, value: int) -> None:
        try:
            data = struct.pack(fmt, value)
        except struct.error as exc:
            raise InvalidArgument(f"{value!r} does not fit: {exc}") from None
        self.write(gpa, data)

    # little-endian integers at a GPA: read_u8/16/32/64 and write_u8/16/32/64
    def read_u8(self, gpa: int) -> int:
        return self._unpack("<B", gpa)

    def read_u16(self, gpa: int) -> int:
        return self._unpack("<H", gpa)

    def read_u32(self, gpa: int) -> int:
        return self._unpack("<I", gpa)

    def read_u64(self, gpa: int) -> int:
        return self._unpack("<Q", gpa)

    def write_u8(self, gpa: int, value: int) -> None:
        self._pack("<B", gpa, value)

    def write_u16(self, gpa: int, value: int) -> None:
        self._pack("<H", gpa, value)

    def write_u32(self, gpa: int, value: int) -> None:
        self._pack("<I", gpa, value)

    def write_u64(self, gpa: int, value: int) -> None:
        self._pack("<Q", gpa, value)


def allocate_host_memory(size: int) -> Any:
    """Map ``size`` bytes of lazily backed anonymous host memory; returns a cffi pointer."""
    out = ffi.new("void **")
    rc = lib.pyhv_memory_alloc(size, out)
    if rc < 0:
        from .errors import KvmError
        raise KvmError(-rc, f"mmap of {size:#x} bytes of guest memory")
    return ffi.cast("uint8_t *", out[0])


def free_host_memory(pointer: Any, size: int) -> None:
    lib.pyhv_memory_free(pointer, size)
