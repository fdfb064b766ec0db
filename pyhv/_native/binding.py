"""The compiled C core, loaded once, with a clear message when it was never built.

Only the modules of :mod:`pyhv._native` import this: the rest of pyhv talks to KVM through
their typed wrappers (a test in the suite enforces it).
"""

from __future__ import annotations

try:
    from .._core import ffi, lib
except ImportError as exc:  # pragma: no cover - only in a broken install
    raise ImportError(
        f"pyhv's C core (pyhv._core) cannot be loaded ({exc}); if it was never built, install "
        "pyhv with `pip install .` (or `pip install -e .`) so that setuptools compiles csrc/"
    ) from exc

KICK_SIGNAL = lib.pyhv_init()
if KICK_SIGNAL < 0:  # pragma: no cover
    raise ImportError(f"pyhv could not install its vCPU kick signal (errno {-KICK_SIGNAL})")

__all__ = ["KICK_SIGNAL", "ffi", "lib"]
