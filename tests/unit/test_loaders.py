"""The loaders' parsing, without a partition: format detection, the multiboot header search,
ELF parsing (of sample images and of an ELF linked here), bzImage setup headers and payloads,
the sample images, and the refusals load() makes before it touches a partition."""

from __future__ import annotations

import gzip
import lzma
import shutil
import struct
import sys

import pytest

from pyhv import ImageFormatError, InvalidArgument, loaders
from pyhv.loaders import elf, linux, multiboot
from pyhv.loaders.samples import sample_images

from ..images import link_elf

SAMPLES = sample_images()
MB_MAGIC = 0x1BADB002

needs_binutils = pytest.mark.skipif(not (shutil.which("as") and shutil.which("ld")),
                                    reason="GNU binutils (as, ld) are not installed")


def patched(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value):]


def multiboot_header(flags: int = 0x3, checksum: int | None = None) -> bytes:
    if checksum is None:
        checksum = -(MB_MAGIC + flags) & 0xFFFFFFFF
    return struct.pack("<III", MB_MAGIC, flags, checksum)


# -- detection ----------------------------------------------------------------------------
@pytest.mark.parametrize("sample, fmt", [("elf", "elf"), ("elf32", "elf"),
                                         ("multiboot", "multiboot"), ("linux", "linux"),
                                         ("pvh", "linux")])
def test_detect_the_sample_images(sample, fmt):
    assert loaders.detect(SAMPLES[sample]) == fmt


@pytest.mark.parametrize("data, fmt", [
    (b"\xf4", "flat"), (b"", "flat"), (b"MZ" + bytes(4000), "flat"),
    (b"\x7fELF" + bytes(60), "elf"),                       # broken: the ELF loader says why
    (bytes(64) + multiboot_header() + bytes(64), "multiboot"),
    (SAMPLES["elf32"] + multiboot_header(), "multiboot"),   # multiboot wins over ELF
])
def test_detect_follows_qemus_order(data, fmt):
    assert loaders.detect(data) == fmt


# -- multiboot header search --------------------------------------------------------------
@pytest.mark.parametrize("offset", [0, 4, 1000, 8192 - 12])
def test_the_multiboot_header_is_found_in_the_first_8_kib(offset):
    data = bytes(offset) + multiboot_header(0x10003) + bytes(100)
    assert multiboot.find_header(data) == (offset, 0x10003)


@pytest.mark.parametrize("data", [
    bytes(8192 - 8) + multiboot_header(),                   # not wholly in the first 8 KiB
    bytes(2) + multiboot_header() + bytes(100),             # not 4-byte aligned
    multiboot_header(checksum=0) + bytes(100),              # bad checksum
    multiboot_header()[:11],                                # too short
    b"",
], ids=["past 8K", "unaligned", "checksum", "short", "empty"])
def test_no_multiboot_header(data):
    assert multiboot.find_header(data) is None


def test_the_sample_multiboot_kernel_uses_the_aout_kludge():
    assert multiboot.find_header(SAMPLES["multiboot"]) == (0, 0x10003)


# -- ELF ----------------------------------------------------------------------------------
def test_parse_the_sample_elfs():
    e64 = elf.parse(SAMPLES["elf"])
    assert (e64.bits, e64.entry, e64.notes) == (64, 0x200000, [])
    assert [(s.paddr, s.vaddr, s.data, s.memsz) for s in e64.segments] == [
        (0x200000, 0x200000, b"\xf4" * 16, 0x2000)]
    e32 = elf.parse(SAMPLES["elf32"])
    assert e32.bits == 32 and [(s.paddr, s.data, s.memsz) for s in e32.segments] == [
        (0x200000, b"\xf4" * 16, 0x1000), (0x300000, b"data", 0x10)]
    assert elf.pvh_entry(e32) is None
    assert elf.payloads(e32, "ELF") == [(0x200000, b"\xf4" * 16, 0x1000, "ELF segment"),
                                        (0x300000, b"data", 0x10, "ELF segment")]


def test_the_pvh_sample_carries_its_entry_note():
    image = elf.parse(SAMPLES["pvh"])
    assert image.notes == [("Xen", 18, struct.pack("<I", 0x1000000))]
    assert elf.pvh_entry(image) == 0x1000000


def test_physical_addresses_through_the_segments():
    image = elf.ElfImage(64, 0xFFFFFFFF80001000, [
        elf.Segment(0x1000000, 0xFFFFFFFF80000000, b"", 0x2000)], [])
    assert image.physical(0xFFFFFFFF80001000) == 0x1001000
    with pytest.raises(ImageFormatError, match="entry point 0xffffffff80002000 is in no "
                                               "loadable segment"):
        image.physical(0xFFFFFFFF80002000)


@needs_binutils
@pytest.mark.parametrize("bits", [32, 64])
def test_parse_an_elf_linked_here(tmp_path, bits):
    path = link_elf(tmp_path, "_start: mov $1, %eax\nhlt\n.data\nvalue: .long 0xC0FFEE\n"
                    ".bss\n.skip 0x3000\n", bits, 0x400000)
    image = elf.parse(path.read_bytes(), str(path))
    assert image.bits == bits and image.entry == 0x400000
    text = next(s for s in image.segments if s.vaddr <= 0x400000 < s.vaddr + s.memsz)
    start = image.physical(0x400000) - text.paddr
    assert text.data[start:start + 6] == b"\xb8\x01\x00\x00\x00\xf4"
    memory = sum(s.memsz for s in image.segments)
    assert memory >= 0x3000 + 5 and any(s.memsz > len(s.data) for s in image.segments)  # bss
    assert any(struct.pack("<I", 0xC0FFEE) in s.data for s in image.segments)


def elf32_header_fields(data: bytes) -> int:
    """The offset of the first program header of an ELF32 file."""
    return struct.unpack_from("<I", data, 0x1C)[0]


def broken_elfs() -> dict[str, tuple[bytes, str]]:
    good = SAMPLES["elf32"]
    ph = elf32_header_fields(good)
    second = ph + 32
    return {
        "bad magic": (b"\x7fELG" + good[4:], "bad magic"),
        "ARM": (patched(good, 0x12, struct.pack("<H", 40)), "32-bit EM_ARM is not an x86 "
                                                            "executable"),
        "32-bit x86-64": (patched(good, 0x12, struct.pack("<H", 62)),
                          "32-bit EM_X86_64 is not an x86"),
        "relocatable": (patched(good, 0x10, struct.pack("<H", 1)), "ET_REL is not an "
                                                                  "executable"),
        "filesz above memsz": (patched(good, ph + 20, struct.pack("<I", 8)),
                               "file size 0x10 exceeds its memory size 0x8"),
        "segment past the file": (patched(good, ph + 4, struct.pack("<I", len(good) - 4)),
                                  "runs past the end of the file"),
        "headers past the file": (patched(good, 0x1C, struct.pack("<I", len(good) + 64)),
                                  "not a loadable ELF image: ELFParseError"),
        "truncated": (good[:60], "not a loadable ELF image"),
        "overlapping segments": (patched(good, second + 12, struct.pack("<I", 0x200800)),
                                 "segments at 0x200000 and 0x200800 overlap"),
        "nothing to load": (patched(patched(good, ph + 16, bytes(8)), second + 16, bytes(8)),
                            "no loadable segments"),          # filesz = memsz = 0
    }


@pytest.mark.parametrize("name", sorted(broken_elfs()))
def test_broken_elfs_are_refused(name):
    data, match = broken_elfs()[name]
    with pytest.raises(ImageFormatError, match=match) as info:
        elf.parse(data, "kernel.elf")
    assert str(info.value).startswith("kernel.elf: not a loadable ELF image: ")


# -- bzImage ------------------------------------------------------------------------------
def bzimage_with(payload: bytes) -> bytes:
    """The sample bzImage with ``payload`` as its compressed kernel (payload_offset 0x400)."""
    image = bytearray(SAMPLES["linux"][:1024]) + bytearray(0x400) + payload
    struct.pack_into("<II", image, 0x248, 0x400, len(payload))
    return bytes(image)


def test_the_sample_bzimage_header():
    data = SAMPLES["linux"]
    assert linux.is_bzimage(data)
    assert data[0x202:0x206] == b"HdrS" and struct.unpack_from("<H", data, 0x206) == (0x020F,)
    assert not linux.is_bzimage(data[:0x263])
    assert not linux.is_bzimage(patched(data, 0x1FE, b"\x00\x00"))
    assert not linux.is_bzimage(SAMPLES["elf"])


@pytest.mark.parametrize("compress", [gzip.compress, lambda d: lzma.compress(d),
                                      lambda d: lzma.compress(d, format=lzma.FORMAT_ALONE)],
                         ids=["gzip", "xz", "lzma"])
def test_extract_vmlinux(compress):
    vmlinux = SAMPLES["pvh"]
    assert linux.extract_vmlinux(bzimage_with(compress(vmlinux))) == vmlinux


@pytest.mark.parametrize("data, match", [
    (SAMPLES["linux"], "the compressed payload lies outside the file"),        # length 0
    (bzimage_with(b"BZh91AY&SY" + bytes(20)), "unknown payload compression \\(425a6839\\)"),
    (bzimage_with(gzip.compress(SAMPLES["pvh"])[:-8]), "the payload does not decompress: "),
    (bzimage_with(gzip.compress(b"not an ELF")), "the payload is not an ELF vmlinux"),
    (patched(SAMPLES["linux"], 0x206, struct.pack("<H", 0x0204)),
     "boot protocol 2.04 is too old for a 64-bit entry \\(2.12 needed\\)"),
    (patched(SAMPLES["linux"], 0x236, struct.pack("<H", 0)),
     "the kernel has no 64-bit entry point \\(xloadflags\\)"),
    (patched(SAMPLES["linux"], 0x211, b"\x00"),
     "not a bzImage \\(the kernel does not load high\\)"),
    (patched(SAMPLES["linux"], 0x1F1, bytes([200])),
     "truncated: the setup code is larger than the file"),
    (b"MZ" + bytes(4000), "not a Linux bzImage \\(no HdrS setup header\\)"),
], ids=["no payload", "bzip2", "corrupt gzip", "not ELF", "old protocol", "no 64-bit",
        "not high", "setup past the end", "not a kernel"])
def test_extract_vmlinux_refuses(data, match):
    with pytest.raises(ImageFormatError, match=f"^bz: {match}"):
        linux.extract_vmlinux(data, "bz")


def test_a_zstd_payload_needs_the_zstandard_module(monkeypatch):
    monkeypatch.setitem(sys.modules, "zstandard", None)           # as if not installed
    with pytest.raises(ImageFormatError, match="a zstd payload needs the zstandard module"):
        linux.extract_vmlinux(bzimage_with(b"\x28\xb5\x2f\xfd" + bytes(16)))


# -- load() refusals before the partition -------------------------------------------------
NO_PARTITION = None                    # load() must refuse these before it looks at one


def test_an_unknown_format_is_refused():
    with pytest.raises(InvalidArgument, match="unknown image format 'exe'"):
        loaders.load(NO_PARTITION, b"\xf4", "exe")


def test_an_empty_image_is_refused():
    with pytest.raises(ImageFormatError, match="^image: the image is empty$"):
        loaders.load(NO_PARTITION, b"")


def test_a_missing_image_file_is_refused(tmp_path):
    with pytest.raises(ImageFormatError, match="missing.elf: cannot read the image"):
        loaders.load(NO_PARTITION, tmp_path / "missing.elf")


@pytest.mark.parametrize("image, fmt", [(b"\xf4", "flat"), (b"\xf4", "auto"),
                                        (SAMPLES["elf"], "elf"), (SAMPLES["elf"], "auto")])
@pytest.mark.parametrize("extra", [{"cmdline": "console=ttyS0"}, {"initrd": b"rd"}],
                         ids=["cmdline", "initrd"])
def test_flat_and_elf_images_take_no_command_line_or_initrd(image, fmt, extra):
    kind = "flat" if image == b"\xf4" else "elf"
    with pytest.raises(InvalidArgument, match=f"an? {kind} image takes no command line or "
                                              "initrd"):
        loaders.load(NO_PARTITION, image, fmt, **extra)


def test_read_image(tmp_path):
    path = tmp_path / "kernel"
    path.write_bytes(b"\x7fELF")
    assert loaders.read_image(path) == (b"\x7fELF", str(path))
    assert loaders.read_image(str(path)) == (b"\x7fELF", str(path))
    assert loaders.read_image(bytearray(b"ab")) == (b"ab", "image")
    assert loaders.read_image(memoryview(b"cd")) == (b"cd", "image")
    with pytest.raises(ImageFormatError, match="cannot read the image \\(Is a directory\\)"):
        loaders.read_image(tmp_path)


def test_the_sample_images():
    assert sorted(SAMPLES) == ["elf", "elf32", "linux", "multiboot", "pvh"]
    assert SAMPLES == sample_images()                              # built the same each time
    assert loaders.FORMATS == ("auto", "flat", "elf", "multiboot", "linux")


# -- the memory map loaders report, written out by hand (not computed by pyhv) ------------
class Slot:
    def __init__(self, gpa: int, size: int, readonly: bool = False) -> None:
        self.gpa, self.size, self.end, self.readonly = gpa, size, gpa + size, readonly


class Layout:
    """What layout.memory_map reads of a partition: its setup base and its slots."""

    def __init__(self, *slots: Slot, setup_base: int = 0x80000) -> None:
        self.setup_base = setup_base
        self.memory = type("Memory", (), {"slots": slots})()


RAM, RESERVED = 1, 2


def test_the_memory_map_of_ram_rom_and_high_memory():
    # 32 MiB at 0, a 1 MiB ROM ending at 4 GiB, 16 MiB from 4 GiB: the ROM is not RAM, the
    # setup region (0x80000-0xA0000), the EBDA and the legacy hole are reserved
    part = Layout(Slot(0, 32 << 20), Slot(0xFFF00000, 1 << 20, readonly=True),
                  Slot(1 << 32, 16 << 20))
    assert loaders.layout.memory_map(part) == [
        (0x0, 0x80000, RAM),
        (0x80000, 0x80000, RESERVED),
        (0x100000, 0x1F00000, RAM),
        (0x100000000, 0x1000000, RAM),
    ]


def test_the_memory_map_with_the_setup_region_elsewhere():
    part = Layout(Slot(0, 8 << 20), setup_base=0x200000)
    assert loaders.layout.memory_map(part) == [
        (0x0, 0x9FC00, RAM),
        (0x9FC00, 0x60400, RESERVED),          # the EBDA and the legacy hole, merged
        (0x100000, 0x100000, RAM),
        (0x200000, 0x20000, RESERVED),         # pyhv's setup region
        (0x220000, 0x5E0000, RAM),
    ]


def test_a_memory_map_of_rom_only_lists_just_the_reserved_ranges():
    part = Layout(Slot(0xFFFF0000, 0x10000, readonly=True))
    assert loaders.layout.memory_map(part) == [(0x80000, 0x80000, RESERVED)]
