"""Snapshots hold all the Hyper-V state: a guest with its SynIC on, a periodic timer armed
and the reference TSC page mapped goes on from a restored snapshot (in place, from a file,
in a new partition) as if nothing had happened."""

from __future__ import annotations

import json
import struct
import threading
import time

import pytest

import pyhv
from pyhv.hyperv import HyperV, tlfs

from .hyperv_guest import EOI_LAPIC, TAKE_MESSAGES, TSCPAGE, HvGuest, Script

MS = 10_000
FEATURES = "hv-vpindex,hv-time,hv-synic,hv-stimer"
STAGE, GO = 0x11200, 0x11208
CONFIG, COUNT = tlfs.HV_X64_MSR_STIMER0_CONFIG, tlfs.HV_X64_MSR_STIMER0_CONFIG + 1


def timer_script() -> Script:
    s = Script()
    s.enable_hypercalls()
    s.enable_synic(0)
    s.wrmsr(tlfs.HV_X64_MSR_REFERENCE_TSC, TSCPAGE | 1)
    s.wrmsr(tlfs.HV_X64_MSR_SINT0 + 2, 0xB2)
    s.op("sti")
    s.wrmsr(COUNT, 3 * MS)
    s.wrmsr(CONFIG, tlfs.STIMER_ENABLE | tlfs.STIMER_PERIODIC | 2 << 16)
    s.wait_irqs(0xB2, 3)
    s.op("store", STAGE, 1)
    s.op("wait_u32", GO, 1)                 # Python snapshots here
    s.wait_irqs(0xB2, 6)
    s.wrmsr(CONFIG, 0)
    s.op("clock_check", 20)
    return s


def expirations(guest: HvGuest) -> list[int]:
    return [struct.unpack_from("<Q", m, 24)[0] for m in guest.log(0)]


def run_and_snapshot(part: pyhv.Partition, guest: HvGuest) -> pyhv.Snapshot:
    """Run the guest to its stage, pause, snapshot, let it go on to the end."""
    taken: list[pyhv.Snapshot] = []

    def snap() -> None:
        deadline = time.monotonic() + 30
        while part.memory.read_u32(STAGE) != 1:
            assert time.monotonic() < deadline
            time.sleep(0.001)
        part.pause()
        try:
            taken.append(part.snapshot())
        finally:
            part.resume()
        part.memory.write_u32(GO, 1)

    thread = threading.Thread(target=snap)
    thread.start()
    guest.run()
    thread.join()
    return taken[0]


def check_run(guest: HvGuest) -> None:
    times = expirations(guest)
    assert len(times) == 6
    assert [t - times[0] for t in times] == [k * 3 * MS for k in range(6)]
    drift, warps = guest.result(0, len(guest.scripts[0].ops) - 1)[:2]
    assert (drift, warps) == (0, 0)


def test_restoring_a_snapshot_goes_on_with_the_timer_and_the_clock(kvm):
    with pyhv.Partition(memory="16M", irqchip=True) as part:
        guest = HvGuest(part, [timer_script()], {0xB2: TAKE_MESSAGES | EOI_LAPIC})
        hv = part.attach(HyperV(FEATURES))
        snap = run_and_snapshot(part, guest)
        check_run(guest)
        first = expirations(guest)
        saved = snap.devices["hyperv"]
        json.dumps(saved)                                   # plain JSON
        assert saved["vps"]["0"]["timers"]["expiration"][0] is not None
        assert saved["vps"]["0"]["synic"]["simp"] & 1
        part.restore(snap)
        assert hv.vp(0).timers.config[0] & tlfs.STIMER_ENABLE  # armed again
        assert hv.guest_os_id and hv.hypercall_msr & 1
        part.memory.write_u32(GO, 1)
        guest.run()
        check_run(guest)
        assert expirations(guest) == first                  # the same expirations again


def test_a_snapshot_file_rebuilds_the_enlightened_partition(kvm, tmp_path):
    with pyhv.Partition(memory="16M", irqchip=True) as part:
        guest = HvGuest(part, [timer_script()], {0xB2: TAKE_MESSAGES | EOI_LAPIC})
        part.attach(HyperV(FEATURES))
        snap = run_and_snapshot(part, guest)
    path = tmp_path / "hv.snap"
    snap.save(path)
    with pyhv.Partition.from_snapshot(pyhv.Snapshot.load(path)) as part:
        part.add_debug_exit(0xF4)
        hv = part.attach(HyperV(FEATURES))
        assert hv.hypercall_msr & 1 and hv.vp(0).synic.enabled
        part.memory.write_u32(GO, 1)
        guest = HvGuest.__new__(HvGuest)                  # the guest as it was: no reload
        guest.part, guest.scripts, guest.vcpus = part, [timer_script()], list(part.vcpus)
        guest.run()
        check_run(guest)


def test_a_snapshot_of_other_enlightenments_is_refused(kvm):
    with pyhv.Partition(memory="16M", irqchip=True) as part:
        part.memory.write(0x1000, b"\xf4")
        part.create_vcpu(mode="long", entry=0x1000)
        part.attach(HyperV(FEATURES))
        snap = part.snapshot()
    with pyhv.Partition.from_snapshot(snap) as part:
        with pytest.raises(pyhv.InvalidArgument, match="Hyper-V"):
            part.attach(HyperV("hv-vpindex"))
        hv = HyperV(FEATURES)
        part.attach(hv)
        with pytest.raises(pyhv.InvalidArgument, match="malformed"):
            hv.set_state({"features": FEATURES})
