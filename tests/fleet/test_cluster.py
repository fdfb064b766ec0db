"""Joining an existing Ray cluster: a head started here with ``ray start --head`` (on the
loopback address, stopped with the test), then drivers in their own processes that join it by
its address and through the Ray Client (``ray://``), as a user on another machine would."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.fleet, pytest.mark.kvm]
pytest.importorskip("ray", reason="the fleet tests need Ray: pip install -e '.[fleet]'")

ROOT = Path(__file__).resolve().parents[2]

DRIVER = """
import json, sys
from tests.fleet import jobs
from pyhv.errors import HypervisorError
from pyhv.fleet import Fleet
try:
    with Fleet(jobs.template(), workers=1, address=sys.argv[1]) as fleet:
        values = [r.value for r in fleet.map(getattr(jobs, sys.argv[2]), [1, 2, 3], ordered=True)]
        print(json.dumps({"values": values, "workers": fleet.workers}))
except HypervisorError as exc:
    print(json.dumps({"error": str(exc), "type": type(exc).__name__}))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    gcs, client = free_port(), free_port()
    # a throwaway cluster on the loopback address; token authentication off for it, as it
    # would be behind a private network (the drivers below run with the same setting)
    env = dict(os.environ, RAY_AUTH_MODE="disabled", PYTHONPATH=str(ROOT))
    env.pop("RAY_ADDRESS", None)
    ray_cli = Path(sys.executable).with_name("ray")
    head = subprocess.Popen(
        [str(ray_cli), "start", "--head", "--block", "--num-cpus=1", f"--port={gcs}",
         f"--ray-client-server-port={client}", "--include-dashboard=false",
         "--disable-usage-stats", "--node-ip-address=127.0.0.1"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (listening(gcs) and listening(client)):
            assert head.poll() is None, "ray start --head failed"
            assert time.monotonic() < deadline, "the Ray head did not come up"
            time.sleep(0.2)
        yield {"address": f"127.0.0.1:{gcs}", "client": f"ray://127.0.0.1:{client}",
               "env": env}
    finally:
        head.terminate()                # --block: the head stops what it started
        head.wait(timeout=90)


def drive(cluster, address: str, job: str = "total", pythonpath: bool = True) -> dict:
    env = dict(cluster["env"])
    if not pythonpath:                  # the workers see the head's PYTHONPATH, not this
        env["PYTHONPATH"] = ""
    proc = subprocess.run([sys.executable, "-c", DRIVER, address, job], capture_output=True,
                          text=True, timeout=240, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_join_a_cluster_by_its_address(cluster):
    answer = drive(cluster, cluster["address"])
    assert answer.get("values") == [1, 3, 6], answer
    assert answer["workers"][0]["alive"] and answer["workers"][0]["pid"] > 0


def test_join_a_cluster_through_the_ray_client(cluster):
    answer = drive(cluster, cluster["client"])
    assert answer.get("values") == [1, 3, 6], answer


@pytest.mark.parametrize("how, raised", [("address", "FleetError"),
                                         ("client", "InvalidArgument")])
def test_a_job_the_workers_cannot_import_is_refused_saying_so(cluster, tmp_path, how, raised):
    """A job from a module only this machine has: through the Ray Client, Ray's server
    already refuses it at map(); joined by address, the first worker to load it says so."""
    (tmp_path / "elsewhere.py").write_text("def job(part, n):\n    return n\n")
    env = dict(cluster["env"], PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}")
    code = DRIVER.replace("getattr(jobs, sys.argv[2])", "__import__('elsewhere').job")
    proc = subprocess.run([sys.executable, "-c", code, cluster[how], "-"],
                          capture_output=True, text=True, timeout=240, env=env, cwd=ROOT)
    assert proc.stdout.strip(), proc.stderr[-3000:]
    answer = json.loads(proc.stdout.strip().splitlines()[-1])
    assert answer["type"] == raised
    assert "No module named 'elsewhere'" in answer["error"] and "runtime_env" in answer["error"]
