"""The pyhv command, run as a user would (in a subprocess), on the real /dev/kvm."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def pyhv_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pyhv", *args], capture_output=True,
                          text=True, timeout=120)


def test_demo_prints_the_greeting_and_a_summary(kvm):
    proc = pyhv_cli("demo")
    assert proc.returncode == 0, proc.stderr
    assert "guest> Hello from a pyhv guest, running in 64-bit long mode!" in proc.stdout
    summary = proc.stdout.strip().splitlines()[-1]
    assert summary.startswith("demo: guest halted after 108 exits handled in Python")


def test_doctor_reports_and_runs_a_guest(kvm):
    proc = pyhv_cli("doctor")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "backend:" in proc.stdout and "API version:  12" in proc.stdout
    assert "smoke test: ok" in proc.stdout and proc.stdout.rstrip().endswith("READY")


def test_run_boots_a_multiboot_kernel_and_exits_with_its_code(kvm, tmp_path):
    from ..images import build_multiboot
    kernel = build_multiboot(tmp_path)
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"ramdisk")
    proc = pyhv_cli("run", str(kernel), "--memory", "32M", "--append", "quiet",
                    "--initrd", str(initrd), "--timeout", "60")
    assert proc.returncode == 0x63, proc.stderr               # (0x31 << 1) | 1
    assert f"cmdline {kernel} quiet" in proc.stdout
    assert f"{initrd} ramdisk" in proc.stdout and proc.stdout.endswith("bye\n")


def test_run_serial_to_a_file(kvm, tmp_path):
    from ..images import build_multiboot
    kernel = build_multiboot(tmp_path)
    log = tmp_path / "console.log"
    proc = pyhv_cli("run", str(kernel), "--memory", "32M", "--serial", f"file:{log}")
    assert proc.returncode == 0x63 and proc.stdout == ""
    assert log.read_text().startswith("magic 0x2badb002")


@pytest.mark.parametrize("code, status", [
    ("hlt", 0),                                       # halted
    ("lidt idt(%rip)\nud2\nidt: .word 0\n.quad 0", 2),   # triple fault
    ("mov $0x10, %al\nout %al, $0x80\nmov $0x10, %al\nout %al, $0xf4", 0x21),  # debug-exit
    ("mov $0xfe, %al\nout %al, $0x64\nhlt", 0),        # i8042 reset
    ("mov (0xd0000000), %eax\nhlt", 4),               # MMIO nobody handles
])
def test_run_exit_status_follows_the_guest(kvm, tmp_path, code, status):
    from pyhv.testing import assemble
    image = tmp_path / "guest.bin"
    image.write_bytes(assemble(code, origin=0x100000))
    proc = pyhv_cli("run", str(image), "--format", "flat", "--memory", "4M", "--timeout", "30")
    assert proc.returncode == status, proc.stderr


def test_run_timeout_and_bad_images(kvm, tmp_path):
    spin = tmp_path / "spin.bin"
    spin.write_bytes(b"\xeb\xfe")                             # jmp .
    proc = pyhv_cli("run", str(spin), "--format", "flat", "--timeout", "0.5")
    assert proc.returncode == 124 and "timeout" in proc.stderr
    bad = tmp_path / "bad.elf"
    bad.write_bytes(b"\x7fELF" + bytes(60))
    proc = pyhv_cli("run", str(bad), "--format", "elf")
    assert proc.returncode == 126 and "not a loadable ELF" in proc.stderr
    proc = pyhv_cli("run", str(tmp_path / "missing"))
    assert proc.returncode == 126 and "could not load kernel" in proc.stderr
    proc = pyhv_cli("run", str(spin), "--serial", "telnet:1234")
    assert proc.returncode == 126 and "--serial" in proc.stderr


def test_run_with_two_cpus(kvm, tmp_path):
    from ..images import build_multiboot
    # the application processor waits for a SIPI that never comes; the kernel's debug-exit
    # on the boot processor ends the whole machine
    proc = pyhv_cli("run", str(build_multiboot(tmp_path)), "--cpus", "2", "--memory", "32M",
                    "--timeout", "60")
    assert proc.returncode == 0x63, proc.stderr


@pytest.mark.parametrize("what", ["fuzz", "soak", "races", "images"])
def test_stress_commands(kvm, what):
    proc = pyhv_cli("stress", what, "--count", "20")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()


def test_output_into_a_closed_pipe_ends_quietly(kvm):
    # `pyhv doctor | head -1`: the reader is gone before pyhv writes (closed before it starts)
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run([sys.executable, "-m", "pyhv", "doctor"], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert proc.returncode == 141, proc.stderr
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
