"""The numbers of Microsoft's Hypervisor Top-Level Functional Specification (TLFS) that pyhv
implements: synthetic MSR indices, CPUID leaves and bits, hypercall codes and status codes,
and the layouts of the pages the hypervisor and the guest share.  Plain values only.

>>> from pyhv.hyperv import tlfs
>>> hex(tlfs.HV_X64_MSR_SINT0 + 15), tlfs.MESSAGE_SIZE * tlfs.SINT_COUNT
('0x4000009f', 4096)
>>> tlfs.status_name(tlfs.HV_STATUS_INVALID_ALIGNMENT)
'HV_STATUS_INVALID_ALIGNMENT'
"""

from __future__ import annotations

# -- CPUID leaves ---------------------------------------------------------------------------
CPUID_VENDOR = 0x40000000          # EAX: highest leaf; EBX:ECX:EDX: "Microsoft Hv"
CPUID_INTERFACE = 0x40000001       # EAX: "Hv#1"
CPUID_VERSION = 0x40000002         # build, major.minor, service pack, branch.number
CPUID_FEATURES = 0x40000003        # EAX:EBX privileges, ECX power, EDX misc features
CPUID_RECOMMENDATIONS = 0x40000004  # EAX hints, EBX spinlock retries
CPUID_LIMITS = 0x40000005          # EAX max virtual processors, EBX max logical processors
CPUID_HARDWARE = 0x40000006        # hardware features the hypervisor uses
CPUID_MAX_LEAF = CPUID_HARDWARE
INTERFACE_HV1 = 0x31237648         # "Hv#1" little-endian
VENDOR_ID = "Microsoft Hv"

# 0x40000003 EAX: partition privileges (which synthetic MSRs the guest may use)
PRIV_VP_RUNTIME = 1 << 0
PRIV_TIME_REF_COUNT = 1 << 1
PRIV_SYNIC = 1 << 2
PRIV_SYNTHETIC_TIMERS = 1 << 3
PRIV_APIC_ACCESS = 1 << 4
PRIV_HYPERCALL = 1 << 5             # GUEST_OS_ID and HYPERCALL
PRIV_VP_INDEX = 1 << 6
PRIV_RESET = 1 << 7
PRIV_REFERENCE_TSC = 1 << 9
PRIV_FREQUENCIES = 1 << 11
# 0x40000003 EBX: partition privileges (which hypercalls)
PRIV_POST_MESSAGES = 1 << 4
PRIV_SIGNAL_EVENTS = 1 << 5
# 0x40000003 EDX: miscellaneous features
FEAT_FREQUENCY_MSRS = 1 << 8
FEAT_CRASH_MSRS = 1 << 10
FEAT_STIMER_DIRECT = 1 << 19
# 0x40000004 EAX: recommendations
HINT_APIC_MSRS = 1 << 3             # use the EOI/ICR/TPR MSRs
HINT_RESET_MSR = 1 << 4
HINT_RELAXED_TIMING = 1 << 5
HINT_CLUSTER_IPI = 1 << 10          # use HvCallSendSyntheticClusterIpi
HINT_EX_PROCESSOR_MASKS = 1 << 11
HINT_DEPRECATE_AUTOEOI = 1 << 9     # do not rely on AutoEOI SINTs
SPINLOCK_NEVER_NOTIFY = 0xFFFFFFFF

# -- synthetic MSRs -------------------------------------------------------------------------
HV_X64_MSR_GUEST_OS_ID = 0x40000000
HV_X64_MSR_HYPERCALL = 0x40000001
HV_X64_MSR_VP_INDEX = 0x40000002
HV_X64_MSR_RESET = 0x40000003
HV_X64_MSR_VP_RUNTIME = 0x40000010
HV_X64_MSR_TIME_REF_COUNT = 0x40000020
HV_X64_MSR_REFERENCE_TSC = 0x40000021
HV_X64_MSR_TSC_FREQUENCY = 0x40000022
HV_X64_MSR_APIC_FREQUENCY = 0x40000023
HV_X64_MSR_EOI = 0x40000070
HV_X64_MSR_ICR = 0x40000071
HV_X64_MSR_TPR = 0x40000072
HV_X64_MSR_VP_ASSIST_PAGE = 0x40000073
HV_X64_MSR_SCONTROL = 0x40000080
HV_X64_MSR_SVERSION = 0x40000081
HV_X64_MSR_SIEFP = 0x40000082
HV_X64_MSR_SIMP = 0x40000083
HV_X64_MSR_EOM = 0x40000084
HV_X64_MSR_SINT0 = 0x40000090
HV_X64_MSR_STIMER0_CONFIG = 0x400000B0     # CONFIG/COUNT pairs for timers 0..3
HV_X64_MSR_CRASH_P0 = 0x40000100           # P0..P4, then CTL
HV_X64_MSR_CRASH_CTL = 0x40000105
SYNTHETIC_MSRS = range(0x40000000, 0x40000100)   # the range pyhv owns: the rest is #GP
CRASH_MSRS = range(HV_X64_MSR_CRASH_P0, HV_X64_MSR_CRASH_CTL + 1)

HYPERCALL_ENABLE = 1 << 0
HYPERCALL_LOCKED = 1 << 1
PAGE_ENABLE = 1 << 0                # SIMP, SIEFP, REFERENCE_TSC, VP_ASSIST_PAGE
PAGE_MASK = ~0xFFF & (1 << 64) - 1
SCONTROL_ENABLE = 1 << 0
SVERSION = 1
SINT_VECTOR_MASK = 0xFF
SINT_MASKED = 1 << 16
SINT_AUTO_EOI = 1 << 17
SINT_POLLING = 1 << 18
SINT_WRITABLE = SINT_VECTOR_MASK | SINT_MASKED | SINT_AUTO_EOI | SINT_POLLING
SINT_FIRST_VECTOR = 16              # vectors below are refused (#GP) unless masked
SINT_COUNT = 16
STIMER_COUNT = 4
CRASH_NOTIFY = 1 << 63
APIC_FREQUENCY_HZ = 1_000_000_000   # KVM's in-kernel LAPIC timer ticks at 1 GHz

# STIMERx_CONFIG bits
STIMER_ENABLE = 1 << 0
STIMER_PERIODIC = 1 << 1
STIMER_LAZY = 1 << 2
STIMER_AUTO_ENABLE = 1 << 3
STIMER_DIRECT = 1 << 12
STIMER_WRITABLE = 0x000F_1FFF       # enable..auto-enable, vector, direct, SINTx


def stimer_vector(config: int) -> int:
    return (config >> 4) & 0xFF


def stimer_sint(config: int) -> int:
    return (config >> 16) & 0xF


# -- SynIC pages ----------------------------------------------------------------------------
MESSAGE_SIZE = 256
MESSAGE_HEADER_SIZE = 16            # u32 type, u8 payload size, u8 flags, u16, u64 sender
MESSAGE_PAYLOAD_MAX = 240
MESSAGE_PENDING = 1 << 0            # the flags byte at offset 5
HVMSG_NONE = 0
HVMSG_TIMER_EXPIRED = 0x80000010
HVMSG_HYPERVISOR_RANGE = 0x80000000  # types from here up are the hypervisor's, not guests'
TIMER_PAYLOAD_SIZE = 24             # u32 index, u32 reserved, u64 expiration, u64 delivery
EVENT_FLAGS_SIZE = 256              # per SINT: 2048 flags
EVENT_FLAG_COUNT = EVENT_FLAGS_SIZE * 8

# -- the reference TSC page -----------------------------------------------------------------
# u32 sequence, u32 reserved, u64 scale, i64 offset: reference time in 100 ns units is
# ((tsc * scale) >> 64) + offset; sequence 0 means "use the TIME_REF_COUNT MSR instead"
TSC_PAGE_INVALID_SEQUENCE = 0

# -- hypercalls -----------------------------------------------------------------------------
# the control word (RCX in long mode, EDX:EAX in protected mode)
CALL_CODE_MASK = 0xFFFF
CALL_FAST = 1 << 16
CALL_HEADER_SIZE_SHIFT = 17         # variable header size, in 8-byte units (10 bits)
CALL_HEADER_SIZE_MASK = 0x3FF
CALL_REP_COUNT_SHIFT = 32
CALL_REP_START_SHIFT = 48
CALL_REP_MASK = 0xFFF
CALL_RESERVED = ~(CALL_CODE_MASK | CALL_FAST | (CALL_HEADER_SIZE_MASK << 17) |
                  (CALL_REP_MASK << 32) | (CALL_REP_MASK << 48)) & (1 << 64) - 1
REPS_COMPLETED_SHIFT = 32           # in the result (RAX)

HVCALL_NOTIFY_LONG_SPIN_WAIT = 0x0008
HVCALL_SEND_IPI = 0x000B
HVCALL_SEND_IPI_EX = 0x0015
HVCALL_POST_MESSAGE = 0x005C
HVCALL_SIGNAL_EVENT = 0x005D

HV_STATUS_SUCCESS = 0x0000
HV_STATUS_INVALID_HYPERCALL_CODE = 0x0002
HV_STATUS_INVALID_HYPERCALL_INPUT = 0x0003
HV_STATUS_INVALID_ALIGNMENT = 0x0004
HV_STATUS_INVALID_PARAMETER = 0x0005
HV_STATUS_ACCESS_DENIED = 0x0006
HV_STATUS_INVALID_PARTITION_STATE = 0x0007
HV_STATUS_OPERATION_DENIED = 0x0008
HV_STATUS_INSUFFICIENT_MEMORY = 0x000B
HV_STATUS_INVALID_VP_INDEX = 0x000E
HV_STATUS_INVALID_PORT_ID = 0x0011
HV_STATUS_INVALID_CONNECTION_ID = 0x0012
HV_STATUS_INSUFFICIENT_BUFFERS = 0x0013

_STATUS_NAMES = {value: name for name, value in globals().items()
                 if name.startswith("HV_STATUS_")}

# HvCallSendSyntheticClusterIpiEx's processor sets
VP_SET_SPARSE_4K = 0
VP_SET_ALL = 1


def status_name(status: int) -> str:
    """The TLFS name of a hypercall status code (``0x13`` -> ``HV_STATUS_INSUFFICIENT_BUFFERS``)."""
    return _STATUS_NAMES.get(status, f"status {status:#x}")
