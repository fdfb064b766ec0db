"""Small valid images of every format, built from bytes here (no toolchain): seeds for the
corrupt-image corpus (``pyhv stress images``) and for tests."""

from __future__ import annotations

import struct

MULTIBOOT_MAGIC = 0x1BADB002


def _elf(bits: int, segments: list[tuple[int, bytes, int]], entry: int,
         notes: bytes = b"") -> bytes:
    """A minimal ELF executable: PT_LOAD segments (paddr, data, memsz) and an optional
    PT_NOTE."""
    ehsize, phsize = (52, 32) if bits == 32 else (64, 56)
    phnum = len(segments) + (1 if notes else 0)
    offset = ehsize + phnum * phsize
    body, headers = bytearray(), []
    for paddr, data, memsz in segments:
        headers.append((1, offset + len(body), paddr, len(data), memsz, 7))
        body += data
    if notes:
        headers.append((4, offset + len(body), 0, len(notes), len(notes), 4))
        body += notes
    ident = b"\x7fELF" + bytes([1 if bits == 32 else 2, 1, 1]) + bytes(9)
    machine = 3 if bits == 32 else 62
    if bits == 32:
        header = ident + struct.pack("<HHIIIIIHHHHHH", 2, machine, 1, entry, ehsize, 0, 0,
                                     ehsize, phsize, phnum, 40, 0, 0)
        table = b"".join(struct.pack("<IIIIIIII", kind, off, addr, addr, filesz, memsz, flags,
                                     4) for kind, off, addr, filesz, memsz, flags in headers)
    else:
        header = ident + struct.pack("<HHIQQQIHHHHHH", 2, machine, 1, entry, ehsize, 0, 0,
                                     ehsize, phsize, phnum, 64, 0, 0)
        table = b"".join(struct.pack("<IIQQQQQQ", kind, flags, off, addr, addr, filesz, memsz,
                                     8) for kind, off, addr, filesz, memsz, flags in headers)
    return header + table + bytes(body)


def _xen_note(entry: int) -> bytes:
    name = b"Xen\0"
    return struct.pack("<III", len(name), 4, 18) + name + struct.pack("<I", entry)


def _multiboot_aout(load: int = 0x100000) -> bytes:
    flags = 0x00010003
    code = b"\xb0\x31\xe6\xf4\xf4"                       # mov al,0x31; out 0xf4,al; hlt
    header = struct.pack("<III", MULTIBOOT_MAGIC, flags, (-(MULTIBOOT_MAGIC + flags)) & 0xFFFFFFFF)
    size = 12 + 20 + len(code)
    header += struct.pack("<IIIII", load, load, load + size, load + size + 0x1000, load + 32)
    return header + code


def _bzimage() -> bytes:
    setup_sects = 1
    image = bytearray((setup_sects + 1) * 512)
    image[0x1F1] = setup_sects
    image[0x1FE:0x200] = b"\x55\xaa"
    image[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", image, 0x206, 0x020F)
    image[0x201] = 0x66                               # setup header ends at 0x268
    image[0x211] = 0x01                               # LOADED_HIGH
    struct.pack_into("<I", image, 0x230, 0x200000)   # kernel_alignment
    struct.pack_into("<H", image, 0x236, 0x1)        # XLF_KERNEL_64
    struct.pack_into("<I", image, 0x238, 2048)       # cmdline_size
    struct.pack_into("<Q", image, 0x258, 0x1000000)  # pref_address
    struct.pack_into("<I", image, 0x260, 0x10000)    # init_size
    kernel = bytearray(0x400)
    kernel[0x200:0x202] = b"\xeb\xfe"               # the 64-bit entry: jmp .
    return bytes(image + kernel)


def sample_images() -> dict[str, bytes]:
    """format -> a small valid image of it."""
    elf64 = _elf(64, [(0x200000, b"\xf4" * 16, 0x2000)], 0x200000)
    elf32 = _elf(32, [(0x200000, b"\xf4" * 16, 0x1000), (0x300000, b"data", 0x10)], 0x200000)
    pvh = _elf(64, [(0x1000000, b"\xf4" * 64, 0x1000)], 0xFFFFFFFF81000000 & 0xFFFFFFFF,
               _xen_note(0x1000000))
    return {"elf": elf64, "elf32": elf32, "multiboot": _multiboot_aout(), "linux": _bzimage(),
            "pvh": pvh}
