"""Third-party confirmation: the kvm-unit-tests Hyper-V tests (x86/hyperv_*.flat, built
unmodified from github.com/kvm-unit-tests/kvm-unit-tests with ``./configure --arch=x86_64 &&
make``) under ``pyhv run``, with the parameters of their x86/unittests.cfg.  They run when
$PYHV_KVM_UNIT_TESTS names the build's x86/ directory, and are skipped otherwise (they are
not built by the test suite; hyperv_connections takes ~12 minutes on kvm_pvm, whose CPL0
code is emulated)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SYNIC = ("--cpu", "host,hv_passthrough", "--device", "hyperv-testdev")
TESTS = {                      # unittests.cfg: smp = 2 and these qemu_params / test_args
    "hyperv_clock": ("hyperv_clock.flat", ("--cpu", "host,hv_passthrough"), 3),
    "hyperv_synic": ("hyperv_synic.flat", SYNIC, 1),
    "hyperv_stimer": ("hyperv_stimer.flat", ("--cpu", "host,hv_passthrough"), 12),
    "hyperv_stimer_direct": ("hyperv_stimer.flat", ("--cpu", "host,hv_passthrough",
                                                    "--append", "direct"), 8),
    "hyperv_connections": ("hyperv_connections.flat", SYNIC, 7),
}


def built() -> Path:
    where = os.environ.get("PYHV_KVM_UNIT_TESTS")
    if not where:
        pytest.skip("set PYHV_KVM_UNIT_TESTS to a kvm-unit-tests build's x86/ directory")
    return Path(where)


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("name", sorted(TESTS))
def test_kvm_unit_tests_hyperv(kvm, name):
    image, flags, count = TESTS[name]
    path = built() / image
    assert path.is_file(), f"{path} is not built"
    proc = subprocess.run([sys.executable, "-m", "pyhv", "run", str(path), "--cpus", "2",
                           "--memory", "64M", "--timeout", "1700", *flags],
                          capture_output=True, text=True, timeout=1790)
    summary = re.search(r"SUMMARY: (\d+) tests(.*)", proc.stdout)
    assert summary is not None, proc.stdout[-2000:] + proc.stderr
    assert "FAIL" not in proc.stdout, proc.stdout[-4000:]
    assert (int(summary.group(1)), summary.group(2).strip()) == (count, "")
    assert proc.returncode == 1, proc.stderr          # kvm-unit-tests' exit(0): (0 << 1) | 1
