"""Short versions of the long checks (``pyhv stress ...`` runs them at full size)."""

from __future__ import annotations

import os

import pytest

from pyhv.loaders.samples import sample_images
from pyhv.tools import stress

RSS_TOLERANCE = stress.RSS_TOLERANCE   # a leak of even 1 KiB a cycle would show past it


def test_fuzz_every_mode_is_seeded_and_contained(kvm):
    first = stress.fuzz(120, seed=7, timeout=0.1)
    assert first.cases == 120 and set(first.by_mode) == {"real", "protected", "long", "user"}
    assert first.fds[0] == first.fds[1]
    assert first.longest < 2.0
    again = stress.fuzz(12, seed=7, timeout=0.1)                 # reproducible: same codes
    codes = []
    stress.fuzz(12, seed=7, timeout=0.1, on_case=lambda i, m, code, ex: codes.append(code))
    more = []
    stress.fuzz(12, seed=7, timeout=0.1, on_case=lambda i, m, code, ex: more.append(code))
    assert codes == more and again.cases == 12


@pytest.mark.parametrize("soak", [stress.soak_lifecycle, stress.soak_snapshots])
def test_soak_leaks_nothing(kvm, soak):
    report = soak(400)
    assert report.fds[0] == report.fds[1], report.summary()
    if not os.environ.get("PYHV_SANITIZE"):   # ASan's quarantine holds freed memory on purpose
        assert report.rss_growth < RSS_TOLERANCE, report.summary()


def test_corrupt_image_corpus(kvm):
    report = stress.image_corpus(sample_images(), 300, seed=11)
    assert report.images == 300 * len(sample_images())
    assert report.refused > report.images // 2 and report.fds[0] == report.fds[1]
