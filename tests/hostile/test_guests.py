"""Hostile guests: every exit type with extreme values, faults, loops and wild jumps.  Each
must end in a typed exit or a timeout within its bound, and leave the host process healthy."""

from __future__ import annotations

import itertools

import pytest

import pyhv
from pyhv import exits
from pyhv.testing import assemble

from ..conftest import fd_count

BOUND = 2.0        # seconds any single hostile run may take before it counts as a timeout


def all_ones(ex: exits.IoIn) -> bytes:
    return b"\xff" * (ex.size * ex.count)


def run_guest(source: str, mode: str = "long", bits: int = 64, memory: str = "4M",
              setup=None, exits_limit: int = 10000,
              answer=all_ones) -> tuple[pyhv.Partition, list]:
    """Run ``source`` at 0x100000 (0x7000 in real mode) and collect its exits (at most
    ``exits_limit``), INs answered by ``answer`` and MMIO reads with all ones, until
    something else ends it."""
    entry = 0x7000 if mode == "real" else 0x100000
    part = pyhv.Partition(memory=memory)
    part.memory.write(entry, assemble(source, bits=bits, origin=entry))
    if setup:
        setup(part)
    cpu = part.create_vcpu(mode=mode, entry=entry)
    seen = []
    for _ in range(exits_limit):
        try:
            ex = cpu.run(timeout=BOUND)
        except pyhv.Timeout as timeout:
            seen.append(timeout)
            break
        seen.append(ex)
        if isinstance(ex, exits.IoIn):
            ex.complete(answer(ex))
        elif isinstance(ex, exits.MmioRead):
            ex.complete((1 << (8 * ex.size)) - 1)
        elif not isinstance(ex, (exits.IoOut, exits.MmioWrite)):
            break
    return part, seen


@pytest.fixture(autouse=True)
def host_stays_healthy(kvm):
    pyhv.check()
    before = fd_count()
    yield
    assert fd_count() == before
    with pyhv.Partition(memory="1M") as part:                 # and still runs guests
        part.memory.write(0x1000, b"\xf4")
        assert isinstance(part.create_vcpu(mode="real", entry=0x1000).run(timeout=5),
                          exits.Halt)


@pytest.mark.parametrize("size, register", [(1, "%al"), (2, "%ax"), (4, "%eax")])
def test_port_0xffff_in_every_size(size, register):
    part, seen = run_guest(f"mov $0xFFFF, %dx\nmov $-1, %eax\nout {register}, %dx\n"
                           f"in %dx, {register}\nhlt")
    with part:
        assert seen[0] == exits.IoOut(0xFFFF, size, b"\xff" * size, rip=seen[0].rip)
        assert isinstance(seen[1], exits.IoIn) and (seen[1].port, seen[1].size) == (0xFFFF, size)
        assert isinstance(seen[-1], exits.Halt)


def test_string_out_with_a_huge_count_is_bounded():
    # rep outsb of 4 GiB from the code itself: every exit carries at most a page, in order,
    # and the guest is still going when the host stops looking (the count is not trusted)
    part, seen = run_guest("mov $0x3F8, %dx\nmov $0x100000, %esi\nmov $-1, %ecx\nrep outsb\n"
                           "hlt", exits_limit=300)
    with part:
        assert len(seen) == 300 and all(isinstance(e, exits.IoOut) for e in seen)
        assert all(e.port == 0x3F8 and e.size == 1 and len(e.data) == e.count <= 4096
                   for e in seen)
        sent = b"".join(e.data for e in seen)
        assert sent == part.memory.read(0x100000, len(sent))      # the bytes, in order
        cpu = part.vcpus[0]
        assert (cpu.regs.rsi, cpu.regs.rcx) == (0x100000 + len(sent), 0xFFFFFFFF - len(sent))


def test_string_in_with_a_huge_count_runs_off_ram():
    # rep insw from 256 bytes below the top of RAM: what fits lands in RAM, the rest goes on
    # as MMIO writes past the end, carrying the answers in order (nothing is written anywhere
    # else, nothing is lost)
    answers = bytearray()

    def answer(ex: exits.IoIn) -> bytes:
        data = bytes((len(answers) + i) * 13 & 0xFF for i in range(ex.size * ex.count))
        answers.extend(data)
        return data

    part, seen = run_guest("mov $0x60, %dx\nmov $0x3FFF00, %edi\nmov $-1, %ecx\nrep insw\n"
                           "hlt", exits_limit=400, answer=answer)
    with part:
        assert all(isinstance(e, (exits.IoIn, exits.MmioWrite)) for e in seen), seen[-1]
        assert all(e.size == 2 and e.port == 0x60 for e in seen if isinstance(e, exits.IoIn))
        assert part.memory.read(0x3FFF00, 256) == answers[:256]
        writes = [e for e in seen if isinstance(e, exits.MmioWrite)]
        assert writes and writes[0].gpa == 0x400000
        ends = list(itertools.accumulate((e.size for e in writes), initial=0x400000))
        assert [e.gpa for e in writes] == ends[:-1]           # contiguous, from the RAM's end
        assert b"".join(e.data for e in writes) == answers[256:256 + ends[-1] - 0x400000]


def test_mmio_at_the_top_of_the_mapped_space_and_8_byte_reads():
    part, seen = run_guest("mov $0xFFFFFFF8, %ebx\nmov (%rbx), %rax\nmov %rax, (%rbx)\n"
                           "mov $0xFEE00000, %ebx\nmovb $1, (%rbx)\nhlt")
    with part:
        read, write, apic = seen[0], seen[1], seen[2]
        assert read == exits.MmioRead(0xFFFFFFF8, 8, rip=read.rip)
        assert write == exits.MmioWrite(0xFFFFFFF8, 8, b"\xff" * 8, rip=write.rip)
        assert isinstance(apic, exits.MmioWrite) and apic.gpa == 0xFEE00000
        assert isinstance(seen[-1], exits.Halt)


def test_writes_to_a_rom_never_land():
    def rom(part):
        slot = part.map_memory(0x800000, 0x1000, readonly=True)
        part.memory.write(slot.gpa, b"ROM!")

    part, seen = run_guest("mov $0x800000, %edi\nmov $512, %ecx\nmov $-1, %rax\nrep stosq\n"
                           "hlt", memory="4M", setup=rom)
    with part:
        assert all(isinstance(e, exits.MmioWrite) for e in seen[:-1])
        assert part.memory.read(0x800000, 4) == b"ROM!"


@pytest.mark.parametrize("source, expected", [
    ("lidt idt(%rip)\nud2\nidt: .word 0\n.quad 0", exits.Shutdown),          # triple fault
    ("jmp .", pyhv.Timeout),                                                 # infinite loop
    ("cli\nhlt", exits.Halt),                                                # hlt, no IRQs
    ("movabs $0x7fffffffffff0000, %rax\njmp *%rax", exits.Shutdown),         # unmapped
    ("movabs $0x8000000000000000, %rax\njmp *%rax", exits.Shutdown),         # non-canonical
    ("mov $0xD0000000, %eax\njmp *%rax", exits.InternalError),               # into MMIO
    ("mov $0x80000, %edi\nmov $0x8000, %ecx\nxor %eax, %eax\nrep stosl\nud2",  # wipe GDT/IDT
     exits.Shutdown),                                                        # and tables
])
def test_faults_loops_and_wild_jumps_end_in_typed_exits(source, expected):
    part, seen = run_guest(source)
    with part:
        assert isinstance(seen[-1], expected), seen[-1]


def test_self_modifying_code():
    # the guest patches an immediate it is about to execute
    part, seen = run_guest("movb $42, patched+1(%rip)\npatched: mov $0, %al\nout %al, $0x80\nhlt")
    with part:
        assert seen[0] == exits.IoOut(0x80, 1, b"\x2a", rip=seen[0].rip)


def test_hlt_with_interrupts_off_and_an_irqchip_is_bounded(kvm):
    with pyhv.Partition(memory="1M", irqchip=True) as part:
        part.memory.write(0x1000, b"\xfa\xf4")               # cli; hlt: waits forever
        cpu = part.create_vcpu(mode="real", entry=0x1000)
        with pytest.raises(pyhv.Timeout):
            cpu.run(timeout=0.3)


def test_coalesced_ring_overflow_keeps_order(kvm):
    # 3,000 writes overflow the kernel's ring many times; writes that then exit and writes
    # that were queued reach the handler in the guest's order
    with pyhv.Partition(memory="4M") as part:
        writes = []
        part.add_coalesced_mmio(0xD0000000, 0x1000,
                                write=lambda gpa, size, value: writes.append(value))
        part.memory.write(0x100000, assemble(
            "mov $0xD0000000, %ebx\nxor %ecx, %ecx\n"
            "1: mov %ecx, (%rbx)\ninc %ecx\ncmp $3000, %ecx\njne 1b\nhlt", origin=0x100000))
        cpu = part.create_vcpu(mode="long", entry=0x100000)
        assert part.run(timeout=60).halted
        assert writes == list(range(3000))
        assert 0 < cpu.stats.mmio_write < 3000        # some exited, most were queued
