"""x86 page-table walks in Python: guest-virtual to guest-physical addresses in every paging
mode (none, 32-bit, PAE, 4-level and 5-level long mode), and a dump of what is mapped.

The tables are read through a function ``read(gpa, size) -> bytes | None`` (None where no
memory is), so a walk never touches memory outside the guest's, and a table that points
anywhere (a hostile guest's) ends the walk as "not mapped".

>>> import struct
>>> memory = bytearray(0x4000)
>>> def read(gpa, size):
...     return bytes(memory[gpa:gpa + size]) if gpa + size <= len(memory) else None
>>> # 32-bit paging: CR3 = 0x1000; the directory's entry 0 points at a table at 0x2000
>>> struct.pack_into("<I", memory, 0x1000, 0x2000 | 0b111)
>>> struct.pack_into("<I", memory, 0x2000 + 5 * 4, 0x3000 | 0b011)   # page 5 -> 0x3000
>>> regs = PagingRegisters(cr0=0x80000001, cr3=0x1000, cr4=0, efer=0)
>>> hex(walk(regs, 0x5123, read).gpa), walk(regs, 0x6000, read)
('0x3123', None)
>>> [str(m) for m in mappings(regs, read)]
['0x5000-0x6000 -> 0x3000 rwx 4K']
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

__all__ = ["Mapping", "PagingRegisters", "Translation", "mappings", "paging_mode", "walk"]

Reader = Callable[[int, int], "bytes | None"]

_CR0_PG = 1 << 31
_CR4_PSE, _CR4_PAE, _CR4_LA57 = 1 << 4, 1 << 5, 1 << 12
_EFER_LMA = 1 << 10
_P, _RW, _US, _PS = 1, 1 << 1, 1 << 2, 1 << 7
_NX = 1 << 63
_ADDRESS = 0x000F_FFFF_FFFF_F000          # bits 12-51: a table's or page's frame
# a dump visits at most this many present entries (a hostile table can point at itself)
MAX_VISITS = 1 << 18


@dataclass(frozen=True)
class PagingRegisters:
    """The registers that choose the paging mode and the root table."""

    cr0: int
    cr3: int
    cr4: int
    efer: int


@dataclass(frozen=True)
class Translation:
    """Where a guest-virtual address lies: ``gpa``, the size of its page, and the access the
    tables allow (writable, user, executable)."""

    gpa: int
    page_size: int
    writable: bool
    user: bool
    executable: bool


@dataclass(frozen=True)
class Mapping:
    """A run of virtual pages mapped to contiguous physical ones with the same rights."""

    start: int
    end: int
    gpa: int
    page_size: int
    writable: bool
    user: bool
    executable: bool

    def __str__(self) -> str:
        rights = ("r" + ("w" if self.writable else "-") + ("x" if self.executable else "-"))
        size = {1 << 12: "4K", 1 << 21: "2M", 1 << 22: "4M", 1 << 30: "1G"}.get(
            self.page_size, hex(self.page_size))
        return (f"{self.start:#x}-{self.end:#x} -> {self.gpa:#x} {rights}"
                f"{' user' if self.user else ''} {size}")


def paging_mode(regs: PagingRegisters) -> str:
    """"none", "32-bit", "pae", "4-level" or "5-level"."""
    if not regs.cr0 & _CR0_PG:
        return "none"
    if regs.efer & _EFER_LMA:
        return "5-level" if regs.cr4 & _CR4_LA57 else "4-level"
    return "pae" if regs.cr4 & _CR4_PAE else "32-bit"


# per mode: (entry size, [(shift, index bits, large pages allowed at this level)], top mask)
def _levels(regs: PagingRegisters) -> tuple[int, list[tuple[int, int, bool]], int]:
    mode = paging_mode(regs)
    if mode == "32-bit":
        return 4, [(22, 10, bool(regs.cr4 & _CR4_PSE)), (12, 10, False)], 0xFFFFF000
    if mode == "pae":
        return 8, [(30, 2, False), (21, 9, True), (12, 9, False)], 0xFFFFFFE0
    top = [(48, 9, False)] if mode == "5-level" else []
    return 8, top + [(39, 9, False), (30, 9, True), (21, 9, True), (12, 9, False)], _ADDRESS


def _entry(read: Reader, gpa: int, size: int) -> int | None:
    data = read(gpa, size)
    if data is None or len(data) != size:
        return None
    return int(struct.unpack("<I" if size == 4 else "<Q", data)[0])


def _large_frame(entry: int, shift: int, size: int) -> int:
    if size == 4:       # a 4 MiB page: PSE-36 puts physical bits 32-39 in entry bits 13-20
        return (entry & 0xFFC00000) | ((entry >> 13) & 0xFF) << 32
    return entry & _ADDRESS & ~((1 << shift) - 1)


def _canonical(regs: PagingRegisters, gva: int) -> bool:
    bits = 57 if regs.cr4 & _CR4_LA57 else 48
    top = gva >> (bits - 1)
    return top == 0 or top == (1 << (65 - bits)) - 1


def walk(regs: PagingRegisters, gva: int, read: Reader) -> Translation | None:
    """Translate ``gva`` as the CPU would with these registers; None where it is not mapped
    (or the tables lie outside guest memory)."""
    mode = paging_mode(regs)
    if mode == "none":
        if not 0 <= gva < 1 << 32:
            return None
        return Translation(gva, 1 << 12, True, True, True)
    if mode in ("32-bit", "pae"):
        if not 0 <= gva < 1 << 32:
            return None
    elif not 0 <= gva < 1 << 64 or not _canonical(regs, gva):
        return None
    size, levels, top = _levels(regs)
    table = regs.cr3 & top
    writable = user = executable = True
    for depth, (shift, _bits, large_ok) in enumerate(levels):
        index = (gva >> shift) & ((1 << _bits) - 1)
        entry = _entry(read, table + index * size, size)
        if entry is None or not entry & _P:
            return None
        pdpte = mode == "pae" and depth == 0           # PAE's PDPTEs carry no rights
        if not pdpte:
            writable = writable and bool(entry & _RW)
            user = user and bool(entry & _US)
            executable = executable and not (size == 8 and entry & _NX)
        last = depth == len(levels) - 1
        if last or (large_ok and entry & _PS):
            frame = (entry & _ADDRESS if size == 8 else entry & 0xFFFFF000) if last else \
                _large_frame(entry, shift, size)
            return Translation(frame | (gva & ((1 << shift) - 1)), 1 << shift, writable, user,
                               executable)
        table = entry & (_ADDRESS if size == 8 else 0xFFFFF000)
    return None                                          # not reached


def mappings(regs: PagingRegisters, read: Reader, limit: int = 4096) -> list[Mapping]:
    """What the tables map, as runs of contiguous pages with the same rights, in address
    order; at most ``limit`` runs and :data:`MAX_VISITS` entries visited (a dump of hostile
    tables ends there).  Without paging: one run for the first 4 GiB."""
    mode = paging_mode(regs)
    if mode == "none":
        return [Mapping(0, 1 << 32, 0, 1 << 12, True, True, True)]
    out: list[Mapping] = []
    for m in _leaves(regs, read):
        last = out[-1] if out else None
        if last is not None and last.end == m.start and last.gpa + (last.end - last.start) == \
                m.gpa and (last.writable, last.user, last.executable, last.page_size) == \
                (m.writable, m.user, m.executable, m.page_size):
            out[-1] = Mapping(last.start, m.end, last.gpa, last.page_size, last.writable,
                              last.user, last.executable)
            continue
        if len(out) == limit:
            break
        out.append(m)
    return out


def _leaves(regs: PagingRegisters, read: Reader) -> Iterator[Mapping]:
    size, levels, top = _levels(regs)
    mode = paging_mode(regs)
    bits = 57 if mode == "5-level" else 48
    visits = 0

    def sign_extend(va: int) -> int:
        if size == 8 and va >> (bits - 1) & 1:
            return va | ((1 << 64) - 1) ^ ((1 << bits) - 1)
        return va

    def descend(table: int, depth: int, base: int, rights: tuple[bool, bool, bool]
                ) -> Iterator[Mapping]:
        nonlocal visits
        shift, nbits, large_ok = levels[depth]
        data = read(table, size << nbits)
        if data is None:
            return
        fmt = f"<{1 << nbits}{'I' if size == 4 else 'Q'}"
        for index, entry in enumerate(struct.unpack(fmt, data)):
            if not entry & _P:
                continue
            visits += 1
            if visits > MAX_VISITS:
                return
            va = base | index << shift
            pdpte = mode == "pae" and depth == 0
            w, u, x = rights
            if not pdpte:
                w, u = w and bool(entry & _RW), u and bool(entry & _US)
                x = x and not (size == 8 and entry & _NX)
            last = depth == len(levels) - 1
            if last or (large_ok and entry & _PS):
                frame = (entry & _ADDRESS if size == 8 else entry & 0xFFFFF000) if last else \
                    _large_frame(entry, shift, size)
                start = sign_extend(va)
                yield Mapping(start, start + (1 << shift), frame, 1 << shift, w, u, x)
            else:
                yield from descend(entry & (_ADDRESS if size == 8 else 0xFFFFF000), depth + 1,
                                   va, (w, u, x))

    yield from descend(regs.cr3 & top, 0, 0, (True, True, True))
