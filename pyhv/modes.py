"""Guest modes: the machine state pyhv gives a vCPU for real, protected, long or user mode.

``"user"`` is long mode with the payload at CPL3 and a small ring-0 stub of pyhv's own (IDT,
TSS, ``syscall`` entry): the payload's exceptions and system calls come back as
:class:`pyhv.exits.GuestException` and :class:`pyhv.exits.Syscall`.  On kvm_pvm, CPL3 code runs
natively while CPL0 code is emulated, so user mode is the fast way to run payload code there.
The other modes report guest exceptions the same way with ``create_vcpu(exceptions=True)``;
without it their IDT is empty and an exception ends in a triple fault (``Shutdown``).

Real mode needs nothing in guest memory unless exceptions are reported.  The other modes use
**pyhv's setup region** at the partition's ``setup_base`` (default ``0x80000``; it must be RAM),
which user-mode payloads cannot touch (its pages are supervisor-only):

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
every GiB that holds a memory slot, writable and user-accessible except the setup region.  The
default stack top is ``setup_base`` (growing down).  At most 16 vCPUs per partition may use
user mode or exception reporting (one TSS and stack each).
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

from .errors import InvalidArgument
from .registers import GENERAL_REGISTERS

if TYPE_CHECKING:
    from .partition import Partition
    from .vcpu import VCpu

MODES = ("real", "protected", "long", "user")

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

CR0_PE, CR0_MP, CR0_ET, CR0_NE, CR0_WP, CR0_PG = 1 << 0, 1 << 1, 1 << 4, 1 << 5, 1 << 16, 1 << 31
CR4_PAE, CR4_OSFXSR, CR4_OSXMMEXCPT = 1 << 5, 1 << 9, 1 << 10
EFER_SCE, EFER_LME, EFER_LMA = 1 << 0, 1 << 8, 1 << 10
RFLAGS_FIXED, RFLAGS_IOPL3 = 0x2, 0x3000

MSR_STAR, MSR_LSTAR, MSR_SFMASK = 0xC0000081, 0xC0000082, 0xC0000084
# syscall clears TF, IF, DF, IOPL, NT and AC in ring 0 (as Linux does)
SFMASK = 0x100 | 0x200 | 0x400 | 0x3000 | 0x4000 | 0x40000

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


# -- stubs: the instruction bytes are spelled out; tests/test_modes.py assembles the same
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
def mapped_gibs(partition: Partition) -> list[int]:
    """1-GiB regions the long-mode identity map covers: the first 4 and any with a slot."""
    gibs = set(range(4))
    for slot in partition.memory:
        gibs.update(range(slot.gpa // GIB, (slot.end - 1) // GIB + 1))
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
def _supervisor_range(partition: Partition) -> tuple[int, int]:
    # the whole SETUP_MAX_SIZE range is supervisor-only, whatever part of it is used, so the
    # tables need not size themselves
    return partition.setup_base, partition.setup_base + SETUP_MAX_SIZE


def setup_region_size(partition: Partition, long_mode: bool) -> int:
    """Bytes of the setup region: fixed, plus the page tables in long mode (counted, not
    built: this is asked before every vCPU is made)."""
    if not long_mode:
        return PAGE_TABLES_OFFSET
    gibs = mapped_gibs(partition)
    pdpts, small = _table_pages(gibs, _supervisor_range(partition))
    return PAGE_TABLES_OFFSET + 0x1000 * (1 + len(pdpts) + len(small) + len(gibs))


def check_setup_region(partition: Partition, long_mode: bool) -> None:
    """Raise :class:`InvalidArgument` unless the setup region fits in writable RAM."""
    base = partition.setup_base
    size = setup_region_size(partition, long_mode)
    if size > SETUP_MAX_SIZE:
        raise InvalidArgument(
            f"long-mode page tables for this memory layout need {size:#x} bytes, more than "
            f"pyhv's setup region allows ({SETUP_MAX_SIZE:#x}); use fewer or closer slots")
    for gpa in range(base, base + size, 0x1000):
        slot = partition.memory.slot_at(gpa)
        if slot is None or slot.readonly:
            raise InvalidArgument(
                f"this mode needs writable RAM at GPA {base:#x}-{base + size:#x} for pyhv's "
                f"GDT, stubs and page tables (the setup region); give the partition at least "
                f"{(base + size + 0xFFFFF) >> 20} MiB of memory at GPA 0 or pass setup_base=")


def write_setup_region(partition: Partition, long_mode: bool) -> None:
    """Write the GDT, IDTs, stubs and (for long mode) page tables into the setup region."""
    check_setup_region(partition, long_mode)
    base = partition.setup_base
    memory = partition.memory
    memory.fill(base, PAGE_TABLES_OFFSET)
    memory.write(base + GDT_OFFSET, gdt_bytes(base))
    memory.write(base + IDT_OFFSET, idt_bytes(base))
    memory.write(base + STUBS_OFFSET, stub_bytes())
    for i in range(MAX_STUB_VCPUS):
        memory.write(base + TSS_OFFSET + i * TSS_SIZE, tss_bytes(base, i))
    if long_mode:
        at = base + PAGE_TABLES_OFFSET
        memory.write(at, page_tables(at, mapped_gibs(partition), _supervisor_range(partition)))


def needs_setup_region(mode: str, exceptions: bool) -> bool:
    return mode != "real" or exceptions


def check_mode(partition: Partition, mode: str, entry: int, stack: int, exceptions: bool,
               vcpu_id: int) -> None:
    """Everything :func:`setup_vcpu` would refuse, checked before any vCPU is created."""
    if mode not in MODES:
        raise InvalidArgument(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    if mode == "real":
        if not 0 <= entry < 0x100000:
            raise InvalidArgument(f"real-mode entry {entry:#x} is not below 1 MiB")
        if not 0 < stack <= 0x100000:
            raise InvalidArgument(f"real-mode stack top {stack:#x} is not within the first MiB")
        if exceptions and partition.setup_base + PAGE_TABLES_OFFSET > 0x100000:
            raise InvalidArgument("real-mode exception stubs need setup_base below 1 MiB")
    elif mode == "protected" and (entry > 0xFFFFFFFF or stack > 0x100000000):
        raise InvalidArgument("protected-mode entry and stack must lie below 4 GiB")
    if not 0 <= stack < 1 << 64:
        raise InvalidArgument(f"stack {stack:#x} is not an address")
    if (mode == "user" or exceptions) and vcpu_id >= MAX_STUB_VCPUS:
        raise InvalidArgument(f"at most {MAX_STUB_VCPUS} vCPUs per partition can use user "
                              "mode or exception reporting")
    if needs_setup_region(mode, exceptions):
        check_setup_region(partition, mode in ("long", "user"))


def _segment(c: Any, selector: int, base: int = 0, limit: int = 0xFFFF, type: int = 3,
             dpl: int = 0, db: int = 0, s: int = 1, long: int = 0, g: int = 0) -> None:
    """Fill the C segment ``c`` (present, usable)."""
    c.base, c.limit, c.selector, c.type, c.present, c.dpl = base, limit, selector, type, 1, dpl
    c.db, c.s, c.l, c.g, c.avl, c.unusable = db, s, long, g, 0, 0


def _flat(c: Any, selector: int, code: bool, long: bool = False, dpl: int = 0) -> None:
    _segment(c, selector, 0, 0xFFFFFFFF, 0xB if code else 0x3, dpl, 0 if long else 1, 1,
             1 if long else 0, 1)


def setup_vcpu(vcpu: VCpu, mode: str, entry: int, stack: int, exceptions: bool = False,
               allow_port_io: bool = False) -> None:
    """Put ``vcpu`` in ``mode`` with RIP at ``entry`` and the stack pointer at ``stack``
    (arguments :func:`check_mode` accepted: the caller checks before making the vCPU)."""
    partition = vcpu.partition
    base = partition.setup_base
    if needs_setup_region(mode, exceptions):
        partition._prepare_setup_region(mode in ("long", "user"))
    sr = vcpu._load_sregs()           # edited in place: this is on every vCPU's creation path
    rflags = RFLAGS_FIXED | (RFLAGS_IOPL3 if allow_port_io else 0)
    if mode == "real":
        cs_base = entry & 0xF0000
        ss_base = (stack - 1) & 0xF0000
        _segment(sr.cs, cs_base >> 4, cs_base, type=0xB)
        for seg in (sr.ds, sr.es, sr.fs, sr.gs):
            _segment(seg, 0)
        _segment(sr.ss, ss_base >> 4, ss_base)
        sr.cr0 &= ~(CR0_PE | CR0_PG)
        sr.cr4 = sr.efer = 0
        if exceptions:
            sr.idt.base, sr.idt.limit = base + IVT_OFFSET, VECTORS * 4 - 1
        vcpu._store_sregs(sr)
        _fresh_registers(vcpu, entry - cs_base, (stack - ss_base) & 0xFFFF, rflags)
        return

    long_mode = mode in ("long", "user")
    _segment(sr.tr, tss_selector(vcpu.id), base + TSS_OFFSET + vcpu.id * TSS_SIZE, TSS_LIMIT,
             type=11, s=0)
    if mode == "user":
        _flat(sr.cs, USER_CODE64_SELECTOR, True, long=True, dpl=3)
        data, data_dpl = USER_DATA_SELECTOR, 3
    else:
        _flat(sr.cs, CODE64_SELECTOR if long_mode else CODE32_SELECTOR, True, long=long_mode)
        data, data_dpl = DATA_SELECTOR, 0
    for seg in (sr.ds, sr.es, sr.fs, sr.gs, sr.ss):
        _flat(seg, data, False, dpl=data_dpl)
    sr.gdt.base, sr.gdt.limit = base + GDT_OFFSET, TSS_SELECTOR_BASE + 16 * MAX_STUB_VCPUS - 1
    if mode == "user" or exceptions:
        sr.idt.base = base + (IDT64_OFFSET if long_mode else IDT32_OFFSET)
        sr.idt.limit = VECTORS * (16 if long_mode else 8) - 1
    else:
        sr.idt.base, sr.idt.limit = 0, 0
    sr.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE
    sr.cr4 = CR4_OSFXSR | CR4_OSXMMEXCPT
    sr.cr3 = sr.efer = 0
    if long_mode:
        sr.cr0 |= CR0_PG | CR0_WP
        sr.cr4 |= CR4_PAE
        sr.cr3 = base + PAGE_TABLES_OFFSET
        sr.efer = EFER_LME | EFER_LMA | EFER_SCE
    vcpu._store_sregs(sr)
    if long_mode:
        vcpu.set_msrs({MSR_STAR: USER_CODE32_SELECTOR << 48 | CODE64_SELECTOR << 32,
                       MSR_LSTAR: base + SYSCALL_STUB, MSR_SFMASK: SFMASK})
    _fresh_registers(vcpu, entry, stack, rflags)


def _fresh_registers(vcpu: VCpu, rip: int, rsp: int, rflags: int) -> None:
    """Every general register zero but RIP, RSP and RFLAGS (one write, nothing read)."""
    regs = vcpu._regs_c
    for name in GENERAL_REGISTERS:
        setattr(regs, name, 0)
    regs.rip, regs.rsp, regs.rflags = rip, rsp, rflags
    vcpu._store_regs(regs)


def stub_range(base: int) -> tuple[int, int]:
    """GPAs of the stub page (where pyhv's exception and syscall stubs halt)."""
    return base + STUBS_OFFSET, base + STUBS_OFFSET + 0x1000


def decode_stub_halt(base: int, linear_rip: int) -> tuple[str, int] | None:
    """What a halt at ``linear_rip`` (the address after the ``hlt``) in the stub page means:
    ("exception", vector) for width 64/32/16 stubs, ("syscall", 0), or None."""
    at = linear_rip - 1 - base
    if at == SYSCALL_STUB:
        return ("syscall", 0)
    for offset, width in ((STUBS64, 64), (STUBS32, 32), (STUBS16, 16)):
        index, rest = divmod(at - offset, STUB_SIZE)
        if rest == 0 and 0 <= index < VECTORS:
            return (f"exception{width}", index)
    return None
