"""Guest modes: the machine state pyhv gives a vCPU for real, protected or long mode.

Real mode needs nothing in guest memory.  Protected and long mode use **pyhv's setup region**,
which starts at the partition's ``setup_base`` (default ``0x80000``) and must lie in RAM:

==========================  =================================================================
``setup_base + 0x0000``     GDT: 0x08 flat 32-bit code, 0x10 flat data, 0x18 64-bit code,
                            0x20 TSS (16-byte descriptor)
``setup_base + 0x1000``     reserved (IDT)
``setup_base + 0x2000``     TSS
``setup_base + 0x3000``     long mode: PML4, then PDPT and PD pages (one PD per GiB mapped)
==========================  =================================================================

Long mode identity-maps (GVA == GPA, 2 MiB pages, supervisor, writable) the whole first
4 GiB, MMIO holes included, plus every GiB that holds a memory slot.  Interrupts are off and
the IDT is empty (limit 0), so a guest exception ends in a triple fault:
:class:`pyhv.exits.Shutdown`.  The default stack top is ``setup_base`` (growing down).
"""

from __future__ import annotations

import dataclasses
import struct
from typing import TYPE_CHECKING

from .errors import InvalidArgument
from .registers import DescriptorTable, Segment

if TYPE_CHECKING:
    from .partition import Partition
    from .vcpu import VCpu

MODES = ("real", "protected", "long")

DEFAULT_SETUP_BASE = 0x80000
SETUP_MAX_SIZE = 0x20000          # up to 0xA0000 with the default base: 27 GiB of PD pages
GDT_OFFSET = 0x0000
TSS_OFFSET = 0x2000
PAGE_TABLES_OFFSET = 0x3000

CODE32_SELECTOR = 0x08
DATA_SELECTOR = 0x10
CODE64_SELECTOR = 0x18
TSS_SELECTOR = 0x20
TSS_LIMIT = 0x67

CR0_PE, CR0_MP, CR0_ET, CR0_NE, CR0_WP, CR0_PG = 1 << 0, 1 << 1, 1 << 4, 1 << 5, 1 << 16, 1 << 31
CR4_PAE, CR4_OSFXSR, CR4_OSXMMEXCPT = 1 << 5, 1 << 9, 1 << 10
EFER_LME, EFER_LMA = 1 << 8, 1 << 10

_PAGE_PRESENT, _PAGE_RW, _PAGE_ACCESSED, _PAGE_DIRTY, _PAGE_HUGE = 1, 2, 0x20, 0x40, 0x80
# accessed/dirty preset: the (possibly emulated) page walker need not write them back
_TABLE_FLAGS = _PAGE_PRESENT | _PAGE_RW | _PAGE_ACCESSED
_LEAF_2M_FLAGS = _TABLE_FLAGS | _PAGE_DIRTY | _PAGE_HUGE
GIB = 1 << 30


def _descriptor(base: int, limit: int, access: int, flags: int) -> int:
    """An 8-byte segment descriptor (flags: G, D/B, L, AVL in the high nibble)."""
    return ((limit & 0xFFFF) | (base & 0xFFFFFF) << 16 | access << 40
            | ((limit >> 16) & 0xF) << 48 | flags << 52 | ((base >> 24) & 0xFF) << 56)


def gdt_bytes(tss_base: int) -> bytes:
    """pyhv's GDT (see the module docstring for its selectors)."""
    entries = [
        0,
        _descriptor(0, 0xFFFFF, 0x9B, 0xC),    # 0x08 code, 32-bit, 4 GiB
        _descriptor(0, 0xFFFFF, 0x93, 0xC),    # 0x10 data, 4 GiB
        _descriptor(0, 0xFFFFF, 0x9B, 0xA),    # 0x18 code, 64-bit
        _descriptor(tss_base, TSS_LIMIT, 0x89, 0x0),   # 0x20 TSS (available), low half
        tss_base >> 32,                                 #      high half (long mode)
    ]
    return struct.pack(f"<{len(entries)}Q", *entries)


def mapped_gibs(partition: Partition) -> list[int]:
    """1-GiB regions the long-mode identity map covers: the first 4 and any with a slot."""
    gibs = set(range(4))
    for slot in partition.memory:
        gibs.update(range(slot.gpa // GIB, (slot.end - 1) // GIB + 1))
    return sorted(gibs)


def page_tables(base: int, gibs: list[int]) -> bytes:
    """Identity-mapping page tables placed at ``base``: PML4, PDPTs, then one PD per GiB."""
    pdpt_indices = sorted({g >> 9 for g in gibs})
    pdpt_at = {p: base + 0x1000 * (1 + i) for i, p in enumerate(pdpt_indices)}
    pd_base = base + 0x1000 * (1 + len(pdpt_indices))
    pd_at = {g: pd_base + 0x1000 * i for i, g in enumerate(gibs)}

    pml4 = [0] * 512
    for p, addr in pdpt_at.items():
        pml4[p] = addr | _TABLE_FLAGS
    pages = [pml4]
    for p in pdpt_indices:
        pdpt = [0] * 512
        for g in gibs:
            if g >> 9 == p:
                pdpt[g & 511] = pd_at[g] | _TABLE_FLAGS
        pages.append(pdpt)
    for g in gibs:
        pages.append([(g * GIB + i * (2 << 20)) | _LEAF_2M_FLAGS for i in range(512)])
    return b"".join(struct.pack("<512Q", *page) for page in pages)


def _setup_region_size(partition: Partition, long_mode: bool) -> tuple[int, bytes]:
    base = partition.setup_base
    tables = page_tables(base + PAGE_TABLES_OFFSET, mapped_gibs(partition)) if long_mode else b""
    return PAGE_TABLES_OFFSET + len(tables), tables


def check_setup_region(partition: Partition, long_mode: bool) -> None:
    """Raise :class:`InvalidArgument` unless the setup region fits in writable RAM."""
    base = partition.setup_base
    size, _ = _setup_region_size(partition, long_mode)
    if size > SETUP_MAX_SIZE:
        raise InvalidArgument(
            f"long-mode page tables for this memory layout need {size:#x} bytes, more than "
            f"pyhv's setup region allows ({SETUP_MAX_SIZE:#x}); use fewer or closer slots")
    for gpa in range(base, base + size, 0x1000):
        slot = partition.memory.slot_at(gpa)
        if slot is None or slot.readonly:
            raise InvalidArgument(
                f"this mode needs writable RAM at GPA {base:#x}-{base + size:#x} for pyhv's "
                f"GDT and page tables (the setup region); give the partition at least "
                f"{(base + size + 0xFFFFF) >> 20} MiB of memory at GPA 0 or pass setup_base=")


def write_setup_region(partition: Partition, long_mode: bool) -> None:
    """Write the GDT, TSS and (for long mode) page tables into the setup region."""
    check_setup_region(partition, long_mode)
    base = partition.setup_base
    _, tables = _setup_region_size(partition, long_mode)
    partition.memory.fill(base, PAGE_TABLES_OFFSET)
    partition.memory.write(base + GDT_OFFSET, gdt_bytes(base + TSS_OFFSET))
    if long_mode:
        partition.memory.write(base + PAGE_TABLES_OFFSET, tables)


def check_mode(partition: Partition, mode: str, entry: int, stack: int) -> None:
    """Everything :func:`setup_vcpu` would refuse, checked before any vCPU is created."""
    if mode not in MODES:
        raise InvalidArgument(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    if mode == "real":
        if not 0 <= entry < 0x100000:
            raise InvalidArgument(f"real-mode entry {entry:#x} is not below 1 MiB")
        if not 0 < stack <= 0x100000:
            raise InvalidArgument(f"real-mode stack top {stack:#x} is not within the first MiB")
        return
    if mode == "protected" and (entry > 0xFFFFFFFF or stack > 0x100000000):
        raise InvalidArgument("protected-mode entry and stack must lie below 4 GiB")
    if stack < 0 or stack >= 1 << 64:
        raise InvalidArgument(f"stack {stack:#x} is not an address")
    check_setup_region(partition, mode == "long")


def _flat(selector: int, code: bool, long: bool = False) -> Segment:
    return Segment(base=0, limit=0xFFFFFFFF, selector=selector, type=0xB if code else 0x3,
                   present=1, s=1, g=1, db=0 if long else 1, l=1 if long else 0)


def setup_vcpu(vcpu: VCpu, mode: str, entry: int, stack: int) -> None:
    """Put ``vcpu`` in ``mode`` with RIP at ``entry`` and the stack pointer at ``stack``."""
    check_mode(vcpu.partition, mode, entry, stack)
    sregs = vcpu.get_sregs()
    if mode == "real":
        cs_base = entry & 0xF0000
        ss_base = (stack - 1) & 0xF0000
        cs = Segment(base=cs_base, selector=cs_base >> 4, type=0xB)
        data = Segment(base=0, selector=0, type=0x3)
        ss = Segment(base=ss_base, selector=ss_base >> 4, type=0x3)
        new = dataclasses.replace(sregs, cs=cs, ds=data, es=data, fs=data, gs=data, ss=ss,
                       cr0=sregs.cr0 & ~(CR0_PE | CR0_PG), cr4=0, efer=0)
        vcpu.set_sregs(new)
        vcpu.regs.update(rip=entry - cs_base, rsp=(stack - ss_base) & 0xFFFF, rflags=0x2)
        return

    long_mode = mode == "long"
    partition = vcpu.partition
    cr3 = partition._prepare_setup_region(long_mode)
    base = partition.setup_base
    code = _flat(CODE64_SELECTOR if long_mode else CODE32_SELECTOR, True, long_mode)
    data = _flat(DATA_SELECTOR, False)
    tr = Segment(base=base + TSS_OFFSET, limit=TSS_LIMIT, selector=TSS_SELECTOR, type=11,
                 present=1, s=0)
    cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE
    cr4 = CR4_OSFXSR | CR4_OSXMMEXCPT
    efer = 0
    if long_mode:
        cr0 |= CR0_PG | CR0_WP
        cr4 |= CR4_PAE
        efer = EFER_LME | EFER_LMA
    new = dataclasses.replace(sregs, cs=code, ds=data, es=data, fs=data, gs=data, ss=data, tr=tr,
                   gdt=DescriptorTable(base + GDT_OFFSET, 6 * 8 - 1),
                   idt=DescriptorTable(0, 0),
                   cr0=cr0, cr3=cr3 if long_mode else 0, cr4=cr4, efer=efer)
    vcpu.set_sregs(new)
    vcpu.regs.update(rip=entry, rsp=stack, rflags=0x2)
