"""The raw C reference loops the benchmarks measure pyhv against (benchmarks/c/*.c): each is
compiled once into benchmarks/build/ (again when its source is newer) and loaded."""

from __future__ import annotations

import ctypes
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
BUILD = HERE / "build"


def load(name: str) -> ctypes.CDLL:
    """benchmarks/c/NAME.c as a loaded shared library (argument types are the caller's)."""
    BUILD.mkdir(exist_ok=True)
    source = HERE / "c" / f"{name}.c"
    library = BUILD / f"lib{name}.so"
    if not library.exists() or library.stat().st_mtime < source.stat().st_mtime:
        subprocess.run(["gcc", "-O2", "-Wall", "-shared", "-fPIC", "-o", str(library),
                        str(source)], check=True)
    return ctypes.CDLL(str(library))
