"""What the KVM backend really does, found by running tiny guests rather than trusting its
name: each probe builds a throwaway machine, runs a few instructions, and its answer is kept
by the :class:`~pyhv.core.hypervisor.Hypervisor` handle (asked once per handle).

>>> import pyhv
>>> from pyhv.core import hypervisor, probes
>>> hv = hypervisor.default()
>>> honoured = probes.port_io_at_cpl3(hv)
>>> honoured == (hv.backend in ("kvm_intel", "kvm_amd")) or hv.backend == "unknown"
True
>>> probes.port_io_at_cpl3(hv) is honoured                  # cached: no second guest
True
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from .._native import Feature, VmFd
from ..errors import HypervisorError, MissingCapability
from ..exits import GuestException, IoOut
from ..x86.setup import DEFAULT_SETUP_BASE
from .hypervisor import Hypervisor
from .machine import Machine
from .memory import PAGE_SIZE, GuestMemory
from .vcpu import create_vcpu

__all__ = ["port_io_at_cpl3", "require_port_io_at_cpl3"]

# the throwaway machine: 2 MiB of RAM, the code above pyhv's setup region, KVM's real-mode
# pages where Partition puts them by default
_RAM = 2 << 20
_CODE = 0x100000
_KVM_TSS = 0xFEFFC000
_PROBE_PORT = 0x80
# mov $0x5a, %al; out %al, $0x80; ud2
_PORT_IO_CODE = bytes.fromhex("b05ae6800f0b")

_PORT_IO_KEY = ("probe", "port_io_at_cpl3")


@contextmanager
def _scratch_machine(hv: Hypervisor) -> Iterator[Machine]:
    """A machine with nothing but RAM at GPA 0, closed (vCPUs, VM and memory) on leaving."""
    vm = VmFd.create(hv.system, tss_addr=_KVM_TSS + PAGE_SIZE, identity_map_addr=_KVM_TSS)
    memory: GuestMemory | None = None
    machine: Machine | None = None
    try:
        memory = GuestMemory(vm, max_slots=hv.capability(Feature.NR_MEMSLOTS) or 32,
                             phys_limit=1 << hv.guest_phys_bits(),
                             reserved=(_KVM_TSS, _KVM_TSS + 4 * PAGE_SIZE), readonly_ok=False)
        memory.map(0, _RAM)
        machine = Machine(hv, vm, memory, setup_base=DEFAULT_SETUP_BASE, irqchip=False,
                          pit=False, hardened=False)
        yield machine
    finally:
        if machine is not None:
            machine.life.close()
            for vcpu in machine.vcpus:
                vcpu.close()
            machine.fast.close()
        vm.close()
        if memory is not None:
            memory.close()


def _probe_port_io(hv: Hypervisor) -> bool:
    with _scratch_machine(hv) as machine:
        machine.memory.write(_CODE, _PORT_IO_CODE)
        cpu = create_vcpu(None, machine, 0, mode="user", entry=_CODE, stack=_CODE,
                          allow_port_io=True)
        ex = cpu.run(timeout=10)
    if isinstance(ex, IoOut) and ex.port == _PROBE_PORT and ex.data == b"\x5a":
        return True
    if isinstance(ex, GuestException) and ex.vector == 13:     # #GP: IOPL was not honoured
        return False
    raise HypervisorError(f"the port-IO probe guest ended on {ex!r}, neither the OUT nor #GP")


def port_io_at_cpl3(hv: Hypervisor) -> bool:
    """Whether CPL3 code with IOPL 3 may use ``in``/``out`` on this backend.

    Hardware KVM runs the guest's RFLAGS as they are, so it may; kvm_pvm runs CPL3 code
    natively under flags of its own and ignores the guest's IOPL (the OUT raises #GP).
    Found by running ``out`` in a user-mode guest with IOPL 3, once per handle."""
    found = hv.recall(_PORT_IO_KEY)
    if found is None:
        found = hv.remember(_PORT_IO_KEY, _probe_port_io(hv))
    return bool(found)


def require_port_io_at_cpl3(hv: Hypervisor) -> None:
    """Raise :class:`pyhv.MissingCapability` where :func:`port_io_at_cpl3` is False."""
    if not port_io_at_cpl3(hv):
        raise MissingCapability(
            "port IO at CPL3 under IOPL 3",
            f"allow_port_io=True: {hv.backend} ignores the guest's IOPL in user mode, so `in` "
            "and `out` there raise #GP; do port IO at CPL0 (mode='long') or through a syscall")
