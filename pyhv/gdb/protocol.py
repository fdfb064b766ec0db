"""The GDB Remote Serial Protocol's framing, as pure functions and a bounded reader.

A packet is ``$payload#cc`` (``cc``: the payload's byte sum modulo 256, two hex digits);
acknowledgements are ``+`` and ``-``; a lone ``\\x03`` asks to interrupt the running target.
Binary payloads escape ``#``, ``$``, ``}`` and ``*`` as ``}`` followed by the byte XOR 0x20.

>>> frame(b"OK")
b'$OK#9a'
>>> reader = PacketReader()
>>> reader.feed(b"+$g#67\\x03$m0,4#fd")
[Ack(), Packet(payload=b'g'), Interrupt(), Packet(payload=b'm0,4')]
>>> reader.feed(b"$g#00")                         # a bad checksum
[BadPacket(reason='checksum 0x00, expected 0x67')]
>>> unescape(escape(b"a#b}c*"))
b'a#b}c*'
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["MAX_PACKET", "Ack", "BadPacket", "Interrupt", "Nack", "Packet", "PacketReader",
           "ProtocolError", "checksum", "escape", "frame", "from_hex", "hex_int",
           "parse_address_length", "to_hex", "unescape"]

# the largest packet accepted (and offered to gdb as PacketSize): room for a `G` of every
# register, or 8 KiB of memory in an `M`
MAX_PACKET = 0x4000
_ESCAPED = frozenset(b"#$}*")
_FRAMING = re.compile(rb"[#$]")


class ProtocolError(ValueError):
    """A packet that does not say what its command needs (answered with an error reply)."""


@dataclass(frozen=True)
class Packet:
    payload: bytes


@dataclass(frozen=True)
class BadPacket:
    """A packet that arrived broken (bad checksum, too long): not executed."""

    reason: str


@dataclass(frozen=True)
class Ack:
    pass


@dataclass(frozen=True)
class Nack:
    pass


@dataclass(frozen=True)
class Interrupt:
    pass


Event = Packet | BadPacket | Ack | Nack | Interrupt


def checksum(payload: bytes) -> int:
    return sum(payload) & 0xFF


def frame(payload: bytes) -> bytes:
    """``payload`` as a packet on the wire (the payload is sent as is: escape binary first)."""
    return b"$" + payload + b"#%02x" % checksum(payload)


def escape(data: bytes) -> bytes:
    """Binary data made safe inside a packet."""
    if not any(b in _ESCAPED for b in data):
        return data
    out = bytearray()
    for b in data:
        if b in _ESCAPED:
            out += bytes((0x7D, b ^ 0x20))
        else:
            out.append(b)
    return bytes(out)


def unescape(data: bytes) -> bytes:
    """The bytes an escaped binary payload stands for (a trailing lone ``}`` is an error)."""
    if b"}" not in data:
        return data
    out = bytearray()
    it = iter(data)
    for b in it:
        if b == 0x7D:
            nxt = next(it, None)
            if nxt is None:
                raise ProtocolError("binary data ends inside an escape")
            out.append(nxt ^ 0x20)
        else:
            out.append(b)
    return bytes(out)


class PacketReader:
    """Turns the bytes gdb sends into events; holds at most :data:`MAX_PACKET` bytes of a
    packet (a longer one is dropped, reported as a :class:`BadPacket`).

    >>> PacketReader().feed(b"$" + b"x" * (MAX_PACKET + 1) + b"#00")
    [BadPacket(reason='packet longer than 16384 bytes')]
    """

    def __init__(self, limit: int = MAX_PACKET) -> None:
        self.limit = limit
        self._state = "idle"            # idle | data | sum1 | sum2
        self._buf = bytearray()
        self._overflow = False
        self._sum = b""

    def feed(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        at, end = 0, len(data)
        while at < end:
            if self._state == "data":
                # the payload up to its '#' (or a '$' that restarts) in one slice
                stop = _FRAMING.search(data, at)
                upto = stop.start() if stop else end
                room = self.limit - len(self._buf)
                self._buf += data[at:at + min(upto - at, max(room, 0))]
                if upto - at > room:
                    self._overflow = True
                at = upto
                if at == end:
                    break
            self._step(data[at], events)
            at += 1
        return events

    def _step(self, b: int, events: list[Event]) -> None:
        """One framing byte (a payload's bytes come in slices, in feed())."""
        state = self._state
        if state == "idle":
            if b == 0x24:                       # $
                self._state, self._overflow = "data", False
                self._buf.clear()
            elif b == 0x2B:
                events.append(Ack())
            elif b == 0x2D:
                events.append(Nack())
            elif b == 0x03:
                events.append(Interrupt())
            # anything else between packets is line noise: skipped
        elif state == "data":
            if b == 0x23:                       # '#'
                self._state, self._sum = "sum1", b""
            elif b == 0x24:                     # a new packet: the broken one is dropped
                events.append(BadPacket("packet restarted before its end"))
                self._buf.clear()
                self._overflow = False
            elif len(self._buf) < self.limit:
                self._buf.append(b)
            else:
                self._overflow = True
        else:
            self._sum += bytes((b,))
            if state == "sum1":
                self._state = "sum2"
                return
            self._state = "idle"
            events.append(self._finish())

    def _finish(self) -> Event:
        if self._overflow:
            return BadPacket(f"packet longer than {self.limit} bytes")
        payload = bytes(self._buf)
        try:
            got = int(self._sum, 16)
        except ValueError:
            return BadPacket(f"checksum {self._sum!r} is not hex")
        if got != checksum(payload):
            return BadPacket(f"checksum {got:#04x}, expected {checksum(payload):#04x}")
        return Packet(payload)


def to_hex(data: bytes) -> bytes:
    return data.hex().encode()


def from_hex(text: bytes, what: str = "data") -> bytes:
    """Bytes from hex digits, or :class:`ProtocolError`."""
    try:
        return bytes.fromhex(text.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError(f"{what} is not hex") from None


def hex_int(text: bytes, what: str = "number", limit: int = 1 << 64) -> int:
    """A hex number below ``limit``, or :class:`ProtocolError`.

    >>> hex_int(b"1f"), hex_int(b"-1", "thread", 1 << 32)
    (31, -1)
    """
    if text == b"-1":                               # "all threads"
        return -1
    if not text or len(text) > 32 or not all(c in b"0123456789abcdefABCDEF" for c in text):
        raise ProtocolError(f"{what} {text[:40]!r} is not a hex number")
    value = int(text, 16)
    if value >= limit:
        raise ProtocolError(f"{what} {value:#x} is too large")
    return value


def parse_address_length(text: bytes, max_length: int) -> tuple[int, int]:
    """``addr,length`` (hex), the length at most ``max_length``.

    >>> parse_address_length(b"1000,10", 64)
    (4096, 16)
    """
    address, sep, length = text.partition(b",")
    if not sep:
        raise ProtocolError("expected ADDRESS,LENGTH")
    a, n = hex_int(address, "address"), hex_int(length, "length")
    if a < 0 or n < 0:
        raise ProtocolError("address and length are unsigned")
    if n > max_length:
        raise ProtocolError(f"length {n:#x} is above {max_length:#x}")
    if a + n > 1 << 64:
        raise ProtocolError("the range passes the end of the address space")
    return a, n
