"""Hyper-V's part in ``pyhv run``: ``--cpu MODEL,hv-FEATURE,...`` as QEMU spells it.

``pyhv run`` hands the ``hv-*``/``hv_*`` entries of ``--cpu`` over as ``args.cpu_hyperv``;
where the ``pyhv run`` in use has no ``--cpu`` of its own yet, this extension adds a minimal
one (the model and non-Hyper-V entries are accepted and ignored: the guest gets the host's
CPUID), and the same for ``--device`` so that ``--device hyperv-testdev`` works.

>>> import argparse
>>> from pyhv.hyperv.run_extension import HyperVRunExtension, hyperv_entries
>>> hyperv_entries("host,hv_passthrough,+x2apic")
['hv_passthrough']
>>> parser, extension = argparse.ArgumentParser(), HyperVRunExtension()
>>> extension.add_arguments(parser)
>>> args = parser.parse_args(["--cpu", "host,hv-time,hv-vpindex"])
>>> extension.entries(args)
['hv-time', 'hv-vpindex']
"""

from __future__ import annotations

import argparse

from ..devices import registry
from ..errors import HypervisorError, InvalidArgument
from ..partition import Partition
from .device import HyperV
from .features import Enlightenments

IRQCHIP_FEATURES = ("synic", "stimer", "stimer-direct", "vapic", "ipi")


def hyperv_entries(cpu: str | None) -> list[str]:
    """The ``hv-*``/``hv_*`` entries of a QEMU ``-cpu`` value."""
    if not cpu:
        return []
    return [item.strip() for item in cpu.split(",")
            if item.strip().startswith(("hv-", "hv_"))]


class HyperVRunExtension:
    """Adds ``--cpu`` (and ``--device``) where ``pyhv run`` lacks them; before the run,
    attaches :class:`HyperV` with the ``hv-*`` entries, and the devices named."""

    def __init__(self) -> None:
        self.own_cpu = False
        self.own_device = False

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        try:
            parser.add_argument("--cpu", default=None, metavar="MODEL[,FEATURE...]",
                                help="QEMU's -cpu: the hv-* entries enable Hyper-V "
                                     "enlightenments (hv-passthrough: all pyhv has)")
            self.own_cpu = True
        except argparse.ArgumentError:
            self.own_cpu = False      # pyhv run has its own --cpu: it fills args.cpu_hyperv
        try:
            parser.add_argument("--device", action="append", default=None,
                                metavar="NAME[,opt=val...]",
                                help="a device by QEMU's -device name (e.g. hyperv-testdev)")
            self.own_device = True
        except argparse.ArgumentError:
            self.own_device = False

    def entries(self, args: argparse.Namespace) -> list[str]:
        found = getattr(args, "cpu_hyperv", None)
        if found is not None:
            return list(found)
        return hyperv_entries(getattr(args, "cpu", None) if self.own_cpu else None)

    def before_run(self, args: argparse.Namespace, partition: Partition) -> None:
        entries = self.entries(args)
        if entries:
            try:
                enlightenments = Enlightenments.parse(entries)
            except InvalidArgument as exc:
                raise HypervisorError(f"--cpu: {exc}") from None
            needs = [f for f in IRQCHIP_FEATURES if f in enlightenments]
            if needs and not partition.irqchip:
                raise HypervisorError(f"--cpu ...,hv-{needs[0]} needs the in-kernel irqchip: "
                                      "add --irqchip")
            partition.attach(HyperV(enlightenments))
        if self.own_device:
            for spec in getattr(args, "device", None) or []:
                partition.attach(registry.create(spec))


EXTENSION = HyperVRunExtension()
