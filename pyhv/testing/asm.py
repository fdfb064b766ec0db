"""Guest code in assembly: assemble it with GNU binutils.

>>> from pyhv.testing import assemble
>>> assemble("mov $42, %eax\\nhlt", bits=64)
b'\\xb8*\\x00\\x00\\x00\\xf4'

``assemble`` needs GNU ``as``, ``ld`` and ``objcopy`` (Debian: ``apt-get install binutils``);
``.S`` files (C preprocessor) need ``gcc`` too.  Results are cached per process.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile

from .errors import ToolchainError

__all__ = ["assemble", "assemble_file", "kvm_usable"]


_BITS = {16: ("--32", "elf_i386", ".code16\n"), 32: ("--32", "elf_i386", ".code32\n"),
         64: ("--64", "elf_x86_64", ".code64\n")}


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise ToolchainError(f"`{name}` not found: install GNU binutils and gcc "
                             "(Debian/Ubuntu: apt-get install binutils gcc)")
    return path


def _run(argv: list[str], what: str) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ToolchainError(f"{what} failed:\n{proc.stderr.strip()}")


@functools.lru_cache(maxsize=256)
def assemble(source: str, *, bits: int = 64, origin: int = 0, cpp: bool = False,
             include_dirs: tuple[str, ...] = ()) -> bytes:
    """Assemble GNU-syntax (AT&T) ``source`` into a flat binary that runs at ``origin``.

    ``bits`` (16, 32 or 64) sets the initial code size; ``cpp=True`` runs the C preprocessor
    first (``#define``, ``#include``).  ``.text``, ``.rodata``, ``.data`` and ``.bss`` are laid
    out in that order from ``origin``; the symbol ``_start``, if any, should be first.
    """
    if bits not in _BITS:
        raise ValueError(f"bits must be 16, 32 or 64, not {bits}")
    as_flag, emulation, directive = _BITS[bits]
    with tempfile.TemporaryDirectory(prefix="pyhv-asm-") as tmp:
        src = os.path.join(tmp, "guest.S" if cpp else "guest.s")
        obj, elf, binary = (os.path.join(tmp, n) for n in ("guest.o", "guest.elf", "guest.bin"))
        script = os.path.join(tmp, "guest.ld")
        with open(src, "w") as f:
            f.write(directive + source + "\n")
        if cpp:
            pre = os.path.join(tmp, "guest.s")
            _run([_tool("gcc"), "-E", "-P", "-x", "assembler-with-cpp",
                  *(f"-I{d}" for d in include_dirs), src, "-o", pre], "preprocessing")
            src = pre
        with open(script, "w") as f:
            f.write(f"SECTIONS {{ . = {origin:#x}; .text : {{ *(.text*) *(.rodata*) *(.data*) "
                    f"*(.bss*) *(COMMON) }} /DISCARD/ : {{ *(.note*) *(.comment) }} }}\n")
        _run([_tool("as"), as_flag, "-o", obj, src], "assembling")
        _run([_tool("ld"), "-m", emulation, "-T", script, "-o", elf, obj], "linking")
        _run([_tool("objcopy"), "-O", "binary", "-j", ".text", elf, binary], "objcopy")
        with open(binary, "rb") as f:
            return f.read()


def assemble_file(path: str | os.PathLike[str], *, bits: int = 64, origin: int = 0) -> bytes:
    """Assemble a guest source file; ``.S`` files go through the C preprocessor (with the
    file's directory on the include path)."""
    path = os.fspath(path)
    with open(path) as f:
        source = f.read()
    return assemble(source, bits=bits, origin=origin, cpp=path.endswith(".S"),
                    include_dirs=(os.path.dirname(os.path.abspath(path)),))


def kvm_usable() -> tuple[bool, str]:
    """(True, "") if /dev/kvm can be opened, else (False, why): for test skips."""
    from ..core.hypervisor import Hypervisor
    from ..errors import HypervisorUnavailable
    try:
        Hypervisor().close()
    except HypervisorUnavailable as exc:
        return False, str(exc)
    return True, ""
