"""Linux from Debian's own kernel package: the bzImage boot protocol and the PVH entry of the
vmlinux inside it, checked as far as this host lets a stock kernel get.

On kvm_pvm ring-0 code is emulated one instruction at a time, and the emulator cannot do
``lock cmpxchg16b``: a stock kernel stops there with an emulation failure about 35 s into its
boot (kernel time, just after its "Memory:" line; measured with this kernel on PVH), so these
tests look for the earliest console lines each path reaches (the decompressor's first words
for the bzImage, the kernel's banner for PVH) within a bounded time.  The full boot to a
busybox init needs hardware KVM and is skipped elsewhere.
"""

from __future__ import annotations

import time

import pytest

import pyhv
import pyhv.loaders.linux
from pyhv import devices, exits, loaders

from ..images import CACHE, debian_kernel, fetch_busybox, newc_cpio

CMDLINE = "earlyprintk=serial,ttyS0,115200 console=ttyS0 nokaslr"


def linux_partition(memory: str = "256M") -> tuple[pyhv.Partition, bytearray]:
    part = pyhv.Partition(memory=memory, irqchip=True, pit=True)
    console = bytearray()
    part.ignore_unclaimed_ports()
    part.attach(devices.Uart16550(console.extend))
    part.attach(devices.I8042())
    part.attach(devices.Rtc())
    part.attach(devices.IsaDebugExit())
    return part, console


def run_until(part: pyhv.Partition, console: bytearray, marker: bytes, limit: float) -> float:
    """Run in short slices until ``marker`` shows on the console; returns the seconds taken."""
    started = time.monotonic()
    while marker not in console:
        elapsed = time.monotonic() - started
        if elapsed > limit:
            pytest.fail(f"no {marker!r} after {limit} s; console so far:\n"
                        f"{console.decode(errors='replace')[-2000:]}")
        try:
            result = part.run(timeout=1.0)
        except pyhv.Timeout:
            continue
        if marker not in console:
            pytest.fail(f"the kernel stopped on {result.exit!r} before {marker!r}:\n"
                        f"{console.decode(errors='replace')[-2000:]}")
    return time.monotonic() - started


def vmlinux() -> bytes:
    kernel = debian_kernel()
    cached = CACHE / f"vmlinux-{kernel.name.removeprefix('vmlinuz-')}"
    if not cached.exists():
        cached.parent.mkdir(parents=True, exist_ok=True)    # PYHV_TEST_KERNEL: maybe no cache
        cached.write_bytes(pyhv.loaders.linux.extract_vmlinux(kernel.read_bytes(), kernel.name))
    return cached.read_bytes()


@pytest.mark.timeout(90 + 60)           # its own bound, and time to build the partition
def test_bzimage_reaches_the_decompressor(kvm):
    kernel = debian_kernel()
    part, console = linux_partition()
    with part:
        image = loaders.load(part, kernel, cmdline=CMDLINE)
        assert (image.format, image.mode, image.entry) == ("linux", "long", 0x1000200)
        zero_page = part.memory.read(image.registers["rsi"], 4096)
        assert zero_page[0x202:0x206] == b"HdrS" and zero_page[0x1E8] > 0   # e820 entries
        image.create_vcpu(part)
        # with CONFIG_X86_VERBOSE_BOOTUP off, the decompressor's first words are these
        run_until(part, console, b"KASLR disabled: 'nokaslr' on cmdline.", limit=90)


@pytest.mark.timeout(240 + 60)          # (extracting the vmlinux the first time included)
def test_vmlinux_boots_through_pvh_to_the_banner(kvm):
    data = vmlinux()
    assert loaders.detect(data) == "linux"                       # an ELF with a PVH note
    part, console = linux_partition()
    with part:
        image = loaders.load(part, data, cmdline=CMDLINE)
        assert image.format == "pvh" and image.mode == "protected"
        image.create_vcpu(part)
        run_until(part, console, b"BIOS-e820: [mem 0x0000000000100000", limit=240)
        text = console.decode(errors="replace")
        assert "Linux version 6." in text and "(debian-kernel@lists.debian.org)" in text
        assert f"Command line: {CMDLINE}" in text                 # from hvm_start_info
        # 256 MiB, written out (not computed by pyhv): RAM, pyhv's setup region to 1 MiB, RAM
        for first, last, kind in ((0x0, 0x7FFFF, "usable"), (0x80000, 0xFFFFF, "reserved"),
                                  (0x100000, 0xFFFFFFF, "usable")):
            line = f"BIOS-e820: [mem {first:#018x}-{last:#018x}] {kind}"
            assert line in text, line


@pytest.mark.timeout(300 + 60)
def test_full_boot_to_a_busybox_init(kvm):
    caps = pyhv.check()
    if not caps.hardware:
        pytest.skip(f"{caps.backend} emulates ring-0 code and cannot emulate `lock "
                    "cmpxchg16b`, where a stock kernel stops ~35 s into its boot: a full boot "
                    "needs hardware KVM")
    busybox = fetch_busybox().read_bytes()
    init = b"#!/bin/busybox sh\n/bin/busybox echo PYHV-INIT-MARKER\n/bin/busybox reboot -f\n"
    initrd = newc_cpio({"bin": (0o40755, b""), "bin/busybox": (0o100755, busybox),
                        "init": (0o100755, init)})
    part, console = linux_partition(memory="512M")
    with part:
        image = loaders.load(part, debian_kernel(), cmdline="console=ttyS0 reboot=k "
                             "panic=-1 quiet", initrd=initrd)
        image.create_vcpu(part)
        result = part.run(timeout=300)
        assert b"PYHV-INIT-MARKER" in console
        assert isinstance(result.exit, exits.Reset)              # reboot=k: the i8042
