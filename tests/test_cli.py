"""The pyhv command, run as a user would: in a subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pyhv.demo import demo_image
from pyhv.testing import assemble_file

DEMO_SOURCE = Path(__file__).parents[1] / "pyhv" / "guests" / "demo.S"


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


def test_doctor_fails_clearly_without_kvm(tmp_path):
    proc = pyhv_cli("doctor", "--device", str(tmp_path / "kvm"))
    assert proc.returncode == 1
    assert "KVM is not usable" in proc.stderr and "VT-x/AMD-V" in proc.stderr


def test_no_command_prints_help():
    proc = pyhv_cli()
    assert proc.returncode == 2 and "doctor" in proc.stdout and "demo" in proc.stdout


def test_demo_binary_matches_its_source():
    assert demo_image() == assemble_file(DEMO_SOURCE, origin=0x1000), (
        "pyhv/guests/demo.bin is stale: rebuild it from demo.S (see the comment at its top)")
