"""ACPI tables and the PM registers (pyhv.devices.acpi), read back as a guest would read them."""

from __future__ import annotations

import struct

import pytest

from pyhv import InvalidArgument, exits
from pyhv.devices import acpi

from .fakehost import FakeHost


def entries(madt: bytes) -> list[tuple[int, bytes]]:
    out, at = [], 44
    while at < len(madt):
        kind, length = madt[at], madt[at + 1]
        out.append((kind, madt[at:at + length]))
        at += length
    return out


@pytest.mark.parametrize("cpus", [1, 2, 8])
def test_every_table_checks_out_and_points_where_it_should(cpus):
    t = acpi.build_tables(cpus)
    rsdp = t.table("RSD PTR ")
    assert rsdp[:8] == b"RSD PTR " and acpi.checksum_ok(rsdp[:20]) and acpi.checksum_ok(rsdp)
    assert rsdp[15] == 2 and t.addresses["RSD PTR "] % 16 == 0
    rsdt_at, length, xsdt_at = struct.unpack_from("<IIQ", rsdp, 16)
    assert (rsdt_at, xsdt_at, length) == (t.addresses["RSDT"], t.addresses["XSDT"], 36)
    for name in ("RSDT", "XSDT", "FACP", "APIC", "DSDT"):
        table = t.table(name)
        assert table[:4] == name.encode() and acpi.checksum_ok(table), name
    rsdt, xsdt = t.table("RSDT"), t.table("XSDT")
    listed = struct.unpack_from("<2I", rsdt, 36)
    assert listed == (t.addresses["FACP"], t.addresses["APIC"])
    assert struct.unpack_from("<2Q", xsdt, 36) == listed
    assert t.addresses["FACS"] % 64 == 0 and t.table("FACS")[:4] == b"FACS"
    assert len(t.table("FACS")) == 64
    assert t.base + len(t.image) == 0xF0000 + 36 <= 0x100000


def test_the_fadt_describes_the_pm_block_and_points_at_facs_and_dsdt():
    t = acpi.build_tables(1)
    fadt = t.table("FACP")
    assert len(fadt) == 244 and fadt[8] == 3
    facs, dsdt = struct.unpack_from("<II", fadt, 36)
    assert (facs, dsdt) == (t.addresses["FACS"], t.addresses["DSDT"])
    assert struct.unpack_from("<H", fadt, 46)[0] == 9                  # SCI
    assert struct.unpack_from("<IBB", fadt, 48) == (0xB2, 0xF1, 0xF0)  # SMI_CMD, enable, disable
    assert struct.unpack_from("<I", fadt, 56)[0] == 0x600              # PM1a event
    assert struct.unpack_from("<I", fadt, 64)[0] == 0x604              # PM1a control
    assert struct.unpack_from("<I", fadt, 76)[0] == 0x608              # PM timer
    assert fadt[88:92] == bytes([4, 2, 0, 4])                          # their lengths
    assert fadt[108] == 0x32                                           # the RTC century
    flags = struct.unpack_from("<I", fadt, 112)[0]
    assert not flags & (1 << 8)                                        # a 24-bit timer
    assert acpi.fadt_body(0, 0, timer_32bit=True)[112 - 36 + 1] & 1    # TMR_VAL_EXT
    assert struct.unpack_from("<QQ", fadt, 132) == (facs, dsdt)
    assert fadt[116] == 1 and struct.unpack_from("<Q", fadt, 120)[0] == 0xCF9   # reset
    assert fadt[128] == 0x06
    assert struct.unpack_from("<BBBBQ", fadt, 208) == (1, 32, 0, 0, 0x608)      # X_PM_TMR


def test_the_madt_lists_each_vcpu_the_ioapic_and_qemus_overrides():
    madt = acpi.build_tables(3).table("APIC")
    assert struct.unpack_from("<II", madt, 36) == (0xFEE00000, 1)
    found = entries(madt)
    lapics = [struct.unpack("<BBBBI", e) for kind, e in found if kind == 0]
    assert [(uid, apic, flags) for _, _, uid, apic, flags in lapics] == [
        (0, 0, 1), (1, 1, 1), (2, 2, 1)]
    ioapic = [struct.unpack("<BBBBII", e) for kind, e in found if kind == 1]
    assert ioapic == [(1, 12, 0, 0, 0xFEC00000, 0)]
    overrides = [struct.unpack("<BBBBIH", e)[3:] for kind, e in found if kind == 2]
    assert overrides == [(0, 2, 0), (5, 5, 0xD), (9, 9, 0xD), (10, 10, 0xD), (11, 11, 0xD)]
    assert [e for kind, e in found if kind == 4] == [bytes([4, 6, 0xFF, 0, 0, 1])]


def test_apic_ids_from_255_get_x2apic_entries():
    madt = acpi.build_tables(300, 0xE0000).table("APIC")
    kinds = [kind for kind, _ in entries(madt)]
    assert kinds.count(0) == 255 and kinds.count(9) == 45 and 0xA in kinds


def test_the_dsdt_says_s3_and_s5_as_qemus_does():
    dsdt = acpi.build_tables(1).table("DSDT")
    body = dsdt[36:]
    assert b"\x08_S3_\x12\x06\x04\x01\x01\x00\x00" in body
    assert b"\x08_S5_\x12\x06\x04\x00\x00\x00\x00" in body


@pytest.mark.parametrize("cpus, base", [(0, 0xE0000), (5000, 0xE0000), (1, 0xE0001),
                                        (1, 0xD0000), (1, 0xF0000)])
def test_bad_table_requests_are_refused(cpus, base):
    with pytest.raises(InvalidArgument):
        acpi.build_tables(cpus, base)


# -- the PM registers --------------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 10**9

    def __call__(self) -> int:
        return self.now


def pm_host(**kwargs):
    host, clock = FakeHost(), Clock()
    pm = acpi.PowerManagement(clock=clock, **kwargs)
    pm.attach(host)
    return host, pm, clock


def test_the_pm_timer_runs_at_3_579545_mhz_and_wraps_at_24_bits():
    host, pm, clock = pm_host()
    assert host.inp(0x608, 4) == 0
    clock.now += 1_000_000_000
    assert host.inp(0x608, 4) == acpi.PM_TIMER_HZ
    clock.now += 4 * 1_000_000_000                     # 5 s: past 2**24 ticks
    assert host.inp(0x608, 4) == (5 * acpi.PM_TIMER_HZ) & 0xFFFFFF
    assert host.inp(0x609, 1) == ((5 * acpi.PM_TIMER_HZ) >> 8) & 0xFF


def test_a_32bit_pm_timer_does_not_wrap_at_24_bits():
    host, pm, clock = pm_host(timer_32bit=True)
    clock.now += 5 * 1_000_000_000
    assert host.inp(0x608, 4) == 5 * acpi.PM_TIMER_HZ


def test_pm1_status_is_write_one_to_clear_and_enable_keeps_its_bits():
    host, pm, clock = pm_host()
    clock.now += 3 * 1_000_000_000                     # the top bit toggled: TMR_STS
    assert host.inp(0x600, 2) & acpi.TMR_STS
    host.out(0x600, acpi.TMR_STS, 2)
    assert not host.inp(0x600, 2) & acpi.TMR_STS
    host.out(0x602, 0x0400, 2)                         # RTC_EN
    assert host.inp(0x602, 2) == 0x0400 and pm.rtc_wake_enabled
    host.out(0x602, 0xFFFF, 2)
    assert host.inp(0x602, 2) == acpi.EN_WRITABLE
    assert host.inp(0x600, 4) >> 16 == acpi.EN_WRITABLE
    pm.woke(by_rtc=True)
    assert host.inp(0x600, 2) & 0x8400 == 0x8400
    host.out(0x600, 0x8400, 2)
    assert host.inp(0x600, 2) & 0x8400 == 0


def test_acpi_mode_follows_the_smi_command():
    host, pm, _ = pm_host()
    assert not host.inp(0x604, 2) & acpi.SCI_EN
    host.out(0xB2, 0xF1)
    assert host.inp(0x604, 2) & acpi.SCI_EN
    host.out(0xB2, 0xF0)
    assert not host.inp(0x604, 2) & acpi.SCI_EN


def test_sleep_requests_end_the_run_s3_as_suspend_s5_as_shutdown():
    host, pm, _ = pm_host()
    assert host.out(0x604, 1 << 10, 2) is None                    # SLP_TYP without SLP_EN
    end = host.out(0x604, 1 << 10 | 1 << 13, 2)
    assert isinstance(end, exits.SystemEvent) and end.kind == "suspend"
    assert not host.inp(0x604, 2) & acpi.SLP_EN                   # SLP_EN reads as 0
    end = host.out(0x604, 1 << 13, 2)
    assert isinstance(end, exits.SystemEvent) and end.kind == "shutdown"
    assert host.out(0x604, 5 << 10 | 1 << 13, 2) is None          # no _S5... object for 5


def test_gpe0_status_clears_by_writing_one_and_enable_holds():
    host, _, _ = pm_host()
    host.out(0xAFE2, 0xFF)
    assert host.inp(0xAFE2) == 0xFF and host.inp(0xAFE0, 4) == 0x00FF0000
    host.out(0xAFE0, 0xFF)
    assert host.inp(0xAFE0) == 0


def test_pm_state_round_trip_keeps_the_timer_going():
    host, pm, clock = pm_host()
    host.out(0x602, 0x0400, 2)
    clock.now += 2_000_000_000
    state = pm.get_state()
    other_host, other, other_clock = pm_host()
    other_clock.now = 5 * 10**9
    other.set_state(state)
    assert other.enable == 0x0400
    assert abs(other_host.inp(0x608, 4) - 2 * acpi.PM_TIMER_HZ) <= 1
