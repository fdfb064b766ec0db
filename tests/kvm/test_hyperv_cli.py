"""``pyhv run --cpu MODEL,hv-...`` as a user runs it (a subprocess), with a flat image that
asks whether it runs on Hyper-V."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pyhv.testing import assemble

IMAGE = assemble("""
    mov $0x40000000, %eax
    cpuid
    cmp $0x7263694d, %ebx          # "Micr"
    jne 1f
    mov $0x40000002, %ecx          # VP_INDEX
    rdmsr
    mov $0x40000020, %ecx          # TIME_REF_COUNT: #GP (a triple fault here) without hv-time
    rdmsr
    mov $0x21, %al
    out %al, $0xf4
1:  mov $0x10, %al
    out %al, $0xf4
""", origin=0x100000)


def pyhv_run(tmp_path, *flags: str) -> subprocess.CompletedProcess[str]:
    image = tmp_path / "hv.bin"
    image.write_bytes(IMAGE)
    return subprocess.run([sys.executable, "-m", "pyhv", "run", str(image), "--format", "flat",
                           "--timeout", "60", *flags], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("cpu, status", [
    ("host,hv-vpindex,hv_time", 0x43),          # Hyper-V, both MSRs: debug-exit 0x21
    ("host,hv-vpindex", 2),                      # no hv-time: #GP, no IDT: triple fault
    ("host", 0x21),                              # no hv-* at all: KVM's CPUID, not Hyper-V
])
def test_run_with_hyperv_flags(kvm, tmp_path, cpu, status):
    proc = pyhv_run(tmp_path, "--cpu", cpu)
    assert proc.returncode == status, proc.stderr


@pytest.mark.parametrize("flags, message", [
    (("--no-irqchip", "--cpu", "host,hv-synic,hv-vpindex"), "in-kernel irqchip"),
    (("--cpu", "host,hv-frobnicate"), "unknown Hyper-V flag"),
    (("--cpu", "host,hv-stimer"), "needs hv-synic"),
    (("--cpu", "host,hv-vpindex", "--device", "hyperv-testdev,iobase=1"), "takes no option"),
])
def test_run_refuses_bad_hyperv_flags_clearly(kvm, tmp_path, flags, message):
    proc = pyhv_run(tmp_path, *flags)
    assert proc.returncode == 126 and message in proc.stderr, proc.stderr


def test_run_with_the_testdev_and_synic(kvm, tmp_path):
    proc = pyhv_run(tmp_path, "--irqchip", "--cpu", "host,hv-passthrough",
                    "--device", "hyperv-testdev")
    assert proc.returncode == 0x43, proc.stderr
