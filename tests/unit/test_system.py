"""The KVM system handle where there is no KVM to open: backend detection, and errors that
say what to do."""

from __future__ import annotations

import errno
import os

import pytest

import pyhv
from pyhv.core.hypervisor import detect_backend


def test_backend_detection_reads_the_loaded_vendor_module(tmp_path):
    assert detect_backend(str(tmp_path)) == "unknown"
    (tmp_path / "kvm").mkdir()
    (tmp_path / "kvm_amd").mkdir()
    assert detect_backend(str(tmp_path)) == "kvm_amd"


def test_missing_device_says_what_to_do(tmp_path):
    with pytest.raises(pyhv.HypervisorUnavailable) as info:
        pyhv.Hypervisor(str(tmp_path / "kvm"))
    err = info.value
    assert err.errno == errno.ENOENT and isinstance(err, OSError)
    assert "VT-x/AMD-V" in str(err) and "modprobe" in str(err)


def test_a_device_that_is_not_kvm_is_refused():
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(pyhv.HypervisorUnavailable, match="not a KVM device"):
        pyhv.Hypervisor("/dev/null")
    assert len(os.listdir("/proc/self/fd")) == before


def test_permission_error_names_the_kvm_group():
    err = pyhv.core.hypervisor._unavailable(errno.EACCES, "/dev/kvm")
    assert isinstance(err, pyhv.HypervisorUnavailable) and err.errno == errno.EACCES
    assert "kvm group" in str(err)


def test_errno_errors_are_oserrors():
    err = pyhv.KvmError(errno.ENOMEM, "KVM_CREATE_VM")
    assert isinstance(err, OSError) and isinstance(err, pyhv.HypervisorError)
    assert err.errno == errno.ENOMEM and "KVM_CREATE_VM" in str(err)
