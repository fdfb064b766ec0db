"""Machines built from pyhv's parts: :class:`PC`, QEMU's ``pc`` for ``-kernel`` guests."""

from .pc import PC

__all__ = ["PC"]
