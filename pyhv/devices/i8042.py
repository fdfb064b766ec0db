"""An i8042 keyboard controller, enough for guests to probe it and to reset the machine.

Ports 0x60 (data) and 0x64 (status/command).  Command 0xFE (pulse the reset line), or
command 0xD1 followed by an output-port byte with bit 0 clear, ends the run with
:class:`pyhv.exits.Reset`.  No keyboard is attached: keyboard commands are acknowledged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..dispatch import EndRun
from ..exits import Reset
from . import Device

if TYPE_CHECKING:
    from ..partition import Partition

DATA, STATUS = 0x60, 0x64
STATUS_OUTPUT_FULL, STATUS_SYSTEM, STATUS_COMMAND = 0x01, 0x04, 0x08


class I8042(Device):
    """The keyboard controller at ports 0x60/0x64 (see the module docstring)."""

    name = "i8042"

    def __init__(self) -> None:
        self.output: list[int] = []       # bytes waiting in the output buffer
        self.command_byte = 0x45          # keyboard interrupt, system flag, translation
        self.pending: int | None = None   # a command waiting for its data byte
        self.last_was_command = False

    def attach(self, partition: Partition) -> None:
        super().attach(partition)
        partition.add_io_handler(DATA, read=self._read_data, write=self._write_data)
        partition.add_io_handler(STATUS, read=self._read_status, write=self._write_command)

    def _read_status(self, port: int, size: int) -> int:
        status = STATUS_SYSTEM | (STATUS_COMMAND if self.last_was_command else 0)
        return status | (STATUS_OUTPUT_FULL if self.output else 0)

    def _read_data(self, port: int, size: int) -> int:
        return self.output.pop(0) if self.output else 0

    def _reset(self, how: str) -> None:
        raise EndRun(Reset(source=f"i8042 {how}"))

    def _write_command(self, port: int, size: int, value: int) -> None:
        command = value & 0xFF
        self.last_was_command = True
        if command == 0xFE or (0xF0 <= command <= 0xFF and not command & 1):
            self._reset(f"command {command:#04x}")     # pulse output-port bit 0: reset
        elif command == 0x20:
            self.output.append(self.command_byte)
        elif command in (0x60, 0xD1, 0xD2, 0xD3, 0xD4):
            self.pending = command
        elif command == 0xAA:
            self.output.append(0x55)                   # controller self-test passed
        elif command in (0xAB, 0xA9):
            self.output.append(0x00)                   # interface tests passed
        elif command == 0xD0:
            self.output.append(0x01)                   # output port: reset line high

    def _write_data(self, port: int, size: int, value: int) -> None:
        value &= 0xFF
        self.last_was_command = False
        command, self.pending = self.pending, None
        if command == 0x60:
            self.command_byte = value
        elif command == 0xD1:
            if not value & 1:
                self._reset("output port bit 0 cleared")
        elif command in (0xD2, 0xD3):
            self.output.append(value)                  # echo, as if from the device
        elif command is None:
            self.output.append(0xFA)                   # keyboard command: acknowledged

    def get_state(self) -> dict[str, Any]:
        return {"output": list(self.output), "command_byte": self.command_byte,
                "pending": self.pending, "last_was_command": self.last_was_command}

    def set_state(self, state: dict[str, Any]) -> None:
        self.output = [int(b) & 0xFF for b in state["output"]]
        self.command_byte = int(state["command_byte"]) & 0xFF
        self.pending = None if state["pending"] is None else int(state["pending"])
        self.last_was_command = bool(state["last_was_command"])
