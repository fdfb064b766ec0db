"""pyhv's version (from setuptools-scm at build time)."""

from __future__ import annotations

try:
    from ._version import version as __version__
except ImportError:  # pragma: no cover - running from a tree that was never built
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
