"""pyhv.gdb's server at the packet level, with a client written here: what gdb sends and
what it must not be able to break (malformed, hostile and random packets), checked against
a real guest that must still run to its end afterwards."""

from __future__ import annotations

import random
import socket
import threading
import time

import pytest

import pyhv
import pyhv.gdb
from pyhv import devices, exits
from pyhv.gdb.probe import debug_support
from pyhv.gdb.protocol import Packet, PacketReader, frame, to_hex
from pyhv.testing import assemble

from ..conftest import fd_count

# counter at 0x2000 goes up until release (0x2008) is set, then debug-exit with counter's low
# byte; `bump` is at 0x1010
GUEST = """
    jmp 1f
    .org 0x10
bump:
    incq 0x2000
    ret
1:  call bump
    cmpq $0, 0x2008
    je 1b
    mov 0x2000, %al
    out %al, $0xf4
    hlt
"""
BUMP = 0x1010


class Client:
    """A minimal gdb: sends packets, acks what it gets, returns reply payloads."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)   # as gdb does
        self.reader = PacketReader()
        self.pending: list[bytes] = []
        self.console = b""
        self.noack = False

    def raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self, timeout: float = 20) -> bytes:
        deadline = time.monotonic() + timeout
        while not self.pending:
            self.sock.settimeout(max(deadline - time.monotonic(), 0.01))
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("the server closed the connection")
            for event in self.reader.feed(data):
                if isinstance(event, Packet):
                    if not self.noack:
                        self.sock.sendall(b"+")
                    if event.payload[:1] == b"O" and event.payload != b"OK":
                        self.console += bytes.fromhex(event.payload[1:].decode())
                        continue                  # monitor output, before the reply
                    self.pending.append(event.payload)
        return self.pending.pop(0)

    def ask(self, payload: bytes) -> bytes:
        self.raw(frame(payload))
        return self.reply()

    def drain(self) -> bytes:
        """Whatever the server still has to say (NAKs, replies to broken framing)."""
        got = b""
        self.sock.settimeout(0.3)
        try:
            while chunk := self.sock.recv(65536):
                got += chunk
        except TimeoutError:
            pass
        self.pending.clear()
        self.reader = PacketReader()
        return got

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def served(kvm):
    part = pyhv.Partition(memory="16M")
    part.attach(devices.IsaDebugExit(0xF4))
    part.memory.write(0x1000, assemble(GUEST, origin=0x1000))
    part.create_vcpu(mode="long", entry=0x1000)
    server = pyhv.gdb.serve(part, "tcp:127.0.0.1:0", wait=True)
    results: list[object] = []
    runner = threading.Thread(target=lambda: results.append(part.run(timeout=120)),
                              daemon=True)
    runner.start()
    client = Client(server.port)
    yield part, server, client, results, runner
    client.close()
    server.close()
    part.stop()
    runner.join(30)
    part.close()


def release_and_finish(part, client, results, runner) -> exits.Exit:
    assert client.ask(b"M2008,8:0100000000000000") == b"OK"
    client.raw(frame(b"vCont;c"))
    assert client.reply().startswith(b"W")
    runner.join(30)
    return results[0].exit


def test_the_handshake_gdb_does(served):
    part, server, client, results, runner = served
    features = client.ask(b"qSupported:multiprocess+;swbreak+;hwbreak+;xmlRegisters=i386")
    assert b"PacketSize=4000" in features and b"qXfer:features:read+" in features
    assert client.ask(b"vMustReplyEmpty") == b""
    assert client.ask(b"QStartNoAckMode") == b"OK"
    client.noack = True
    xml = client.ask(b"qXfer:features:read:target.xml:0,fff")
    assert xml[:1] in (b"m", b"l") and b"i386:x86-64" in xml
    assert client.ask(b"?") == b"T05thread:1;"
    assert client.ask(b"qfThreadInfo") == b"m1" and client.ask(b"qsThreadInfo") == b"l"
    assert client.ask(b"qAttached") == b"1" and client.ask(b"qC") == b"QC1"
    regs = client.ask(b"g")
    assert len(regs) == 2 * 600 and regs[16 * 16:17 * 16] == b"0010000000000000"   # rip
    assert client.ask(b"p10") == b"0010000000000000"
    assert client.ask(b"m1000,2") == b"eb" + to_hex(part.memory.read(0x1001, 1))
    assert release_and_finish(part, client, results, runner) == exits.DebugExit(
        3, 1, 0xF4, rip=results[0].exit.rip)


def test_breakpoints_steps_and_memory_faults(served):
    part, server, client, results, runner = served
    assert client.ask(b"Z0,1010,1") == b"OK"
    client.raw(frame(b"c"))
    assert client.reply() in (b"T05thread:1;swbreak:;", b"T05thread:1;hwbreak:;")
    assert client.ask(b"p10") == b"1010000000000000"
    assert client.ask(b"m1010,1") == b"48"                  # the int3 is hidden
    assert client.ask(b"z0,1010,1") == b"OK"
    assert part.memory.read(BUMP, 1) == b"\x48"
    client.raw(frame(b"vCont;s:1"))
    assert client.reply() == b"T05thread:1;"
    assert client.ask(b"p10") == b"1810000000000000"        # past incq 0x2000 (8 bytes)
    assert client.ask(b"m700000000000,4") == b"E14"         # not mapped
    assert client.ask(b"M700000000000,1:00") == b"E14"
    assert client.ask(b"m7000000000000000,4") == b"E14"     # not canonical
    assert len(client.ask(b"mfffffc,8")) == 8                # up to the end of RAM
    assert client.ask(b"X2010,0:") == b"OK"
    assert client.ask(b"X2010,3:a}]b") == b"OK"             # }] is an escaped }
    assert part.memory.read(0x2010, 3) == b"a}b"
    assert release_and_finish(part, client, results, runner).value == 1


def test_four_debug_registers_are_all_there_is(served):
    part, server, client, results, runner = served
    for i in range(4):
        assert client.ask(b"Z1,%x,1" % (0x1100 + i)) == b"OK"
    assert client.ask(b"Z1,1200,1") == b"E1c"               # ENOSPC: gdb says too many
    for i in range(4):
        assert client.ask(b"z1,%x,1" % (0x1100 + i)) == b"OK"
    access = client.ask(b"Z4,2000,8")       # kvm_pvm: unsupported (comparing misses reads)
    assert access == (b"OK" if debug_support().write_watchpoints else b"")
    if access == b"OK":
        assert client.ask(b"z4,2000,8") == b"OK"
    assert release_and_finish(part, client, results, runner).value == 1


def test_ctrl_c_and_a_write_watchpoint(served):
    part, server, client, results, runner = served
    assert client.ask(b"Z2,2000,8") == b"OK"
    client.raw(frame(b"vCont;c"))
    stop = client.reply()
    assert stop.startswith(b"T05thread:1;watch:2000;"), stop
    assert client.ask(b"m2000,8") == b"0100000000000000"
    assert client.ask(b"z2,2000,8") == b"OK"
    client.raw(frame(b"vCont;c"))
    time.sleep(0.3)
    client.raw(b"\x03")
    assert client.reply() == b"T02thread:1;"
    release_and_finish(part, client, results, runner)
    assert part.memory.read_u64(0x2000) > 1                 # it ran between the stops


HOSTILE = [
    b"", b"m", b"mzz,4", b"m1000", b"m1000,ffffffff", b"mffffffffffffffff,10", b"M1000,4:zz",
    b"M1000,4:00", b"M1000,ffffff:00", b"X1000,2:}", b"X1000,1:abc", b"g0", b"G00",
    b"G" + b"0" * 1199 + b"x", b"p", b"pfff", b"pzz", b"P10", b"P10=00", b"P999=00",
    b"Pzz=00", b"Z", b"Z9,1000,1", b"Z0,1000", b"Z0,zz,1", b"Z2,1000,0", b"Z2,1000,ffff",
    b"z0,1000,1", b"H", b"Hg99", b"Hgzz", b"Hq1", b"T99", b"Tzz", b"vCont;q", b"vCont;s:99",
    b"vCont;Czz", b"vCont", b"vFile:open:", b"qXfer:features:read:other.xml:0,10",
    b"qXfer:features:read:target.xml:zz", b"qXfer:features:read:target.xml:ffffff,10",
    b"qRcmd,zz", b"qRcmd," + to_hex(b"info mem" * 200), b"qThreadExtraInfo,99",
    b"qThreadExtraInfo,zz", b"Cqq", b"S1;zz", b"c" + b"f" * 40, b"\xff\xfe", b"$", b"a#",
    b"}" * 100, b"QBogus", b"!", b"R00", b"vRun;", b"x1000,4",
]


def test_hostile_packets_get_error_replies_and_break_nothing(served):
    part, server, client, results, runner = served
    for payload in HOSTILE:
        if b"$" in payload or b"#" in payload:              # breaks the framing itself
            client.raw(frame(payload))
            assert client.drain().startswith(b"-"), payload
            continue
        reply = client.ask(payload)
        assert isinstance(reply, bytes), payload
        if payload[:1] in (b"m", b"M", b"X", b"G", b"p", b"P", b"Z", b"H", b"T"):
            assert reply.startswith(b"E") or reply in (b"", b"OK"), (payload, reply)
    client.raw(b"$g#00")                                     # a bad checksum: NAK
    assert client.drain() == b"-"
    client.raw(b"$" + b"A" * 70000 + b"#00")                 # longer than any packet
    assert client.drain() == b"-"
    assert client.ask(b"?") == b"T05thread:1;"
    assert part.memory.read(0x1000, 1) == b"\xeb"            # the guest is as it was
    assert release_and_finish(part, client, results, runner).value == 1


def test_random_packets_leave_server_and_guest_usable(served):
    part, server, client, results, runner = served
    rng = random.Random(2024)
    heads = b"?gGpPmMXZzHTqQvDcsCSk!\x03"
    for _ in range(400):
        head = bytes((rng.choice(heads),)) if rng.random() < 0.8 else b""
        body = bytes(rng.choice(b"0123456789abcdef,:;=}$#*xyzXqPmv") for _ in range(
            rng.randrange(40)))
        payload = head + body
        if payload[:1] in (b"c", b"s", b"C", b"S", b"k", b"D", b"v", b"\x03"):
            payload = b"q" + payload              # resuming and leaving have tests of their own
        client.raw(frame(payload) if rng.random() < 0.9 else frame(payload)[:-1] + b"0")
        while True:                               # every packet is answered (or NAK'ed)
            client.sock.settimeout(20)
            byte = client.sock.recv(1)
            if byte == b"-":
                break
            if byte == b"$":
                rest = b""
                while not rest.endswith(b"#") or len(rest) < 1:
                    rest += client.sock.recv(1)
                client.sock.recv(2)
                client.raw(b"+")
                break
    client.drain()
    assert client.ask(b"?") == b"T05thread:1;"
    assert client.ask(b"z0,1010,1") == b"OK" and client.ask(b"z2,2000,8") == b"OK"
    for kind in range(1, 5):                      # random Z packets may have left some in
        for address in (0x1010, 0x2000):
            client.ask(b"z%d,%x,1" % (kind, address))
    assert part.state is not pyhv.PartitionState.POISONED
    assert release_and_finish(part, client, results, runner).value >= 1


def test_a_second_gdb_after_the_first_left(served):
    part, server, client, results, runner = served
    assert client.ask(b"Z0,1010,1") == b"OK"
    client.raw(frame(b"D"))
    assert client.reply() == b"OK"
    client.close()
    deadline = time.monotonic() + 10
    while server.connected and time.monotonic() < deadline:
        time.sleep(0.01)
    assert part.memory.read(BUMP, 1) == b"\x48"             # the breakpoint is out
    while part.memory.read_u64(0x2000) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)                                     # it runs while detached
    assert part.memory.read_u64(0x2000) >= 2
    again = Client(server.port)
    try:
        assert again.ask(b"?").startswith(b"T05")           # attaching stops the guest
        count = part.memory.read_u64(0x2000)
        time.sleep(0.2)
        assert part.memory.read_u64(0x2000) == count
        assert release_and_finish(part, again, results, runner).value >= 1
    finally:
        again.close()


def test_kill_with_k(served):
    part, server, client, results, runner = served
    client.raw(frame(b"k"))
    runner.join(30)
    assert isinstance(results[0].exit, exits.Canceled)
    assert part.state is pyhv.PartitionState.STOPPED


def test_bad_server_arguments_leave_nothing_behind(kvm):
    pyhv.gdb.debug_support()                    # the probe, and /dev/kvm's handle, made once
    with pyhv.Partition(memory="2M") as part:
        with pytest.raises(pyhv.InvalidArgument, match="no vCPU"):
            pyhv.gdb.serve(part, "tcp:127.0.0.1:0")
        cpu = part.create_vcpu(mode="long", entry=0x1000)
        before = fd_count()
        with pytest.raises(pyhv.InvalidArgument, match="arch"):
            pyhv.gdb.serve(part, "tcp:127.0.0.1:0", arch="arm")
        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        with taken, pytest.raises(pyhv.HypervisorError, match="cannot listen"):
            pyhv.gdb.serve(part, f"tcp:127.0.0.1:{taken.getsockname()[1]}")
        assert cpu.debugger is None
        with pyhv.gdb.serve(part, "tcp:127.0.0.1:0"):
            with pytest.raises(pyhv.InvalidArgument, match="attached to this partition already"):
                pyhv.gdb.serve(part, "tcp:127.0.0.1:0")
        assert cpu.debugger is None
        threads = {t.name for t in threading.enumerate()}
        assert "pyhv-gdb" not in threads
        with pytest.raises(pyhv.InvalidArgument, match="unknown option"):
            pyhv.gdb.serve(part, "tcp::0,telnet")
        with pyhv.gdb.serve(part, "tcp:127.0.0.1:0") as server:   # one gdb came and went
            Client(server.port).close()
        assert fd_count() == before             # listener, connection, wake pipe: closed


def test_an_exit_nobody_handles_is_a_sigbus_stop_then_the_end(kvm):
    with pyhv.Partition(memory="16M") as part:
        part.memory.write(0x1000, assemble("mov $0xd0000000, %ebx\nmovl $1, (%rbx)\nhlt",
                                           origin=0x1000))
        part.create_vcpu(mode="long", entry=0x1000)
        with pyhv.gdb.serve(part, "tcp:127.0.0.1:0", wait=True) as server:
            results: list[object] = []
            runner = threading.Thread(target=lambda: results.append(part.run(timeout=60)))
            runner.start()
            client = Client(server.port)
            try:
                client.raw(frame(b"vCont;c"))
                assert client.reply() == b"T0athread:1;"          # SIGBUS, where it died
                assert client.ask(b"p10") == b"0b10000000000000"  # past the faulting store
                assert runner.is_alive()                          # held until gdb decides
                client.raw(frame(b"vCont;c"))
                assert client.reply() == b"X0a"                   # then it is over
                runner.join(30)
            finally:
                client.close()
        assert isinstance(results[0].exit, exits.MmioWrite)
        assert part.state is pyhv.PartitionState.POISONED


def test_closing_a_partition_whose_runs_wait_for_gdb(kvm):
    """-S and no gdb ever comes: closing the partition ends the waiting run."""
    part = pyhv.Partition(memory="16M")
    part.memory.write(0x1000, b"\xf4")
    part.create_vcpu(mode="long", entry=0x1000)
    server = pyhv.gdb.serve(part, "tcp:127.0.0.1:0", wait=True)
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(part.run(timeout=60))
        except pyhv.HypervisorError as exc:
            outcome.append(exc)

    runner = threading.Thread(target=run)
    runner.start()
    time.sleep(0.2)
    assert runner.is_alive() and not outcome           # held: no gdb has continued it
    part.close()
    runner.join(10)
    assert not runner.is_alive() and isinstance(outcome[0], pyhv.ClosedError)
    server.close()


def test_a_typed_run_loop_under_gdb(kvm):
    """The user's own loop of cpu.run() handles the OUTs; gdb breaks, steps, interrupts and
    hears of the final halt."""
    code = GUEST.replace("    mov 0x2000, %al\n    out %al, $0xf4\n", "")
    with pyhv.Partition(memory="16M") as part:
        part.memory.write(0x1000, assemble(code.replace("incq 0x2000", "incq 0x2000\n"
                                                        "    out %al, $0x80"), origin=0x1000))
        cpu = part.create_vcpu(mode="long", entry=0x1000)
        seen: list[object] = []

        def loop() -> None:
            outs = 0
            while True:
                exit = cpu.run(timeout=60)
                if isinstance(exit, exits.IoOut):
                    outs += 1
                    continue
                seen.append((exit, outs))
                return

        with pyhv.gdb.serve(part, "tcp:127.0.0.1:0", wait=True) as server:
            runner = threading.Thread(target=loop)
            runner.start()
            client = Client(server.port)
            try:
                assert client.ask(b"Z0,1010,1") == b"OK"
                client.raw(frame(b"c"))
                assert client.reply() == b"T05thread:1;swbreak:;"
                assert client.ask(b"z0,1010,1") == b"OK"
                for pc in (b"18", b"1a"):                        # incq, then past the OUT
                    client.raw(frame(b"vCont;s:1"))
                    assert client.reply() == b"T05thread:1;"
                    assert client.ask(b"p10") == pc + b"10000000000000"
                client.raw(frame(b"c"))
                time.sleep(0.3)
                client.raw(b"\x03")
                assert client.reply() == b"T02thread:1;"
                assert client.ask(b"M2008,8:0100000000000000") == b"OK"
                client.raw(frame(b"c"))
                assert client.reply() == b"W00"                  # the guest halted
                runner.join(30)
            finally:
                client.close()
        exit, outs = seen[0]
        assert isinstance(exit, exits.Halt) and outs == part.memory.read_u64(0x2000) > 1
