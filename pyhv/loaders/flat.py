"""Flat binaries: the bytes at an address, entered there in the mode asked for."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import InvalidArgument
from ..x86.modes import MODES
from .image import BootImage
from .layout import check_fits

if TYPE_CHECKING:
    from .image import Partition


def load(partition: Partition, data: bytes, address: int, mode: str) -> BootImage:
    if mode not in MODES:
        raise InvalidArgument(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    check_fits(partition, "flat image", address, len(data))
    partition.memory.write(address, data)
    return BootImage("flat", mode, address, regions=[(address, len(data), "image")])
