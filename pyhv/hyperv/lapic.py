"""The in-kernel LAPIC as the Hyper-V APIC-access MSRs (EOI, ICR, TPR) see it.

KVM keeps the LAPIC in the kernel; from user space pyhv reads and writes its register page
(``KVM_GET_LAPIC`` / ``KVM_SET_LAPIC``) and sends interrupts as MSIs (``KVM_SIGNAL_MSI``).
An EOI this way clears the highest in-service vector, as the LAPIC's own EOI does, but it
cannot notify the IOAPIC of a level-triggered interrupt's end (the kernel does that only for
an EOI it sees itself): that is one reason pyhv does not *recommend* these MSRs to guests.

>>> from pyhv.hyperv.lapic import highest_vector, icr_messages
>>> page = bytearray(1024); page[0x100 + 0x10 * 5] = 0x01     # ISR bit of vector 0xA0
>>> highest_vector(page, 0x100)
160
>>> [(hex(a), hex(d)) for a, d in icr_messages(0x1_0000_40B1, [0, 1], self_id=0, x2apic=True)]
[('0xfee01000', '0x40b1')]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from . import kvmio

TPR = 0x80
ISR = 0x100
TMR = 0x180
IRR = 0x200

MSI_ADDRESS = 0xFEE00000
DELIVERY_MODES_OK = {0, 1, 2, 4, 5, 6}       # fixed, lowest, SMI, NMI, INIT, SIPI
ICR_DEST_LOGICAL = 1 << 11
ICR_LEVEL_ASSERT = 1 << 14
ICR_TRIGGER_LEVEL = 1 << 15
SHORTHAND_SHIFT = 18


def _u32(page: bytes | bytearray, offset: int) -> int:
    return int.from_bytes(page[offset:offset + 4], "little")


def highest_vector(page: bytes | bytearray, base: int) -> int | None:
    """The highest vector set in the 256-bit register at ``base`` (ISR, IRR, TMR)."""
    for word in range(7, -1, -1):
        bits = _u32(page, base + 0x10 * word)
        if bits:
            return word * 32 + bits.bit_length() - 1
    return None


def _bit(page: bytes | bytearray, base: int, vector: int) -> bool:
    return bool(_u32(page, base + 0x10 * (vector // 32)) >> (vector % 32) & 1)


def _clear_bit(page: bytearray, base: int, vector: int) -> None:
    offset = base + 0x10 * (vector // 32)
    page[offset:offset + 4] = (_u32(page, offset) & ~(1 << vector % 32)).to_bytes(4, "little")


def eoi(vcpu_fd: int) -> int | None:
    """End the highest in-service interrupt of the vCPU's LAPIC; the vector, or None when
    none was in service."""
    page = kvmio.get_lapic(vcpu_fd)
    vector = highest_vector(page, ISR)
    if vector is not None:
        _clear_bit(page, ISR, vector)
        kvmio.set_lapic(vcpu_fd, page)
    return vector


def clear_in_service(vcpu_fd: int, vectors: Iterable[int]) -> list[int]:
    """Clear the ISR bits of ``vectors`` that are set (what AutoEOI would have done at
    delivery); the vectors cleared."""
    page = kvmio.get_lapic(vcpu_fd)
    cleared = [v for v in sorted(set(vectors)) if _bit(page, ISR, v)]
    for vector in cleared:
        _clear_bit(page, ISR, vector)
    if cleared:
        kvmio.set_lapic(vcpu_fd, page)
    return cleared


def get_tpr(vcpu_fd: int) -> int:
    return _u32(kvmio.get_lapic(vcpu_fd), TPR) & 0xFF


def set_tpr(vcpu_fd: int, value: int) -> None:
    page = kvmio.get_lapic(vcpu_fd)
    page[TPR:TPR + 4] = (value & 0xFF).to_bytes(4, "little")
    kvmio.set_lapic(vcpu_fd, page)


def icr_messages(icr: int, vcpu_apic_ids: Sequence[int], self_id: int,
                 x2apic: bool) -> list[tuple[int, int]]:
    """The MSIs (address, data) that deliver what a write of ``icr`` to the ICR asks for:
    shorthands become one MSI per destination, as pyhv knows every vCPU's APIC ID."""
    low = icr & 0xFFFFFFFF
    vector = low & 0xFF
    mode = (low >> 8) & 7
    if mode not in DELIVERY_MODES_OK:
        return []
    data = vector | mode << 8 | (low & (ICR_LEVEL_ASSERT | ICR_TRIGGER_LEVEL))
    shorthand = (low >> SHORTHAND_SHIFT) & 3
    if shorthand == 0:
        dest = icr >> 32 if x2apic else (icr >> 56) & 0xFF
        logical = bool(low & ICR_DEST_LOGICAL)
        return [(MSI_ADDRESS | (dest & 0xFF) << 12 | (4 if logical else 0), data)]
    targets = {1: [self_id], 2: list(vcpu_apic_ids),
               3: [i for i in vcpu_apic_ids if i != self_id]}[shorthand]
    return [(MSI_ADDRESS | (dest & 0xFF) << 12, data) for dest in targets]


def send_icr(icr: int, signal_msi: Callable[[int, int], object], vcpu_apic_ids: Sequence[int],
             self_id: int, x2apic: bool) -> int:
    """Deliver an ICR write through ``signal_msi``; the number of MSIs sent."""
    messages = icr_messages(icr, vcpu_apic_ids, self_id, x2apic)
    for address, data in messages:
        signal_msi(address, data)
    return len(messages)
