"""Short versions of the long checks (``pyhv stress ...`` runs them at full size)."""

from __future__ import annotations

import os

import pytest

from pyhv.loaders.samples import sample_images
from pyhv.tools import stress
from pyhv.x86.modes import MODES

RSS_TOLERANCE = stress.RSS_TOLERANCE   # a leak of even 1 KiB a cycle would show past it


def test_fuzz_every_mode_is_contained_and_each_seed_reproducible(kvm):
    # (the one fuzz run of the suite: `pyhv stress fuzz` runs the same function at full size)
    cases = []
    report = stress.fuzz(160, seed=7, timeout=0.1,
                         on_case=lambda i, mode, code, final: cases.append((i, mode, code)))
    assert report.cases == 160 and report.by_mode == dict.fromkeys(MODES, 40)
    assert sum(report.exits.values()) == 160           # each ended: typed exit or timeout
    assert report.longest < 2.0 and report.fds[0] == report.fds[1]
    assert len({code for _, _, code in cases}) == 160
    # the same seed makes the same cases, whatever ran before them; another seed does not
    again, other = [], []
    stress.fuzz(12, seed=7, timeout=0.1, on_case=lambda *case: again.append(case[:3]))
    stress.fuzz(12, seed=8, timeout=0.1, on_case=lambda *case: other.append(case[:3]))
    assert again == cases[:12]
    assert not {code for _, _, code in other} & {code for _, _, code in cases}


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
