"""Three vCPU ioctls the C core does not wrap yet, made from Python on the vCPU's fd.

Each must run on the thread that runs the vCPU, while it is out of ``KVM_RUN`` (in an exit
handler), or while it is not running at all: KVM serializes vCPU ioctls with the run.

What pyhv's C core would offer instead (``csrc/vcpu_state.c``)::

    int pyhv_vcpu_get_tsc_khz(struct pyhv_vcpu *vcpu);              /* >0 kHz or -errno */
    int pyhv_vcpu_get_lapic(struct pyhv_vcpu *vcpu, uint8_t out[1024]);  /* KVM_GET_LAPIC */
    int pyhv_vcpu_set_lapic(struct pyhv_vcpu *vcpu, const uint8_t in[1024]);
"""

from __future__ import annotations

import errno
import fcntl

from ..errors import KvmError

_KVMIO = 0xAE
LAPIC_STATE_SIZE = 1024                                      # struct kvm_lapic_state
KVM_GET_TSC_KHZ = (_KVMIO << 8) | 0xA3                       # _IO(KVMIO, 0xa3)
KVM_GET_LAPIC = (2 << 30) | (LAPIC_STATE_SIZE << 16) | (_KVMIO << 8) | 0x8E   # _IOR
KVM_SET_LAPIC = (1 << 30) | (LAPIC_STATE_SIZE << 16) | (_KVMIO << 8) | 0x8F   # _IOW


def tsc_khz(vcpu_fd: int) -> int | None:
    """The guest TSC frequency in kHz, or None where KVM cannot say."""
    try:
        khz = fcntl.ioctl(vcpu_fd, KVM_GET_TSC_KHZ)
    except OSError:
        return None
    return khz if khz > 0 else None


def get_lapic(vcpu_fd: int) -> bytearray:
    """The in-kernel LAPIC's register page (``KVM_GET_LAPIC``)."""
    buf = bytearray(LAPIC_STATE_SIZE)
    try:
        fcntl.ioctl(vcpu_fd, KVM_GET_LAPIC, buf, True)
    except OSError as exc:
        raise KvmError(exc.errno or errno.EIO, "KVM_GET_LAPIC") from None
    return buf


def set_lapic(vcpu_fd: int, state: bytes | bytearray) -> None:
    """Load the in-kernel LAPIC's register page (``KVM_SET_LAPIC``)."""
    try:
        fcntl.ioctl(vcpu_fd, KVM_SET_LAPIC, bytes(state))
    except OSError as exc:
        raise KvmError(exc.errno or errno.EIO, "KVM_SET_LAPIC") from None
