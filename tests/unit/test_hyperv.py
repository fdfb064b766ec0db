"""pyhv.hyperv without KVM: QEMU's flag names, the CPUID leaves, the clock's arithmetic, the
hypercall control word, ICR writes as MSIs, SynIC messages, the timer thread and the
``pyhv run`` extension's argument handling."""

from __future__ import annotations

import struct
import threading
import time

import pytest

from pyhv.errors import InvalidArgument
from pyhv.hyperv import Enlightenments, HyperV, tlfs
from pyhv.hyperv.clock import ReferenceClock
from pyhv.hyperv.cpuid import hyperv_leaves, privileges, recommendations, with_hyperv
from pyhv.hyperv.features import IMPLEMENTED
from pyhv.hyperv.hypercalls import (
    Hypercall,
    HypercallFailed,
    decode_control,
    page_code,
    result,
    run_handler,
)
from pyhv.hyperv.lapic import highest_vector, icr_messages
from pyhv.hyperv.stimer import TimerScheduler
from pyhv.hyperv.synic import message_bytes
from pyhv.x86.cpuid import CpuidEntry


# -- features ---------------------------------------------------------------------------------
def test_qemu_spellings_on_off_and_passthrough():
    assert Enlightenments.parse(["hv_vpindex", "hv-time=on"]).features == {"vpindex", "time"}
    assert Enlightenments.parse("hv-passthrough,hv-crash=off").features == set(IMPLEMENTED) - {
        "crash"}
    assert Enlightenments.parse("hv-vpindex,hv-enforce-cpuid").features == {"vpindex"}
    assert Enlightenments.parse("").features == frozenset()
    hv = Enlightenments.parse("hv-passthrough,hv-spinlocks=4096,hv-vendor-id=abc")
    assert Enlightenments.parse(hv.describe()) == hv


@pytest.mark.parametrize("spec, message", [
    ("hv-synic", "needs hv-vpindex"),
    ("hv-vpindex,hv-stimer-direct", "needs hv-stimer"),
    ("hv-tlbflush", "not implemented"),
    ("hv-whatever", "unknown Hyper-V flag"),
    ("x2apic", "not a Hyper-V flag"),
    ("hv-time=maybe", "on or off"),
    ("hv-spinlocks=0x10", "hv-spinlocks"),
    ("hv-spinlocks=lots", "not a number"),
    ("hv-vendor-id=thirteen-char", "12 ASCII"),
])
def test_bad_flags_are_refused_with_what_is_wrong(spec, message):
    with pytest.raises(InvalidArgument, match=message):
        Enlightenments.parse(spec)


def test_an_unknown_feature_set_is_refused():
    with pytest.raises(InvalidArgument, match="unknown enlightenment"):
        Enlightenments(frozenset({"warp-drive"}))


# -- CPUID -------------------------------------------------------------------------------------
def test_privileges_follow_the_features():
    eax, ebx = privileges(Enlightenments.parse("hv-vpindex,hv-synic"))
    assert eax == tlfs.PRIV_HYPERCALL | tlfs.PRIV_VP_INDEX | tlfs.PRIV_SYNIC
    assert ebx == tlfs.PRIV_POST_MESSAGES | tlfs.PRIV_SIGNAL_EVENTS
    assert recommendations(Enlightenments()) == tlfs.HINT_DEPRECATE_AUTOEOI


def test_with_hyperv_replaces_kvms_leaves_and_sets_the_hypervisor_bit():
    table = [CpuidEntry(1, 0, 0, 0, 0, 0, 0), CpuidEntry(0x40000000, 0, 0, 0x40000001,
             0x4B4D564B, 0x564B4D56, 0x4D), CpuidEntry(0x40000001, 0, 0, 0x1234, 0, 0, 0)]
    out = with_hyperv(table, hyperv_leaves(Enlightenments(), 4))
    assert out[0].ecx == 1 << 31
    hv = {e.function: e for e in out if e.function >= 0x40000000}
    assert sorted(hv) == list(range(0x40000000, 0x40000007))
    assert hv[0x40000001].eax == tlfs.INTERFACE_HV1 and hv[0x40000005].eax == 4


# -- the clock ----------------------------------------------------------------------------------
def test_the_page_formula_and_the_msr_are_the_same_function_of_the_tsc():
    clock = ReferenceClock(tsc_khz=2_596_122)
    clock.start(tsc=14_725_981_612_282, mono_ns=0)
    _seq, _r, scale, offset = struct.unpack("<IIQq", clock.page(3))
    for tsc in range(14_725_981_612_282, 14_725_981_612_282 + 10**10, 777_777_777):
        assert clock.at_tsc(tsc) == ((tsc * scale) >> 64) + offset
    assert clock.at_tsc(14_725_981_612_282) == 0


def test_host_estimates_follow_the_calibration():
    clock = ReferenceClock(tsc_khz=1_000_000)                  # 1 GHz: 100 ticks per unit
    clock.start(tsc=0, mono_ns=1_000)
    assert abs(clock.now(mono_ns=1_000 + 5_000_000) - 50_000) <= 1   # the scale rounds down
    clock.observe(tsc=10_000_000, mono_ns=2_000_000)          # the TSC was ahead of the host
    assert abs(clock.now(mono_ns=2_000_000) - 100_000) <= 1
    target = clock.now() + 10_000
    assert abs(clock.mono_at(target) - time.monotonic_ns() - 1_000_000) < 50_000_000


def test_without_a_tsc_frequency_the_page_says_use_the_msr():
    clock = ReferenceClock(tsc_khz=None)
    clock.start(tsc=123, mono_ns=0)
    assert not clock.tsc_page_valid and clock.page(5)[:4] == bytes(4)
    assert clock.now(mono_ns=1_000_000) == 10_000
    state = clock.get_state()
    other = ReferenceClock(tsc_khz=None)
    other.set_state(state, tsc=None)
    assert other.now() >= state["ref"]


# -- hypercalls ----------------------------------------------------------------------------------
def test_the_control_word_and_the_result():
    ctl = decode_control(0x005C | tlfs.CALL_FAST | 3 << 17 | 7 << 32 | 2 << 48 | 1 << 31)
    assert (ctl.code, ctl.fast, ctl.header_size, ctl.rep_count, ctl.rep_start) == (
        0x5C, True, 24, 7, 2)
    assert ctl.reserved == 1 << 31
    assert result(tlfs.HV_STATUS_INVALID_PARAMETER, 5) == 5 << 32 | 5
    code = page_code(0xE2)
    assert code[12:14] == b"\xe6\xe2" and code[8:10] == b"\xe6\xe3"   # 64-bit, 32-bit OUT
    with pytest.raises(InvalidArgument):
        page_code(0xFF)                      # its 32-bit port would not fit a byte


def call(fast: bool = True, reps: int = 0) -> Hypercall:
    return Hypercall(0x99, fast, reps, 0, 0, 0, 0, (1, 2), None)  # type: ignore[arg-type]


def test_what_a_handler_returns_becomes_status_and_reps():
    assert run_handler(lambda c: None, call(reps=4)) == (0, 4)
    assert run_handler(lambda c: 5, call()) == (5, 0)
    assert run_handler(lambda c: (0, 2), call(reps=4)) == (0, 2)

    def fails(c: Hypercall) -> None:
        raise HypercallFailed(tlfs.HV_STATUS_ACCESS_DENIED, 1)

    assert run_handler(fails, call()) == (tlfs.HV_STATUS_ACCESS_DENIED, 1)
    with pytest.raises(InvalidArgument):
        run_handler(lambda c: -1, call())
    assert call().read_input(16) == (1).to_bytes(8, "little") + (2).to_bytes(8, "little")
    with pytest.raises(HypercallFailed):
        call().read_input(24)
    with pytest.raises(HypercallFailed):
        call().write_output(b"x")


def test_on_hypercall_checks_its_arguments():
    hv = HyperV("hv-vpindex")
    with pytest.raises(InvalidArgument):
        hv.on_hypercall(0x10000, lambda c: 0)
    with pytest.raises(InvalidArgument):
        hv.on_hypercall(1, "not callable")                 # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        HyperV(["hv-vpindex", 3])                          # type: ignore[list-item]


# -- the LAPIC ----------------------------------------------------------------------------------
def test_icr_writes_become_msis():
    ids = [0, 1, 2]
    assert icr_messages(2 << 56 | 0x40, ids, 0, x2apic=False) == [(0xFEE02000, 0x40)]
    assert icr_messages(0x800 | 0x41 | 3 << 56, ids, 0, x2apic=False) == [(0xFEE03004, 0x41)]
    assert [a >> 12 & 0xFF for a, _ in icr_messages(3 << 18 | 0x42, ids, 1, False)] == [0, 2]
    assert [a >> 12 & 0xFF for a, _ in icr_messages(2 << 18 | 0x42, ids, 1, False)] == [0, 1, 2]
    assert icr_messages(0x300 | 0x42, ids, 0, False) == []          # delivery mode 3: reserved
    assert icr_messages(0x500, ids, 0, False) == [(0xFEE00000, 0x500)]   # INIT


def test_highest_vector_of_a_register():
    page = bytearray(1024)
    assert highest_vector(page, 0x100) is None
    page[0x100 + 0x70] = 0x80                       # bit 7 of word 7: vector 231
    page[0x100] = 0x01
    assert highest_vector(page, 0x100) == 231


# -- SynIC messages and timers ---------------------------------------------------------------------
def test_message_bytes_refuses_what_does_not_fit():
    assert message_bytes(1, b"", pending=True)[5] == tlfs.MESSAGE_PENDING
    with pytest.raises(InvalidArgument):
        message_bytes(1 << 32, b"")
    with pytest.raises(InvalidArgument):
        message_bytes(1, bytes(241))


def test_the_timer_thread_runs_calls_in_order_and_ends_when_idle():
    order: list[str] = []
    done = threading.Event()
    scheduler = TimerScheduler(ready=lambda: True, alive=lambda: True)
    now = time.monotonic_ns()
    scheduler.schedule("b", now + 20_000_000, lambda: (order.append("b"), done.set()))
    scheduler.schedule("a", now + 5_000_000, lambda: order.append("a"))
    scheduler.schedule("c", now + 10_000_000, lambda: order.append("c"))
    scheduler.cancel("c")
    assert done.wait(5)
    deadline = time.monotonic() + 5
    while scheduler.pending() or any(t.name == "pyhv-hyperv-timers" and t.is_alive()
                                     for t in threading.enumerate()):
        assert time.monotonic() < deadline, "the timer thread outlived its work"
        time.sleep(0.01)
    assert order == ["a", "b"]


def test_a_due_call_waits_while_not_ready_and_a_dead_partition_ends_the_thread():
    ready, alive, fired = threading.Event(), [True], threading.Event()
    scheduler = TimerScheduler(ready=ready.is_set, alive=lambda: alive[0])
    scheduler.schedule("x", time.monotonic_ns(), fired.set)
    assert not fired.wait(0.05)
    ready.set()
    assert fired.wait(5)
    scheduler.schedule("y", time.monotonic_ns() + 10**12, lambda: None)
    alive[0] = False
    scheduler.close()
    errors = TimerScheduler(ready=lambda: True, alive=lambda: True)
    boom = threading.Event()

    def fail() -> None:
        boom.set()
        raise RuntimeError("expiry failed")

    errors.schedule("z", time.monotonic_ns(), fail)
    assert boom.wait(5)
    errors.close()
    assert [str(e) for e in errors.errors] == ["expiry failed"]

