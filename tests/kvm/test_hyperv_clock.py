"""The reference clock: TIME_REF_COUNT against the reference TSC page, on 2 vCPUs at once
(no drift between the two, never backwards), its rate against the host's clock, and the
page's MSR."""

from __future__ import annotations

import struct
import time

import pyhv
from pyhv.hyperv import HyperV, tlfs

from .hyperv_guest import TSCPAGE, HvGuest, Script


def clock_guest(rounds: int, vcpus: int = 2):
    scripts = []
    for vp in range(vcpus):
        s = Script()
        if vp == 0:
            s.wrmsr(tlfs.HV_X64_MSR_REFERENCE_TSC, TSCPAGE | tlfs.PAGE_ENABLE)
            s.rdmsr(tlfs.HV_X64_MSR_REFERENCE_TSC)
            s.op("store", 0x11200, 1)
        else:
            s.op("wait_u32", 0x11200, 1)
        s.op("times")
        s.op("clock_check", rounds)
        s.op("times")
        scripts.append(s)
    return scripts


def test_time_ref_count_and_the_tsc_page_agree_on_2_vcpus(kvm):
    with pyhv.Partition(memory="16M", irqchip=True) as part:
        guest = HvGuest(part, clock_guest(200))
        hv = part.attach(HyperV("hv-vpindex,hv-time"))
        started = time.monotonic()
        guest.run()
        elapsed = time.monotonic() - started
        assert guest.value(0, 1) == TSCPAGE | tlfs.PAGE_ENABLE
        sequence, _, scale, offset = struct.unpack("<IIQq", part.memory.read(TSCPAGE, 24))
        assert sequence not in (0, 0xFFFFFFFF) and scale > 0
        for vp in range(2):
            first = 3 if vp == 0 else 1
            page0, msr0 = guest.result(vp, first)[:2]
            drift, warps, last_msr, _ = guest.result(vp, first + 1)
            page1, msr1 = guest.result(vp, first + 2)[:2]
            assert (drift, warps) == (0, 0), f"vCPU {vp}: {drift} drifts, {warps} warps"
            assert page0 <= msr0 <= last_msr <= page1 <= msr1
            assert msr1 - msr0 <= elapsed * 1e7             # no faster than the host's clock
        assert hv.reference_time() >= max(guest.result(vp, 3 if vp == 0 else 1)[1]
                                          for vp in range(2))


def test_the_reference_clock_runs_at_the_hosts_rate(kvm):
    s = Script()
    first = s.op("times")
    s.op("delay", 20000)
    last = s.op("times")
    with pyhv.Partition(memory="16M") as part:
        guest = HvGuest(part, [s])
        hv = part.attach(HyperV("hv-time"))
        host0 = time.monotonic_ns()
        ref0 = hv.reference_time()
        guest.run()
        host1 = time.monotonic_ns()
        ref1 = hv.reference_time()
        guest_delta = guest.result(0, last)[1] - guest.result(0, first)[1]
        assert 0 < guest_delta <= (host1 - host0) / 100
        host_estimate = ref1 - ref0
        assert abs(host_estimate - (host1 - host0) / 100) < 0.01 * (host1 - host0) / 100 + 1000
        assert guest.result(0, first)[0] == 0xFFFFFFFFFFFFFFFF       # no page mapped


def test_the_page_msr_refuses_what_is_not_ram_and_can_be_disabled(kvm):
    s = Script()
    bad = s.wrmsr(tlfs.HV_X64_MSR_REFERENCE_TSC, 0xFEE00000 | tlfs.PAGE_ENABLE)
    s.wrmsr(tlfs.HV_X64_MSR_REFERENCE_TSC, TSCPAGE | tlfs.PAGE_ENABLE)
    s.wrmsr(tlfs.HV_X64_MSR_REFERENCE_TSC, 0)
    off = s.rdmsr(tlfs.HV_X64_MSR_REFERENCE_TSC)
    with pyhv.Partition(memory="16M") as part:
        guest = HvGuest(part, [s])
        part.attach(HyperV("hv-time"))
        guest.run()
        assert guest.faulted(0, bad) and guest.value(0, off) == 0
        assert part.memory.read_u32(TSCPAGE) != 0          # written once, left as it was
