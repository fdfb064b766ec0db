"""The interrupt half of :class:`pyhv.Partition`'s API, for partitions made with
``irqchip=True`` (and ``pit=True``): interrupt lines, MSIs, GSI routes, and the PICs and PIT
as PC firmware leaves them.  Every method is safe from any thread."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from .._native import VmFd
from .._native.vm import CHIPS
from ..errors import InvalidArgument, StateError
from .memory import as_int


class InterruptControl:
    """Mixed into :class:`pyhv.Partition`, which provides ``_vm``, ``irqchip``, ``pit`` and
    ``_require_open``."""

    _vm: VmFd
    irqchip: bool
    pit: bool
    _require_open: Callable[[], None]

    def set_irq(self, line: int, level: bool) -> None:
        """Drive interrupt ``line`` (ISA IRQ 0-15 on the PIC, or an IOAPIC pin up to 23) of
        the in-kernel irqchip high or low.  Safe from any thread."""
        self._require_open()
        if not self.irqchip:
            raise StateError("set_irq needs a partition made with irqchip=True")
        line = as_int("line", line)
        if not 0 <= line < 24:
            raise InvalidArgument(f"interrupt line {line} is not 0..23")
        self._vm.irq_line(line, level)

    def pulse_irq(self, line: int) -> None:
        """Raise and lower ``line``: one edge for an edge-triggered (ISA) interrupt."""
        self.set_irq(line, True)
        self.set_irq(line, False)

    def signal_msi(self, address: int, data: int) -> bool:
        """Send a message-signalled interrupt to the in-kernel LAPICs (``KVM_SIGNAL_MSI``):
        ``address`` 0xFEE00000 | destination APIC ID << 12, ``data`` the vector (and
        delivery mode << 8).  True when a LAPIC took it, False when the guest blocked it.
        Safe from any thread."""
        if not self.irqchip:
            raise StateError("signal_msi needs a partition made with irqchip=True")
        address, data = as_int("address", address), as_int("data", data)
        if not 0 <= address < 1 << 64 or not 0 <= data < 1 << 32:
            raise InvalidArgument(f"MSI address {address:#x} / data {data:#x} out of range")
        self._require_open()
        return self._vm.signal_msi(address, data)

    def set_gsi_routing(self, routes: Iterable[tuple[int, str, int]]) -> None:
        """Route the irqchip's interrupt lines (GSIs, as :meth:`set_irq` drives them) to chip
        pins, replacing KVM's default (GSI n to PIC and IOAPIC pin n): ``(gsi, chip, pin)``
        with chip ``"pic_master"``, ``"pic_slave"`` or ``"ioapic"``.  A PC routes GSI 0 (the
        PIT) to IOAPIC pin 2, as its ACPI tables then say."""
        if not self.irqchip:
            raise StateError("set_gsi_routing needs a partition made with irqchip=True")
        table = []
        for gsi, chip, pin in routes:
            if chip not in CHIPS:
                raise InvalidArgument(f"irqchip {chip!r}: choose one of {', '.join(CHIPS)}")
            gsi, pin = as_int("gsi", gsi), as_int("pin", pin)
            if not 0 <= gsi < 1024 or not 0 <= pin < (24 if chip == "ioapic" else 8):
                raise InvalidArgument(f"route GSI {gsi} to {chip} pin {pin}: out of range")
            table.append((gsi, CHIPS[chip], pin))
        self._require_open()
        self._vm.set_gsi_routing(table)

    def set_pit_reinject(self, reinject: bool) -> None:
        """Whether the in-kernel PIT makes up for ticks the guest missed (KVM's default, QEMU's
        ``lost_tick_policy=delay``) or drops them (``discard``)."""
        if not self.pit:
            raise StateError("set_pit_reinject needs a partition made with pit=True")
        self._require_open()
        self._vm.pit_reinject(bool(reinject))

    def init_legacy_chips(self, vectors: tuple[int, int] = (0x08, 0x70),
                          unmasked: Iterable[int] = (0, 1, 2, 8),
                          level_triggered: Iterable[int] = (), timer: bool = True) -> None:
        """Put the in-kernel PICs (and PIT) in the state PC firmware leaves them for the
        OS: initialized with these vector bases (master, slave), the ISA IRQs ``unmasked``
        open, ``level_triggered`` ones so in the ELCR, and with ``timer`` (and the in-kernel
        PIT) channel 0 ticking at 18.2 Hz in mode 3."""
        if not self.irqchip:
            raise StateError("init_legacy_chips needs a partition made with irqchip=True")
        master, slave = (as_int("vector base", v) for v in vectors)
        if master % 8 or slave % 8 or not 0 <= master < 256 or not 0 <= slave < 256:
            raise InvalidArgument(f"PIC vector bases {vectors!r}: multiples of 8 below 256")
        masks = []
        for irqs in (unmasked, level_triggered):
            bits = 0
            for irq in irqs:
                if not 0 <= as_int("ISA IRQ", irq) < 16:
                    raise InvalidArgument(f"ISA IRQ {irq} is not 0..15")
                bits |= 1 << irq
            masks.append(bits)
        self._require_open()
        self._vm.firmware_chips(master, slave, masks[0], masks[1], timer and self.pit)
