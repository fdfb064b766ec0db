"""The host half of the ucall channel: a guest's records in its memory, read with bounds
(the guest is not trusted), and what a failure record says.

The records lie at fixed addresses of the image (``pyhv_ucalls``, one per vCPU), checked at
boot to lie in one RAM slot; everything in them is the guest's word: lengths are checked
against the record, strings are read only inside guest memory and at most
:data:`STRING_LIMIT` bytes.
"""

from __future__ import annotations

import math
import struct
from typing import Any

from ..core.memory import GuestMemory
from ..errors import HypervisorError, ImageFormatError
from . import layout
from .errors import GuestAssertionError, GuestFailure, GuestProtocolError
from .image import GuestImage

__all__ = ["COMMANDS", "STRING_LIMIT", "UcallChannel", "decode_value"]

STRING_LIMIT = 512              # longest file name / expression read from the guest
# written at the bottom of every vCPU's stack: a stack that grew past its end overwrites it
STACK_GUARD = bytes(range(0xA0, 0xE0))
COMMANDS = frozenset(c.value for c in layout.Command if c != layout.Command.NONE)
_REPLY = struct.Struct("<Q")


class UcallChannel:
    """The records of ``cpus`` vCPUs of ``image`` loaded in ``memory``."""

    def __init__(self, memory: GuestMemory, image: GuestImage, cpus: int) -> None:
        self.memory = memory
        self.image = image
        records = [image.ucall_record(i) for i in range(cpus)]
        first, end = records[0], records[-1] + layout.UCALL_SIZE
        slot = memory.slot_at(first)
        if slot is None or end > slot.end:
            raise ImageFormatError(f"{image.path}: its ucall records [{first:#x}, {end:#x}) "
                                   "do not lie in one memory slot")
        self.slot = slot
        self.offsets = [r - slot.gpa for r in records]
        self.strings: dict[int, str] = {}
        stacks = image.symbol("pyhv_stacks")
        guards = [stacks + i * layout.STACK_SIZE for i in range(cpus)]
        if memory.slot_at(stacks) is not slot or guards[-1] + len(STACK_GUARD) > slot.end:
            raise ImageFormatError(f"{image.path}: its stacks do not lie in the slot of its "
                                   "ucall records")
        self.guards = [g - slot.gpa for g in guards]
        for offset in self.guards:
            slot.write(offset, memoryview(STACK_GUARD))

    def stack_intact(self, cpu: int) -> bool:
        """Whether vCPU ``cpu``'s stack guard is still there (a best effort: a frame that
        skips over it unwritten goes unseen)."""
        return self.slot.read(self.guards[cpu], len(STACK_GUARD)) == STACK_GUARD

    def write_info(self, cpus: int, memory_size: int) -> None:
        """Tell the guest how many vCPUs run it and how much RAM it has (after checking
        that its library speaks this host's version)."""
        at = self.image.symbol("pyhv_guest_info")
        magic, version, *_ = layout.GUEST_INFO.unpack(self.memory.read(at,
                                                                       layout.GUEST_INFO.size))
        if magic != layout.GUEST_MAGIC or version != layout.GUEST_VERSION:
            raise HypervisorError(f"{self.image.path}: its guest library speaks version "
                                  f"{version if magic == layout.GUEST_MAGIC else '?'}, this "
                                  f"pyhv {layout.GUEST_VERSION}: build it again")
        self.memory.write(at, layout.GUEST_INFO.pack(magic, version, cpus, memory_size,
                                                     layout.MODE_NUMBERS[self.image.mode]))

    def header(self, cpu: int) -> tuple[int, ...]:
        """vCPU ``cpu``'s record: (command, value, value2, reply, file, line, expr, kinds,
        length, spare)."""
        return layout.UCALL_HEADER.unpack(self.slot.read(self.offsets[cpu],
                                                         layout.UCALL_HEADER.size))

    def reply(self, cpu: int, value: int) -> None:
        """What the guest's ``GUEST_SYNC`` returns."""
        self.slot.write(self.offsets[cpu] + layout.UCALL_REPLY, memoryview(_REPLY.pack(value)))

    def text(self, cpu: int, length: int) -> str:
        """The record's text (``length`` is the guest's word: checked)."""
        if not 0 <= length <= layout.UCALL_TEXT:
            raise GuestProtocolError(cpu=cpu, reason=f"a ucall with {length} bytes of text "
                                                     f"(at most {layout.UCALL_TEXT})")
        return self.slot.read(self.offsets[cpu] + layout.UCALL_TEXT_OFFSET,
                              length).decode("utf-8", "replace")

    def string(self, address: int) -> str | None:
        """A NUL-terminated string the guest points at (bounded, never outside memory)."""
        if address == 0:
            return None
        known = self.strings.get(address)
        if known is not None:
            return known
        slot = self.memory.slot_at(address)
        if slot is None:
            return f"<string at {address:#x}, outside guest memory>"
        data = self.memory.read(address, min(STRING_LIMIT, slot.end - address))
        text = data.split(b"\0", 1)[0].decode("utf-8", "replace")
        self.strings[address] = text
        return text

    def check_command(self, cpu: int, command: int) -> None:
        if command not in COMMANDS:
            raise GuestProtocolError(cpu=cpu, reason=f"unknown ucall command {command}")

    def failure(self, cpu: int, header: tuple[int, ...], text: str,
                output: str = "") -> GuestAssertionError:
        """The exception an ASSERT or FAIL record stands for."""
        command, value, value2, _reply, file, line, expr, kinds, *_ = header
        if command == layout.Command.FAIL:
            return GuestFailure(cpu=cpu, file=self.string(file), line=line, message=text,
                                output=output)
        values = None
        if kinds & layout.COMPARISON:
            values = (decode_value(value, kinds & 0xFFFF),
                      decode_value(value2, kinds >> 16 & 0x7FFF))
        return GuestAssertionError(cpu=cpu, file=self.string(file), line=line,
                                   expression=self.string(expr), values=values, message=text,
                                   output=output)


def decode_value(bits: int, kind: int) -> Any:
    """A compared value from its raw bits and ``kind | size << 8`` (``pyhv_describe``).

    >>> decode_value(0xFF, layout.ValueKind.SIGNED | 1 << 8), decode_value(0xFF, 1 << 8)
    (-1, 255)
    """
    size = kind >> 8 & 0xFF
    kind &= 0xFF
    if not 1 <= size <= 8:
        size = 8
    bits &= (1 << (8 * size)) - 1
    if kind == layout.ValueKind.SIGNED and bits >> (8 * size - 1):
        return bits - (1 << (8 * size))
    if kind == layout.ValueKind.FLOAT and size in (4, 8):
        value = struct.unpack("<f" if size == 4 else "<d", bits.to_bytes(size, "little"))[0]
        return value if not math.isnan(value) else float("nan")
    return bits
