"""Guest exception handlers (``guest_install_handler``), served by the host.

pyhv's ring-0 stub reports every guest exception to the host (user mode, or
``exceptions=True``).  When the guest installed a handler for the vector, the host fills
the vCPU's slot in ``pyhv_ex_slots`` (vector, error code, CR2, the faulting RIP and the RDI
it borrows), points RDI at it and returns from the exception to ``pyhv_exception_entry``,
which saves the interrupted registers, calls the handler and resumes where the handler's
``struct ex_regs`` says.  The same path serves ring 0 and ring 3, and needs no IDT of the
guest's own (kvm_pvm's ring-0 emulator runs it as it is).
"""

from __future__ import annotations

from typing import Any

from .. import exits
from ..core.memory import GuestMemory
from ..errors import HypervisorError
from ..x86.setup import SETUP_MAX_SIZE
from . import layout
from .errors import GuestExceptionError
from .image import GuestImage, first_in_test


class ExceptionEntry:
    """The handlers of ``image`` loaded in ``memory`` (``setup_base``: pyhv's setup region,
    for hints)."""

    def __init__(self, image: GuestImage, memory: GuestMemory, setup_base: int) -> None:
        self.image, self.memory, self.setup_base = image, memory, setup_base
        symbols = image.symbols
        self.handlers = symbols.get("pyhv_handlers", (0, 0))[0]
        self.slots = symbols.get("pyhv_ex_slots", (0, 0))[0]
        self.entry = symbols.get("pyhv_exception_entry", (0, 0))[0]

    def enter(self, exit: exits.GuestException, vcpu: Any, cpu: int,
              output: str) -> GuestExceptionError | None:
        """Send vCPU ``cpu`` (``vcpu``, stopped in pyhv's stub) to the guest's handler for
        ``exit``; or, with none (or nested too deep), the failure to raise."""
        handler = depth = 0
        slot = self.slots + cpu * layout.EX_SLOT_SIZE
        if self.handlers and self.slots and self.entry and \
                0 <= exit.vector < layout.EXCEPTION_VECTORS:
            width = self.image.pointer_size
            handler = int.from_bytes(self.memory.read(self.handlers + exit.vector * width,
                                                      width), "little")
            if handler:
                depth = self.memory.read_u64(slot + layout.EX_SLOT_DEPTH)
        if not handler or depth >= layout.MAX_HANDLER_DEPTH:
            frames = () if exit.rip is None else self.image.backtrace(
                exit.rip, vcpu.read_register("rbp"), self.memory.read,
                self._interrupted_rsp(exit, vcpu))
            where = first_in_test(frames)
            hint = f"raised inside its own handler, {depth} deep" if handler else \
                _hint(exit, self.image.mode, self.setup_base)
            return GuestExceptionError(
                cpu=cpu, vector=exit.vector, name=exit.name, rip=exit.rip,
                error_code=exit.error_code, cr2=exit.cr2, file=where.file if where else None,
                line=where.line if where else 0,
                function=frames[0].function if frames else None, hint=hint, output=output,
                backtrace=frames)
        rip = exit.rip if exit.rip is not None else 0
        self.memory.write(slot, layout.EX_SLOT.pack(exit.vector, exit.error_code or 0,
                                                    exit.cr2 or 0, rip,
                                                    vcpu.read_register("rdi")))
        vcpu.write_registers({"rdi": slot})
        exit.resume_at(self.entry)
        return None


    def _interrupted_rsp(self, exit: exits.GuestException, vcpu: Any) -> int | None:
        """The stack pointer the exception interrupted, from the CPU's exception frame on
        the stub's stack (pyhv.x86.setup): saved in it by a 64-bit frame; just above it in
        a 32-bit frame of the same privilege."""
        width = self.image.pointer_size
        frame: int = vcpu.read_register("rsp") + (width if exit.error_code is not None else 0)
        if width == 4:
            return frame + 3 * width
        try:
            return self.memory.read_u64(frame + 3 * width)
        except HypervisorError:
            return None


def _hint(exit: exits.GuestException, mode: str, setup_base: int) -> str:
    if mode == "user" and exit.vector == 13:
        return "ring-3 code cannot run privileged instructions or port IO: build it with " \
               "mode='long' for ring 0"
    if exit.vector == 14 and exit.cr2 is not None and \
            setup_base <= exit.cr2 < setup_base + SETUP_MAX_SIZE:
        return "that is pyhv's setup region (GDT, page tables), which ring 3 cannot touch"
    if exit.vector == 3:
        return "int3: install a handler for BP_VECTOR to use breakpoints"
    return ""
