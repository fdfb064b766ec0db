"""The PC test kernel (tests/guests/pc): a multiboot ELF that checks the PC machine's ACPI
tables, PM timer, PCI devices, interrupts, test devices, SMP start-up and S3, chosen by its
command line."""

from __future__ import annotations

from pathlib import Path

from .images import _run

SOURCE = Path(__file__).parent / "guests" / "pc"
CFLAGS = ["-m64", "-mno-red-zone", "-mgeneral-regs-only", "-mcmodel=small", "-ffreestanding",
          "-fno-stack-protector", "-fno-pic", "-fno-pie", "-fno-builtin", "-nostdlib", "-O2",
          "-Wall", "-Werror"]


def build_pc_guest(out: Path) -> Path:
    """tests/guests/pc built into ``out``: a 64-bit kernel in a 32-bit ELF (what multiboot
    loads), as the KVM unit tests build theirs; its path."""
    out.mkdir(parents=True, exist_ok=True)
    c_obj, boot_obj = out / "pc.o", out / "boot.o"
    elf64, elf = out / "pc64.elf", out / "pc.elf"
    _run(["gcc", *CFLAGS, "-c", str(SOURCE / "pc.c"), "-o", str(c_obj)])
    _run(["gcc", "-m64", "-c", str(SOURCE / "boot.S"), "-o", str(boot_obj)])
    _run(["ld", "-m", "elf_x86_64", "-z", "noexecstack", "--no-warn-rwx-segments",
          "-T", str(SOURCE / "linker.ld"), "-o", str(elf64), str(boot_obj), str(c_obj)])
    _run(["objcopy", "-O", "elf32-i386", str(elf64), str(elf)])
    return elf
