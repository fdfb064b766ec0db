"""The numbers the guest library (``guest/include/pyhv/guest.h``) and the host share: the
ucall doorbells, the records' layout, the limits.  ``tests/unit/test_guest_layout.py`` checks
them against the header.

>>> from pyhv.testing import layout
>>> layout.UCALL_SIZE, hex(layout.UCALL_PORT), hex(layout.UCALL_MMIO)
(1024, '0x7e0', '0xd0000000')
"""

from __future__ import annotations

import enum
import struct

MAX_CPUS = 16
STACK_SHIFT = 15
STACK_SIZE = 1 << STACK_SHIFT
UCALL_PORT = 0x7E0
UCALL_MMIO = 0xD0000000
UCALL_TEXT = 944
GUEST_MAGIC = 0x7473657576687970        # "pyhvuest"
GUEST_VERSION = 1

# struct pyhv_ucall: ten u64 fields (the last one spare), then the text
UCALL_HEADER = struct.Struct("<10Q")
UCALL_SIZE = 1024                        # aligned(64): 80 + 944
UCALL_REPLY = 24                         # offset of `reply`
UCALL_TEXT_OFFSET = UCALL_HEADER.size

# struct pyhv_guest_info
GUEST_INFO = struct.Struct("<5Q")        # magic, version, cpus, memory, mode
MODE_NUMBERS = {"long": 1, "protected": 2, "user": 3}

# struct pyhv_ex_slot: vector, error_code, cr2, rip, rdi, depth (aligned(64))
EX_SLOT = struct.Struct("<5Q")
EX_SLOT_SIZE = 64
EX_SLOT_DEPTH = 40
EXCEPTION_VECTORS = 32
MAX_HANDLER_DEPTH = 4                    # nested exceptions the host lets through


class Command(enum.IntEnum):
    """What a ucall asks of the host (``enum pyhv_ucall_cmd``)."""

    NONE = 0
    SYNC = 1
    PRINT = 2
    ASSERT = 3
    FAIL = 4
    DONE = 5


class ValueKind(enum.IntEnum):
    """How a compared value is shown (``enum pyhv_value_kind``)."""

    UNSIGNED = 0
    SIGNED = 1
    FLOAT = 2
    POINTER = 3


COMPARISON = 1 << 31                     # in `kinds`: the assertion compared two values
