"""Devices by the names QEMU's ``-device`` uses: ``pyhv run --device NAME[,opt=val...]``.

>>> from pyhv.devices import registry
>>> dev = registry.create("isa-debug-exit,iobase=0x501")
>>> type(dev).__name__, hex(dev.port)
('IsaDebugExit', '0x501')
>>> registry.create("no-such-device")      # doctest: +ELLIPSIS
Traceback (most recent call last):
pyhv.errors.InvalidArgument: unknown device 'no-such-device' (known: ...)

A package that provides a device registers a factory here: ``register(name, factory)``,
where ``factory(options)`` gets the ``opt=val`` pairs as a dict of strings and returns the
:class:`~pyhv.devices.base.Device` (or raises :class:`pyhv.InvalidArgument` naming a bad
option).
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import InvalidArgument
from .base import Device
from .debugexit import IsaDebugExit

Factory = Callable[[dict[str, str]], Device]

_FACTORIES: dict[str, tuple[Factory, str]] = {}


def register(name: str, factory: Factory, help: str = "") -> None:
    """Make ``--device name,...`` build a device with ``factory``."""
    if name in _FACTORIES:
        raise InvalidArgument(f"a device named {name!r} is registered already")
    _FACTORIES[name] = (factory, help)


def names() -> list[str]:
    return sorted(_FACTORIES)


def describe() -> list[tuple[str, str]]:
    """(name, help) of every registered device."""
    return [(name, _FACTORIES[name][1]) for name in names()]


def parse(spec: str) -> tuple[str, dict[str, str]]:
    """``NAME[,opt=val...]`` as QEMU writes it: the name and the options."""
    name, *items = spec.split(",")
    options: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not key or not sep:
            raise InvalidArgument(f"device option {item!r} in {spec!r} is not opt=value")
        options[key] = value
    return name, options


def create(spec: str) -> Device:
    """The device ``spec`` names (``NAME[,opt=val...]``)."""
    name, options = parse(spec)
    entry = _FACTORIES.get(name)
    if entry is None:
        raise InvalidArgument(f"unknown device {name!r} (known: {', '.join(names())})")
    return entry[0](options)


def int_option(options: dict[str, str], key: str, default: int) -> int:
    """An integer option (decimal or 0x...), or InvalidArgument naming it."""
    text = options.pop(key, None)
    if text is None:
        return default
    try:
        return int(text, 0)
    except ValueError:
        raise InvalidArgument(f"device option {key}={text!r} is not a number") from None


def no_more(name: str, options: dict[str, str]) -> None:
    """Refuse options a factory did not take."""
    if options:
        raise InvalidArgument(f"{name} takes no option {', '.join(sorted(options))}")


def _isa_debug_exit(options: dict[str, str]) -> Device:
    port = int_option(options, "iobase", 0x501)
    size = int_option(options, "iosize", 2)
    no_more("isa-debug-exit", options)
    if not 0 <= port <= 0xFFFF or size not in (1, 2, 4):
        raise InvalidArgument("isa-debug-exit needs iobase in 0..0xffff and iosize 1, 2 or 4")
    return IsaDebugExit(port)


register("isa-debug-exit", _isa_debug_exit, "QEMU's isa-debug-exit (iobase=, iosize=)")


# -- the PC machine's devices (pyhv.machines.PC puts PCI ones on its bus) ----------------------
def _pci_options(device: Device, options: dict[str, str], name: str) -> Device:
    """QEMU's common PCI device options: ``addr=SLOT[.FN]`` (function 0 only) and ``id=``."""
    addr = options.pop("addr", None)
    if addr is not None:
        slot_text, _, function = addr.partition(".")
        try:
            slot = int(slot_text, 16)
        except ValueError:
            raise InvalidArgument(f"{name}: addr={addr!r} is not a PCI slot") from None
        if function not in ("", "0") or not 2 <= slot < 32:
            raise InvalidArgument(f"{name}: addr={addr!r}: slots 02-1f, function 0")
        device.slot = slot  # type: ignore[attr-defined]
    _id_option(device, options)
    no_more(name, options)
    return device


def _id_option(device: Device, options: dict[str, str]) -> None:
    ident = options.pop("id", None)
    if ident is not None:
        if not ident or not ident.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise InvalidArgument(f"device id {ident!r}: letters, digits, - _ . only")
        device.name = ident


def _pc_testdev(options: dict[str, str]) -> Device:
    from .pc_testdev import PcTestdev
    device = PcTestdev()
    _id_option(device, options)
    no_more("pc-testdev", options)
    return device


def _pci_testdev(options: dict[str, str]) -> Device:
    from .pci_testdev import PciTestdev
    return _pci_options(PciTestdev(), options, "pci-testdev")


def _edu(options: dict[str, str]) -> Device:
    from .edu import DMA_MASK, Edu
    mask = int_option(options, "dma_mask", DMA_MASK)
    if not 0 < mask < 1 << 64:
        raise InvalidArgument("edu: dma_mask must be a positive 64-bit mask")
    return _pci_options(Edu(dma_mask=mask), options, "edu")


register("pc-testdev", _pc_testdev, "QEMU's ISA test device (ports 0xe0-0xeb, IRQ lines at "
         "0x2000, iomem at 0xff000000)")
register("pci-testdev", _pci_testdev, "QEMU's PCI test device 1b36:0005 (addr=, id=)")
register("edu", _edu, "QEMU's educational PCI device 1234:11e8 (dma_mask=, addr=, id=)")
