"""HvCallSendSyntheticClusterIpi and its Ex form: a vector to a set of VPs, sent as MSIs.

>>> from pyhv.hyperv.ipi import sparse_vps
>>> sparse_vps(banks=0b101, contents=(0b11).to_bytes(8, "little") + (1).to_bytes(8, "little"))
[0, 1, 128]
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable

from . import tlfs
from .hypercalls import Hypercall

Send = Callable[[int, int], object]          # send(vp, vector)


def deliver(vector: int, vps: Iterable[int], known: Collection[int], send: Send) -> int:
    """Send ``vector`` to every VP of ``vps``; a TLFS status."""
    if not 0x10 <= vector <= 0xFF:
        return tlfs.HV_STATUS_INVALID_PARAMETER
    targets = sorted(set(vps))
    if any(vp not in known for vp in targets):
        return tlfs.HV_STATUS_INVALID_PARAMETER
    for vp in targets:
        send(vp, vector)
    return tlfs.HV_STATUS_SUCCESS


def sparse_vps(banks: int, contents: bytes) -> list[int]:
    """The VPs of a sparse 4K VP set: one u64 of contents per bit of ``banks`` (64 VPs)."""
    vps, n = [], 0
    for bank in range(64):
        if banks >> bank & 1:
            word = int.from_bytes(contents[8 * n:8 * n + 8], "little")
            vps += [bank * 64 + i for i in range(64) if word >> i & 1]
            n += 1
    return vps


def send_ipi_call(call: Hypercall, known: Collection[int], send: Send) -> int:
    """HvCallSendSyntheticClusterIpi: u32 vector, u32 reserved, u64 processor mask."""
    data = call.read_input(16)
    mask = int.from_bytes(data[8:16], "little")
    return deliver(int.from_bytes(data[0:4], "little"), (i for i in range(64) if mask >> i & 1),
                   known, send)


def send_ipi_ex_call(call: Hypercall, known: Collection[int], send: Send) -> int:
    """HvCallSendSyntheticClusterIpiEx: u32 vector, u32 reserved, then a VP set (u64 format,
    u64 valid bank mask, the banks); a fast call holds only the format (all VPs)."""
    head = call.read_input(16) + bytes(8) if call.fast else call.read_input(24)
    vector = int.from_bytes(head[0:4], "little")
    form = int.from_bytes(head[8:16], "little")
    if form == tlfs.VP_SET_ALL:
        return deliver(vector, known, known, send)
    if form != tlfs.VP_SET_SPARSE_4K or call.fast:
        return tlfs.HV_STATUS_INVALID_PARAMETER
    banks = int.from_bytes(head[16:24], "little")
    contents = call.read_input(24 + 8 * banks.bit_count())[24:]
    return deliver(vector, sparse_vps(banks, contents), known, send)
