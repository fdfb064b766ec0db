"""User mode (CPL3 payloads under pyhv's ring-0 stub) and guest exceptions in every mode."""

from __future__ import annotations

import pytest

import pyhv
from pyhv import exits
from pyhv.core import probes
from pyhv.testing import assemble
from pyhv.x86.setup import (
    ERROR_CODE_VECTORS,
    USER_CODE64_SELECTOR,
)

from ..conftest import fd_count, guest_code

PAYLOAD = 0x100000


def load_user(part: pyhv.Partition, name: str, **kwargs) -> pyhv.VCpu:
    part.memory.write(PAYLOAD, guest_code(name, "long", origin=PAYLOAD))
    return part.create_vcpu(mode="user", entry=PAYLOAD, **kwargs)


def test_payload_runs_at_cpl3_and_its_syscalls_reach_python(part):
    cpu = load_user(part, "user_syscalls")
    assert cpu.sregs.cs.selector == USER_CODE64_SELECTOR and cpu.sregs.cs.dpl == 3
    ex = cpu.run(timeout=10)
    assert isinstance(ex, exits.Syscall) and ex.nr == 1
    fd, buf, count = ex.args[:3]
    assert (fd, count) == (1, 14) and part.memory.read(buf, count) == b"hello from rin"
    ex.complete(14)
    ex = cpu.run(timeout=10)
    assert ex == exits.Syscall(60, (14,) + ex.args[1:], rip=ex.rip)
    ex.complete(0)
    assert isinstance(cpu.run(timeout=10), exits.GuestException)    # the ud2 after exit()
    with pytest.raises(pyhv.StaleExitError):
        ex.complete(0)


def test_syscall_handler_in_a_handler_driven_run(part):
    load_user(part, "user_syscalls")
    calls = []

    def syscall(nr, args):
        calls.append((nr, args[0]))
        return None if nr == 60 else -9 & (2**64 - 1)

    part.set_syscall_handler(syscall)
    result = part.run(timeout=10)
    assert isinstance(result.exit, exits.Syscall) and result.exit.nr == 60
    assert calls == [(1, 1), (60, 2**64 - 9)]             # exit() got write()'s result
    assert result.exits_handled == 1


def test_payload_faults_come_back_typed_and_can_be_resumed(part):
    cpu = load_user(part, "user_faults")
    labels = [part.memory.read_u64(PAYLOAD + 8 + 8 * i) for i in range(5)]
    seen = []
    while True:
        ex = cpu.run(timeout=10)
        if isinstance(ex, exits.Syscall):
            break
        assert isinstance(ex, exits.GuestException) and ex.user, ex
        seen.append((ex.vector, ex.error_code, ex.cr2))
        if ex.vector != 3:                        # int3 is a trap: it resumes past itself
            ex.resume_at(labels[len(seen) - 2])
    assert seen == [
        (3, None, None),                          # int3
        (14, 0b101, 0x80000),                     # user read of a present supervisor page
        (14, 0b100, 0x5000000000),                # user read of an unmapped page
        (0, None, None),                          # divide error
        (13, 0, None),                            # out without IOPL
        (13, 0, None),                            # hlt at CPL3
    ]
    assert ex.nr == 60
    assert exits.GuestException(14, 5).name == "#PF page fault"


def test_fault_without_resume_repeats(part):
    part.memory.write(PAYLOAD, assemble("ud2"))
    cpu = part.create_vcpu(mode="user", entry=PAYLOAD)
    first, second = cpu.run(timeout=10), cpu.run(timeout=10)
    assert first == second and first.vector == 6 and first.rip == PAYLOAD


PORT_OUT = "mov $0x5a, %al\nout %al, $0x80\nhlt"


def iopl3_out(part: pyhv.Partition) -> exits.Exit:
    """What an OUT at CPL3 under IOPL 3 does here, the flags set by hand (not by the probe's
    route, allow_port_io)."""
    part.memory.write(PAYLOAD, assemble(PORT_OUT))
    cpu = part.create_vcpu(mode="user", entry=PAYLOAD)
    cpu.regs.rflags |= 0x3000
    return cpu.run(timeout=10)


def test_the_port_io_probe_says_what_an_iopl3_payload_meets(kvm):
    with pyhv.Partition(memory="16M") as part:
        ex = iopl3_out(part)
        honoured = probes.port_io_at_cpl3(part.hypervisor)
    if honoured:
        assert ex == exits.IoOut(0x80, 1, b"\x5a", rip=PAYLOAD + 4)
    else:
        assert isinstance(ex, exits.GuestException) and (ex.vector, ex.rip) == (13, PAYLOAD + 2)


def test_allow_port_io_lets_the_payload_use_ports_or_says_it_cannot(part):
    part.memory.write(PAYLOAD, assemble(PORT_OUT))
    if not probes.port_io_at_cpl3(part.hypervisor):       # kvm_pvm: IOPL is not honoured
        fds = fd_count()
        with pytest.raises(pyhv.MissingCapability, match="ignores the guest's IOPL"):
            part.create_vcpu(mode="user", entry=PAYLOAD, allow_port_io=True)
        assert part.vcpus == () and fd_count() == fds   # nothing made, nothing left open
        assert part.create_vcpu(mode="user", entry=PAYLOAD).id == 0     # no id burned
        return
    cpu = part.create_vcpu(mode="user", entry=PAYLOAD, allow_port_io=True)
    ex = cpu.run(timeout=10)
    assert ex == exits.IoOut(0x80, 1, b"\x5a", rip=PAYLOAD + 4)
    ex = cpu.run(timeout=10)                      # hlt still needs ring 0
    assert isinstance(ex, exits.GuestException) and ex.vector == 13


def test_allow_port_io_at_cpl0_needs_no_probe(part, monkeypatch):
    # IOPL means nothing at CPL0: every backend takes it, and no probe guest is made for it
    monkeypatch.setattr(probes, "port_io_at_cpl3", lambda hv: pytest.fail("probed"))
    part.memory.write(0x1000, assemble(PORT_OUT))
    cpu = part.create_vcpu(mode="long", entry=0x1000, allow_port_io=True)
    assert cpu.run(timeout=10) == exits.IoOut(0x80, 1, b"\x5a", rip=0x1004)
    assert cpu.regs.rflags & 0x3000 == 0x3000


def test_the_port_io_probe_runs_once_per_handle_and_leaves_nothing(kvm, monkeypatch):
    made = []
    real = probes.VmFd.create
    monkeypatch.setattr(probes.VmFd, "create", lambda *a, **k: made.append(1) or real(*a, **k))
    fds = fd_count()
    with pyhv.Hypervisor() as hv:
        first = probes.port_io_at_cpl3(hv)
        assert probes.port_io_at_cpl3(hv) == first and made == [1]
    assert fd_count() == fds


def test_payload_cannot_write_the_setup_region(part):
    part.memory.write(PAYLOAD, assemble("movq $0, 0x80000\nud2"))
    cpu = part.create_vcpu(mode="user", entry=PAYLOAD)
    before = part.memory.read(0x80000, 4096)
    ex = cpu.run(timeout=10)
    assert isinstance(ex, exits.GuestException) and ex.vector == 14 and ex.error_code == 0b111
    assert part.memory.read(0x80000, 4096) == before


@pytest.mark.parametrize("mode, width", [("real", 16), ("protected", 32), ("long", 64)])
def test_exceptions_in_other_modes_when_asked(kvm, mode, width):
    # (kvm_pvm's ring-0 emulator cannot run int3, so #UD and #DE it is)
    with pyhv.Partition(memory="16M") as part:
        part.memory.write(0x1000, assemble("ud2\nxor %cx, %cx\ndiv %cx", bits=width,
                                           origin=0x1000))
        cpu = part.create_vcpu(mode=mode, entry=0x1000, exceptions=True)
        ex = cpu.run(timeout=10)
        assert isinstance(ex, exits.GuestException) and (ex.vector, ex.rip) == (6, 0x1000)
        assert not ex.user and ex.error_code is None
        again = cpu.run(timeout=10)
        assert again == ex                                # a fault repeats...
        with pytest.raises(pyhv.StaleExitError):
            ex.resume_at(0x1002)                          # (its frame is the new one's now)
        again.resume_at(0x1002)                           # ...unless moved past
        ex = cpu.run(timeout=10)
        assert isinstance(ex, exits.GuestException) and ex.vector == 0
        assert ex.rip == 0x1002 + len(assemble("xor %cx, %cx", bits=width))


def test_error_code_of_a_protected_mode_fault(kvm):
    with pyhv.Partition(memory="16M") as part:
        # load a selector past the GDT limit: #GP with the selector as error code
        part.memory.write(0x1000, assemble("mov $0x1238, %ax\nmov %ax, %ds", bits=32))
        cpu = part.create_vcpu(mode="protected", entry=0x1000, exceptions=True)
        ex = cpu.run(timeout=10)
        assert isinstance(ex, exits.GuestException)
        assert ex.vector == 13 and 13 in ERROR_CODE_VECTORS and ex.error_code == 0x1238


def test_without_exceptions_a_fault_is_a_shutdown(part):
    part.memory.write(0x1000, assemble("ud2"))
    assert isinstance(part.create_vcpu(mode="long", entry=0x1000).run(timeout=10),
                      exits.Shutdown)
