"""QEMU's hyperv-testdev as the kvm-unit-tests drive it: SINT routes raised by one vCPU on
the other, message and event connections created and destroyed by the guest."""

from __future__ import annotations

import pyhv
from pyhv.devices import registry
from pyhv.hyperv import HyperV, HypervTestDev, tlfs

from .hyperv_guest import EOI_LAPIC, INPUT, SIEFP, TAKE_MESSAGES, HvGuest, Script, area

PORT = 0x3000
FAST = tlfs.CALL_FAST


def ctl(code: int, vp: int = 0, sint: int = 0, conn: int = 0) -> int:
    return conn << 24 | code << 16 | vp << 8 | sint


def partition_with_testdev(scripts, isr_modes):
    part = pyhv.Partition(memory="16M", irqchip=True)
    guest = HvGuest(part, scripts, isr_modes)
    part.attach(HyperV("hv-passthrough"))
    dev = part.attach(registry.create("hyperv-testdev"))
    assert isinstance(dev, HypervTestDev)
    return part, guest, dev


def test_each_vcpu_raises_the_16_sints_of_the_other(kvm):
    vectors = [0xB0 + i for i in range(16)]
    scripts = []
    for vp in range(2):
        s = Script()
        s.enable_synic(vp)
        for sint, vector in enumerate(vectors):
            s.op("outl", PORT, ctl(1, vp, sint))                 # create my route
            s.wrmsr(tlfs.HV_X64_MSR_SINT0 + sint, vector)
        s.op("sti")
        s.op("store", 0x11200 + 8 * vp, 1)
        s.op("wait_u32", 0x11200 + 8 * (1 - vp), 1)
        for sint in range(16):
            s.op("outl", PORT, ctl(3, 1 - vp, sint))             # raise the other's
        for vector in vectors:
            s.wait_irqs(vector, 1)
        s.op("store", 0x11210 + 8 * vp, 1)
        s.op("wait_u32", 0x11210 + 8 * (1 - vp), 1)
        for sint in range(16):
            s.op("outl", PORT, ctl(2, vp, sint))                 # destroy my routes
        scripts.append(s)
    part, guest, dev = partition_with_testdev(scripts, {v: EOI_LAPIC for v in vectors})
    with part:
        guest.run()
        assert [[guest.count(vp, v) for v in vectors] for vp in range(2)] == [[1] * 16] * 2
        assert dev.routes == set() and dev.ignored == 0


def test_message_and_event_connections_made_by_the_guest(kvm):
    s = Script()
    s.enable_hypercalls()
    s.enable_synic(0)
    s.op("outl", PORT, ctl(4, 0, 8, conn=0x10))                  # message conn 0x10 -> SINT 8
    s.wrmsr(tlfs.HV_X64_MSR_SINT0 + 8, 0xB8)
    s.op("outl", PORT, ctl(6, 0, 9, conn=0x20))                  # event conn 0x20 -> SINT 9
    s.wrmsr(tlfs.HV_X64_MSR_SINT0 + 9, 0xB9)
    s.op("sti")
    posted = s.hypercall(tlfs.HVCALL_POST_MESSAGE, area(0) + INPUT)
    s.wait_irqs(0xB8, 1)
    signalled = s.hypercall(tlfs.HVCALL_SIGNAL_EVENT | FAST, 0x20)
    s.wait_irqs(0xB9, 1)
    s.op("outl", PORT, ctl(5, conn=0x10))
    s.op("outl", PORT, ctl(7, conn=0x20))
    gone_msg = s.hypercall(tlfs.HVCALL_POST_MESSAGE, area(0) + INPUT)
    gone_evt = s.hypercall(tlfs.HVCALL_SIGNAL_EVENT | FAST, 0x20)
    s.op("outl", PORT, ctl(3, 0, 4))                             # no such route: ignored
    s.op("outl", PORT, ctl(99))                                  # no such control: ignored
    part, guest, dev = partition_with_testdev([s], {0xB8: TAKE_MESSAGES | EOI_LAPIC,
                                               0xB9: EOI_LAPIC})
    with part:
        payload = (0x5A5A).to_bytes(8, "little")
        part.memory.write(area(0) + INPUT, (0x10).to_bytes(4, "little") + bytes(4) +
                          (0x12345678).to_bytes(4, "little") + (8).to_bytes(4, "little") +
                          payload)
        guest.run()
        assert [guest.value(0, op) for op in (posted, signalled, gone_msg, gone_evt)] == [
            0, 0, tlfs.HV_STATUS_INVALID_CONNECTION_ID, tlfs.HV_STATUS_INVALID_CONNECTION_ID]
        (message,) = guest.log(0)
        assert message[:4] == (0x12345678).to_bytes(4, "little") and message[16:24] == payload
        assert part.memory.read_u64(area(0) + SIEFP + 9 * 256) == 1 << 0x20   # flag = conn id
        assert dev.ignored == 2


def test_the_testdev_without_hyperv_says_what_is_missing(kvm):
    with pyhv.Partition(memory="16M") as part:
        part.memory.write(0x1000, bytes.fromhex("b8 01 00 01 00 ba 00 30 00 00 ef f4"))
        part.create_vcpu(mode="long", entry=0x1000)               # outl 0x10001 to 0x3000
        part.attach(HypervTestDev())
        try:
            part.run(timeout=10)
        except pyhv.HypervisorError as exc:
            assert "hv-synic" in str(exc)
        else:
            raise AssertionError("the run should have failed")
