"""Guests in real, protected and long mode, run on the real /dev/kvm."""

from __future__ import annotations

import pytest

import pyhv
from pyhv import exits
from pyhv.x86.setup import (
    CODE32_SELECTOR,
    CODE64_SELECTOR,
    DEFAULT_SETUP_BASE,
    PAGE_TABLES_OFFSET,
    SETUP_MAX_SIZE,
    mapped_gibs,
    page_tables,
    region_size,
)

from ..conftest import boot


def outs(cpu: pyhv.VCpu, timeout: float = 10.0) -> tuple[list[int], pyhv.exits.Exit]:
    """Run until something other than an OUT to port 0xE9; return the values and that exit."""
    values = []
    while True:
        ex = cpu.run(timeout=timeout)
        if isinstance(ex, exits.IoOut) and ex.port == 0xE9:
            values.append(ex.value)
            continue
        return values, ex


def test_real_mode_arithmetic_reported_through_a_port(part):
    cpu = boot(part, "real_arith", mode="real")
    values, last = outs(cpu)
    assert values == [42, 5050]
    assert isinstance(last, exits.Halt)
    sregs = cpu.get_sregs()
    assert sregs.cr0 & 1 == 0                     # still real mode
    assert cpu.regs.rsp & 0xFFFF == DEFAULT_SETUP_BASE & 0xFFFF   # call/push/pop balanced


@pytest.mark.parametrize("mode", ["protected", "long"])
def test_guest_touches_memory_above_1mib(part, mode):
    cpu = boot(part, "high_memory", mode=mode)
    values, last = outs(cpu)
    assert values == [sum(i * 3 + 1 for i in range(256))]
    assert isinstance(last, exits.Halt)
    # the host sees what the guest wrote
    assert part.memory.read_u32(0x200000 + 4 * 255) == 255 * 3 + 1
    expected_cs = CODE64_SELECTOR if mode == "long" else CODE32_SELECTOR
    assert cpu.sregs.cs.selector == expected_cs


def test_long_mode_reaches_a_slot_above_4gib(kvm):
    with pyhv.Partition(memory="2M") as part:
        high = part.map_memory(0x1_0000_0000, 0x200000)
        cpu = boot(part, "above_4g")
        values, last = outs(cpu)
        assert values == [0x55667788]
        assert isinstance(last, exits.Halt)
        assert part.memory.read_u64(high.gpa + 8) == 0x1122334455667788


def test_slot_added_after_long_mode_setup_is_mapped_too(kvm):
    with pyhv.Partition(memory="2M") as part:
        cpu = boot(part, "above_4g")
        part.map_memory(0x1_0000_0000, 0x200000)   # after the page tables were written
        values, last = outs(cpu)
        assert values == [0x55667788] and isinstance(last, exits.Halt)


def test_each_mode_sets_the_documented_machine_state(part):
    part.memory.write(0x1000, b"\xf4")
    real = part.create_vcpu(mode="real", entry=0x1000)
    prot = part.create_vcpu(mode="protected", entry=0x1000)
    long = part.create_vcpu(mode="long", entry=0x1000, stack=0x9000)
    assert real.get_sregs().cr0 & 0x80000001 == 0
    p = prot.get_sregs()
    assert p.cr0 & 1 and not p.cr0 & 0x80000000 and p.efer & 0x400 == 0
    assert p.gdt.base == DEFAULT_SETUP_BASE
    s = long.get_sregs()
    assert s.cr0 & 0x80000001 == 0x80000001 and s.efer & 0x500 == 0x500 and s.cs.l == 1
    assert s.cr3 == DEFAULT_SETUP_BASE + PAGE_TABLES_OFFSET
    assert long.regs.rsp == 0x9000 and long.regs.rip == 0x1000
    assert [c.id for c in part.vcpus] == [0, 1, 2]
    for cpu in part.vcpus:
        assert isinstance(cpu.run(timeout=10), exits.Halt)


def test_real_mode_entry_above_64k_uses_a_segment(part):
    part.memory.write(0x23450, b"\xf4")
    cpu = part.create_vcpu(mode="real", entry=0x23450)
    assert cpu.sregs.cs.base == 0x20000 and cpu.regs.rip == 0x3450
    assert isinstance(cpu.run(timeout=10), exits.Halt)


def test_triple_fault_is_a_shutdown_exit(part):
    cpu = boot(part, "triple_fault")
    assert isinstance(cpu.run(timeout=10), exits.Shutdown)


def test_setup_region_must_be_ram(kvm):
    with pyhv.Partition(memory="64K") as part:
        part.memory.write(0x1000, b"\xf4")
        with pytest.raises(pyhv.InvalidArgument, match="setup region"):
            part.create_vcpu(mode="long", entry=0x1000)
        assert part.vcpus == ()
        # real mode needs no setup region, and the stack defaults to the end of RAM
        cpu = part.create_vcpu(mode="real", entry=0x1000)
        assert cpu.regs.rsp == 0                      # 0x10000 in a 64K segment
        assert isinstance(cpu.run(timeout=10), exits.Halt)


def test_custom_setup_base(kvm):
    with pyhv.Partition(memory="1M", setup_base=0x10000) as part:
        part.memory.write(0x1000, b"\xf4")
        cpu = part.create_vcpu(mode="long", entry=0x1000)
        assert cpu.sregs.gdt.base == 0x10000 and cpu.regs.rsp == 0x10000
        assert isinstance(cpu.run(timeout=10), exits.Halt)


@pytest.mark.parametrize("slots", [[], [0x1_0000_0000], [0x1_0000_0000, 0x80_0000_0000]])
def test_the_setup_region_size_is_counted_exactly(kvm, slots):
    # the size is counted without building the tables; the tables written must match it
    with pyhv.Partition(memory="4M") as part:
        for gpa in slots:
            part.map_memory(gpa, 0x200000)
        boot(part, "above_4g")
        spans = part.memory.spans()
        size = region_size(part.setup_base, spans, long_mode=True)
        at = part.setup_base + PAGE_TABLES_OFFSET
        tables = page_tables(at, mapped_gibs(spans), (part.setup_base,
                                                      part.setup_base + SETUP_MAX_SIZE))
        assert size == PAGE_TABLES_OFFSET + len(tables)
        assert part.memory.read(at, len(tables)) == tables
