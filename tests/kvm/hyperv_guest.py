"""The Hyper-V tests' guest (tests/guests/hyperv_script.S) from Python: a script of ops per
vCPU, the results of each op, the interrupts each vCPU took and the SynIC messages its ISR
copied out of its message page."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import pyhv
from pyhv._native.binding import ffi
from pyhv.hyperv import tlfs

from ..conftest import guest_code

AREA, AREA_SIZE = 0x100000, 0x40000
RESULTS, COUNTS, DONE, READY, SIMP, SIEFP = 0x8000, 0x10000, 0x10400, 0x10404, 0x11000, 0x12000
INPUT, OUTPUT, LOG = 0x13000, 0x14000, 0x18000
ISR_MODE, NCPUS, HAS_LAPIC, HCPAGE, TSCPAGE = 0x11000, 0x11100, 0x11104, 0x12000, 0x13000
EOI_LAPIC, EOI_MSR, TAKE_MESSAGES = 1, 2, 4
DONE_CODE = 1                     # DebugExit.code of `out 0, $0xf4`

OPS = {"end": 0, "rdmsr": 1, "wrmsr": 2, "hypercall": 3, "cpuid": 4, "wait_irqs": 5,
       "wait_u32": 6, "store": 7, "rdtsc": 8, "load": 9, "outl": 10, "clock_check": 12,
       "cli": 13, "sti": 14, "delay": 15, "times": 16, "load32": 17,
       "wrmsr_ref": 18}


def area(vp: int) -> int:
    return AREA + vp * AREA_SIZE


@dataclass
class Script:
    """What one vCPU does, op by op; each method returns the op's index (for results)."""

    ops: list[tuple[int, int, int, int]] = field(default_factory=list)

    def op(self, name: str, a: int = 0, b: int = 0, c: int = 0) -> int:
        self.ops.append((OPS[name], a & (1 << 64) - 1, b & (1 << 64) - 1, c & (1 << 64) - 1))
        return len(self.ops) - 1

    def rdmsr(self, index: int) -> int:
        return self.op("rdmsr", index)

    def wrmsr(self, index: int, value: int) -> int:
        return self.op("wrmsr", index, value)

    def hypercall(self, control: int, rdx: int = 0, r8: int = 0) -> int:
        return self.op("hypercall", control, rdx, r8)

    def cpuid(self, leaf: int, subleaf: int = 0) -> int:
        return self.op("cpuid", leaf, subleaf)

    def wait_irqs(self, vector: int, count: int) -> int:
        return self.op("wait_irqs", vector, count)

    def wait_ready(self, vp: int) -> int:
        """Wait until vCPU ``vp`` is set up (its LAPIC takes interrupts)."""
        return self.op("wait_u32", area(vp) + READY, 1)

    def enable_hypercalls(self) -> None:
        self.wrmsr(tlfs.HV_X64_MSR_GUEST_OS_ID, 0x8100_0000_0000_0001)   # "Linux", any
        self.wrmsr(tlfs.HV_X64_MSR_HYPERCALL, HCPAGE | tlfs.HYPERCALL_ENABLE)

    def enable_synic(self, vp: int) -> None:
        self.wrmsr(tlfs.HV_X64_MSR_SIMP, area(vp) + SIMP | tlfs.PAGE_ENABLE)
        self.wrmsr(tlfs.HV_X64_MSR_SIEFP, area(vp) + SIEFP | tlfs.PAGE_ENABLE)
        self.wrmsr(tlfs.HV_X64_MSR_SCONTROL, tlfs.SCONTROL_ENABLE)

    def bytes(self) -> bytes:
        return b"".join(struct.pack("<4Q", *op) for op in self.ops + [(0, 0, 0, 0)])


class HvGuest:
    """The guest loaded into ``part`` with one script per vCPU (vCPUs made here)."""

    def __init__(self, part: pyhv.Partition, scripts: list[Script],
                 isr_modes: dict[int, int] | None = None) -> None:
        self.part = part
        self.scripts = scripts
        mem = part.memory
        mem.write(0x1000, guest_code("hyperv_script"))
        mem.write_u32(NCPUS, len(scripts))
        mem.write_u32(HAS_LAPIC, 1 if part.irqchip else 0)
        for vector, mode in (isr_modes or {}).items():
            mem.write_u8(ISR_MODE + vector, mode)
        for vp, script in enumerate(scripts):
            mem.write(area(vp), script.bytes())
        self.vcpus = [part.create_vcpu(mode="long", entry=0x1000) for _ in scripts]
        if part.irqchip:
            for vcpu in self.vcpus[1:]:
                runnable(vcpu)
        part.add_debug_exit(0xF4)

    def run(self, timeout: float = 60) -> pyhv.RunResult:
        """Run every vCPU until vCPU 0's script (and the others') ended; check it did."""
        if len(self.vcpus) == 1:
            result = self.part.run(timeout=timeout)
        else:
            result = self.part.run_all(timeout=timeout)[0]
        exit = result.exit
        assert isinstance(exit, pyhv.exits.DebugExit), exit
        assert exit.code == DONE_CODE, f"the guest stopped with code {exit.code:#x}"
        return result

    def result(self, vp: int, op: int) -> tuple[int, int, int, int]:
        return struct.unpack("<4Q", self.part.memory.read(area(vp) + RESULTS + 32 * op, 32))

    def value(self, vp: int, op: int) -> int:
        return self.result(vp, op)[0]

    def faulted(self, vp: int, op: int) -> bool:
        return self.result(vp, op)[1] == 1

    def count(self, vp: int, vector: int) -> int:
        return self.part.memory.read_u32(area(vp) + COUNTS + 4 * vector)

    def log(self, vp: int) -> list[bytes]:
        """The SynIC messages the vCPU's ISR took, in order (256 bytes each)."""
        base = area(vp) + LOG
        n = self.part.memory.read_u32(base)
        return [self.part.memory.read(base + 0x100 + 256 * i, 256) for i in range(n)]


def runnable(vcpu: pyhv.VCpu) -> None:
    """With the in-kernel irqchip an application processor waits for INIT/SIPI; these tests
    start every vCPU in long mode at once instead (KVM_SET_MP_STATE to RUNNABLE, through
    the vCPU's whole-state blob)."""
    blob = bytearray(vcpu.save_state([], 0))
    state = ffi.from_buffer("struct pyhv_vcpu_state *", blob)
    state.mp_state = 0                                   # KVM_MP_STATE_RUNNABLE
    vcpu.load_state(bytes(blob))


def message_header(message: bytes) -> tuple[int, int, int, int]:
    """(type, payload size, flags, sender) of a SynIC message."""
    mtype, size, flags, _r, sender = struct.unpack_from("<IBBHQ", message)
    return mtype, size, flags, sender
