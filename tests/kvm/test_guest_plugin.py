"""pyhv's pytest plugin, tested with pytest's own pytester: test files that a user would
write, run by an inner pytest that finds the plugin through its entry point."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]


@pytest.fixture
def run(pytester, kvm):
    """Write ``test_guests.py`` and run pytest on it (in this process, so quick)."""

    def go(source: str, *args: str) -> pytest.RunResult:
        pytester.makepyfile(test_guests=source)
        return pytester.runpytest("-p", "no:cacheprovider", *args)

    return go


def test_passing_guests_pass(run):
    result = run('''
def test_sync_and_print(guest):
    guest.c("""
        void guest_main(int cpu)
        {
            GUEST_PRINTF("two and two make %d\\\\n", 2 + 2);
            GUEST_SYNC(4);
        }
    """)
    outcome = guest.run(timeout=10)
    assert outcome.syncs == (4,) and outcome.output == "two and two make 4\\n"


def test_ring_0(guest):
    guest.c("void guest_main(int cpu) { GUEST_SYNC(inb(0x61) == 0xff); }", mode="long")
    guest.vm or guest.boot().partition.add_io_handler(0x61, read=lambda p, s: 0xff)
    assert guest.vm.run(timeout=30).syncs == (1,)
''')
    result.assert_outcomes(passed=2)


def test_a_failed_guest_assertion_is_reported_at_its_line_with_both_values(run):
    result = run('''
def test_arithmetic(guest):
    guest.c("""
        void guest_main(int cpu)
        {
            int sum = 2 + 2;
            GUEST_PRINTF("sum is %d\\\\n", sum);
            GUEST_ASSERT_EQ(sum, 5);
        }
    """)
    guest.run(timeout=10)
''')
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "test_guests.py:7: guest assertion failed on vCPU 0: sum == 5",
        "    left:  4 (0x4)",
        "    right: 5 (0x5)",
        "*      6 |             GUEST_PRINTF*",
        ">     7 |             GUEST_ASSERT_EQ(sum, 5);",
        "guest output (vCPU 0):",
        "    sum is 4",
        "raised from test_guests.py:10 in test_arithmetic",
        "    guest.run(timeout=10)",
        "*Captured stdout call*",
        "sum is 4",
        "FAILED test_guests.py::test_arithmetic - test_guests.py:7: guest assertion*",
    ])
    # the report replaces the Python traceback through pyhv's runner
    assert "runner.py" not in result.stdout.str()


def test_a_guest_exception_is_reported_with_its_line(run):
    result = run('''
def test_null(guest):
    guest.c("""
        void guest_main(int cpu)
        {
            volatile uint64_t *nowhere = (uint64_t *)0x7000000000ull;
            GUEST_SYNC(*nowhere);
        }
    """)
    guest.run(timeout=10)
''')
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "test_guests.py:6: unhandled guest exception #PF page fault on vCPU 0 at rip 0x* in "
        "guest_main()",
        "    error code: 0x4",
        "    faulting address (cr2): 0x7000000000",
        ">     6 |             GUEST_SYNC(*nowhere);",
    ])


def test_a_fault_in_the_library_is_reported_at_the_tests_call_with_a_backtrace(run):
    result = run('''
def test_copy(guest):
    guest.c("""
        static char buffer[16];
        void guest_main(int cpu)
        {
            memcpy(buffer, (void *)0x6000000000ull, sizeof(buffer));
        }
    """)
    guest.run(timeout=10)
''')
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "test_guests.py:6: unhandled guest exception #PF page fault on vCPU 0 at rip 0x* in "
        "memcpy()",
        "    guest backtrace (innermost first):",
        "      */pyhv/testing/guest/src/string.c:* (memcpy)",
        "      test_guests.py:6 (guest_main)",
        ">     6 |             memcpy(buffer, (void *)0x6000000000ull, sizeof(buffer));",
    ])


def test_a_guest_that_never_finishes_times_out(run):
    result = run('''
def test_spin(guest):
    guest.c("""
        void guest_main(int cpu)
        {
            for (;;)
                cpu_relax();
        }
    """)
    guest.run(timeout=0.5)
''')
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["test_guests.py:*: guest timed out on vCPU 0: still running "
                                 "after 0.5 s*"])


def test_smp_guests_step_through_a_protocol_with_the_host(run):
    result = run('''
def test_rounds(guest):
    guest.c("""
        void guest_main(int cpu)
        {
            uint64_t token = cpu;
            for (int round = 0; round < 3; round++)
                token = GUEST_SYNC(token);
            GUEST_ASSERT_EQ(token, cpu + 300);
        }
    """)
    rounds = {}
    for sync in guest.syncs(timeout=60, cpus=3):
        rounds.setdefault(sync.cpu, []).append(sync.value)
        sync.reply(sync.value + 100)
    assert rounds == {cpu: [cpu, cpu + 100, cpu + 200] for cpu in range(3)}
    assert guest.result.done
''')
    result.assert_outcomes(passed=1)


def test_a_cpl3_guest_runs_at_ring_3(run):
    result = run('''
def test_user_mode(guest):
    guest.c("""
        void guest_main(int cpu)
        {
            uint16_t cs;
            __asm__ __volatile__("mov %%cs, %0" : "=r"(cs));
            GUEST_SYNC(cs & 3);                       /* the current privilege level */
            uint64_t x = 0;
            for (uint64_t i = 0; i < 20000000; i++)   /* native: a few ms */
                x = x * 6364136223846793005ull + i;
            GUEST_SYNC(x != 0);
        }
    """, mode="user")
    assert guest.run(timeout=60).syncs == (3, 1)
''')
    result.assert_outcomes(passed=1)


def test_keep_saves_the_images_for_gdb(run, pytester):
    result = run('''
def test_kept(guest):
    guest.c("void guest_main(int cpu) { GUEST_SYNC(1); }")
    guest.run(timeout=10)
''', "--pyhv-keep=kept")
    result.assert_outcomes(passed=1)
    where = pytester.path / "kept" / "test_guests.py_test_kept"
    assert (where / "guest.elf").is_file()
    assert "GUEST_SYNC(1)" in (where / "guest.c").read_text()
    result.stdout.fnmatch_lines(["*pyhv guest images kept*", "kept/test_guests.py_test_kept*"
                                 "gdb*guest.elf*"])


def test_the_marker_lets_tests_without_the_fixture_run_guests(run):
    result = run('''
import pytest
from pyhv.testing import build_guest, run_guest

@pytest.mark.pyhv_guest
def test_marked():
    image = build_guest(c="void guest_main(int cpu) { GUEST_SYNC(cpu + 7); }")
    assert run_guest(image, timeout=10).syncs == (7,)
''', "--strict-markers")
    result.assert_outcomes(passed=1)


def test_running_before_building_says_so(run):
    result = run('''
import pytest
import pyhv

def test_early(guest):
    with pytest.raises(pyhv.StateError, match="build a guest first"):
        guest.run()
    assert guest.vm is None and guest.result is None
''')
    result.assert_outcomes(passed=1)


def test_guest_files_next_to_the_test(run, pytester):
    pytester.makefile(".c", main='''
#include "shared.h"
void guest_main(int cpu) { GUEST_SYNC(SHARED_VALUE); }
''')
    pytester.makefile(".h", shared="#define SHARED_VALUE 99\n")
    result = run('''
def test_from_files(guest):
    guest.files("main.c", mode="long")
    assert guest.run(timeout=30).syncs == (99,)
''')
    result.assert_outcomes(passed=1)


def test_the_documented_example_passes_and_fails_as_documented(run, pytester):
    doc = (Path(__file__).parents[2] / "docs" / "testing-guests.md").read_text()
    example = re.search(r"```python\n(.*?)```", doc, re.S)[1]
    report = re.search(r"reports it at the guest's line.*?```\n(.*?)```", doc, re.S)[1]
    pytester.makepyfile(test_in_a_guest=example)
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=4)
    # without its pytest.raises, the last test fails with the report the page shows
    failing = example.replace(
        "    with pytest.raises(GuestAssertionError) as failure:\n"
        "        guest.run(timeout=10)\n"
        "    assert failure.value.values == (4, 5) and failure.value.expression == "
        "\"sum == 5\"\n", "    guest.run(timeout=10)\n")
    assert failing != example
    pytester.makepyfile(test_in_a_guest=failing)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(report.rstrip("\n").splitlines(), consecutive=True)
