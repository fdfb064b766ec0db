"""Page-table walks in Python (pyhv.x86.paging) over hand-made tables in every paging mode,
including tables a hostile guest could make."""

from __future__ import annotations

import struct

import pytest

from pyhv.x86.paging import MAX_VISITS, PagingRegisters, mappings, paging_mode, walk

P, RW, US, PS, NX = 1, 2, 4, 0x80, 1 << 63
PG, PE, PAE, PSE, LA57, LMA = 1 << 31, 1, 1 << 5, 1 << 4, 1 << 12, 1 << 10


class Memory:
    def __init__(self, size: int = 0x20000) -> None:
        self.data = bytearray(size)

    def put(self, gpa: int, value: int, size: int = 8) -> None:
        struct.pack_into("<Q" if size == 8 else "<I", self.data, gpa, value)

    def read(self, gpa: int, size: int) -> bytes | None:
        if gpa < 0 or gpa + size > len(self.data):
            return None
        return bytes(self.data[gpa:gpa + size])


def regs(cr3: int, *, cr4: int = 0, efer: int = 0, paging: bool = True) -> PagingRegisters:
    return PagingRegisters(PE | (PG if paging else 0), cr3, cr4, efer)


def test_no_paging_is_the_identity_below_4g():
    r = regs(0, paging=False)
    assert paging_mode(r) == "none"
    assert walk(r, 0x1234, Memory().read).gpa == 0x1234
    assert walk(r, 1 << 32, Memory().read) is None


def test_32_bit_paging_with_4m_pages():
    m = Memory()
    m.put(0x1000 + 1 * 4, 0x2000 | P | RW, 4)               # 4 MiB - 8 MiB: a table
    m.put(0x2000 + 3 * 4, 0x7000 | P, 4)                    # page 3 -> 0x7000, read-only
    m.put(0x1000 + 2 * 4, 0x00C00000 | P | RW | US | PS | (1 << 13), 4)   # 4M, PSE-36 bit 32
    r = regs(0x1000, cr4=PSE)
    assert paging_mode(r) == "32-bit"
    t = walk(r, 0x403ABC, m.read)
    assert (t.gpa, t.writable, t.page_size) == (0x7ABC, False, 4096)
    big = walk(r, 0x812345, m.read)
    assert (big.gpa, big.page_size, big.user) == ((1 << 32) | 0xC12345, 4 << 20, True)
    assert walk(r, 0xC00000, m.read) is None
    assert [str(x) for x in mappings(r, m.read)] == [
        "0x403000-0x404000 -> 0x7000 r-x 4K", "0x800000-0xc00000 -> 0x100c00000 rwx user 4M"]


def test_pae_with_2m_pages():
    m = Memory()
    m.put(0x1000 + 3 * 8, 0x2000 | P)                       # PDPTE 3 (no rights bits)
    m.put(0x2000 + 5 * 8, 0x400000 | P | RW | PS | NX)      # 2 MiB page, not executable
    r = regs(0x1000, cr4=PAE)
    t = walk(r, 0xC0A00123, m.read)
    assert (paging_mode(r), t.gpa, t.page_size, t.executable) == ("pae", 0x400123, 2 << 20,
                                                                    False)


def _four_level(m: Memory) -> None:
    m.put(0x1000 + 511 * 8, 0x2000 | P | RW)               # PML4[511]: the top 512 GiB
    m.put(0x2000 + 510 * 8, 0x3000 | P | RW)               # PDPT[510]
    m.put(0x3000 + 0 * 8, 0x4000 | P | RW)                 # PD[0]
    m.put(0x4000 + 1 * 8, 0x9000 | P | RW | NX)            # PT[1]
    m.put(0x1000 + 0 * 8, 0x5000 | P | RW | US)            # PML4[0]
    m.put(0x5000 + 1 * 8, 0x40000000 | P | RW | US | PS)   # 1 GiB page at 1 GiB


def test_four_level_long_mode():
    m = Memory()
    _four_level(m)
    r = regs(0x1000, cr4=PAE, efer=LMA)
    high = walk(r, 0xFFFFFFFF80001234, m.read)
    assert (paging_mode(r), high.gpa, high.executable) == ("4-level", 0x9234, False)
    assert walk(r, 0x4000_0000 + 0x5678, m.read).gpa == 0x4000_5678
    assert walk(r, 0x0000_8000_0000_0000, m.read) is None           # not canonical
    assert walk(r, 0xFFFFFFFF80002000, m.read) is None
    dump = [str(x) for x in mappings(r, m.read)]
    assert dump == ["0x40000000-0x80000000 -> 0x40000000 rwx user 1G",
                    "0xffffffff80001000-0xffffffff80002000 -> 0x9000 rw- 4K"]


def test_five_level_long_mode():
    m = Memory()
    m.put(0x8000 + 0 * 8, 0x1000 | P | RW)                 # PML5[0] -> the PML4 above
    _four_level(m)
    r = regs(0x8000, cr4=PAE | LA57, efer=LMA)
    assert paging_mode(r) == "5-level"
    assert walk(r, 0x4000_0010, m.read).gpa == 0x4000_0010
    assert walk(r, 0xFFFFFFFF80001234, m.read) is None      # 57-bit: another PML5 entry


def test_tables_outside_memory_are_not_mapped():
    m = Memory()
    m.put(0x1000, 0xFFFF_F000 | P | RW)                     # PML4[0] points past RAM
    r = regs(0x1000, cr4=PAE, efer=LMA)
    assert walk(r, 0x1000, m.read) is None
    assert mappings(r, m.read) == []
    assert walk(regs(0x7FFFF000, cr4=PAE, efer=LMA), 0, m.read) is None   # CR3 too


def test_a_table_pointing_at_itself_ends_the_dump():
    m = Memory()
    for i in range(512):
        m.put(0x1000 + 8 * i, 0x1000 | P | RW)             # every level is this table
    r = regs(0x1000, cr4=PAE, efer=LMA)
    assert walk(r, 0x1234, m.read).gpa == 0x1234            # a leaf through four levels
    runs = mappings(r, m.read, limit=100)
    assert 0 < len(runs) <= 100


def test_dumps_stop_at_the_visit_limit():
    assert MAX_VISITS < 1 << 20                              # bounded work per dump


@pytest.mark.parametrize("gva", [-1, 1 << 64])
def test_addresses_outside_64_bits_are_not_mapped(gva):
    assert walk(regs(0x1000, cr4=PAE, efer=LMA), gva, Memory().read) is None
