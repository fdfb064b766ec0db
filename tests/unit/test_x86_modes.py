"""The register state of each guest mode (pyhv.x86.modes), and what check_mode refuses."""

from __future__ import annotations

import pytest

from pyhv import InvalidArgument
from pyhv.x86 import modes
from pyhv.x86.registers import DescriptorTable, Regs, Segment, SpecialRegs

BASE = 0x80000
RAM16 = [(0, 16 << 20, False)]
# a vCPU's special registers out of reset, as KVM reports them (CR0 = CD | NW | ET)
RESET = SpecialRegs(*[Segment()] * 8, DescriptorTable(0, 0xFFFF), DescriptorTable(0, 0xFFFF),
                    cr0=0x60000010, cr2=0, cr3=0, cr4=0, cr8=5, efer=0, apic_base=0xFEE00900,
                    interrupt_bitmap=(1, 2, 3, 4))


def start(mode, entry=0x1000, stack=0x70000, vcpu_id=0, **kwargs):
    return modes.initial_state(mode, vcpu_id, BASE, entry=entry, stack=stack, reset=RESET,
                               **kwargs)


def flat(selector, code, long=False, dpl=0):
    return Segment(base=0, limit=0xFFFFFFFF, selector=selector, type=0xB if code else 0x3,
                   present=1, dpl=dpl, db=0 if long else 1, s=1, l=1 if long else 0, g=1)


@pytest.mark.parametrize("mode", ["protected", "long", "user"])
def test_every_mode_keeps_the_reset_apic_base_cr8_and_interrupt_bitmap(mode):
    s = start(mode).sregs
    assert (s.apic_base, s.cr8, s.interrupt_bitmap) == (0xFEE00900, 5, (1, 2, 3, 4))


def test_protected_mode_state():
    st = start("protected", vcpu_id=2)
    s = st.sregs
    assert s.cr0 == 0x33                             # PE | MP | ET | NE, no paging
    assert (s.cr3, s.cr4, s.efer) == (0, 0x600, 0)   # OSFXSR | OSXMMEXCPT
    assert s.cs == flat(0x08, code=True)
    assert s.ds == s.es == s.fs == s.gs == s.ss == flat(0x18, code=False)
    assert s.gdt == DescriptorTable(BASE, 0x137)
    assert s.idt == DescriptorTable(0, 0)           # no exception reporting: no IDT
    assert s.tr == Segment(base=BASE + 0x2000 + 2 * 0x80, limit=0x67, selector=0x58, type=11,
                           present=1, s=0)
    assert st.regs == Regs(rip=0x1000, rsp=0x70000, rflags=0x2)
    assert st.msrs == {}


def test_protected_mode_with_exceptions_uses_the_32_bit_idt():
    assert start("protected", exceptions=True).sregs.idt == DescriptorTable(BASE + 0x1200, 255)


def test_long_mode_state():
    st = start("long", entry=0x123456, stack=0x9000)
    s = st.sregs
    assert s.cr0 == 0x80010033                       # PE | MP | ET | NE | WP | PG
    assert s.cr4 == 0x620                            # PAE | OSFXSR | OSXMMEXCPT
    assert s.efer == 0x501                           # SCE | LME | LMA
    assert s.cr3 == BASE + 0x6000
    assert s.cs == flat(0x10, code=True, long=True)
    assert s.ds == s.ss == flat(0x18, code=False)
    assert s.idt == DescriptorTable(0, 0)
    assert (st.regs.rip, st.regs.rsp, st.regs.rflags) == (0x123456, 0x9000, 0x2)
    assert st.msrs == {0xC0000081: 0x0020_0010_0000_0000,    # STAR: sysret 0x20, syscall 0x10
                       0xC0000082: BASE + 0x3600,            # LSTAR: the syscall entry stub
                       0xC0000084: 0x47700}                  # SFMASK: TF IF DF IOPL NT AC


def test_long_mode_with_exceptions_uses_the_64_bit_idt():
    assert start("long", exceptions=True).sregs.idt == DescriptorTable(BASE + 0x1000, 511)


def test_user_mode_state_is_long_mode_at_cpl3():
    st = start("user", entry=0x100000, stack=0x200000, vcpu_id=15)
    s = st.sregs
    assert (s.cr0, s.cr4, s.efer, s.cr3) == (0x80010033, 0x620, 0x501, BASE + 0x6000)
    assert s.cs == flat(0x33, code=True, long=True, dpl=3)
    assert s.ds == s.es == s.fs == s.gs == s.ss == flat(0x2B, code=False, dpl=3)
    assert s.idt == DescriptorTable(BASE + 0x1000, 511)      # always: faults come back
    assert s.tr.selector == 0x38 + 16 * 15 and s.tr.base == BASE + 0x2000 + 15 * 0x80
    assert (st.regs.rip, st.regs.rsp) == (0x100000, 0x200000)
    assert st.msrs[0xC0000082] == BASE + 0x3600


@pytest.mark.parametrize("mode", ["real", "protected", "long", "user"])
def test_allow_port_io_sets_iopl_3(mode):
    assert start(mode, stack=0x7000).regs.rflags == 0x2
    assert start(mode, stack=0x7000, allow_port_io=True).regs.rflags == 0x3002


def test_real_mode_entry_below_64k():
    st = start("real", entry=0x7C00, stack=0x7000)
    s = st.sregs
    assert s.cr0 == 0x60000010 and (s.cr4, s.efer) == (0, 0)   # PE/PG off, the rest kept
    assert (s.cs.base, s.cs.selector, s.cs.type, s.cs.limit) == (0, 0, 0xB, 0xFFFF)
    assert (s.ss.base, s.ss.selector) == (0, 0)
    assert (st.regs.rip, st.regs.rsp) == (0x7C00, 0x7000)
    assert s.idt == RESET.idt and st.msrs == {}


def test_real_mode_entry_and_stack_above_64k_use_segments():
    st = start("real", entry=0x23450, stack=0x80000)
    s = st.sregs
    assert (s.cs.base, s.cs.selector, st.regs.rip) == (0x20000, 0x2000, 0x3450)
    assert (s.ss.base, s.ss.selector, st.regs.rsp) == (0x70000, 0x7000, 0)   # 0x10000 wraps


def test_real_mode_reset_vector_starts_like_a_cpu_out_of_reset():
    st = start("real", entry=0xFFFFFFF0, stack=0x7000)
    cs = st.sregs.cs
    assert (cs.base, cs.selector, cs.limit) == (0xFFFF0000, 0xF000, 0xFFFF)
    assert st.regs.rip == 0xFFF0


def test_real_mode_exceptions_use_the_ivt():
    s = start("real", stack=0x7000, exceptions=True).sregs
    assert s.idt == DescriptorTable(BASE + 0x1300, 127)


# -- check_mode -------------------------------------------------------------------------------
def check(mode, entry=0x1000, stack=0x70000, exceptions=False, vcpu_id=0, setup_base=BASE,
          spans=RAM16):
    modes.check_mode(mode, entry, stack, exceptions, vcpu_id, setup_base, spans)


@pytest.mark.parametrize("kwargs, match", [
    (dict(mode="virtual86"), "unknown mode 'virtual86'; choose one of real, protected, long"),
    (dict(mode="real", entry=0x100000), "neither below 1 MiB nor in the reset-vector"),
    (dict(mode="real", entry=0xFFFEFFFF), "neither below 1 MiB"),
    (dict(mode="real", entry=0x1_0000_0000), "neither below 1 MiB"),
    (dict(mode="real", stack=0), "stack top 0x0 is not within the first MiB"),
    (dict(mode="real", stack=0x100001), "not within the first MiB"),
    (dict(mode="real", exceptions=True, setup_base=0xFB000), "setup_base below 1 MiB"),
    (dict(mode="protected", entry=0x1_0000_0000), "must lie below 4 GiB"),
    (dict(mode="protected", stack=0x1_0000_0001), "must lie below 4 GiB"),
    (dict(mode="long", stack=-1), "is not an address"),
    (dict(mode="long", stack=1 << 64), "is not an address"),
    (dict(mode="user", vcpu_id=16), "at most 16 vCPUs"),
    (dict(mode="long", exceptions=True, vcpu_id=16), "at most 16 vCPUs"),
    (dict(mode="protected", exceptions=True, vcpu_id=99), "at most 16 vCPUs"),
    (dict(mode="long", spans=[]), "needs writable RAM"),
    (dict(mode="protected", spans=[(0, 16 << 20, True)]), "needs writable RAM"),
    (dict(mode="real", exceptions=True, spans=[]), "needs writable RAM"),
], ids=lambda v: v if isinstance(v, str) and len(v) < 40 else None)
def test_check_mode_refuses(kwargs, match):
    with pytest.raises(InvalidArgument, match=match):
        check(**kwargs)


@pytest.mark.parametrize("kwargs", [
    dict(mode="real", entry=0xFFFFF, stack=0x100000, spans=[]),    # needs no setup region
    dict(mode="real", entry=0xFFFF0000, stack=1, spans=[]),
    dict(mode="real", entry=0xFFFFFFFF, spans=[]),
    dict(mode="protected", entry=0xFFFFFFFF, stack=0x1_0000_0000),
    dict(mode="long", entry=0xFFFF_8000_0000_0000, stack=(1 << 64) - 1),
    dict(mode="user", vcpu_id=15),
    dict(mode="long", vcpu_id=16),                                   # no stubs: no limit
])
def test_check_mode_accepts(kwargs):
    check(**kwargs)


def test_which_modes_need_the_setup_region():
    assert [m for m in modes.MODES if modes.needs_setup_region(m, False)] == [
        "protected", "long", "user"]
    assert all(modes.needs_setup_region(m, True) for m in modes.MODES)
