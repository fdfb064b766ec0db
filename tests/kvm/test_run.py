"""``pyhv run`` as a user runs it (a subprocess) with QEMU's command lines, on the real
/dev/kvm: the PC machine, -device, -cpu, -smp, -m in MiB, and the exit statuses."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from ..images import build_multiboot, have_32bit_toolchain

pytestmark = pytest.mark.skipif(not have_32bit_toolchain(), reason="needs gcc and ld")

# what the KVM unit tests' runner passes QEMU (x86/run), before the test's own flags
QEMU_PREFIX = ["--no-reboot", "-nodefaults", "-global", "kvm-pit.lost_tick_policy=discard",
               "-device", "pc-testdev", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x4",
               "-display", "none", "-serial", "stdio", "-device", "pci-testdev",
               "-machine", "accel=kvm"]


def pyhv_run(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pyhv", "run", *args], capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    from ..pc_images import build_pc_guest
    return str(build_pc_guest(tmp_path_factory.mktemp("pc-guest")))


def test_a_qemu_command_line_runs_by_replacing_the_program_name(kvm, kernel):
    proc = pyhv_run(*QEMU_PREFIX, "-kernel", kernel, "-smp", "2", "-append", "pci")
    assert proc.returncode == 1, proc.stderr          # debug-exit 0: (0 << 1) | 1
    assert "device=0x2.0:0x51b36" in proc.stdout        # pci-testdev, from -device


def test_two_vcpus_start_and_a_machine_halted_for_good_exits_0(kvm, kernel):
    proc = pyhv_run("-kernel", kernel, "-smp", "cpus=2", "-append", "smp", "--timeout", "120")
    assert proc.returncode == 0, proc.stderr
    assert "started=1\nap=1\n" in proc.stdout


def test_the_guests_failure_code_is_odd_and_distinct_from_pyhvs(kvm, kernel):
    # the "intx" test without its edu device fails check 40: (40 << 1) | 1 = 81
    proc = pyhv_run("-kernel", kernel, "-append", "intx", "--timeout", "60")
    assert proc.returncode == 81 and "failed=40" in proc.stdout


def test_flat_only_flags_are_refused_for_a_kernel(kvm, kernel):
    for flag in (["--address", "0x200000"], ["--mode", "real"]):
        proc = pyhv_run("-kernel", kernel, *flag, "--timeout", "60")
        assert proc.returncode == 126, proc.stderr
        assert "address and mode are for flat images only (a multiboot image" in proc.stderr


def test_memory_without_a_suffix_is_mib(kvm, tmp_path):
    kernel = build_multiboot(tmp_path)
    proc = pyhv_run(str(kernel), "-m", "48", "--timeout", "60")
    assert proc.returncode == 0x63, proc.stderr
    upper_kib = int(proc.stdout.split("\nmem ")[1].split()[1], 16)
    assert upper_kib == (48 << 10) - 1024                 # 48 MiB, less the first


def test_cpu_model_flags_and_warnings(kvm, kernel):
    proc = pyhv_run("-kernel", kernel, "-cpu", "qemu64,+x2apic,vendor=GenuineIntel",
                    "-append", "acpi", "--timeout", "60")
    assert proc.returncode == 1, proc.stderr
    proc = pyhv_run("-kernel", kernel, "-cpu", "host,+vmx,enforce", "-append", "acpi")
    if "vmx" in proc.stderr:                               # KVM here cannot nest: refused
        assert proc.returncode == 126 and "enforce" in proc.stderr


def test_hyperv_entries_enlighten_the_pc_and_bad_ones_are_refused(kvm, kernel):
    proc = pyhv_run("-kernel", kernel, "-cpu", "host,hv_time,hv-relaxed", "-append", "acpi",
                    "--timeout", "60")
    assert proc.returncode == 1, proc.stderr
    proc = pyhv_run("-kernel", kernel, "-cpu", "host,hv-time,hv-nonsense", "-append", "acpi")
    assert proc.returncode == 126 and "hv-nonsense" in proc.stderr, proc.stderr


def test_an_s3_round_trip_from_the_command_line(kvm, kernel):
    proc = pyhv_run("-kernel", kernel, "-append", "s3", "--timeout", "60")
    assert proc.returncode == ((0x85 << 1) | 1) & 0xFF, proc.stderr
    assert "suspending" in proc.stdout and "not suspended" not in proc.stdout


def test_no_irqchip_machine_for_bare_experiments(kvm, tmp_path):
    from pyhv.testing import assemble
    image = tmp_path / "sti_hlt.bin"
    image.write_bytes(assemble("sti\nhlt", origin=0x100000))
    proc = pyhv_run(str(image), "--no-irqchip", "--timeout", "30")
    assert proc.returncode == 0                            # hlt ends the run at once
    proc = pyhv_run(str(image), "-machine", "pc,kernel-irqchip=off", "--timeout", "30")
    assert proc.returncode == 0
    # a PC: the PIT ticks at 18.2 Hz as firmware left it, and this guest has no IDT
    proc = pyhv_run(str(image), "--timeout", "30")
    assert proc.returncode == 2 and "triple-faulted" in proc.stderr
    proc = pyhv_run(str(image), "-machine", "pit=off", "--timeout", "1")
    assert proc.returncode == 124                          # nothing will ever interrupt it


def test_ctrl_c_exits_130(kvm, tmp_path):
    image = tmp_path / "spin.bin"
    image.write_bytes(b"\xeb\xfe")
    child = subprocess.Popen([sys.executable, "-m", "pyhv", "run", str(image)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(2)
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:           # a lost Ctrl-C: the guest would spin on for good
            child.kill()
            child.wait()
    assert child.returncode == 130 and "interrupted" in err


def test_an_extension_takes_its_flags_and_the_machine(kvm, kernel, capsys):
    from pyhv.tools import run
    from pyhv.tools.cli import main
    seen = {}

    class Extension:
        def add_arguments(self, parser):
            parser.add_argument("--extension-flag", action="store_true")

        def before_run(self, args, partition):
            seen.update(flag=args.extension_flag, vcpus=len(partition.vcpus), cpus=args.cpus,
                        machine=type(args.machine).__name__, image=args.image,
                        hv=type(args.machine.hyperv).__name__)
            args.machine.partition.memory.write(0x500, b"x")   # it may set up what it needs

    run.EXTENSIONS.append(Extension())
    try:
        status = main(["run", "-kernel", kernel, "-smp", "2", "-append", "acpi",
                       "-cpu", "qemu64,hv-time", "--extension-flag", "--serial", "none"])
        assert status == 1, capsys.readouterr().err
        assert seen == {"flag": True, "vcpus": 2, "cpus": 2, "machine": "PC", "image": kernel,
                        "hv": "HyperV"}
    finally:
        run.EXTENSIONS.pop()
