"""Debug registers as values (pyhv.x86.debug) and the reasons a Debug exit gives."""

from __future__ import annotations

import pytest

from pyhv import GuestDebug, HardwareBreakpoint, exits
from pyhv.core.loop import describe_debug
from pyhv.errors import InvalidArgument
from pyhv.x86.debug import debug_registers, dr6_hits, dr6_single_step


def test_dr7_enables_each_register_with_its_access_and_size():
    regs = debug_registers([None, HardwareBreakpoint(0x2000, "access", 8),
                            HardwareBreakpoint(0x3000, "write", 2), HardwareBreakpoint(0x10)])
    assert regs[:4] == [0, 0x2000, 0x3000, 0x10] and regs[4:7] == [0, 0, 0]
    dr7 = regs[7]
    assert dr7 & 0xFF == 0b1010_1000                         # G1, G2, G3
    assert (dr7 >> 20) & 0xF == 0b1011                       # DR1: RW=11, LEN=10 (8 bytes)
    assert (dr7 >> 24) & 0xF == 0b0101                       # DR2: RW=01, LEN=01 (2 bytes)
    assert (dr7 >> 28) & 0xF == 0                            # DR3: execute
    assert debug_registers([]) == [0] * 8


@pytest.mark.parametrize("args, match", [
    ((0x1000, "read"), "choose one of"), ((0x1000, "execute", 4), "has size 1"),
    ((0x1002, "write", 4), "aligned"), ((0x1000, "write", 3), "1, 2, 4 or 8"),
    ((-1,), "64-bit"), ((True,), "64-bit"),
])
def test_bad_breakpoints(args, match):
    with pytest.raises(InvalidArgument, match=match):
        HardwareBreakpoint(*args)


def test_at_most_four_registers():
    with pytest.raises(InvalidArgument, match="4 debug registers"):
        GuestDebug(hardware=(HardwareBreakpoint(0),) * 5)
    with pytest.raises(InvalidArgument, match="is not a pyhv.HardwareBreakpoint"):
        GuestDebug(hardware=(0x1000,))


def test_dr6_and_the_reasons_of_debug_exits():
    assert dr6_hits(0xFFFF0FF9) == (0, 3) and dr6_single_step(0xFFFF4FF0)
    settings = GuestDebug(hardware=(None, HardwareBreakpoint(0x3000, "write", 4)))
    hit = describe_debug(exits.Debug(1, 0x1010, 0xFFFF0FF2, 0), settings)
    assert (hit.reason, hit.address, hit.access) == ("watchpoint", 0x3000, "write")
    assert describe_debug(exits.Debug(1, 0x1010, 0xFFFF0FF1, 0), settings).address is None
    assert exits.Debug(3, 0x1000, 0, 0).reason == "software_breakpoint"
    assert exits.Debug(1, 0x1000, 0xFFFF0FF0, 0).reason == "unknown"
