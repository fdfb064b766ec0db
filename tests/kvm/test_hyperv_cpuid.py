"""What a guest that asks "are you Hyper-V?" sees: the CPUID leaves 0x40000000-0x40000006,
read by the guest itself, for each set of enlightenments (and KVM's own leaves gone)."""

from __future__ import annotations

import pytest

import pyhv
from pyhv.hyperv import HyperV, tlfs

from .hyperv_guest import HvGuest, Script


def guest_cpuid(features: str, *, irqchip: bool = True, hardened: bool = False,
                vcpus: int = 1) -> dict[tuple[int, int], tuple[int, int, int, int]]:
    """{(vp, leaf): (eax, ebx, ecx, edx)} as each vCPU's CPUID instruction answers."""
    leaves = [0x40000000 + i for i in range(8)] + [0x40000100, 1]
    scripts = []
    for _ in range(vcpus):
        s = Script()
        for leaf in leaves:
            s.cpuid(leaf)
        scripts.append(s)
    with pyhv.Partition(memory="16M", irqchip=irqchip, hardened=hardened) as part:
        guest = HvGuest(part, scripts)
        part.attach(HyperV(features))
        guest.run()
        return {(vp, leaf): guest.result(vp, i) for vp in range(vcpus)
                for i, leaf in enumerate(leaves)}


def text(*registers: int) -> str:
    return b"".join(r.to_bytes(4, "little") for r in registers).rstrip(b"\0").decode("latin-1")


@pytest.mark.parametrize("hardened", [False, True])
def test_a_guest_sees_microsoft_hv_and_exactly_the_enabled_features(kvm, hardened):
    seen = guest_cpuid("hv-vpindex,hv-time,hv-relaxed", irqchip=False, hardened=hardened)
    eax, ebx, ecx, edx = seen[0, 0x40000000]
    assert text(ebx, ecx, edx) == "Microsoft Hv" and eax == 0x40000006
    assert seen[0, 0x40000001][0] == 0x31237648                      # "Hv#1"
    assert seen[0, 0x40000002][:2] == (14393, 0x000A0000)           # build, 10.0
    features = seen[0, 0x40000003]
    assert features[0] == (tlfs.PRIV_HYPERCALL | tlfs.PRIV_VP_INDEX |
                           tlfs.PRIV_TIME_REF_COUNT | tlfs.PRIV_REFERENCE_TSC)
    assert features[1] == 0 and features[3] == 0                    # no SynIC, no extras
    hints = seen[0, 0x40000004]
    assert hints[0] == tlfs.HINT_RELAXED_TIMING | tlfs.HINT_DEPRECATE_AUTOEOI
    assert hints[1] == 0xFFFFFFFF                                    # never notify spinlocks
    assert seen[0, 0x40000005][0] >= 1
    assert seen[0, 1][2] >> 31 & 1                                   # "hypervisor present"


def test_kvms_own_leaves_are_gone(kvm):
    seen = guest_cpuid("hv-vpindex", irqchip=False)
    assert "KVMKVMKVM" not in text(*seen[0, 0x40000000][1:])
    assert seen[0, 0x40000100] != (0, 0x4B4D564B, 0x564B4D56, 0x4D)   # not moved there


def test_passthrough_offers_every_enlightenment_and_deprecates_autoeoi(kvm):
    seen = guest_cpuid("hv-passthrough", vcpus=2)
    for vp in range(2):
        eax, ebx, _ecx, edx = seen[vp, 0x40000003]
        for bit in (tlfs.PRIV_VP_RUNTIME, tlfs.PRIV_TIME_REF_COUNT, tlfs.PRIV_SYNIC,
                    tlfs.PRIV_SYNTHETIC_TIMERS, tlfs.PRIV_APIC_ACCESS, tlfs.PRIV_HYPERCALL,
                    tlfs.PRIV_VP_INDEX, tlfs.PRIV_RESET, tlfs.PRIV_REFERENCE_TSC,
                    tlfs.PRIV_FREQUENCIES):
            assert eax & bit, hex(bit)
        assert ebx == tlfs.PRIV_POST_MESSAGES | tlfs.PRIV_SIGNAL_EVENTS
        assert edx == tlfs.FEAT_FREQUENCY_MSRS | tlfs.FEAT_CRASH_MSRS | tlfs.FEAT_STIMER_DIRECT
        hints = seen[vp, 0x40000004][0]
        assert hints & tlfs.HINT_DEPRECATE_AUTOEOI
        assert not hints & tlfs.HINT_APIC_MSRS          # offered, not recommended
        assert seen[vp, 1][1] >> 24 == vp               # each vCPU keeps its APIC ID


def test_spinlocks_and_vendor_id_as_qemu_spells_them(kvm):
    seen = guest_cpuid("hv-vpindex,hv-spinlocks=0x1fff,hv-vendor-id=pyhv-test", irqchip=False)
    assert seen[0, 0x40000004][1] == 0x1FFF
    assert text(*seen[0, 0x40000000][1:]) == "pyhv-test"


def test_the_synic_needs_the_in_kernel_irqchip(part):
    with pytest.raises(pyhv.InvalidArgument, match="irqchip"):
        part.attach(HyperV("hv-vpindex,hv-synic"))
    assert "hyperv" not in part.devices


def test_a_vcpu_made_after_attach_is_enlightened_on_request(kvm):
    with pyhv.Partition(memory="16M") as part:
        hv = part.attach(HyperV("hv-vpindex"))
        s = Script()
        s.cpuid(0x40000000)
        guest = HvGuest(part, [s])
        before = guest.vcpus[0].get_cpuid()
        assert not any(text(e.ebx, e.ecx, e.edx) == "Microsoft Hv" for e in before)
        hv.enlighten(guest.vcpus[0])
        guest.run()
        assert text(*guest.result(0, 0)[1:]) == "Microsoft Hv"
        with pyhv.Partition(memory="16M") as other:
            stranger = other.create_vcpu(mode="long", entry=0x1000)
            with pytest.raises(pyhv.InvalidArgument, match="another partition"):
                hv.enlighten(stranger)
