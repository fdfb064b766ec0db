"""pyhv.gdb end to end: the real gdb binary, in batch mode, against guests built here with
symbols (a 64-bit ELF from tests/guests/gdb/long.S, a 32-bit multiboot kernel in C, a
two-vCPU guest, one that triple-faults), served from Python and from ``pyhv run``."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import pyhv
import pyhv.gdb
from pyhv import devices, exits, loaders

from ..images import MULTIBOOT, _run, gdb_env, link_elf

GUESTS = Path(__file__).resolve().parents[1] / "guests" / "gdb"
GDB = shutil.which("gdb")
pytestmark = pytest.mark.skipif(GDB is None, reason="gdb is not installed (apt-get install gdb)")


def build_long(out: Path, name: str = "long", text: int = 0x100000) -> Path:
    return link_elf(out, (GUESTS / f"{name}.S").read_text(), 64, text, name)


def build_kernel(out: Path) -> Path:
    """The multiboot kernel of tests/guests/gdb/kernel.c, with debug information."""
    out.mkdir(parents=True, exist_ok=True)
    flags = ["-m32", "-march=i386", "-mgeneral-regs-only", "-ffreestanding",
             "-fno-stack-protector", "-fno-pic", "-fno-pie", "-fno-builtin", "-nostdlib",
             "-O0", "-g", "-Wall", "-Werror"]
    _run(["gcc", *flags, "-c", str(GUESTS / "kernel.c"), "-o", str(out / "kernel.o")])
    _run(["gcc", "-m32", "-g", "-c", str(MULTIBOOT / "boot.S"), "-o", str(out / "boot.o")])
    elf = out / "kernel.elf"
    _run(["ld", "-m", "elf_i386", "-z", "noexecstack", "--no-warn-rwx-segments", "-T",
          str(MULTIBOOT / "linker.ld"), "-o", str(elf), str(out / "boot.o"),
          str(out / "kernel.o")])
    return elf


def symbol(elf: Path, name: str) -> int:
    from elftools.elf.elffile import ELFFile
    with open(elf, "rb") as f:
        for sym in ELFFile(f).get_section_by_name(".symtab").iter_symbols():
            if sym.name == name:
                return int(sym["st_value"])
    raise KeyError(name)


class Debugged:
    """A partition running an image under pyhv.gdb on a thread of its own."""

    def __init__(self, elf: Path, fmt: str = "elf", *, wait: bool = True,
                 address: str = "tcp:127.0.0.1:0", vcpus: int = 1) -> None:
        self.elf = elf
        self.part = pyhv.Partition(memory="16M")
        self.part.attach(devices.IsaDebugExit(0xF4))
        image = loaders.load(self.part, elf.read_bytes(), fmt, name=elf.name)
        image.create_vcpu(self.part)
        for _ in range(vcpus - 1):
            self.part.create_vcpu(mode="long", entry=symbol(elf, "ap_start"),
                                  stack=0x70000)
        self.server = pyhv.gdb.serve(self.part, address, wait=wait)
        self.results: list[object] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            if len(self.part.vcpus) > 1:
                self.results.extend(self.part.run_all(timeout=120))
            else:
                self.results.append(self.part.run(timeout=120))
        except BaseException as exc:            # handed to the test
            self.results.append(exc)

    def target(self) -> str:
        where = self.server.address
        return where[len("unix:"):] if where.startswith("unix:") else \
            where[len("tcp:"):]

    def gdb(self, *commands: str, interrupt_after: float | None = None,
            timeout: float = 90) -> str:
        """Run gdb in batch mode with ``commands`` after ``target remote``; SIGINT to gdb
        (as Ctrl-C) after ``interrupt_after`` seconds."""
        argv = [GDB, "-nx", "-batch", "-ex", "set confirm off", "-ex", "set pagination off",
                "-ex", f"target remote {self.target()}"]
        for c in commands:
            argv += ["-ex", c]
        argv.append(str(self.elf))
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env=gdb_env())
        if interrupt_after is not None:
            time.sleep(interrupt_after)
            proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            raise AssertionError(f"gdb did not finish:\n{out}") from None
        return out

    def finish(self, timeout: float = 60) -> object:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the guest's run did not end"
        return self.results[0] if len(self.results) == 1 else self.results

    def close(self) -> None:
        self.server.close()
        self.part.stop()
        self.thread.join(30)
        self.part.close()


@pytest.fixture
def long_elf(tmp_path) -> Path:
    return build_long(tmp_path)


@pytest.fixture
def debugged(kvm, long_elf):
    made: list[Debugged] = []

    def make(elf: Path | None = None, **kwargs) -> Debugged:
        d = Debugged(elf or long_elf, **kwargs)
        made.append(d)
        return d

    yield make
    for d in made:
        d.close()


RELEASE = "set var *(long *)&release = 7"


def test_attach_break_continue_read_registers_and_memory(debugged, long_elf):
    d = debugged()
    out = d.gdb("info registers rip", "break bump", "continue", "info registers rip",
                "x/1gx &counter", "p/x $rbx", "bt 2", "delete", RELEASE, "continue")
    assert re.search(r"rip\s+0x100000\s+0x100000 <_start>", out), out
    assert "Breakpoint 1, 0x" in out and "in bump ()" in out, out
    bump = symbol(long_elf, "bump")
    assert re.search(rf"rip\s+{bump:#x}\s+{bump:#x} <bump>", out), out
    assert re.search(rf"{symbol(long_elf, 'counter'):#x}(?: <counter>)?:\s+0x0+1\n", out), out
    assert "$1 = 0x0" in out                      # rbx: bump has not run yet
    assert "in count ()" in out                   # the backtrace's caller frame
    result = d.finish()
    assert isinstance(result.exit, exits.DebugExit) and result.exit.value == 12, out


def test_stepi_across_instructions(debugged, long_elf):
    d = debugged()
    out = d.gdb("break bump", "continue", "delete", "stepi", "x/i $pc", "stepi", "x/i $pc",
                "stepi", "x/i $pc", "p/x $rbx", RELEASE, "continue")
    bump = symbol(long_elf, "bump")
    steps = re.findall(r"=> (0x[0-9a-f]+) <([a-z_]+)\+?(\d*)>:\s+(\w+)", out)
    assert [(int(a, 16), ins) for a, _s, _o, ins in steps] == [
        (bump + 4, "nop"), (bump + 5, "ret"), (symbol(long_elf, "count") + 12, "cmpq")], out
    assert "$1 = 0x1" in out                      # the add ran once
    assert isinstance(d.finish().exit, exits.DebugExit)


def test_write_watchpoint_reports_old_and_new_values(debugged):
    d = debugged()
    out = d.gdb("watch *(long *)&counter", "continue", "continue", "delete", RELEASE,
                "continue")
    assert "Hardware watchpoint 1: *(long *)&counter" in out, out
    assert re.search(r"Old value = 0\s+New value = 1", out), out
    assert re.search(r"Old value = 1\s+New value = 2", out), out
    assert isinstance(d.finish().exit, exits.DebugExit)


def test_ctrl_c_interrupts_a_spinning_guest_and_set_var_writes_memory(debugged, long_elf):
    d = debugged()
    out = d.gdb("continue", "info registers rip", RELEASE, "p *(long *)&release", "continue",
                interrupt_after=3)
    assert "Program received signal SIGINT" in out, out
    assert "in spin ()" in out, out
    assert "$1 = 7" in out
    assert "exited with code 031" in out           # (5 + 7) << 1 | 1 = 25
    result = d.finish()
    assert result.exit == exits.DebugExit(25, 12, 0xF4, rip=result.exit.rip)
    assert d.part.memory.read_u64(symbol(long_elf, "release")) == 7


def test_multiboot_kernel_in_c_with_types(debugged, tmp_path):
    elf = build_kernel(tmp_path)
    d = debugged(elf, fmt="multiboot")
    out = d.gdb("show architecture", "break bump", "continue", "bt 2", "p counter",
                "p by", "delete", "watch counter", "continue", "delete",
                "set var release = 3", "continue")
    assert "i386" in out and "x86-64" not in out.split("Breakpoint")[0], out
    assert re.search(r"Breakpoint 1, bump \(by=1\) at .*kernel\.c", out), out
    assert "kmain" in out                           # the caller
    assert "$1 = 0" in out and "$2 = 1" in out, out
    assert re.search(r"Old value = 0\s+New value = 1\s+bump \(by=1\)", out), out
    result = d.finish()
    assert isinstance(result.exit, exits.DebugExit) and result.exit.value == 8, out


def test_two_vcpus_are_two_threads(debugged, tmp_path):
    elf = build_long(tmp_path, "two_cpus")
    d = debugged(elf, vcpus=2)
    out = d.gdb("info threads", "thread 2", "continue", "info registers rip",
                "thread 2", "info registers rip", "p/x $rcx", RELEASE, "continue",
                interrupt_after=4)
    assert re.search(r"\* 1\s+Thread 1 \(vCPU 0, long mode\)", out), out
    assert re.search(r"2\s+Thread 2 \(vCPU 1, long mode\)", out), out
    assert "[Switching to thread 2" in out, out
    ap_loop, ap_end = symbol(elf, "ap_loop"), symbol(elf, "ap_loop") + 16
    rips = [int(r, 16) for r in re.findall(r"rip\s+(0x[0-9a-f]+)", out)]
    assert any(ap_loop - 2 <= r < ap_end for r in rips), out
    results = d.finish()
    assert any(isinstance(r.exit, exits.DebugExit) for r in results), results
    assert d.part.memory.read_u64(symbol(elf, "second")) > 0


def test_detach_removes_breakpoints_and_the_guest_runs_on(debugged, long_elf):
    d = debugged()
    bump = symbol(long_elf, "bump")
    original = d.part.memory.read(bump, 4)
    out = d.gdb("break bump", "continue", RELEASE, "detach")
    assert "Breakpoint 1" in out and "[Inferior 1 (Remote target) detached]" in out, out
    result = d.finish()
    assert isinstance(result.exit, exits.DebugExit) and result.exit.value == 12
    assert d.part.memory.read(bump, 4) == original
    assert d.part.vcpus[0].guest_debug == pyhv.GuestDebug()


def test_kill_ends_the_partition_cleanly(debugged):
    d = debugged()
    out = d.gdb("break bump", "continue", "kill")
    assert "[Inferior 1 (Remote target) killed]" in out, out
    result = d.finish()
    assert isinstance(result.exit, exits.Canceled)
    assert d.part.state is pyhv.PartitionState.STOPPED


def test_a_triple_fault_is_reported_where_it_happened(debugged, tmp_path):
    elf = build_long(tmp_path, "crash")
    d = debugged(elf)
    out = d.gdb("continue", "info registers rip", "continue")
    assert "Program received signal SIGSEGV" in out, out
    assert re.search(rf"rip\s+{symbol(elf, 'crash'):#x}", out), out
    assert "Program terminated with signal SIGSEGV" in out, out
    result = d.finish()
    assert isinstance(result.exit, exits.Shutdown)


def test_monitor_commands(debugged):
    d = debugged()
    out = d.gdb("monitor help", "monitor info registers", "monitor info mem",
                "monitor stats", "monitor info debug", "monitor bogus", RELEASE, "continue")
    assert "pyhv monitor commands:" in out
    assert "vCPU 0 (long mode)" in out and re.search(r"cr0=[0-9a-f]+", out), out
    assert "4-level paging" in out and "0x0-0x" in out, out
    assert "vCPU 0: " in out and " runs, exits:" in out, out
    assert "guest debugging (pyhv.gdb) on" in out
    assert "unknown monitor command 'bogus'" in out
    d.finish()


def test_unix_socket(debugged, tmp_path):
    path = tmp_path / "gdb.sock"
    d = debugged(address=f"unix:{path}")
    out = d.gdb("break bump", "continue", "delete", RELEASE, "continue")
    assert "Breakpoint 1" in out, out
    assert isinstance(d.finish().exit, exits.DebugExit)
    d.server.close()
    assert not path.exists()


def test_snapshot_while_gdb_has_the_guest_stopped(debugged, tmp_path, long_elf):
    d = debugged()
    flag = tmp_path / "stopped"
    taken: list[pyhv.Snapshot] = []

    def snapshot_when_told() -> None:
        deadline = time.monotonic() + 60
        while not flag.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        taken.append(d.part.snapshot())
        (tmp_path / "taken").touch()

    helper = threading.Thread(target=snapshot_when_told)
    helper.start()
    out = d.gdb("break bump", "continue", "continue", f"shell touch {flag}",
                f"shell while [ ! -e {tmp_path / 'taken'} ]; do sleep 0.05; done",
                "delete", RELEASE, "continue")
    helper.join(10)
    assert len(taken) == 1, out
    assert isinstance(d.finish().exit, exits.DebugExit), out
    with pyhv.Partition.from_snapshot(taken[0]) as clone:      # the guest as gdb saw it
        assert clone.memory.read_u64(symbol(long_elf, "counter")) == 2
        assert clone.vcpus[0].regs.rip == symbol(long_elf, "bump")


def server_line(proc: subprocess.Popen[str], pattern: str) -> re.Match[str]:
    """The line of ``pyhv run``'s stderr that says where gdb connects (warnings first, such
    as CPU features the host's KVM cannot give)."""
    seen = []
    for line in proc.stderr:
        found = re.search(pattern, line)
        if found:
            return found
        seen.append(line)
        assert "warning" in line, "".join(seen)
    raise AssertionError("".join(seen))


def test_pyhv_run_with_gdb_flags(kvm, long_elf):
    """QEMU's spelling: -gdb DEV and -S (a free port, since -s's 1234 may be taken)."""
    proc = subprocess.Popen([sys.executable, "-m", "pyhv", "run", str(long_elf),
                             "--serial", "none", "-gdb", "tcp::0", "-S"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        found = server_line(proc, r"gdb server on tcp:([\d.]+):(\d+); the guest waits")
        out = subprocess.run(
            [GDB, "-nx", "-batch", "-ex", f"target remote {found[1]}:{found[2]}",
             "-ex", "info registers rip", "-ex", "break bump", "-ex", "continue",
             "-ex", "delete", "-ex", RELEASE, "-ex", "continue", str(long_elf)],
            capture_output=True, text=True, timeout=90, env=gdb_env()).stdout
        assert "0x100000 <_start>" in out and "Breakpoint 1" in out, out
        assert proc.wait(timeout=60) == 25, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_pyhv_run_s_alone_means_port_1234_and_S_needs_a_gdb(kvm, long_elf):
    from pyhv.tools.cli import build_parser
    args = build_parser().parse_args(["run", str(long_elf), "-s", "-S", "-smp", "1"])
    assert args.gdb_default and args.gdb_wait and args.gdb is None and args.cpus == "1"
    proc = subprocess.run([sys.executable, "-m", "pyhv", "run", str(long_elf), "-S"],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 126 and "-S waits for gdb" in proc.stderr


def test_pyhv_run_smp_multiboot_kernel(kvm, tmp_path):
    """pyhv run --cpus 2: the boot vCPU and an AP waiting for its SIPI are two threads; the
    exit status gdb is told is the debug-exit one, though the AP's run ends last."""
    elf = build_kernel(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "pyhv", "run", str(elf), "--serial", "none",
                             "-gdb", "tcp::0", "-S", "--cpus", "2"],
                            stderr=subprocess.PIPE, text=True)
    try:
        found = server_line(proc, r"gdb server on tcp:([\d.]+):(\d+)")
        out = subprocess.run(
            [GDB, "-nx", "-batch", "-ex", f"target remote {found[1]}:{found[2]}",
             "-ex", "info threads", "-ex", "break bump", "-ex", "continue", "-ex", "delete",
             "-ex", "set var release = 1", "-ex", "continue", str(elf)],
            capture_output=True, text=True, timeout=90, env=gdb_env()).stdout
        assert re.search(r"1\s+Thread 1 \(vCPU 0, protected mode\)", out), out
        assert re.search(r"2\s+Thread 2 \(vCPU 1, real mode\)", out), out
        assert "Thread 1 hit Breakpoint 1, bump (by=1)" in out, out
        assert "exited with code 015" in out, out            # (5 + 1) << 1 | 1 = 13
        assert proc.wait(timeout=60) == 13
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
