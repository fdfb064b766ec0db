"""What pyhv reads from its users' strings: sizes (pyhv.core.memory.parse_size) and KVM
capability names (pyhv._native.features.Feature.parse)."""

from __future__ import annotations

import pytest

from pyhv import Feature, InvalidArgument, parse_size


@pytest.mark.parametrize("text, size", [
    ("64K", 64 << 10), ("16M", 16 << 20), ("1G", 1 << 30), ("2T", 2 << 40), ("4096", 4096),
    ("2MiB", 2 << 20), ("1GiB", 1 << 30), ("16mb", 16 << 20), ("8kB", 8 << 10), ("512B", 512),
    (" 4 k ", 4 << 10), ("0", 0), (4096, 4096), (0, 0),
])
def test_parse_size(text, size):
    assert parse_size(text) == size


def test_parse_size_keeps_int_subclasses():
    class Pages(int):
        pass
    assert parse_size(Pages(8192)) == 8192


@pytest.mark.parametrize("bad, match", [
    ("16X", "cannot read '16X' as a size"), ("", "cannot read '' as a size"),
    ("-1M", "cannot read"), ("1.5M", "cannot read"), ("M", "cannot read"),
    ("16 M B", "cannot read"), ("0x1000", "cannot read"),
    (1.5, "a size must be an int or a string like '16M', not 1.5"),
    (None, "not None"), (True, "not True"), (b"16M", "not b'16M'"),
])
def test_parse_size_refuses(bad, match):
    with pytest.raises(InvalidArgument, match=match):
        parse_size(bad)


@pytest.mark.parametrize("name", ["KVM_CAP_NR_MEMSLOTS", "kvm_cap_nr_memslots", "NR_MEMSLOTS",
                                  "nr_memslots", Feature.NR_MEMSLOTS,
                                  int(Feature.NR_MEMSLOTS)])
def test_feature_parse_accepts_every_spelling(name):
    assert Feature.parse(name) is Feature.NR_MEMSLOTS


@pytest.mark.parametrize("bad", ["KVM_CAP_WARP_DRIVE", "", "KVM_CAP_", "kvm_name", "parse",
                                 -1, 100000, True, 1.0, None])
def test_feature_parse_refuses_what_it_does_not_know(bad):
    with pytest.raises(InvalidArgument, match=f"{bad!r} is not a KVM capability pyhv knows "
                                              r"\(one of KVM_CAP_USER_MEMORY, "):
        Feature.parse(bad)


def test_features_are_kvms_numbers_and_names():
    assert len(Feature.__members__) == len(list(Feature))        # no two share a number
    assert all(f.kvm_name == "KVM_CAP_" + f.name for f in Feature)
    # a few values from <linux/kvm.h>, which the C build supplies
    assert (Feature.IRQCHIP, Feature.USER_MEMORY, Feature.NR_MEMSLOTS, Feature.DEBUGREGS) == (
        0, 3, 10, 50)
