"""Address spaces (pyhv.core.buses.AddressSpace): ranges, overlaps, the fallback, the
per-port cache, and bad arguments."""

from __future__ import annotations

import pytest

from pyhv import EndRun, Handler, InvalidArgument, OverlapError, Space, exits
from pyhv.core.buses import AddressSpace, sink_writer


def read(address, size):
    return 0


def write(address, size, value):
    pass


@pytest.fixture(params=[True, False], ids=["cached", "uncached"])
def space(request):
    return AddressSpace(Space.IO, 0x10000, cached=request.param)


def test_find_and_claimed(space):
    com1 = space.add(0x3F8, 8, read, write)
    kbd = space.add(0x60, 1, read, None)
    assert isinstance(com1, Handler) and (com1.start, com1.end) == (0x3F8, 0x400)
    assert (com1.space, com1.read, com1.write) == (Space.IO, read, write)
    assert [space.find(a) for a in (0x3F8, 0x3FF, 0x60)] == [com1, com1, kbd]
    assert [space.find(a) for a in (0x3F7, 0x400, 0x61, 0, 0xFFFF)] == [None] * 5
    assert space.claimed(0x3FC) is com1 and space.claimed(0x3F7) is None
    assert space.handlers == (kbd, com1)                     # in address order
    assert com1 in space and Handler(Space.IO, 0x3F8, 0x400, read, write) not in space


@pytest.mark.parametrize("start, size", [(0x3F8, 8), (0x3F0, 9), (0x3FF, 1), (0x3FC, 2),
                                         (0x300, 0x200), (0x3F0, 0x20)])
def test_an_overlapping_range_is_refused_with_a_typed_error(space, start, size):
    space.add(0x3F8, 8, read, write)
    space.add(0x500, 8, read, write)
    with pytest.raises(OverlapError, match=r"io range .* overlaps <pyhv.Handler io "
                                           r"\[0x3f8, 0x400\)>") as info:
        space.add(start, size, read, None)
    assert isinstance(info.value, InvalidArgument) and isinstance(info.value, ValueError)
    assert len(space.handlers) == 2


def test_touching_ranges_are_not_overlaps(space):
    space.add(0x10, 0x10, read, None)
    below, above = space.add(0x0, 0x10, None, write), space.add(0x20, 1, read, None)
    assert [space.find(a) for a in (0xF, 0x20)] == [below, above]


@pytest.mark.parametrize("args, match", [
    ((0x10, 0, read, None), r"range \[0x10, 0x10\) is empty or outside 0..0x10000"),
    ((0x10, -1, read, None), "is empty or outside"),
    ((-1, 2, read, None), "is empty or outside"),
    ((0xFFFF, 2, read, None), r"\[0xffff, 0x10001\) is empty or outside"),
    ((0x10, 1, None, None), "give a read handler, a write handler or both"),
    ((0x10, 1, 42, None), "handler 42 is not callable"),
    ((0x10, 1, None, "print"), "handler 'print' is not callable"),
    (("0x10", 1, read, None), "io handler start must be an int, not '0x10'"),
    ((0x10, 1.0, read, None), "io handler size must be an int, not 1.0"),
    ((True, 1, read, None), "start must be an int, not True"),
])
def test_bad_arguments_are_refused(space, args, match):
    with pytest.raises(InvalidArgument, match=match):
        space.add(*args)
    assert space.handlers == ()


def test_the_fallback_takes_what_no_range_claims(space):
    com1 = space.add(0x3F8, 8, read, write)
    assert space.find(0x80) is None                          # cached as "nothing"
    space.set_fallback(read, None)
    fallback = space.fallback
    assert (fallback.start, fallback.end, fallback.read, fallback.write) == (0, 0x10000, read,
                                                                              None)
    assert space.find(0x80) is fallback and space.find(0x3F8) is com1
    assert space.claimed(0x80) is None                       # never the fallback
    space.set_fallback(None, None)
    assert space.fallback is None and space.find(0x80) is None


def test_adding_and_removing_invalidate_the_cache():
    space = AddressSpace(Space.IO, 0x10000, cached=True)
    assert space.find(0x60) is None
    assert space.port_cache == {0x60: None}                  # filled as it goes
    kbd = space.add(0x60, 1, read, None)
    assert space.port_cache == {} and space.find(0x60) is kbd
    space.remove(kbd)
    assert space.port_cache == {} and space.find(0x60) is None and kbd not in space
    again = space.add(0x60, 1, read, None)                   # the range is free again
    assert space.find(0x60) is again


def test_an_uncached_space_has_no_cache():
    mmio = AddressSpace(Space.MMIO, 1 << 52, cached=False)
    h = mmio.add(0xFEE00000, 0x1000, read, write)
    assert mmio.find(0xFEE00FFF) is h and mmio.port_cache == {}


def test_a_large_mmio_space():
    mmio = AddressSpace(Space.MMIO, 1 << 52, cached=False)
    h = mmio.add((1 << 52) - 0x1000, 0x1000, read, None)
    assert mmio.find((1 << 52) - 1) is h
    with pytest.raises(OverlapError, match=r"mmio range"):
        mmio.add((1 << 52) - 0x2000, 0x1001, None, write)
    with pytest.raises(InvalidArgument, match="outside"):
        mmio.add(1 << 52, 1, read, None)


def test_space_names_and_handler_repr():
    assert [str(s) for s in Space] == ["io", "mmio", "msr"] and Space("msr") is Space.MSR
    assert repr(Handler(Space.MMIO, 0xD0000000, 0xD0001000, read, None)) == (
        "<pyhv.Handler mmio [0xd0000000, 0xd0001000)>")


def test_end_run_carries_its_exit():
    reset = exits.Reset(source="test")
    assert EndRun(reset).exit is reset


def test_sink_writer_takes_a_callable_or_a_stream():
    got = []
    assert sink_writer(got.append) == got.append

    class Stream:
        def write(self, data):
            got.append(data)

    sink_writer(Stream())(b"x")
    assert got == [b"x"]
    with pytest.raises(InvalidArgument, match="neither callable nor a stream"):
        sink_writer(42)


def test_removing_a_handler_that_is_not_there_is_a_typed_refusal(space):
    other = AddressSpace(Space.IO, 0x10000, cached=True).add(0x60, 1, read, None)
    with pytest.raises(InvalidArgument):
        space.remove(other)
