"""Guests written in C under ``pyhv run`` (in a subprocess, as a user runs it), and the
same images under gdb: symbols and source lines are kept."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

from pyhv.testing import build_guest

from ..images import gdb_env

GUEST = """
void guest_main(int cpu)
{
    GUEST_PRINTF("hello from vCPU %d of %d\\n", cpu, guest_cpu_count());
    GUEST_SYNC(7);
    GUEST_ASSERT_EQ(guest_memory_size(), 32 << 20);
}
"""


def pyhv_run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pyhv", "run", *args], capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("mode", ["long", "protected"])
def test_pyhv_run_serves_the_ucalls_of_a_guest_image(kvm, mode):
    image = build_guest(c=GUEST, mode=mode)
    proc = pyhv_run(str(image.path), "--memory", "32M", "--timeout", "60")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "hello from vCPU 0 of 1\n"
    assert "guest sync 0x7 at" in proc.stderr and "answered 0" in proc.stderr


def test_a_failed_guest_assertion_is_exit_status_3_with_the_failure(kvm):
    image = build_guest(c=GUEST, mode="long")
    proc = pyhv_run(str(image.path), "--memory", "16M", "--timeout", "60")
    assert proc.returncode == 3
    assert "guest assertion failed on vCPU 0: guest_memory_size() == 32 << 20" in proc.stderr
    assert "left:  16777216 (0x1000000)" in proc.stderr


def test_smp_and_opting_out(kvm):
    image = build_guest(c=GUEST, mode="long")
    proc = pyhv_run(str(image.path), "--cpus", "2", "--timeout", "60")
    assert proc.returncode == 126 and "runs on one vCPU under pyhv run" in proc.stderr
    proc = pyhv_run(str(image.path), "--no-ucalls", "--timeout", "60")
    assert proc.returncode == 0 and proc.stdout == ""       # the ports nobody claims: ignored


@pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb is not installed")
def test_gdb_reads_the_symbols_and_the_test_files_lines():
    image = build_guest(c="""
void guest_main(int cpu)
{
    GUEST_SYNC(cpu);
}
""")
    proc = subprocess.run(["gdb", "-batch", "-nx", "-ex", "info line guest_main", "-ex",
                           "info address pyhv_ucalls", str(image.path)],
                          capture_output=True, text=True, timeout=120, env=gdb_env())
    assert proc.returncode == 0, proc.stderr
    line, file = re.search(r'Line (\d+) of "([^"]+)" starts at address', proc.stdout).groups()
    assert file == __file__                     # the C keeps this file's line numbers
    with open(file) as f:
        assert f.readlines()[int(line) - 1].strip() in ("void guest_main(int cpu)", "{",
                                                        "GUEST_SYNC(cpu);")
    assert "Symbol \"pyhv_ucalls\" is static storage at address" in proc.stdout
