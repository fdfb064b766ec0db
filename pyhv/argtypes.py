"""Argument types the command line shares (``pyhv stress``, ``pyhv run``, ``pyhv fleet run``):
each turns a flag's text into a value or raises :class:`argparse.ArgumentTypeError`, which
argparse reports as a usage error naming the flag.

>>> integer("0x1f4"), positive_int("3"), positive_float("0.5")
(500, 3, 0.5)
>>> positive_int("-5")
Traceback (most recent call last):
argparse.ArgumentTypeError: -5 is not > 0
"""

from __future__ import annotations

import argparse
import math


def integer(text: str) -> int:
    """A whole number, in any base Python reads (``0x``, ``0o``, ``0b``)."""
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def positive_int(text: str) -> int:
    value = integer(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not > 0")
    return value


def positive_float(text: str) -> float:
    """A finite number above 0 (seconds, CPUs)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"{text} is not a finite number > 0")
    return value
