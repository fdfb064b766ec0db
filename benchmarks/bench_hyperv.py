"""The Hyper-V rows of ``benchmarks/run.py`` (also runnable alone: ``python
benchmarks/bench_hyperv.py``).

``hypercall_roundtrip_vs_c``: a guest calls a fast hypercall through the hypercall page in a
loop; pyhv serves it in Python (decode, dispatch, status in RAX) vs a raw C KVM_RUN loop
that only counts the same port exits.  Same guest code, same vCPU.

``synic_message_latency_us``: from ``HyperV.post_message`` in Python to the guest's ISR
having read the message out of its slot (it reports with a port write), vs the same path
for a bare interrupt (``Partition.signal_msi`` to an ISR that only reports).
"""

from __future__ import annotations

import ctypes
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import pyhv
from pyhv.hyperv import HyperV, tlfs
from pyhv.testing import assemble

CODE = 0x1000
HCPAGE = 0x20000
SIMP = 0x21000
IDT = 0x22000
REPORT_PORT = 0x500


def _best(pairs: int, first: Callable[[], float], second: Callable[[], float]) -> tuple[
        float, float]:
    a, b = [], []
    for _ in range(pairs):
        a.append(first())
        b.append(second())
    return min(a), min(b)


def bench_hypercall(ref: ctypes.CDLL, repeats: int) -> tuple[float, float]:
    """(pyhv µs per fast hypercall, raw C µs per port exit of the same guest)."""
    count = 2000
    code = assemble(f"""
        mov ${count}, %r12d
    1:  mov ${tlfs.HVCALL_NOTIFY_LONG_SPIN_WAIT | tlfs.CALL_FAST:#x}, %ecx
        xor %edx, %edx
        mov ${HCPAGE:#x}, %eax
        call *%rax
        dec %r12d
        jnz 1b
        hlt
    """, origin=CODE)
    part = pyhv.Partition(memory="16M")
    part.memory.write(CODE, code)
    cpu = part.create_vcpu(mode="long", entry=CODE)
    hv = part.attach(HyperV("hv-vpindex"))
    vp = hv.vp(0)
    hv.write_msr(vp, tlfs.HV_X64_MSR_GUEST_OS_ID, 1)
    hv.write_msr(vp, tlfs.HV_X64_MSR_HYPERCALL, HCPAGE | tlfs.HYPERCALL_ENABLE)
    start = cpu.regs.snapshot()
    mmap_size = part.hypervisor.vcpu_mmap_size

    def served() -> float:
        cpu.regs.load(start)
        before = hv.hypercalls_served
        result = part.run(timeout=120)
        assert result.halted and hv.hypercalls_served - before == count
        assert cpu.regs.rax == tlfs.HV_STATUS_SUCCESS
        return result.elapsed / count

    def raw_c() -> float:
        cpu.regs.load(start)
        began = time.perf_counter()
        exits = ref.ref_run_to_halt(cpu.fd, mmap_size)
        took = time.perf_counter() - began
        assert exits == count, exits
        return took / count

    try:
        py, c = _best(repeats, served, raw_c)
    finally:
        part.close()
    return py * 1e6, c * 1e6


def _latency_guest() -> bytes:
    """Gates 0xB0 (a SynIC message ISR: reads slot 0, reports its payload, frees it, EOM if
    pending, EOI) and 0xB1 (a bare ISR: reports, EOI), then waits with hlt."""
    return assemble(f"""
        lea isr_msg(%rip), %rax
        mov $0xB0, %ebx
        call gate
        lea isr_bare(%rip), %rax
        mov $0xB1, %ebx
        call gate
        lidt idtr(%rip)
        mov $0xFEE00000, %edi
        movl $0x1FF, 0xF0(%rdi)
        mov ${tlfs.HV_X64_MSR_SIMP:#x}, %ecx
        mov ${SIMP | 1:#x}, %eax
        xor %edx, %edx
        wrmsr
        mov ${tlfs.HV_X64_MSR_SCONTROL:#x}, %ecx
        mov $1, %eax
        wrmsr
        mov ${tlfs.HV_X64_MSR_SINT0:#x}, %ecx
        mov $0xB0, %eax
        wrmsr
        sti
    1:  hlt
        jmp 1b
    gate:                               /* IDT entry %ebx -> %rax */
        shl $4, %rbx
        add ${IDT:#x}, %rbx
        mov %ax, (%rbx)
        movw $0x10, 2(%rbx)
        movw $0x8E00, 4(%rbx)
        shr $16, %rax
        mov %ax, 6(%rbx)
        shr $16, %rax
        mov %eax, 8(%rbx)
        ret
    isr_msg:
        push %rax
        push %rcx
        push %rdx
        mov ({SIMP + 16:#x}), %eax      /* the payload's first word */
        mov ${REPORT_PORT:#x}, %dx
        out %eax, %dx
        movl $0, ({SIMP:#x})            /* free the slot */
        mfence
        testb $1, ({SIMP + 5:#x})
        jz 2f
        mov ${tlfs.HV_X64_MSR_EOM:#x}, %ecx
        xor %eax, %eax
        xor %edx, %edx
        wrmsr
    2:  mov $0xFEE000B0, %eax
        movl $0, (%rax)
        pop %rdx
        pop %rcx
        pop %rax
        iretq
    isr_bare:
        push %rax
        push %rdx
        mov $0xFFFFFFFF, %eax
        mov ${REPORT_PORT:#x}, %dx
        out %eax, %dx
        mov $0xFEE000B0, %eax
        movl $0, (%rax)
        pop %rdx
        pop %rax
        iretq
        .align 16
    idtr:
        .word 0xFFF
        .quad {IDT:#x}
    """, origin=CODE)


def bench_synic_latency(repeats: int) -> tuple[float, float]:
    """(median µs from post_message to the ISR's report, median µs for a bare MSI)."""
    rounds = max(repeats, 5) * 4
    part = pyhv.Partition(memory="16M", irqchip=True)
    part.memory.write(CODE, _latency_guest())
    part.create_vcpu(mode="long", entry=CODE)
    hv = part.attach(HyperV("hv-vpindex,hv-synic"))
    reported = threading.Event()
    arrived: list[Any] = [0.0, None]

    def report(port: int, size: int, value: int) -> None:
        arrived[0], arrived[1] = time.perf_counter(), value
        reported.set()

    part.add_io_handler(REPORT_PORT, write=report)
    runner = threading.Thread(target=lambda: part.run(timeout=600))
    runner.start()
    try:
        deadline = time.monotonic() + 60
        while not hv.synic(0).enabled or hv.synic(0).sints[0] != 0xB0:
            assert time.monotonic() < deadline, "the latency guest never set up its SynIC"
            time.sleep(0.001)
        time.sleep(0.05)

        def once(send: Callable[[int], object], expect: Callable[[int], int], seq: int) -> float:
            reported.clear()
            began = time.perf_counter()
            send(seq)
            assert reported.wait(30), "the guest's ISR never reported"
            assert arrived[1] == expect(seq), (arrived[1], seq)
            return float(arrived[0]) - began

        messages, bare = [], []
        for seq in range(rounds):
            messages.append(once(lambda n: hv.post_message(0, 0, 1, n.to_bytes(4, "little")),
                                 lambda n: n, seq))
            bare.append(once(lambda n: part.signal_msi(0xFEE00000, 0xB1),
                             lambda n: 0xFFFFFFFF, seq))
    finally:
        part.stop()
        runner.join()
        part.close()
    return statistics.median(messages) * 1e6, statistics.median(bare) * 1e6


def rows(ref: ctypes.CDLL, repeats: int, make_row: Callable[..., Any]) -> list[Any]:
    """The two rows, built with ``benchmarks/run.py``'s ``row``."""
    py, c = bench_hypercall(ref, repeats)
    message, bare = bench_synic_latency(repeats)
    return [
        make_row("hypercall_roundtrip_vs_c", py, "us/call", c, 2.5,
                 "fast hypercall through the page, served in Python, vs a raw C loop taking "
                 "the same port exits"),
        make_row("synic_message_latency_us", message, "us", bare, 1.5,
                 "post_message -> guest ISR read the slot (median), vs a bare MSI to an ISR"),
    ]


if __name__ == "__main__":
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import run  # benchmarks/run.py: the C reference and the table

    quick = "--quick" in sys.argv
    print(run.table(rows(run.build_reference(), 2 if quick else 11, run.row)))
