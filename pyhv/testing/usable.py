"""Whether guests written in C can be built and run here, and why not (for test skips).

>>> from pyhv.testing import guest_usable
>>> guest_usable(device="/nonexistent/kvm")[0]
False
"""

from __future__ import annotations

from ..core.hypervisor import DEFAULT_DEVICE, Hypervisor
from ..errors import HypervisorUnavailable
from .errors import ToolchainError


def guest_usable(device: str = DEFAULT_DEVICE) -> tuple[bool, str]:
    """(True, "") when gcc is installed and ``device`` (KVM) can be opened; else (False,
    what is missing and what to do)."""
    from .build import compiler
    try:
        compiler()
    except ToolchainError as exc:
        return False, str(exc)
    try:
        Hypervisor(device).close()
    except HypervisorUnavailable as exc:
        return False, f"KVM is not usable: {exc.strerror}"
    return True, ""
