"""Guest images for the loader tests, built here from source (assembly and C), and the
Debian kernel the Linux tests boot."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from pyhv.testing import ToolchainError

MULTIBOOT = Path(__file__).parent / "guests" / "multiboot"
CACHE = Path(__file__).parent / ".cache"
CFLAGS = ["-m32", "-march=i386", "-mgeneral-regs-only", "-ffreestanding",
          "-fno-stack-protector", "-fno-pic", "-fno-pie", "-fno-builtin", "-nostdlib", "-O2",
          "-Wall", "-Werror"]


def gdb_env() -> dict[str, str]:
    """The environment for a gdb the tests start: the sanitizer run's LD_PRELOAD of libasan is
    for pyhv's C core, and gdb (not built with ASan) hangs before its first line under it."""
    return {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "ASAN_OPTIONS")}


def _run(argv: list[str]) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise ToolchainError(f"{' '.join(argv)}:\n{proc.stderr}")


def build_multiboot(out: Path, aout_kludge: bool = False) -> Path:
    """The multiboot test kernel (tests/guests/multiboot): an ELF, or with ``aout_kludge``
    a flat binary whose header carries its load addresses."""
    out.mkdir(parents=True, exist_ok=True)
    kernel_o, boot_o, elf = out / "kernel.o", out / "boot.o", out / "kernel.elf"
    _run(["gcc", *CFLAGS, "-c", str(MULTIBOOT / "kernel.c"), "-o", str(kernel_o)])
    _run(["gcc", "-m32", "-c", *(["-DAOUT_KLUDGE"] if aout_kludge else []),
          str(MULTIBOOT / "boot.S"), "-o", str(boot_o)])
    _run(["ld", "-m", "elf_i386", "-z", "noexecstack", "--no-warn-rwx-segments",
          "-T", str(MULTIBOOT / "linker.ld"), "-o", str(elf), str(boot_o), str(kernel_o)])
    if not aout_kludge:
        return elf
    flat = out / "kernel.bin"
    _run(["objcopy", "-O", "binary", str(elf), str(flat)])
    return flat


def link_elf(out: Path, source: str, bits: int, text: int, name: str = "guest") -> Path:
    """An ELF executable from assembly ``source``, its .text at ``text`` (data and bss
    follow)."""
    out.mkdir(parents=True, exist_ok=True)
    src, obj, elf = out / f"{name}.s", out / f"{name}.o", out / f"{name}.elf"
    src.write_text((".code64\n" if bits == 64 else ".code32\n") + source + "\n")
    _run(["as", "--64" if bits == 64 else "--32", "-o", str(obj), str(src)])
    _run(["ld", "-m", "elf_x86_64" if bits == 64 else "elf_i386", "-z", "noexecstack",
          "--no-warn-rwx-segments", "-Ttext", hex(text), "-e", "_start", "-o", str(elf),
          str(obj)])
    return elf


def debian_kernel() -> Path:
    """Debian's kernel (vmlinuz), as .ci/run fetches it: $PYHV_TEST_KERNEL, or the newest
    under tests/.cache/boot.  Skips (or fails on CI) without one."""
    explicit = os.environ.get("PYHV_TEST_KERNEL")
    candidates = [Path(explicit)] if explicit else sorted((CACHE / "boot").glob("vmlinuz-*"))
    for path in candidates:
        if path.is_file():
            return path
    why = ("no Debian kernel: run .ci/fetch-kernel (or set PYHV_TEST_KERNEL to a vmlinuz)")
    if os.environ.get("CI"):
        pytest.fail(why)
    pytest.skip(why)


def have_32bit_toolchain() -> bool:
    return shutil.which("gcc") is not None and shutil.which("ld") is not None


def newc_cpio(files: dict[str, tuple[int, bytes]]) -> bytes:
    """A cpio archive in the "newc" format the kernel unpacks as an initramfs:
    {path: (mode, data)}."""
    out = bytearray()

    def entry(name: str, mode: int, data: bytes, ino: int) -> None:
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name) + 1, 0)
        out.extend(b"070701" + b"".join(b"%08X" % f for f in fields))
        out.extend(name.encode() + b"\0")
        out.extend(b"\0" * (-len(out) % 4))
        out.extend(data)
        out.extend(b"\0" * (-len(out) % 4))

    for ino, (name, (mode, data)) in enumerate(files.items(), start=1):
        entry(name, mode, data, ino)
    entry("TRAILER!!!", 0, b"", 0)
    return bytes(out)


def fetch_busybox(cache: Path = CACHE) -> Path:
    """Debian's static busybox, downloaded on first use (apt-get download)."""
    target = cache / "busybox"
    if target.is_file():
        return target
    work = cache / "busybox-deb"
    work.mkdir(parents=True, exist_ok=True)
    _run(["sh", "-c", f"cd {work} && apt-get download -q busybox-static"])
    deb = next(work.glob("busybox-static_*.deb"))
    _run(["sh", "-c", f"dpkg-deb --fsys-tarfile {deb} | tar -x -C {work} ./bin/busybox"])
    shutil.copy(work / "bin" / "busybox", target)
    return target
