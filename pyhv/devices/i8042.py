"""An i8042 keyboard controller, enough for guests to probe it and to reset the machine.

Ports 0x60 (data) and 0x64 (status/command).  Command 0xFE (pulse the reset line), or
command 0xD1 followed by an output-port byte with bit 0 clear, ends the run with
:class:`pyhv.exits.Reset`.  The output port reads back (command 0xD0) as last written; it
starts as 0x03 (reset line high, A20 on).  KVM never masks address line 20, so the A20 bit
is only stored.  No keyboard or mouse is attached: keyboard commands are acknowledged, and
commands 0xD2/0xD3 echo their byte as if from the keyboard/mouse (status bit 5 tells which).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..core.buses import EndRun
from ..exits import Reset
from .base import Device

if TYPE_CHECKING:
    from .host import DeviceHost

DATA, STATUS = 0x60, 0x64
STATUS_OUTPUT_FULL, STATUS_SYSTEM, STATUS_COMMAND, STATUS_AUX = 0x01, 0x04, 0x08, 0x20
CB_KBD_DISABLED, CB_AUX_DISABLED = 0x10, 0x20        # command-byte bits 4 and 5
OUTPUT_PORT_RESET = 0x03                             # reset line high (bit 0), A20 on (bit 1)
# commands that set or clear a command-byte bit: 0xA7/0xA8 the mouse port, 0xAD/0xAE the
# keyboard's
INTERFACE_COMMANDS = {0xA7: (CB_AUX_DISABLED, True), 0xA8: (CB_AUX_DISABLED, False),
                      0xAD: (CB_KBD_DISABLED, True), 0xAE: (CB_KBD_DISABLED, False)}


class I8042(Device):
    """The keyboard controller at ports 0x60/0x64 (see the module docstring)."""

    name = "i8042"

    def __init__(self) -> None:
        self.output: list[int] = []       # bytes waiting in the output buffer
        self.output_aux: list[bool] = []  # for each, whether it came from the mouse port
        self.command_byte = 0x45          # keyboard interrupt, system flag, translation
        self.output_port = OUTPUT_PORT_RESET
        self.pending: int | None = None   # a command waiting for its data byte
        self.last_was_command = False

    def attach(self, partition: DeviceHost) -> None:
        super().attach(partition)
        partition.add_io_handler(DATA, read=self._read_data, write=self._write_data)
        partition.add_io_handler(STATUS, read=self._read_status, write=self._write_command)

    def _queue(self, value: int, aux: bool = False) -> None:
        self.output.append(value & 0xFF)
        self.output_aux.append(aux)

    def _read_status(self, port: int, size: int) -> int:
        status = STATUS_SYSTEM | (STATUS_COMMAND if self.last_was_command else 0)
        if self.output:
            status |= STATUS_OUTPUT_FULL | (STATUS_AUX if self.output_aux[0] else 0)
        return status

    def _read_data(self, port: int, size: int) -> int:
        if not self.output:
            return 0
        self.output_aux.pop(0)
        return self.output.pop(0)

    def _reset(self, how: str) -> None:
        raise EndRun(Reset(source=f"i8042 {how}"))

    def _write_command(self, port: int, size: int, value: int) -> None:
        command = value & 0xFF
        self.last_was_command = True
        if 0xF0 <= command <= 0xFF and not command & 1:
            self._reset(f"command {command:#04x}")     # pulse output-port bit 0: reset
        elif command == 0x20:
            self._queue(self.command_byte)
        elif command in (0x60, 0xD1, 0xD2, 0xD3, 0xD4):
            self.pending = command
        elif command == 0xAA:
            self._queue(0x55)                          # controller self-test passed
        elif command in (0xAB, 0xA9):
            self._queue(0x00)                          # interface tests passed
        elif command == 0xD0:
            self._queue(self.output_port)
        elif command in INTERFACE_COMMANDS:
            bit, disabled = INTERFACE_COMMANDS[command]
            self.command_byte = self.command_byte | bit if disabled \
                else self.command_byte & ~bit

    def _write_data(self, port: int, size: int, value: int) -> None:
        value &= 0xFF
        self.last_was_command = False
        command, self.pending = self.pending, None
        if command == 0x60:
            self.command_byte = value
        elif command == 0xD1:
            self.output_port = value
            if not value & 1:
                self._reset("output port bit 0 cleared")
        elif command in (0xD2, 0xD3):
            self._queue(value, aux=command == 0xD3)    # echo, as if from the device
        elif command is None:
            self._queue(0xFA)                          # keyboard command: acknowledged

    def get_state(self) -> dict[str, Any]:
        return {"output": list(self.output), "output_aux": list(self.output_aux),
                "command_byte": self.command_byte, "output_port": self.output_port,
                "pending": self.pending, "last_was_command": self.last_was_command}

    def set_state(self, state: dict[str, Any]) -> None:
        self.output = [int(b) & 0xFF for b in state["output"]]
        aux = [bool(a) for a in state.get("output_aux", ())]
        self.output_aux = (aux + [False] * len(self.output))[:len(self.output)]
        self.command_byte = int(state["command_byte"]) & 0xFF
        self.output_port = int(state.get("output_port", OUTPUT_PORT_RESET)) & 0xFF
        self.pending = None if state["pending"] is None else int(state["pending"])
        self.last_was_command = bool(state["last_was_command"])
