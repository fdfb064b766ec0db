"""pyhv's exceptions: one hierarchy under :class:`HypervisorError` (this module imports no
other part of pyhv: everything may raise them).

Errors that come from the kernel carry its errno and also subclass :class:`OSError`; errors
about bad arguments also subclass :class:`ValueError`, so ``except ValueError`` keeps working
for code that does not know pyhv.
"""

from __future__ import annotations

import os
from typing import Any


class HypervisorError(Exception):
    """Base class of every error pyhv raises."""


class KvmError(HypervisorError, OSError):
    """A KVM call failed; ``errno`` and ``strerror`` say how.

    >>> err = KvmError(12, "KVM_CREATE_VM")
    >>> err.errno, isinstance(err, OSError)
    (12, True)
    """

    def __init__(self, errno: int, operation: str, hint: str = "") -> None:
        message = f"{operation}: {os.strerror(errno)}"
        if hint:
            message += f" ({hint})"
        super().__init__(errno, message)
        self.operation = operation

    def __str__(self) -> str:
        return f"[Errno {self.errno}] {self.strerror}"


class HypervisorUnavailable(KvmError):
    """/dev/kvm cannot be used; the message says what to do about it."""


class MissingCapability(HypervisorError):
    """The kernel's KVM lacks a capability that the requested feature needs."""

    def __init__(self, capability: str, needed_for: str) -> None:
        super().__init__(f"KVM lacks {capability}, which pyhv needs for {needed_for}")
        self.capability = capability


class InvalidArgument(HypervisorError, ValueError):
    """An argument was refused before any kernel call was made."""


class OverlapError(InvalidArgument):
    """A new range (memory slot, port or MMIO handler) would overlap an existing one."""


class SlotOverlapError(OverlapError):
    """A new memory slot would overlap an existing one."""


class GuestMemoryError(HypervisorError, ValueError):
    """A guest-physical address range is not backed by any memory slot."""

    def __init__(self, gpa: int, size: int, detail: str = "") -> None:
        end = gpa + size
        message = f"guest memory [{gpa:#x}, {end:#x}) is outside every memory slot"
        super().__init__(message + (f": {detail}" if detail else ""))
        self.gpa = gpa
        self.size = size


class ImageFormatError(HypervisorError, ValueError):
    """A guest image is corrupt, truncated, of the wrong format, or does not fit the
    partition; nothing of it was written to guest memory."""


class ClosedError(HypervisorError, ValueError):
    """The partition or vCPU was closed."""


class StateError(HypervisorError):
    """The operation makes no sense in the partition's current state (see
    :class:`pyhv.PartitionState`)."""


class PoisonedError(StateError):
    """The partition is poisoned (a fault, a handler that raised, an exit nobody handled):
    only :meth:`pyhv.Partition.reset` or :meth:`pyhv.Partition.restore` clears it."""

    def __init__(self, reason: str, exit: Any = None) -> None:
        super().__init__(f"partition is poisoned ({reason}): reset() or restore() it first")
        self.reason = reason
        self.exit = exit


class StaleExitError(HypervisorError):
    """An exit was completed after its vCPU had already run again (or was not an IN/read)."""


class HandlerError(HypervisorError, TypeError):
    """A port or MMIO handler answered with a value that cannot be given to the guest."""


class Timeout(HypervisorError, TimeoutError):
    """A run reached its timeout; carries the vCPU and its registers at that point.

    Attributes: ``vcpu``, ``regs`` (a :class:`pyhv.Regs` snapshot), ``timeout`` (seconds),
    ``exits_handled`` (exits handled before the timeout, for handler-driven runs).
    """

    def __init__(self, vcpu: Any, regs: Any, timeout: float, exits_handled: int = 0) -> None:
        super().__init__(
            f"vCPU {vcpu.id} still running after {timeout:g} s "
            f"(rip={regs.rip:#x}, {exits_handled} exits handled)"
        )
        self.vcpu = vcpu
        self.regs = regs
        self.timeout = timeout
        self.exits_handled = exits_handled


class UnhandledExit(HypervisorError):
    """Raised by :meth:`pyhv.RunResult.check` when a run ended on an exit nobody handled."""

    def __init__(self, exit: Any) -> None:
        super().__init__(f"run ended on an unhandled exit: {exit!r}")
        self.exit = exit


def check_rc(rc: int, operation: str, hint: str = "") -> int:
    """Turn the C core's ``0 / -errno`` convention into a return value or a :class:`KvmError`."""
    if rc < 0:
        raise KvmError(-rc, operation, hint)
    return rc
