"""Host memory and page bitmaps (pyhv._native.memory): plain anonymous mappings, no KVM."""

from __future__ import annotations

import pytest

from pyhv import InvalidArgument, KvmError
from pyhv._native.memory import PAGE_SIZE, HostMapping, PageBitmap


def bitmap(pages: int, *ranges: tuple[int, int]) -> PageBitmap:
    b = PageBitmap(pages)
    for first, count in ranges:
        b.set_range(first, count)
    return b


@pytest.fixture
def mapping():
    m = HostMapping(16 * PAGE_SIZE)
    yield m
    m.free()


# -- PageBitmap ---------------------------------------------------------------------------
def test_set_range_sets_exactly_those_pages_across_words():
    b = bitmap(200, (3, 2), (62, 4), (127, 1), (190, 10))
    assert list(b) == [3, 4, 62, 63, 64, 65, 127] + list(range(190, 200))
    assert b.count() == 17
    assert b.runs() == [(3, 2), (62, 4), (127, 1), (190, 10)]


def test_empty_and_non_positive_ranges_change_nothing():
    b = bitmap(64, (5, 0), (5, -3))
    assert list(b) == [] and b.count() == 0 and b.runs() == []


def test_adjacent_ranges_make_one_run():
    assert bitmap(100, (10, 5), (15, 5), (21, 1)).runs() == [(10, 10), (21, 1)]


def test_the_sizes_in_words():
    assert [PageBitmap(n).words for n in (0, 1, 64, 65, 128, 129)] == [1, 1, 1, 2, 2, 3]
    assert list(PageBitmap(0)) == []


def test_move_from_ors_and_clears_the_source():
    dst, src = bitmap(130, (0, 2)), bitmap(130, (1, 3), (128, 2))
    dst.move_from(src)
    assert list(dst) == [0, 1, 2, 3, 128, 129] and list(src) == [] and src.count() == 0


def test_move_from_a_bitmap_of_another_size_moves_the_common_words():
    small, large = bitmap(64, (0, 1)), bitmap(192, (1, 1), (70, 1), (150, 1))
    small.move_from(large)
    assert list(small) == [0, 1] and list(large) == [70, 150]     # past small's one word: kept


def test_copy_is_independent():
    b = bitmap(70, (65, 2))
    dup = b.copy()
    b.set_range(0, 1)
    dup.clear()
    assert list(b) == [0, 65, 66] and list(dup) == [] and dup.pages == 70


def test_clear():
    b = bitmap(300, (0, 300))
    assert b.count() == 300
    b.clear()
    assert b.count() == 0 and list(b) == []


def test_set_range_stays_within_the_bitmaps_pages():
    # bits 8..12 of a 10-page bitmap: all in its one word, so no memory is overrun here
    b = PageBitmap(10)
    with pytest.raises(InvalidArgument):
        b.set_range(8, 5)
    with pytest.raises(InvalidArgument):
        b.set_range(-1, 2)
    assert b.count() == 0                      # refused whole: nothing set
    b.set_range(8, 2)
    assert list(b) == [8, 9]


# -- HostMapping --------------------------------------------------------------------------
def test_a_fresh_mapping_reads_zero_and_takes_writes(mapping):
    assert mapping.size == 16 * PAGE_SIZE and mapping.address > 0
    assert mapping.read(0, 16 * PAGE_SIZE) == bytes(16 * PAGE_SIZE)
    mapping.write(PAGE_SIZE - 2, b"span")                     # across a page boundary
    mapping.write(5 * PAGE_SIZE, bytearray(b"\x01\x02"))
    mapping.write(6 * PAGE_SIZE, memoryview(b"mv"))
    assert mapping.read(PAGE_SIZE - 2, 4) == b"span"
    assert mapping.read(5 * PAGE_SIZE, 2) == b"\x01\x02"
    assert mapping.read(6 * PAGE_SIZE, 3) == b"mv\0"


def test_fill_and_view(mapping):
    mapping.fill(100, 50, 0xA5)
    assert mapping.read(99, 52) == b"\0" + b"\xa5" * 50 + b"\0"
    view = mapping.view(200, 4)
    view[:] = b"abcd"                                         # no copy: writes the mapping
    assert mapping.read(200, 4) == b"abcd" and bytes(mapping.view(100, 2)) == b"\xa5\xa5"


def test_mark_resident_sees_only_the_pages_that_hold_data(mapping):
    pages = PageBitmap(16)
    mapping.mark_resident(pages)
    assert list(pages) == []                                  # lazily backed: nothing yet
    mapping.write(1 * PAGE_SIZE + 7, b"x")
    mapping.fill(9 * PAGE_SIZE, 2 * PAGE_SIZE, 1)
    mapping.mark_resident(pages)
    assert list(pages) == [1, 9, 10]


def test_copy_pages_from_copies_the_marked_pages_and_clears_them(mapping):
    source = HostMapping(16 * PAGE_SIZE)
    try:
        for page in range(16):
            source.fill(page * PAGE_SIZE, PAGE_SIZE, page + 1)
        pages = bitmap(16, (2, 2), (15, 1))
        assert mapping.copy_pages_from(source, pages) == 3
        assert list(pages) == []
        for page in range(16):
            want = bytes([page + 1]) * PAGE_SIZE if page in (2, 3, 15) else bytes(PAGE_SIZE)
            assert mapping.read(page * PAGE_SIZE, PAGE_SIZE) == want, page
    finally:
        source.free()


def test_drop_zero_pages_keeps_the_pages_with_data(mapping):
    mapping.write(3 * PAGE_SIZE + PAGE_SIZE - 1, b"\x01")     # the last byte of page 3
    mapping.write(7 * PAGE_SIZE, b"\x80")
    pages = bitmap(16, (0, 16))
    assert mapping.drop_zero_pages(pages) == 2
    assert list(pages) == [3, 7]
    unmarked = bitmap(16, (0, 3))                             # only marked pages are looked at
    assert mapping.drop_zero_pages(unmarked) == 0 and list(unmarked) == []


def test_free_is_idempotent_and_adopting_a_pointer_shares_the_memory():
    owner = HostMapping(2 * PAGE_SIZE)
    owner.write(0, b"shared")
    adopted = HostMapping(2 * PAGE_SIZE, pointer=owner.pointer)
    assert adopted.address == owner.address and adopted.read(0, 6) == b"shared"
    adopted.detach()                    # someone else unmaps it: this one must not
    owner.free()
    owner.free()


def test_a_zero_size_mapping_is_refused():
    with pytest.raises(KvmError, match="mmap of 0x0 bytes"):
        HostMapping(0)
