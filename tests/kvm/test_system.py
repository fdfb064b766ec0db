"""The KVM system handle on the real /dev/kvm: backend, API version, capabilities, CPUID."""

from __future__ import annotations

import struct

import pyhv
from pyhv.core import probes
from pyhv.core.hypervisor import REQUIRED_CAPABILITIES, Hypervisor


def test_check_reports_backend_version_and_capabilities(kvm):
    caps = pyhv.check()
    assert caps.api_version == 12 and caps.ok and caps.missing == ()
    assert caps.backend in ("kvm_intel", "kvm_amd", "kvm_pvm", "unknown")
    assert caps.hardware == {"kvm_intel": True, "kvm_amd": True, "kvm_pvm": False,
                             "unknown": None}[caps.backend]
    assert all(caps.has(name) for name in REQUIRED_CAPABILITIES)
    assert caps.memory_slots > 0 and caps.max_vcpus >= 1
    report = caps.report()
    assert caps.backend in report and "KVM_CAP_USER_MEMORY" in report


def cpu_vendor(hv: Hypervisor) -> str:
    leaf0 = next(e for e in hv.supported_cpuid() if e.function == 0)
    return struct.pack("<III", leaf0.ebx, leaf0.edx, leaf0.ecx).decode()


def test_the_backend_named_is_the_one_guests_meet(kvm):
    # what the loaded module's name says, checked against what guests see: the CPU vendor
    # KVM offers and whether CPL3 code may do port IO under IOPL 3 (hardware runs the guest's
    # flags; kvm_pvm runs CPL3 under its own)
    hv = pyhv.core.hypervisor.default()
    honoured = probes.port_io_at_cpl3(hv)
    if hv.backend == "kvm_intel":
        assert cpu_vendor(hv) == "GenuineIntel" and honoured
    elif hv.backend == "kvm_amd":
        assert cpu_vendor(hv) == "AuthenticAMD" and honoured
    elif hv.backend == "kvm_pvm":
        assert not honoured
    else:
        assert hv.info().hardware is None


def test_an_unknown_backend_is_neither_hardware_nor_software(kvm, monkeypatch):
    monkeypatch.setattr(pyhv.core.hypervisor, "detect_backend", lambda: "unknown")
    with Hypervisor() as hv:
        caps = hv.info()
    assert (caps.backend, caps.hardware, caps.kind) == ("unknown", None, "unknown")
    assert caps.backend_description.startswith("an unrecognised KVM backend")
    assert caps.speed_note() == "unknown backend: speed unknown until measured"
    assert hv.backend_note == ""                      # no kvm_pvm note on its messages


def test_supported_cpuid_and_phys_bits(kvm):
    hv = pyhv.core.hypervisor.default()
    leaves = {e.function for e in hv.supported_cpuid()}
    assert 0 in leaves and 1 in leaves
    assert 32 <= hv.guest_phys_bits() <= 52
