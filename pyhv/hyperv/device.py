""":class:`HyperV`: the TLFS guest interface of a partition, served from user space.

It is a device of the partition (``part.attach(HyperV(...))``): it owns the synthetic MSR
range 0x40000000-0x400000FF on pyhv's MSR bus (KVM's MSR filter sends every access there
to user space; what is not implemented or not enabled raises #GP, on any KVM), the two
ports of the hypercall page, the Hyper-V CPUID leaves of every vCPU, and its whole state
joins the partition's snapshots under the name ``"hyperv"``.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .. import exits
from .._native import Feature
from ..core.buses import EndRun, Handler, RefuseAccess
from ..core.lifecycle import PartitionState
from ..core.memory import PAGE_SIZE
from ..core.vcpu import VCpu
from ..devices.base import Device
from ..errors import ClosedError, HypervisorError, InvalidArgument, StateError
from ..partition import Partition
from ..x86.cpuid import CpuidEntry
from ..x86.registers import GENERAL_REGISTERS
from . import ipi, kvmio, lapic, tlfs
from .clock import ReferenceClock
from .connections import Connections, check_sint
from .cpuid import hyperv_leaves, with_hyperv
from .features import Enlightenments
from .hypercalls import (
    HYPERCALL_PORT,
    Hypercall,
    HypercallFailed,
    HypercallHandler,
    decode_control,
    page_code,
    result,
    run_handler,
)
from .stimer import SyntheticTimers, TimerScheduler
from .synic import PostResult, Refused, SynIC, WaitingMessage, message_bytes

if TYPE_CHECKING:
    from ..devices.host import DeviceHost

__all__ = ["HyperV", "HypercallFailed", "VpState"]

log = logging.getLogger("pyhv.hyperv")

MSR_TSC = 0x10
MSR_APIC_BASE = 0x1B
APIC_BASE_X2APIC = 1 << 10
RFLAGS_IOPL = 3 << 12
FEATURE_OF_SYNIC = range(tlfs.HV_X64_MSR_SCONTROL, tlfs.HV_X64_MSR_SINT0 + tlfs.SINT_COUNT)
STIMER_MSRS = range(tlfs.HV_X64_MSR_STIMER0_CONFIG,
                    tlfs.HV_X64_MSR_STIMER0_CONFIG + 2 * tlfs.STIMER_COUNT)


@dataclasses.dataclass(eq=False)
class VpState:
    """One vCPU's part: its SynIC and timers, and the APIC-access MSRs' values."""

    vcpu: VCpu
    synic: SynIC
    timers: SyntheticTimers
    vp_assist: int = 0
    icr: int = 0
    runtime_base: int = 0        # VP_RUNTIME counted before a restore (100 ns units)


class HyperV(Device):
    """Hyper-V enlightenments for a partition: ``features`` names them as QEMU's ``-cpu``
    does (``"hv-time,hv-synic,..."``, default ``"hv-passthrough"``: all pyhv implements; see
    :mod:`pyhv.hyperv.features`).  The hypercall page's code writes to port
    ``hypercall_port`` from 64-bit code and ``hypercall_port + 1`` from 32-bit code (both
    must be free on the partition's port bus; see :mod:`pyhv.hyperv.hypercalls`).

    Attach it once the vCPUs exist (vCPUs made later need :meth:`enlighten`); the SynIC,
    synthetic timers, APIC-access MSRs and IPIs need ``Partition(irqchip=True)``::

        part = pyhv.Partition(memory="64M", irqchip=True)
        cpu = part.create_vcpu(mode="long", entry=0x1000)
        hv = part.attach(pyhv.HyperV("hv-passthrough"))

    From Python: :meth:`on_hypercall` serves any hypercall code, :meth:`post_message` and
    :meth:`signal_event` reach the guest's SynIC, :meth:`add_message_connection` and
    :meth:`add_event_connection` give the guest's HvPostMessage and HvSignalEvent a
    destination.  In a typed run (``cpu.run()``) hand each exit to :meth:`handle`.
    """

    name = "hyperv"

    def __init__(self, features: str | Iterable[str] | Enlightenments = "hv-passthrough", *,
                 hypercall_port: int = HYPERCALL_PORT) -> None:
        if not isinstance(features, (Enlightenments, str, list, tuple, set, frozenset)):
            raise InvalidArgument(f"features must be a string of QEMU flags, a list of them "
                                  f"or an Enlightenments, not {features!r}")
        self.enlightenments = (features if isinstance(features, Enlightenments)
                               else Enlightenments.parse(features))
        hypercall_port = _int("hypercall_port", hypercall_port)
        page_code(hypercall_port)                   # checks the port
        self.hypercall_port = hypercall_port
        self.lock = threading.RLock()
        self.clock = ReferenceClock(None)
        self.guest_os_id = 0
        self.hypercall_msr = 0
        self.reference_tsc_msr = 0
        self.tsc_sequence = 1
        self.crash_params = [0] * 5
        self.connections = Connections(self._synic_or_none, self.lock)
        self.hypercalls_served = 0
        self._handlers: dict[int, tuple[HypercallHandler, bool]] = {}
        self._vps: dict[int, VpState] = {}
        self._part: Partition | None = None
        self._registered: list[Handler] = []
        self.scheduler: TimerScheduler | None = None
        if "synic" in self.enlightenments:
            self.on_hypercall(tlfs.HVCALL_POST_MESSAGE, self.connections.post_message_call)
            self.on_hypercall(tlfs.HVCALL_SIGNAL_EVENT, self.connections.signal_event_call)
        if "ipi" in self.enlightenments:
            self.on_hypercall(tlfs.HVCALL_SEND_IPI,
                              lambda call: ipi.send_ipi_call(call, self._vps, self._send_vector))
            self.on_hypercall(tlfs.HVCALL_SEND_IPI_EX,
                              lambda call: ipi.send_ipi_ex_call(call, self._vps,
                                                                self._send_vector))
        self.on_hypercall(tlfs.HVCALL_NOTIFY_LONG_SPIN_WAIT, lambda call: None)

    def __repr__(self) -> str:
        return f"<pyhv.HyperV {self.enlightenments.describe() or 'hypercalls only'}>"

    # -- attaching ------------------------------------------------------------------------
    def attach(self, partition: DeviceHost) -> None:
        if not isinstance(partition, Partition):
            raise InvalidArgument("HyperV attaches to a pyhv.Partition")
        if self._part is not None:
            raise StateError("this HyperV is attached to a partition already")
        needs_irqchip = {"synic", "stimer", "vapic", "ipi"} & self.enlightenments.features
        if needs_irqchip and not partition.irqchip:
            raise InvalidArgument(f"hv-{', hv-'.join(sorted(needs_irqchip))} need(s) the "
                                  "in-kernel irqchip: Partition(irqchip=True)")
        for vcpu in partition.vcpus:
            if vcpu.running_thread is not None:
                raise StateError(f"{vcpu!r} is running: attach Hyper-V before the run")
            self._check_leaves(vcpu)
        self._part = partition
        tables = {vcpu: vcpu.get_cpuid() for vcpu in partition.vcpus}
        try:
            self._registered.append(partition.add_msr_handler(
                tlfs.SYNTHETIC_MSRS, read=self._bus_read, write=self._bus_write))
            if "crash" in self.enlightenments:
                self._registered.append(partition.add_msr_handler(
                    tlfs.CRASH_MSRS, read=self._bus_read, write=self._bus_write))
            self._registered.append(partition.add_io_handler(
                range(self.hypercall_port, self.hypercall_port + 2), write=self._bus_hypercall))
            self.scheduler = TimerScheduler(
                ready=lambda: partition.state is PartitionState.RUNNING,
                alive=lambda: not partition.closed)
            for vcpu in partition.vcpus:
                self.enlighten(vcpu)
        except BaseException:
            self._detach()
            for vcpu, table in tables.items():      # the vCPUs as they were
                vcpu.set_cpuid(table)
            self._vps.clear()
            raise

    def _check_leaves(self, vcpu: VCpu) -> None:
        """A vCPU that shows Hyper-V leaves already (restored from a snapshot) must show
        these enlightenments: its guest has seen them."""
        leaves = {e.function: e for e in vcpu.get_cpuid()}
        interface = leaves.get(tlfs.CPUID_INTERFACE)
        if interface is None or interface.eax != tlfs.INTERFACE_HV1:
            return                                   # not enlightened yet
        mine = next(e for e in hyperv_leaves(self.enlightenments, 1)
                    if e.function == tlfs.CPUID_FEATURES)
        theirs = leaves.get(tlfs.CPUID_FEATURES)
        if theirs is None or (theirs.eax, theirs.ebx, theirs.edx) != (mine.eax, mine.ebx,
                                                                      mine.edx):
            raise InvalidArgument(f"{vcpu!r} shows other Hyper-V features than "
                                  f"{self.enlightenments.describe()!r} (restored from a "
                                  "snapshot of other enlightenments?)")

    def _detach(self) -> None:
        part, self._part = self._part, None
        if part is not None and not part.closed:
            for handler in reversed(self._registered):
                part.remove_handler(handler)
        self._registered.clear()
        if self.scheduler is not None:
            self.scheduler.close()

    def close(self) -> None:
        """Stop the synthetic timers' host thread now (it also ends by itself once the
        partition is closed)."""
        if self.scheduler is not None:
            self.scheduler.close()

    def _p(self) -> Partition:
        """The partition this is attached to."""
        if self._part is None:
            raise StateError("HyperV is not attached to a partition: part.attach(hv)")
        return self._part

    def cpuid(self, table: Iterable[CpuidEntry]) -> list[CpuidEntry]:
        """``table`` with the Hyper-V leaves of these enlightenments in place of KVM's
        hypervisor leaves (what :meth:`enlighten` gives a vCPU)."""
        max_vcpus = self._p().hypervisor.capability(Feature.MAX_VCPUS) or 1
        return with_hyperv(table, hyperv_leaves(self.enlightenments, max_vcpus))

    def enlighten(self, vcpu: VCpu) -> None:
        """Give ``vcpu`` (not running) the Hyper-V CPUID leaves and its SynIC and timers;
        :meth:`attach` does it for the vCPUs that exist then."""
        part = self._p()
        if vcpu.partition is not part:
            raise InvalidArgument(f"{vcpu!r} belongs to another partition")
        if vcpu.running_thread is not None:
            raise StateError(f"{vcpu!r} is running")
        vcpu.set_cpuid(self.cpuid(vcpu.get_cpuid()))
        if part.irqchip:
            # KVM maps APIC IDs to vCPUs while a vCPU is being created, before it counts:
            # an MSI to the newest vCPU finds no LAPIC until KVM_SET_LAPIC rebuilds the map
            kvmio.set_lapic(vcpu.fd, kvmio.get_lapic(vcpu.fd))
        with self.lock:
            if not self.clock.started:           # the first vCPU: the clock starts
                self.clock = ReferenceClock(kvmio.tsc_khz(vcpu.fd))
                self.clock.start(vcpu.get_msr(MSR_TSC))
            if vcpu.id not in self._vps:
                self._vps[vcpu.id] = self._new_vp(vcpu)

    def _new_vp(self, vcpu: VCpu) -> VpState:
        vp_index = vcpu.id

        def interrupt(vector: int) -> None:
            self._send_vector(vp_index, vector)

        synic = SynIC(vcpu.id, self._p().memory, interrupt, self.lock)
        assert self.scheduler is not None
        timers = SyntheticTimers(synic, self.clock, self.scheduler,
                                 "stimer-direct" in self.enlightenments)
        return VpState(vcpu, synic, timers)

    def vp(self, vp_index: int) -> VpState:
        """The state of the vCPU with VP index ``vp_index`` (its vCPU id)."""
        state = self._vps.get(vp_index) if isinstance(vp_index, int) else None
        if state is None:
            raise InvalidArgument(f"no enlightened vCPU with VP index {vp_index!r}")
        if self._part is not None and self._part.closed:
            raise ClosedError("the partition is closed")
        return state

    def synic(self, vp_index: int) -> SynIC:
        """The SynIC of VP ``vp_index``."""
        return self.vp(vp_index).synic

    def _synic_or_none(self, vp_index: int) -> SynIC | None:
        state = self._vps.get(vp_index)
        return None if state is None else state.synic

    def _send_vector(self, vp_index: int, vector: int) -> None:
        """A fixed interrupt to VP ``vp_index``'s LAPIC (its APIC ID is its vCPU id)."""
        self._p().signal_msi(lapic.MSI_ADDRESS | vp_index << 12, vector)

    # -- which vCPU an exit came from -----------------------------------------------------
    def _here(self) -> VpState:
        """The vCPU whose exit the calling thread is handling (handlers get no vCPU)."""
        ident = threading.get_ident()
        for state in self._vps.values():
            if state.vcpu.running_thread == ident:
                return state
        for vcpu in self._p().vcpus:
            if vcpu.running_thread == ident:
                raise StateError(f"{vcpu!r} was made after HyperV was attached: call "
                                 "hv.enlighten(cpu) before running it")
        raise HypervisorError("a Hyper-V access outside the run of an enlightened vCPU")

    def _bus_read(self, index: int, size: int) -> int:
        try:
            return self.read_msr(self._here(), index)
        except Refused:
            raise RefuseAccess(index) from None

    def _bus_write(self, index: int, size: int, value: int) -> None:
        try:
            self.write_msr(self._here(), index, value)
        except Refused:
            raise RefuseAccess(index) from None

    def _bus_hypercall(self, port: int, size: int, value: int) -> None:
        self.hypercall(self._here(), long_mode=port == self.hypercall_port)

    def handle(self, vcpu: VCpu, exit: exits.Exit) -> bool:
        """Serve ``exit`` of ``vcpu`` if it is Hyper-V's (a synthetic MSR access or a
        hypercall) in a typed run; whether it was.  Raises :class:`pyhv.EndRun` where the
        guest reset or crashed the machine."""
        if not isinstance(vcpu, VCpu) or vcpu.partition is not self._part:
            raise InvalidArgument(f"{vcpu!r} is not a vCPU of this HyperV's partition")
        state = self.vp(vcpu.id)
        if isinstance(exit, exits.MsrRead) and self._owns_msr(exit.index):
            try:
                value = self.read_msr(state, exit.index)
            except Refused:
                exit.fail()
            else:
                exit.complete(value)
            return True
        if isinstance(exit, exits.MsrWrite) and self._owns_msr(exit.index):
            try:
                self.write_msr(state, exit.index, exit.value)
            except Refused:
                exit.fail()
            except EndRun:
                exit.complete()
                raise
            else:
                exit.complete()
            return True
        if isinstance(exit, exits.IoOut) and exit.port in (self.hypercall_port,
                                                             self.hypercall_port + 1):
            self.hypercall(state, long_mode=exit.port == self.hypercall_port)
            return True
        return False

    def _owns_msr(self, index: int) -> bool:
        return index in tlfs.SYNTHETIC_MSRS or (
            "crash" in self.enlightenments and index in tlfs.CRASH_MSRS)

    # -- synthetic MSRs -------------------------------------------------------------------
    def read_msr(self, vp: VpState, index: int) -> int:
        """What the guest's RDMSR of ``index`` on ``vp`` reads; :class:`Refused` for #GP."""
        hv = self.enlightenments
        self._auto_eoi(vp)
        if index == tlfs.HV_X64_MSR_GUEST_OS_ID:
            return self.guest_os_id
        if index == tlfs.HV_X64_MSR_HYPERCALL:
            return self.hypercall_msr
        if index == tlfs.HV_X64_MSR_VP_INDEX and "vpindex" in hv:
            return vp.vcpu.id
        if index == tlfs.HV_X64_MSR_RESET and "reset" in hv:
            return 0
        if index == tlfs.HV_X64_MSR_VP_RUNTIME and "runtime" in hv:
            return vp.runtime_base + int(vp.vcpu.stats.guest_seconds * 1e7)
        if index == tlfs.HV_X64_MSR_TIME_REF_COUNT and "time" in hv:
            return self._now(vp)
        if index == tlfs.HV_X64_MSR_REFERENCE_TSC and "time" in hv:
            return self.reference_tsc_msr
        if index == tlfs.HV_X64_MSR_TSC_FREQUENCY and "frequencies" in hv:
            if self.clock.tsc_khz is None:
                raise Refused(index)
            return self.clock.tsc_khz * 1000
        if index == tlfs.HV_X64_MSR_APIC_FREQUENCY and "frequencies" in hv:
            return tlfs.APIC_FREQUENCY_HZ
        if "vapic" in hv:
            if index == tlfs.HV_X64_MSR_ICR:
                return vp.icr
            if index == tlfs.HV_X64_MSR_TPR:
                return lapic.get_tpr(vp.vcpu.fd)
            if index == tlfs.HV_X64_MSR_VP_ASSIST_PAGE:
                return vp.vp_assist
        if index in FEATURE_OF_SYNIC and "synic" in hv:
            return vp.synic.read_msr(index)
        if index in STIMER_MSRS and "stimer" in hv:
            return vp.timers.read_msr(index)
        if index in tlfs.CRASH_MSRS and "crash" in hv:
            if index == tlfs.HV_X64_MSR_CRASH_CTL:
                return tlfs.CRASH_NOTIFY              # what the guest may ask for
            return self.crash_params[index - tlfs.HV_X64_MSR_CRASH_P0]
        raise Refused(index)

    def write_msr(self, vp: VpState, index: int, value: int) -> None:
        """Take the guest's WRMSR of ``value`` to ``index`` on ``vp``; :class:`Refused` for
        #GP, :class:`pyhv.EndRun` where it resets or crashes the machine."""
        hv = self.enlightenments
        self._auto_eoi(vp)
        if index == tlfs.HV_X64_MSR_GUEST_OS_ID:
            with self.lock:
                self.guest_os_id = value
                if not value:                    # no OS, no hypercalls
                    self.hypercall_msr &= ~tlfs.HYPERCALL_ENABLE
        elif index == tlfs.HV_X64_MSR_HYPERCALL:
            self._write_hypercall_msr(value)
        elif index == tlfs.HV_X64_MSR_RESET and "reset" in hv:
            if value & 1:
                log.info("the guest reset the partition through HV_X64_MSR_RESET")
                raise EndRun(exits.Reset(source="hyperv"))
        elif index == tlfs.HV_X64_MSR_REFERENCE_TSC and "time" in hv:
            self._write_reference_tsc(value)
        elif "vapic" in hv and index == tlfs.HV_X64_MSR_EOI:
            lapic.eoi(vp.vcpu.fd)
        elif "vapic" in hv and index == tlfs.HV_X64_MSR_ICR:
            vp.icr = value
            x2apic = bool(vp.vcpu.get_msr(MSR_APIC_BASE) & APIC_BASE_X2APIC)
            lapic.send_icr(value, self._p().signal_msi, sorted(self._vps), vp.vcpu.id,
                           x2apic)
        elif "vapic" in hv and index == tlfs.HV_X64_MSR_TPR:
            lapic.set_tpr(vp.vcpu.fd, value)
        elif "vapic" in hv and index == tlfs.HV_X64_MSR_VP_ASSIST_PAGE:
            if value & tlfs.PAGE_ENABLE:
                self._guest_page(value & tlfs.PAGE_MASK, index)
                self._p().memory.fill(value & tlfs.PAGE_MASK, PAGE_SIZE, 0)
            vp.vp_assist = value
        elif index in FEATURE_OF_SYNIC and "synic" in hv:
            vp.synic.write_msr(index, value)
        elif index in STIMER_MSRS and "stimer" in hv:
            vp.timers.write_msr(index, value, self._now(vp))
        elif index in tlfs.CRASH_MSRS and "crash" in hv:
            if index == tlfs.HV_X64_MSR_CRASH_CTL:
                if value & tlfs.CRASH_NOTIFY:
                    log.warning("the guest crashed: P0-P4 %s",
                                " ".join(f"{p:#x}" for p in self.crash_params))
                    raise EndRun(exits.SystemEvent(type=3, data=tuple(self.crash_params)))
            else:
                self.crash_params[index - tlfs.HV_X64_MSR_CRASH_P0] = value
        else:
            raise Refused(index)                 # read-only, not implemented, not enabled

    def _guest_page(self, gpa: int, index: int) -> None:
        """A page an MSR overlays must be guest RAM (else the WRMSR raises #GP)."""
        slot = self._p().memory.slot_at(gpa)
        if slot is None or slot.readonly or gpa + PAGE_SIZE > slot.end:
            raise Refused(index)

    def _write_hypercall_msr(self, value: int) -> None:
        with self.lock:
            if self.hypercall_msr & tlfs.HYPERCALL_LOCKED or not self.guest_os_id:
                return                           # locked, or no guest OS ID yet: ignored
            value &= tlfs.PAGE_MASK | tlfs.HYPERCALL_ENABLE | tlfs.HYPERCALL_LOCKED
            if value & tlfs.HYPERCALL_ENABLE:
                gpa = value & tlfs.PAGE_MASK
                self._guest_page(gpa, tlfs.HV_X64_MSR_HYPERCALL)
                self._p().memory.write(gpa, page_code(self.hypercall_port))
            self.hypercall_msr = value

    def _write_reference_tsc(self, value: int) -> None:
        with self.lock:
            if value & tlfs.PAGE_ENABLE:
                gpa = value & tlfs.PAGE_MASK
                self._guest_page(gpa, tlfs.HV_X64_MSR_REFERENCE_TSC)
                self._p().memory.write(gpa, self.clock.page(self.tsc_sequence))
            self.reference_tsc_msr = value

    def _now(self, vp: VpState) -> int:
        """The reference time at this exit of ``vp``: from its TSC, as the page computes."""
        return self.clock.observe(vp.vcpu.get_msr(MSR_TSC))

    def _auto_eoi(self, vp: VpState) -> None:
        """What AutoEOI asks for, late: the ISR bits of AutoEOI SINT vectors, cleared at
        the vCPU's next exit to pyhv (the in-kernel LAPIC set them at delivery)."""
        if not vp.synic.auto_eoi_vectors:
            return
        with self.lock:
            vectors = {v & tlfs.SINT_VECTOR_MASK for v in vp.synic.sints
                       if v & tlfs.SINT_AUTO_EOI and not v & tlfs.SINT_MASKED}
            if not vectors:
                vp.synic.auto_eoi_vectors.clear()
                return
        lapic.clear_in_service(vp.vcpu.fd, vectors)

    # -- hypercalls -----------------------------------------------------------------------
    def on_hypercall(self, code: int, handler: HypercallHandler | None, *,
                     rep: bool = False) -> None:
        """Serve hypercall ``code`` with ``handler(call: Hypercall)``, which returns None
        (success), a TLFS status, or (status, reps completed), or raises
        :class:`HypercallFailed`; ``rep=True`` for a rep call.  ``handler=None`` removes it
        (the guest then gets HV_STATUS_INVALID_HYPERCALL_CODE)."""
        if isinstance(code, bool) or not isinstance(code, int) or not 0 <= code <= 0xFFFF:
            raise InvalidArgument(f"hypercall code {code!r} is not 0..0xffff")
        if handler is None:
            self._handlers.pop(code, None)
            return
        if not callable(handler):
            raise InvalidArgument(f"hypercall handler {handler!r} is not callable")
        self._handlers[code] = (handler, bool(rep))

    def hypercall(self, vp: VpState, long_mode: bool = True) -> int:
        """Serve the hypercall ``vp`` makes now (its registers hold the call, in the 64-bit
        or, ``long_mode=False``, the 32-bit convention); the result written to its RAX (or
        EDX:EAX)."""
        self._auto_eoi(vp)
        vcpu = vp.vcpu
        regs = vcpu.read_registers()
        if long_mode:
            control, in_gpa, out_gpa = regs.rcx, regs.rdx, regs.r8
        else:
            control = (regs.rdx & 0xFFFFFFFF) << 32 | regs.rax & 0xFFFFFFFF
            in_gpa = (regs.rbx & 0xFFFFFFFF) << 32 | regs.rcx & 0xFFFFFFFF
            out_gpa = (regs.rdi & 0xFFFFFFFF) << 32 | regs.rsi & 0xFFFFFFFF
        # the page's OUT ran, so CPL <= IOPL: with IOPL 0 (every OS kernel) that is CPL 0
        cpl = 0 if not regs.rflags & RFLAGS_IOPL else vcpu.get_sregs().cs.dpl
        status, reps = self._dispatch(vp, control, in_gpa, out_gpa, cpl)
        value = result(status, reps)
        values = {name: getattr(regs, name) for name in GENERAL_REGISTERS}
        if long_mode:
            values["rax"] = value
        else:
            values["rax"], values["rdx"] = value & 0xFFFFFFFF, value >> 32
        vcpu.write_registers(values)              # all of them: one KVM_SET_REGS
        self.hypercalls_served += 1
        return value

    def _dispatch(self, vp: VpState, control: int, in_gpa: int, out_gpa: int,
                  cpl: int) -> tuple[int, int]:
        if not self.hypercall_msr & tlfs.HYPERCALL_ENABLE:
            return tlfs.HV_STATUS_INVALID_HYPERCALL_CODE, 0   # a stray write to the port
        if cpl:
            return tlfs.HV_STATUS_ACCESS_DENIED, 0
        ctl = decode_control(control)
        entry = self._handlers.get(ctl.code)
        if entry is None:
            return tlfs.HV_STATUS_INVALID_HYPERCALL_CODE, 0
        handler, is_rep = entry
        if ctl.reserved or (not is_rep and (ctl.rep_count or ctl.rep_start)) or (
                is_rep and ctl.rep_start > ctl.rep_count):
            return tlfs.HV_STATUS_INVALID_HYPERCALL_INPUT, 0
        call = Hypercall(ctl.code, ctl.fast, ctl.rep_count, ctl.rep_start, vp.vcpu.id,
                         0 if ctl.fast else in_gpa, 0 if ctl.fast else out_gpa,
                         (in_gpa, out_gpa), self._p().memory, ctl.header_size)
        return run_handler(handler, call)

    # -- the SynIC from Python ------------------------------------------------------------
    def post_message(self, vp_index: int, sint: int, message_type: int, payload: bytes = b"",
                     *, sender: int = 0, source: str = "python") -> PostResult:
        """Post a message into SINT ``sint``'s slot of VP ``vp_index`` (it waits there while
        the slot is busy: one waiting message per ``source``, else :attr:`PostResult.BUSY`).
        Python speaks for the hypervisor: the types from 0x80000000 up, which the guest's
        HvPostMessage may not use, are allowed here.  Safe from any thread."""
        message_type = _int("message type", message_type)
        if not 0 < message_type <= 0xFFFFFFFF:      # 0 is the free slot's
            raise InvalidArgument(f"message type {message_type:#x} must be 1..0xffffffff")
        if not isinstance(payload, (bytes, bytearray, memoryview)):
            raise InvalidArgument(f"a message payload is bytes, not {type(payload).__name__}")
        sender = _int("sender", sender)
        if not 0 <= sender < 1 << 64:
            raise InvalidArgument(f"sender {sender:#x} is not 64 bits")
        data = message_bytes(message_type, bytes(payload), sender=sender)
        synic = self.synic(vp_index)
        return synic.post(check_sint(sint), WaitingMessage(source, lambda: data))

    def signal_event(self, vp_index: int, sint: int, flag: int) -> bool | None:
        """Set event flag ``flag`` (0..2047) of SINT ``sint`` on VP ``vp_index``: True when it
        was clear (the SINT is asserted), False when already set, None when that SynIC's
        event page is off.  Safe from any thread."""
        return self.synic(vp_index).signal_event(check_sint(sint), flag)

    def assert_sint(self, vp_index: int, sint: int) -> bool:
        """Raise SINT ``sint`` of VP ``vp_index`` (an interrupt with its vector)."""
        return self.synic(vp_index).assert_sint(check_sint(sint))

    def add_message_connection(self, connection_id: int, vp_index: int, sint: int) -> None:
        """Let the guest's HvPostMessage to ``connection_id`` reach SINT ``sint`` of VP
        ``vp_index``."""
        self.vp(vp_index)
        self.connections.add_message(connection_id, vp_index, sint)

    def remove_message_connection(self, connection_id: int) -> None:
        self.connections.remove_message(connection_id)

    def add_event_connection(self, connection_id: int, vp_index: int, sint: int,
                             flag: int | None = None) -> None:
        """Let the guest's HvSignalEvent of ``connection_id`` set event flag ``flag``
        (default: the connection id, as QEMU's hyperv-testdev has it) plus the call's flag
        number, of SINT ``sint`` on VP ``vp_index``."""
        self.vp(vp_index)
        self.connections.add_event(connection_id, vp_index, sint, flag)

    def remove_event_connection(self, connection_id: int) -> None:
        self.connections.remove_event(connection_id)

    def reference_time(self) -> int:
        """The partition's reference time now (100 ns units), by the host's clock."""
        return self.clock.now()

    # -- snapshots ------------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        with self.lock:
            return {
                "features": self.enlightenments.describe(),
                "guest_os_id": self.guest_os_id, "hypercall": self.hypercall_msr,
                "reference_tsc": self.reference_tsc_msr, "tsc_sequence": self.tsc_sequence,
                "clock": self.clock.get_state(), "crash": list(self.crash_params),
                "connections": self.connections.get_state(),
                "vps": {str(i): {"synic": s.synic.get_state(), "timers": s.timers.get_state(),
                                 "vp_assist": s.vp_assist, "icr": s.icr,
                                 "runtime": self._runtime(s)}
                        for i, s in self._vps.items()},
            }

    def _runtime(self, vp: VpState) -> int:
        return vp.runtime_base + int(vp.vcpu.stats.guest_seconds * 1e7)

    def set_state(self, state: dict[str, Any]) -> None:
        part = self._p()
        try:
            if Enlightenments.parse(state["features"]) != self.enlightenments:
                raise InvalidArgument(f"the snapshot's Hyper-V had {state['features']!r}, this "
                                      f"partition's has {self.enlightenments.describe()!r}")
            vps = state["vps"]
            with self.lock:
                self.guest_os_id = int(state["guest_os_id"])
                self.hypercall_msr = int(state["hypercall"])
                self.reference_tsc_msr = int(state["reference_tsc"])
                self.tsc_sequence = int(state["tsc_sequence"])
                self.crash_params = [int(v) for v in state["crash"]][:5]
                tsc = part.vcpus[0].get_msr(MSR_TSC) if part.vcpus else None
                self.clock.set_state(state["clock"], tsc)
                self.connections.set_state(state["connections"])
                for key, saved in vps.items():
                    vp = self.vp(int(key))
                    vp.synic.set_state(saved["synic"])
                    vp.timers.set_state(saved["timers"])
                    vp.vp_assist = int(saved["vp_assist"])
                    vp.icr = int(saved["icr"])
                    vp.runtime_base = int(saved["runtime"]) - int(
                        vp.vcpu.stats.guest_seconds * 1e7)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise InvalidArgument(f"a malformed Hyper-V state: {type(exc).__name__}: "
                                  f"{exc}") from None


def _int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{name} must be an int, not {value!r}")
    return value
