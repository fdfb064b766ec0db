"""The C core's own API, driven through cffi (``pyhv._ffi``) on the real /dev/kvm, with the
Python API only setting guests up: MSR batches, partition and vCPU creation in one call,
memory slots, the MSR filter and MSR exits, guest debugging, address translation and MSIs."""

from __future__ import annotations

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
