"""The synthetic MSRs as the guest's RDMSR/WRMSR see them: what each enlightenment offers,
#GP for everything else in 0x40000000-0x400000FF, the hypercall page, the frequency, reset,
crash and APIC-access MSRs, hardened partitions, and typed runs."""

from __future__ import annotations

import pytest

import pyhv
from pyhv import exits
from pyhv.hyperv import HyperV, kvmio, tlfs
from pyhv.hyperv.hypercalls import page_code

from .hyperv_guest import EOI_MSR, HCPAGE, HvGuest, Script, area

MISC_ENABLE = 0x1A0


def probe(features: str, ops, *, irqchip: bool = False, hardened: bool = False,
          vcpus: int = 1):
    """Run ``ops(script, vp)`` on each vCPU; the guest and the HyperV device."""
    scripts = []
    for vp in range(vcpus):
        s = Script()
        ops(s, vp)
        scripts.append(s)
    part = pyhv.Partition(memory="16M", irqchip=irqchip, hardened=hardened)
    guest = HvGuest(part, scripts)
    hv = part.attach(HyperV(features))
    return part, guest, hv


def test_unimplemented_and_disabled_msrs_raise_gp(kvm):
    absent = [0x40000004, 0x40000005, 0x40000011, 0x40000024, 0x40000074, 0x40000085,
              0x400000A0, 0x400000B8, 0x400000FF]
    disabled = [tlfs.HV_X64_MSR_SCONTROL, tlfs.HV_X64_MSR_TIME_REF_COUNT,
                tlfs.HV_X64_MSR_STIMER0_CONFIG, tlfs.HV_X64_MSR_VP_RUNTIME,
                tlfs.HV_X64_MSR_TSC_FREQUENCY, tlfs.HV_X64_MSR_RESET, tlfs.HV_X64_MSR_TPR]
    present = [tlfs.HV_X64_MSR_GUEST_OS_ID, tlfs.HV_X64_MSR_HYPERCALL, tlfs.HV_X64_MSR_VP_INDEX]
    part, guest, _ = probe("hv-vpindex", lambda s, vp: [s.rdmsr(i) for i in
                                                          absent + disabled + present])
    with part:
        guest.run()
        faults = [guest.faulted(0, n) for n in range(len(absent + disabled + present))]
    assert faults == [True] * len(absent + disabled) + [False] * len(present)


def test_passthrough_still_faults_what_the_tlfs_does_not_define(kvm):
    part, guest, _ = probe("hv-passthrough", lambda s, vp: [
        s.rdmsr(0x40000005), s.rdmsr(0x400000FF), s.rdmsr(tlfs.HV_X64_MSR_EOI),
        s.wrmsr(tlfs.HV_X64_MSR_VP_INDEX, 3), s.wrmsr(tlfs.HV_X64_MSR_TIME_REF_COUNT, 1),
        s.wrmsr(tlfs.HV_X64_MSR_SVERSION, 2), s.wrmsr(tlfs.HV_X64_MSR_TSC_FREQUENCY, 1),
        s.rdmsr(tlfs.HV_X64_MSR_SVERSION)], irqchip=True)
    with part:
        guest.run()
        assert [guest.faulted(0, n) for n in range(7)] == [True] * 7   # EOI is write-only
        assert not guest.faulted(0, 7) and guest.value(0, 7) == 1


def test_each_vcpu_reads_its_own_vp_index(kvm):
    part, guest, _ = probe("hv-vpindex", lambda s, vp: s.rdmsr(tlfs.HV_X64_MSR_VP_INDEX),
                           irqchip=True, vcpus=2)
    with part:
        guest.run()
        assert [guest.value(vp, 0) for vp in range(2)] == [0, 1]


def test_the_hypercall_page_waits_for_a_guest_os_id_and_holds_pyhvs_code(kvm):
    def ops(s: Script, vp: int) -> None:
        s.wrmsr(tlfs.HV_X64_MSR_HYPERCALL, HCPAGE | 1)            # ignored: no OS ID yet
        s.rdmsr(tlfs.HV_X64_MSR_HYPERCALL)
        s.wrmsr(tlfs.HV_X64_MSR_GUEST_OS_ID, 0x8100_0000_0000_0001)
        s.wrmsr(tlfs.HV_X64_MSR_HYPERCALL, HCPAGE | 1)
        s.rdmsr(tlfs.HV_X64_MSR_HYPERCALL)
        s.wrmsr(tlfs.HV_X64_MSR_GUEST_OS_ID, 0)                   # no OS: disabled again
        s.rdmsr(tlfs.HV_X64_MSR_HYPERCALL)
        s.rdmsr(tlfs.HV_X64_MSR_GUEST_OS_ID)
        s.wrmsr(tlfs.HV_X64_MSR_GUEST_OS_ID, 1)
        s.wrmsr(tlfs.HV_X64_MSR_HYPERCALL, 0xFEE00000 | 1)         # not RAM: #GP

    part, guest, hv = probe("hv-vpindex", ops)
    with part:
        part.memory.write(HCPAGE, b"\x90" * 16)
        guest.run()
        assert guest.value(0, 1) == 0
        assert guest.value(0, 4) == HCPAGE | 1
        assert guest.value(0, 6) == HCPAGE and guest.value(0, 7) == 0
        assert guest.faulted(0, 9)
        code = page_code(hv.hypercall_port)
        assert part.memory.read(HCPAGE, len(code)) == code


def test_frequency_msrs_report_the_tsc_and_the_lapic_timer(kvm):
    part, guest, _ = probe("hv-frequencies", lambda s, vp: [
        s.rdmsr(tlfs.HV_X64_MSR_TSC_FREQUENCY), s.rdmsr(tlfs.HV_X64_MSR_APIC_FREQUENCY)])
    with part:
        guest.run()
        khz = kvmio.tsc_khz(guest.vcpus[0].fd)
        assert khz and guest.value(0, 0) == khz * 1000
        assert guest.value(0, 1) == 1_000_000_000


def test_vp_runtime_grows_while_the_vcpu_runs(kvm):
    part, guest, _ = probe("hv-runtime", lambda s, vp: [
        s.rdmsr(tlfs.HV_X64_MSR_VP_RUNTIME), s.op("delay", 3000),
        s.rdmsr(tlfs.HV_X64_MSR_VP_RUNTIME)])
    with part:
        guest.run()
        assert 0 <= guest.value(0, 0) < guest.value(0, 2)


def test_the_reset_msr_ends_the_run_with_a_reset(kvm):
    part, guest, _ = probe("hv-reset", lambda s, vp: [
        s.wrmsr(tlfs.HV_X64_MSR_RESET, 0), s.rdmsr(tlfs.HV_X64_MSR_RESET),
        s.wrmsr(tlfs.HV_X64_MSR_RESET, 1)])
    with part:
        result = part.run(timeout=30)
        assert result.exit == exits.Reset(source="hyperv")
        assert not guest.faulted(0, 0) and guest.value(0, 1) == 0


def test_the_crash_msrs_end_the_run_with_the_guests_parameters(kvm):
    part, guest, _ = probe("hv-crash", lambda s, vp: [
        s.rdmsr(tlfs.HV_X64_MSR_CRASH_CTL)] + [
        s.wrmsr(tlfs.HV_X64_MSR_CRASH_P0 + i, 0x100 + i) for i in range(5)] + [
        s.wrmsr(tlfs.HV_X64_MSR_CRASH_CTL, tlfs.CRASH_NOTIFY)])
    with part:
        result = part.run(timeout=30)
        assert isinstance(result.exit, exits.SystemEvent) and result.exit.kind == "crash"
        assert result.exit.data == (0x100, 0x101, 0x102, 0x103, 0x104)
        assert guest.value(0, 0) == tlfs.CRASH_NOTIFY


def test_a_hardened_partition_keeps_denying_what_is_not_enabled(kvm):
    part, guest, _ = probe("hv-vpindex", lambda s, vp: [
        s.rdmsr(tlfs.HV_X64_MSR_VP_INDEX), s.rdmsr(tlfs.HV_X64_MSR_SCONTROL),
        s.rdmsr(MISC_ENABLE), s.rdmsr(0x10)], hardened=True)
    with part:
        guest.run()
        assert [guest.faulted(0, n) for n in range(4)] == [False, True, True, False]


def test_tpr_and_icr_msrs_reach_the_in_kernel_lapic(kvm):
    def ops(s: Script, vp: int) -> None:
        if vp == 0:
            s.wrmsr(tlfs.HV_X64_MSR_TPR, 0x20)
            s.op("load32", 0xFEE00080)                            # the LAPIC's own TPR
            s.rdmsr(tlfs.HV_X64_MSR_TPR)
            s.wrmsr(tlfs.HV_X64_MSR_TPR, 0)
            s.op("sti")
            s.wait_ready(1)
            s.wrmsr(tlfs.HV_X64_MSR_ICR, 1 << 56 | 0x60)          # fixed 0x60 to APIC ID 1
            s.wrmsr(tlfs.HV_X64_MSR_ICR, 1 << 18 | 0x61)          # to self (shorthand)
            s.wait_irqs(0x61, 1)
            s.rdmsr(tlfs.HV_X64_MSR_ICR)
        else:
            s.wait_irqs(0x60, 1)

    part, guest, _ = probe("hv-vpindex,hv-vapic", ops, irqchip=True, vcpus=2)
    part.memory.write_u8(0x11000 + 0x60, EOI_MSR)                 # their ISRs EOI by the MSR
    part.memory.write_u8(0x11000 + 0x61, EOI_MSR)
    with part:
        guest.run()
        assert guest.value(0, 1) & 0xFF == 0x20 and guest.value(0, 2) == 0x20
        assert guest.value(0, 9) == 1 << 18 | 0x61
        assert guest.count(0, 0x61) == 1 and guest.count(1, 0x60) == 1


def test_the_eoi_msr_ends_the_interrupt_in_service(kvm):
    # two interrupts of one vector: the second comes only once the first is EOI'd
    def ops(s: Script, vp: int) -> None:
        s.op("sti")
        s.wrmsr(tlfs.HV_X64_MSR_ICR, 1 << 18 | 0x70)
        s.wait_irqs(0x70, 1)
        s.wrmsr(tlfs.HV_X64_MSR_ICR, 1 << 18 | 0x70)
        s.wait_irqs(0x70, 2)

    part, guest, _ = probe("hv-vapic", ops, irqchip=True)
    part.memory.write_u8(0x11000 + 0x70, EOI_MSR)
    with part:
        guest.run()
        assert guest.count(0, 0x70) == 2


def test_without_eoi_the_next_interrupt_of_that_class_waits(kvm):
    # the ISR does not EOI: the LAPIC keeps 0x70 in service, and 0x71 (same class) waits
    def ops(s: Script, vp: int) -> None:
        s.op("sti")
        s.wrmsr(tlfs.HV_X64_MSR_ICR, 1 << 18 | 0x70)
        s.wait_irqs(0x70, 1)
        s.wrmsr(tlfs.HV_X64_MSR_ICR, 1 << 18 | 0x71)
        s.op("delay", 2000)
        s.op("load", area(0) + 0x10000 + 4 * 0x71)
        s.wrmsr(tlfs.HV_X64_MSR_EOI, 0)                             # now 0x71 comes
        s.wait_irqs(0x71, 1)

    part, guest, _ = probe("hv-vapic", ops, irqchip=True)
    with part:
        guest.run()
        assert guest.value(0, 5) == 0 and guest.count(0, 0x71) == 1


def test_a_vcpu_made_after_attach_says_it_needs_enlighten(kvm):
    with pyhv.Partition(memory="16M") as part:
        part.attach(HyperV("hv-vpindex"))
        s = Script()
        s.rdmsr(tlfs.HV_X64_MSR_VP_INDEX)
        HvGuest(part, [s])
        with pytest.raises(pyhv.StateError, match="enlighten"):
            part.run(timeout=30)


def test_a_typed_run_hands_its_exits_to_handle(kvm):
    with pyhv.Partition(memory="16M") as part:
        s = Script()
        s.rdmsr(tlfs.HV_X64_MSR_VP_INDEX)
        s.rdmsr(tlfs.HV_X64_MSR_SCONTROL)
        s.wrmsr(tlfs.HV_X64_MSR_GUEST_OS_ID, 5)
        s.rdmsr(tlfs.HV_X64_MSR_GUEST_OS_ID)
        guest = HvGuest(part, [s])
        hv = part.attach(HyperV("hv-vpindex"))
        cpu = guest.vcpus[0]
        handled = 0
        while True:
            exit = cpu.run(timeout=30)
            if isinstance(exit, exits.DebugExit):
                break
            assert hv.handle(cpu, exit), exit
            handled += 1
        assert handled == 4
        assert guest.value(0, 0) == 0 and guest.faulted(0, 1) and guest.value(0, 3) == 5
        assert not hv.handle(cpu, exits.IoOut(0x80, 1, b"\0"))


def test_bad_arguments_are_refused_before_anything_changes(part):
    with pytest.raises(pyhv.InvalidArgument):
        HyperV("hv-frobnicate")
    with pytest.raises(pyhv.InvalidArgument, match="8-bit"):
        HyperV("hv-vpindex", hypercall_port=0x3F8)
    with pytest.raises(pyhv.InvalidArgument, match="must be an int"):
        HyperV("hv-vpindex", hypercall_port="0xE2")             # type: ignore[arg-type]
    with pytest.raises(pyhv.InvalidArgument, match="QEMU flags"):
        HyperV(None)                                            # type: ignore[arg-type]
    part.add_io_handler(0xE3, write=lambda p, s, v: None)           # the 32-bit call port
    part.memory.write(0x1000, b"\xf4")
    cpu = part.create_vcpu(mode="long", entry=0x1000)
    table = cpu.get_cpuid()
    with pytest.raises(pyhv.OverlapError):
        part.attach(HyperV("hv-vpindex"))              # its hypercall port is taken
    assert "hyperv" not in part.devices and cpu.get_cpuid() == table
    part.remove_handler(part.add_msr_handler(tlfs.HV_X64_MSR_GUEST_OS_ID, read=lambda i, s: 0))
    hv = part.attach(HyperV("hv-vpindex", hypercall_port=0xE4))
    with pytest.raises(pyhv.StateError):
        hv.attach(part)
