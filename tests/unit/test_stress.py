"""The stress tools' built-in guests (pyhv.tools.stress), checked against their sources."""

from __future__ import annotations

import pytest

from pyhv.testing import assemble
from pyhv.tools import stress


@pytest.mark.parametrize("name", sorted(stress.GUEST_SOURCES))
def test_the_built_in_stress_guests_match_their_sources(name):
    source = stress.GUEST_SOURCES[name].replace("; ", "\n")
    assert getattr(stress, name) == assemble(source, origin=0x1000)
