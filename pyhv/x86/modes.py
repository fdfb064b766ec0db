"""Guest modes: the machine state pyhv gives a vCPU for real, protected, long or user mode,
as plain register values (:class:`VcpuStart`).

``"user"`` is long mode with the payload at CPL3 and a small ring-0 stub of pyhv's own (IDT,
TSS, ``syscall`` entry): the payload's exceptions and system calls come back as
:class:`pyhv.exits.GuestException` and :class:`pyhv.exits.Syscall`.  On kvm_pvm, CPL3 code runs
natively while CPL0 code is emulated, so user mode is the fast way to run payload code there.
The other modes report guest exceptions the same way with ``create_vcpu(exceptions=True)``;
without it their IDT is empty and an exception ends in a triple fault (``Shutdown``).

Real mode needs nothing in guest memory unless exceptions are reported; an entry in the top
64 KiB below 4 GiB (``0xFFFFFFF0``, the reset vector) starts as an x86 CPU does, with CS base
``0xFFFF0000``.  The other modes run on pyhv's setup region (:mod:`pyhv.x86.setup`).  The
default stack top is ``setup_base`` (growing down).

>>> from pyhv.x86 import modes
>>> from pyhv.x86.registers import DescriptorTable, Segment, SpecialRegs
>>> reset = SpecialRegs(*[Segment()] * 8, DescriptorTable(), DescriptorTable(),
...                     0x60000010, 0, 0, 0, 0, 0, 0xFEE00900)
>>> start = modes.initial_state("long", 0, 0x80000, entry=0x1000, stack=0x80000, reset=reset)
>>> hex(start.sregs.cr3), hex(start.regs.rip), start.sregs.cs.l
('0x86000', '0x1000', 1)
>>> real = modes.initial_state("real", 0, 0x80000, entry=0xFFFFFFF0, stack=0x7000, reset=reset)
>>> hex(real.sregs.cs.base), hex(real.regs.rip)
('0xffff0000', '0xfff0')
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..errors import InvalidArgument
from .registers import Regs, Segment, SpecialRegs
from .setup import (
    CODE32_SELECTOR,
    CODE64_SELECTOR,
    DATA_SELECTOR,
    GDT_OFFSET,
    IDT32_OFFSET,
    IDT64_OFFSET,
    IVT_OFFSET,
    MAX_STUB_VCPUS,
    PAGE_TABLES_OFFSET,
    SYSCALL_STUB,
    TSS_LIMIT,
    TSS_OFFSET,
    TSS_SELECTOR_BASE,
    TSS_SIZE,
    USER_CODE32_SELECTOR,
    USER_CODE64_SELECTOR,
    USER_DATA_SELECTOR,
    VECTORS,
    Span,
    check_region,
    tss_selector,
)

__all__ = ["MODES", "VcpuStart", "check_mode", "initial_state", "needs_setup_region"]

MODES = ("real", "protected", "long", "user")

CR0_PE, CR0_MP, CR0_ET, CR0_NE, CR0_WP, CR0_PG = 1 << 0, 1 << 1, 1 << 4, 1 << 5, 1 << 16, 1 << 31
CR4_PAE, CR4_OSFXSR, CR4_OSXMMEXCPT = 1 << 5, 1 << 9, 1 << 10
EFER_SCE, EFER_LME, EFER_LMA = 1 << 0, 1 << 8, 1 << 10
RFLAGS_FIXED, RFLAGS_IOPL3 = 0x2, 0x3000

MSR_STAR, MSR_LSTAR, MSR_SFMASK = 0xC0000081, 0xC0000082, 0xC0000084
# syscall clears TF, IF, DF, IOPL, NT and AC in ring 0 (as Linux does)
SFMASK = 0x100 | 0x200 | 0x400 | 0x3000 | 0x4000 | 0x40000

# A real-mode entry here starts like a CPU out of reset: CS selector 0xF000, base 0xFFFF0000
RESET_CS_BASE = 0xFFFF0000


@dataclass(frozen=True)
class VcpuStart:
    """The state a vCPU starts in: special and general registers, and MSRs to set."""

    sregs: SpecialRegs
    regs: Regs
    msrs: dict[int, int] = field(default_factory=dict)


def needs_setup_region(mode: str, exceptions: bool) -> bool:
    return mode != "real" or exceptions


def check_mode(mode: str, entry: int, stack: int, exceptions: bool, vcpu_id: int,
               setup_base: int, spans: Iterable[Span]) -> None:
    """Everything :func:`initial_state` would refuse, checked before any vCPU is created
    (``spans``: the memory slots, for the setup region)."""
    if mode not in MODES:
        raise InvalidArgument(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    if mode == "real":
        if not (0 <= entry < 0x100000 or RESET_CS_BASE <= entry <= 0xFFFFFFFF):
            raise InvalidArgument(f"real-mode entry {entry:#x} is neither below 1 MiB nor in "
                                  "the reset-vector segment (0xFFFF0000-0xFFFFFFFF)")
        if not 0 < stack <= 0x100000:
            raise InvalidArgument(f"real-mode stack top {stack:#x} is not within the first MiB")
        if exceptions and setup_base + PAGE_TABLES_OFFSET > 0x100000:
            raise InvalidArgument("real-mode exception stubs need setup_base below 1 MiB")
    elif mode == "protected" and (entry > 0xFFFFFFFF or stack > 0x100000000):
        raise InvalidArgument("protected-mode entry and stack must lie below 4 GiB")
    if not 0 <= stack < 1 << 64:
        raise InvalidArgument(f"stack {stack:#x} is not an address")
    if (mode == "user" or exceptions) and vcpu_id >= MAX_STUB_VCPUS:
        raise InvalidArgument(f"at most {MAX_STUB_VCPUS} vCPUs per partition can use user "
                              "mode or exception reporting")
    if needs_setup_region(mode, exceptions):
        check_region(setup_base, spans, mode in ("long", "user"))


def _segment(selector: int, base: int = 0, limit: int = 0xFFFF, type: int = 3, dpl: int = 0,
             db: int = 0, s: int = 1, long: int = 0, g: int = 0) -> Segment:
    """A present, usable segment."""
    return Segment(base, limit, selector, type, 1, dpl, db, s, long, g, 0, 0)


def _flat(selector: int, code: bool, long: bool = False, dpl: int = 0) -> Segment:
    return _segment(selector, 0, 0xFFFFFFFF, 0xB if code else 0x3, dpl, 0 if long else 1, 1,
                    1 if long else 0, 1)


def initial_state(mode: str, vcpu_id: int, setup_base: int, *, entry: int, stack: int,
                  reset: SpecialRegs, exceptions: bool = False,
                  allow_port_io: bool = False) -> VcpuStart:
    """The state that puts vCPU ``vcpu_id`` in ``mode`` with RIP at ``entry`` and the stack
    pointer at ``stack`` (arguments :func:`check_mode` accepted), starting from the vCPU's
    ``reset`` special registers (their APIC base, CR8 and interrupt bitmap are kept)."""
    base = setup_base
    rflags = RFLAGS_FIXED | (RFLAGS_IOPL3 if allow_port_io else 0)
    if mode == "real":
        cs_base = RESET_CS_BASE if entry >= RESET_CS_BASE else entry & 0xF0000
        ss_base = (stack - 1) & 0xF0000
        idt = reset.idt
        if exceptions:
            idt = dataclasses.replace(idt, base=base + IVT_OFFSET, limit=VECTORS * 4 - 1)
        cs_selector = 0xF000 if cs_base == RESET_CS_BASE else cs_base >> 4
        sregs = dataclasses.replace(
            reset, cs=_segment(cs_selector, cs_base, type=0xB),
            ds=_segment(0), es=_segment(0), fs=_segment(0), gs=_segment(0),
            ss=_segment(ss_base >> 4, ss_base), idt=idt,
            cr0=reset.cr0 & ~(CR0_PE | CR0_PG), cr4=0, efer=0)
        return VcpuStart(sregs, Regs(rip=entry - cs_base, rsp=(stack - ss_base) & 0xFFFF,
                                     rflags=rflags))

    long_mode = mode in ("long", "user")
    if mode == "user":
        cs = _flat(USER_CODE64_SELECTOR, True, long=True, dpl=3)
        data = _flat(USER_DATA_SELECTOR, False, dpl=3)
    else:
        cs = _flat(CODE64_SELECTOR if long_mode else CODE32_SELECTOR, True, long=long_mode)
        data = _flat(DATA_SELECTOR, False)
    if mode == "user" or exceptions:
        idt = dataclasses.replace(reset.idt, base=base + (IDT64_OFFSET if long_mode
                                                          else IDT32_OFFSET),
                                  limit=VECTORS * (16 if long_mode else 8) - 1)
    else:
        idt = dataclasses.replace(reset.idt, base=0, limit=0)
    cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE
    cr4 = CR4_OSFXSR | CR4_OSXMMEXCPT
    cr3 = efer = 0
    if long_mode:
        cr0 |= CR0_PG | CR0_WP
        cr4 |= CR4_PAE
        cr3 = base + PAGE_TABLES_OFFSET
        efer = EFER_LME | EFER_LMA | EFER_SCE
    sregs = dataclasses.replace(
        reset, cs=cs, ds=data, es=data, fs=data, gs=data, ss=data,
        tr=_segment(tss_selector(vcpu_id), base + TSS_OFFSET + vcpu_id * TSS_SIZE, TSS_LIMIT,
                    type=11, s=0),
        gdt=dataclasses.replace(reset.gdt, base=base + GDT_OFFSET,
                                limit=TSS_SELECTOR_BASE + 16 * MAX_STUB_VCPUS - 1),
        idt=idt, cr0=cr0, cr3=cr3, cr4=cr4, efer=efer)
    msrs = {}
    if long_mode:
        msrs = {MSR_STAR: USER_CODE32_SELECTOR << 48 | CODE64_SELECTOR << 32,
                MSR_LSTAR: base + SYSCALL_STUB, MSR_SFMASK: SFMASK}
    return VcpuStart(sregs, Regs(rip=entry, rsp=stack, rflags=rflags), msrs)
