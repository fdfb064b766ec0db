"""Hand-built ``struct kvm_run`` exit records, for ``pyhv_vcpu_inject_record`` /
``VcpuFd.inject_record``: the next run of the vCPU reports them through the same C decode and
fast paths, and the same Python run loops, as records the kernel writes.  Field offsets come
from the C core (``PYHV_RUN_OFF_*``, the compiler's view of <linux/kvm.h>)."""

from __future__ import annotations

import struct

from pyhv._native.binding import lib

PAGE = 4096
AREA = 3 * PAGE              # what KVM_GET_VCPU_MMAP_SIZE says on x86: run, PIO page, ring
DATA = PAGE                  # where KVM puts string IO data: the page after the header
OUT, IN = lib.KVM_EXIT_IO_OUT, lib.KVM_EXIT_IO_IN

# field formats from <linux/kvm.h>, at the offsets the C core exports
FIELDS = {
    "EXIT_REASON": "I", "IO_DIRECTION": "B", "IO_SIZE": "B", "IO_PORT": "H", "IO_COUNT": "I",
    "IO_DATA_OFFSET": "Q", "MMIO_PHYS_ADDR": "Q", "MMIO_LEN": "I", "MMIO_IS_WRITE": "B",
    "INTERNAL_SUBERROR": "I", "INTERNAL_NDATA": "I", "SYSTEM_EVENT_TYPE": "I",
    "SYSTEM_EVENT_NDATA": "I", "MSR_ERROR": "B", "MSR_REASON": "I", "MSR_INDEX": "I",
    "MSR_DATA": "Q", "DEBUG_EXCEPTION": "I", "DEBUG_PC": "Q", "HYPERCALL_NR": "Q",
}


def record(reason: int, size: int = AREA, **fields: int) -> bytearray:
    """A kvm_run record of ``size`` bytes with ``fields`` (FIELDS names, lower case)."""
    rec = bytearray(size)
    struct.pack_into("<I", rec, lib.PYHV_RUN_OFF_EXIT_REASON, reason)
    for name, value in fields.items():
        name = name.upper()
        struct.pack_into("<" + FIELDS[name], rec, getattr(lib, "PYHV_RUN_OFF_" + name), value)
    return rec


def io_record(direction: int, port: int, size: int, count: int, offset: int = DATA,
              data: bytes = b"") -> bytes:
    """An IO exit; ``data`` goes at ``offset`` and the record ends with it (a real vCPU's
    run area has the VM's coalesced ring after the data page, which records may not touch).
    Without data the record ends with the kvm_run header, so the data page keeps what is
    there (an answer written to it, say)."""
    rec = record(lib.KVM_EXIT_IO, io_direction=direction, io_port=port, io_size=size,
                 io_count=count, io_data_offset=offset)
    if not data:
        return bytes(rec[:lib.PYHV_RUN_SIZE])
    rec[offset:offset + len(data)] = data
    return bytes(rec[:offset + len(data)])
