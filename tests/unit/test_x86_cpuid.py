"""CPUID tables as values (pyhv.x86.cpuid): what a hardened guest is shown, each vCPU's APIC
IDs, and the guest-physical address width."""

from __future__ import annotations

import dataclasses

import pytest

from pyhv import CpuidEntry
from pyhv.x86.cpuid import for_vcpu, phys_bits, sanitized

VMX, SVM = 1 << 5, 1 << 2
TABLE = (
    CpuidEntry(0, 0, 0, 0x16, 0x756E6547, 0x6C65746E, 0x49656E69),      # GenuineIntel
    CpuidEntry(1, 0, 0, 0x806F8, 0x00020800, VMX | 0x80000001, 0x178BFBFF),
    CpuidEntry(0xB, 0, 1, 1, 1, 0x100, 0x77),
    CpuidEntry(0xB, 1, 1, 4, 2, 0x201, 0x77),
    CpuidEntry(0x1F, 0, 1, 1, 1, 0x100, 0x77),
    CpuidEntry(0x3FFFFFFF, 0, 0, 1, 2, 3, 4),
    CpuidEntry(0x40000000, 0, 0, 0x40000001, 0x4B4D564B, 0x564B4D56, 0x4D),   # KVMKVMKVM
    CpuidEntry(0x40000001, 0, 0, 0x01007AFB, 0, 0, 0),
    CpuidEntry(0x400000FF, 0, 0, 1, 1, 1, 1),
    CpuidEntry(0x40000100, 0, 0, 1, 1, 1, 1),
    CpuidEntry(0x80000001, 0, 0, 0, 0, SVM | 0x1, 0x2C100800),
    CpuidEntry(0x80000008, 0, 0, 0x3027, 0, 0, 0),
)


def test_sanitized_drops_the_hypervisor_leaves_only():
    kept = [e.function for e in sanitized(TABLE)]
    assert kept == [0, 1, 0xB, 0xB, 0x1F, 0x3FFFFFFF, 0x40000100, 0x80000001, 0x80000008]


def test_sanitized_clears_vmx_and_svm_and_nothing_else():
    out = {(e.function, e.index): e for e in sanitized(TABLE)}
    assert out[(1, 0)] == dataclasses.replace(TABLE[1], ecx=0x80000001)
    assert out[(0x80000001, 0)] == dataclasses.replace(TABLE[10], ecx=0x1)
    untouched = [e for e in TABLE if e.function not in (1, 0x80000001)
                 and not 0x40000000 <= e.function <= 0x400000FF]
    assert all(out[(e.function, e.index)] == e for e in untouched)
    assert TABLE[1].ecx & VMX                          # the input is not changed


@pytest.mark.parametrize("vcpu_id", [0, 3, 255, 0x1FF])
def test_for_vcpu_sets_the_apic_ids(vcpu_id):
    out = for_vcpu(TABLE, vcpu_id)
    assert len(out) == len(TABLE)
    leaf1 = out[1]
    assert leaf1.ebx == (vcpu_id & 0xFF) << 24 | 0x00020800      # EBX[31:24], the rest kept
    assert [e.edx for e in out if e.function in (0xB, 0x1F)] == [vcpu_id] * 3   # x2APIC ID
    others = [(a, b) for a, b in zip(TABLE, out, strict=True) if a.function not in (1, 0xB, 0x1F)]
    assert all(a == b for a, b in others)


def test_for_vcpu_replaces_an_old_apic_id():
    assert for_vcpu([CpuidEntry(1, 0, 0, 0, 0x07000800, 0, 0)], 2)[0].ebx == 0x02000800


def test_phys_bits():
    assert phys_bits(TABLE) == 0x27                      # 39 bits, from EAX[7:0]
    assert phys_bits(TABLE[:3]) == 36                    # no leaf 0x80000008
    assert phys_bits([CpuidEntry(0x80000008, 0, 0, 0x3000, 0, 0, 0)]) == 36   # 0: hidden
    assert phys_bits([]) == 36


def test_cpuid_entry_repr_is_hex_and_entries_are_values():
    e = CpuidEntry(0x80000008, 0, 1, 0x3027, 0, 0, 0)
    assert repr(e) == ("CpuidEntry(function=0x80000008, index=0, flags=0x1, eax=0x3027, "
                       "ebx=0x0, ecx=0x0, edx=0x0)")
    assert e == CpuidEntry(0x80000008, 0, 1, 0x3027, 0, 0, 0) and hash(e) == hash(
        CpuidEntry(0x80000008, 0, 1, 0x3027, 0, 0, 0))
    with pytest.raises(dataclasses.FrozenInstanceError):
        e.eax = 1
