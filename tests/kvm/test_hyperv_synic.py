"""The SynIC: 16 SINTs on each of 2 vCPUs, messages and their slots (busy, pending, EOM),
event flags, HvPostMessage and HvSignalEvent from the guest, and posting from Python."""

from __future__ import annotations

import struct
import threading
import time

import pytest

import pyhv
from pyhv.hyperv import HyperV, PostResult, tlfs

from .hyperv_guest import (
    EOI_LAPIC,
    INPUT,
    SIEFP,
    SIMP,
    TAKE_MESSAGES,
    HvGuest,
    Script,
    area,
    message_header,
)

FAST = tlfs.CALL_FAST
STAGE = 0x11200                 # u32 per vCPU the scripts set to tell Python where they are


def stage(vp: int, value: int) -> tuple[str, int, int]:
    return ("store", STAGE + 8 * vp, value)


def wait_stage(part: pyhv.Partition, vp: int, value: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while part.memory.read_u32(STAGE + 8 * vp) != value:
        assert time.monotonic() < deadline, f"vCPU {vp} never reached stage {value}"
        time.sleep(0.001)


def synic_partition(scripts, isr_modes, features="hv-vpindex,hv-synic"):
    part = pyhv.Partition(memory="16M", irqchip=True)
    guest = HvGuest(part, scripts, isr_modes)
    hv = part.attach(HyperV(features))
    return part, guest, hv


def post_input(part: pyhv.Partition, vp: int, connection: int, mtype: int,
               payload: bytes, offset: int = 0) -> int:
    gpa = area(vp) + INPUT + offset
    part.memory.write(gpa, struct.pack("<IIII", connection, 0, mtype, len(payload)) +
                      payload.ljust(240, b"\0"))
    return gpa


def test_16_sints_on_each_of_2_vcpus(kvm):
    vectors = [0xB0 + i for i in range(16)]
    scripts = []
    for vp in range(2):
        s = Script()
        s.enable_synic(vp)
        for i, vector in enumerate(vectors):
            s.wrmsr(tlfs.HV_X64_MSR_SINT0 + i, vector)
        s.op("sti")
        s.op(*stage(vp, 1))
        for vector in vectors:
            s.wait_irqs(vector, 1)
        scripts.append(s)
    part, guest, hv = synic_partition(scripts, {v: EOI_LAPIC for v in vectors})
    with part:
        def fire() -> None:
            for vp in range(2):
                wait_stage(part, vp, 1)
            for vp in range(2):
                for sint in range(16):
                    assert hv.assert_sint(vp, sint)

        thread = threading.Thread(target=fire)
        thread.start()
        guest.run()
        thread.join()
        assert [[guest.count(vp, v) for v in vectors] for vp in range(2)] == [[1] * 16] * 2
        assert [hv.synic(vp).read_msr(tlfs.HV_X64_MSR_SINT0 + 5) for vp in range(2)] == [0xB5] * 2


def test_a_message_waits_while_its_slot_is_busy_and_comes_at_eom(kvm):
    slot = area(0) + SIMP + 2 * 256
    s = Script()
    s.enable_hypercalls()
    s.enable_synic(0)
    s.wrmsr(tlfs.HV_X64_MSR_SINT0 + 2, 0xB2)
    s.op("sti")
    first = s.hypercall(tlfs.HVCALL_POST_MESSAGE, area(0) + INPUT)
    s.wait_irqs(0xB2, 1)
    second = s.hypercall(tlfs.HVCALL_POST_MESSAGE, area(0) + INPUT + 0x400)   # slot busy
    third = s.hypercall(tlfs.HVCALL_POST_MESSAGE, area(0) + INPUT + 0x400)    # one waits already
    s.op("delay", 500)
    flags = s.op("load", slot)                         # type, size, flags of the 1st message
    payload1 = s.op("load", slot + 16)
    count1 = s.op("load32", area(0) + 0x10000 + 4 * 0xB2)
    s.op("store", slot, 0)                             # the guest takes it: the slot is free
    s.wrmsr(tlfs.HV_X64_MSR_EOM, 0)
    s.wait_irqs(0xB2, 2)
    payload2 = s.op("load", slot + 16)
    flags2 = s.op("load", slot)
    part, guest, hv = synic_partition([s], {0xB2: EOI_LAPIC})
    with part:
        hv.add_message_connection(0x10, 0, 2)
        post_input(part, 0, 0x10, 0x1234, b"first!!!")
        post_input(part, 0, 0x10, 0x1235, b"second!!", 0x400)
        guest.run()
        assert [guest.value(0, op) for op in (first, second, third)] == [
            0, 0, tlfs.HV_STATUS_INSUFFICIENT_BUFFERS]
        word = guest.value(0, flags)
        assert word & 0xFFFFFFFF == 0x1234 and word >> 32 & 0xFF == 8
        assert word >> 40 & tlfs.MESSAGE_PENDING                   # the 2nd one waits
        assert guest.value(0, payload1).to_bytes(8, "little") == b"first!!!"
        assert guest.value(0, count1) == 1                         # no interrupt while busy
        assert guest.value(0, payload2).to_bytes(8, "little") == b"second!!"
        assert not guest.value(0, flags2) >> 40 & tlfs.MESSAGE_PENDING


def test_events_are_signalled_once_until_the_guest_clears_the_flag(kvm):
    flags = area(1) + SIEFP + 3 * 256
    s0, s1 = Script(), Script()
    s1.enable_synic(1)
    s1.wrmsr(tlfs.HV_X64_MSR_SINT0 + 3, 0xB3)
    s1.op("sti")
    s1.op(*stage(1, 1))
    s1.wait_irqs(0xB3, 1)
    s1.op(*stage(1, 2))
    s1.op("wait_u32", STAGE, 3)                        # vCPU 0 signalled again
    before_clear = s1.op("load", flags)
    s1.op("store", flags, 0)
    s1.op(*stage(1, 4))
    s1.wait_irqs(0xB3, 2)
    s0.enable_hypercalls()
    s0.op("wait_u32", STAGE + 8, 1)
    r1 = s0.hypercall(tlfs.HVCALL_SIGNAL_EVENT | FAST, 0x21)
    s0.op("wait_u32", STAGE + 8, 2)
    r2 = s0.hypercall(tlfs.HVCALL_SIGNAL_EVENT | FAST, 0x21)   # already set: no interrupt
    s0.op(*stage(0, 3))
    s0.op("wait_u32", STAGE + 8, 4)
    r3 = s0.hypercall(tlfs.HVCALL_SIGNAL_EVENT | FAST, 0x21 | 2 << 32)   # flag 0x21 + 2
    part, guest, hv = synic_partition([s0, s1], {0xB3: EOI_LAPIC})
    with part:
        hv.add_event_connection(0x21, 1, 3)
        guest.run()
        assert [guest.value(0, op) for op in (r1, r2, r3)] == [0, 0, 0]
        assert guest.value(1, before_clear) == 1 << 0x21
        assert guest.count(1, 0xB3) == 2
        assert part.memory.read_u64(flags) == 1 << 0x23


def test_messages_posted_from_python_reach_both_vcpus_isrs(kvm):
    scripts = []
    for vp in range(2):
        s = Script()
        s.enable_synic(vp)
        s.wrmsr(tlfs.HV_X64_MSR_SINT0 + 1, 0xC1)
        s.op("sti")
        s.op(*stage(vp, 1))
        s.wait_irqs(0xC1, 3)
        scripts.append(s)
    part, guest, hv = synic_partition(scripts, {0xC1: TAKE_MESSAGES | EOI_LAPIC})
    with part:
        results = []

        def post() -> None:
            for vp in range(2):
                wait_stage(part, vp, 1)
            for n in range(3):
                for vp in range(2):
                    while True:
                        outcome = hv.post_message(vp, 1, 0x4242, bytes([vp, n]) * 4,
                                                  sender=0x77)
                        if outcome is not PostResult.BUSY:
                            break
                        time.sleep(0.001)
                    results.append(outcome)

        thread = threading.Thread(target=post)
        thread.start()
        guest.run()
        thread.join()
        for vp in range(2):
            log = guest.log(vp)
            assert len(log) == 3
            for n, message in enumerate(log):
                assert message_header(message)[:2] == (0x4242, 8)
                assert message_header(message)[3] == 0x77
                assert message[16:24] == bytes([vp, n]) * 4
        assert set(results) <= {PostResult.DELIVERED, PostResult.QUEUED}


def test_a_masked_or_polled_sint_gets_its_message_but_no_interrupt(kvm):
    s = Script()
    s.enable_synic(0)
    s.wrmsr(tlfs.HV_X64_MSR_SINT0 + 4, 0xB4 | tlfs.SINT_MASKED)
    s.wrmsr(tlfs.HV_X64_MSR_SINT0 + 5, 0xB5 | tlfs.SINT_POLLING)
    s.op(*stage(0, 1))
    s.op("wait_u32", STAGE, 2)
    part, guest, hv = synic_partition([s], {0xB4: EOI_LAPIC, 0xB5: EOI_LAPIC})
    with part:
        def post() -> None:
            wait_stage(part, 0, 1)
            assert hv.post_message(0, 4, 1, b"m") is PostResult.DELIVERED
            assert hv.post_message(0, 5, 1, b"p") is PostResult.DELIVERED
            assert hv.assert_sint(0, 4) is False
            part.memory.write_u32(STAGE, 2)

        thread = threading.Thread(target=post)
        thread.start()
        guest.run()
        thread.join()
        assert guest.count(0, 0xB4) == guest.count(0, 0xB5) == 0
        assert part.memory.read(area(0) + SIMP + 4 * 256 + 16, 1) == b"m"
        assert part.memory.read(area(0) + SIMP + 5 * 256 + 16, 1) == b"p"


def test_sint_and_page_msrs_refuse_what_the_tlfs_refuses(kvm):
    s = Script()
    ops = [s.wrmsr(tlfs.HV_X64_MSR_SINT0, 0x0F),                     # vector < 16: #GP
           s.wrmsr(tlfs.HV_X64_MSR_SINT0, 0x0F | tlfs.SINT_MASKED),   # masked: fine
           s.wrmsr(tlfs.HV_X64_MSR_SINT0, 0xB0 | 1 << 20),            # reserved bit
           s.wrmsr(tlfs.HV_X64_MSR_SIMP, 0xFEE00000 | 1),             # not RAM
           s.wrmsr(tlfs.HV_X64_MSR_SIMP, area(0) + SIMP | 1),
           s.rdmsr(tlfs.HV_X64_MSR_SIMP), s.rdmsr(tlfs.HV_X64_MSR_EOM),
           s.rdmsr(tlfs.HV_X64_MSR_SINT0)]
    part, guest, _ = synic_partition([s], {})
    with part:
        part.memory.write(area(0) + SIMP, b"\xAA" * 4096)
        guest.run()
        assert [guest.faulted(0, op) for op in ops] == [True, False, True, True] + [False] * 4
        assert guest.value(0, ops[5]) == area(0) + SIMP | 1 and guest.value(0, ops[6]) == 0
        assert guest.value(0, ops[7]) == 0x0F | tlfs.SINT_MASKED
        assert part.memory.read(area(0) + SIMP, 4096) == bytes(4096)   # enabling zeroes it


def test_a_message_posted_before_the_synic_is_on_waits_for_it(kvm):
    s = Script()
    s.op(*stage(0, 1))
    s.op("wait_u32", STAGE, 2)
    s.wrmsr(tlfs.HV_X64_MSR_SINT0 + 6, 0xB6)
    s.op("sti")
    s.enable_synic(0)
    s.wait_irqs(0xB6, 1)
    part, guest, hv = synic_partition([s], {0xB6: TAKE_MESSAGES | EOI_LAPIC})
    with part:
        def post() -> None:
            wait_stage(part, 0, 1)
            assert hv.post_message(0, 6, 9, b"early") is PostResult.QUEUED
            assert hv.post_message(0, 6, 9, b"again") is PostResult.BUSY
            part.memory.write_u32(STAGE, 2)

        thread = threading.Thread(target=post)
        thread.start()
        guest.run()
        thread.join()
        assert [m[16:21] for m in guest.log(0)] == [b"early"]


def test_autoeoi_is_done_late_at_the_next_exit_to_pyhv(kvm):
    # AutoEOI cannot be honoured at delivery (the in-kernel LAPIC sets the ISR bit): pyhv
    # clears it at the vCPU's next exit to it, so the next SINT of that class gets through
    s = Script()
    s.enable_synic(0)
    s.wrmsr(tlfs.HV_X64_MSR_SINT0 + 3, 0xB3 | tlfs.SINT_AUTO_EOI)
    s.wrmsr(tlfs.HV_X64_MSR_SINT0 + 4, 0xB4)
    s.op("sti")
    s.op(*stage(0, 1))
    s.wait_irqs(0xB3, 1)
    s.op(*stage(0, 2))
    s.op("wait_u32", STAGE, 3)
    s.op("delay", 500)
    blocked = s.op("load32", area(0) + 0x10000 + 4 * 0xB4)
    s.rdmsr(tlfs.HV_X64_MSR_SVERSION)                 # an exit to pyhv
    s.wait_irqs(0xB4, 1)
    part, guest, hv = synic_partition([s], {0xB4: EOI_LAPIC})   # 0xB3's ISR does not EOI
    with part:
        def fire() -> None:
            wait_stage(part, 0, 1)
            hv.assert_sint(0, 3)
            wait_stage(part, 0, 2)
            hv.assert_sint(0, 4)
            part.memory.write_u32(STAGE, 3)

        thread = threading.Thread(target=fire)
        thread.start()
        guest.run()
        thread.join()
        assert guest.value(0, blocked) == 0 and guest.count(0, 0xB4) == 1


def test_python_api_checks_its_arguments(kvm):
    with pyhv.Partition(memory="16M", irqchip=True) as part:
        part.memory.write(0x1000, b"\xf4")
        part.create_vcpu(mode="long", entry=0x1000)
        hv = part.attach(HyperV("hv-vpindex,hv-synic"))
        with pytest.raises(pyhv.InvalidArgument, match="SINT"):
            hv.post_message(0, 16, 1)
        with pytest.raises(pyhv.InvalidArgument, match="VP index"):
            hv.signal_event(3, 0, 0)
        with pytest.raises(pyhv.InvalidArgument, match="message type"):
            hv.post_message(0, 1, 0)                              # the free slot's type
        with pytest.raises(pyhv.InvalidArgument, match="message type"):
            hv.post_message(0, 1, "1")                            # type: ignore[arg-type]
        with pytest.raises(pyhv.InvalidArgument, match="bytes"):
            hv.post_message(0, 1, 1, "text")                      # type: ignore[arg-type]
        with pytest.raises(pyhv.InvalidArgument, match="VP index"):
            hv.post_message("0", 1, 1)                            # type: ignore[arg-type]
        with pytest.raises(pyhv.InvalidArgument, match="another|not a vCPU"):
            with pyhv.Partition(memory="16M") as other:
                other.memory.write(0x1000, b"\xf4")
                hv.handle(other.create_vcpu(mode="long", entry=0x1000), pyhv.exits.Halt())
        with pytest.raises(pyhv.InvalidArgument, match="240"):
            hv.post_message(0, 1, 1, bytes(241))
        with pytest.raises(pyhv.InvalidArgument, match="flag"):
            hv.signal_event(0, 1, 2048)
        with pytest.raises(pyhv.InvalidArgument, match="connection"):
            hv.add_message_connection(1 << 24, 0, 1)
        with pytest.raises(pyhv.InvalidArgument):
            hv.remove_event_connection(5)
        assert hv.signal_event(0, 1, 5) is None                  # its event page is off
        assert hv.post_message(0, 1, 1, b"x") is PostResult.QUEUED  # its SynIC is off
    with pytest.raises(pyhv.ClosedError):
        hv.post_message(0, 1, 1, b"x")


def test_synthetic_cluster_ipis_reach_the_vps_they_name(kvm):
    s0, s1 = Script(), Script()
    s0.enable_hypercalls()
    s0.op("sti")
    s0.wait_ready(1)
    mask = s0.hypercall(tlfs.HVCALL_SEND_IPI | FAST, 0xD5, 0b11)          # VPs 0 and 1
    every = s0.hypercall(tlfs.HVCALL_SEND_IPI_EX | FAST, 0xD6, tlfs.VP_SET_ALL)
    part_input = area(0) + INPUT
    sparse = s0.hypercall(tlfs.HVCALL_SEND_IPI_EX, part_input)            # VP 1 only
    bad = s0.hypercall(tlfs.HVCALL_SEND_IPI | FAST, 0x05, 0b1)             # vector < 16
    nobody = s0.hypercall(tlfs.HVCALL_SEND_IPI | FAST, 0xD5, 0b100)        # VP 2: none
    s0.wait_irqs(0xD5, 1)
    s0.wait_irqs(0xD6, 1)
    s1.op("sti")
    s1.wait_irqs(0xD5, 1)
    s1.wait_irqs(0xD6, 1)
    s1.wait_irqs(0xD7, 1)
    part, guest, _ = synic_partition([s0, s1], {v: EOI_LAPIC for v in (0xD5, 0xD6, 0xD7)},
                                     features="hv-vpindex,hv-ipi")
    with part:
        part.memory.write(part_input, struct.pack("<IIQQQ", 0xD7, 0, tlfs.VP_SET_SPARSE_4K,
                                                  0b1, 0b10))
        guest.run()
        assert [guest.value(0, op) for op in (mask, every, sparse, bad, nobody)] == [
            0, 0, 0, tlfs.HV_STATUS_INVALID_PARAMETER, tlfs.HV_STATUS_INVALID_PARAMETER]
        assert [guest.count(0, v) for v in (0xD5, 0xD6, 0xD7)] == [1, 1, 0]
        assert [guest.count(1, v) for v in (0xD5, 0xD6, 0xD7)] == [1, 1, 1]
