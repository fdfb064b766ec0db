"""Image loaders on real guests: a multiboot kernel built here from assembly and C (ELF and
a.out-kludge forms), ELF32/ELF64 guests, flat images, and every kind of broken image."""

from __future__ import annotations

import io
import struct

import pytest

import pyhv
import pyhv.loaders.linux
from pyhv import devices, exits, loaders
from pyhv.loaders import layout, multiboot
from pyhv.loaders.samples import sample_images

from ..conftest import fd_count
from ..images import build_multiboot, link_elf


def boot_multiboot(path, memory="32M", rom: bool = False,
                   **load) -> tuple[pyhv.RunResult, str, pyhv.Partition]:
    part = pyhv.Partition(memory=memory)
    if rom:                                         # firmware-style ROM ending at 4 GiB
        part.map_memory(0xFFF00000, 1 << 20, readonly=True)
    out = io.BytesIO()
    part.attach(devices.Uart16550(out))
    part.attach(devices.IsaDebugExit())
    image = loaders.load(part, path, **load)
    assert image.format == "multiboot" and image.mode == "protected"
    image.create_vcpu(part)
    result = part.run(timeout=60)
    return result, out.getvalue().decode(), part


@pytest.mark.parametrize("aout_kludge", [False, True], ids=["elf", "aout-kludge"])
def test_multiboot_kernel_reads_its_info_structure(kvm, tmp_path, aout_kludge):
    kernel = build_multiboot(tmp_path, aout_kludge)
    initrd = tmp_path / "initrd.img"
    initrd.write_bytes(b"module payload")
    result, text, part = boot_multiboot(kernel, cmdline="console=ttyS0 answer=42",
                                        initrd=initrd, rom=True)
    with part:
        lines = text.splitlines()
        assert result.exit == exits.DebugExit(code=0x63, value=0x31, port=0xF4,
                                              rip=result.exit.rip)
        assert lines[0] == "magic 0x2badb002"
        assert f"cmdline {kernel} console=ttyS0 answer=42" in lines   # QEMU's convention
        # written out, not computed by pyhv: RAM below the setup region, the setup region to
        # 1 MiB (EBDA and legacy hole included) reserved, RAM above; the ROM is not RAM
        assert [line for line in lines if line.startswith("mmap")] == [
            "mmap 0x0 0x80000 0x1", "mmap 0x80000 0x80000 0x2", "mmap 0x100000 0x1f00000 0x1"]
        module = next(line for line in lines if line.startswith("module"))
        _, start, size, name, payload = module.split(" ", 4)
        assert int(size, 16) == len(b"module payload") and int(start, 16) % 4096 == 0
        assert name == str(initrd) and payload == "module payload"
        assert "loader pyhv" in lines and lines[-1] == "bye"
        assert lines[2] == f"mem {0x80000 // 1024:#x} {(32 << 20) // 1024 - 1024:#x}"


def test_multiboot_without_extras(kvm, tmp_path):
    result, text, part = boot_multiboot(build_multiboot(tmp_path))
    part.close()
    assert "module" not in text and f"cmdline {tmp_path / 'kernel.elf'}" in text


def elf_guest(tmp_path, bits):
    # writes a marker, sums its (zero-filled) BSS, reports both on port 0xE9
    reg = "%rsi" if bits == 64 else "%esi"
    source = f"""
    .globl _start
    .text
_start:
    mov $marker, {reg}
    mov ({reg}), %eax
    out %eax, $0xE9
    mov $bss_start, {reg}
    xor %eax, %eax
    mov $1024, %ecx
1:  add ({reg}), %eax
    add $4, {reg}
    loop 1b
    out %eax, $0xE9
    hlt
    .data
marker: .long 0xC0FFEE
    .bss
bss_start: .space 4096
"""
    return link_elf(tmp_path, source, bits, 0x200000, f"elf{bits}")


@pytest.mark.parametrize("bits", [32, 64])
def test_elf_guest_with_bss(part, tmp_path, bits):
    path = elf_guest(tmp_path, bits)
    part.memory.fill(0x200000, 0x10000, 0xEE)          # garbage where the BSS goes
    image = loaders.load(part, path)
    assert image.format == "elf" and image.mode == ("long" if bits == 64 else "protected")
    assert image.entry == 0x200000
    cpu = image.create_vcpu(part)
    values = []
    while isinstance(ex := cpu.run(timeout=30), exits.IoOut):
        values.append(ex.value)
    assert isinstance(ex, exits.Halt) and values == [0xC0FFEE, 0]


def test_flat_image_and_detection(part, tmp_path):
    code = pyhv.testing.assemble("mov $7, %eax\nhlt", origin=0x100000)
    flat = tmp_path / "flat.bin"
    flat.write_bytes(code)
    assert loaders.detect(code) == "flat"
    image = loaders.load(part, flat)
    assert (image.format, image.mode, image.entry) == ("flat", "long", 0x100000)
    cpu = image.create_vcpu(part)
    assert isinstance(cpu.run(timeout=10), exits.Halt) and cpu.regs.rax == 7
    real = loaders.load(part, b"\xf4", "flat", address=0x7C00, mode="real")
    assert real.mode == "real" and part.memory.read(0x7C00, 1) == b"\xf4"
    with pytest.raises(pyhv.InvalidArgument):
        loaders.load(part, b"\xf4", "flat", mode="virtual86")
    with pytest.raises(pyhv.InvalidArgument):
        loaders.load(part, b"\xf4", "exe")


def _corrupt(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value):]


def elf_cases(elf: bytes) -> dict[str, bytes]:
    """Broken versions of a valid ELF32 file."""
    phoff = struct.unpack_from("<I", elf, 0x1C)[0]
    first = phoff                                  # the first program header
    filesz = struct.unpack_from("<I", elf, first + 16)[0]
    return {
        "truncated": elf[: len(elf) // 2],
        "bad magic": b"\x7fELG" + elf[4:],
        "wrong machine": _corrupt(elf, 0x12, struct.pack("<H", 40)),          # ARM
        "not executable": _corrupt(elf, 0x10, struct.pack("<H", 1)),          # ET_REL
        "segment past the file": _corrupt(elf, first + 4, struct.pack("<I", len(elf) - 4)),
        "filesz above memsz": _corrupt(elf, first + 20, struct.pack("<I", filesz - 1)),
        "segment outside RAM": _corrupt(elf, first + 12, struct.pack("<I", 0xF0000000)),
        "absurd size": _corrupt(elf, first + 20, struct.pack("<I", 0xFFFFFFF0)),
        "over the setup region": _corrupt(elf, first + 12, struct.pack("<I", 0x80000)),
        "program headers past the end": _corrupt(elf, 0x1C, struct.pack("<I", len(elf) + 64)),
        "empty": b"",
    }


def _with_flags(kernel: bytes, header: int, flags: int) -> bytes:
    """``kernel`` with its multiboot header's flags changed (and the checksum to match)."""
    checksum = (-(0x1BADB002 + flags)) & 0xFFFFFFFF
    return _corrupt(kernel, header + 4, struct.pack("<II", flags, checksum))


def multiboot_cases(kernel: bytes, header: int) -> dict[str, bytes]:
    flags_at = header + 4
    return {
        "bad checksum (no header)": _corrupt(kernel, header + 8, b"\0\0\0\0"),
        "video mode required": _with_flags(kernel, header, 0x10003 | 0x4),
        "unknown required flag": _corrupt(kernel, flags_at, struct.pack("<I", 0x10003 | 0x20))
        [:header + 8] + struct.pack("<I", (-(0x1BADB002 + (0x10003 | 0x20))) & 0xFFFFFFFF)
        + kernel[header + 12:],
        "load address after header": _corrupt(kernel, header + 16,
                                              struct.pack("<I", 0x200000)),
        "load end beyond the file": _corrupt(kernel, header + 20, struct.pack("<I", 0x900000)),
        "entry outside the image": _corrupt(kernel, header + 28, struct.pack("<I", 0x50)),
        "bss before load end": _corrupt(kernel, header + 24, struct.pack("<I", 0x100001)),
        "truncated header": kernel[:header + 20],
    }


def bzimage_cases() -> dict[str, bytes]:
    """Broken versions of the sample bzImage (pyhv.loaders.samples)."""
    good = sample_images()["linux"]
    return {
        "old protocol": _corrupt(good, 0x206, struct.pack("<H", 0x0204)),
        "no 64-bit entry": _corrupt(good, 0x236, struct.pack("<H", 0)),
        "setup past the end": _corrupt(good, 0x1F1, bytes([200])),
        "payload past the end": _corrupt(good, 0x248, struct.pack("<II", 0x100, 0x10000)),
    }


# why each broken image is refused (a regular expression on the error's text)
REASONS = {
    "elf/truncated": "runs past the end of the file",
    "elf/bad magic": "bad magic",
    "elf/wrong machine": "EM_ARM is not an x86 executable",
    "elf/not executable": "ET_REL is not an executable",
    "elf/segment past the file": "runs past the end of the file",
    "elf/filesz above memsz": "file size 0x[0-9a-f]+ exceeds its memory size",
    "elf/segment outside RAM": "outside guest RAM",
    "elf/absurd size": "overlap",
    "elf/over the setup region": "overlaps pyhv's setup region",
    "elf/program headers past the end": "not a loadable ELF image: ELFParseError",
    "elf/empty": "the image is empty",
    "multiboot/bad checksum (no header)": "no multiboot header",
    "multiboot/unknown required flag": r"multiboot features pyhv does not provide \(flags 0x20\)",
    "multiboot/video mode required": r"\(flags 0x4\) \(video mode information",
    "multiboot/load address after header": "is not at or before the header address",
    "multiboot/load end beyond the file": r"load range .* does not fit the file",
    "multiboot/entry outside the image": "entry 0x50 is outside the image",
    "multiboot/bss before load end": "bss end 0x100001 is before the load end",
    "multiboot/truncated header": "multiboot header truncated",
    "linux/old protocol": "boot protocol 2.04 is too old",
    "linux/no 64-bit entry": "no 64-bit entry point",
    "linux/setup past the end": "the setup code is larger than the file",
    "linux/payload past the end": r"Linux kernel \[0x1000000, .* outside guest RAM",   # 16 MiB
    "linux/not a kernel": "not a Linux bzImage",
}


def test_every_broken_image_is_refused_and_nothing_is_written(kvm, tmp_path):
    elf32 = elf_guest(tmp_path, 32).read_bytes()
    kernel = build_multiboot(tmp_path / "k", aout_kludge=True).read_bytes()
    header, _ = multiboot.find_header(kernel)
    cases = {f"elf/{k}": ("elf", v) for k, v in elf_cases(elf32).items()}
    cases |= {f"multiboot/{k}": ("multiboot", v)
              for k, v in multiboot_cases(kernel, header).items()}
    cases |= {f"linux/{k}": ("linux", v) for k, v in bzimage_cases().items()}
    cases["linux/not a kernel"] = ("linux", b"MZ" + bytes(4000))
    assert set(cases) == set(REASONS)
    pyhv.check()
    before = fd_count()
    with pyhv.Partition(memory="16M") as part:
        pristine = part.memory.read(0, 16 << 20)
        for name, (fmt, data) in cases.items():
            with pytest.raises(pyhv.ImageFormatError, match=REASONS[name]):
                loaders.load(part, data, fmt)
            assert part.memory.read(0, 16 << 20) == pristine, f"{name} wrote guest memory"
        assert len(part.memory.slots) == 1 and part.vcpus == ()
        with pytest.raises(pyhv.ImageFormatError, match="cannot read"):
            loaders.load(part, tmp_path / "missing.elf")
        with pytest.raises(pyhv.ImageFormatError, match="payload"):
            loaders.linux.extract_vmlinux(cases["linux/payload past the end"][1])
    assert fd_count() == before


def test_multiboot_kernel_too_big_for_the_partition(kvm, tmp_path):
    kernel = build_multiboot(tmp_path)
    with pyhv.Partition(memory="1M") as part:
        with pytest.raises(pyhv.ImageFormatError, match="outside guest RAM"):
            loaders.load(part, kernel)


def test_e820_table_overflow_is_refused_not_truncated(kvm):
    # 130 slots make more memory-map entries than the zero page's 128 e820 slots hold (the
    # PVH and multiboot maps, 170 entries a page, still fit)
    images = sample_images()
    with pyhv.Partition(memory="32M") as part:
        for i in range(130):
            part.map_memory(0x4000000 + i * 0x2000, 0x1000)
        assert len(layout.memory_map(part)) > 128
        with pytest.raises(pyhv.ImageFormatError, match="e820 table"):
            loaders.load(part, images["linux"])
        for fmt in ("pvh", "multiboot"):
            assert loaders.load(part, images[fmt]).format == fmt


@pytest.mark.parametrize("fmt", ["linux", "pvh"])
def test_linux_command_line_of_the_maximum_length(kvm, fmt):
    # the bzImage says cmdline_size 2048: 2048 bytes and the NUL after them; PVH takes 4096
    most = 2048 if fmt == "linux" else 4096
    with pyhv.Partition(memory="32M") as part:
        loaders.load(part, sample_images()[fmt], cmdline="x" * most)
        assert part.memory.read(layout.STRINGS, most + 1) == b"x" * most + b"\0"
        with pytest.raises(pyhv.InvalidArgument, match=f"has {most + 1} bytes: at most {most} "):
            loaders.load(part, sample_images()[fmt], cmdline="x" * (most + 1))


@pytest.mark.parametrize("fmt", ["flat", "elf"])
@pytest.mark.parametrize("detected", [False, True], ids=["named", "detected"])
def test_flat_and_elf_images_refuse_a_command_line_or_initrd(part, fmt, detected):
    image = b"\xf4" if fmt == "flat" else sample_images()["elf"]
    for extra in ({"cmdline": "console=ttyS0"}, {"initrd": b"ramdisk"}):
        article = "an" if fmt == "elf" else "a"
        with pytest.raises(pyhv.InvalidArgument,
                           match=f"{article} {fmt} image takes no command line"):
            loaders.load(part, image, "auto" if detected else fmt, **extra)
    assert part.memory.read(0x100000, 1) == b"\0" and part.memory.read(0x200000, 1) == b"\0"


@pytest.mark.parametrize("fmt", ["elf", "multiboot", "linux"])
def test_address_and_mode_are_refused_where_the_image_says_them(part, fmt):
    for extra in ({"address": 0x7C00}, {"mode": "real"}, {"mode": "long"}):
        with pytest.raises(pyhv.InvalidArgument, match="address and mode are for flat images"):
            loaders.load(part, sample_images()[fmt], **extra)
    assert not part.vcpus and part.memory.read(0x100000, 1) == b"\0"     # nothing loaded


def test_loaders_parse_check_and_map_once(kvm, monkeypatch):
    # auto-detection hands its parsed ELF on; segments are checked once; multiboot builds its
    # memory map once
    import pyhv.loaders.elf as elf_loader
    calls = {"parse": 0, "fits": 0, "map": 0}

    def counting(key, real):
        def wrapper(*args, **kwargs):
            calls[key] += 1
            return real(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(elf_loader, "parse", counting("parse", elf_loader.parse))
    monkeypatch.setattr(elf_loader, "check_fits", counting("fits", elf_loader.check_fits))
    monkeypatch.setattr(pyhv.loaders.linux, "check_fits",
                        counting("fits", pyhv.loaders.linux.check_fits))
    monkeypatch.setattr(layout, "memory_map", counting("map", layout.memory_map))
    monkeypatch.setattr(multiboot, "memory_map", counting("map", layout.memory_map),
                        raising=False)
    images = sample_images()
    with pyhv.Partition(memory="32M") as part:
        for fmt in ("elf", "elf32", "pvh"):
            calls.update(parse=0, fits=0)
            loaders.load(part, images[fmt])
            segments = len(elf_loader.parse(images[fmt]).segments)
            assert (calls["parse"] - 1, calls["fits"]) == (1, segments), fmt
        calls.update(map=0)
        loaders.load(part, images["multiboot"])
        assert calls["map"] == 1


def test_loaders_check_the_boot_data_area_before_writing(kvm, tmp_path):
    """Regression: loaders wrote the image before finding that the boot data area was not RAM."""
    from pyhv.loaders.samples import sample_images
    with pyhv.Partition() as part:             # RAM only from 1 MiB: no boot data area
        part.map_memory(0x100000, 0x4000000)
        part.memory.fill(0x100000, 0x4000000, 0xA5)    # so zeros written would show too
        pristine = part.memory.read(0x100000, 0x4000000)   # all RAM: linux/pvh load at 16 MiB
        for fmt in ("multiboot", "linux", "pvh"):
            with pytest.raises(pyhv.ImageFormatError, match="boot data area"):
                pyhv.loaders.load(part, sample_images()[fmt], "linux" if fmt == "pvh" else fmt)
            assert part.memory.read(0x100000, 0x4000000) == pristine, fmt
