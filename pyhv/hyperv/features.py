"""Which enlightenments a partition offers, named as QEMU's ``-cpu`` flags name them.

>>> from pyhv.hyperv.features import Enlightenments
>>> hv = Enlightenments.parse("hv-time,hv_synic,hv-vpindex,hv-spinlocks=0x1fff")
>>> sorted(hv.features), hex(hv.spinlocks)
(['synic', 'time', 'vpindex'], '0x1fff')
>>> sorted(Enlightenments.parse("hv-passthrough").features) == sorted(IMPLEMENTED)
True
>>> Enlightenments.parse("hv-stimer")
Traceback (most recent call last):
pyhv.errors.InvalidArgument: hv-stimer needs hv-synic, hv-time (QEMU refuses it the same way)
>>> from pyhv.errors import InvalidArgument
>>> try:
...     Enlightenments.parse("hv-evmcs")
... except InvalidArgument as exc:
...     print(str(exc).partition(":")[0])
hv-evmcs is not implemented by pyhv
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from ..errors import InvalidArgument
from . import tlfs

# every enlightenment pyhv implements -> what it is (also what `hv-passthrough` turns on)
IMPLEMENTED: dict[str, str] = {
    "vpindex": "VP_INDEX MSR",
    "runtime": "VP_RUNTIME MSR",
    "time": "TIME_REF_COUNT and the reference TSC page",
    "frequencies": "TSC and APIC frequency MSRs",
    "reset": "the RESET MSR",
    "relaxed": "relaxed-timing recommendation (no watchdog on missed ticks)",
    "vapic": "EOI/ICR/TPR MSRs onto the in-kernel LAPIC, and the VP assist page MSR",
    "synic": "SynIC: SINTs, message and event flag pages, HvPostMessage, HvSignalEvent",
    "stimer": "synthetic timers STIMER0-3 in message mode",
    "stimer-direct": "synthetic timers in direct (APIC vector) mode",
    "ipi": "HvCallSendSyntheticClusterIpi(Ex)",
    "crash": "the guest crash MSRs (P0-P4, CTL)",
}
# QEMU's dependencies between them
REQUIRES: dict[str, tuple[str, ...]] = {
    "synic": ("vpindex",),
    "stimer": ("synic", "time"),
    "stimer-direct": ("stimer",),
    "ipi": ("vpindex",),
}
# QEMU's names pyhv knows but does not implement, and why
NOT_IMPLEMENTED: dict[str, str] = {
    "evmcs": "enlightened VMCS is nested virtualization, which pyhv does not offer",
    "tlbflush": "remote TLB flushes need the kernel to flush other vCPUs' TLBs, which user "
                "space cannot do",
    "tlbflush-ext": "see hv-tlbflush",
    "tlbflush-direct": "see hv-evmcs",
    "reenlightenment": "the TSC never changes frequency under a pyhv guest, so there is "
                       "nothing to re-enlighten",
    "avic": "needs the APIC virtualization of the CPU, which KVM keeps to itself",
    "apicv": "see hv-avic",
    "syndbg": "the synthetic debugger needs a host debugger transport",
    "msr-bitmap": "see hv-evmcs",
    "emsr-bitmap": "see hv-evmcs",
    "xmm-input": "XMM fast hypercalls are not implemented (register fast calls are)",
}
DEFAULT_SPINLOCKS = tlfs.SPINLOCK_NEVER_NOTIFY
MIN_SPINLOCKS = 0xFFF                   # QEMU's lower bound


@dataclass(frozen=True)
class Enlightenments:
    """A set of enlightenments (names from :data:`IMPLEMENTED`) and the options QEMU's
    ``-cpu`` takes with them: the spinlock retry count and the vendor ID string."""

    features: frozenset[str] = field(default_factory=frozenset)
    spinlocks: int = DEFAULT_SPINLOCKS
    vendor_id: str = tlfs.VENDOR_ID

    def __post_init__(self) -> None:
        unknown = set(self.features) - set(IMPLEMENTED)
        if unknown:
            raise InvalidArgument(f"unknown enlightenment(s) {', '.join(sorted(unknown))}; "
                                  f"pyhv implements {', '.join(IMPLEMENTED)}")
        for feature in sorted(self.features):
            missing = [f"hv-{d}" for d in REQUIRES.get(feature, ()) if d not in self.features]
            if missing:
                raise InvalidArgument(f"hv-{feature} needs {', '.join(missing)} (QEMU refuses "
                                      "it the same way)")
        if isinstance(self.spinlocks, bool) or not isinstance(self.spinlocks, int) or not (
                MIN_SPINLOCKS <= self.spinlocks <= 0xFFFFFFFF):
            raise InvalidArgument(f"hv-spinlocks={self.spinlocks!r} must be an int in "
                                  f"{MIN_SPINLOCKS:#x}..0xffffffff")
        if not isinstance(self.vendor_id, str) or not self.vendor_id.isascii() or len(
                self.vendor_id.encode()) > 12:
            raise InvalidArgument(f"hv-vendor-id={self.vendor_id!r} must be at most 12 ASCII "
                                  "characters")

    def __contains__(self, feature: object) -> bool:
        return feature in self.features

    @classmethod
    def all(cls) -> Enlightenments:
        """Every enlightenment pyhv implements (QEMU's ``hv-passthrough``)."""
        return cls(frozenset(IMPLEMENTED))

    @classmethod
    def parse(cls, spec: str | Iterable[str]) -> Enlightenments:
        """QEMU's spelling: ``"hv-time,hv_synic,hv-spinlocks=0x1fff"`` or a list of such
        entries.  ``hv-FEATURE=on|off``, ``hv-passthrough``, ``hv-vendor-id=...`` and
        ``hv-enforce-cpuid`` (pyhv always enforces: what is not offered raises #GP) are
        understood; entries that are not ``hv-``/``hv_`` ones are refused."""
        items = spec.split(",") if isinstance(spec, str) else list(spec)
        features: set[str] = set()
        spinlocks, vendor_id = DEFAULT_SPINLOCKS, tlfs.VENDOR_ID
        for raw in items:
            if not isinstance(raw, str):
                raise InvalidArgument(f"enlightenment {raw!r} is not a string")
            item = raw.strip()
            if not item:
                continue
            name, sep, value = item.partition("=")
            if not name.startswith(("hv-", "hv_")):
                raise InvalidArgument(f"{item!r} is not a Hyper-V flag (hv-...)")
            name = name[3:].replace("_", "-")
            if name == "passthrough":
                if _switch(item, value, sep):
                    features.update(IMPLEMENTED)
            elif name == "spinlocks":
                spinlocks = _number(item, value)
            elif name == "vendor-id":
                vendor_id = value
            elif name == "enforce-cpuid":
                _switch(item, value, sep)
            elif name in NOT_IMPLEMENTED:
                if _switch(item, value, sep):
                    raise InvalidArgument(f"hv-{name} is not implemented by pyhv: "
                                          f"{NOT_IMPLEMENTED[name]}")
            elif name in IMPLEMENTED:
                if _switch(item, value, sep):
                    features.add(name)
                else:
                    features.discard(name)
            else:
                raise InvalidArgument(f"unknown Hyper-V flag {item!r}; pyhv knows hv-"
                                      f"{', hv-'.join(IMPLEMENTED)}, hv-passthrough, "
                                      "hv-spinlocks=N, hv-vendor-id=S")
        return cls(frozenset(features), spinlocks, vendor_id)

    def describe(self) -> str:
        """QEMU's spelling of this set (what :meth:`parse` takes back)."""
        parts = [f"hv-{f}" for f in IMPLEMENTED if f in self.features]
        if self.spinlocks != DEFAULT_SPINLOCKS:
            parts.append(f"hv-spinlocks={self.spinlocks:#x}")
        if self.vendor_id != tlfs.VENDOR_ID:
            parts.append(f"hv-vendor-id={self.vendor_id}")
        return ",".join(parts)


def _switch(item: str, value: str, sep: str) -> bool:
    if not sep:
        return True
    lowered = value.lower()
    if lowered in ("on", "yes", "true", "1"):
        return True
    if lowered in ("off", "no", "false", "0"):
        return False
    raise InvalidArgument(f"{item!r}: the value must be on or off")


def _number(item: str, value: str) -> int:
    try:
        return int(value, 0)
    except ValueError:
        raise InvalidArgument(f"{item!r}: {value!r} is not a number") from None
