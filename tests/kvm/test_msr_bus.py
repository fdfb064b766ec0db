"""The MSR bus: guest RDMSR/WRMSR of chosen indices served in Python (KVM's MSR filter sends
them to user space), in handler-driven and typed runs, hardened or not."""

from __future__ import annotations

import pytest

import pyhv
from pyhv import exits
from pyhv.testing import assemble

SYNTHETIC = 0x40000000      # Hyper-V's GUEST_OS_ID: no MSR KVM implements here
GUEST = assemble(f"""
    mov ${SYNTHETIC:#x}, %ecx
    mov $0x11223344, %eax
    mov $0x55667788, %edx
    wrmsr                      # -> the write handler
    rdmsr                      # <- the read handler
    out %eax, $0x80
    mov %edx, %eax
    out %eax, $0x81
    mov $0x10, %ecx            # the TSC: still KVM's, no exit
    rdmsr
    hlt
""", origin=0x1000)


def needs_msr_exits(part: pyhv.Partition) -> None:
    if not (part.hypervisor.capability(pyhv.Feature.X86_USER_SPACE_MSR) and
            part.hypervisor.capability(pyhv.Feature.X86_MSR_FILTER)):
        pytest.skip("KVM without user-space MSR exits or the MSR filter")


@pytest.mark.parametrize("hardened", [False, True])
def test_msr_handlers_serve_rdmsr_and_wrmsr(kvm, hardened):
    with pyhv.Partition(memory="16M", hardened=hardened) as part:
        needs_msr_exits(part)
        part.memory.write(0x1000, GUEST)
        part.create_vcpu(mode="long", entry=0x1000)
        stored = {}

        def write(index: int, size: int, value: int) -> None:
            stored[index] = value

        part.add_msr_handler(SYNTHETIC, read=lambda index, size: stored[index] + 1,
                             write=write)
        outs = []
        part.add_io_handler(range(0x80, 0x82), write=lambda port, size, v: outs.append(v))
        result = part.run(timeout=10)
        assert result.halted, result
        assert stored == {SYNTHETIC: 0x5566778811223344}
        assert outs == [0x11223345, 0x55667788]
        assert result.exits_handled == 4              # wrmsr, rdmsr, two OUTs


def test_an_msr_exit_in_a_typed_run_can_be_answered_or_fault(kvm):
    with pyhv.Partition(memory="16M") as part:
        needs_msr_exits(part)
        part.memory.write(0x1000, GUEST)
        cpu = part.create_vcpu(mode="long", entry=0x1000, exceptions=True)
        part.add_msr_handler(SYNTHETIC, read=lambda index, size: 0)
        ex = cpu.run(timeout=10)
        assert isinstance(ex, exits.MsrWrite) and ex.index == SYNTHETIC and ex.why == "filter"
        assert ex.value == 0x5566778811223344
        ex.complete()
        with pytest.raises(pyhv.StaleExitError):
            ex.complete()                            # answered once
        ex = cpu.run(timeout=10)
        assert isinstance(ex, exits.MsrRead) and ex.index == SYNTHETIC
        with pytest.raises(pyhv.HandlerError):
            ex.complete(1 << 64)
        ex.fail()                                    # the guest gets #GP at the rdmsr
        fault = cpu.run(timeout=10)
        assert isinstance(fault, exits.GuestException) and fault.vector == 13
        assert fault.rip == ex.rip


def test_a_write_only_msr_handler_faults_reads(part):
    needs_msr_exits(part)
    part.memory.write(0x1000, GUEST)
    part.create_vcpu(mode="long", entry=0x1000, exceptions=True)
    part.add_msr_handler(SYNTHETIC, write=lambda index, size, value: None)
    result = part.run(timeout=10)
    assert isinstance(result.exit, exits.GuestException) and result.exit.vector == 13


def test_removing_the_msr_handler_gives_the_msr_back_to_kvm(part):
    needs_msr_exits(part)
    handler = part.add_msr_handler(range(SYNTHETIC, SYNTHETIC + 4), read=lambda i, s: 7)
    assert handler.space == "msr" and (handler.start, handler.end) == (SYNTHETIC, SYNTHETIC + 4)
    with pytest.raises(pyhv.OverlapError):
        part.add_msr_handler(SYNTHETIC + 3, read=lambda i, s: 0)
    part.remove_handler(handler)
    with pytest.raises(pyhv.InvalidArgument):
        part.remove_handler(handler)
    part.memory.write(0x1000, GUEST)
    part.create_vcpu(mode="long", entry=0x1000, exceptions=True)
    result = part.run(timeout=10)                    # KVM's own answer: #GP for this MSR
    assert isinstance(result.exit, exits.GuestException) and result.exit.vector == 13
