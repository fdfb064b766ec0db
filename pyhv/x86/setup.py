"""pyhv's setup region: the GDT, IDTs, TSSs, exception/syscall stubs and identity-mapping page
tables that the protected, long and user modes run on.  Plain bytes and numbers: the caller
writes them into guest memory.

The region lies at the partition's ``setup_base`` (default ``0x80000``; it must be RAM), and
user-mode payloads cannot touch it (its pages are supervisor-only):

========================  =====================================================================
``setup_base + 0x0000``   GDT: 0x08 code32, 0x10 code64, 0x18 data (ring 0); 0x20 code32,
                          0x28 data, 0x30 code64 (ring 3, for sysret); 0x38 + 16*i: TSS of vCPU i
``setup_base + 0x1000``   IDTs for vectors 0-31: 64-bit at +0x000, 32-bit at +0x200, real-mode
                          IVT at +0x300
``setup_base + 0x2000``   TSSs, 0x80 bytes per vCPU
``setup_base + 0x3000``   stubs: one ``hlt; [drop error code]; return`` per vector (16 bytes each)
                          for 64-bit (+0x000), 32-bit (+0x200), 16-bit (+0x400) code; the
                          ``syscall`` entry ``hlt; sysretq`` at +0x600
``setup_base + 0x4000``   exception stacks, 0x200 bytes per vCPU (TSS RSP0 and IST1)
``setup_base + 0x6000``   long mode: PML4, PDPTs, 4 KiB page tables around the setup region,
                          then one page directory per GiB mapped
========================  =====================================================================

Long and user mode identity-map (GVA == GPA) the whole first 4 GiB, MMIO holes included, plus
every GiB that holds a memory slot, writable and user-accessible except the setup region.  At
most 16 vCPUs per partition may use user mode or exception reporting (one TSS and stack each).

>>> from pyhv.x86 import setup
>>> setup.decode_stub_halt(0x80000, 0x80000 + setup.STUBS64 + 14 * setup.STUB_SIZE + 1)
StubHalt(kind=<StubKind.EXCEPTION64: 64>, vector=14)
>>> hex(setup.region_size(0x80000, [(0, 16 << 20, False)], long_mode=True))
'0xd000'
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import InvalidArgument

# A memory slot as the setup region sees it: (gpa, size, readonly)
Span = tuple[int, int, bool]

DEFAULT_SETUP_BASE = 0x80000
SETUP_MAX_SIZE = 0x20000          # to 0xA0000 with the default base
GDT_OFFSET = 0x0000
IDT_OFFSET = 0x1000
IDT64_OFFSET, IDT32_OFFSET, IVT_OFFSET = IDT_OFFSET, IDT_OFFSET + 0x200, IDT_OFFSET + 0x300
TSS_OFFSET = 0x2000
TSS_SIZE = 0x80
STUBS_OFFSET = 0x3000
STUB_SIZE = 16
STUBS64, STUBS32, STUBS16 = STUBS_OFFSET, STUBS_OFFSET + 0x200, STUBS_OFFSET + 0x400
SYSCALL_STUB = STUBS_OFFSET + 0x600
STACKS_OFFSET = 0x4000
STACK_SIZE = 0x200
PAGE_TABLES_OFFSET = 0x6000
MAX_STUB_VCPUS = 16
VECTORS = 32

CODE32_SELECTOR = 0x08
CODE64_SELECTOR = 0x10
DATA_SELECTOR = 0x18
USER_CODE32_SELECTOR = 0x20
USER_DATA_SELECTOR = 0x28 | 3
USER_CODE64_SELECTOR = 0x30 | 3
TSS_SELECTOR_BASE = 0x38
TSS_LIMIT = 0x67

# vectors for which the CPU pushes an error code
ERROR_CODE_VECTORS = frozenset({8, 10, 11, 12, 13, 14, 17, 21, 29, 30})

_P, _RW, _US, _A, _D, _PS = 1, 2, 4, 0x20, 0x40, 0x80
GIB = 1 << 30
PAGE_2M = 2 << 20


def _descriptor(base: int, limit: int, access: int, flags: int) -> int:
    """An 8-byte segment descriptor (flags: G, D/B, L, AVL in the high nibble)."""
    return ((limit & 0xFFFF) | (base & 0xFFFFFF) << 16 | access << 40
            | ((limit >> 16) & 0xF) << 48 | flags << 52 | ((base >> 24) & 0xFF) << 56)


def tss_selector(vcpu_id: int) -> int:
    return TSS_SELECTOR_BASE + 16 * vcpu_id


def gdt_bytes(base: int) -> bytes:
    """pyhv's GDT (see the module docstring for its selectors)."""
    entries = [
        0,
        _descriptor(0, 0xFFFFF, 0x9B, 0xC),    # 0x08 ring-0 code, 32-bit
        _descriptor(0, 0xFFFFF, 0x9B, 0xA),    # 0x10 ring-0 code, 64-bit
        _descriptor(0, 0xFFFFF, 0x93, 0xC),    # 0x18 ring-0 data
        _descriptor(0, 0xFFFFF, 0xFB, 0xC),    # 0x20 ring-3 code, 32-bit (sysret's layout)
        _descriptor(0, 0xFFFFF, 0xF3, 0xC),    # 0x28 ring-3 data
        _descriptor(0, 0xFFFFF, 0xFB, 0xA),    # 0x30 ring-3 code, 64-bit
    ]
    for i in range(MAX_STUB_VCPUS):            # 0x38 + 16*i: 16-byte TSS descriptors
        tss = base + TSS_OFFSET + i * TSS_SIZE
        entries += [_descriptor(tss, TSS_LIMIT, 0x89, 0x0), tss >> 32]
    return struct.pack(f"<{len(entries)}Q", *entries)


# -- stubs: the instruction bytes are spelled out; tests/unit/test_x86_setup.py assembles the
# mnemonics and compares.
HLT = b"\xf4"
STUB64 = (HLT + b"\x48\xcf",                      # hlt; iretq
          HLT + b"\x48\x83\xc4\x08\x48\xcf")      # hlt; add $8, %rsp; iretq
# 32-bit code returns without iret, which kvm_pvm's ring-0 emulator cannot run: a
# same-privilege return to pyhv's flat code segment needs only EFLAGS and EIP from the frame.
_RETURN32 = b"\xff\x74\x24\x08\x9d\xc2\x08\x00"    # pushl 8(%esp); popfl; ret $8
STUB32 = (HLT + _RETURN32,                        # hlt; <return>
          HLT + b"\x83\xc4\x04" + _RETURN32)      # hlt; add $4, %esp; <return>
STUB16 = HLT + b"\xcf"                            # hlt; iret
SYSCALL_ENTRY = HLT + b"\x48\x0f\x07"             # hlt; sysretq


def stub_bytes() -> bytes:
    """The stub page: per-vector exception stubs for each code width, and the syscall entry."""
    page = bytearray(b"\xcc" * 0x1000)            # int3 padding
    for v in range(VECTORS):
        err = v in ERROR_CODE_VECTORS
        for offset, code in ((STUBS64, STUB64[err]), (STUBS32, STUB32[err]),
                             (STUBS16, STUB16)):
            at = offset - STUBS_OFFSET + v * STUB_SIZE
            page[at:at + len(code)] = code
    at = SYSCALL_STUB - STUBS_OFFSET
    page[at:at + len(SYSCALL_ENTRY)] = SYSCALL_ENTRY
    return bytes(page)


def idt_bytes(base: int) -> bytes:
    """The IDT page: 64-bit gates, 32-bit gates and a real-mode IVT, vectors 0-31."""
    page = bytearray(0x1000)
    for v in range(VECTORS):
        dpl = 3 if v in (3, 4) else 0          # int3 and into may be used from ring 3
        target = base + STUBS64 + v * STUB_SIZE
        gate64 = (target & 0xFFFF | CODE64_SELECTOR << 16 | 1 << 32            # IST1
                  | (0x8E | dpl << 5) << 40 | (target >> 16 & 0xFFFF) << 48)
        struct.pack_into("<QQ", page, IDT64_OFFSET - IDT_OFFSET + v * 16, gate64, target >> 32)
        target = base + STUBS32 + v * STUB_SIZE
        gate32 = (target & 0xFFFF | CODE32_SELECTOR << 16 | 0x8E << 40
                  | (target >> 16 & 0xFFFF) << 48)
        struct.pack_into("<Q", page, IDT32_OFFSET - IDT_OFFSET + v * 8, gate32)
        segment = (base + STUBS_OFFSET) >> 4
        offset = STUBS16 - STUBS_OFFSET + v * STUB_SIZE
        struct.pack_into("<HH", page, IVT_OFFSET - IDT_OFFSET + v * 4, offset, segment)
    return bytes(page)


def stack_top(base: int, vcpu_id: int) -> int:
    return base + STACKS_OFFSET + (vcpu_id + 1) * STACK_SIZE


def tss_bytes(base: int, vcpu_id: int) -> bytes:
    """A 64-bit TSS: RSP0 and IST1 on this vCPU's exception stack, no IO bitmap."""
    tss = bytearray(TSS_SIZE)
    top = stack_top(base, vcpu_id)
    struct.pack_into("<Q", tss, 0x04, top)     # RSP0
    struct.pack_into("<Q", tss, 0x24, top)     # IST1
    struct.pack_into("<H", tss, 0x66, TSS_SIZE)   # IO map base past the limit: no bitmap
    return bytes(tss)


# -- page tables ------------------------------------------------------------------------
def mapped_gibs(spans: Iterable[Span]) -> list[int]:
    """1-GiB regions the long-mode identity map covers: the first 4 and any with a slot."""
    gibs = set(range(4))
    for gpa, size, _readonly in spans:
        gibs.update(range(gpa // GIB, (gpa + size - 1) // GIB + 1))
    return sorted(gibs)


def _table_pages(gibs: list[int], supervisor: tuple[int, int]) -> tuple[list[int], list[int]]:
    """The PDPT indices and the 2 MiB pages split into 4 KiB tables, for :func:`page_tables`."""
    lo, hi = supervisor
    return sorted({g >> 9 for g in gibs}), list(range(lo // PAGE_2M, (hi - 1) // PAGE_2M + 1))


def page_tables(at: int, gibs: list[int], supervisor: tuple[int, int]) -> bytes:
    """Identity-mapping page tables placed at ``at``: PML4, PDPTs, 4 KiB tables for the 2 MiB
    pages that hold ``supervisor`` (a range only ring 0 may touch), then one PD per GiB."""
    lo, hi = supervisor
    pdpts, small = _table_pages(gibs, supervisor)
    next_page = iter(range(at + 0x1000, at + 0x1000 * (2 + len(pdpts) + len(small) + len(gibs)),
                           0x1000))
    pdpt_at = {p: next(next_page) for p in pdpts}
    pt_at = {s: next(next_page) for s in small}
    pd_at = {g: next(next_page) for g in gibs}
    table = _P | _RW | _US | _A                 # accessed/dirty preset: no walker write-backs

    pml4 = [0] * 512
    for p, addr in pdpt_at.items():
        pml4[p] = addr | table
    pages = [pml4]
    for p in pdpts:
        pages.append([pd_at[p << 9 | i] | table if p << 9 | i in pd_at else 0
                      for i in range(512)])
    for s in small:
        pages.append([(s * PAGE_2M + i * 0x1000) | _P | _RW | _A | _D
                      | (0 if lo <= s * PAGE_2M + i * 0x1000 < hi else _US) for i in range(512)])
    for g in gibs:
        pd = []
        for i in range(512):
            index = g * 512 + i
            pd.append(pt_at[index] | table if index in pt_at
                      else index * PAGE_2M | table | _D | _PS)
        pages.append(pd)
    return b"".join(struct.pack("<512Q", *page) for page in pages)


# -- the setup region ---------------------------------------------------------------------
def supervisor_range(base: int) -> tuple[int, int]:
    """The GPAs only ring 0 may touch: the whole SETUP_MAX_SIZE range, whatever part of it is
    used, so that the tables need not size themselves."""
    return base, base + SETUP_MAX_SIZE


def region_size(base: int, spans: Iterable[Span], long_mode: bool) -> int:
    """Bytes of the setup region: fixed, plus the page tables in long mode (counted, not
    built: this is asked before every vCPU is made)."""
    if not long_mode:
        return PAGE_TABLES_OFFSET
    gibs = mapped_gibs(spans)
    pdpts, small = _table_pages(gibs, supervisor_range(base))
    return PAGE_TABLES_OFFSET + 0x1000 * (1 + len(pdpts) + len(small) + len(gibs))


def check_region(base: int, spans: Iterable[Span], long_mode: bool) -> None:
    """Raise :class:`pyhv.InvalidArgument` unless the setup region fits in writable RAM."""
    spans = list(spans)
    size = region_size(base, spans, long_mode)
    if size > SETUP_MAX_SIZE:
        raise InvalidArgument(
            f"long-mode page tables for this memory layout need {size:#x} bytes, more than "
            f"pyhv's setup region allows ({SETUP_MAX_SIZE:#x}); use fewer or closer slots")
    for gpa in range(base, base + size, 0x1000):
        if not any(start <= gpa < start + n and not ro for start, n, ro in spans):
            raise InvalidArgument(
                f"this mode needs writable RAM at GPA {base:#x}-{base + size:#x} for pyhv's "
                f"GDT, stubs and page tables (the setup region); give the partition at least "
                f"{(base + size + 0xFFFFF) >> 20} MiB of memory at GPA 0 or pass setup_base=")


def region_contents(base: int, spans: Iterable[Span], long_mode: bool) -> list[tuple[int, bytes]]:
    """What to write where (GPA, bytes), in order, for the region: zeros over the fixed part,
    then the GDT, IDTs, stubs, TSSs and (long mode) page tables.  Checked first."""
    spans = list(spans)
    check_region(base, spans, long_mode)
    writes = [(base, bytes(PAGE_TABLES_OFFSET)),
              (base + GDT_OFFSET, gdt_bytes(base)),
              (base + IDT_OFFSET, idt_bytes(base)),
              (base + STUBS_OFFSET, stub_bytes())]
    writes += [(base + TSS_OFFSET + i * TSS_SIZE, tss_bytes(base, i))
               for i in range(MAX_STUB_VCPUS)]
    if long_mode:
        at = base + PAGE_TABLES_OFFSET
        writes.append((at, page_tables(at, mapped_gibs(spans), supervisor_range(base))))
    return writes


def stub_range(base: int) -> tuple[int, int]:
    """GPAs of the stub page (where pyhv's exception and syscall stubs halt)."""
    return base + STUBS_OFFSET, base + STUBS_OFFSET + 0x1000


class StubKind(enum.Enum):
    """Which of pyhv's stubs a vCPU halted in; exception stubs carry their code width."""

    EXCEPTION64 = 64
    EXCEPTION32 = 32
    EXCEPTION16 = 16
    SYSCALL = 0

    @property
    def width(self) -> int:
        """Bits of the interrupted code's frame (64 for the syscall entry)."""
        return self.value or 64


@dataclass(frozen=True)
class StubHalt:
    """A halt in the stub page: which stub, and the exception vector (0 for a syscall)."""

    kind: StubKind
    vector: int = 0


_EXCEPTION_STUBS = ((STUBS64, StubKind.EXCEPTION64), (STUBS32, StubKind.EXCEPTION32),
                    (STUBS16, StubKind.EXCEPTION16))


def decode_stub_halt(base: int, linear_rip: int) -> StubHalt | None:
    """What a halt at ``linear_rip`` (the address after the ``hlt``) in the stub page means,
    or None for a halt elsewhere in it (a guest's own ``hlt``)."""
    at = linear_rip - 1 - base
    if at == SYSCALL_STUB:
        return StubHalt(StubKind.SYSCALL)
    for offset, kind in _EXCEPTION_STUBS:
        index, rest = divmod(at - offset, STUB_SIZE)
        if rest == 0 and 0 <= index < VECTORS:
            return StubHalt(kind, index)
    return None
