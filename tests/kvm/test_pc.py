"""The PC machine (pyhv.machines.PC) on the real /dev/kvm, checked from inside by the PC test
kernel (tests/guests/pc): it reads the ACPI tables and PCI configuration space as a guest
does, times the PM timer against the RTC, takes interrupts from edu and pc-testdev, starts an
AP and sleeps in S3, and prints what it finds as key=value lines."""

from __future__ import annotations

import io
import re

import pytest

import pyhv
from pyhv import exits
from pyhv.devices.acpi import PM_TIMER_HZ
from pyhv.machines import PC

from ..images import have_32bit_toolchain

pytestmark = pytest.mark.skipif(not have_32bit_toolchain(), reason="needs gcc and ld")


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    from ..pc_images import build_pc_guest
    return build_pc_guest(tmp_path_factory.mktemp("pc-guest"))


def boot(kernel, test: str, *, cpus: int = 1, devices=(), timeout: float = 120, **kwargs):
    """Run the test kernel's ``test`` on a PC; (final exit, {key: [values]}, the PC closed)."""
    out = io.BytesIO()
    with PC(memory="64M", cpus=cpus, devices=devices, serial=out, **kwargs) as pc:
        pc.load(kernel, cmdline=test)
        result = pc.run(timeout=timeout)
    values: dict[str, list[str]] = {}
    for line in out.getvalue().decode().splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values.setdefault(key, []).append(value)
    return result.exit, values


def passed(exit: exits.Exit) -> bool:
    return isinstance(exit, exits.DebugExit) and exit.value == 0


def test_acpi_tables_are_found_by_the_standard_scan_and_check_out(kvm, kernel):
    exit, v = boot(kernel, "acpi", cpus=2)
    assert passed(exit), v
    assert v["rsdp"] == ["0xf0000"] and v["revision"] == ["2"]
    assert (v["pm1a_evt"], v["pm1a_cnt"], v["pm_tmr"], v["pm_tmr_len"]) == (
        ["0x600"], ["0x604"], ["0x608"], ["4"])
    assert v["sci"] == ["9"] and v["smi_cmd"] == ["0xb2"]
    assert v["lapic"] == ["0", "1"] and v["cpus"] == ["2"]       # one entry per vCPU
    assert v["ioapic_address"] == ["0xfec00000"] and v["lapic_address"] == ["0xfee00000"]
    # QEMU's overrides: IRQ 0 on GSI 2, the PCI/SCI IRQs level-triggered active high
    assert v["override"] == ["0:2:0x0", "5:5:0xd", "9:9:0xd", "10:10:0xd", "11:11:0xd"]
    assert v["nmi_lint"] == ["1"]


def test_the_pm_timer_counts_at_3_579545_mhz(kvm, kernel):
    exit, v = boot(kernel, "pmtimer")
    assert passed(exit), v
    # the ticks of one RTC second lie in [lo, hi] (the guest's polls bound the edges)
    lo, hi = int(v["second_lo"][0]), int(v["second_hi"][0])
    assert lo <= PM_TIMER_HZ * 1.001 and hi >= PM_TIMER_HZ * 0.999, (lo, hi)
    assert hi - lo < PM_TIMER_HZ // 4, (lo, hi)     # a window that says something
    assert v["top_bits"] == ["0x0"]                  # 24 bits wide, as QEMU's


def test_pci_bus_devices_bars_and_registers(kvm, kernel):
    exit, v = boot(kernel, "pci", devices=["edu", "pci-testdev"])
    assert passed(exit), v
    ids = [d.split(":")[1] for d in v["device"]]
    assert ids == ["0x12378086", "0x70008086", "0x71138086", "0x11e81234", "0x51b36"]
    assert v["testdev_bar0_size"] == ["0x1000"] and v["testdev_bar1_size"] == ["0x100"]
    assert v["edu_bar0_size"] == ["0x100000"]
    assert v["testdev_name"] == ["portio-wildcard-eventfd"]
    assert v["testdev_count"] == ["5"]                # no eventfd: the device counted
    assert v["testdev_wildcard_count"] == ["0"]       # the doorbell took those writes
    assert v["edu_id"] == ["0x10000ed"] and v["edu_liveness"] == ["0xedcba987"]
    assert v["edu_factorial"] == [str(479001600)]     # 12!
    assert v["edu_moved_id"] == ["0x10000ed"] and v["edu_again"] == ["0x10000ed"]
    assert v["edu_pin"] == ["1"] and v["edu_line"] == ["10"]   # slot 2 INTA: PIRQB, IRQ 10
    assert v["edu_cap"] == ["0x40"] and int(v["edu_status"][0], 16) & 0x10


@pytest.mark.parametrize("test", ["intx", "msi"])
def test_edu_interrupts_arrive(kvm, kernel, test):
    exit, v = boot(kernel, test, devices=["edu"])
    assert passed(exit), v
    assert (v["interrupts"], v["interrupts_after_factorial"], v["interrupts_after_dma"]) == (
        ["1"], ["2"], ["3"])
    assert v["factorial"] == ["120"] and v["dma"] == ["pyhv edu dma ok"]


def test_pc_testdev_registers_iomem_and_irq_lines(kvm, kernel):
    exit, v = boot(kernel, "testdev", devices=["pc-testdev"])
    assert passed(exit), v
    assert v["word"] == ["0x11223344"] and v["after_byte"] == ["0x1122aa44"]
    assert v["byte_port"] == ["0x22"] and v["after_word"] == ["0xbeefaa44"]
    assert v["iomem"] == ["0xcafef00d"] and v["iomem_byte"] == ["0xf0"]
    assert v["edge_interrupts"] == ["1"]
    assert int(v["level_interrupts"][0]) >= 1 and v["level_after_low"] == ["0"]
    assert v["gsi0_on_pin2"] == ["1"]


def test_two_vcpus_the_ap_starts_by_sipi_and_the_machine_ends_halted(kvm, kernel):
    exit, v = boot(kernel, "smp", cpus=2)
    assert isinstance(exit, exits.Halt)               # every vCPU cli; hlt: halted for good
    assert v["cpus"] == ["2"] and v["bsp_id"] == ["0"]
    assert v["started"] == ["1"] and v["ap"] == ["1"]


def test_an_s3_round_trip_resumes_at_the_waking_vector_on_the_rtc_alarm(kvm, kernel):
    exit, v = boot(kernel, "s3")
    # the resume code (real mode, at the FACS waking vector) reports PM1 status: WAK_STS and
    # RTC_STS; the code after the suspending write never ran
    assert isinstance(exit, exits.DebugExit) and exit.value == 0x85, (exit, v)
    assert v.get("suspending") is None and "not suspended" not in str(v)


def test_suspend_with_no_wake_source_ends_the_run(kvm):
    from pyhv.testing import assemble
    code = assemble("mov $0x604, %dx\nmov $0x2400, %ax\nout %ax, %dx\nud2", origin=0x100000)
    with PC(memory="16M", serial=None) as pc:
        pc.load(code, format="flat")
        result = pc.run(timeout=30)
    assert isinstance(result.exit, exits.SystemEvent) and result.exit.kind == "suspend"


def test_power_off_through_pm1a_control(kvm):
    from pyhv.testing import assemble
    code = assemble("mov $0x604, %dx\nmov $0x2000, %ax\nout %ax, %dx\nud2", origin=0x100000)
    with PC(memory="16M", serial=None) as pc:
        pc.load(code, format="flat")
        result = pc.run(timeout=30)
    assert isinstance(result.exit, exits.SystemEvent) and result.exit.kind == "shutdown"


def test_the_cpu_model_reaches_the_guest(kvm):
    from pyhv.testing import assemble
    # leaf 0 vendor and leaf 1 signature, as the guest's CPUID sees them
    code = assemble("xor %eax, %eax\ncpuid\nmov %ebx, %r8d\nmov $1, %eax\ncpuid\nhlt",
                    origin=0x100000)
    with PC(memory="16M", cpu="qemu64,vendor=GenuineIntel,-x2apic", serial=None,
            irqchip=False) as pc:
        pc.load(code, format="flat")
        cpu = pc.vcpus[0]
        assert isinstance(pc.run(timeout=30).exit, exits.Halt)
        regs = cpu.regs
        assert regs.r8 == int.from_bytes(b"Genu", "little")
        assert regs.rax == 0x60FB1                    # qemu64: family 15, model 107, stepping 1
        assert not regs.rcx & (1 << 21)               # -x2apic


def test_hv_entries_attach_hyperv_once_the_vcpus_exist(kvm):
    with pytest.raises(pyhv.InvalidArgument, match="hv-nonsense"):
        PC(memory="16M", cpu="host,hv-time,hv-nonsense", serial=None)
    with PC(memory="16M", cpu="host,hv-time,hv-vpindex", serial=None) as pc:
        assert pc.cpu_model.hyperv == ("hv-time", "hv-vpindex") and pc.hyperv is None
        pc.load(b"\xf4", format="flat")
        assert pc.hyperv is not None and pc.devices[pc.hyperv.name] is pc.hyperv
        signature = next(e for e in pc.vcpus[0].get_cpuid() if e.function == 0x40000001)
        assert signature.eax == int.from_bytes(b"Hv#1", "little")     # the TLFS interface
        assert isinstance(pc.run(timeout=30).exit, exits.Halt)


def test_bad_pcs_are_refused_and_leave_nothing_open(kvm):
    from ..conftest import fd_count
    pyhv.check()                          # the process-wide /dev/kvm handle: open for good
    before = fd_count()
    for kwargs, message in [
            ({"cpus": 0}, "at least one vCPU"),
            ({"cpus": 2, "irqchip": False}, "more than one vCPU needs the in-kernel irqchip"),
            ({"cpu": "pentium9"}, "unknown CPU model"),
            ({"devices": ["no-such-device"]}, "unknown device"),
            ({"memory": "512K"}, "at least 1 MiB"),
            ({"devices": ["edu,addr=0x40"]}, "slots 02-1f"),
            ({"cpus": 100000}, "KVM allows"),
            ({"devices": ["edu", 5]}, "neither a pyhv.devices.Device"),
            ({"cpus": "2"}, "at least one vCPU")]:
        with pytest.raises(pyhv.InvalidArgument, match=message):
            PC(**kwargs)
    assert fd_count() == before


def test_an_image_over_the_acpi_tables_is_refused(kvm):
    with PC(memory="16M", serial=None) as pc:
        with pytest.raises(pyhv.InvalidArgument, match="overlaps the PC's ACPI tables"):
            pc.load(b"\xf4", format="flat", address=0xF0000, mode="real")


def test_a_dma_outside_ram_or_the_buffer_is_refused(kvm):
    from pyhv.devices.edu import Edu
    from pyhv.testing import assemble
    edu = Edu()
    with PC(memory="16M", devices=[edu], serial=None, irqchip=False) as pc:
        # a guest that asks for DMAs beyond its RAM and beyond the device buffer
        bar = 0xFEB00000
        code = assemble(f"""
            mov ${bar:#x}, %rbx
            movl $0xFF000000, 0x80(%rbx)      # source: not RAM (masked to 28 bits: 0xF000000)
            movl $0x40000, 0x88(%rbx)
            movl $16, 0x90(%rbx)
            movl $1, 0x98(%rbx)
            movl $0x1000, 0x80(%rbx)          # source in RAM...
            movl $0x40FF0, 0x88(%rbx)         # ...but past the end of the device buffer
            movl $0x20, 0x90(%rbx)
            movl $1, 0x98(%rbx)
            hlt""", origin=0x100000)
        pc.load(code, format="flat")
        pc.partition.memory.write(0x1000, b"x" * 32)
        assert isinstance(pc.run(timeout=30).exit, exits.Halt)
    assert edu.refused_dma == 2 and edu.buffer == bytes(4096)


def test_several_vcpus_serial_output_keeps_its_order(kvm, kernel):
    exit, v = boot(kernel, "smp", cpus=2)
    assert list(v) == ["test", "cpus", "bsp_id", "started", "ap"]


def test_a_reset_through_port_0xcf9_ends_the_run(kvm):
    from pyhv.testing import assemble
    code = assemble("mov $0xcf9, %dx\nmov $0x06, %al\nout %al, %dx\nud2", origin=0x100000)
    with PC(memory="16M", serial=None) as pc:
        pc.load(code, format="flat")
        result = pc.run(timeout=30)
    assert isinstance(result.exit, exits.Reset) and "0xcf9" in result.exit.source


def test_the_machine_exposes_partition_vcpus_and_devices(kvm):
    with PC(memory="16M", cpus=3, serial=None) as pc:
        assert isinstance(pc.partition, pyhv.Partition) and pc.partition.irqchip
        assert set(pc.devices) >= {"com1", "i8042", "rtc", "fw_cfg", "debug-exit", "acpi-pm",
                                   "pci"}
        dev = pc.add_device("edu,id=first")
        second = pc.add_device("edu")
        assert dev.name == "first" and second.name == "edu"
        pc.load(b"\xf4", format="flat")
        assert len(pc.vcpus) == 3
        with pytest.raises(pyhv.StateError):
            pc.load(b"\xf4", format="flat")
        assert re.match(r"<pyhv.machines.PC 3 vCPU\(s\) cpu=qemu64", repr(pc))


def test_firmware_leaves_the_pit_ticking_and_an_ivt_that_takes_it(kvm):
    from pyhv.testing import assemble
    # real mode: sti; hlt waits for the BIOS tick, whose IVT handler sends the EOI and returns
    code = assemble("sti\nhlt\nsti\nhlt\nmov $0x2a, %al\nout %al, $0xf4", bits=16,
                    origin=0x7C00)
    with PC(memory="16M", serial=None) as pc:
        pc.load(code, format="flat", address=0x7C00, mode="real")
        memory = pc.partition.memory
        assert memory.read_u32(8 * 4) == 0xF000FF10           # IRQ 0 -> F000:FF10
        assert memory.read_u16(0x400) == 0x3F8 and memory.read_u16(0x413) == 639
        exit = pc.run(timeout=30).exit
    assert isinstance(exit, exits.DebugExit) and exit.value == 0x2A
