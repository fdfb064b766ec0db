"""The two seams of the partition the Hyper-V enlightenments stand on: an MSR handler that
refuses an access (:class:`pyhv.RefuseAccess` -> #GP in the guest) and
:meth:`pyhv.Partition.signal_msi`."""

from __future__ import annotations

import pytest

import pyhv
from pyhv import exits
from pyhv.testing import assemble

MSR = 0x40000000
GUEST = assemble(f"""
    mov ${MSR:#x}, %ecx
    mov $7, %eax
    xor %edx, %edx
    wrmsr
    rdmsr
    hlt
""", origin=0x1000)


@pytest.mark.parametrize("refuse", ["read", "write"])
def test_a_handler_that_refuses_an_msr_access_gives_the_guest_gp(part, refuse):
    part.memory.write(0x1000, GUEST)
    cpu = part.create_vcpu(mode="long", entry=0x1000, exceptions=True)
    seen = []

    def read(index: int, size: int) -> int:
        if refuse == "read":
            raise pyhv.RefuseAccess(index)
        return 42

    def write(index: int, size: int, value: int) -> None:
        seen.append(value)
        if refuse == "write":
            raise pyhv.RefuseAccess(index)

    part.add_msr_handler(MSR, read=read, write=write)
    result = part.run(timeout=10)
    assert isinstance(result.exit, exits.GuestException) and result.exit.vector == 13
    assert seen == [7]
    assert result.exit.rip == 0x100C + (2 if refuse == "read" else 0)    # at the instruction
    assert cpu.regs.rax == 7                                            # nothing read


def test_signal_msi_needs_the_irqchip_and_checks_its_arguments(kvm):
    with pyhv.Partition(memory="1M") as part:
        with pytest.raises(pyhv.StateError, match="irqchip"):
            part.signal_msi(0xFEE00000, 0x30)
    with pyhv.Partition(memory="1M", irqchip=True) as part:
        with pytest.raises(pyhv.InvalidArgument):
            part.signal_msi(0xFEE00000, 1 << 32)
        with pytest.raises(pyhv.InvalidArgument):
            part.signal_msi(-1, 0x30)
        part.memory.write(0x1000, b"\xf4")
        part.create_vcpu(mode="real", entry=0x1000)
        assert part.signal_msi(0xFEE07000, 0x400) is False        # no LAPIC has ID 7
    with pytest.raises(pyhv.ClosedError):
        part.signal_msi(0xFEE00000, 0x400)
