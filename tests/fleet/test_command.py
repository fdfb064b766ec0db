"""``pyhv fleet run``: a multiboot kernel (tests/fleet/guests/echo.c) booted once per input,
the input reaching it through fw_cfg and as its module; results as JSON lines."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pyhv.tools.cli import main

from ..images import MULTIBOOT, _run

pytestmark = [pytest.mark.fleet, pytest.mark.kvm]

ECHO = Path(__file__).parent / "guests" / "echo.c"
CFLAGS = ["-m32", "-march=i386", "-mgeneral-regs-only", "-ffreestanding",
          "-fno-stack-protector", "-fno-pic", "-fno-pie", "-fno-builtin", "-nostdlib", "-O2",
          "-Wall", "-Werror"]


@pytest.fixture(scope="module")
def kernel(tmp_path_factory) -> Path:
    """The echo kernel: multiboot, ELF, at 1 MiB (the loader tests' entry and linker script)."""
    out = tmp_path_factory.mktemp("echo")
    _run(["gcc", *CFLAGS, "-c", str(ECHO), "-o", str(out / "echo.o")])
    _run(["gcc", "-m32", "-c", str(MULTIBOOT / "boot.S"), "-o", str(out / "boot.o")])
    _run(["ld", "-m", "elf_i386", "-z", "noexecstack", "--no-warn-rwx-segments", "-T",
          str(MULTIBOOT / "linker.ld"), "-o", str(out / "echo.elf"), str(out / "boot.o"),
          str(out / "echo.o")])
    return out / "echo.elf"


@pytest.fixture
def inputs(tmp_path) -> Path:
    folder = tmp_path / "inputs"
    folder.mkdir()
    for name, data in {"a-hello": b"hello", "b-loop": b"loop", "c-fault": b"fault",
                       "d-binary": b"xy\xff"}.items():
        (folder / name).write_bytes(data)
    (folder / "subdir").mkdir()                 # not an input
    return folder


def run(args: list[str], capsys) -> tuple[int, list[dict], str]:
    code = main(["fleet", "run", *args, "--cpus-per-worker", "0.5"])
    out, err = capsys.readouterr()
    return code, [json.loads(line) for line in out.splitlines()], err


def test_one_line_per_input_with_status_and_serial(ray_session, kernel, inputs, capsys):
    code, lines, err = run([str(kernel), "--inputs", str(inputs), "--workers", "2",
                            "--timeout", "1", "--ordered"], capsys)
    assert code == 0, err
    by_name = {line["input"]: line for line in lines}
    assert list(by_name) == ["a-hello", "b-loop", "c-fault", "d-binary"]
    hello = by_name["a-hello"]
    assert hello["status"] == (5 << 1) | 1 and "DebugExit" in hello["exit"]
    assert hello["serial"] == "fw_cfg: hello\nmodule: hello\n"
    assert by_name["b-loop"]["status"] == 124 and by_name["b-loop"]["exit"] == "Timeout"
    assert by_name["c-fault"]["status"] == 2 and "Shutdown" in by_name["c-fault"]["exit"]
    binary = by_name["d-binary"]
    assert base64.b64decode(binary["serial_base64"]) == b"fw_cfg: xy\xff\nmodule: xy\xff\n"
    assert all(line["attempts"] == 1 and line["worker"] in (0, 1) for line in lines)
    assert "4 jobs: 3 done, 1 failed (guest_fault 1)" in err and "worker 0" in err


def test_jsonl_inputs_and_fw_cfg_only(ray_session, kernel, tmp_path, capsys):
    (tmp_path / "data.bin").write_bytes(b"from a file")
    listing = tmp_path / "inputs.jsonl"
    listing.write_text("\n".join(json.dumps(e) for e in [
        {"name": "t", "text": "text"}, {"base64": base64.b64encode(b"b64").decode()},
        {"name": "f", "path": "data.bin"}]) + "\n\n")
    out = tmp_path / "results.jsonl"
    code, lines, err = run([str(kernel), "--inputs", str(listing), "--input-via", "fw_cfg",
                            "--output", str(out), "--ordered"], capsys)
    assert code == 0 and lines == [], err
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["input"] for r in results] == ["t", "2", "f"]
    assert [r["serial"] for r in results] == [
        f"fw_cfg: {text}\nmodule: (none)\n" for text in ("text", "b64", "from a file")]
    assert [r["status"] for r in results] == [(len(t) << 1) | 1 for t in ("text", "b64",
                                                                            "from a file")]


@pytest.mark.parametrize("content, why", [
    ("not json\n", "inputs.jsonl:1: not JSON"),
    ('{"text": "a"}\n[1]\n', "inputs.jsonl:2: each line must be a JSON object"),
    ('{"text": "a", "path": "b"}\n', "one of"),
    ('{"base64": "!!"}\n', "base64 that does not decode"),
    ('{"path": "missing"}\n', "no such input file"),
])
def test_bad_inputs_are_refused_before_anything_runs(kernel, tmp_path, capsys, content, why):
    listing = tmp_path / "inputs.jsonl"
    listing.write_text(content)
    code = main(["fleet", "run", str(kernel), "--inputs", str(listing)])
    assert code == 1
    assert why in capsys.readouterr().err


def test_bad_arguments(kernel, tmp_path, capsys):
    assert main(["fleet", "run", str(kernel), "--inputs", str(tmp_path / "nowhere")]) == 1
    assert "no such directory or file" in capsys.readouterr().err
    assert main(["fleet", "run", str(tmp_path / "no-image"), "--inputs", str(tmp_path)]) == 1
    assert "cannot read the image" in capsys.readouterr().err
    for bad in (["--workers", "0"], ["--timeout", "-1"], ["--max-serial", "lots"]):
        with pytest.raises(SystemExit):
            main(["fleet", "run", str(kernel), "--inputs", str(tmp_path), *bad])


def test_the_pyhv_command_with_its_own_local_ray(kernel, inputs, tmp_path):
    """As a user runs it: the installed `pyhv` entry point, which starts (and stops) Ray."""
    pytest.importorskip("ray", reason="the fleet tests need Ray: pip install -e '.[fleet]'")
    pyhv = Path(sys.executable).with_name("pyhv")
    (inputs / "b-loop").unlink()
    env = dict(os.environ, RAY_ADDRESS="")       # a local Ray of its own, whatever is around
    proc = subprocess.run([str(pyhv), "fleet", "run", str(kernel), "--inputs", str(inputs),
                           "--workers", "1", "-o", str(tmp_path / "out.jsonl")],
                          capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert sorted(line["status"] for line in lines) == [2, 7, 11]
    assert "3 jobs: 2 done, 1 failed (guest_fault 1)" in proc.stderr
