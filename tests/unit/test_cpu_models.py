"""CPU models and QEMU's -cpu syntax (pyhv.x86.cpu_models), against hand-made KVM tables."""

from __future__ import annotations

import re

import pytest

from pyhv import InvalidArgument
from pyhv.x86 import cpu_models
from pyhv.x86.cpuid import CpuidEntry

ALL = 0xFFFFFFFF


def kvm_table(leaf1_ecx=ALL, leaf1_edx=ALL, ext_ecx=ALL, ext_edx=ALL, leaf7_ebx=ALL):
    """A KVM-supported table with (by default) every feature bit on."""
    return [
        CpuidEntry(0, 0, 0, 0x1C, *cpu_models._vendor_registers("AuthenticAMD").values()),
        CpuidEntry(1, 0, 0, 0xB00F21, 0x00020800, leaf1_ecx, leaf1_edx),
        CpuidEntry(6, 0, 0, 0x4, 0, 0, 0),
        CpuidEntry(7, 0, 1, 0, leaf7_ebx, ALL, ALL),
        CpuidEntry(0xD, 1, 1, ALL, 0, 0, 0),
        CpuidEntry(0x14, 0, 1, 0, 0, 0, 0),
        CpuidEntry(0x40000000, 0, 0, 0x40000001, 0x4B4D564B, 0x564B4D56, 0x4D),
        CpuidEntry(0x40000001, 0, 0, ALL, 0, 0, 0),
        CpuidEntry(0x80000000, 0, 0, 0x80000021, 0, 0, 0),
        CpuidEntry(0x80000001, 0, 0, 0xB00F21, 0, ext_ecx, ext_edx),
        CpuidEntry(0x80000008, 0, 0, 0x3030, ALL, 0, 0),
        CpuidEntry(0x8000001F, 0, 0, 1, 0, 0, 0),
    ]


def leaf(table, function, index=0):
    return next(e for e in table if e.function == function and e.index == index)


def has(table, name):
    f = cpu_models.FEATURES[name]
    e = [x for x in table if x.function == f.function and x.index == f.index]
    return bool(e) and bool(getattr(e[0], f.register) >> f.bit & 1)


def test_parse_reads_qemus_syntax():
    m = cpu_models.parse("qemu64,+x2apic,-svm,tsc_deadline=on,sse4_1=off,vendor=GenuineIntel,"
                         "family=6,model=0x3a,stepping=9,level=0x7,xlevel=0x80000008,"
                         "model-id=Test CPU,phys-bits=39,host-phys-bits=on,kvm=off,enforce,"
                         "migratable=no,hv-time,hv_relaxed")
    assert m.name == "qemu64" and m.vendor == "GenuineIntel"
    assert m.plus == {"x2apic", "tsc-deadline"} and m.minus == {"svm", "sse4.1"}
    assert (m.family, m.model, m.stepping, m.level, m.xlevel) == (6, 0x3A, 9, 7, 0x80000008)
    assert m.model_id == "Test CPU" and m.phys_bits == 39 and not m.kvm and m.enforce
    assert m.hyperv == ("hv-time", "hv_relaxed")


def test_minus_wins_over_plus_as_in_qemu():
    assert cpu_models.parse("host,-x2apic,+x2apic").minus == {"x2apic"}
    assert cpu_models.parse("host,x2apic=off,x2apic=on").plus == {"x2apic"}


@pytest.mark.parametrize("spec, message", [
    ("", "give a CPU model"),
    ("pentium9", "unknown CPU model 'pentium9'"),
    ("qemu64,+frob", "unknown CPU feature 'frob'"),
    ("qemu64,vendor=Intel", "must be 12 characters"),
    ("qemu64,family=ten", "is not a number"),
    ("qemu64,stepping=16", "out of range"),
    ("qemu64,phys-bits=60", "not 32..52"),
    ("qemu64,x2apic=maybe", "neither on nor off"),
    ("max,+vmx,-vmx-mbec", "vmx-* features"),
    ("qemu64,bogus", "neither +feature"),
])
def test_bad_specs_are_refused_with_the_reason(spec, message):
    with pytest.raises(InvalidArgument, match=re.escape(message)):
        cpu_models.parse(spec)


def test_feature_names_take_qemus_aliases():
    assert cpu_models.feature_name("sse4_2") == "sse4.2"
    assert cpu_models.feature_name("sse3") == "pni"
    assert cpu_models.feature_name("lahf_lm") == "lahf-lm"
    assert cpu_models.feature_name("xd") == "nx"


def test_host_passes_kvms_table_through_with_the_changes_asked():
    table, missing = cpu_models.parse("host,-x2apic,-avx").cpuid(kvm_table())
    assert missing == []
    assert not has(table, "x2apic") and not has(table, "avx") and has(table, "sse4.2")
    assert leaf(table, 0).eax == 0x1C and leaf(table, 1).eax == 0xB00F21   # the host's


def test_qemu64_gets_its_own_vendor_signature_levels_and_features():
    table, missing = cpu_models.parse("qemu64").cpuid(kvm_table())
    assert missing == []
    zero = leaf(table, 0)
    assert zero.eax == 0xD and zero.ebx == int.from_bytes(b"Auth", "little")
    assert leaf(table, 1).eax == cpu_models.signature(15, 107, 1)
    assert leaf(table, 0x80000000).eax == 0x8000000A
    for name in ("fpu", "sse2", "pni", "cx16", "lm", "nx", "syscall", "lahf-lm", "x2apic",
                 "hypervisor", "kvmclock"):
        assert has(table, name), name
    for name in ("svm", "avx", "sse4.1", "vme", "monitor", "acpi", "pdpe1gb", "tsc-deadline"):
        assert not has(table, name), name
    assert all(e.function <= 0xD or e.function >= 0x40000000 for e in table)   # level 0xd
    assert all(e.function <= 0x8000000A for e in table if e.function >= 0x80000000)
    name = b"".join(leaf(table, f).__getattribute__(r).to_bytes(4, "little")
                    for f in (0x80000002, 0x80000003, 0x80000004)
                    for r in ("eax", "ebx", "ecx", "edx"))
    assert name.rstrip(b"\0") == b"QEMU Virtual CPU version 2.5+"


def test_features_kvm_lacks_are_dropped_and_listed_or_refused():
    kvm = kvm_table(leaf1_ecx=(1 << 13) | (1 << 21) | (1 << 31))   # cx16, x2apic, hypervisor
    table, missing = cpu_models.parse("qemu64,+umip").cpuid(kvm)
    assert "pni" in missing and not has(table, "pni") and has(table, "cx16")
    assert "umip" not in missing                       # KVM offers it in this table
    with pytest.raises(InvalidArgument, match="enforce"):
        cpu_models.parse("qemu64,enforce").cpuid(kvm)


def test_without_an_irqchip_there_is_no_x2apic():
    table, missing = cpu_models.parse("qemu64,+x2apic").cpuid(kvm_table(), irqchip=False)
    assert not has(table, "x2apic") and "x2apic" not in missing


def test_signature_encodes_extended_family_and_model():
    assert cpu_models.signature(6, 58, 9) == 0x306A9
    assert cpu_models.signature(0x19, 0x21, 0) == 0xA20F10


def test_vendor_level_phys_bits_and_the_kvm_leaves_are_options():
    table, _ = cpu_models.parse("max,vendor=GenuineIntel,level=7,phys-bits=36,kvm=off").cpuid(
        kvm_table())
    zero = leaf(table, 0)
    assert zero.eax == 7 and zero.ebx == int.from_bytes(b"Genu", "little")
    assert leaf(table, 0x80000000).ecx == int.from_bytes(b"ntel", "little")
    assert leaf(table, 0x80000008).eax & 0xFF == 36
    assert not any(0x40000000 <= e.function < 0x40000100 for e in table)
    assert not any(e.function == 0x14 for e in table)      # beyond level 7


@pytest.mark.parametrize("model", sorted(cpu_models.MODELS))
def test_every_named_model_builds_a_table(model):
    table, missing = cpu_models.parse(model).cpuid(kvm_table())
    assert missing == [] and leaf(table, 0).eax == cpu_models.MODELS[model].level


def test_kvmclock_names_both_of_qemus_kvmclock_bits():
    table, _ = cpu_models.parse("qemu64").cpuid(kvm_table())
    assert has(table, "kvmclock") and has(table, "kvmclock2")       # CLOCKSOURCE and 2
    table, _ = cpu_models.parse("host,-kvmclock").cpuid(kvm_table())
    assert not has(table, "kvmclock") and not has(table, "kvmclock2")
