"""What this host's KVM does for guest debugging, measured with tiny guests, and the route
pyhv's gdb server takes for each kind of breakpoint because of it.

Hardware KVM (kvm_intel, kvm_amd) delivers everything ``KVM_SET_GUEST_DEBUG`` offers.  The
software kvm_pvm does not: write watchpoints are not delivered, ``int3`` at ring 0 ends the
run as an emulation failure, hardware breakpoints and single steps at CPL3 are not reported.
:func:`debug_support` finds out instead of guessing (once per hypervisor handle; each probe
is a guest of a few instructions).

>>> from pyhv.gdb.probe import debug_support
>>> support = debug_support()
>>> support.single_step, support.breakpoint_route("long") in ("int3", "hardware")
(True, True)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from .. import exits
from ..core import hypervisor as hv
from ..errors import HypervisorError
from ..partition import Partition
from ..x86.debug import HardwareBreakpoint

__all__ = ["DebugSupport", "debug_support"]

_CODE = 0x1000
_USER = 0x100000
_DATA = 0x3000


@dataclass(frozen=True)
class DebugSupport:
    """What guest debugging delivers on one backend.

    ``software_breakpoints`` says how ``int3`` in 32/64-bit ring-0 code reaches the host:
    "debug-exit" (a ``Debug`` exit, as on hardware KVM), "emulation-failure" (an
    ``InternalError`` at the ``int3``, as on kvm_pvm: pyhv treats it as the breakpoint) or
    "none"; ``real_mode_software_breakpoints`` the same for real mode (True only for
    "debug-exit").  ``step_skips_write_exits``: a single step over an instruction that exits
    to user space for a write (``out``, an MMIO write) is not reported, the next instruction
    runs too (kvm_pvm).
    """

    backend: str
    single_step: bool
    hardware_breakpoints: bool
    write_watchpoints: bool
    software_breakpoints: str
    real_mode_software_breakpoints: bool
    user_single_step: bool
    user_hardware_breakpoints: bool
    step_skips_write_exits: bool
    translate: bool
    step_runs_through_hlt: bool = False

    @property
    def guards_steps(self) -> bool:
        """Whether a step over OUT or HLT is made with a breakpoint after it instead."""
        return self.step_skips_write_exits or self.step_runs_through_hlt

    def breakpoint_route(self, mode: str) -> str:
        """How a gdb software breakpoint (``Z0``) is made for code running in ``mode``
        ("real", "protected", "long", "user"): "int3" (the byte is replaced), "hardware" (a
        debug register), "step" (single-stepping to the address) or "none"."""
        if mode == "user":
            if self.software_breakpoints == "debug-exit":
                return "int3"
            return "hardware" if self.user_hardware_breakpoints else "none"
        if mode == "real":
            if self.real_mode_software_breakpoints:
                return "int3"
        elif self.software_breakpoints != "none":
            return "int3"
        if self.hardware_breakpoints:
            return "hardware"
        return "step" if self.single_step else "none"

    def watchpoint_route(self, access: str, mode: str) -> str:
        """How a watchpoint on ``access`` ("write", "read", "access") is made: "hardware",
        "step" (single-step and compare the value: writes only) or "none"."""
        user = mode == "user"
        if self.write_watchpoints and not (user and not self.user_hardware_breakpoints):
            return "hardware"
        if access == "write" and (self.user_single_step if user else self.single_step):
            return "step"
        return "none"

    def report(self) -> str:
        """What ``pyhv doctor`` prints."""
        def yes(flag: bool) -> str:
            return "yes" if flag else "NO"

        sw = {"debug-exit": "int3 reported by KVM",
              "emulation-failure": "int3, reported as an emulation failure (pyhv handles it)",
              "none": "NOT reported"}[self.software_breakpoints]
        watch = ("hardware (debug registers)" if self.write_watchpoints else
                 "emulated by single-stepping and comparing (write only; read/access "
                 "watchpoints unavailable)" if self.single_step else "unavailable")
        lines = [
            f"guest debugging (pyhv.gdb) on {self.backend}:",
            f"  single step (ring 0): {yes(self.single_step)}; at CPL3: "
            f"{yes(self.user_single_step)}",
            f"  hardware breakpoints (ring 0): {yes(self.hardware_breakpoints)}; at CPL3: "
            f"{yes(self.user_hardware_breakpoints)}",
            f"  software breakpoints: {sw}; real mode: "
            + ("int3" if self.real_mode_software_breakpoints else
               "NO: gdb break uses a debug register"),
            f"  gdb break (Z0) in long/protected/real mode: {self.breakpoint_route('long')}/"
            f"{self.breakpoint_route('protected')}/{self.breakpoint_route('real')}",
            f"  watchpoints: {watch}",
            f"  KVM_TRANSLATE: {'yes' if self.translate else 'NO: page tables walked in Python'}",
        ]
        if self.step_skips_write_exits:
            lines.append("  quirk: a step over OUT or an MMIO write also runs the next "
                         "instruction (pyhv puts a breakpoint after an OUT instead)")
        if self.step_runs_through_hlt:
            lines.append("  quirk: a stepped HLT does not halt (pyhv puts a breakpoint after "
                         "it instead)")
        return "\n".join(lines)


def debug_support(hypervisor: hv.Hypervisor | None = None) -> DebugSupport:
    """Probe (once per hypervisor handle) what guest debugging delivers here."""
    h = hypervisor if hypervisor is not None else hv.default()
    result: DebugSupport = h.memo(("gdb", "debug-support"), lambda: _probe(h))
    return result


def _run(h: hv.Hypervisor, code: bytes, mode: str, setup: dict[str, object],
         steps: int = 1) -> list[exits.Exit]:
    """Run ``code`` with guest debug ``setup`` and return its first ``steps`` exits."""
    seen: list[exits.Exit] = []
    entry = _USER if mode == "user" else _CODE
    quiet = logging.getLogger("pyhv")
    level = quiet.level
    quiet.setLevel(logging.ERROR)            # the probes poison partitions on purpose
    try:
        with Partition(memory="4M", hypervisor=h) as part:
            _run_in(part, entry, code, mode, setup, steps, seen)
    finally:
        quiet.setLevel(level)
    return seen


def _run_in(part: Partition, entry: int, code: bytes, mode: str, setup: dict[str, object],
            steps: int, seen: list[exits.Exit]) -> None:
    part.memory.write(entry, code)
    # real mode: an int3 that reaches the guest goes through IVT entry 3 to the final hlt
    if mode == "real":
        part.memory.write(3 * 4, (entry + len(code) - 1).to_bytes(2, "little") + b"\0\0")
    cpu = part.create_vcpu(mode=mode, entry=entry)
    cpu.set_guest_debug(**setup)       # type: ignore[arg-type]
    for _ in range(steps):
        try:
            exit = cpu.run(timeout=0.5)
        except HypervisorError:
            return
        seen.append(exit)
        if exit.fault or isinstance(exit, (exits.Halt, exits.Syscall)):
            return


def _probe(h: hv.Hypervisor) -> DebugSupport:
    nops = b"\x90\x90\x90\xf4"                                  # nop; nop; nop; hlt
    step = _run(h, nops, "long", {"single_step": True})
    single_step = bool(step) and isinstance(step[0], exits.Debug) and step[0].pc == _CODE + 1
    bp = _run(h, nops, "long", {"hardware": [HardwareBreakpoint(_CODE + 2)]})
    hardware = bool(bp) and isinstance(bp[0], exits.Debug) and bp[0].pc == _CODE + 2
    # movl $1, 0x3000 ; hlt
    store = bytes.fromhex("c7 04 25 00 30 00 00 01 00 00 00 f4")
    watch = _run(h, store, "long", {"hardware": [HardwareBreakpoint(_DATA, "write", 4)]})
    watchpoints = bool(watch) and isinstance(watch[0], exits.Debug) and bool(watch[0].hits)
    sw = _run(h, b"\x90\xcc\x90\xf4", "long", {"software_breakpoints": True})
    software = "none"
    if sw and isinstance(sw[0], exits.Debug) and sw[0].exception == 3:
        software = "debug-exit"
    elif sw and isinstance(sw[0], exits.InternalError) and sw[0].rip == _CODE + 1:
        software = "emulation-failure"
    real = _run(h, b"\x90\xcc\x90\xf4", "real", {"software_breakpoints": True})
    real_sw = bool(real) and isinstance(real[0], exits.Debug) and real[0].exception == 3
    # user mode: nop; nop; mov $60, %eax; syscall
    user_code = bytes.fromhex("90 90 b8 3c 00 00 00 0f 05")
    ustep = _run(h, user_code, "user", {"single_step": True})
    user_step = bool(ustep) and isinstance(ustep[0], exits.Debug) and ustep[0].pc == _USER + 1
    ubp = _run(h, user_code, "user", {"hardware": [HardwareBreakpoint(_USER + 1)]})
    user_bp = bool(ubp) and isinstance(ubp[0], exits.Debug) and ubp[0].pc == _USER + 1
    # out %al, $0x80 ; nop ; nop ; hlt: is the step after the OUT reported at the first nop?
    out = _run(h, bytes.fromhex("e6 80 90 90 f4"), "long", {"single_step": True}, steps=2)
    skips = (len(out) == 2 and isinstance(out[1], exits.Debug) and out[1].pc != _CODE + 2)
    halt = _run(h, b"\xf4\x90\xf4", "long", {"single_step": True})
    through = bool(halt) and isinstance(halt[0], exits.Debug) and halt[0].pc == _CODE + 1
    with Partition(memory="4M", hypervisor=h) as part:
        cpu = part.create_vcpu(mode="long", entry=_CODE)
        try:
            translate = (cpu.translate(0x2345, method="kvm") == 0x2345 ==
                         cpu.translate(0x2345, method="walk"))
        except HypervisorError:
            translate = False
    return DebugSupport(h.backend, single_step, hardware, watchpoints, software, real_sw,
                        user_step, user_bp, skips, translate, through)

