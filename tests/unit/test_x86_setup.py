"""pyhv's setup region (pyhv.x86.setup) as bytes: the GDT, IDTs, TSSs and stubs decode to what
the module docstring documents, the page tables identity-map what they should, and the
region's size is counted exactly."""

from __future__ import annotations

import itertools
import shutil
import struct

import pytest

from pyhv import InvalidArgument
from pyhv.testing import assemble
from pyhv.x86 import setup
from pyhv.x86.setup import (
    CODE32_SELECTOR,
    CODE64_SELECTOR,
    DATA_SELECTOR,
    DEFAULT_SETUP_BASE,
    GIB,
    IDT_OFFSET,
    MAX_STUB_VCPUS,
    PAGE_TABLES_OFFSET,
    SETUP_MAX_SIZE,
    STUB_SIZE,
    STUBS16,
    STUBS32,
    STUBS64,
    STUBS_OFFSET,
    SYSCALL_STUB,
    TSS_OFFSET,
    TSS_SIZE,
    USER_CODE32_SELECTOR,
    USER_CODE64_SELECTOR,
    USER_DATA_SELECTOR,
    StubHalt,
    StubKind,
)

BASE = DEFAULT_SETUP_BASE
RAM16 = [(0, 16 << 20, False)]
# the vectors for which an x86 CPU pushes an error code (stated here, not imported)
ERROR_CODE = {8, 10, 11, 12, 13, 14, 17, 21, 29, 30}

needs_binutils = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("as", "ld", "objcopy")),
    reason="GNU binutils (as, ld, objcopy) are not installed")


# -- descriptors ----------------------------------------------------------------------------
def descriptor(raw: int) -> dict[str, int]:
    """An 8-byte segment descriptor's fields."""
    access = raw >> 40 & 0xFF
    flags = raw >> 52 & 0xF
    return {"base": (raw >> 16 & 0xFFFFFF) | (raw >> 56 & 0xFF) << 24,
            "limit": (raw & 0xFFFF) | (raw >> 48 & 0xF) << 16,
            "present": access >> 7, "dpl": access >> 5 & 3, "s": access >> 4 & 1,
            "type": access & 0xF, "l": flags >> 1 & 1, "db": flags >> 2 & 1, "g": flags >> 3}


def gdt_entries(base: int) -> list[int]:
    raw = setup.gdt_bytes(base)
    return list(struct.unpack(f"<{len(raw) // 8}Q", raw))


FLAT = {"base": 0, "limit": 0xFFFFF, "present": 1, "s": 1, "g": 1}
# selector -> what it must decode to (type 0xB: code, execute/read, accessed; 0x3: data,
# read/write, accessed)
EXPECTED_SEGMENTS = {
    CODE32_SELECTOR: dict(FLAT, dpl=0, type=0xB, l=0, db=1),
    CODE64_SELECTOR: dict(FLAT, dpl=0, type=0xB, l=1, db=0),
    DATA_SELECTOR: dict(FLAT, dpl=0, type=0x3, l=0, db=1),
    USER_CODE32_SELECTOR: dict(FLAT, dpl=3, type=0xB, l=0, db=1),
    USER_DATA_SELECTOR & ~3: dict(FLAT, dpl=3, type=0x3, l=0, db=1),
    USER_CODE64_SELECTOR & ~3: dict(FLAT, dpl=3, type=0xB, l=1, db=0),
}


def test_the_documented_selector_values():
    assert (CODE32_SELECTOR, CODE64_SELECTOR, DATA_SELECTOR) == (0x08, 0x10, 0x18)
    assert (USER_CODE32_SELECTOR, USER_DATA_SELECTOR, USER_CODE64_SELECTOR) == (0x20, 0x2B,
                                                                                0x33)
    assert [setup.tss_selector(i) for i in (0, 1, 15)] == [0x38, 0x48, 0x128]


@pytest.mark.parametrize("selector", sorted(EXPECTED_SEGMENTS), ids=hex)
def test_gdt_code_and_data_descriptors_decode_to_flat_segments(selector):
    entries = gdt_entries(BASE)
    assert entries[0] == 0                                   # the null descriptor
    assert descriptor(entries[selector // 8]) == EXPECTED_SEGMENTS[selector]


def test_sysret_finds_its_user_segments_where_star_points():
    # sysret to 64-bit code: CS = STAR[63:48] + 16, SS = STAR[63:48] + 8 (both RPL 3)
    assert USER_CODE32_SELECTOR + 16 == USER_CODE64_SELECTOR & ~3
    assert USER_CODE32_SELECTOR + 8 == USER_DATA_SELECTOR & ~3
    # syscall: CS = STAR[47:32], SS = that + 8
    assert CODE64_SELECTOR + 8 == DATA_SELECTOR


@pytest.mark.parametrize("base", [BASE, 0x1_2345_6000], ids=hex)
def test_gdt_has_a_16_byte_tss_descriptor_per_stub_vcpu(base):
    entries = gdt_entries(base)
    assert len(entries) * 8 == 0x38 + 16 * MAX_STUB_VCPUS
    for i in range(MAX_STUB_VCPUS):
        low, high = entries[setup.tss_selector(i) // 8], entries[setup.tss_selector(i) // 8 + 1]
        d = descriptor(low)
        tss = base + TSS_OFFSET + i * TSS_SIZE
        assert (d["present"], d["dpl"], d["s"], d["type"]) == (1, 0, 0, 0x9)   # 64-bit TSS
        assert d["limit"] == 0x67 and d["g"] == 0
        assert d["base"] | high << 32 == tss


def test_tss_points_rsp0_and_ist1_at_the_vcpus_own_stack():
    tops = set()
    for i in range(MAX_STUB_VCPUS):
        tss = setup.tss_bytes(BASE, i)
        assert len(tss) == TSS_SIZE
        rsp0, = struct.unpack_from("<Q", tss, 0x04)
        ist1, = struct.unpack_from("<Q", tss, 0x24)
        iomap, = struct.unpack_from("<H", tss, 0x66)
        assert rsp0 == ist1 == BASE + 0x4000 + (i + 1) * 0x200 == setup.stack_top(BASE, i)
        assert iomap > 0x67                                   # past the limit: no IO bitmap
        tops.add(rsp0)
    assert len(tops) == MAX_STUB_VCPUS and max(tops) <= BASE + PAGE_TABLES_OFFSET


# -- IDTs -----------------------------------------------------------------------------------
def test_64_bit_idt_gates_point_at_the_64_bit_stubs():
    page = setup.idt_bytes(BASE)
    assert len(page) == 0x1000
    for v in range(32):
        low, high = struct.unpack_from("<QQ", page, v * 16)
        offset = (low & 0xFFFF) | (low >> 48 & 0xFFFF) << 16 | high << 32
        attributes = low >> 40 & 0xFF
        assert offset == BASE + STUBS64 + v * STUB_SIZE
        assert low >> 16 & 0xFFFF == CODE64_SELECTOR
        assert low >> 32 & 7 == 1                             # IST1
        # present interrupt gate; int3 and into may be used from ring 3
        assert attributes == (0xEE if v in (3, 4) else 0x8E), v


def test_32_bit_idt_gates_and_the_real_mode_ivt_point_at_their_stubs():
    page = setup.idt_bytes(BASE)
    for v in range(32):
        gate, = struct.unpack_from("<Q", page, 0x200 + v * 8)
        assert (gate & 0xFFFF) | (gate >> 48) << 16 == BASE + STUBS32 + v * STUB_SIZE
        assert gate >> 16 & 0xFFFF == CODE32_SELECTOR and gate >> 40 & 0xFF == 0x8E
        offset, segment = struct.unpack_from("<HH", page, 0x300 + v * 4)
        assert segment * 16 + offset == BASE + STUBS16 + v * STUB_SIZE
    assert page[0x380:] == bytes(0x1000 - 0x380)             # nothing past vector 31


# -- stubs ----------------------------------------------------------------------------------
@needs_binutils
def test_the_stub_constants_are_the_instructions_they_claim():
    ret32 = "pushl 8(%esp); popfl; ret $8"
    assert setup.STUB64 == (assemble("hlt; iretq"), assemble("hlt; add $8, %rsp; iretq"))
    assert setup.STUB32 == (assemble(f"hlt; {ret32}", bits=32),
                            assemble(f"hlt; add $4, %esp; {ret32}", bits=32))
    assert setup.STUB16 == assemble("hlt; iret", bits=16)
    assert setup.SYSCALL_ENTRY == assemble("hlt; sysretq")


@needs_binutils
def test_the_stub_page_holds_each_vectors_stub_and_the_syscall_entry():
    stubs = {64: (assemble("hlt; iretq"), assemble("hlt; add $8, %rsp; iretq")),
             32: (assemble("hlt; pushl 8(%esp); popfl; ret $8", bits=32),
                  assemble("hlt; add $4, %esp; pushl 8(%esp); popfl; ret $8", bits=32))}
    iret16 = assemble("hlt; iret", bits=16)
    page = setup.stub_bytes()
    assert len(page) == 0x1000 and set(setup.ERROR_CODE_VECTORS) == ERROR_CODE
    expected = bytearray(b"\xcc" * 0x1000)                   # int3 padding
    for v in range(32):
        err = v in ERROR_CODE
        for offset, code in ((STUBS64, stubs[64][err]), (STUBS32, stubs[32][err]),
                             (STUBS16, iret16)):
            at = offset - STUBS_OFFSET + v * STUB_SIZE
            assert len(code) <= STUB_SIZE
            expected[at:at + len(code)] = code
    at = SYSCALL_STUB - STUBS_OFFSET
    syscall = assemble("hlt; sysretq")
    expected[at:at + len(syscall)] = syscall
    assert page == bytes(expected)


@pytest.mark.parametrize("kind, offset", [(StubKind.EXCEPTION64, STUBS64),
                                          (StubKind.EXCEPTION32, STUBS32),
                                          (StubKind.EXCEPTION16, STUBS16)],
                         ids=["64", "32", "16"])
@pytest.mark.parametrize("base", [BASE, 0x10000], ids=hex)
def test_a_halt_in_every_vectors_stub_decodes_to_that_vector(kind, offset, base):
    for v in range(32):
        after_hlt = base + offset + v * STUB_SIZE + 1
        assert setup.decode_stub_halt(base, after_hlt) == StubHalt(kind, v)
    assert kind.width == kind.value


def test_a_halt_in_the_syscall_entry_is_a_syscall():
    assert setup.decode_stub_halt(BASE, BASE + SYSCALL_STUB + 1) == StubHalt(StubKind.SYSCALL)
    assert StubKind.SYSCALL.width == 64


@pytest.mark.parametrize("at", [STUBS64 + 1, STUBS64 + 5, STUBS32 + 15, SYSCALL_STUB + 16,
                                STUBS_OFFSET + 0xFFF, -1, 0, 0x2FFF, 0x4000],
                         ids=hex)
def test_other_halts_are_not_stub_halts(at):
    # (at: where the hlt is, relative to the base)
    assert setup.decode_stub_halt(BASE, BASE + at + 1) is None


def test_stub_range_is_the_stub_page():
    assert setup.stub_range(BASE) == (BASE + 0x3000, BASE + 0x4000)


# -- page tables ----------------------------------------------------------------------------
ADDRESS = 0x000F_FFFF_FFFF_F000
P, RW, US, PS = 1, 2, 4, 0x80


class Tables:
    """Page tables built at ``at`` (bytes), walked as the CPU would."""

    def __init__(self, at: int, raw: bytes) -> None:
        self.at, self.raw = at, raw

    def entry(self, table: int, index: int) -> int:
        offset = table - self.at
        assert 0 <= offset < len(self.raw) and offset % 0x1000 == 0, hex(table)
        return struct.unpack_from("<Q", self.raw, offset + 8 * index)[0]

    def walk(self, va: int) -> tuple[int, bool, bool] | None:
        """(physical address, user-accessible, writable), or None when not mapped."""
        table, user, writable = self.at, True, True
        for shift in (39, 30, 21, 12):
            e = self.entry(table, va >> shift & 511)
            if not e & P:
                return None
            user, writable = user and bool(e & US), writable and bool(e & RW)
            if shift == 21 and e & PS:
                return (e & ADDRESS & ~0x1FFFFF) | (va & 0x1FFFFF), user, writable
            assert not e & PS or shift == 12, f"large page at level {shift}"
            table = e & ADDRESS
        return (table | (va & 0xFFF)), user, writable


def build(spans, base: int = BASE) -> Tables:
    at = base + PAGE_TABLES_OFFSET
    return Tables(at, setup.page_tables(at, setup.mapped_gibs(spans),
                                        setup.supervisor_range(base)))


@pytest.mark.parametrize("va", [0, 0x1000, 0x7FFFF, 0xA0000, 0x1FFFFF, 0x200000, 0x3FFFFFFF,
                                0x40000000, 0xC0000000, 0xFEC00000, 0xFEE00000, 0xFFFFFFFF],
                         ids=hex)
def test_the_first_4_gib_are_identity_mapped_for_user_code(va):
    assert build(RAM16).walk(va) == (va, True, True)


@pytest.mark.parametrize("va", [BASE, BASE + 0x6000, BASE + SETUP_MAX_SIZE - 1], ids=hex)
def test_the_setup_region_is_supervisor_only(va):
    assert build(RAM16).walk(va) == (va, False, True)


def test_the_supervisor_range_may_span_two_2mib_pages():
    base = 0x1F0000                                # [0x1F0000, 0x210000)
    tables = build(RAM16, base)
    assert tables.walk(0x1EF000) == (0x1EF000, True, True)
    assert tables.walk(0x1F0000) == (0x1F0000, False, True)
    assert tables.walk(0x20FFFF) == (0x20FFFF, False, True)
    assert tables.walk(0x210000) == (0x210000, True, True)


def test_gibs_with_a_slot_are_mapped_and_others_are_not():
    spans = RAM16 + [(4 * GIB, 2 << 20, False), (7 * GIB - (2 << 20), 4 << 20, False),
                     (512 * GIB, 2 << 20, False)]
    assert setup.mapped_gibs(spans) == [0, 1, 2, 3, 4, 6, 7, 512]
    tables = build(spans)
    for va in (4 * GIB, 5 * GIB - 1, 6 * GIB, 7 * GIB + 0x1234, 8 * GIB - 1, 512 * GIB,
               513 * GIB - 1):
        assert tables.walk(va) == (va, True, True), hex(va)
    for va in (5 * GIB, 6 * GIB - 1, 8 * GIB, 511 * GIB, 513 * GIB, 1024 * GIB):
        assert tables.walk(va) is None, hex(va)


def test_a_slot_crossing_a_gib_boundary_maps_both():
    assert setup.mapped_gibs([(5 * GIB - 0x1000, 0x2000, True)]) == [0, 1, 2, 3, 4, 5]


LAYOUTS = {
    "16M": RAM16,
    "nothing": [],
    "4G slot": RAM16 + [(4 * GIB, 2 << 20, False)],
    "512G slot (second PDPT)": RAM16 + [(4 * GIB, 2 << 20, False), (512 * GIB, 2 << 20, False)],
    "slots across GiBs": RAM16 + [(5 * GIB - 0x1000, 3 * GIB, False)],
    "19 GiB slots": RAM16 + [(g * GIB, 0x1000, False) for g in range(4, 23)],
}


@pytest.mark.parametrize("base", [BASE, 0x1F0000, 0x10000], ids=hex)
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_region_size_is_the_size_of_what_is_built(layout, base):
    spans = LAYOUTS[layout]
    tables = setup.page_tables(base + PAGE_TABLES_OFFSET, setup.mapped_gibs(spans),
                               setup.supervisor_range(base))
    assert setup.region_size(base, spans, long_mode=True) == PAGE_TABLES_OFFSET + len(tables)
    assert setup.region_size(base, spans, long_mode=False) == PAGE_TABLES_OFFSET


def test_region_size_of_the_documented_example():
    assert setup.region_size(BASE, RAM16, long_mode=True) == 0xD000   # 7 pages of tables


# -- the region as a whole --------------------------------------------------------------------
@pytest.mark.parametrize("long_mode", [False, True], ids=["protected", "long"])
def test_region_contents_write_each_part_at_its_offset(long_mode):
    writes = setup.region_contents(BASE, RAM16, long_mode)
    at = {gpa: data for gpa, data in writes}
    assert writes[0] == (BASE, bytes(PAGE_TABLES_OFFSET))     # zeros first
    assert writes[1] == (BASE, setup.gdt_bytes(BASE))
    assert at[BASE + IDT_OFFSET] == setup.idt_bytes(BASE)
    assert at[BASE + STUBS_OFFSET] == setup.stub_bytes()
    for i in range(MAX_STUB_VCPUS):
        assert at[BASE + TSS_OFFSET + i * TSS_SIZE] == setup.tss_bytes(BASE, i)
    end = BASE + setup.region_size(BASE, RAM16, long_mode)
    assert all(BASE <= gpa and gpa + len(data) <= end for gpa, data in writes)
    tables = at.get(BASE + PAGE_TABLES_OFFSET)
    if long_mode:
        assert tables is not None and BASE + PAGE_TABLES_OFFSET + len(tables) == end
    else:
        assert tables is None
    # the parts of the fixed region do not overlap
    fixed = sorted((gpa, gpa + len(data)) for gpa, data in writes[1:]
                   if gpa < BASE + PAGE_TABLES_OFFSET)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(fixed))


@pytest.mark.parametrize("spans", [
    [],                                            # no RAM at all
    [(0x100000, 16 << 20, False)],                 # RAM, but not at the base
    [(0, 16 << 20, True)],                         # ROM over the region
    [(0, BASE + 0x4000, False)],                   # RAM ends inside the fixed part
], ids=["no RAM", "RAM elsewhere", "ROM", "too little"])
@pytest.mark.parametrize("long_mode", [False, True], ids=["protected", "long"])
def test_the_region_must_lie_in_writable_ram(spans, long_mode):
    with pytest.raises(InvalidArgument, match="needs writable RAM at GPA 0x80000"):
        setup.check_region(BASE, spans, long_mode)
    with pytest.raises(InvalidArgument):
        setup.region_contents(BASE, spans, long_mode)


def test_ram_ending_inside_the_page_tables_is_enough_for_protected_mode_only():
    spans = [(0, BASE + PAGE_TABLES_OFFSET, False)]
    setup.check_region(BASE, spans, long_mode=False)
    with pytest.raises(InvalidArgument, match="writable RAM"):
        setup.check_region(BASE, spans, long_mode=True)


def test_the_region_may_span_adjacent_slots():
    setup.check_region(BASE, [(0, BASE + 0x3000, False), (BASE + 0x3000, 16 << 20, False)],
                       long_mode=True)


def test_too_many_mapped_gibs_overflow_the_region():
    fits = RAM16 + [(g * GIB, 0x1000, False) for g in range(4, 23)]      # 23 GiBs
    setup.check_region(BASE, fits, long_mode=True)
    too_many = fits + [(23 * GIB, 0x1000, False)]
    with pytest.raises(InvalidArgument, match=r"need 0x21000 bytes, more than .* \(0x20000\)"):
        setup.check_region(BASE, too_many, long_mode=True)
    setup.check_region(BASE, too_many, long_mode=False)                   # no tables there
