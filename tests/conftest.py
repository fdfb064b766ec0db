"""Shared fixtures: real partitions on the real /dev/kvm, and guests assembled from tests/guests.

The suite's layout: ``tests/unit`` needs no KVM (``.ci/unit-without-kvm`` runs it where
/dev/kvm does not exist), ``tests/kvm`` holds one file per component run on the real
/dev/kvm, ``tests/hostile`` the hostile guests; this module and ``tests/images.py`` are
imported from all three (``from ..conftest import boot``).

A test needs KVM when it uses the ``kvm`` fixture (``part`` does) or carries the ``kvm``
marker; a docstring example needs it when it makes a partition or asks the hypervisor.
Without a usable /dev/kvm those are skipped with the reason, except on CI (the CI environment
variable set), where that is a failure.  A session that collects none of them (``pytest
tests/unit``) never looks at /dev/kvm.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import pyhv
from pyhv.testing import assemble_file, kvm_usable

GUESTS = Path(__file__).parent / "guests"
ORIGIN = 0x1000
BITS = {"real": 16, "protected": 32, "long": 64}


# what a docstring example does when it needs /dev/kvm
_KVM_EXAMPLES = ("Partition(", "PartitionPool(", "Hypervisor(", "check(", "default()",
                 "measure(", "GuestVM(", "run_guest(",     # pyhv.testing: guests in C
                 "PC(")


def needs_kvm(item: pytest.Item) -> bool:
    """Whether ``item`` needs a usable /dev/kvm (see the module docstring)."""
    if "kvm" in getattr(item, "fixturenames", ()) or item.get_closest_marker("kvm"):
        return True
    dtest = getattr(item, "dtest", None)            # a docstring example (DoctestItem)
    return dtest is not None and any(name in example.source for example in dtest.examples
                                     for name in _KVM_EXAMPLES)


def pytest_configure(config):
    config.addinivalue_line("markers", "kvm: the test needs a usable /dev/kvm")


def pytest_collection_modifyitems(config, items):
    wanting = [item for item in items if needs_kvm(item)]
    if not wanting:
        return
    usable, why = kvm_usable()
    if usable:
        return
    if os.environ.get("CI"):
        raise pytest.UsageError(f"CI needs a usable /dev/kvm ({len(wanting)} collected tests "
                                f"need it): {why}")
    skip = pytest.mark.skip(reason=f"KVM not usable here: {why}")
    for item in wanting:
        item.add_marker(skip)


@pytest.fixture
def kvm() -> None:
    """Marks a test as needing /dev/kvm."""


@pytest.fixture
def part(kvm):
    """A 16 MiB partition, closed after the test."""
    with pyhv.Partition(memory="16M") as p:
        yield p


def guest_code(name: str, mode: str = "long", origin: int = ORIGIN) -> bytes:
    """tests/guests/<name>.S assembled for ``mode`` at ``origin``."""
    return assemble_file(GUESTS / f"{name}.S", bits=BITS[mode], origin=origin)


def boot(part: pyhv.Partition, name: str, mode: str = "long", **kwargs) -> pyhv.VCpu:
    """Load guest ``name`` at 0x1000 and create a vCPU entering it in ``mode``."""
    part.memory.write(ORIGIN, guest_code(name, mode))
    return part.create_vcpu(mode=mode, entry=ORIGIN, **kwargs)


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def run_in_background(part: pyhv.Partition, run: Callable[[], Any]) -> tuple[threading.Thread,
                                                                            list[Any]]:
    """Start ``run`` (a call that runs ``part``) on a thread and return once the partition is
    running; the list gets what ``run`` returned.  Fails if the run ends before it starts."""
    results: list[Any] = []
    runner = threading.Thread(target=lambda: results.append(run()))
    runner.start()
    deadline = time.monotonic() + 10
    while part.state != pyhv.PartitionState.RUNNING:
        assert runner.is_alive() and time.monotonic() < deadline, "the run never started"
        time.sleep(0.01)
    return runner, results


def native_vcpu(cpu: pyhv.VCpu):
    """The vCPU's fd wrapper (pyhv._native.VcpuFd), for tests of the C core itself."""
    return cpu._fd


def native_vm(part: pyhv.Partition):
    """The partition's VM fd wrapper (pyhv._native.VmFd), for tests of the C core itself."""
    return part._vm
