"""The hypercall ABI through the page pyhv writes: the control word, memory and fast
(register) calls, rep calls, the TLFS status codes for what is wrong, and hypercalls served
by Python handlers."""

from __future__ import annotations

import pytest

import pyhv
from pyhv.hyperv import Hypercall, HypercallFailed, HyperV, tlfs
from pyhv.testing import assemble

from .hyperv_guest import INPUT, OUTPUT, HvGuest, Script, area

FAST = tlfs.CALL_FAST
CUSTOM = 0x0099                      # a code no TLFS call uses: served by the tests


def run_calls(calls, *, features: str = "hv-vpindex", setup=None, irqchip: bool = False):
    """Make the hypercalls ``calls`` ((control, rdx, r8), ...); their RAX values."""
    s = Script()
    s.enable_hypercalls()
    ops = [s.hypercall(*call) for call in calls]
    with pyhv.Partition(memory="16M", irqchip=irqchip) as part:
        guest = HvGuest(part, [s])
        hv = part.attach(HyperV(features))
        if setup is not None:
            setup(part, hv)
        guest.run()
        assert hv.hypercalls_served == len(calls)
        return [guest.value(0, op) for op in ops]


def test_status_codes_for_unknown_codes_reserved_bits_and_reps(kvm):
    assert run_calls([
        (0x7777, 0, 0),                                    # no such call
        (tlfs.HVCALL_NOTIFY_LONG_SPIN_WAIT | 1 << 31, 0, 0),   # a reserved bit
        (tlfs.HVCALL_NOTIFY_LONG_SPIN_WAIT | 3 << 32, 0, 0),   # reps for a simple call
        (tlfs.HVCALL_NOTIFY_LONG_SPIN_WAIT | FAST, 5, 0),      # fine
    ]) == [tlfs.HV_STATUS_INVALID_HYPERCALL_CODE, tlfs.HV_STATUS_INVALID_HYPERCALL_INPUT,
           tlfs.HV_STATUS_INVALID_HYPERCALL_INPUT, tlfs.HV_STATUS_SUCCESS]


def test_a_python_handler_reads_the_input_block_and_writes_the_output(kvm):
    seen: list[Hypercall] = []

    def handler(call: Hypercall) -> int:
        seen.append(call)
        data = call.read_input(16)
        a, b = int.from_bytes(data[:8], "little"), int.from_bytes(data[8:], "little")
        call.write_output((a * b).to_bytes(8, "little"))
        return 0

    def setup(part: pyhv.Partition, hv: HyperV) -> None:
        hv.on_hypercall(CUSTOM, handler)
        part.memory.write(area(0) + INPUT, (6).to_bytes(8, "little") + (7).to_bytes(8, "little"))

    assert run_calls([(CUSTOM, area(0) + INPUT, area(0) + OUTPUT)], setup=setup) == [0]
    call = seen[0]
    assert (call.code, call.fast, call.vp_index, call.input_gpa) == (CUSTOM, False, 0,
                                                                     area(0) + INPUT)


def test_a_fast_call_passes_its_input_in_registers(kvm):
    def setup(part: pyhv.Partition, hv: HyperV) -> None:
        hv.on_hypercall(CUSTOM, lambda call: int.from_bytes(call.read_input(16)[8:], "little")
                        & 0xFFFF if call.fast else 1)

    assert run_calls([(CUSTOM | FAST, 0x1111, 0x0042)], setup=setup) == [0x42]


def test_memory_blocks_are_checked_before_the_handler_touches_them(kvm):
    def setup(part: pyhv.Partition, hv: HyperV) -> None:
        hv.on_hypercall(CUSTOM, lambda call: call.read_input(64) and 0)

    base = area(0) + INPUT
    assert run_calls([(CUSTOM, base + 4, 0),               # misaligned
                      (CUSTOM, base + 0xFF8, 0),           # crosses a page
                      (CUSTOM, 0xFEE00000, 0),             # not RAM
                      (CUSTOM, 1 << 40, 0),                # nowhere at all
                      (CUSTOM | FAST, 0, 0),               # 64 bytes do not fit 2 registers
                      (CUSTOM, base, 0)], setup=setup) == [
        tlfs.HV_STATUS_INVALID_ALIGNMENT, tlfs.HV_STATUS_INVALID_ALIGNMENT,
        tlfs.HV_STATUS_INVALID_PARAMETER, tlfs.HV_STATUS_INVALID_PARAMETER,
        tlfs.HV_STATUS_INVALID_HYPERCALL_INPUT, tlfs.HV_STATUS_SUCCESS]


def test_a_rep_call_reports_the_reps_it_completed(kvm):
    def handler(call: Hypercall):
        if call.rep_count > 4:
            raise HypercallFailed(tlfs.HV_STATUS_INSUFFICIENT_MEMORY, reps_completed=4)
        return None

    def setup(part: pyhv.Partition, hv: HyperV) -> None:
        hv.on_hypercall(CUSTOM, handler, rep=True)

    results = run_calls([(CUSTOM | FAST | 3 << 32, 0, 0), (CUSTOM | FAST | 9 << 32, 0, 0),
                         (CUSTOM | FAST | 2 << 32 | 5 << 48, 0, 0)], setup=setup)
    assert results == [3 << 32, tlfs.HV_STATUS_INSUFFICIENT_MEMORY | 4 << 32,
                       tlfs.HV_STATUS_INVALID_HYPERCALL_INPUT]     # start beyond the count


def test_removing_a_handler_makes_the_code_unknown_again(kvm):
    def setup(part: pyhv.Partition, hv: HyperV) -> None:
        hv.on_hypercall(CUSTOM, lambda call: 0)
        hv.on_hypercall(CUSTOM, None)

    assert run_calls([(CUSTOM, 0, 0)], setup=setup) == [tlfs.HV_STATUS_INVALID_HYPERCALL_CODE]


def test_a_handler_that_fails_stops_the_run_and_says_why(kvm):
    def setup(part: pyhv.Partition, hv: HyperV) -> None:
        hv.on_hypercall(CUSTOM, lambda call: "not a status")

    with pytest.raises(pyhv.InvalidArgument, match="not a status"):
        run_calls([(CUSTOM, 0, 0)], setup=setup)


def test_post_message_and_signal_event_refuse_what_is_wrong(kvm):
    s_input = area(0) + INPUT

    def setup(part: pyhv.Partition, hv: HyperV) -> None:
        hv.add_message_connection(5, 0, 2)
        message = bytearray(256)
        message[0:4] = (9).to_bytes(4, "little")                 # connection 9: unknown
        message[8:12] = (1).to_bytes(4, "little")
        part.memory.write(s_input, bytes(message))
        message[0:4] = (5).to_bytes(4, "little")
        message[12:16] = (241).to_bytes(4, "little")             # payload too big
        part.memory.write(s_input + 0x400, bytes(message))
        message[12:16] = (0).to_bytes(4, "little")
        message[8:12] = (0x80000001).to_bytes(4, "little")        # a hypervisor's type
        part.memory.write(s_input + 0x800, bytes(message))

    results = run_calls([
        (tlfs.HVCALL_POST_MESSAGE, s_input, 0),
        (tlfs.HVCALL_POST_MESSAGE, s_input + 0x400, 0),
        (tlfs.HVCALL_POST_MESSAGE, s_input + 0x800, 0),
        (tlfs.HVCALL_POST_MESSAGE, s_input + 0x804, 0),
        (tlfs.HVCALL_SIGNAL_EVENT | FAST, 0x1234, 0),
        (tlfs.HVCALL_SIGNAL_EVENT | FAST | 1 << 32, 0x1234, 0),
    ], features="hv-vpindex,hv-synic", setup=setup, irqchip=True)
    assert results == [tlfs.HV_STATUS_INVALID_CONNECTION_ID, tlfs.HV_STATUS_INVALID_PARAMETER,
                       tlfs.HV_STATUS_INVALID_PARAMETER, tlfs.HV_STATUS_INVALID_ALIGNMENT,
                       tlfs.HV_STATUS_INVALID_CONNECTION_ID,
                       tlfs.HV_STATUS_INVALID_HYPERCALL_INPUT]


def test_without_the_synic_there_is_no_post_message(kvm):
    assert run_calls([(tlfs.HVCALL_POST_MESSAGE, area(0) + INPUT, 0),
                      (tlfs.HVCALL_SIGNAL_EVENT | FAST, 1, 0)]) == [
        tlfs.HV_STATUS_INVALID_HYPERCALL_CODE] * 2




def test_32_bit_code_calls_with_edx_eax_and_gets_edx_eax_back(kvm):
    guest = assemble("""
        mov $0x40000000, %ecx          # GUEST_OS_ID
        mov $1, %eax
        xor %edx, %edx
        wrmsr
        mov $0x40000001, %ecx          # HYPERCALL: the page at 0x5000
        mov $0x5001, %eax
        wrmsr
        mov $0x10099, %eax             # EDX:EAX = control (fast, code 0x99), 3 reps
        mov $3, %edx
        xor %ebx, %ebx                 # EBX:ECX = the first input register
        mov $21, %ecx
        mov $0x1234, %edi              # EDI:ESI = the second
        mov $0x5678, %esi
        mov $0x5000, %ebp
        call *%ebp
        hlt
    """, bits=32, origin=0x1000)
    seen = []

    def handler(call: Hypercall):
        seen.append((call.fast, call.rep_count, call.read_input(16)))
        return 0, 2                                       # success, 2 reps of 3 done

    with pyhv.Partition(memory="16M") as part:
        part.memory.write(0x1000, guest)
        cpu = part.create_vcpu(mode="protected", entry=0x1000, stack=0x8000)
        hv = part.attach(HyperV("hv-vpindex"))
        hv.on_hypercall(CUSTOM, handler, rep=True)
        assert part.run(timeout=30).halted
        regs = cpu.regs.snapshot()
    assert seen == [(True, 3, (21).to_bytes(8, "little") +
                     (0x1234 << 32 | 0x5678).to_bytes(8, "little"))]
    assert (regs.rax, regs.rdx) == (0, 2)                 # EDX:EAX: status 0, 2 reps
    assert (regs.rbx, regs.rcx, regs.rbp) == (0, 21, 0x5000)   # the rest kept
