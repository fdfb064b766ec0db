"""The C core's own API, driven through cffi (``pyhv._ffi``) on the real /dev/kvm, with the
Python API only setting guests up: MSR batches, partition and vCPU creation in one call,
memory slots, the MSR filter and MSR exits, guest debugging, address translation and MSIs."""

from __future__ import annotations

import errno
import threading
import time

import pytest

import pyhv
from pyhv._ffi import ffi, lib

EFER = 0xC0000080
TSC = 0x10


def msr_arrays(indices):
    return (ffi.new("uint32_t[]", indices), ffi.new("uint64_t[]", len(indices)),
            ffi.new("uint32_t *"))


def test_get_msrs_of_more_than_kvm_takes_per_ioctl(part):
    cpu = part.create_vcpu(mode="long")
    index, value, done = msr_arrays([EFER] * 300)       # KVM alone refuses >= 256 at once
    assert lib.pyhv_vcpu_get_msrs(cpu._handle(), index, value, 300, done) == 0
    assert done[0] == 300
    assert {value[i] for i in range(300)} == {cpu.get_msr(EFER)}
    assert lib.pyhv_vcpu_set_msrs(cpu._handle(), index, value, 300, done) == 0
    assert done[0] == 300


def test_msr_batches_report_the_first_refused_index_across_chunks(part):
    cpu = part.create_vcpu(mode="long")
    indices = [TSC] * 400
    indices[270] = 0xDEAD0000                            # in the second chunk of 255
    index, value, done = msr_arrays(indices)
    assert lib.pyhv_vcpu_get_msrs(cpu._handle(), index, value, 400, done) == -22   # EINVAL
    assert done[0] == 270
    assert all(value[i] for i in range(270))             # the TSC ticks: never 0
    assert lib.pyhv_vcpu_get_msrs(cpu._handle(), index, value, 0, done) == 0 and done[0] == 0


# -- MSIs ---------------------------------------------------------------------------------
LAPIC = 0xFEE00000
MSI_NMI, MSI_INIT, MSI_SIPI = 0x400, 0x500, 0x600      # delivery modes in the data word


def msi(part, apic_id, data):
    return lib.pyhv_partition_signal_msi(part._vm_fd, LAPIC | apic_id << 12, data)


def reload_lapic(cpu):
    """Save and load the vCPU's own state.  Seen on this kernel: KVM builds its map of APIC IDs
    while a vCPU is being created, before it counts as online, so an MSI to the newest vCPU
    finds no LAPIC (returns 0) until something (here KVM_SET_LAPIC) rebuilds the map."""
    state = ffi.new("struct pyhv_vcpu_state *")
    assert lib.pyhv_vcpu_save_state(cpu._handle(), ffi.NULL, 0, 0, state) == 0
    assert state.present & lib.PYHV_HAS_LAPIC
    assert lib.pyhv_vcpu_load_state(cpu._handle(), state) == 0


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
        runner = threading.Thread(target=lambda: result.append(lib.pyhv_vcpu_run(ap._handle(), ex)))
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
