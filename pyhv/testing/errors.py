"""What goes wrong in guests written in C, as exceptions the test sees.

A guest assertion or failure is an :class:`AssertionError` (pytest counts it as a failed
test, not an error) and a :class:`pyhv.HypervisorError` (pyhv's one hierarchy).

>>> from pyhv.testing import GuestAssertionError
>>> err = GuestAssertionError(cpu=0, file="test_x.py", line=12, expression="x == 5",
...                           values=(4, 5))
>>> print(err)
test_x.py:12: guest assertion failed on vCPU 0: x == 5
    left:  4 (0x4)
    right: 5 (0x5)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import HypervisorError


class ToolchainError(HypervisorError, RuntimeError):
    """Building a guest failed (the compiler's messages are in the text), or the binutils /
    gcc it needs are missing."""


def _show(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value} ({value:#x})" if value >= 0 else f"{value} (-{-value:#x})"
    return repr(value)


class GuestAssertionError(HypervisorError, AssertionError):
    """A ``GUEST_ASSERT*`` in the guest failed (``GUEST_FAIL`` too: ``expression`` is then
    None).  ``file`` and ``line`` are the guest source's; ``values`` holds both sides of a
    comparison (``GUEST_ASSERT_EQ`` and friends), else None; ``message`` the guest's own
    text; ``output`` what the guest printed before."""

    kind = "guest assertion failed"

    def __init__(self, *, cpu: int, file: str | None, line: int, expression: str | None = None,
                 values: tuple[Any, Any] | None = None, message: str = "",
                 output: str = "", backtrace: Sequence[Any] = ()) -> None:
        self.cpu, self.file, self.line = cpu, file, line
        self.expression, self.values, self.message = expression, values, message
        self.output = output
        self.backtrace = tuple(backtrace)      # SourceLines, innermost first (or empty)
        super().__init__(self.describe())

    @property
    def where(self) -> str:
        """``file:line`` of the guest source, or a placeholder."""
        return f"{self.file}:{self.line}" if self.file else "<guest>"

    def detail(self) -> list[str]:
        """The lines after the first: both values of a comparison."""
        if self.values is None:
            return []
        left, right = self.values
        return [f"    left:  {_show(left)}", f"    right: {_show(right)}"]

    def headline(self) -> str:
        text = f"{self.kind} on vCPU {self.cpu}"
        if self.expression:
            text += f": {self.expression}"
        if self.message:
            text += f": {self.message}"
        return text

    def frames(self) -> list[str]:
        """The guest's call chain, when there is one to show."""
        if len(self.backtrace) < 2:
            return []
        return ["    guest backtrace (innermost first):",
                *(f"      {frame}" for frame in self.backtrace)]

    def describe(self) -> str:
        first = f"{self.where}: {self.headline()}" if self.file else self.headline()
        return "\n".join([first, *self.detail(), *self.frames()])


class GuestFailure(GuestAssertionError):
    """The guest called ``GUEST_FAIL(fmt, ...)``."""

    kind = "guest failure"


class GuestExceptionError(GuestAssertionError):
    """The guest raised a CPU exception it has no handler for (``guest_install_handler``).
    ``vector``, ``name``, ``rip``, ``error_code``, ``cr2`` describe it; ``file``/``line`` and
    ``function`` are where ``rip`` lies in the guest's source, when its debug info says."""

    kind = "unhandled guest exception"

    def __init__(self, *, cpu: int, vector: int, name: str, rip: int | None,
                 error_code: int | None = None, cr2: int | None = None,
                 file: str | None = None, line: int = 0, function: str | None = None,
                 hint: str = "", output: str = "", backtrace: Sequence[Any] = ()) -> None:
        self.vector, self.name, self.rip = vector, name, rip
        self.error_code, self.cr2, self.function, self.hint = error_code, cr2, function, hint
        super().__init__(cpu=cpu, file=file, line=line, output=output, backtrace=backtrace)

    def headline(self) -> str:
        text = f"{self.kind} {self.name} on vCPU {self.cpu}"
        if self.rip is not None:
            text += f" at rip {self.rip:#x}"
        if self.function:
            text += f" in {self.function}()"
        return text

    def detail(self) -> list[str]:
        lines = []
        if self.error_code is not None:
            lines.append(f"    error code: {self.error_code:#x}")
        if self.cr2 is not None:
            lines.append(f"    faulting address (cr2): {self.cr2:#x}")
        if self.hint:
            lines.append(f"    ({self.hint})")
        return lines


class GuestCrash(GuestAssertionError):
    """A vCPU stopped other than by ``GUEST_DONE`` or a failed assertion: a triple fault, an
    instruction KVM could not run, an exit nothing handled, a timeout..., or it broke the
    ucall protocol.  ``exit`` is the :class:`pyhv.exits.Exit` it ended on (if any)."""

    kind = "guest crashed"

    def __init__(self, *, cpu: int, reason: str, exit: Any = None, file: str | None = None,
                 line: int = 0, output: str = "", backtrace: Sequence[Any] = ()) -> None:
        self.reason, self.exit = reason, exit
        super().__init__(cpu=cpu, file=file, line=line, output=output, backtrace=backtrace)

    def headline(self) -> str:
        return f"{self.kind} on vCPU {self.cpu}: {self.reason}"


class GuestProtocolError(GuestCrash):
    """The guest broke the ucall protocol (a doorbell with another vCPU's index, an unknown
    command, a string at an address outside its memory): its memory is corrupt, or it is
    hostile.  Nothing of the host was touched."""

    kind = "guest broke the ucall protocol"
