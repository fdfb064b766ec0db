"""The KVM system handle (/dev/kvm), backend detection and capability checks.

>>> import pyhv
>>> caps = pyhv.check()
>>> caps.backend in ("kvm_intel", "kvm_amd", "kvm_pvm", "unknown"), caps.api_version
(True, 12)
>>> pyhv.Feature.IRQCHIP in pyhv.REQUIRED_FEATURES
False
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from .._native import Feature, SystemFd
from ..errors import HypervisorUnavailable, KvmError, MissingCapability
from ..x86 import cpuid as x86_cpuid
from ..x86.cpuid import CpuidEntry

T = TypeVar("T")

DEFAULT_DEVICE = "/dev/kvm"
KVM_API_VERSION = 12

# What pyhv needs from KVM and why; a partition refuses to start without these.
REQUIRED_FEATURES: Mapping[Feature, str] = {
    Feature.USER_MEMORY: "guest memory slots",
    Feature.SET_TSS_ADDR: "x86 partitions (real-mode support on Intel)",
    Feature.EXT_CPUID: "giving vCPUs a CPUID table",
    Feature.IMMEDIATE_EXIT: "race-free cancel and timeouts",
}
# What pyhv uses when present, and what is lost without it.
OPTIONAL_FEATURES: Mapping[Feature, str] = {
    Feature.READONLY_MEM: "read-only memory slots (ROM)",
    Feature.SYNC_REGS: "register access without an ioctl per exit",
    Feature.SET_IDENTITY_MAP_ADDR: "placing Intel's real-mode identity map",
    Feature.NR_MEMSLOTS: "knowing how many memory slots a partition may have",
    Feature.MAX_VCPUS: "knowing how many vCPUs a partition may have",
    Feature.NR_VCPUS: "the recommended number of vCPUs",
    Feature.IRQCHIP: "in-kernel interrupt controllers",
    Feature.PIT2: "the in-kernel PIT",
    Feature.COALESCED_MMIO: "write-only MMIO without an exit per write",
    Feature.COALESCED_PIO: "write-only port IO without an exit per write",
    Feature.IOEVENTFD: "doorbell writes without an exit",
    Feature.SET_GUEST_DEBUG: "guest debugging (single step, breakpoints)",
    Feature.XSAVE: "full FPU/vector state",
    Feature.XCRS: "XCR0 state",
    Feature.VCPU_EVENTS: "pending exceptions and interrupts in snapshots",
    Feature.X86_USER_SPACE_MSR: "MSR accesses handled in Python",
    Feature.X86_MSR_FILTER: "hardened partitions and MSR handlers",
    Feature.DIRTY_LOG_RING: "dirty-page tracking by ring",
    Feature.MANUAL_DIRTY_LOG_PROTECT2: "cheap dirty-page tracking",
    Feature.HYPERV: "Hyper-V enlightenments for guests",
    Feature.TSC_CONTROL: "setting the guest TSC frequency",
}
# The same, by kernel name (older spellings of the API)
REQUIRED_CAPABILITIES: Mapping[str, str] = {f.kvm_name: why for f, why in REQUIRED_FEATURES.items()}
OPTIONAL_CAPABILITIES: Mapping[str, str] = {f.kvm_name: why for f, why in OPTIONAL_FEATURES.items()}

# backend -> (description, hardware-assisted); an unrecognised one is neither said to be
# hardware nor software: `pyhv doctor` measures what it does
_BACKENDS = {
    "kvm_intel": ("Intel VT-x", True),
    "kvm_amd": ("AMD-V (SVM)", True),
    "kvm_pvm": ("PVM, a software KVM without VT-x/AMD-V", False),
}
UNKNOWN_BACKEND = ("an unrecognised KVM backend (no kvm_intel, kvm_amd or kvm_pvm module "
                   "loaded)", None)
# added to emulation-failure messages on kvm_pvm
PVM_EMULATION_NOTE = ("kvm_pvm also reports this way some instructions that should raise #UD "
                      "or #BP at ring 0, such as xgetbv with CR4.OSXSAVE off, rdpru, invpcid "
                      "or int3")


def detect_backend(sys_module: str = "/sys/module") -> str:
    """Name the KVM vendor module behind /dev/kvm: ``kvm_intel``, ``kvm_amd``, ``kvm_pvm``
    or ``unknown``.  x86 KVM allows one vendor module at a time, so the loaded one is it."""
    for name in _BACKENDS:
        if os.path.isdir(os.path.join(sys_module, name)):
            return name
    return "unknown"


def _unavailable(err: int, path: str) -> HypervisorUnavailable:
    if err == errno.ENOENT:
        hint = ("no KVM device: enable VT-x/AMD-V in the firmware (BIOS/UEFI) setup and load "
                "the kvm module (`modprobe kvm_intel` or `modprobe kvm_amd`)")
    elif err in (errno.EACCES, errno.EPERM):
        hint = (f"no permission to open {path}: add your user to the kvm group "
                "(`sudo usermod -aG kvm $USER`, then log in again) or run as root")
    elif err == errno.ENXIO or err == errno.ENODEV:
        hint = "the KVM device exists but no KVM module serves it: load kvm_intel or kvm_amd"
    else:
        hint = "check that KVM is enabled and loaded"
    return HypervisorUnavailable(err, f"open {path}", hint)


class Hypervisor:
    """An open KVM system handle (one ``/dev/kvm`` file descriptor).

    Most code never makes one: partitions share a process-wide handle (:func:`default`).

    >>> import pyhv
    >>> with pyhv.Hypervisor() as hv:
    ...     hv.capability(pyhv.Feature.NR_MEMSLOTS) > 0, hv.capability("KVM_CAP_USER_MEMORY")
    (True, 1)
    """

    def __init__(self, path: str = DEFAULT_DEVICE) -> None:
        self.path = path
        try:
            self.system = SystemFd.open(path)
        except KvmError as exc:
            raise _unavailable(exc.errno or errno.EIO, path) from None
        try:
            version = self.system.api_version()
            if version < 0:
                raise HypervisorUnavailable(-version, f"KVM_GET_API_VERSION on {path}",
                                            "not a KVM device")
            if version != KVM_API_VERSION:
                raise HypervisorUnavailable(
                    errno.EPROTO, f"KVM API version {version}",
                    f"pyhv speaks version {KVM_API_VERSION}")
            self.api_version: int = version
            self.vcpu_mmap_size: int = self.system.vcpu_mmap_size()
        except BaseException:
            self.close()
            raise
        self._cpuid: tuple[CpuidEntry, ...] | None = None
        self._caps: dict[int, int] = {}
        self._phys_bits: int | None = None
        self._cpuid_tables: dict[bool, tuple[CpuidEntry, ...]] = {}
        self._backend: str | None = None
        self._memo: dict[object, Any] = {}
        self._basics_ok = False

    # -- lifetime -------------------------------------------------------------------------
    def close(self) -> None:
        """Close the handle (idempotent).  Partitions made from it keep working."""
        self.system.close()

    @property
    def closed(self) -> bool:
        return self.system.closed

    @property
    def fd(self) -> int:
        return self.system.fd

    def __enter__(self) -> Hypervisor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd={self.fd}"
        return f"<pyhv.Hypervisor {self.path} {state}>"

    # -- queries --------------------------------------------------------------------------
    def capability(self, feature: Feature | str | int) -> int:
        """The value of a KVM capability (0 when absent): a :class:`pyhv.Feature`, its
        ``KVM_CAP_*`` name, or a raw capability number."""
        number = feature if isinstance(feature, int) else Feature.parse(feature)
        value = self._caps.get(number)
        if value is None:        # the system fd's answers never change: ask once
            value = self._caps[number] = self.system.check_extension(number)
        return value

    def require(self, feature: Feature | str, needed_for: str) -> int:
        """Like :meth:`capability`, but raise :class:`MissingCapability` when absent."""
        value = self.capability(feature)
        if not value:
            name = Feature.parse(feature).kvm_name
            raise MissingCapability(name, needed_for)
        return value

    def require_basics(self) -> None:
        """Raise :class:`MissingCapability` for the first capability every partition needs
        (:data:`REQUIRED_FEATURES`) that KVM lacks; asked once per handle."""
        if not self._basics_ok:
            for feature, why in REQUIRED_FEATURES.items():
                self.require(feature, why)
            self._basics_ok = True

    @property
    def backend(self) -> str:
        """The KVM backend (see :func:`detect_backend`), asked once."""
        if self._backend is None:
            self._backend = detect_backend()
        return self._backend

    @property
    def backend_note(self) -> str:
        """What emulation-failure messages should add about this backend."""
        return PVM_EMULATION_NOTE if self.backend == "kvm_pvm" else ""

    def supported_cpuid(self) -> tuple[CpuidEntry, ...]:
        """The CPUID leaves KVM can offer a guest (``KVM_GET_SUPPORTED_CPUID``), cached."""
        if self._cpuid is None:
            self._cpuid = self.system.supported_cpuid()
        return self._cpuid

    def msr_index_list(self) -> tuple[int, ...]:
        """MSR indices KVM saves and restores for a guest (``KVM_GET_MSR_INDEX_LIST``)."""
        return self.system.msr_index_list()

    def guest_phys_bits(self) -> int:
        """Guest-physical address width (CPUID 0x80000008 EAX[7:0]); 36 if KVM hides it."""
        if self._phys_bits is None:
            self._phys_bits = x86_cpuid.phys_bits(self.supported_cpuid())
        return self._phys_bits

    def default_cpuid(self, sanitized: bool = False) -> tuple[CpuidEntry, ...]:
        """The table vCPUs get by default: all KVM supports, or (``sanitized``) without
        VMX/SVM and the hypervisor leaves; cached.  :func:`pyhv.x86.cpuid.for_vcpu` then
        puts each vCPU's APIC ID in."""
        table = self._cpuid_tables.get(sanitized)
        if table is None:
            table = self.supported_cpuid()
            if sanitized:
                table = tuple(x86_cpuid.sanitized(table))
            self._cpuid_tables[sanitized] = table
        return table

    def memo(self, key: object, make: Callable[[], T]) -> T:
        """What ``make()`` returns, made once per ``key`` for this handle: things derived from
        the kernel's answers that are the same in every VM (KVM's reset registers, prepared
        vCPU setups).  Bounded: past 512 keys it starts again."""
        try:
            return cast(T, self._memo[key])
        except KeyError:
            pass
        return self.remember(key, make())

    def recall(self, key: object) -> Any:
        """What :meth:`memo` or :meth:`remember` kept for ``key``, or None."""
        return self._memo.get(key)

    def remember(self, key: object, value: T) -> T:
        if len(self._memo) >= 512:
            self._memo.clear()
        self._memo[key] = value
        return value

    def info(self) -> Capabilities:
        """Everything :func:`check` reports, for this handle."""
        backend = self.backend
        description, hardware = _BACKENDS.get(backend, UNKNOWN_BACKEND)
        values = {f.kvm_name: self.capability(f)
                  for f in list(REQUIRED_FEATURES) + list(OPTIONAL_FEATURES)}
        missing = tuple(f.kvm_name for f in REQUIRED_FEATURES if not values[f.kvm_name])
        return Capabilities(
            backend=backend,
            backend_description=description,
            hardware=hardware,
            device=self.path,
            api_version=self.api_version,
            capabilities=values,
            missing=missing,
            memory_slots=values["KVM_CAP_NR_MEMSLOTS"],
            max_vcpus=values["KVM_CAP_MAX_VCPUS"] or values["KVM_CAP_NR_VCPUS"],
            recommended_vcpus=values["KVM_CAP_NR_VCPUS"],
        )


@dataclass(frozen=True)
class Capabilities:
    """What :func:`pyhv.check` found: the backend, the API version and KVM's capabilities."""

    backend: str                    # "kvm_intel", "kvm_amd", "kvm_pvm" or "unknown"
    backend_description: str
    hardware: bool | None           # hardware-assisted (VT-x/AMD-V), software, or not known
    device: str
    api_version: int
    capabilities: Mapping[str, int]
    missing: tuple[str, ...]        # required capabilities that are absent
    memory_slots: int
    max_vcpus: int
    recommended_vcpus: int

    @property
    def ok(self) -> bool:
        """True when every capability pyhv requires is present."""
        return not self.missing

    def has(self, feature: Feature | str) -> bool:
        """Whether the capability is present (a :class:`pyhv.Feature` or its name)."""
        return bool(self.capabilities.get(Feature.parse(feature).kvm_name, 0))

    @property
    def kind(self) -> str:
        """"hardware", "software" or "unknown" (for messages)."""
        return "unknown" if self.hardware is None else "hardware" if self.hardware else \
            "software"

    def speed_note(self) -> str:
        """What the backend's kind implies for speed, before anything is measured (``pyhv
        doctor`` measures it)."""
        if self.hardware is None:
            return "unknown backend: speed unknown until measured"
        if self.hardware:
            return "hardware-assisted: guest code should run at native speed"
        return ("software KVM: guest code at CPL0 should be emulated (thousands of times "
                "slower than native) and guest code at CPL3 run natively")

    def report(self) -> str:
        """A human-readable report (what ``pyhv doctor`` prints)."""
        lines = [
            f"device:       {self.device}",
            f"backend:      {self.backend} ({self.backend_description})",
            f"expected:     {self.speed_note()}",
            f"API version:  {self.api_version}",
            f"memory slots: {self.memory_slots}",
            f"vCPUs:        {self.recommended_vcpus} recommended, {self.max_vcpus} max",
            "required capabilities:",
        ]
        for name, why in REQUIRED_CAPABILITIES.items():
            mark = "ok     " if self.capabilities[name] else "MISSING"
            lines.append(f"  {mark} {name:36} {why}")
        lines.append("optional capabilities:")
        for name, why in OPTIONAL_CAPABILITIES.items():
            value = self.capabilities[name]
            mark = f"{value:<7}" if value else "absent "
            lines.append(f"  {mark} {name:36} {why}")
        return "\n".join(lines)


_default: Hypervisor | None = None
_default_lock = threading.Lock()


def default() -> Hypervisor:
    """The process-wide handle that partitions use unless given one; opened on first use."""
    global _default
    handle = _default
    if handle is not None and not handle.closed:    # every partition asks: no lock then
        return handle
    with _default_lock:
        if _default is None or _default.closed:
            _default = Hypervisor()
        return _default


def check(path: str | None = None) -> Capabilities:
    """Open KVM and report its backend, API version and capabilities.

    Raises :class:`pyhv.HypervisorUnavailable` (with what to do) when KVM cannot be used.

    >>> import pyhv
    >>> pyhv.check().ok
    True
    """
    if path is None:
        return default().info()
    with Hypervisor(path) as hv:
        return hv.info()


__all__ = [
    "OPTIONAL_FEATURES",
    "REQUIRED_FEATURES",
    "Capabilities",
    "Hypervisor",
    "check",
    "default",
    "detect_backend",
]
