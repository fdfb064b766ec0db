"""The KVM system handle on the real /dev/kvm: backend, API version, capabilities, CPUID."""

from __future__ import annotations

import pyhv
from pyhv.core.hypervisor import REQUIRED_CAPABILITIES, detect_backend


def test_check_reports_backend_version_and_capabilities(kvm):
    caps = pyhv.check()
    assert caps.api_version == 12 and caps.ok and caps.missing == ()
    assert caps.backend in ("kvm_intel", "kvm_amd", "kvm_pvm", "unknown")
    assert caps.backend == detect_backend()
    assert caps.hardware == (caps.backend != "kvm_pvm")
    assert all(caps.has(name) for name in REQUIRED_CAPABILITIES)
    assert caps.memory_slots > 0 and caps.max_vcpus >= 1
    report = caps.report()
    assert caps.backend in report and "KVM_CAP_USER_MEMORY" in report


def test_supported_cpuid_and_phys_bits(kvm):
    hv = pyhv.core.hypervisor.default()
    leaves = {e.function for e in hv.supported_cpuid()}
    assert 0 in leaves and 1 in leaves
    assert 32 <= hv.guest_phys_bits() <= 52
