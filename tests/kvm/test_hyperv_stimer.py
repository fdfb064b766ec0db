"""Synthetic timers: periodic and one-shot, auto-enable, message and direct mode, a busy
message slot, both vCPUs at once, and the expiration times the messages carry."""

from __future__ import annotations

import struct
import threading
import time

import pytest

import pyhv
from pyhv.hyperv import HyperV, tlfs

from ..conftest import fd_count
from .hyperv_guest import EOI_LAPIC, SIMP, TAKE_MESSAGES, HvGuest, Script, area, message_header

MS = 10_000                               # one millisecond in reference time units
CONFIG, COUNT = tlfs.HV_X64_MSR_STIMER0_CONFIG, tlfs.HV_X64_MSR_STIMER0_CONFIG + 1


def config(*, sint: int = 0, periodic: bool = False, auto: bool = False, enable: bool = True,
           lazy: bool = False, direct_vector: int | None = None) -> int:
    value = (tlfs.STIMER_ENABLE if enable else 0) | (tlfs.STIMER_PERIODIC if periodic else 0)
    value |= (tlfs.STIMER_AUTO_ENABLE if auto else 0) | (tlfs.STIMER_LAZY if lazy else 0)
    if direct_vector is not None:
        return value | tlfs.STIMER_DIRECT | direct_vector << 4
    return value | sint << 16


def timer_messages(guest: HvGuest, vp: int) -> list[tuple[int, int, int]]:
    """(timer index, expiration time, delivery time) of each timer message the ISR took."""
    out = []
    for message in guest.log(vp):
        mtype, size, _flags, _sender = message_header(message)
        assert (mtype, size) == (tlfs.HVMSG_TIMER_EXPIRED, tlfs.TIMER_PAYLOAD_SIZE)
        index, _r, expiration, delivery = struct.unpack_from("<IIQQ", message, 16)
        out.append((index, expiration, delivery))
    return out


def timer_partition(scripts, features="hv-vpindex,hv-time,hv-synic,hv-stimer,hv-stimer-direct",
                    isr_modes=None):
    part = pyhv.Partition(memory="16M", irqchip=True)
    modes = {0xB2: TAKE_MESSAGES | EOI_LAPIC, 0xB3: TAKE_MESSAGES | EOI_LAPIC,
             0xD0: EOI_LAPIC, 0xD1: EOI_LAPIC}
    guest = HvGuest(part, scripts, modes if isr_modes is None else isr_modes)
    hv = part.attach(HyperV(features))
    return part, guest, hv


def synic_script(vp: int) -> Script:
    s = Script()
    s.enable_synic(vp)
    s.wrmsr(tlfs.HV_X64_MSR_SINT0 + 2, 0xB2)
    s.wrmsr(tlfs.HV_X64_MSR_SINT0 + 3, 0xB3)
    s.op("sti")
    return s


def test_a_periodic_timer_fires_at_exact_multiples_of_its_period_on_both_vcpus(kvm):
    period, n = 5 * MS, 8
    scripts = []
    for vp in range(2):
        s = synic_script(vp)
        s.wrmsr(COUNT + 2 * vp, period)                      # vCPU 0: timer 0, vCPU 1: timer 1
        s.wrmsr(CONFIG + 2 * vp, config(sint=2, periodic=True))
        start = s.rdmsr(tlfs.HV_X64_MSR_TIME_REF_COUNT)
        s.wait_irqs(0xB2, n)
        s.wrmsr(CONFIG + 2 * vp, 0)                          # stop it
        after = s.rdmsr(CONFIG + 2 * vp)
        s.op("delay", 3000)
        scripts.append((s, start, after))
    part, guest, hv = timer_partition([s for s, _, _ in scripts])
    with part:
        guest.run()
        for vp, (_s, start, after) in enumerate(scripts):
            messages = timer_messages(guest, vp)
            assert len(messages) == n                         # none after it stopped
            assert {m[0] for m in messages} == {vp}
            first = messages[0][1]
            assert first - guest.value(vp, start) <= period  # armed at the config write
            assert [m[1] - first for m in messages] == [k * period for k in range(n)]
            assert all(delivery >= expiration for _, expiration, delivery in messages)
            assert guest.value(vp, after) == 0
        # one more may have reached its slot between the n-th and the stop (IF was 0)
        assert hv.vp(0).timers.expirations[0] in (n, n + 1)
        assert hv.vp(1).timers.expirations[1] in (n, n + 1)


def test_a_one_shot_timer_fires_once_at_its_absolute_time_and_disables(kvm):
    s = synic_script(0)
    s.wrmsr(CONFIG + 2, config(sint=3))                     # enabled, count 0: not armed
    armed = s.op("wrmsr_ref", COUNT + 2, 3 * MS)            # COUNT = now + 3 ms
    s.wait_irqs(0xB3, 1)
    s.op("delay", 3000)
    cfg = s.rdmsr(CONFIG + 2)
    part, guest, _ = timer_partition([s])
    with part:
        guest.run()
        messages = timer_messages(guest, 0)
        assert len(messages) == 1
        index, expiration, delivery = messages[0]
        assert index == 1 and expiration == guest.value(0, armed) and delivery >= expiration
        assert not guest.value(0, cfg) & tlfs.STIMER_ENABLE


def test_auto_enable_starts_the_timer_at_the_count_write(kvm):
    s = synic_script(0)
    s.wrmsr(CONFIG, config(sint=2, periodic=True, auto=True, enable=False))
    before = s.rdmsr(CONFIG)
    s.wrmsr(COUNT, 2 * MS)
    running = s.rdmsr(CONFIG)
    s.wait_irqs(0xB2, 3)
    s.wrmsr(COUNT, 0)                                        # a zero count stops it
    stopped = s.rdmsr(CONFIG)
    part, guest, _ = timer_partition([s])
    with part:
        guest.run()
        assert not guest.value(0, before) & tlfs.STIMER_ENABLE
        assert guest.value(0, running) & tlfs.STIMER_ENABLE
        assert not guest.value(0, stopped) & tlfs.STIMER_ENABLE
        assert len(timer_messages(guest, 0)) >= 3


def test_direct_mode_raises_the_timers_own_vector(kvm):
    s = Script()
    s.op("sti")
    s.wrmsr(COUNT + 4, 2 * MS)
    s.wrmsr(CONFIG + 4, config(periodic=True, direct_vector=0xD0))
    s.wrmsr(COUNT + 6, 1 * MS)
    s.wrmsr(CONFIG + 6, config(periodic=False, direct_vector=0xD1))   # absolute 1 ms: past
    s.wait_irqs(0xD0, 4)
    s.wait_irqs(0xD1, 1)
    s.wrmsr(CONFIG + 4, 0)
    part, guest, hv = timer_partition([s])
    with part:
        guest.run()
        assert guest.count(0, 0xD0) >= 4 and guest.count(0, 0xD1) == 1
        assert guest.log(0) == []                              # no messages in direct mode


def test_direct_mode_needs_hv_stimer_direct_and_sint0_means_off(kvm):
    s = synic_script(0)
    direct = s.wrmsr(CONFIG, config(direct_vector=0xD0))
    s.wrmsr(COUNT, 5 * MS)
    s.wrmsr(CONFIG, config(sint=0, periodic=True))
    off = s.rdmsr(CONFIG)
    reserved = s.wrmsr(CONFIG, 1 << 40)
    part, guest, _ = timer_partition([s], features="hv-vpindex,hv-time,hv-synic,hv-stimer")
    with part:
        guest.run()
        assert guest.faulted(0, direct) and guest.faulted(0, reserved)
        assert guest.value(0, off) == config(sint=0, periodic=True, enable=False)


def test_an_expiry_waits_while_its_slot_is_busy_and_comes_at_eom(kvm):
    slot = area(0) + SIMP + 2 * 256
    s = synic_script(0)
    s.op("store", slot, tlfs.HVMSG_TIMER_EXPIRED)          # the slot holds a message already
    s.wrmsr(CONFIG, config(sint=2))
    armed = s.op("wrmsr_ref", COUNT, 1 * MS)
    s.op("wait_u32", slot + 4, 0x100)                       # pyhv sets "pending" (byte 5)
    s.op("delay", 1000)
    early = s.op("load32", area(0) + 0x10000 + 4 * 0xB2)
    s.op("store", slot, 0)                                  # free the slot, then EOM
    s.wrmsr(tlfs.HV_X64_MSR_EOM, 0)
    s.wait_irqs(0xB2, 1)
    part, guest, _ = timer_partition([s])
    with part:
        guest.run()
        assert guest.value(0, early) == 0                   # no interrupt while busy
        messages = timer_messages(guest, 0)
        assert len(messages) == 1
        assert messages[0][:2] == (0, guest.value(0, armed))


@pytest.mark.parametrize("lazy", [False, True])
def test_a_periodic_timer_that_fell_behind_catches_up_unless_lazy(kvm, lazy):
    period = 2 * MS
    slot = area(0) + SIMP + 2 * 256
    s = synic_script(0)
    s.wrmsr(COUNT, period)
    s.wrmsr(CONFIG, config(sint=2, periodic=True, lazy=lazy))
    s.wait_irqs(0xB2, 1)                  # its first message stays in the slot: it falls behind
    s.op("delay", 5000)
    s.op("store", 0x11000 + 0xB0, (TAKE_MESSAGES | EOI_LAPIC) * 0x0101010101010101)
    s.op("store", slot, 0)
    s.wrmsr(tlfs.HV_X64_MSR_EOM, 0)
    s.wait_irqs(0xB2, 4)
    s.wrmsr(CONFIG, 0)
    part, guest, _ = timer_partition([s], isr_modes={v: EOI_LAPIC for v in range(0xB0, 0xB8)})
    with part:
        guest.run()
        messages = timer_messages(guest, 0)
        assert len(messages) == 3
        (_, e2, d2), (_, e3, _d3), (_, e4, _d4) = messages
        first = e2 - period
        assert all((e - first) % period == 0 for e in (e3, e4))
        if lazy:
            assert e3 > d2 - period and e3 - e2 > period     # the missed periods skipped
        else:
            assert (e3, e4) == (e2 + period, e2 + 2 * period)  # delivered one after another


def timer_threads() -> int:
    return sum(t.name == "pyhv-hyperv-timers" and t.is_alive() for t in threading.enumerate())


def test_closing_the_partition_ends_the_timer_thread_and_leaves_nothing(kvm):
    pyhv.Partition(memory="1M").close()                    # /dev/kvm itself stays open
    before_fds, before_threads = fd_count(), timer_threads()
    s = synic_script(0)
    s.wrmsr(COUNT, 50 * MS)
    s.wrmsr(CONFIG, config(sint=2, periodic=True))             # armed, far from its expiry
    part, guest, hv = timer_partition([s])
    guest.run()
    assert hv.scheduler is not None and hv.scheduler.pending() == 1
    assert timer_threads() == before_threads + 1
    part.close()
    deadline = time.monotonic() + 5
    while timer_threads() > before_threads:
        assert time.monotonic() < deadline, "the timer thread outlived its partition"
        time.sleep(0.01)
    assert fd_count() == before_fds
