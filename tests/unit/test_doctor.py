"""``pyhv doctor`` without KVM: its built-in guests against their sources, what its numbers
are said to mean, and what an unknown backend is reported as."""

from __future__ import annotations

import pytest

from pyhv.core.hypervisor import Capabilities
from pyhv.testing import assemble
from pyhv.tools import doctor


@pytest.mark.parametrize("n", [1, 1 << 20, (1 << 31) - 1])
def test_the_doctor_guests_match_their_sources(n):
    loop = doctor.LOOP_SOURCE.format(n=n).replace("; ", "\n")
    assert doctor.loop_code(n, doctor.HLT) == assemble(loop + "\nhlt")
    assert doctor.loop_code(n, doctor.INT3) == assemble(loop + "\nint3")
    exits = doctor.EXITS_SOURCE.format(n=n).replace("; ", "\n")
    assert doctor.exits_code(n) == assemble(exits, origin=0x1000)


def speed(cpl3=1.0, cpl0=5000.0, host=1.0, python=12.0, in_c=10.0) -> list[str]:
    return doctor.Speed(cpl3, cpl0, host, python, in_c).lines()


def test_numbers_are_printed_with_what_they_mean():
    cpl3, cpl0, exits = speed()
    assert cpl3 == ("  CPL3 compute: 1.00 ns per loop iteration in a user-mode guest, 1.00 on "
                    "the host (1.00x): runs natively")
    assert cpl0 == ("  CPL0 compute: 5000.00 ns per iteration in a long-mode guest, 5000x the "
                    "CPL3 time: ring-0 guest code is emulated")
    assert exits.startswith("  exits: 12.00 us per port OUT handled by a Python handler, "
                            "10.00 us completed in pyhv's C core")
    assert "83,333 handled exits a second" in exits


@pytest.mark.parametrize("cpl3, host, cpl0, says", [
    (1.0, 1.0, 1.2, ["runs natively", "ring-0 guest code runs as fast as ring-3 code"]),
    (5.0, 1.0, 25.0, ["5.0x slower than native", "ring-0 guest code is slower than ring-3"]),
    (1.4, 1.0, 1000.0, ["runs natively", "ring-0 guest code is emulated"]),
])
def test_the_verdicts_follow_the_numbers_not_the_backend(cpl3, host, cpl0, says):
    lines = speed(cpl3=cpl3, host=host, cpl0=cpl0)
    assert says[0] in lines[0] and says[1] in lines[1]


def test_a_host_without_executable_pages_is_said_so():
    assert "the host refused an executable page" in speed(host=None)[0]


def capabilities(backend: str, hardware: bool | None) -> Capabilities:
    names = ["KVM_CAP_USER_MEMORY", "KVM_CAP_SET_TSS_ADDR", "KVM_CAP_EXT_CPUID",
             "KVM_CAP_IMMEDIATE_EXIT"]
    from pyhv.core.hypervisor import OPTIONAL_CAPABILITIES
    values = dict.fromkeys(names, 1) | dict.fromkeys(OPTIONAL_CAPABILITIES, 0)
    return Capabilities(backend, "described", hardware, "/dev/kvm", 12, values, (), 32, 1, 1)


@pytest.mark.parametrize("backend, hardware, kind, note", [
    ("unknown", None, "unknown", "unknown backend: speed unknown until measured"),
    ("kvm_intel", True, "hardware", "hardware-assisted"),
    ("kvm_pvm", False, "software", "software KVM"),
])
def test_the_expected_speed_follows_the_kind_and_an_unknown_backend_says_so(
        backend, hardware, kind, note):
    caps = capabilities(backend, hardware)
    assert caps.kind == kind and caps.speed_note().startswith(note)
    assert f"expected:     {note}" in caps.report()
