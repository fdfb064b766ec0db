"""The pyhv command, run as a user would (in a subprocess), on the real /dev/kvm."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

import pyhv
from pyhv.core import probes
from pyhv.core.hypervisor import Hypervisor
from pyhv.tools.cli import main

from ..conftest import fd_count


def pyhv_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pyhv", *args], capture_output=True,
                          text=True, timeout=120)


def test_demo_prints_the_greeting_and_a_summary(kvm):
    proc = pyhv_cli("demo")
    assert proc.returncode == 0, proc.stderr
    assert "guest> Hello from a pyhv guest, running in 64-bit long mode!" in proc.stdout
    summary = proc.stdout.strip().splitlines()[-1]
    assert summary.startswith("demo: guest halted after 108 exits handled in Python")


def test_doctor_reports_runs_a_guest_and_measures(kvm):
    proc = pyhv_cli("doctor")
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "backend:" in out and "API version:  12" in out
    assert "smoke test: ok" in out and out.rstrip().endswith("READY")
    number = r"([0-9][0-9,.]*)"
    cpl3 = re.search(rf"CPL3 compute: {number} ns per loop iteration in a user-mode guest, "
                     rf"{number} on the host \({number}x\): (.*)", out)
    cpl0 = re.search(rf"CPL0 compute: {number} ns per iteration in a long-mode guest, "
                     rf"{number}x the CPL3 time: (.*)", out)
    exits = re.search(rf"exits: {number} us per port OUT handled by a Python handler, "
                      rf"{number} us completed in pyhv's C core", out)
    assert cpl3 and cpl0 and exits, out
    assert all(float(value) > 0 for value in cpl3.groups()[:3] + cpl0.groups()[:2] +
               exits.groups())
    # what was measured agrees with what the backend is known to do
    backend = pyhv.check().backend
    if backend == "kvm_pvm":
        assert cpl0.group(3) == "ring-0 guest code is emulated", out
    elif backend in ("kvm_intel", "kvm_amd"):
        assert cpl0.group(3) == "ring-0 guest code runs as fast as ring-3 code", out
    assert cpl3.group(4) == "runs natively", out
    honoured = probes.port_io_at_cpl3(pyhv.core.hypervisor.default())
    assert ("port IO at CPL3 (allow_port_io=True): " + ("yes" if honoured else "no")) in out


def test_doctor_reports_an_unknown_backend_as_unknown_and_still_measures(kvm, monkeypatch,
                                                                        capsys):
    monkeypatch.setattr(Hypervisor, "backend", property(lambda self: "unknown"))
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "backend:      unknown (an unrecognised KVM backend" in out
    assert "expected:     unknown backend: speed unknown until measured" in out
    assert "hardware-assisted" not in out
    assert "CPL0 compute: " in out and "exits: " in out and out.rstrip().endswith("READY")


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


@pytest.mark.parametrize("what, says", [
    # the command line only: the checks themselves run in tests/kvm/test_stress.py and
    # test_concurrency.py, at the sizes that find something
    ("fuzz", r"^4 random guests \(seed 1; long 1, protected 1, real 1, user 1\); ended on: "),
    ("soak", r"^create/run/destroy: 4 cycles .*\nsnapshot/restore: 4 cycles .*\ntolerance: "),
    ("races", r"^4 cancels: [1-4] runs canceled, [0-9]+ exits, none lost$"),
    ("images", r"^[0-9]+ mutated images \(.*\): [0-9]+ refused with ImageFormatError"),
])
def test_stress_commands(kvm, what, says):
    proc = pyhv_cli("stress", what, "--count", "4")
    assert proc.returncode == 0, proc.stderr
    assert re.search(says, proc.stdout.strip(), re.M), proc.stdout


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


def test_doctor_of_a_named_device_runs_its_guests_on_that_device(kvm, capsys):
    pyhv.check()
    fds = fd_count()
    assert main(["doctor", "--device", "/dev/kvm"]) == 0
    out = capsys.readouterr().out
    assert "smoke test: ok" in out and "CPL0 compute: " in out and "port IO at CPL3" in out
    assert fd_count() == fds                         # its own handle is closed again


@pytest.mark.parametrize("where", ["before", "after"])
def test_verbose_logs_loader_decisions_and_vv_the_lifecycle(kvm, tmp_path, where):
    from pyhv.loaders.samples import sample_images
    image = tmp_path / "mb.bin"
    image.write_bytes(sample_images()["multiboot"])
    quiet = pyhv_cli("run", str(image), "--timeout", "60")
    assert "pyhv: INFO" not in quiet.stderr and "pyhv: DEBUG" not in quiet.stderr
    for flag, levels in (("-v", {"INFO"}), ("-vv", {"INFO", "DEBUG"})):
        argv = [flag, "run", str(image)] if where == "before" else ["run", str(image), flag]
        proc = pyhv_cli(*argv, "--timeout", "60")
        assert proc.returncode == quiet.returncode, proc.stderr
        assert f"pyhv: INFO: {image}: loading 37 bytes as multiboot (detected)" in proc.stderr
        assert {m for m in ("INFO", "DEBUG") if f"pyhv: {m}:" in proc.stderr} == levels
