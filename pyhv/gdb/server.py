"""The gdb server: a GDB Remote Serial Protocol stub over TCP or a Unix socket, one gdb at a
time, for a partition whose vCPUs run as usual (``part.run()``, ``run_all()``, typed runs).

>>> import pyhv, pyhv.gdb
>>> with pyhv.Partition(memory="16M") as part:
...     cpu = part.create_vcpu(mode="long", entry=0x1000)
...     with pyhv.gdb.serve(part, "tcp:127.0.0.1:0") as server:   # port 0: any free one
...         server.address.startswith("tcp:127.0.0.1:"), server.connected
(True, False)
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import socket
import threading
from typing import Any

from ..errors import HypervisorError, InvalidArgument
from .breakpoints import BreakpointError
from .monitor import run_command
from .probe import DebugSupport, debug_support
from .protocol import (
    MAX_PACKET,
    Ack,
    BadPacket,
    Interrupt,
    Nack,
    Packet,
    PacketReader,
    ProtocolError,
    escape,
    frame,
    from_hex,
    hex_int,
    parse_address_length,
    to_hex,
    unescape,
)
from .registers import ARCHES, Arch, MachineState
from .target import SIGINT, SIGTRAP, Controller, Stop, VcpuView, mode_of

__all__ = ["GdbServer", "Session", "parse_address"]

log = logging.getLogger("pyhv.gdb")

_MAX_MEMORY = (MAX_PACKET - 16) // 2            # bytes one m/M packet may carry
_SEND_TIMEOUT = 10.0                             # a gdb that stops reading is dropped


def parse_address(spec: str) -> tuple[str, Any]:
    """QEMU's ``-gdb`` spelling: ``tcp::PORT`` (localhost), ``tcp:HOST:PORT`` or
    ``unix:PATH`` (QEMU's ``,server,nowait`` options are accepted and ignored).

    >>> parse_address("tcp::1234"), parse_address("unix:/tmp/g.sock,server,nowait")
    (('tcp', ('127.0.0.1', 1234)), ('unix', '/tmp/g.sock'))
    """
    if not isinstance(spec, str):
        raise InvalidArgument(f"gdb address {spec!r} is not a string")
    head, *options = spec.split(",")
    for option in options:
        if option not in ("server", "nowait", "wait=off", "server=on"):
            raise InvalidArgument(f"gdb address {spec!r}: unknown option {option!r}")
    kind, sep, rest = head.partition(":")
    if kind == "unix" and sep and rest:
        return "unix", rest
    if kind == "tcp" and sep:
        host, sep, port = rest.rpartition(":")
        if not sep:
            host, port = "", rest
        if not port.isdigit() or not 0 <= int(port) < 65536:
            raise InvalidArgument(f"gdb address {spec!r}: the port must be 0-65535")
        return "tcp", (host.strip("[]") or "127.0.0.1", int(port))
    raise InvalidArgument(f"gdb address {spec!r}: use tcp::PORT, tcp:HOST:PORT or unix:PATH")


def _listen(kind: str, where: Any) -> socket.socket:
    family = socket.AF_UNIX if kind == "unix" else (
        socket.AF_INET6 if ":" in where[0] else socket.AF_INET)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if kind == "tcp":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(where)
        sock.listen(1)
    except OSError as exc:
        sock.close()
        raise HypervisorError(f"gdb server: cannot listen on {where}: {exc.strerror}") from None
    return sock


class GdbServer:
    """Serve gdb for ``partition`` on ``address`` (see :func:`parse_address`) from a
    background thread, until :meth:`close` (or the partition closes).

    ``wait=True`` is QEMU's ``-S``: no vCPU runs until gdb continues (runs started meanwhile
    wait for it).  ``arch`` forces the target description ("i386:x86-64" or "i386"; by
    default the first vCPU's mode at attach picks one).  Every vCPU the partition has now is
    debugged; while gdb is attached, pyhv.gdb owns their guest-debug settings.
    """

    def __init__(self, partition: Any, address: str = "tcp::1234", *, wait: bool = False,
                 arch: str | None = None, support: DebugSupport | None = None) -> None:
        kind, where = parse_address(address)
        if arch is not None and arch not in ARCHES:
            raise InvalidArgument(f"arch {arch!r}: one of {', '.join(ARCHES)}")
        if partition.closed:
            raise InvalidArgument("the partition is closed")
        if not partition.vcpus:
            raise InvalidArgument("the partition has no vCPU to debug: create them first")
        if any(v.debugger is not None for v in partition.vcpus):
            raise InvalidArgument("a debugger is attached to this partition already")
        self.partition = partition
        self.arch_name = arch
        self._support = support if support is not None else debug_support(partition.hypervisor)
        self._kind = kind
        self._listener = _listen(kind, where)
        self.wake_socket, self._wake_w = socket.socketpair()
        self.closing = False
        self._client: socket.socket | None = None
        self.controller = Controller(partition, self._support, self._wake, hold=wait)
        self._thread = threading.Thread(target=self._serve, name="pyhv-gdb", daemon=True)
        self._thread.start()
        log.info("gdb server listening on %s", self.address)

    # -- what it is -------------------------------------------------------------------------
    @property
    def address(self) -> str:
        """Where gdb connects: ``tcp:HOST:PORT`` or ``unix:PATH`` (give gdb ``target remote``
        ``HOST:PORT`` or the path)."""
        name = self._listener.getsockname()
        return f"unix:{name}" if self._kind == "unix" else f"tcp:{name[0]}:{name[1]}"

    @property
    def port(self) -> int | None:
        return None if self._kind == "unix" else int(self._listener.getsockname()[1])

    @property
    def connected(self) -> bool:
        """Whether a gdb is connected now."""
        return self._client is not None

    # -- lifetime ------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop serving: a connected gdb is detached (the guest runs on), the socket closed."""
        if self.closing:
            return
        self.closing = True
        self._wake()
        if self._thread is not threading.current_thread():
            self._thread.join()
        path = self._listener.getsockname() if self._kind == "unix" else None
        self._listener.close()
        self.wake_socket.close()
        self._wake_w.close()
        if path:
            with contextlib.suppress(OSError):
                os.unlink(path)

    def __enter__(self) -> GdbServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"!")

    def drain_wake(self) -> None:
        with contextlib.suppress(OSError):
            self.wake_socket.recv(4096)

    # -- the server thread ---------------------------------------------------------------------
    def _serve(self) -> None:
        try:
            while not self.closing and not self.partition.closed:
                ready, _, _ = select.select([self._listener, self.wake_socket], [], [], 0.25)
                if self.wake_socket in ready:
                    self.drain_wake()
                if self._listener not in ready:
                    continue
                try:
                    conn, _peer = self._listener.accept()
                except OSError:
                    continue
                if self._session(conn) == "kill":
                    break
        finally:
            self.controller.close()

    def _session(self, conn: socket.socket) -> str:
        conn.settimeout(_SEND_TIMEOUT)
        if conn.family != socket.AF_UNIX:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._client = conn
        session = Session(self, conn)
        outcome = "disconnected"
        try:
            outcome = session.run()
        except (OSError, HypervisorError) as exc:
            log.info("gdb session ended: %s", exc)
        finally:
            self._client = None
            if outcome == "kill":
                self.controller.server_kill()
            elif not self.partition.closed:
                self.controller.server_detach()
            conn.close()
        return outcome


class Session:
    """One connected gdb: packets in, replies out, stops reported."""

    def __init__(self, server: GdbServer, conn: socket.socket) -> None:
        self.server = server
        self.conn = conn
        self.part = server.partition
        self.control = server.controller
        self.reader = PacketReader()
        self.noack = False
        self.last_sent = b""
        self.general = self.control.vcpus[0]      # Hg: registers and memory
        self.resume_thread = -1                   # Hc: the thread `s` steps (-1: any)
        self.waiting = False                      # gdb waits for a stop reply
        self.last_stop: Stop | None = None
        self.gone = False                         # gdb was told the process ended
        self.arch: Arch = ARCHES[server.arch_name or "i386:x86-64"]

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> str:
        self.control.server_attach()
        if self.server.arch_name is None:         # the guest is stopped: its mode can be read
            wide = mode_of(self.general) in ("long", "user")
            self.arch = ARCHES["i386:x86-64" if wide else "i386"]
        while True:
            if self.server.closing:
                return "closing"
            ready, _, _ = select.select([self.conn, self.server.wake_socket], [], [], 0.25)
            if self.server.wake_socket in ready:
                self.server.drain_wake()
            if self.conn in ready:
                data = self.conn.recv(65536)
                if not data:
                    return "disconnected"
                for event in self.reader.feed(data):
                    outcome = self.handle(event)
                    if outcome:
                        return outcome
            if self.part.closed:
                if self.waiting and not self.gone:
                    self.send(b"W00")
                return "closed"
            if self.waiting:
                stop = self.control.server_take_stop()
                if stop is not None:
                    self.report(stop)

    def send(self, payload: bytes) -> None:
        packet = frame(payload)
        self.last_sent = packet
        self.conn.sendall(packet)

    def report(self, stop: Stop) -> None:
        """Make sure the whole guest is stopped, then tell gdb why."""
        if stop.exited is None:
            self.control.server_stop()
        self.waiting = False
        self.last_stop = stop
        self.control.server_reported(stop)
        if stop.exited is not None:
            self.gone = True
            self.send(b"W%02x" % stop.exited)
            return
        self.send(self.stop_reply(stop))

    def stop_reply(self, stop: Stop) -> bytes:
        reply = b"T%02xthread:%x;" % (stop.signal, stop.vcpu + 1)
        if stop.reason in ("watch", "rwatch", "awatch"):
            reply += b"%s:%x;" % (stop.reason.encode(), stop.address or 0)
        elif stop.reason:
            reply += stop.reason.encode() + b":;"
        return reply

    def handle(self, event: object) -> str | None:
        if isinstance(event, Ack):
            return None
        if isinstance(event, Nack):
            if not self.noack and self.last_sent:
                self.conn.sendall(self.last_sent)
            return None
        if isinstance(event, BadPacket):
            log.info("gdb: bad packet (%s)", event.reason)
            if self.noack:
                self.send(b"E01")
            else:
                self.conn.sendall(b"-")
            return None
        if isinstance(event, Interrupt):
            if self.waiting:
                self.control.server_stop()
                stop = self.control.server_take_stop() or Stop(self.general.id, SIGINT)
                self.report(stop)
            return None
        assert isinstance(event, Packet)
        if not self.noack:
            self.conn.sendall(b"+")
        payload = event.payload
        try:
            reply = self.dispatch(payload)
        except ProtocolError as exc:
            log.info("gdb: %r: %s", payload[:60], exc)
            reply = b"E16" if "running" in str(exc) else b"E01"
        except HypervisorError as exc:
            log.info("gdb: %r failed: %s", payload[:60], exc)
            reply = b"E05"
        if isinstance(reply, str):           # "detach", "kill": the session ends
            return reply
        if reply is not None:
            self.send(reply)
        return None

    # -- the packets ---------------------------------------------------------------------------
    def dispatch(self, p: bytes) -> bytes | str | None:
        if not p:
            return b""
        if self.waiting and p[:1] not in (b"?",):
            raise ProtocolError("the guest is running: interrupt it first")
        head = p[:1]
        if head == b"?":
            stop = self.last_stop or self.control.server_take_stop() or Stop(
                self.general.id, SIGTRAP)
            self.last_stop = stop
            self.control.server_reported(stop)
            return b"W%02x" % stop.exited if stop.exited is not None else self.stop_reply(stop)
        if head == b"q" or head == b"Q":
            return self.query(p)
        if head == b"v":
            return self.v_packet(p)
        if head == b"H":
            return self.set_thread(p[1:2], p[2:])
        if head == b"T":
            return b"OK" if self.thread(p[1:]) is not None else b"E01"
        if head == b"g":
            return to_hex(self.arch.read_all(self.state()))
        if head == b"G":
            data = from_hex(p[1:], "registers")
            if len(data) != self.arch.size:
                raise ProtocolError(f"G carries {len(data)} bytes, the registers are "
                                    f"{self.arch.size}")
            self.write_state(self.arch.write_all(self.state(), data))
            return b"OK"
        if head == b"p":
            reg = self.register(p[1:])
            return to_hex(reg.get(self.state())) if reg else b"E01"
        if head == b"P":
            number, sep, value = p[1:].partition(b"=")
            reg = self.register(number)
            data = from_hex(value, "register value")
            if not sep or reg is None or len(data) != reg.size:
                raise ProtocolError("P needs NUMBER=VALUE with the register's size")
            self.write_state(reg.set(self.state(), data))
            return b"OK"
        if head == b"m":
            address, length = parse_address_length(p[1:], _MAX_MEMORY)
            data = self.view().read_virtual(address, length)
            if length and not data:
                return b"E14"
            return to_hex(self.control.breakpoints.hide(address, data))
        if head in (b"M", b"X"):
            where, sep, body = p[1:].partition(b":")
            if not sep:
                raise ProtocolError("expected ADDRESS,LENGTH:DATA")
            address, length = parse_address_length(where, MAX_PACKET)
            data = from_hex(body, "memory") if head == b"M" else unescape(body)
            if len(data) != length:
                raise ProtocolError(f"{length} bytes announced, {len(data)} sent")
            data = self.control.breakpoints.write_through(address, data)
            return b"OK" if self.view().write_virtual(address, data) else b"E14"
        if head in (b"Z", b"z"):
            return self.breakpoint(head == b"Z", p[1:])
        if head in (b"c", b"s", b"C", b"S"):
            return self.legacy_resume(head, p[1:])
        if head == b"D":
            self.send(b"OK")
            return "detach"
        if head == b"k":
            return "kill"
        return b""                          # not supported: gdb knows what that means

    def query(self, p: bytes) -> bytes | None:
        if p.startswith(b"qSupported"):
            return (b"PacketSize=%x;qXfer:features:read+;QStartNoAckMode+;swbreak+;hwbreak+;"
                    b"vContSupported+" % MAX_PACKET)
        if p == b"QStartNoAckMode":
            self.send(b"OK")
            self.noack = True
            return None
        if p.startswith(b"qXfer:features:read:"):
            annex, _, span = p[len(b"qXfer:features:read:"):].partition(b":")
            if annex != b"target.xml":
                return b"E00"
            offset, length = parse_address_length(span, 1 << 20)
            xml = self.arch.target_xml()
            length = min(length, MAX_PACKET // 2)
            chunk = xml[offset:offset + length]
            return (b"l" if offset + length >= len(xml) else b"m") + escape(chunk)
        if p == b"qAttached" or p.startswith(b"qAttached:"):
            return b"1"
        if p == b"qC":
            return b"QC%x" % (self.general.id + 1)
        if p == b"qfThreadInfo":
            return b"m" + b",".join(b"%x" % (v.id + 1) for v in self.control.vcpus)
        if p == b"qsThreadInfo":
            return b"l"
        if p.startswith(b"qThreadExtraInfo,"):
            vcpu = self.thread(p[len(b"qThreadExtraInfo,"):])
            if vcpu is None:
                return b"E01"
            text = f"vCPU {vcpu.id}, {mode_of(vcpu)} mode" if not vcpu.closed else \
                f"vCPU {vcpu.id}, closed"
            return to_hex(text.encode())
        if p.startswith(b"qRcmd,"):
            command = from_hex(p[len(b"qRcmd,"):], "monitor command").decode("utf-8", "replace")
            text = run_command(command, self.general, self.control.vcpus, self.control.support,
                               self.control.breakpoints, self.control.steps_taken)
            data = text.encode()
            step = MAX_PACKET // 2 - 8
            for i in range(0, len(data), step):
                self.send(b"O" + to_hex(data[i:i + step]))
            return b"OK"
        if p.startswith(b"qSymbol"):
            return b"OK"
        return b""

    def v_packet(self, p: bytes) -> bytes | str | None:
        if p == b"vCont?":
            return b"vCont;c;C;s;S;t"
        if p.startswith(b"vCont;"):
            actions: dict[int, str] = {}
            for part in p[len(b"vCont;"):].split(b";"):
                action, _, tid = part.partition(b":")
                kind = action[:1].decode("ascii", "replace")
                if kind not in ("c", "C", "s", "S", "t"):
                    raise ProtocolError(f"vCont action {action[:8]!r}")
                if kind in ("C", "S"):
                    hex_int(action[1:], "signal", 256)   # checked; a VM has no signals
                kind = kind.lower()
                targets = self.control.vcpus if not tid else [self.thread(tid, all_ok=True)]
                if tid and hex_int(tid.split(b".")[-1], "thread", 1 << 32) == -1:
                    targets = self.control.vcpus
                for vcpu in targets:
                    if vcpu is None:
                        raise ProtocolError(f"vCont: no thread {tid!r}")
                    actions.setdefault(vcpu.id, kind)       # the leftmost action applies
            return self.resume(actions)
        if p.startswith(b"vKill"):
            self.send(b"OK")
            return "kill"
        if p == b"vMustReplyEmpty":
            return b""
        return b""

    def set_thread(self, op: bytes, tid: bytes) -> bytes:
        value = hex_int(tid.split(b".")[-1], "thread", 1 << 32) if tid else 0
        if value in (0, -1):
            if op == b"c":
                self.resume_thread = -1
            return b"OK"
        vcpu = self.thread(tid)
        if vcpu is None or op not in (b"g", b"c"):
            return b"E01"
        if op == b"g":
            self.general = vcpu
        else:
            self.resume_thread = vcpu.id
        return b"OK"

    def thread(self, tid: bytes, all_ok: bool = False) -> Any:
        """The vCPU gdb thread ``tid`` names (``p1.2`` or ``2``), or None."""
        value = hex_int(tid.split(b".")[-1], "thread", 1 << 32)
        if value in (0, -1):
            return self.general if all_ok or value == 0 else None
        for vcpu in self.control.vcpus:
            if vcpu.id + 1 == value:
                return vcpu
        return None

    def register(self, number: bytes) -> Any:
        n = hex_int(number, "register number", 1 << 16)
        return self.arch.registers[n] if 0 <= n < len(self.arch.registers) else None

    def view(self) -> VcpuView:
        return self.control.view(self.general)

    def state(self) -> MachineState:
        cpu = self.general
        return MachineState(cpu.read_registers(), cpu.get_sregs(), cpu.fpu)

    def write_state(self, new: MachineState) -> None:
        old = self.state()
        cpu = self.general
        if new.regs != old.regs:
            cpu.write_registers({name: getattr(new.regs, name) for name in
                                 type(new.regs).__dataclass_fields__
                                 if getattr(new.regs, name) != getattr(old.regs, name)})
        if new.sregs != old.sregs:
            cpu.set_sregs(new.sregs)
        if new.fpu != old.fpu:
            cpu.fpu = new.fpu

    def breakpoint(self, insert: bool, body: bytes) -> bytes:
        fields = body.split(b";")[0].split(b",")
        if len(fields) != 3:
            raise ProtocolError("expected TYPE,ADDRESS,KIND")
        kind = hex_int(fields[0], "breakpoint type", 5)
        address = hex_int(fields[1], "address")
        length = hex_int(fields[2], "kind", 1 << 16)
        if kind < 0 or address < 0 or length <= 0:
            raise ProtocolError("breakpoint type, address and kind are positive")
        table = self.control.breakpoints
        if not insert:
            table.remove(kind, address, length, self.view())
            return b"OK"
        try:
            table.insert(kind, address, length, self.view(), mode_of(self.general))
        except BreakpointError as exc:
            log.info("gdb: Z%d at %#x: %s", kind, address, exc)
            if exc.unsupported:
                return b""
            return b"E%02x" % (errno.ENOSPC if "in use" in str(exc) or "more than" in str(exc)
                               or "at most" in str(exc) else errno.EINVAL)
        return b"OK"

    def legacy_resume(self, head: bytes, body: bytes) -> bytes | None:
        if head in (b"C", b"S"):
            signal, _, body = body.partition(b";")
            hex_int(signal, "signal", 256)
        if body:
            pc = hex_int(body, "address")
            target = self.general if self.resume_thread == -1 else \
                self.control.by_id(self.resume_thread)
            target.write_registers({"rip": pc})
        if head in (b"c", b"C"):
            return self.resume({v.id: "c" for v in self.control.vcpus})
        stepping = self.general.id if self.resume_thread == -1 else self.resume_thread
        return self.resume({stepping: "s"})

    def resume(self, actions: dict[int, str]) -> bytes | None:
        if self.gone:
            return b"E01"
        if self.last_stop is not None and self.last_stop.final:
            # the vCPU died: gdb hears that the process ended; the machine winds down
            self.gone = True
            self.control.server_finish_fatal()
            self.control.server_resume({v.id: "c" for v in self.control.vcpus})
            return b"X%02x" % self.last_stop.signal
        self.last_stop = None
        queued = self.control.server_resume(actions)
        if queued is not None:
            self.report(queued)
            return None
        self.waiting = True
        return None
