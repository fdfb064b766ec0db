"""The fleet tests: one small local Ray for the whole session (2 CPUs, no dashboard, a small
object store), started by the first test that needs it.  Without Ray installed, the tests
that need it are skipped (``pip install -e '.[fleet]'``); CI installs it and runs them
(``-m fleet``)."""

from __future__ import annotations

import pytest

from . import jobs


@pytest.fixture(scope="session")
def ray_session():
    ray = pytest.importorskip("ray", reason="the fleet tests need Ray: pip install -e '.[fleet]'")
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False,
                 object_store_memory=128 << 20, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def template(ray_session):
    return jobs.template()
