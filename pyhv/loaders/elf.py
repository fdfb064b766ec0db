"""ELF32 and ELF64 executables, parsed with pyelftools: PT_LOAD segments at their physical
addresses, zero-filled BSS, entered at the entry point (translated to its physical address)
in protected mode (ELF32) or long mode (ELF64)."""

from __future__ import annotations

import io
import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import ImageFormatError
from .image import BootImage
from .layout import Payload, check_fits, write_payloads

if TYPE_CHECKING:
    from .image import Partition

MAGIC = b"\x7fELF"
EM_386, EM_X86_64 = 3, 62
XEN_ELFNOTE_PHYS32_ENTRY = 18


@dataclass
class Segment:
    paddr: int
    vaddr: int
    data: bytes
    memsz: int


@dataclass
class ElfImage:
    bits: int
    entry: int                  # virtual, as in the header
    segments: list[Segment]
    notes: list[tuple[str, int, bytes]]   # (name, type, descriptor)

    def physical(self, vaddr: int) -> int:
        """The physical address of ``vaddr`` through the segment that holds it."""
        for s in self.segments:
            if s.vaddr <= vaddr < s.vaddr + max(s.memsz, 1):
                return vaddr - s.vaddr + s.paddr
        raise ImageFormatError(f"ELF entry point {vaddr:#x} is in no loadable segment")


def _fail(name: str, why: str) -> ImageFormatError:
    return ImageFormatError(f"{name}: not a loadable ELF image: {why}")


def parse(data: bytes, name: str = "image") -> ElfImage:
    """Check and read an ELF executable for x86 (pyelftools does the parsing)."""
    from elftools.elf.elffile import ELFFile
    from elftools.elf.segments import NoteSegment

    if data[:4] != MAGIC:
        raise _fail(name, "bad magic")
    try:
        elf = ELFFile(io.BytesIO(data))
        bits = elf.elfclass
        machine = elf.header["e_machine"]
        if (bits, machine) not in ((32, "EM_386"), (64, "EM_X86_64")):
            raise _fail(name, f"{bits}-bit {machine} is not an x86 executable")
        if elf.header["e_type"] not in ("ET_EXEC", "ET_DYN"):
            raise _fail(name, f"type {elf.header['e_type']} is not an executable")
        segments, notes = [], []
        for seg in elf.iter_segments():
            kind = seg["p_type"]
            if kind == "PT_LOAD":
                offset, filesz, memsz = seg["p_offset"], seg["p_filesz"], seg["p_memsz"]
                if filesz > memsz:
                    raise _fail(name, f"a segment's file size {filesz:#x} exceeds its memory "
                                      f"size {memsz:#x}")
                if offset + filesz > len(data):
                    raise _fail(name, f"a segment [{offset:#x}, +{filesz:#x}) runs past the end "
                                      f"of the file ({len(data):#x} bytes): truncated?")
                if memsz:
                    segments.append(Segment(seg["p_paddr"], seg["p_vaddr"],
                                            data[offset:offset + filesz], memsz))
            elif kind == "PT_NOTE" and isinstance(seg, NoteSegment):
                for note in seg.iter_notes():
                    desc = note["n_desc"]
                    raw = desc if isinstance(desc, bytes) else bytes.fromhex(desc) \
                        if isinstance(desc, str) else b""
                    notes.append((note["n_name"], note["n_type"] if isinstance(
                        note["n_type"], int) else -1, raw))
        entry = elf.header["e_entry"]
    except ImageFormatError:
        raise
    except Exception as exc:
        # ELFError and struct.error mostly, but pyelftools on hostile input can fail in its
        # construct layer or further down with almost any exception type: all of them mean
        # "not a loadable image"
        raise _fail(name, f"{type(exc).__name__}: {exc}") from None
    if not segments:
        raise _fail(name, "no loadable segments")
    ordered = sorted(segments, key=lambda s: s.paddr)
    for a, b in itertools.pairwise(ordered):
        if a.paddr + a.memsz > b.paddr:
            raise _fail(name, f"segments at {a.paddr:#x} and {b.paddr:#x} overlap")
    return ElfImage(bits, entry, segments, notes)


def pvh_entry(image: ElfImage) -> int | None:
    for note_name, kind, desc in image.notes:
        if note_name == "Xen" and kind == XEN_ELFNOTE_PHYS32_ENTRY and len(desc) >= 4:
            return int.from_bytes(desc[:8] if len(desc) >= 8 else desc[:4], "little") \
                & 0xFFFFFFFF
    return None


def check(partition: Partition, image: ElfImage, what: str) -> None:
    """Refuse the image unless every segment fits the partition (nothing is written)."""
    for s in image.segments:
        check_fits(partition, f"{what} segment", s.paddr, s.memsz)


def payloads(image: ElfImage, what: str) -> list[Payload]:
    """The segments, as :func:`layout.write_payloads` takes them (BSS zero-filled)."""
    return [(s.paddr, s.data, s.memsz, f"{what} segment") for s in image.segments]


def load(partition: Partition, data: bytes, name: str,
         image: ElfImage | None = None) -> BootImage:
    """Load ELF ``data`` (``image``: its :func:`parse` result, when the caller has it)."""
    if image is None:
        image = parse(data, name)
    entry = image.physical(image.entry)
    check(partition, image, "ELF")
    regions = write_payloads(partition, payloads(image, "ELF"))
    return BootImage("elf", "long" if image.bits == 64 else "protected", entry,
                     regions=regions)
