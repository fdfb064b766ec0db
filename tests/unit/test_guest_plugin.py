"""pyhv's pytest plugin where guests cannot run (no KVM needed): clean skips with the
reason, --pyhv-require, the marker's registration, the report's text."""

from __future__ import annotations

import pytest

from pyhv.testing import GuestAssertionError, GuestExceptionError
from pyhv.testing.plugin import guest_report

pytest_plugins = ["pytester"]

USES_GUESTS = '''
import pytest

def test_fixture(guest):
    guest.c("void guest_main(int cpu) { }")

@pytest.mark.pyhv_guest
def test_marker():
    raise AssertionError("a marked test must not run where guests cannot")
'''


@pytest.fixture
def no_compiler(monkeypatch):
    monkeypatch.setenv("PYHV_GUEST_CC", "no-such-gcc-here")


def test_guests_are_skipped_with_the_reason_where_gcc_is_missing(pytester, no_compiler):
    pytester.makepyfile(test_uses=USES_GUESTS)
    result = pytester.runpytest("-p", "no:cacheprovider", "-rs", "--strict-markers")
    result.assert_outcomes(skipped=2)
    result.stdout.fnmatch_lines(["SKIPPED*pyhv guests cannot run here: the guest compiler "
                                 "`no-such-gcc-here` is not installed*"])


def test_require_turns_the_skips_into_failures(pytester, no_compiler):
    pytester.makepyfile(test_uses=USES_GUESTS)
    result = pytester.runpytest("-p", "no:cacheprovider", "--pyhv-require")
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(["*pyhv guests cannot run here: the guest compiler*"])


def test_the_options_are_documented(pytester):
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines(["*--pyhv-keep=*DIR*", "*--pyhv-require*"])
    result = pytester.runpytest("--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.pyhv_guest: the test runs pyhv guests*"])


def test_the_report_shows_the_guest_source_around_the_failing_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)            # paths below the current directory are shortened
    source = tmp_path / "test_x.py"
    source.write_text("".join(f"line {n}\n" for n in range(1, 11)))
    err = GuestAssertionError(cpu=1, file=str(source), line=5, expression="a == b",
                              values=(1, -2), output="hello\nworld\n")
    text = guest_report(err, "test_x.py:9 in test_it\n    run()")
    assert text.splitlines() == [
        "test_x.py:5: guest assertion failed on vCPU 1: a == b",
        "    left:  1 (0x1)", "    right: -2 (-0x2)", "",
        "      3 | line 3", "      4 | line 4", ">     5 | line 5", "      6 | line 6",
        "      7 | line 7", "",
        "guest output (vCPU 1):", "    hello", "    world", "",
        "raised from test_x.py:9 in test_it", "    run()"]


def test_an_exception_report_without_source(tmp_path):
    err = GuestExceptionError(cpu=0, vector=13, name="#GP general protection", rip=0x101234,
                              error_code=0, hint="a hint")
    assert guest_report(err) == ("unhandled guest exception #GP general protection on vCPU 0 "
                                 "at rip 0x101234\n    error code: 0x0\n    (a hint)")
