"""cffi builder for pyhv's C core (out-of-line API mode).

setup.py names this file in ``cffi_modules``; the declarations come from the real header
``pyhv_core.h`` (the part between its cdef markers) and the code from the ``.c`` files beside
it.  Constants of the kernel's KVM API that Python needs are declared as ``#define NAME ...``
so the C compiler, not this file, supplies their values from <linux/kvm.h>.
"""

from __future__ import annotations

import os
import re

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = ["system.c", "memory.c", "partition.c", "vcpu.c", "vcpu_state.c", "exit_decode.c",
           "fastpath.c", "kick.c", "run.c", "halt.c"]

KVM_CONSTANTS = [
    # capabilities pyhv checks or reports
    "KVM_CAP_USER_MEMORY", "KVM_CAP_SET_TSS_ADDR", "KVM_CAP_SET_IDENTITY_MAP_ADDR",
    "KVM_CAP_EXT_CPUID", "KVM_CAP_NR_MEMSLOTS", "KVM_CAP_NR_VCPUS", "KVM_CAP_MAX_VCPUS",
    "KVM_CAP_MAX_VCPU_ID", "KVM_CAP_READONLY_MEM", "KVM_CAP_IMMEDIATE_EXIT",
    "KVM_CAP_SYNC_REGS", "KVM_CAP_IRQCHIP", "KVM_CAP_SPLIT_IRQCHIP", "KVM_CAP_PIT2",
    "KVM_CAP_COALESCED_MMIO", "KVM_CAP_COALESCED_PIO", "KVM_CAP_IOEVENTFD", "KVM_CAP_IRQFD",
    "KVM_CAP_SET_GUEST_DEBUG", "KVM_CAP_XSAVE", "KVM_CAP_XCRS", "KVM_CAP_VCPU_EVENTS",
    "KVM_CAP_X86_USER_SPACE_MSR", "KVM_CAP_X86_MSR_FILTER", "KVM_CAP_DIRTY_LOG_RING",
    "KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2", "KVM_CAP_HYPERV", "KVM_CAP_TSC_CONTROL",
    "KVM_CAP_X86_TRIPLE_FAULT_EVENT", "KVM_CAP_BINARY_STATS_FD",
    # memory slot flags
    "KVM_MEM_LOG_DIRTY_PAGES", "KVM_MEM_READONLY",
    # exit details Python explains
    "KVM_INTERNAL_ERROR_EMULATION", "KVM_INTERNAL_ERROR_SIMUL_EX",
    "KVM_INTERNAL_ERROR_DELIVERY_EV", "KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON",
    "KVM_SYSTEM_EVENT_SHUTDOWN", "KVM_SYSTEM_EVENT_RESET", "KVM_SYSTEM_EVENT_CRASH",
    # user-space MSR exits (pyhv_partition_enable_user_msr) and the MSR filter's bounds
    "KVM_MSR_EXIT_REASON_INVAL", "KVM_MSR_EXIT_REASON_UNKNOWN", "KVM_MSR_EXIT_REASON_FILTER",
    "KVM_MSR_FILTER_MAX_RANGES", "KVM_MSR_FILTER_MAX_BITMAP_SIZE",
    # guest debugging (pyhv_vcpu_set_guest_debug)
    "KVM_GUESTDBG_ENABLE", "KVM_GUESTDBG_SINGLESTEP", "KVM_GUESTDBG_USE_SW_BP",
    "KVM_GUESTDBG_USE_HW_BP", "KVM_GUESTDBG_INJECT_DB", "KVM_GUESTDBG_INJECT_BP",
    "KVM_API_VERSION",
    # exit reasons and IO directions of kvm_run records (tests build them: see RUN_LAYOUT)
    "KVM_EXIT_IO", "KVM_EXIT_MMIO", "KVM_EXIT_HLT", "KVM_EXIT_SHUTDOWN",
    "KVM_EXIT_INTERNAL_ERROR", "KVM_EXIT_SYSTEM_EVENT", "KVM_EXIT_DEBUG", "KVM_EXIT_X86_RDMSR",
    "KVM_EXIT_X86_WRMSR", "KVM_EXIT_HYPERCALL", "KVM_EXIT_FAIL_ENTRY", "KVM_EXIT_UNKNOWN",
    "KVM_EXIT_IO_IN", "KVM_EXIT_IO_OUT",
]

# The layout of struct kvm_run, so Python can build records for pyhv_vcpu_inject_record
# without the kernel's structures ever reaching it: its size and the byte offsets of the fields
# pyhv decodes (their widths are those of <linux/kvm.h>).
RUN_LAYOUT = {"PYHV_RUN_SIZE": "sizeof(struct kvm_run)"} | {
    f"PYHV_RUN_OFF_{name}": f"offsetof(struct kvm_run, {field})" for name, field in (
        ("EXIT_REASON", "exit_reason"),
        ("IO_DIRECTION", "io.direction"), ("IO_SIZE", "io.size"), ("IO_PORT", "io.port"),
        ("IO_COUNT", "io.count"), ("IO_DATA_OFFSET", "io.data_offset"),
        ("MMIO_PHYS_ADDR", "mmio.phys_addr"), ("MMIO_DATA", "mmio.data"),
        ("MMIO_LEN", "mmio.len"), ("MMIO_IS_WRITE", "mmio.is_write"),
        ("INTERNAL_SUBERROR", "internal.suberror"), ("INTERNAL_NDATA", "internal.ndata"),
        ("INTERNAL_DATA", "internal.data"),
        ("SYSTEM_EVENT_TYPE", "system_event.type"), ("SYSTEM_EVENT_NDATA", "system_event.ndata"),
        ("SYSTEM_EVENT_DATA", "system_event.data"),
        ("MSR_ERROR", "msr.error"), ("MSR_REASON", "msr.reason"), ("MSR_INDEX", "msr.index"),
        ("MSR_DATA", "msr.data"),
        ("DEBUG_EXCEPTION", "debug.arch.exception"), ("DEBUG_PC", "debug.arch.pc"),
        ("HYPERCALL_NR", "hypercall.nr"),
    )
}


def read_cdef(header: str) -> str:
    """The declarations between the cdef markers of ``header``."""
    with open(header, encoding="utf-8") as f:
        text = f.read()
    match = re.search(r"/\* cdef begin \*/(.*)/\* cdef end \*/", text, re.DOTALL)
    if not match:
        raise RuntimeError(f"{header}: cdef markers not found")
    return match.group(1)


def _relative(path: str) -> str:
    # setuptools wants source paths relative to the project root (the build's cwd)
    return os.path.relpath(path, os.getcwd())


# PYHV_SANITIZE=1 builds the C core with AddressSanitizer and UndefinedBehaviorSanitizer
# (.ci/sanitize runs the test suite against that build; python needs libasan preloaded).
SANITIZE = os.environ.get("PYHV_SANITIZE") == "1"
SANITIZE_FLAGS = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all",
                  "-fno-omit-frame-pointer", "-g", "-O1"]

ffibuilder = FFI()
ffibuilder.cdef(read_cdef(os.path.join(HERE, "pyhv_core.h")))
ffibuilder.cdef("\n".join(f"#define {name} ..." for name in KVM_CONSTANTS + list(RUN_LAYOUT)))
ffibuilder.set_source(
    "pyhv._core",
    '#include <stddef.h>\n#include <linux/kvm.h>\n#include "pyhv_core.h"\n' +
    "".join(f"#define {name} {value}\n" for name, value in RUN_LAYOUT.items()),
    sources=[_relative(os.path.join(HERE, s)) for s in SOURCES],
    include_dirs=[_relative(HERE)],
    depends=[_relative(os.path.join(HERE, h)) for h in ("pyhv_core.h", "internal.h")],
    extra_compile_args=["-std=gnu11", "-O2", "-Wall", "-Wextra",
                        "-Werror=implicit-function-declaration"] + (SANITIZE_FLAGS if SANITIZE
                                                                   else []),
    extra_link_args=SANITIZE_FLAGS if SANITIZE else [],
    libraries=["rt", "pthread"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
