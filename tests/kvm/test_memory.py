"""Guest memory: slots, bounds checks, read-only and dirty-logged slots, bad arguments."""

from __future__ import annotations

import pytest

import pyhv
from pyhv import exits

from ..conftest import fd_count


def test_read_write_and_typed_access(part):
    part.memory.write(0x2000, b"abc")
    assert part.memory.read(0x2000, 3) == b"abc"
    part.memory.write_u32(0x3000, 0xDEADBEEF)
    assert part.memory.read_u16(0x3002) == 0xDEAD
    part.memory.write_u64(0xFFF8, 2**64 - 1)
    assert part.memory.read_u64(0xFFF8) == 2**64 - 1
    part.memory.write(0x4000, bytearray(b"xy"))
    part.memory.write(0x4002, memoryview(b"z"))
    assert part.memory.read(0x4000, 3) == b"xyz"
    part.memory.fill(0x4000, 3, 0x41)
    assert part.memory.read(0x4000, 3) == b"AAA"
    with pytest.raises(pyhv.InvalidArgument):
        part.memory.write_u8(0, 256)


def test_access_outside_every_slot_is_refused(part):
    end = 16 << 20
    with pytest.raises(pyhv.GuestMemoryError) as info:
        part.memory.read(end - 2, 4)
    assert info.value.gpa == end - 2 and isinstance(info.value, ValueError)
    with pytest.raises(pyhv.GuestMemoryError):
        part.memory.write(end - 1, b"ab")
    assert part.memory.read(end - 1, 1) == b"\0"           # the partial write did not happen
    with pytest.raises(pyhv.GuestMemoryError):
        part.memory.read(0x1_0000_0000, 1)
    with pytest.raises(pyhv.InvalidArgument):
        part.memory.read(-1, 1)


def test_access_spanning_adjacent_slots(kvm):
    with pyhv.Partition(memory="64K") as part:
        part.map_memory(0x10000, 0x1000)
        part.map_memory(0x20000, 0x1000)              # a gap at 0x11000
        part.memory.write(0xFFFE, b"1234")
        assert part.memory.read(0xFFFC, 8) == b"\0\0" + b"1234" + b"\0\0"
        with pytest.raises(pyhv.GuestMemoryError):
            part.memory.read(0x10FFF, 2)


@pytest.mark.parametrize("gpa, size, match", [
    (0x1000, 0, "> 0"), (0x1001, 0x1000, "page"), (0x2000, 0x1800, "page"),
    (-0x1000, 0x1000, "page"), (0x1000, "x", "size"), ("0", 0x1000, "int"),
])
def test_bad_slot_arguments_are_refused_before_the_kernel(part, gpa, size, match):
    before = fd_count()
    with pytest.raises(pyhv.InvalidArgument, match=match):
        part.map_memory(gpa, size)
    assert len(part.memory.slots) == 1 and fd_count() == before


def test_overlapping_slots_are_refused(part):
    with pytest.raises(pyhv.SlotOverlapError):
        part.map_memory(0xFFF000, 0x2000)
    rom = part.map_memory(0x2000000, 0x10000, readonly=True)
    with pytest.raises(pyhv.SlotOverlapError):
        part.map_memory(0x200F000, 0x1000)
    with pytest.raises(pyhv.SlotOverlapError, match="reserved"):
        part.map_memory(0xFEFF0000, 0x10000)
    assert [s.gpa for s in part.memory.slots] == [0, rom.gpa]


def test_slot_beyond_the_physical_address_width_is_refused(part):
    with pytest.raises(pyhv.InvalidArgument, match="physical address width"):
        part.map_memory(1 << 60, 0x1000)


def test_unmap_frees_the_range_and_slot_number(part):
    slot = part.map_memory(0x4000000, 0x10000)
    part.memory.write(0x4000000, b"x")
    part.unmap_memory(slot)
    with pytest.raises(pyhv.GuestMemoryError):
        part.memory.read(0x4000000, 1)
    again = part.map_memory(0x4000000, 0x10000)
    assert again.slot == slot.slot and part.memory.read(0x4000000, 1) == b"\0"
    part.unmap_memory(0x4000000)
    with pytest.raises(pyhv.GuestMemoryError):
        part.unmap_memory(0x4000000)


def test_unmapped_ram_becomes_mmio_for_the_guest(part):
    part.memory.write(0x1000, pyhv.testing.assemble("mov 0x4000000, %eax\nhlt"))
    slot = part.map_memory(0x4000000, 0x1000)
    cpu = part.create_vcpu(mode="long", entry=0x1000)
    part.unmap_memory(slot)
    ex = cpu.run(timeout=10)
    assert isinstance(ex, exits.MmioRead) and ex.gpa == 0x4000000


def test_dirty_log_reports_pages_the_guest_wrote(part):
    logged = part.map_memory(0x4000000, 0x100000, dirty_log=True)
    part.memory.write(0x1000, pyhv.testing.assemble(
        "movl $1, 0x4000000\nmovl $2, 0x4005010\nmovl $3, 0x40FF000\nhlt"))
    cpu = part.create_vcpu(mode="long", entry=0x1000)
    assert part.dirty_pages(logged) == []
    assert isinstance(cpu.run(timeout=10), exits.Halt)
    assert part.dirty_pages(logged) == [0x4000000, 0x4005000, 0x40FF000]
    assert part.dirty_pages(logged) == []                 # reading resets the log
    with pytest.raises(pyhv.InvalidArgument):
        part.dirty_pages(part.memory.slots[0])


def test_large_partition_keeps_the_pc_hole_below_4gib(kvm):
    with pyhv.Partition(memory="4G") as part:
        assert [(s.gpa, s.size) for s in part.memory.slots] == [(0, 3 << 30), (4 << 30, 1 << 30)]
        part.memory.write(0x1_3FFF_F000, b"end")       # lazily backed: costs one page
        assert part.memory.read(0x1_3FFF_F000, 3) == b"end"
        with pytest.raises(pyhv.GuestMemoryError):
            part.memory.read(0xFFFF_F000, 1)
