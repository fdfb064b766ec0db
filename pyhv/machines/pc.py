"""The PC machine: a :class:`pyhv.Partition` with what QEMU's ``pc`` machine gives a
``-kernel`` guest, as one object.

>>> import pyhv
>>> from pyhv.machines import PC
>>> from pyhv.testing import assemble
>>> with PC(memory="16M", cpus=2, serial=None) as pc:       # serial=None: kept in pc.uart
...     _ = pc.load(assemble("mov $'A', %al; mov $0x3f8, %dx; out %al, %dx; cli; hlt",
...                          origin=0x100000), format="flat")
...     result = pc.run(timeout=60)
...     result.exit, bytes(pc.uart.transmitted), len(pc.vcpus)
(Halt(rip=0x100009), b'A', 2)

What it is made of (see ``docs/pc.md`` for the table next to QEMU's):

- the in-kernel irqchip (PIC, IOAPIC, a LAPIC per vCPU) and PIT, with QEMU's GSI routing
  (the PIT's GSI 0 on IOAPIC pin 2); ``irqchip=False`` for bare experiments (one vCPU, no
  LAPIC, no PIT: ``hlt`` then ends the run);
- COM1 (16550A), the i8042 (reset), the CMOS clock with alarm and UIP (:class:`PcRtc`),
  fw_cfg, QEMU's isa-debug-exit at 0xF4;
- ACPI: RSDP, RSDT, XSDT, FADT, FACS, MADT, DSDT in the BIOS area; the PM registers at 0x600
  (PM timer at 0x608), S3 suspend and resume through the FACS waking vector when the RTC
  alarm fires, S5 power-off;
- PCI: the i440FX host bridge, PIIX3 and PIIX4 PM functions, and the devices given in
  ``devices`` (objects, or QEMU ``-device`` strings such as ``"edu"`` or
  ``"isa-debug-exit,iobase=0x501"``), their BARs placed as firmware would;
- the CPU model ``cpu`` (QEMU's ``-cpu`` syntax, default ``qemu64`` as QEMU's): the CPUID
  each vCPU gets; its ``hv-*`` entries attach :class:`pyhv.hyperv.HyperV` with those
  enlightenments once :meth:`load` has made the vCPUs (:attr:`hyperv` is that device).

:meth:`load` loads an image (flat, ELF, multiboot, Linux) and makes the vCPUs: the boot
processor in the state the format promises, the others waiting for INIT/SIPI in their LAPICs.
:meth:`run` runs them all until the machine ends; a machine halted for good (every vCPU halted
with interrupts off, nothing to wake it) ends as a :class:`pyhv.exits.Halt`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Iterable
from typing import Any

from .. import devices as pyhv_devices
from .._native import Feature
from .._native.vcpu import STATE_DEBUGREGS, STATE_MAX_MSRS, STATE_XCRS
from ..core.buses import EndRun
from ..core.hypervisor import Hypervisor
from ..core.loop import RunResult, validate_timeout
from ..core.vcpu import VCpu
from ..devices import registry
from ..devices.acpi import PowerManagement, build_tables
from ..devices.base import Device
from ..devices.pc_rtc import PcRtc
from ..devices.pci import PciBus, PciDevice
from ..errors import InvalidArgument, OverlapError, StateError, Timeout
from ..exits import Canceled, Exit, Reset, SystemEvent
from ..hyperv import Enlightenments, HyperV
from ..loaders import BootImage
from ..loaders import load as load_image
from ..partition import Partition
from ..x86 import cpu_models
from ..x86.cpuid import CpuidEntry, for_vcpu
from ..x86.modes import initial_state
from ..x86.registers import DescriptorTable

log = logging.getLogger("pyhv")

__all__ = ["PC", "QEMU_GSI_ROUTES"]

ACPI_BASE = 0xE0000          # the tables sit in the BIOS area (reserved in the memory map)
ACPI_END = 0x100000
DEFAULT_MEMORY = "128M"      # QEMU's default
# QEMU's routes with the in-kernel irqchip: GSIs 0-15 to the PICs (not the cascade, 2) and
# GSIs 0-23 to the IOAPIC, GSI 0 (the PIT) on pin 2
QEMU_GSI_ROUTES: tuple[tuple[int, str, int], ...] = tuple(
    [(gsi, "pic_master", gsi) for gsi in range(8) if gsi != 2] +
    [(gsi, "pic_slave", gsi - 8) for gsi in range(8, 16)] +
    [(gsi, "ioapic", 2 if gsi == 0 else gsi) for gsi in range(24) if gsi != 2])
FACS_WAKING_VECTOR = 12


class PC:
    """A PC (see the module docstring).  ``serial``: where COM1's output goes (a callable
    taking bytes or a binary stream; None keeps it in ``uart.transmitted``).  ``debug_exit``:
    the isa-debug-exit port (None for none).  ``pit_reinject=False`` makes the PIT drop the
    ticks a guest missed (QEMU's ``kvm-pit.lost_tick_policy=discard``).  Use it as a context
    manager, or :meth:`close`.
    """

    def __init__(self, memory: int | str = DEFAULT_MEMORY, cpus: int = 1, cpu: str = "qemu64",
                 devices: Iterable[Device | str] = (), *, irqchip: bool = True,
                 pit: bool = True, pit_reinject: bool = True, serial: Any = None,
                 debug_exit: int | None = 0xF4, hypervisor: Hypervisor | None = None) -> None:
        if isinstance(cpus, bool) or not isinstance(cpus, int) or cpus < 1:
            raise InvalidArgument(f"cpus={cpus!r}: a PC has at least one vCPU")
        if cpus > 1 and not irqchip:
            raise InvalidArgument("more than one vCPU needs the in-kernel irqchip (their "
                                  "LAPICs start them)")
        if pit and not irqchip:
            pit = False                       # the in-kernel PIT needs the irqchip
        self.image: BootImage | None = None
        self._initial: list[tuple[VCpu, bytes]] | None = None   # the vCPUs' reset states
        self._cpuid: list[CpuidEntry] | None = None
        self.missing_features: list[str] = []
        self.cpu_model = cpu_models.parse(cpu)
        self.hyperv: HyperV | None = None
        self._enlightenments = (Enlightenments.parse(self.cpu_model.hyperv)   # refused early
                                if self.cpu_model.hyperv else None)
        self.cpus = cpus
        devices = list(devices)              # strings are parsed before anything is made
        specs = [registry.create(d) if isinstance(d, str) else d for d in devices]
        self.partition = Partition(memory=memory, hypervisor=hypervisor, irqchip=irqchip,
                                   pit=pit, halt_watch=irqchip)
        try:
            limit = self.partition.hypervisor.capability(Feature.MAX_VCPUS) or 1
            if cpus > limit:
                raise InvalidArgument(f"cpus={cpus}: KVM allows {limit} vCPUs per partition")
            if not self.partition.memory.is_ram(ACPI_BASE, ACPI_END - ACPI_BASE):
                raise InvalidArgument("a PC needs at least 1 MiB of RAM (its tables sit below)")
            self._build(cpus, irqchip, serial, debug_exit, pit_reinject)
            for device in specs:
                self.add_device(device)
        except BaseException:
            self.close()
            raise

    # -- building ---------------------------------------------------------------------------
    def _build(self, cpus: int, irqchip: bool, serial: Any, debug_exit: int | None,
               pit_reinject: bool) -> None:
        part = self.partition
        part.ignore_unclaimed_ports()        # an empty ISA bus, as real kernels probe it
        if irqchip:
            part.set_gsi_routing(QEMU_GSI_ROUTES)
            # what SeaBIOS leaves for a -kernel guest: PICs at vectors 8 and 0x70 with the
            # timer, keyboard, cascade and RTC open, the PCI/SCI IRQs level-triggered, and the
            # PIT ticking at 18.2 Hz (guests written for QEMU wait on it)
            part.init_legacy_chips((0x08, 0x70), unmasked=(0, 1, 2, 8),
                                   level_triggered=(9, 10, 11))
        if part.pit and not pit_reinject:
            part.set_pit_reinject(False)
        self.uart = pyhv_devices.Uart16550(serial, buffered=cpus == 1)
        self.rtc = PcRtc()
        self.pm = PowerManagement()
        self.bus = PciBus()
        self.bus.on_reset = self._pci_reset
        self.debug_exit = None if debug_exit is None else pyhv_devices.IsaDebugExit(debug_exit)
        for device in (self.uart, pyhv_devices.I8042(), self.rtc, pyhv_devices.FwCfg(cpus=cpus),
                       self.debug_exit, self.pm, self.bus):
            if device is not None:
                part.attach(device)
        self.acpi = build_tables(cpus, ACPI_BASE) if irqchip else None
        if self.acpi is not None:
            part.memory.write(ACPI_BASE, self.acpi.image)
        self._pci_devices: list[PciDevice] = []
        self._assigned = False

    def _pci_reset(self) -> None:
        raise EndRun(Reset(source="PCI reset control (port 0xcf9)"))

    def add_device(self, device: Device | str) -> Device:
        """Add a device before the run: a :class:`pyhv.devices.Device` (PCI ones go on the
        bus, in the next free slot unless ``device.slot`` names one) or a QEMU ``-device``
        string (see :mod:`pyhv.devices.registry`)."""
        if isinstance(device, str):
            device = registry.create(device)
        if not isinstance(device, Device):
            raise InvalidArgument(f"{device!r} is neither a pyhv.devices.Device nor a -device "
                                  "string")
        if self._initial is not None:
            raise StateError("devices are added before the PC first runs")
        if isinstance(device, pyhv_devices.IsaDebugExit) and self.debug_exit is not None \
                and device.port == self.debug_exit.port:
            return self.debug_exit           # the default one is already there
        if isinstance(device, PciDevice):
            if self._assigned:
                raise StateError("PCI devices are added before the PC loads its image")
            self.bus.plug(device, getattr(device, "slot", None))
            self._name(device)
            self.partition.attach(device)
            self._pci_devices.append(device)
            return device
        self._name(device)
        try:
            return self.partition.attach(device)
        except OverlapError as exc:
            raise OverlapError(f"device {device.name!r}: {exc}") from None

    def _name(self, device: Device) -> None:
        """A second device of a kind gets a name of its own (snapshots key states by name)."""
        base, n = device.name, 1
        while device.name in self.partition.devices:
            device.name = f"{base}.{n}"
            n += 1

    @property
    def vcpus(self) -> tuple[VCpu, ...]:
        return self.partition.vcpus

    @property
    def devices(self) -> dict[str, Device]:
        return self.partition.devices

    # -- loading ----------------------------------------------------------------------------
    def cpuid(self) -> list[CpuidEntry]:
        """The CPUID table of the CPU model (before per-vCPU APIC IDs); features KVM cannot
        give are dropped and listed in :attr:`missing_features`."""
        if self._cpuid is None:
            supported = self.partition.hypervisor.supported_cpuid()
            self._cpuid, self.missing_features = self.cpu_model.cpuid(
                supported, irqchip=self.partition.irqchip)
        return self._cpuid

    def load(self, image: str | os.PathLike[str] | bytes, format: str = "auto", *,
             cmdline: str = "", initrd: str | os.PathLike[str] | bytes | None = None,
             address: int | None = None, mode: str | None = None) -> BootImage:
        """Load ``image`` (see :func:`pyhv.loaders.load`) and make the vCPUs: the boot
        processor as the format says, the others waiting for INIT/SIPI.  Once per PC."""
        if self.image is not None:
            raise StateError("this PC has loaded its image already")
        table = self.cpuid()
        write_bios_data(self.partition.memory)   # the image may overwrite it: it comes first
        if not self._assigned:
            self.bus.assign_resources()      # what firmware does before the OS
            self._assigned = True
        loaded = load_image(self.partition, image, format, cmdline=cmdline, initrd=initrd,
                            address=address, mode=mode)
        for gpa, size, what in loaded.regions:
            for start, end in self.acpi.ranges() if self.acpi is not None else ():
                if gpa < end and start < gpa + size:
                    raise InvalidArgument(f"the image's {what} [{gpa:#x}, {gpa + size:#x}) "
                                          f"overlaps the PC's ACPI tables [{start:#x}, "
                                          f"{end:#x})")
        loaded.create_vcpu(self.partition, cpuid=for_vcpu(table, 0))
        for i in range(1, self.cpus):        # application processors wait for a SIPI
            self.partition.create_vcpu(mode="real", entry=0, stack=0x1000,
                                       cpuid=for_vcpu(table, i))
        if self._enlightenments is not None:
            self.hyperv = HyperV(self._enlightenments)
            self.partition.attach(self.hyperv)
        self.image = loaded
        return loaded

    # -- running ----------------------------------------------------------------------------
    def run(self, timeout: float | None = None) -> RunResult:
        """Run every vCPU until the machine ends: a debug-exit, reset, power-off, triple
        fault, an exit nobody handles, or a halt for good.  An S3 suspend waits for the RTC
        alarm (when the guest armed it and enabled it as a wake source) and resumes at the
        FACS waking vector; one nothing can wake ends the run with the
        ``SystemEvent("suspend")``.  Past ``timeout`` seconds, :class:`pyhv.Timeout`."""
        timeout = validate_timeout(timeout)
        if self.image is None:
            raise StateError("load() an image before running the PC")
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._initial is None:
            self._initial = self._reset_states()
        started = time.perf_counter()
        handled = 0
        while True:
            left = None if deadline is None else max(deadline - time.monotonic(), 1e-3)
            part = self.partition
            results = part.run_all(timeout=left) if len(part.vcpus) > 1 else [
                part.run(timeout=left)]
            handled += sum(r.exits_handled for r in results)
            final = _final(results)
            if isinstance(final, SystemEvent) and final.kind == "suspend":
                woke = self._suspend(deadline)
                if woke is True:
                    continue
                final = woke or final
            return RunResult(final, handled, time.perf_counter() - started,
                             results[0].vcpu)

    def _reset_states(self) -> list[tuple[VCpu, bytes]]:
        """Each vCPU's state before the first run (the boot processor's is replaced by a
        real-mode one at resume): what an S3 resume starts them from."""
        part = self.partition
        vcpus = part.vcpus
        caps = part.hypervisor.capability
        optional = (STATE_XCRS if caps(Feature.XCRS) else 0) | (
            STATE_DEBUGREGS if caps(Feature.DEBUGREGS) else 0)
        msrs = vcpus[0].restorable_msrs(part.hypervisor.msr_index_list())[:STATE_MAX_MSRS]
        return [(v, v.save_state(msrs, optional)) for v in vcpus]

    def _suspend(self, deadline: float | None) -> bool | Exit | None:
        """S3: wait for the wake-up; True once the vCPUs are reset to resume, None when
        nothing can wake the machine, or the exit that ends it instead."""
        wake_at = self.rtc.next_alarm() if (self.rtc.alarm_interrupts and
                                            self.pm.rtc_wake_enabled) else None
        if wake_at is None:
            log.info("S3 with no wake-up armed: the machine sleeps for good")
            return None
        delay = wake_at - self.rtc.now()
        if deadline is not None and time.monotonic() + delay > deadline:
            time.sleep(max(deadline - time.monotonic(), 0))
            raise Timeout(self.vcpus[0], self.vcpus[0].read_registers(), 0.0, 0)
        if delay > 0:
            time.sleep(delay)
        self.pm.woke(by_rtc=True)
        return self._resume()

    def _resume(self) -> bool | Exit:
        """Every vCPU back to its reset state, the boot processor in real mode at the FACS
        waking vector (CS = vector >> 4); True, or a Reset when the OS left no real-mode
        vector (firmware would then boot again, which pyhv does not)."""
        assert self._initial is not None and self.acpi is not None
        vector = self.partition.memory.read_u32(self.acpi.addresses["FACS"] +
                                                FACS_WAKING_VECTOR)
        if not 0 < vector < 0x100000:
            return Reset(source=f"S3 resume with no real-mode waking vector ({vector:#x})")
        for vcpu, blob in self._initial:
            vcpu.load_state(blob)
        bsp = self._initial[0][0]
        sregs = dataclasses.replace(bsp.get_sregs(), idt=DescriptorTable(0, 0xFFFF),
                                    gdt=DescriptorTable(0, 0xFFFF))
        start = initial_state("real", 0, self.partition.setup_base, entry=vector,
                              stack=vector, reset=sregs)
        segment = dataclasses.replace(start.sregs.cs, selector=vector >> 4,
                                      base=vector & ~0xF)
        bsp.set_sregs(dataclasses.replace(start.sregs, cs=segment))
        bsp.write_registers({"rip": vector & 0xF, "rsp": start.regs.rsp,
                             "rflags": start.regs.rflags})
        log.info("S3 resume: boot processor at the waking vector %#x", vector)
        return True

    def close(self) -> None:
        """Stop the RTC's interrupt thread and close the partition (idempotent)."""
        rtc = getattr(self, "rtc", None)
        if rtc is not None:
            rtc.close()
        part = getattr(self, "partition", None)
        if part is not None:
            part.close()

    def __enter__(self) -> PC:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<pyhv.machines.PC {self.cpus} vCPU(s) cpu={self.cpu_model.spec} "
                f"{len(self.partition.devices)} devices>")


# real-mode interrupt handlers in the BIOS area (F000:FF00...): what the IVT points at
BIOS_STUBS = 0xFFF00
IRET, MASTER_EOI, SLAVE_EOI = 0x00, 0x10, 0x20
STUB_CODE = {IRET: bytes([0xCF]),                                   # iret
             MASTER_EOI: bytes.fromhex("50 b0 20 e6 20 58 cf"),    # EOI to the master PIC
             SLAVE_EOI: bytes.fromhex("50 b0 20 e6 a0 e6 20 58 cf")}  # to both PICs
EBDA_SEGMENT, BASE_MEMORY_KIB = 0x9FC0, 639


def write_bios_data(memory: Any) -> None:
    """The real-mode interrupt vector table and BIOS data area as PC firmware leaves them:
    every vector at an ``iret`` (the PICs' IRQ vectors 8-15 and 0x70-0x77 at handlers that
    send the EOI first), COM1's port, the base memory size and the EBDA's segment."""
    for offset, code in STUB_CODE.items():
        memory.write(BIOS_STUBS + offset, code)
    ivt = bytearray()
    for vector in range(256):
        stub = MASTER_EOI if 0x08 <= vector < 0x10 else SLAVE_EOI if 0x70 <= vector < 0x78 \
            else IRET
        ivt += ((BIOS_STUBS & 0xFFFF) + stub).to_bytes(2, "little") + (0xF000).to_bytes(
            2, "little")
    memory.write(0, bytes(ivt))
    bda = bytearray(0x100)
    bda[0x00:0x02] = (0x3F8).to_bytes(2, "little")                  # COM1
    bda[0x0E:0x10] = EBDA_SEGMENT.to_bytes(2, "little")
    bda[0x10:0x12] = (0x0200).to_bytes(2, "little")                 # equipment: one serial port
    bda[0x13:0x15] = BASE_MEMORY_KIB.to_bytes(2, "little")
    memory.write(0x400, bytes(bda))
    memory.write(EBDA_SEGMENT << 4, b"\x01")                       # the EBDA's size: 1 KiB


def _final(results: list[RunResult]) -> Exit:
    """The exit that ended the machine: the first that is not a cancel (the others were
    stopped because of it)."""
    return next((r.exit for r in results if not isinstance(r.exit, Canceled)), results[0].exit)

