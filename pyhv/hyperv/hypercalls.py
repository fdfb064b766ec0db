"""The hypercall ABI: the page pyhv writes, the control word, the status in RAX, and the
:class:`Hypercall` a Python handler gets.

The guest's ``call`` into the hypercall page exits to pyhv as a port write: on kvm_pvm
``vmcall`` at CPL0 never leaves the kernel, and on any KVM without its own Hyper-V emulation
``vmcall`` is KVM's hypercall, not the TLFS's.  The page's code writes to port ``PORT`` from
64-bit code and to ``PORT + 1`` from 32-bit code (one byte sequence that decodes differently
in the two modes), so pyhv knows the calling convention without reading the segment
registers; it keeps every register but the result, RAX (EDX:EAX in 32-bit code).

>>> from pyhv.hyperv.hypercalls import decode_control, page_code
>>> code = page_code(0xE2)
>>> code[:3].hex(), code[11:16].hex(), code[0x4C:].hex()
('554cbd', '40e6e25dc3', '5dc3')
>>> call = decode_control(0x0000_0002_0001_005D)      # HvSignalEvent, fast, rep count 2
>>> call.code, call.fast, call.rep_count
(93, True, 2)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..core.memory import PAGE_SIZE, GuestMemory
from ..errors import GuestMemoryError, InvalidArgument
from . import tlfs

HYPERCALL_PORT = 0xE2          # the page writes here from 64-bit code, PORT + 1 from 32-bit
INPUT_ALIGNMENT = 8


def page_code(port: int) -> bytes:
    """The hypercall page's code.  64-bit::

        55                push %rbp
        4c bd <imm64>     mov $imm64, %rbp
        40 e6 PORT        rex out %al, $PORT    (a bare REX prefix: no effect)
        5d c3             pop %rbp; ret

    and the same bytes in 32-bit code::

        55                push %ebp
        4c                dec %esp
        bd <imm32>        mov $imm32, %ebp
        44                inc %esp           (the imm64's upper half, from here)
        e6 PORT+1         out %al, $PORT+1
        eb 40             jmp +0x40          (the REX prefix above is the displacement)
        5d c3             pop %ebp; ret      (at offset 0x4C)
    """
    if not 0 <= port <= 0xFE:
        raise InvalidArgument(f"the hypercall ports {port:#x}, {port + 1:#x} must fit an 8-bit "
                              "immediate")
    code = bytearray(0x4E)
    code[0:3] = b"\x55\x4c\xbd"
    code[3:7] = bytes(4)                                   # 32-bit: the imm32 for %ebp
    code[7:11] = bytes((0x44, 0xE6, port + 1, 0xEB))        # 32-bit path, hidden in the imm64
    code[11:16] = bytes((0x40, 0xE6, port, 0x5D, 0xC3))     # 0x40: the jmp's displacement
    code[0x4C:0x4E] = b"\x5d\xc3"                          # 12 + 0x40 = 0x4C
    return bytes(code)


@dataclass(frozen=True)
class Control:
    """A decoded hypercall control word."""

    code: int
    fast: bool
    header_size: int          # the variable header, in bytes
    rep_count: int
    rep_start: int
    reserved: int             # bits that must be zero


def decode_control(control: int) -> Control:
    return Control(control & tlfs.CALL_CODE_MASK, bool(control & tlfs.CALL_FAST),
                   8 * ((control >> tlfs.CALL_HEADER_SIZE_SHIFT) & tlfs.CALL_HEADER_SIZE_MASK),
                   (control >> tlfs.CALL_REP_COUNT_SHIFT) & tlfs.CALL_REP_MASK,
                   (control >> tlfs.CALL_REP_START_SHIFT) & tlfs.CALL_REP_MASK,
                   control & tlfs.CALL_RESERVED)


def result(status: int, reps_completed: int = 0) -> int:
    """RAX after a hypercall: the status and the reps completed."""
    return (status & 0xFFFF) | (reps_completed & tlfs.CALL_REP_MASK) << tlfs.REPS_COMPLETED_SHIFT


class HypercallFailed(Exception):  # noqa: N818 - carries a TLFS status, not a pyhv error
    """Raise from a hypercall handler to fail the call with a TLFS ``status`` (and
    ``reps_completed`` for a rep call that stopped part way)."""

    def __init__(self, status: int, reps_completed: int = 0) -> None:
        super().__init__(tlfs.status_name(status))
        self.status = status
        self.reps_completed = reps_completed


@dataclass
class Hypercall:
    """One hypercall, as a handler registered with :meth:`HyperV.on_hypercall` gets it.

    ``input_gpa``/``output_gpa`` are the memory blocks of a memory-based call; a fast call
    passes its input in registers instead (``fast_input``: RDX, R8 in long mode).  Use
    :meth:`read_input` and :meth:`write_output`, which check the guest's addresses.
    """

    code: int
    fast: bool
    rep_count: int
    rep_start: int
    vp_index: int
    input_gpa: int
    output_gpa: int
    fast_input: tuple[int, int]
    memory: GuestMemory = field(repr=False)
    header_size: int = 0

    def read_input(self, size: int) -> bytes:
        """``size`` bytes of the input block (a fast call's registers, as bytes)."""
        if self.fast:
            data = b"".join(r.to_bytes(8, "little") for r in self.fast_input)
            if size > len(data):
                raise HypercallFailed(tlfs.HV_STATUS_INVALID_HYPERCALL_INPUT)
            return data[:size]
        return _guest_block(self.memory, self.input_gpa, size)

    def write_output(self, data: bytes) -> None:
        """Write the output block (memory-based calls only)."""
        if self.fast:
            raise HypercallFailed(tlfs.HV_STATUS_INVALID_HYPERCALL_INPUT)
        _check_block(self.memory, self.output_gpa, len(data))
        self.memory.write(self.output_gpa, data)


def _check_block(memory: GuestMemory, gpa: int, size: int) -> None:
    """A hypercall's memory block: 8-byte aligned, within one page, guest RAM."""
    if gpa % INPUT_ALIGNMENT:
        raise HypercallFailed(tlfs.HV_STATUS_INVALID_ALIGNMENT)
    if size > PAGE_SIZE or gpa % PAGE_SIZE + size > PAGE_SIZE:
        raise HypercallFailed(tlfs.HV_STATUS_INVALID_ALIGNMENT)   # it may not cross a page
    slot = memory.slot_at(gpa)
    if slot is None or slot.readonly:
        raise HypercallFailed(tlfs.HV_STATUS_INVALID_PARAMETER)


def _guest_block(memory: GuestMemory, gpa: int, size: int) -> bytes:
    _check_block(memory, gpa, size)
    try:
        return memory.read(gpa, size)
    except GuestMemoryError:
        raise HypercallFailed(tlfs.HV_STATUS_INVALID_PARAMETER) from None


HypercallHandler = Callable[[Hypercall], Any]


def run_handler(handler: HypercallHandler, call: Hypercall) -> tuple[int, int]:
    """Call ``handler``; (status, reps completed) from what it returns: None or 0 is
    success (all reps done), an int a status, a (status, reps) pair both; a raised
    :class:`HypercallFailed` its status."""
    try:
        outcome = handler(call)
    except HypercallFailed as failed:
        return failed.status, failed.reps_completed
    if outcome is None:
        return tlfs.HV_STATUS_SUCCESS, call.rep_count
    if isinstance(outcome, tuple) and len(outcome) == 2:
        status, reps = outcome
    else:
        status, reps = outcome, call.rep_count
    if isinstance(status, bool) or not isinstance(status, int) or not 0 <= status <= 0xFFFF:
        raise InvalidArgument(f"hypercall {call.code:#x}: the handler returned {outcome!r}, "
                              "not a status (0..0xffff) or (status, reps)")
    return status, int(reps)
