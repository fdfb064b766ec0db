"""The C core's own API, driven through cffi (``pyhv._native.binding``) on the real /dev/kvm,
with the Python API only setting guests up: MSR batches, partition and vCPU creation in one call,
memory slots, the MSR filter and MSR exits, guest debugging, address translation and MSIs."""

from __future__ import annotations

import errno
import signal
import struct
import threading
import time

import pytest

import pyhv
from pyhv import exits
from pyhv._native.binding import ffi, lib
from pyhv._native.structs import cpuid_to_c, sregs_to_c
from pyhv.testing import assemble
from pyhv.x86.cpuid import for_vcpu

from .. import records
from ..conftest import fd_count, native_vcpu, native_vm


def handle(cpu):
    """The C core's struct pyhv_vcpu * of a vCPU."""
    return native_vcpu(cpu)._handle()


def vm_fd(part):
    return native_vm(part).fd

EFER = 0xC0000080
TSC = 0x10


def msr_arrays(indices):
    return (ffi.new("uint32_t[]", indices), ffi.new("uint64_t[]", len(indices)),
            ffi.new("uint32_t *"))


def test_get_msrs_of_more_than_kvm_takes_per_ioctl(part):
    cpu = part.create_vcpu(mode="long")
    index, value, done = msr_arrays([EFER] * 300)       # KVM alone refuses >= 256 at once
    assert lib.pyhv_vcpu_get_msrs(handle(cpu), index, value, 300, done) == 0
    assert done[0] == 300
    assert {value[i] for i in range(300)} == {cpu.get_msr(EFER)}
    assert lib.pyhv_vcpu_set_msrs(handle(cpu), index, value, 300, done) == 0
    assert done[0] == 300


def test_msr_batches_report_the_first_refused_index_across_chunks(part):
    cpu = part.create_vcpu(mode="long")
    indices = [TSC] * 400
    indices[270] = 0xDEAD0000                            # in the second chunk of 255
    index, value, done = msr_arrays(indices)
    assert lib.pyhv_vcpu_get_msrs(handle(cpu), index, value, 400, done) == -22   # EINVAL
    assert done[0] == 270
    assert all(value[i] for i in range(270))             # the TSC ticks: never 0
    assert lib.pyhv_vcpu_get_msrs(handle(cpu), index, value, 0, done) == 0 and done[0] == 0


# -- partitions and memory slots ----------------------------------------------------------
TSS, IDENTITY_MAP = 0xFFFBD000, 0xFFFBC000


def create_x86(flags, tss=TSS):
    out, stage = ffi.new("int *"), ffi.new("uint32_t *")
    rc = lib.pyhv_partition_create_x86(pyhv.core.hypervisor.default().fd, flags, tss, IDENTITY_MAP,
                                       stage, out)
    return rc, stage[0], out[0]


def vm_size() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmSize:")) * 1024


def test_partition_creation_in_one_call(kvm):
    before = fd_count()
    rc, stage, fd = create_x86(lib.PYHV_PARTITION_IRQCHIP | lib.PYHV_PARTITION_PIT)
    assert rc == 0 and stage == 0 and fd >= 0
    pit = ffi.new("uint8_t[112]")
    assert lib.pyhv_partition_get_pit(fd, pit) == 0         # the PIT exists
    assert lib.pyhv_close(fd) == 0
    assert create_x86(lib.PYHV_PARTITION_PIT)[:2] == (-errno.EINVAL, 0)   # PIT needs the PIC
    assert create_x86(8)[:2] == (-errno.EINVAL, 0)
    # a TSS address KVM refuses: the VM made before it is closed again
    assert create_x86(0, tss=1 << 40)[:2] == (-errno.EINVAL, lib.PYHV_STAGE_TSS)
    assert fd_count() == before


def test_a_slot_and_its_host_memory_in_one_call(part):
    host = ffi.new("void **")
    gpa, size = 0x4000000, 0x10000
    assert lib.pyhv_partition_map_memory(vm_fd(part), 7, 0, gpa, size, host) == 0
    ffi.cast("uint32_t *", host[0])[0] = 0xC0FFEE
    part.memory.write(0x1000, assemble(f"mov ${gpa:#x}, %rsi\n1: mov (%rsi), %eax\n"
                                       "out %eax, $0x80\njmp 1b", origin=0x1000))
    cpu = part.create_vcpu(mode="long", entry=0x1000)
    assert cpu.run(timeout=5) == exits.IoOut(0x80, 4, (0xC0FFEE).to_bytes(4, "little"), 1,
                                             rip=0x100B)
    assert lib.pyhv_partition_unmap_memory(vm_fd(part), 7, gpa, host[0], size) == 0
    assert isinstance(cpu.run(timeout=5), exits.MmioRead)   # no RAM there any more


def test_a_refused_slot_leaves_nothing_mapped(part):
    host = ffi.new("void **")
    before = vm_size()
    # slot 0 already covers GPA 0: KVM refuses the overlap
    assert lib.pyhv_partition_map_memory(vm_fd(part), 9, 0, 0, 1 << 30, host) == -errno.EEXIST
    assert vm_size() == before
    assert lib.pyhv_partition_map_memory(vm_fd(part), 9, 0, 0x4000000, 0, host) == -errno.EINVAL


# -- MSIs ---------------------------------------------------------------------------------
LAPIC = 0xFEE00000
MSI_NMI, MSI_INIT, MSI_SIPI = 0x400, 0x500, 0x600      # delivery modes in the data word


def msi(part, apic_id, data):
    return lib.pyhv_partition_signal_msi(vm_fd(part), LAPIC | apic_id << 12, data)


def reload_lapic(cpu):
    """Save and load the vCPU's own state.  Seen on this kernel: KVM builds its map of APIC IDs
    while a vCPU is being created, before it counts as online, so an MSI to the newest vCPU
    finds no LAPIC (returns 0) until something (here KVM_SET_LAPIC) rebuilds the map."""
    state = ffi.new("struct pyhv_vcpu_state *")
    assert lib.pyhv_vcpu_save_state(handle(cpu), ffi.NULL, 0, 0, state) == 0
    assert state.present & lib.PYHV_HAS_LAPIC
    assert lib.pyhv_vcpu_load_state(handle(cpu), state) == 0


def test_msi_needs_the_in_kernel_irqchip(part):
    assert msi(part, 0, 0x30) == -errno.EINVAL


def test_msi_is_delivered_or_blocked(kvm):
    with pyhv.Partition(memory="4M", irqchip=True) as part:
        part.memory.write(0x1000, b"\xf4")
        reload_lapic(part.create_vcpu(mode="real", entry=0x1000))
        assert msi(part, 0, MSI_NMI) == 1          # an NMI reaches the LAPIC of vCPU 0
        assert msi(part, 0, 0x30) == 0             # a fixed vector: its LAPIC is still disabled
        assert msi(part, 7, MSI_NMI) == 0          # no LAPIC has ID 7


def test_an_application_processor_started_by_init_and_sipi_runs(kvm):
    # vCPU 1 with an in-kernel irqchip waits for INIT/SIPI inside KVM_RUN; INIT wakes it with
    # EAGAIN, which the run loop must answer by entering again (it used to end the run)
    with pyhv.Partition(memory="4M", irqchip=True) as part:
        part.memory.write(0x1000, b"\xe6\x80\xf4")          # out %al, $0x80; hlt
        part.create_vcpu(mode="real", entry=0x1000)
        ap = part.create_vcpu(mode="real", entry=0x1000)
        reload_lapic(ap)
        ex = ffi.new("struct pyhv_exit *")
        result = []
        deadline = lib.pyhv_monotonic_ns() + 10 * 10**9
        runner = threading.Thread(
            target=lambda: result.append(lib.pyhv_vcpu_run(handle(ap), ex, deadline)))
        runner.start()
        time.sleep(0.2)
        assert msi(part, 1, MSI_INIT) == 1
        time.sleep(0.05)
        assert msi(part, 1, MSI_SIPI | 0x01) == 1           # start at 0x0100:0000 = 0x1000
        runner.join(10)
        if runner.is_alive():
            ap.cancel()
            runner.join()
        assert result and result[0] >= 0, result
        assert ex.reason == lib.PYHV_EXIT_IO and ex.io_port == 0x80


def test_a_single_outs_summary_carries_its_port_size_and_rip(kvm):
    """The run's summary of a one-element OUT says the record's port, size and rip_valid (what
    the run loop's hot paths read instead of the record); other exits carry none of it."""
    outs = [(0x80, 1, "%al"), (0xFFFF, 2, "%ax"), (0x3F8, 4, "%eax"), (0, 1, "%al")]
    code = "".join(f"mov ${port:#x}, %dx\nmov $0x12345678, %eax\nout {reg}, %dx\n"
                   for port, _, reg in outs) + "mov $0x60, %dx\nin %dx, %al\nhlt"
    with pyhv.Partition(memory="16M") as part:
        part.memory.write(0x1000, assemble(code))
        cpu = part.create_vcpu(mode="long", entry=0x1000)
        ex = ffi.new("struct pyhv_exit *")
        for port, size, _ in outs:
            rc = lib.pyhv_vcpu_run(handle(cpu), ex, 0)
            assert rc & 0x3FF == lib.PYHV_EXIT_IO | lib.PYHV_RUN_SINGLE_OUT, hex(rc)
            assert (ex.io_port, ex.io_size) == (port, size)
            assert rc >> lib.PYHV_RUN_PORT_SHIFT == port
            assert 1 << (rc >> lib.PYHV_RUN_SIZE_SHIFT & 3) == size
            assert bool(rc & lib.PYHV_RUN_RIP_VALID) == bool(ex.rip_valid)
        rc = lib.pyhv_vcpu_run(handle(cpu), ex, 0)          # the IN: a reason, no more
        assert rc == lib.PYHV_EXIT_IO and ex.io_in


def test_a_ctrl_c_python_saw_before_the_run_still_stops_it_first(kvm):
    """pyhv's SIGINT handler, in front of Python's, leaves a mark the C run loop reads before
    it enters the guest: a Ctrl-C that lands after Python last looked (here: before the call)
    ends the run at once instead of waiting for an exit that may never come."""
    with pyhv.Partition(memory="16M") as part:
        part.memory.write(0x1000, assemble("1: jmp 1b"))
        cpu = part.create_vcpu(mode="long", entry=0x1000)
        ex = ffi.new("struct pyhv_exit *")
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)        # Python's handler runs too
        later = lib.pyhv_monotonic_ns() + 5 * 10**9
        assert lib.pyhv_vcpu_run(handle(cpu), ex, later) & 0xFF == lib.PYHV_EXIT_INTERRUPTED
        assert lib.pyhv_monotonic_ns() < later        # at once, not when the deadline kicked
        soon = lib.pyhv_monotonic_ns() + 2 * 10**8
        assert lib.pyhv_vcpu_run(handle(cpu), ex, soon) & 0xFF == lib.PYHV_EXIT_TIMEOUT  # once


# -- the MSR filter and MSR exits ------------------------------------------------------------
SYNTHETIC = 0x40000000
STAR = 0xC0000081


def run_c(cpu, ex):
    """One pyhv_vcpu_run (10 s at most); the reason (the low byte of the summary)."""
    rc = lib.pyhv_vcpu_run(handle(cpu), ex, lib.pyhv_monotonic_ns() + 10 * 10**9)
    assert rc >= 0, rc
    return rc & 0xFF


def msr_exits(part, denied, reasons=None):
    denied = sorted(denied)
    assert lib.pyhv_partition_set_msr_filter(vm_fd(part), 1, denied, len(denied)) == 0
    reasons = lib.KVM_MSR_EXIT_REASON_FILTER if reasons is None else reasons
    assert lib.pyhv_partition_enable_user_msr(vm_fd(part), reasons) == 0


RDMSR_WRMSR = f"""
    mov ${SYNTHETIC:#x}, %ecx
    rdmsr
    out %eax, $0x80
    mov %edx, %eax
    out %eax, $0x81
    mov $0x12345678, %eax
    mov $0x9abcdef0, %edx
    wrmsr
    hlt
"""


def test_a_filtered_msr_exits_to_user_space_and_takes_the_answer(part):
    msr_exits(part, [SYNTHETIC])
    part.memory.write(0x1000, assemble(RDMSR_WRMSR, origin=0x1000))
    cpu = part.create_vcpu(mode="long")
    ex = ffi.new("struct pyhv_exit *")
    assert run_c(cpu, ex) == lib.PYHV_EXIT_MSR
    assert (ex.msr_index, ex.msr_write, ex.msr_reason) == (SYNTHETIC, 0,
                                                          lib.KVM_MSR_EXIT_REASON_FILTER)
    assert lib.pyhv_vcpu_complete_msr(handle(cpu), ex.seq - 1, 0, 0) == -errno.ESTALE
    assert lib.pyhv_vcpu_complete_in_value(handle(cpu), ex.seq, 0) == -errno.ESTALE
    assert lib.pyhv_vcpu_complete_msr(handle(cpu), ex.seq, 0x1122334455667788, 0) == 0
    assert run_c(cpu, ex) == lib.PYHV_EXIT_IO and ex.io_value == 0x55667788     # EAX
    assert run_c(cpu, ex) == lib.PYHV_EXIT_IO and ex.io_value == 0x11223344     # EDX
    assert run_c(cpu, ex) == lib.PYHV_EXIT_MSR
    assert (ex.msr_index, ex.msr_write, ex.msr_value) == (SYNTHETIC, 1, 0x9ABCDEF012345678)
    seq = ex.seq
    assert lib.pyhv_vcpu_complete_msr(handle(cpu), seq, 0, 0) == 0
    assert run_c(cpu, ex) == lib.PYHV_EXIT_HALT
    assert lib.pyhv_vcpu_complete_msr(handle(cpu), seq, 0, 0) == -errno.ESTALE
    stats = ffi.new("struct pyhv_stats *")
    assert lib.pyhv_vcpu_get_stats(handle(cpu), stats) == 0
    assert (stats.msr_read, stats.msr_write) == (1, 1)


@pytest.mark.parametrize("answer", ["error", "none"])
def test_an_msr_exit_answered_with_an_error_or_not_at_all_raises_gp(part, answer):
    msr_exits(part, [SYNTHETIC])
    part.memory.write(0x1000, assemble(RDMSR_WRMSR, origin=0x1000))
    cpu = part.create_vcpu(mode="long", exceptions=True)
    ex = ffi.new("struct pyhv_exit *")
    assert run_c(cpu, ex) == lib.PYHV_EXIT_MSR
    if answer == "error":
        assert lib.pyhv_vcpu_complete_msr(handle(cpu), ex.seq, 0x1234, 1) == 0
    fault = cpu.run(timeout=10)
    assert isinstance(fault, exits.GuestException) and fault.vector == 13
    assert fault.rip == 0x1005                          # the rdmsr


def test_a_default_allow_range_keeps_its_other_msrs_allowed(part):
    # one range [STAR - 2, STAR]: EFER inside it is not denied and reads without an exit
    msr_exits(part, [STAR - 2, STAR])
    part.memory.write(0x1000, assemble(f"""
        mov ${EFER:#x}, %ecx
        rdmsr
        out %eax, $0x80
        mov ${STAR:#x}, %ecx
        rdmsr
        hlt""", origin=0x1000))
    cpu = part.create_vcpu(mode="long")
    ex = ffi.new("struct pyhv_exit *")
    assert run_c(cpu, ex) == lib.PYHV_EXIT_IO and ex.io_value == cpu.get_msr(EFER) & 0xFFFFFFFF
    assert run_c(cpu, ex) == lib.PYHV_EXIT_MSR and ex.msr_index == STAR


def test_msr_filter_bounds(part):
    vm = vm_fd(part)
    span = lib.KVM_MSR_FILTER_MAX_BITMAP_SIZE * 8
    ranges = lib.KVM_MSR_FILTER_MAX_RANGES
    packed = [i * span for i in range(ranges)]                   # one range each: fits
    assert lib.pyhv_partition_set_msr_filter(vm, 1, packed, ranges) == 0
    one_more = packed + [ranges * span]
    assert lib.pyhv_partition_set_msr_filter(vm, 1, one_more, ranges + 1) == -errno.E2BIG
    close = list(range(0, span, 7))                              # many MSRs, one range
    assert lib.pyhv_partition_set_msr_filter(vm, 1, close, len(close)) == 0
    assert lib.pyhv_partition_set_msr_filter(vm, 1, [5, 3], 2) == -errno.EINVAL
    assert lib.pyhv_partition_set_msr_filter(vm, 1, ffi.NULL, 0) == 0     # filter removed
    assert lib.pyhv_partition_enable_user_msr(vm, 1 << 7) == -errno.EINVAL


# -- vCPUs in one call -------------------------------------------------------------------------
def vcpu_init(part, template, **fields):
    """A struct pyhv_vcpu_init with CPUID, the special registers of ``template`` (a vCPU pyhv
    set up) and ``fields``; keeps the arrays it points to alive in ``init.keep``."""
    cpuid, n = cpuid_to_c(for_vcpu(part.hypervisor.default_cpuid(), 0))
    init = ffi.new("struct pyhv_vcpu_init *")
    keep = [cpuid]
    init.cpuid, init.ncpuid = cpuid, n
    sregs = ffi.new("struct pyhv_sregs *")
    sregs_to_c(template.get_sregs(), sregs)
    init.sregs = sregs
    keep.append(sregs)
    for name, value in fields.items():
        if isinstance(value, list):
            value = ffi.new("uint32_t[]" if name == "msr_index" else "uint64_t[]", value)
            keep.append(value)
        setattr(init, name, value)
    return init, keep


def create_c_vcpu(part, vcpu_id, init):
    out = ffi.new("struct pyhv_vcpu **")
    rc = lib.pyhv_vcpu_create(vm_fd(part), vcpu_id, part.hypervisor.vcpu_mmap_size, init, out)
    return rc, out[0]


def test_a_vcpu_created_and_set_up_in_one_call_runs(part):
    part.memory.write(0x1000, assemble(f"""
        out %eax, $0x80
        mov ${STAR:#x}, %ecx
        rdmsr
        mov %edx, %eax
        out %eax, $0x81
        hlt""", origin=0x1000))
    template = part.create_vcpu(mode="long")           # pyhv's long-mode special registers
    regs = ffi.new("struct pyhv_regs *", {"rip": 0x1000, "rsp": 0x70000, "rflags": 2,
                                          "rax": 0xFEEDBEEF})
    init, keep = vcpu_init(part, template, regs=regs, msr_index=[STAR],
                           msr_value=[0x00230010 << 32], nmsrs=1)
    rc, handle = create_c_vcpu(part, 5, init)
    assert rc == 0
    try:
        ex = ffi.new("struct pyhv_exit *")
        run = lib.pyhv_vcpu_run
        assert run(handle, ex, 0) & 0xFF == lib.PYHV_EXIT_IO and ex.io_value == 0xFEEDBEEF
        assert run(handle, ex, 0) & 0xFF == lib.PYHV_EXIT_IO and ex.io_value == 0x00230010
        assert run(handle, ex, 0) & 0xFF == lib.PYHV_EXIT_HALT
        got = ffi.new("struct pyhv_sregs *")
        assert lib.pyhv_vcpu_get_sregs(handle, got) == 0
        assert got.cr3 == template.get_sregs().cr3 and got.efer == template.get_sregs().efer
    finally:
        lib.pyhv_vcpu_destroy(handle)


def test_a_vcpu_whose_setup_is_refused_leaves_only_its_id(part):
    template = part.create_vcpu(mode="long")
    before = fd_count()
    init, keep = vcpu_init(part, template)
    init.sregs.cr0 = 0x80000000                          # paging without protected mode
    assert create_c_vcpu(part, 6, init)[0] == -errno.EINVAL
    assert fd_count() == before
    assert create_c_vcpu(part, 6, ffi.NULL)[0] == -errno.EEXIST   # KVM keeps the id
    # a malformed init is refused before the vCPU exists: its id stays free
    init.flags = 0x80
    assert create_c_vcpu(part, 7, init)[0] == -errno.EINVAL
    init.flags, init.nmsrs = 0, 3                         # MSRs without arrays
    assert create_c_vcpu(part, 7, init)[0] == -errno.EINVAL
    rc, handle = create_c_vcpu(part, 7, ffi.NULL)
    assert rc == 0
    lib.pyhv_vcpu_destroy(handle)


# -- guest debugging and address translation ----------------------------------------------------
STEPS = assemble("nop\nmov $1, %eax\nadd $2, %eax\nout %eax, $0x80\nhlt", origin=0x1000)
DEBUG_ON = lib.KVM_GUESTDBG_ENABLE


def debug(cpu, control, *breakpoints, dr7=0):
    dr = ffi.new("uint64_t[8]", list(breakpoints) + [0] * (7 - len(breakpoints)) + [dr7])
    assert lib.pyhv_vcpu_set_guest_debug(handle(cpu), control, dr) == 0


def test_single_stepping_reports_each_instruction(part):
    part.memory.write(0x1000, STEPS)
    cpu = part.create_vcpu(mode="long")       # its registers wait in the run area: pushed first
    debug(cpu, DEBUG_ON | lib.KVM_GUESTDBG_SINGLESTEP)
    ex = ffi.new("struct pyhv_exit *")
    for pc in (0x1001, 0x1006, 0x1009):      # after the nop, the mov, the add
        assert run_c(cpu, ex) == lib.PYHV_EXIT_DEBUG
        assert (ex.code, ex.data[0]) == (1, pc) and ex.data[1] & 0x4000   # #DB, DR6.BS
    assert cpu.regs.rax == 3
    debug(cpu, 0)                             # off again: runs to the OUT and the hlt
    assert run_c(cpu, ex) == lib.PYHV_EXIT_IO and ex.io_value == 3
    assert run_c(cpu, ex) == lib.PYHV_EXIT_HALT


def test_a_hardware_execution_breakpoint_and_stepping_over_it(part):
    part.memory.write(0x1000, STEPS)
    cpu = part.create_vcpu(mode="long")
    use_hw = DEBUG_ON | lib.KVM_GUESTDBG_USE_HW_BP
    debug(cpu, use_hw, 0, 0x1006, dr7=1 << 2)             # DR1: execute at the add (L1)
    ex = ffi.new("struct pyhv_exit *")
    assert run_c(cpu, ex) == lib.PYHV_EXIT_DEBUG
    assert (ex.code, ex.data[0]) == (1, 0x1006) and ex.data[1] & 0xF == 0b10   # DR6.B1
    assert cpu.regs.rax == 1                               # before the add
    # step over it with the breakpoint off (RF is not honoured for it everywhere), then
    # arm it again
    debug(cpu, DEBUG_ON | lib.KVM_GUESTDBG_SINGLESTEP)
    assert run_c(cpu, ex) == lib.PYHV_EXIT_DEBUG and ex.data[0] == 0x1009
    debug(cpu, use_hw, 0, 0x1006, dr7=1 << 2)
    assert run_c(cpu, ex) == lib.PYHV_EXIT_IO and ex.io_value == 3
    assert run_c(cpu, ex) == lib.PYHV_EXIT_HALT


@pytest.mark.parametrize("flag, vector", [("KVM_GUESTDBG_INJECT_DB", 1),
                                          ("KVM_GUESTDBG_INJECT_BP", 3)])
def test_injected_debug_exceptions_reach_the_guest(part, flag, vector):
    part.memory.write(0x1000, STEPS)
    cpu = part.create_vcpu(mode="long", exceptions=True)
    debug(cpu, DEBUG_ON | getattr(lib, flag))
    fault = cpu.run(timeout=10)
    assert isinstance(fault, exits.GuestException) and fault.vector == vector


def translate(cpu, gva):
    gpa, flags = ffi.new("uint64_t *"), ffi.new("uint32_t *")
    assert lib.pyhv_vcpu_translate(handle(cpu), gva, gpa, flags) == 0
    return gpa[0], flags[0] & 1


@pytest.mark.parametrize("mode", ["long", "real"])
def test_translating_identity_mapped_addresses(part, mode):
    part.memory.write(0x1000, b"\xf4")
    cpu = part.create_vcpu(mode=mode)
    for gva in (0x1000, 0x12345, 0xFFFFF):
        assert translate(cpu, gva) == (gva, 1)
    if mode == "long":
        assert translate(cpu, 1 << 40)[1] == 0             # beyond pyhv's page tables


# -- injected records on a real vCPU -------------------------------------------------------------
def test_a_record_injected_into_a_real_vcpu_is_reported_then_the_guest_runs_on(part):
    part.memory.write(0x1000, STEPS)
    cpu = part.create_vcpu(mode="long")
    ptr, ex = handle(cpu), ffi.new("struct pyhv_exit *")
    rec = bytearray(lib.PYHV_RUN_SIZE)
    struct.pack_into("<I", rec, lib.PYHV_RUN_OFF_EXIT_REASON, lib.KVM_EXIT_IO)
    struct.pack_into("<BBHIQ", rec, lib.PYHV_RUN_OFF_IO_DIRECTION, lib.KVM_EXIT_IO_OUT, 3, 0x80,
                     1, 4096)                          # a 3-byte port write: impossible
    assert lib.pyhv_vcpu_inject_record(ptr, bytes(rec), len(rec)) == 0
    assert run_c(cpu, ex) == lib.PYHV_EXIT_BAD_EXIT and ex.rip_valid == 0
    assert cpu.regs.rip == 0x1000                      # the registers are the guest's
    assert run_c(cpu, ex) == lib.PYHV_EXIT_IO and ex.io_value == 3
    size = part.hypervisor.vcpu_mmap_size              # the coalesced ring page is the VM's
    assert lib.pyhv_vcpu_inject_record(ptr, bytes(size), size) == -errno.EINVAL


# -- the coalesced ring: a page the kernel shares, its indices and lengths not trusted ----------
RING_ENTRY = struct.Struct("<QII8s")          # struct kvm_coalesced_mmio
RING_MAX = (4096 - 8) // RING_ENTRY.size


def ring_of(cpu: pyhv.VCpu):
    """The VM's coalesced ring page as seen through this vCPU's run area (page 2 of it); the C
    core never hands it out, a test finds it from an injected OUT's data pointer (page 1)."""
    native_vcpu(cpu).inject_record(records.io_record(records.OUT, 0x99, 1, 1, data=b"\0"))
    ex = ffi.new("struct pyhv_exit *")
    assert run_c(cpu, ex) == lib.PYHV_EXIT_IO
    page = ffi.cast("uint8_t *", ex.io_data) - records.DATA + 2 * records.PAGE
    return ffi.cast("uint32_t *", page), page


def test_ring_indices_past_the_ring_are_refused_not_followed(part):
    part.memory.write(0x1000, b"\xf4")
    cpu = part.create_vcpu(mode="long", entry=0x1000)
    indices, _ = ring_of(cpu)
    for first, last in ((0, 0xFFFFFFFF), (RING_MAX, 0), (0, RING_MAX)):
        indices[0], indices[1] = first, last
        with pytest.raises(pyhv.KvmError) as info:
            cpu.run(timeout=10)                   # the exit says the ring holds writes
        assert info.value.errno == errno.EIO
        indices[0] = indices[1] = 0
        cpu.regs.rip = 0x1000


def test_a_ring_entry_longer_than_its_data_is_cut_to_its_data(part):
    writes = []
    part.add_coalesced_mmio(0xD0000000, 0x1000, write=lambda gpa, size, value: writes.append(
        (gpa, size, value)))
    part.memory.write(0x1000, b"\xf4")
    cpu = part.create_vcpu(mode="long", entry=0x1000)
    indices, page = ring_of(cpu)
    entry = RING_ENTRY.pack(0xD0000010, 0xFFFF, 0, bytes(range(1, 9)))
    ffi.memmove(page + 8, entry, len(entry))
    indices[1] = 1                                # one entry, as the kernel would publish it
    assert isinstance(cpu.run(timeout=10), exits.Halt)
    assert writes == [(0xD0000010, 8, 0x0807060504030201)]
    assert (indices[0], indices[1]) == (1, 1)


# -- deadlines: the watchdog thread ----------------------------------------------------------------
def test_deadlines_of_several_vcpus_each_fire_on_time(kvm):
    # published latest first, then an earlier one (which must wake the watchdog sooner than it
    # planned), then one in between (which its plan already covers: stored without a lock)
    timeouts = [2.0, 0.5, 1.2]
    with pyhv.Partition(memory="16M") as part:
        part.memory.write(0x100000, assemble("1: jmp 1b", origin=0x100000))
        cpus = [part.create_vcpu(mode="user", entry=0x100000, stack=0x70000 - i * 0x1000)
                for i in range(len(timeouts))]
        ended = {}

        def run(cpu, timeout):
            began = time.monotonic()
            with pytest.raises(pyhv.Timeout):
                cpu.run(timeout=timeout)
            ended[timeout] = time.monotonic() - began

        threads = [threading.Thread(target=run, args=(c, t))
                   for c, t in zip(cpus, timeouts, strict=True)]
        for thread in threads:
            thread.start()
            time.sleep(0.05)
        for thread in threads:
            thread.join(30)
        for timeout in timeouts:                  # each by its own deadline, not the next one
            assert timeout <= ended[timeout] < timeout + 0.6, ended
        for cpu in cpus:
            assert cpu.stats.runs == 1            # one kick each, one KVM_RUN each


def test_a_deadline_already_past_ends_the_run_before_the_guest_runs(part):
    part.memory.write(0x1000, assemble("1: jmp 1b", origin=0x1000))
    cpu = part.create_vcpu(mode="long")
    ex = ffi.new("struct pyhv_exit *")
    assert lib.pyhv_vcpu_run(handle(cpu), ex, 1) & 0xFF == lib.PYHV_EXIT_TIMEOUT
    assert cpu.stats.runs == 0
