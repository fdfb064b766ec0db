"""Where the guest's HvPostMessage and HvSignalEvent go: message connections (id -> a SINT
of a VP) and event connections (id -> an event flag of a SINT of a VP), and the two
hypercalls that use them.

>>> from pyhv.hyperv.connections import Connections
>>> import threading
>>> links = Connections(synic_of=lambda vp: None, lock=threading.RLock())
>>> links.add_event(0x21, vp=1, sint=3)
>>> links.events[0x21]                         # the flag number is the connection id
(1, 3, 33)
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from ..errors import InvalidArgument
from . import tlfs
from .hypercalls import Hypercall
from .synic import PostResult, SynIC, WaitingMessage, message_bytes

POST_MESSAGE_INPUT = 16 + tlfs.MESSAGE_PAYLOAD_MAX   # conn id, rsvd, type, size, payload


def check_connection(connection_id: object) -> int:
    if isinstance(connection_id, bool) or not isinstance(connection_id, int) or not (
            0 <= connection_id < 1 << 24):
        raise InvalidArgument(f"connection id {connection_id!r} is not 0..0xffffff")
    return connection_id


def check_sint(sint: object) -> int:
    if isinstance(sint, bool) or not isinstance(sint, int) or not 0 <= sint < tlfs.SINT_COUNT:
        raise InvalidArgument(f"SINT {sint!r} is not 0..15")
    return sint


def message_source(connection_id: int) -> str:
    return f"connection{connection_id}"


class Connections:
    """The partition's connections; ``synic_of(vp)`` finds a VP's SynIC (it raises for a VP
    that does not exist)."""

    def __init__(self, synic_of: Callable[[int], SynIC | None], lock: threading.RLock) -> None:
        self.synic_of = synic_of
        self.lock = lock
        self.messages: dict[int, tuple[int, int]] = {}          # id -> (vp, sint)
        self.events: dict[int, tuple[int, int, int]] = {}       # id -> (vp, sint, flag)

    def add_message(self, connection_id: int, vp: int, sint: int) -> None:
        with self.lock:
            self.messages[check_connection(connection_id)] = (vp, check_sint(sint))

    def remove_message(self, connection_id: int) -> None:
        with self.lock:
            target = self.messages.pop(connection_id, None)
            if target is None:
                raise InvalidArgument(f"no message connection {connection_id!r}")
            synic = self.synic_of(target[0])
            if synic is not None:
                synic.withdraw(message_source(connection_id))

    def add_event(self, connection_id: int, vp: int, sint: int, flag: int | None = None) -> None:
        connection_id = check_connection(connection_id)
        flag = connection_id if flag is None else flag
        if isinstance(flag, bool) or not isinstance(flag, int) or not (
                0 <= flag < tlfs.EVENT_FLAG_COUNT):
            raise InvalidArgument(f"event flag {flag!r} is not 0..{tlfs.EVENT_FLAG_COUNT - 1}")
        with self.lock:
            self.events[connection_id] = (vp, check_sint(sint), flag)

    def remove_event(self, connection_id: int) -> None:
        with self.lock:
            if self.events.pop(connection_id, None) is None:
                raise InvalidArgument(f"no event connection {connection_id!r}")

    # -- the hypercalls ---------------------------------------------------------------------
    def post_message_call(self, call: Hypercall) -> int:
        """HvPostMessage: u32 connection id, u32 reserved, u32 message type, u32 payload size,
        then the payload."""
        data = call.read_input(POST_MESSAGE_INPUT)
        connection_id = int.from_bytes(data[0:4], "little")
        message_type = int.from_bytes(data[8:12], "little")
        size = int.from_bytes(data[12:16], "little")
        if size > tlfs.MESSAGE_PAYLOAD_MAX or not 0 < message_type < \
                tlfs.HVMSG_HYPERVISOR_RANGE:
            return tlfs.HV_STATUS_INVALID_PARAMETER
        with self.lock:
            target = self.messages.get(connection_id)
        synic = self.synic_of(target[0]) if target is not None else None
        if target is None or synic is None:
            return tlfs.HV_STATUS_INVALID_CONNECTION_ID
        message = message_bytes(message_type, data[16:16 + size], sender=connection_id)
        outcome = synic.post(target[1], WaitingMessage(message_source(connection_id),
                                                       lambda: message))
        if outcome is PostResult.BUSY:             # its previous message still waits
            return tlfs.HV_STATUS_INSUFFICIENT_BUFFERS
        return tlfs.HV_STATUS_SUCCESS

    def signal_event_call(self, call: Hypercall) -> int:
        """HvSignalEvent: u32 connection id, u16 flag number (added to the connection's)."""
        data = call.read_input(8)
        connection_id = int.from_bytes(data[0:4], "little")
        flag_number = int.from_bytes(data[4:6], "little")
        with self.lock:
            target = self.events.get(connection_id)
        synic = self.synic_of(target[0]) if target is not None else None
        if target is None or synic is None:
            return tlfs.HV_STATUS_INVALID_CONNECTION_ID
        _vp, sint, base = target
        if base + flag_number >= tlfs.EVENT_FLAG_COUNT:
            return tlfs.HV_STATUS_INVALID_PARAMETER
        synic.signal_event(sint, base + flag_number)
        return tlfs.HV_STATUS_SUCCESS

    # -- snapshots --------------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        with self.lock:
            return {"messages": {str(k): list(v) for k, v in self.messages.items()},
                    "events": {str(k): list(v) for k, v in self.events.items()}}

    def set_state(self, state: dict[str, Any]) -> None:
        messages = {check_connection(int(k)): (int(v[0]), check_sint(int(v[1])))
                    for k, v in state["messages"].items()}
        events = {check_connection(int(k)): (int(v[0]), check_sint(int(v[1])), int(v[2]))
                  for k, v in state["events"].items()}
        with self.lock:
            self.messages, self.events = messages, events
