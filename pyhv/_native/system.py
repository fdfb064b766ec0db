"""The KVM system fd (``/dev/kvm``): thin typed calls, one per ioctl pyhv uses."""

from __future__ import annotations

import errno
import weakref

from ..errors import KvmError, check_rc
from ..x86.cpuid import CpuidEntry
from .binding import ffi, lib
from .structs import read_cpuid

MAX_MSR_INDICES = 16384


class SystemFd:
    """An open ``/dev/kvm``.  :meth:`open` raises :class:`pyhv.KvmError` with the errno of
    the failed ``open(2)``; closing is idempotent (also done by the garbage collector)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._finalizer = weakref.finalize(self, lib.pyhv_close, fd)

    @classmethod
    def open(cls, path: str) -> SystemFd:
        out = ffi.new("int *")
        rc = lib.pyhv_system_open(path.encode(), out)
        if rc < 0:
            raise KvmError(-rc, f"open {path}")
        return cls(out[0])

    def close(self) -> None:
        self._finalizer()

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def api_version(self) -> int:
        """``KVM_GET_API_VERSION`` (a negative errno when the fd is not KVM's)."""
        return int(lib.pyhv_system_api_version(self.fd))

    def vcpu_mmap_size(self) -> int:
        return check_rc(lib.pyhv_system_vcpu_mmap_size(self.fd), "KVM_GET_VCPU_MMAP_SIZE")

    def check_extension(self, capability: int) -> int:
        """``KVM_CHECK_EXTENSION``: the capability's value, 0 when absent."""
        return max(int(lib.pyhv_check_extension(self.fd, capability)), 0)

    def supported_cpuid(self) -> tuple[CpuidEntry, ...]:
        """``KVM_GET_SUPPORTED_CPUID``."""
        return read_cpuid(lambda buf, cap, n: lib.pyhv_system_supported_cpuid(self.fd, buf, cap,
                                                                               n),
                          "KVM_GET_SUPPORTED_CPUID")

    def msr_index_list(self) -> tuple[int, ...]:
        """``KVM_GET_MSR_INDEX_LIST``."""
        cap = 4096
        while True:
            buf = ffi.new("uint32_t[]", cap)
            n = ffi.new("uint32_t *")
            rc = lib.pyhv_system_msr_index_list(self.fd, buf, cap, n)
            if rc == -errno.E2BIG and cap < MAX_MSR_INDICES:
                cap *= 2
                continue
            check_rc(rc, "KVM_GET_MSR_INDEX_LIST")
            return tuple(ffi.unpack(buf, n[0]))


def close_fd(fd: int) -> None:
    """close(2), ignoring errors (for fds being released)."""
    lib.pyhv_close(fd)


def monotonic_ns() -> int:
    """CLOCK_MONOTONIC in ns, the clock of run deadlines."""
    return int(lib.pyhv_monotonic_ns())
