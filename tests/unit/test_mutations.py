"""The mutation catalog (tests/mutations/catalog.py) stays in step with the code: every change
still applies where it says, and every test it names still exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ..mutations.catalog import MUTATIONS

ROOT = Path(__file__).resolve().parents[2]
BACKENDS = {"kvm_intel", "kvm_amd", "kvm_pvm", "unknown"}


def test_mutation_ids_are_unique_and_each_names_what_it_breaks():
    ids = [m.id for m in MUTATIONS]
    assert len(ids) == len(set(ids))
    assert all(re.fullmatch(r"[a-z0-9-]+", i) for i in ids)
    assert all(m.guards and m.tests for m in MUTATIONS)
    assert all(set(m.hosts) <= BACKENDS for m in MUTATIONS)


@pytest.mark.parametrize("mutation", MUTATIONS, ids=lambda m: m.id)
def test_each_mutation_applies_to_the_code_as_it_is(mutation):
    text = (ROOT / mutation.path).read_text()
    assert text.count(mutation.old) == mutation.times, (
        f"{mutation.id}: {mutation.path} has {text.count(mutation.old)} copies of the text to "
        f"change, not {mutation.times}: update tests/mutations/catalog.py")
    assert mutation.old != mutation.new


@pytest.mark.parametrize("mutation", MUTATIONS, ids=lambda m: m.id)
def test_each_mutation_names_tests_that_exist(mutation):
    for target in mutation.tests:
        path, _, name = target.partition("::")
        assert (ROOT / path).exists(), target
        if name:
            assert re.search(rf"^def {re.escape(name)}\(", (ROOT / path).read_text(), re.M), \
                f"{mutation.id}: no test {target}"
