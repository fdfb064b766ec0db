"""The pyhv command's argument handling (pyhv.tools.cli), in process: what it refuses before
it would need KVM, and what its help says; and, as a user runs it (in a subprocess), what it
does where no KVM is needed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pyhv import __version__
from pyhv.testing import assemble_file
from pyhv.tools.cli import build_parser, main
from pyhv.tools.demo import demo_image
from pyhv.tools.run import EPILOG as RUN_EPILOG

DEMO_SOURCE = Path(__file__).parents[2] / "pyhv" / "guests" / "demo.S"


def parse(*argv: str):
    return build_parser().parse_args(list(argv))


@pytest.mark.parametrize("argv, message", [
    (["stress", "nuke"], "argument what: invalid choice: 'nuke'"),
    (["stress", "fuzz", "--count", "many"], "argument --count: 'many' is not a whole number"),
    (["stress", "fuzz", "--count", "-5"], "argument --count: -5 is not > 0"),
    (["stress", "soak", "--count", "0"], "argument --count: 0 is not > 0"),
    (["frobnicate"], "argument COMMAND: invalid choice: 'frobnicate'"),
    (["--bogus"], "unrecognized arguments: --bogus"),
])
def test_bad_arguments_exit_2_with_a_message(capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: pyhv") and message in err


def test_run_help_lists_every_exit_status(capsys):
    with pytest.raises(SystemExit) as info:
        main(["run", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert RUN_EPILOG in out                          # verbatim, not reflowed
    block = RUN_EPILOG.split("\n\n")[0].splitlines()[1:]
    statuses = [line.split()[0] for line in block]
    assert statuses == ["(V", "0", "2", "4", "124", "126", "130"]
    for flag in ("--format", "--memory", "--cpus", "--append", "--initrd", "--serial",
                 "--timeout", "--debug-exit", "--address", "--mode", "--irqchip"):
        assert flag in out


def test_no_command_prints_the_help_and_returns_2(capsys):
    assert main([]) == 2
    out = capsys.readouterr().out
    assert out.startswith("usage: pyhv") and all(c in out for c in ("doctor", "demo", "run",
                                                                     "stress"))


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out == f"pyhv {__version__}\n"


# -- refusals before a partition is made ----------------------------------------------------
def test_run_of_a_missing_image_fails_with_status_126(capsys, tmp_path):
    assert main(["run", str(tmp_path / "missing")]) == 126
    err = capsys.readouterr().err
    assert err.startswith(f"pyhv run: could not load kernel '{tmp_path / 'missing'}'")


def test_run_refuses_an_unknown_serial_backend(capsys, tmp_path):
    image = tmp_path / "guest.bin"
    image.write_bytes(b"\xf4")
    assert main(["run", str(image), "--serial", "telnet:1234"]) == 126
    assert "--serial 'telnet:1234': use stdio, file:PATH, none or null" in \
        capsys.readouterr().err


def test_run_refuses_smp_without_the_irqchip(capsys, tmp_path):
    image = tmp_path / "guest.bin"
    image.write_bytes(b"\xf4")
    log = tmp_path / "console.log"
    assert main(["run", str(image), "--cpus", "2", "--no-irqchip", "--serial", f"file:{log}"]) \
        == 126
    assert "-smp above 1 needs the in-kernel irqchip" in capsys.readouterr().err
    assert log.exists() and log.read_bytes() == b""   # opened, and closed again


def test_doctor_of_a_device_that_does_not_exist(capsys, tmp_path):
    assert main(["doctor", "--device", str(tmp_path / "kvm")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("pyhv doctor: KVM is not usable: ") and "VT-x/AMD-V" in err


# -- in a subprocess ------------------------------------------------------------------------
def pyhv_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pyhv", *args], capture_output=True,
                          text=True, timeout=120)


def test_doctor_fails_clearly_without_kvm(tmp_path):
    proc = pyhv_cli("doctor", "--device", str(tmp_path / "kvm"))
    assert proc.returncode == 1
    assert "KVM is not usable" in proc.stderr and "VT-x/AMD-V" in proc.stderr


def test_no_command_prints_help():
    proc = pyhv_cli()
    assert proc.returncode == 2 and "doctor" in proc.stdout and "demo" in proc.stdout


def test_demo_binary_matches_its_source():
    assert demo_image() == assemble_file(DEMO_SOURCE, origin=0x1000), (
        "pyhv/guests/demo.bin is stale: rebuild it from demo.S (see the comment at its top)")


def test_run_help_documents_the_exit_status():
    proc = pyhv_cli("run", "--help")
    assert proc.returncode == 0
    for text in ("--format", "--memory", "--cpus", "--append", "--initrd", "--serial",
                 "--timeout", "--debug-exit", "exit status", "124"):
        assert text in proc.stdout


def test_stress_without_kvm_fails_clearly(tmp_path):
    # the child gets a /dev/kvm path that does not exist: no traceback, a one-line error
    proc = subprocess.run([sys.executable, "-c",
                           "import sys, pyhv.core.hypervisor as s; "
                           "s.Hypervisor.__init__.__defaults__ = (sys.argv[1],); "
                           "from pyhv.tools.cli import main; raise SystemExit(main(['stress', "
                           "'races', '--count', '1']))", str(tmp_path / "kvm")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("pyhv stress: ") and "Traceback" not in proc.stderr
