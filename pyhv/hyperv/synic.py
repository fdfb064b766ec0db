"""One vCPU's synthetic interrupt controller (SynIC): its MSRs, the message slots of its
message page (SIMP), its event flag page (SIEFP), and the 16 synthetic interrupt sources.

Messages wait on the host side until their slot is free.  The slot protocol the TLFS gives
the guest (clear the message type, then look at the "pending" flag and write EOM if it is
set) is met from the host side in this order: set "pending", then look at the type; if the
slot is free, write the message, its type last.  Whatever the guest does in between, a
waiting message is delivered at the latest at the guest's next EOM.

>>> from pyhv.hyperv.synic import message_bytes
>>> msg = message_bytes(0x12345678, b"hi", sender=7)
>>> len(msg), msg[:8].hex(), msg[16:18]
(256, '7856341202000000', b'hi')
"""

from __future__ import annotations

import enum
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..core.memory import PAGE_SIZE, GuestMemory
from ..errors import InvalidArgument
from . import tlfs

Interrupt = Callable[[int], object]          # raise this vector on the vCPU's LAPIC
TIMER_SOURCE = "stimer"                      # synthetic timers' messages: "stimer0".."stimer3"


class Refused(Exception):  # noqa: N818 - the guest's access gets #GP
    """The guest's MSR access is invalid (the handler turns it into #GP)."""


class PostResult(str, enum.Enum):
    """What became of a posted message."""

    DELIVERED = "delivered"      # in its slot, the SINT asserted
    QUEUED = "queued"            # the slot is busy (or the SynIC off): it waits for EOM
    BUSY = "busy"                # its sender already has a message waiting: refused


def message_bytes(message_type: int, payload: bytes, *, sender: int = 0,
                  pending: bool = False) -> bytes:
    """A 256-byte SynIC message: u32 type, u8 payload size, u8 flags, u16 reserved, u64
    sender (port id), then the payload (at most 240 bytes)."""
    if not 0 <= message_type <= 0xFFFFFFFF:
        raise InvalidArgument(f"message type {message_type:#x} is not 32 bits")
    if len(payload) > tlfs.MESSAGE_PAYLOAD_MAX:
        raise InvalidArgument(f"a message payload holds at most {tlfs.MESSAGE_PAYLOAD_MAX} "
                              f"bytes, not {len(payload)}")
    header = (message_type.to_bytes(4, "little") + bytes((len(payload),
              tlfs.MESSAGE_PENDING if pending else 0, 0, 0)) + (sender & (1 << 64) - 1
              ).to_bytes(8, "little"))
    return header + bytes(payload).ljust(tlfs.MESSAGE_PAYLOAD_MAX, b"\0")


@dataclass(eq=False)
class WaitingMessage:
    """A message waiting for its slot: ``build()`` makes its bytes when the slot is free
    (a timer message carries its delivery time), ``delivered()`` runs once it is in."""

    source: str                      # who sent it: at most one waits per source
    build: Callable[[], bytes]
    delivered: Callable[[], object] | None = None


class SynIC:
    """The SynIC of the vCPU with VP index ``vp_index``; all its state is guarded by
    ``lock`` (shared with the partition's timers and connections)."""

    def __init__(self, vp_index: int, memory: GuestMemory, interrupt: Interrupt,
                 lock: threading.RLock) -> None:
        self.vp_index = vp_index
        self.memory = memory
        self.interrupt = interrupt
        self.lock = lock
        self.scontrol = 0
        self.siefp = 0
        self.simp = 0
        self.sints = [tlfs.SINT_MASKED] * tlfs.SINT_COUNT
        self.waiting: list[deque[WaitingMessage]] = [deque() for _ in range(tlfs.SINT_COUNT)]
        self.auto_eoi_vectors: set[int] = set()    # raised with AutoEOI, not yet cleared
        self.sints_asserted = 0                     # interrupts sent (for tests and stats)

    @property
    def enabled(self) -> bool:
        return bool(self.scontrol & tlfs.SCONTROL_ENABLE)

    # -- MSRs -----------------------------------------------------------------------------
    def read_msr(self, index: int) -> int:
        with self.lock:
            if index == tlfs.HV_X64_MSR_SCONTROL:
                return self.scontrol
            if index == tlfs.HV_X64_MSR_SVERSION:
                return tlfs.SVERSION
            if index == tlfs.HV_X64_MSR_SIEFP:
                return self.siefp
            if index == tlfs.HV_X64_MSR_SIMP:
                return self.simp
            if index == tlfs.HV_X64_MSR_EOM:
                return 0
            sint = index - tlfs.HV_X64_MSR_SINT0
            if 0 <= sint < tlfs.SINT_COUNT:
                return self.sints[sint]
        raise Refused(index)

    def write_msr(self, index: int, value: int) -> None:
        with self.lock:
            if index == tlfs.HV_X64_MSR_SCONTROL:
                self.scontrol = value
                self._pump_all()
            elif index in (tlfs.HV_X64_MSR_SIEFP, tlfs.HV_X64_MSR_SIMP):
                if value & tlfs.PAGE_ENABLE:
                    self._clear_page(value & tlfs.PAGE_MASK)
                if index == tlfs.HV_X64_MSR_SIEFP:
                    self.siefp = value
                else:
                    self.simp = value
                    self._pump_all()
            elif index == tlfs.HV_X64_MSR_EOM:
                self.eom()
            elif 0 <= index - tlfs.HV_X64_MSR_SINT0 < tlfs.SINT_COUNT:
                if value & ~tlfs.SINT_WRITABLE & 0xFFFFFFFF:
                    raise Refused(index)        # reserved bits
                if not value & tlfs.SINT_MASKED and (
                        value & tlfs.SINT_VECTOR_MASK) < tlfs.SINT_FIRST_VECTOR:
                    raise Refused(index)        # vectors 0-15 are not for interrupts
                self.sints[index - tlfs.HV_X64_MSR_SINT0] = value & tlfs.SINT_WRITABLE
            else:
                raise Refused(index)            # SVERSION is read-only

    def _clear_page(self, gpa: int) -> None:
        """A page the SynIC overlays starts zeroed; it must be guest RAM."""
        slot = self.memory.slot_at(gpa)
        if slot is None or slot.readonly or gpa + PAGE_SIZE > slot.end:
            raise Refused(gpa)
        self.memory.fill(gpa, PAGE_SIZE, 0)

    # -- interrupts -----------------------------------------------------------------------
    def assert_sint(self, sint: int) -> bool:
        """Raise SINT ``sint``'s vector on the vCPU (unless the SynIC is off, the SINT masked
        or polled); whether an interrupt was sent."""
        with self.lock:
            value = self.sints[sint]
            if not self.enabled or value & (tlfs.SINT_MASKED | tlfs.SINT_POLLING):
                return False
            vector = value & tlfs.SINT_VECTOR_MASK
            if value & tlfs.SINT_AUTO_EOI:
                self.auto_eoi_vectors.add(vector)
            self.sints_asserted += 1
        self.interrupt(vector)
        return True

    # -- messages -------------------------------------------------------------------------
    def post(self, sint: int, message: WaitingMessage) -> PostResult:
        """Queue ``message`` for slot ``sint`` and deliver it if the slot is free."""
        with self.lock:
            queue = self.waiting[sint]
            if any(m.source == message.source for m in queue):
                return PostResult.BUSY
            queue.append(message)
            self._pump(sint)
            return PostResult.QUEUED if message in queue else PostResult.DELIVERED

    def withdraw(self, source: str) -> None:
        """Forget the waiting messages of ``source`` (a timer reprogrammed, a connection
        gone)."""
        with self.lock:
            for i, queue in enumerate(self.waiting):
                self.waiting[i] = deque(m for m in queue if m.source != source)

    def eom(self) -> None:
        """End of message: try the waiting messages again."""
        self._pump_all()

    def _pump_all(self) -> None:
        with self.lock:
            for sint in range(tlfs.SINT_COUNT):
                if self.waiting[sint]:
                    self._pump(sint)

    def _pump(self, sint: int) -> None:
        """Deliver the first waiting message of ``sint`` if its slot is free."""
        queue = self.waiting[sint]
        if not queue or not self.enabled or not self.simp & tlfs.PAGE_ENABLE:
            return
        slot = (self.simp & tlfs.PAGE_MASK) + sint * tlfs.MESSAGE_SIZE
        memory = self.memory
        header = memory.read(slot, 8)
        if int.from_bytes(header[:4], "little") != tlfs.HVMSG_NONE:
            # busy: "pending" first, then the type again (see the module docstring); a free
            # slot the guest does not touch, so the first look was enough there
            memory.write_u8(slot + 5, header[5] | tlfs.MESSAGE_PENDING)
            if memory.read_u32(slot) != tlfs.HVMSG_NONE:
                return                           # the guest writes EOM when it is done
        message = queue.popleft()
        data = bytearray(message.build())
        data[5] = tlfs.MESSAGE_PENDING if queue else 0
        memory.write(slot + 4, bytes(data[4:]))
        memory.write(slot, bytes(data[:4]))      # the type last: the slot is now full
        if message.delivered is not None:
            message.delivered()
        self.assert_sint(sint)

    # -- events ---------------------------------------------------------------------------
    def signal_event(self, sint: int, flag: int) -> bool | None:
        """Set event flag ``flag`` of SINT ``sint``: True (and the SINT asserted) when it was
        clear, False when it was already set, None when the SynIC or its event page is off."""
        if isinstance(flag, bool) or not isinstance(flag, int) or not (
                0 <= flag < tlfs.EVENT_FLAG_COUNT):
            raise InvalidArgument(f"event flag {flag!r} is not 0..{tlfs.EVENT_FLAG_COUNT - 1}")
        with self.lock:
            if not self.enabled or not self.siefp & tlfs.PAGE_ENABLE:
                return None
            gpa = (self.siefp & tlfs.PAGE_MASK) + sint * tlfs.EVENT_FLAGS_SIZE + flag // 8
            bit = 1 << (flag % 8)
            byte = self.memory.read_u8(gpa)
            if byte & bit:
                return False
            # Not atomic with the guest's own updates of this byte: a flag the guest clears
            # between the read and the write comes back set (a spurious event, no lost one)
            self.memory.write_u8(gpa, byte | bit)
        self.assert_sint(sint)
        return True

    # -- snapshots ------------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        """The registers and the waiting messages (but a timer's, which its timer posts
        again when restored)."""
        with self.lock:
            waiting = [[sint, m.source, m.build().hex()]
                       for sint, queue in enumerate(self.waiting) for m in queue
                       if not m.source.startswith(TIMER_SOURCE)]
            return {"scontrol": self.scontrol, "siefp": self.siefp, "simp": self.simp,
                    "sints": list(self.sints), "auto_eoi": sorted(self.auto_eoi_vectors),
                    "waiting": waiting}

    def set_state(self, state: dict[str, Any]) -> None:
        with self.lock:
            self.scontrol = _u64(state["scontrol"])
            self.siefp = _u64(state["siefp"])
            self.simp = _u64(state["simp"])
            sints = [_u64(v) & tlfs.SINT_WRITABLE for v in state["sints"]]
            if len(sints) != tlfs.SINT_COUNT:
                raise InvalidArgument("a SynIC state needs 16 SINTs")
            self.sints = sints
            self.auto_eoi_vectors = {int(v) & 0xFF for v in state.get("auto_eoi", [])}
            self.waiting = [deque() for _ in range(tlfs.SINT_COUNT)]
            for sint, source, data in state.get("waiting", []):
                message = bytes.fromhex(data)
                if not 0 <= sint < tlfs.SINT_COUNT or len(message) != tlfs.MESSAGE_SIZE:
                    raise InvalidArgument("a waiting SynIC message is malformed")
                self.waiting[sint].append(WaitingMessage(str(source), _fixed(message)))


def _fixed(message: bytes) -> Callable[[], bytes]:
    return lambda: message


def _u64(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 64:
        raise InvalidArgument(f"{value!r} is not a 64-bit register value")
    return value
