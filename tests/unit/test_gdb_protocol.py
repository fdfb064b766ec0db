"""pyhv.gdb without KVM: packet framing and its limits against hostile bytes, the target
descriptions and register encodings, breakpoint bookkeeping, address parsing."""

from __future__ import annotations

import random
import xml.etree.ElementTree as ET

import pytest

from pyhv import exits
from pyhv.errors import InvalidArgument
from pyhv.gdb.breakpoints import BreakpointError, Breakpoints, FlatView, split_aligned
from pyhv.gdb.probe import DebugSupport
from pyhv.gdb.protocol import (
    MAX_PACKET,
    Ack,
    BadPacket,
    Interrupt,
    Nack,
    Packet,
    PacketReader,
    ProtocolError,
    checksum,
    escape,
    frame,
    from_hex,
    hex_int,
    parse_address_length,
    unescape,
)
from pyhv.gdb.registers import ARCHES, MachineState
from pyhv.gdb.server import parse_address
from pyhv.gdb.target import exits_after_step, signal_for
from pyhv.x86.registers import DescriptorTable, Fpu, Regs, Segment, SpecialRegs

PVM = DebugSupport("kvm_pvm", True, True, False, "emulation-failure", False, False, False,
                   True, True)
HARDWARE = DebugSupport("kvm_intel", True, True, True, "debug-exit", True, True, True,
                        False, True)


# -- framing ----------------------------------------------------------------------------------
def test_frames_and_checksums():
    assert frame(b"") == b"$#00"
    assert frame(b"qSupported") == b"$qSupported#37"
    assert checksum(b"\xff\x02") == 1


def test_reader_splits_a_stream_fed_byte_by_byte():
    stream = b"+" + frame(b"m1000,4") + b"\x03-" + frame(b"c")
    reader = PacketReader()
    events = [e for b in stream for e in reader.feed(bytes((b,)))]
    assert events == [Ack(), Packet(b"m1000,4"), Interrupt(), Nack(), Packet(b"c")]


@pytest.mark.parametrize("wire, reason", [
    (b"$g#68", "checksum 0x68, expected 0x67"),
    (b"$g#zz", "checksum b'zz' is not hex"),
    (b"$g$m0,1#fd", "packet restarted before its end"),
])
def test_broken_packets_are_reported_not_executed(wire, reason):
    events = PacketReader().feed(wire)
    assert events[0] == BadPacket(reason)
    assert all(not isinstance(e, Packet) or e.payload == b"m0,1" for e in events)


def test_an_endless_packet_is_held_to_the_limit():
    reader = PacketReader()
    assert reader.feed(b"$") == []
    for _ in range(100):                                   # 400 KiB with no end in sight
        assert reader.feed(b"A" * 4096) == []
    assert reader.feed(b"#00") == [BadPacket(f"packet longer than {MAX_PACKET} bytes")]
    assert reader.feed(frame(b"?")) == [Packet(b"?")]          # usable afterwards


def test_random_bytes_never_break_the_reader():
    rng = random.Random(12)
    reader = PacketReader()
    for _ in range(2000):
        alphabet = b"$#+-\x03}*0123456789abcdefgm,:"
        data = bytes(rng.choice(alphabet) for _ in range(rng.randrange(64)))
        for event in reader.feed(data):
            assert isinstance(event, (Packet, BadPacket, Ack, Nack, Interrupt))
    reader.feed(b"#00")
    assert reader.feed(frame(b"g")) == [Packet(b"g")]


def test_binary_escapes_round_trip():
    data = bytes(range(256))
    assert unescape(escape(data)) == data
    assert b"#" not in escape(data) and b"$" not in escape(data) and b"*" not in escape(data)
    with pytest.raises(ProtocolError, match="inside an escape"):
        unescape(b"ab}")


@pytest.mark.parametrize("text, limit, error", [
    (b"", 1 << 64, "is not a hex number"), (b"xyz", 1 << 64, "is not a hex number"),
    (b"1" * 33, 1 << 128, "is not a hex number"), (b"100", 0x100, "is too large"),
])
def test_hex_numbers_are_checked(text, limit, error):
    with pytest.raises(ProtocolError, match=error):
        hex_int(text, "number", limit)


def test_address_length_pairs_are_bounded():
    assert parse_address_length(b"ffffffffffffffff,1", 8) == ((1 << 64) - 1, 1)
    for bad in (b"1000", b"1000,", b",4", b"1000,9", b"ffffffffffffffff,2", b"-1,4"):
        with pytest.raises(ProtocolError):
            parse_address_length(bad, 8)
    with pytest.raises(ProtocolError):
        from_hex(b"abc")


@pytest.mark.parametrize("spec, parsed", [
    ("tcp::1234", ("tcp", ("127.0.0.1", 1234))),
    ("tcp:0.0.0.0:5", ("tcp", ("0.0.0.0", 5))),
    ("tcp:[::1]:7", ("tcp", ("::1", 7))),
    ("unix:/run/g.sock,server,nowait", ("unix", "/run/g.sock")),
])
def test_gdb_addresses(spec, parsed):
    assert parse_address(spec) == parsed


@pytest.mark.parametrize("spec", ["tcp:1234:", "tcp::99999", "udp::1", "unix:", "tcp::1,bogus",
                                  "1234", ""])
def test_bad_gdb_addresses(spec):
    with pytest.raises(InvalidArgument):
        parse_address(spec)


# -- registers ----------------------------------------------------------------------------------
def _state() -> MachineState:
    seg = Segment(base=0x1000, selector=0x10)
    sregs = SpecialRegs(seg, seg, seg, Segment(base=0xF5), Segment(base=0x65), seg, seg, seg,
                        DescriptorTable(), DescriptorTable(), cr0=0x80050033, cr2=0xDEAD,
                        cr3=0x9000, cr4=0x20, cr8=0, efer=0x500, apic_base=0)
    fpu = Fpu(tuple(bytes([i] * 10 + [0] * 6) for i in range(8)), 0x37F, 0x3800, 0x81, 0x123,
              0x4000_0000_5000, 0x6000, tuple(bytes([0x40 + i] * 16) for i in range(16)),
              0x1F80)
    return MachineState(Regs(rax=1, rbx=2, rcx=3, rsp=0x7000, rip=0x100000, rflags=0x246,
                             r15=0xF), sregs, fpu)


@pytest.mark.parametrize("name, size", [("i386:x86-64", 600), ("i386", 340)])
def test_target_descriptions(name, size):
    arch = ARCHES[name]
    assert arch.size == size
    root = ET.fromstring(arch.target_xml())
    assert root.find("architecture").text == name
    regs = root.findall(".//reg")
    assert [r.get("name") for r in regs] == [r.name for r in arch.registers]
    assert [int(r.get("regnum")) for r in regs] == list(range(len(regs)))
    features = [f.get("name") for f in root.findall("feature")]
    assert features[:2] == ["org.gnu.gdb.i386.core", "org.gnu.gdb.i386.sse"]
    core = {r.get("name") for r in root.find("feature").findall("reg")}
    assert {"eflags", "cs", "st7", "fop"} <= core


def test_registers_encode_little_endian_in_gdb_order():
    amd64 = ARCHES["i386:x86-64"]
    data = amd64.read_all(_state())
    assert data[:8] == (1).to_bytes(8, "little")                # rax
    assert data[8:16] == (2).to_bytes(8, "little")              # rbx (gdb: rax, rbx, rcx)
    assert data[16 * 8:17 * 8] == (0x100000).to_bytes(8, "little")
    i386 = ARCHES["i386"]
    small = i386.read_all(_state())
    assert small[:4] == (1).to_bytes(4, "little") and small[4:8] == (3).to_bytes(4, "little")


def test_writing_every_register_back_changes_nothing_and_one_changes_one():
    for arch in ARCHES.values():
        state = _state()
        assert arch.write_all(state, arch.read_all(state)) == state
        rip = arch.registers[arch.number(arch.pc)]
        moved = rip.set(state, (0x2000).to_bytes(rip.size, "little"))
        assert moved.regs.rip == 0x2000 and moved.sregs == state.sregs
    eax = ARCHES["i386"].registers[0]
    wide = _state()
    wide = MachineState(Regs(rax=0x1_2345_6789), wide.sregs, wide.fpu)
    assert eax.set(wide, b"\x00\x00\x00\x00").regs.rax == 0x1_0000_0000   # the upper half stays


def test_x87_tags_come_from_the_values():
    arch = ARCHES["i386:x86-64"]
    ftag = arch.registers[arch.number("ftag")]
    state = _state()                       # TOP=7, abridged 0x81: ST1 special, ST0 zero
    word = int.from_bytes(ftag.get(state), "little")
    assert [(word >> 2 * p) & 3 for p in range(8)] == [2, 3, 3, 3, 3, 3, 3, 1]
    assert ftag.set(state, (0xFFFF).to_bytes(4, "little")).fpu.ftwx == 0


# -- breakpoints -----------------------------------------------------------------------------------
def test_routes_follow_what_the_backend_delivers():
    assert PVM.breakpoint_route("long") == "int3" and PVM.breakpoint_route("real") == "hardware"
    assert PVM.watchpoint_route("write", "long") == "step"
    assert PVM.watchpoint_route("read", "long") == "none"
    assert PVM.breakpoint_route("user") == "none"
    assert HARDWARE.breakpoint_route("real") == "int3"
    assert HARDWARE.watchpoint_route("access", "user") == "hardware"
    assert "emulated by single-stepping" in PVM.report()


def test_four_debug_registers_then_an_error():
    table = Breakpoints(HARDWARE)
    view = FlatView(bytearray(0x1000))
    for i in range(3):
        table.insert(1, 0x100 + i, 1, view, "long")
    table.insert(2, 0x200, 4, view, "long")
    assert len(table.hardware()) == 4
    with pytest.raises(BreakpointError, match="all 4 debug registers are in use"):
        table.insert(3, 0x300, 8, view, "long")
    assert table.remove(1, 0x100, 1, view) and not table.remove(1, 0x100, 1, view)
    table.insert(3, 0x300, 8, view, "long")
    assert table.owner_of_register(3).kind == 3
    with pytest.raises(BreakpointError, match="more than 4"):
        table.insert(2, 0x400, 40, view, "long")


def test_int3_is_hidden_from_reads_and_survives_writes():
    view = FlatView(bytearray(b"\x90" * 0x100))
    table = Breakpoints(PVM)
    table.insert(0, 0x10, 1, view, "protected")
    assert table.insert(0, 0x10, 1, view, "protected").saved == 0x90   # again: the same one
    assert view.memory[0x10] == 0xCC and table.hide(0xE, bytes(view.memory[0xE:0x12])) == \
        b"\x90" * 4
    assert table.write_through(0x10, b"\xf4") == b"\xcc"       # gdb writes: int3 stays
    table.remove(0, 0x10, 1, view)
    assert view.memory[0x10] == 0xF4
    table.insert(0, 0x20, 1, view, "long")
    view.memory[0x20] = 0x55                                  # the guest rewrote its code
    table.remove(0, 0x20, 1, view)
    assert view.memory[0x20] == 0x55                          # left alone
    with pytest.raises(BreakpointError, match="no RAM"):
        table.insert(0, 0x1000, 1, view, "long")


def test_emulated_watchpoints_compare_after_each_step():
    view = FlatView(bytearray(0x3000))
    table = Breakpoints(PVM)
    table.insert(2, 0xFFE, 4, view, "long")                   # across a page
    assert table.needs_stepping and table.step_hit(0x10, view) is None
    view.memory[0x1000] = 9
    hit = table.step_hit(0x12, view)
    assert (hit.kind, hit.address) == (2, 0xFFE)
    assert table.step_hit(0x14, view) is None                 # the new value is the baseline
    with pytest.raises(BreakpointError, match="unsupported|cannot deliver"):
        table.insert(3, 0x100, 4, view, "long")
    for i in range(3):
        table.insert(2, 0x100 + 8 * i, 8, view, "long")
    with pytest.raises(BreakpointError, match="at most 4"):
        table.insert(2, 0x200, 8, view, "long")


def test_aligned_pieces():
    assert split_aligned(0x1000, 16) == [(0x1000, 8), (0x1008, 8)]
    assert split_aligned(0x1001, 3) == [(0x1001, 1), (0x1002, 2)]


@pytest.mark.parametrize("code, fix", [
    (b"\xe6\xf4", (2, False)), (b"\x66\xef", (2, False)), (b"\xf3\x48\x6f", (3, False)),
    (b"\xf4", (1, True)), (b"\xec", None), (b"\x66" * 20, None), (b"", None),
])
def test_instructions_whose_step_is_guarded(code, fix):
    assert exits_after_step(code) == fix


def test_stop_signals():
    assert signal_for(exits.Shutdown()) == 11
    assert signal_for(exits.InternalError(1)) == 4
    assert signal_for(exits.GuestException(0, None)) == 8
    assert signal_for(exits.MmioWrite(0, 1, b"\0")) == 10
