"""A machine halted for good (csrc/halt.c, Partition(halt_watch=True)) and the interrupt
plumbing the PC builds on (GSI routing, MSIs), on the real /dev/kvm."""

from __future__ import annotations

import time

import pytest

import pyhv
from pyhv import exits
from pyhv.testing import assemble

ENTRY = 0x100000


def watched(code: str, cpus: int = 1) -> pyhv.Partition:
    part = pyhv.Partition(memory="4M", irqchip=True, halt_watch=True)
    part.memory.write(ENTRY, assemble(code, origin=ENTRY))
    for _ in range(cpus):
        part.create_vcpu(mode="long", entry=ENTRY)
    return part


def test_hlt_with_interrupts_off_ends_the_run_as_a_halt(kvm):
    with watched("cli\nhlt") as part:
        started = time.monotonic()
        exit = part.vcpus[0].run(timeout=30)
        assert isinstance(exit, exits.Halt) and exit.rip == ENTRY + 2
        assert time.monotonic() - started < 5          # looks every 50 ms


def test_hlt_with_interrupts_on_waits_for_one(kvm):
    with watched("sti\nhlt") as part, pytest.raises(pyhv.Timeout):
        part.vcpus[0].run(timeout=0.5)


def test_without_the_watch_such_a_guest_sleeps_on(kvm):
    with pyhv.Partition(memory="4M", irqchip=True) as part:
        part.memory.write(ENTRY, assemble("cli\nhlt", origin=ENTRY))
        cpu = part.create_vcpu(mode="long", entry=ENTRY)
        with pytest.raises(pyhv.Timeout):
            cpu.run(timeout=0.3)


def test_every_vcpu_of_a_dead_machine_returns_a_halt(kvm):
    # vCPU 0 halts with interrupts off; vCPUs 1-2 wait for a SIPI nobody will send
    with watched("cli\nhlt", cpus=3) as part:
        results = part.run_all(timeout=30)
        assert [type(r.exit) for r in results] == [exits.Halt] * 3


def test_a_vcpu_not_running_keeps_the_verdict_open(kvm):
    # one vCPU of two run alone: the other might still be run (and wake it) later
    with watched("cli\nhlt", cpus=2) as part, pytest.raises(pyhv.Timeout):
        part.vcpus[0].run(timeout=0.5)


@pytest.mark.parametrize("route, dead", [(0x400, False), (0x10400, True), (0x0030, True)],
                         ids=["ioapic-nmi", "ioapic-nmi-masked", "ioapic-fixed"])
def test_an_ioapic_route_that_delivers_nmis_can_still_wake_it(kvm, route, dead):
    with watched(f"""
            mov $0xFEC00000, %rbx
            movl $0x10, (%rbx)               # redirection entry 0, low half
            movl ${route:#x}, 0x10(%rbx)
            cli
            hlt""") as part:
        if dead:
            assert isinstance(part.vcpus[0].run(timeout=30), exits.Halt)
        else:
            with pytest.raises(pyhv.Timeout):
                part.vcpus[0].run(timeout=0.5)


def test_a_lapic_lint0_in_nmi_mode_can_still_wake_it(kvm):
    with watched("""
            mov $0xFEE00000, %rbx
            movl $0x1FF, 0xF0(%rbx)          # software-enable the LAPIC
            movl $0x400, 0x350(%rbx)         # LINT0: NMI, unmasked
            cli
            hlt""") as part, pytest.raises(pyhv.Timeout):
        part.vcpus[0].run(timeout=0.5)


def test_the_verdict_lasts_until_every_vcpu_has_seen_it_then_a_new_run_starts_fresh(kvm):
    with watched("cli\nhlt\nout %al, $0x80\ncli\nhlt") as part:
        cpu = part.vcpus[0]
        start = part.snapshot()
        assert isinstance(cpu.run(timeout=30), exits.Halt)
        part.restore(start)                             # runnable again...
        cpu.regs.rip = ENTRY + 2                        # ...past the first hlt
        exit = cpu.run(timeout=30)
        assert isinstance(exit, exits.IoOut) and exit.port == 0x80
        assert isinstance(cpu.run(timeout=30), exits.Halt)


def test_a_canceled_run_of_a_watched_vcpu_still_cancels(kvm):
    with watched("sti\nhlt") as part:
        import threading
        timer = threading.Timer(0.2, part.stop)
        timer.start()
        assert isinstance(part.vcpus[0].run(timeout=30), exits.Canceled)
        timer.join()


# -- the interrupt plumbing the PC uses ---------------------------------------------------------
def test_gsi_routing_and_msis_are_checked(kvm, part):
    with pytest.raises(pyhv.StateError):
        part.set_gsi_routing([(0, "ioapic", 2)])
    with pytest.raises(pyhv.StateError):
        part.signal_msi(0xFEE00000, 0x30)
    with pyhv.Partition(memory="1M", irqchip=True) as chips:
        for routes, message in (([(0, "lapic", 0)], "irqchip 'lapic'"),
                                ([(0, "ioapic", 24)], "out of range"),
                                ([(0, "pic_master", 8)], "out of range"),
                                ([(2000, "ioapic", 1)], "out of range")):
            with pytest.raises(pyhv.InvalidArgument, match=message):
                chips.set_gsi_routing(routes)
        with pytest.raises(pyhv.InvalidArgument):
            chips.signal_msi(1 << 64, 0)
        chips.set_gsi_routing([(0, "pic_master", 0), (0, "ioapic", 2)])
        chips.set_irq(0, True)                          # routed: no error
        chips.set_irq(0, False)
        chips.memory.write(0x1000, b"\xf4")
        chips.create_vcpu(mode="real", entry=0x1000)
        assert chips.signal_msi(0xFEE00000, 0x30) is False     # its LAPIC is still disabled


def test_the_pit_lost_tick_policy(kvm):
    with pyhv.Partition(memory="1M", irqchip=True) as chips, pytest.raises(pyhv.StateError):
        chips.set_pit_reinject(False)                   # no PIT
    with pyhv.Partition(memory="1M", irqchip=True, pit=True) as chips:
        chips.set_pit_reinject(False)                   # QEMU's lost_tick_policy=discard
        chips.set_pit_reinject(True)
