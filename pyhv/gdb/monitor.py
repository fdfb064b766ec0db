"""gdb's ``monitor`` commands (``qRcmd``): the vCPU's whole state, its page tables, the
run counters and what guest debugging does on this backend.

>>> print(help_text().splitlines()[0])
pyhv monitor commands:
"""

from __future__ import annotations

from typing import Any

from ..errors import GuestMemoryError
from ..x86.paging import mappings, paging_mode
from .breakpoints import Breakpoints
from .probe import DebugSupport
from .target import mode_of

__all__ = ["COMMANDS", "help_text", "run_command"]

MAX_LINES = 2000            # a page-table dump stops here (a monitor reply stays small)

COMMANDS = {
    "help": "this list",
    "info registers": "the selected vCPU's general, segment, control and descriptor registers",
    "info mem": "what the selected vCPU's page tables map (virtual -> physical, rights)",
    "info debug": "how breakpoints and watchpoints are made on this backend, and which are in",
    "stats": "each vCPU's run counters (exits by kind, time in the guest)",
}


def help_text() -> str:
    width = max(map(len, COMMANDS))
    return "pyhv monitor commands:\n" + "".join(
        f"  {name:<{width}}  {what}\n" for name, what in COMMANDS.items())


def _registers(vcpu: Any) -> str:
    r = vcpu.read_registers()
    s = vcpu.get_sregs()
    lines = [f"vCPU {vcpu.id} ({mode_of(vcpu)} mode)"]
    names = ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp"] + [
        f"r{i}" for i in range(8, 16)] + ["rip", "rflags"]
    for i in range(0, len(names), 4):
        lines.append("  ".join(f"{n:>6}={getattr(r, n):016x}" for n in names[i:i + 4]))
    for seg in ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt"):
        v = getattr(s, seg)
        lines.append(f"{seg:>6}={v.selector:04x} base={v.base:016x} limit={v.limit:08x} "
                     f"type={v.type:x} dpl={v.dpl} present={v.present} l={v.l} db={v.db}")
    for table in ("gdt", "idt"):
        t = getattr(s, table)
        lines.append(f"{table:>6} base={t.base:016x} limit={t.limit:04x}")
    lines.append("  ".join(f"{n}={getattr(s, n):x}" for n in
                           ("cr0", "cr2", "cr3", "cr4", "cr8", "efer", "apic_base")))
    return "\n".join(lines) + "\n"


def _memory_map(vcpu: Any) -> str:
    regs = vcpu.paging_registers()
    runs = mappings(regs, _reader(vcpu), limit=MAX_LINES)
    head = f"vCPU {vcpu.id}: {paging_mode(regs)} paging, CR3={regs.cr3:#x}\n"
    body = "".join(f"{m}\n" for m in runs)
    more = f"(stopped after {MAX_LINES} runs)\n" if len(runs) >= MAX_LINES else ""
    return head + (body or "nothing mapped\n") + more


def _reader(vcpu: Any) -> Any:
    memory = vcpu.partition.memory

    def read(gpa: int, size: int) -> bytes | None:
        try:
            data: bytes = memory.read(gpa, size)
            return data
        except GuestMemoryError:     # outside RAM: the dump skips that table
            return None
    return read


def _stats(vcpus: list[Any]) -> str:
    out = []
    for vcpu in vcpus:
        s = vcpu.stats
        kinds = ", ".join(f"{k.removeprefix('KVM_EXIT_').lower()} {n}"
                          for k, n in sorted(s.exits.items())) or "none"
        out.append(f"vCPU {vcpu.id}: {s.runs} runs, exits: {kinds}; {s.exits_in_c} in C, "
                   f"{s.exits_to_python} to Python; guest {s.guest_seconds:.3f} s, host "
                   f"{s.host_seconds:.3f} s")
    return "\n".join(out) + "\n"


def _debug(support: DebugSupport, breakpoints: Breakpoints, steps: int) -> str:
    lines = [support.report()]
    for p in breakpoints.points.values():
        what = ("break", "hbreak", "watch", "rwatch", "awatch")[p.kind]
        lines.append(f"  {what} {p.address:#x} len {p.length}: {p.route}")
    lines.append(f"  single steps served without stopping: {steps}")
    return "\n".join(lines) + "\n"


def run_command(command: str, vcpu: Any, vcpus: list[Any], support: DebugSupport,
                breakpoints: Breakpoints, steps: int = 0) -> str:
    """The text a monitor ``command`` prints (unknown ones say so and list the others)."""
    words = " ".join(command.split())
    if words in ("", "help"):
        return help_text()
    if words in ("info registers", "info regs", "info cpus"):
        return _registers(vcpu)
    if words in ("info mem", "info tlb"):
        return _memory_map(vcpu)
    if words == "stats":
        return _stats(vcpus)
    if words == "info debug":
        return _debug(support, breakpoints, steps)
    return f"unknown monitor command {command!r}\n" + help_text()
