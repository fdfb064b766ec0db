"""The KVM system handle (/dev/kvm), backend detection and capability checks.

>>> import pyhv
>>> caps = pyhv.check()                      # doctest: +SKIP
>>> caps.backend, caps.api_version           # doctest: +SKIP
('kvm_pvm', 12)
"""

from __future__ import annotations

import dataclasses
import errno
import os
import threading
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ._ffi import ffi, lib
from .errors import HypervisorUnavailable, KvmError, MissingCapability, check_rc

DEFAULT_DEVICE = "/dev/kvm"
KVM_API_VERSION = 12

# What pyhv needs from KVM and why; a partition refuses to start without these.
REQUIRED_CAPABILITIES: Mapping[str, str] = {
    "KVM_CAP_USER_MEMORY": "guest memory slots",
    "KVM_CAP_SET_TSS_ADDR": "x86 partitions (real-mode support on Intel)",
    "KVM_CAP_EXT_CPUID": "giving vCPUs a CPUID table",
    "KVM_CAP_IMMEDIATE_EXIT": "race-free cancel and timeouts",
}
# What pyhv uses when present, and what is lost without it.
OPTIONAL_CAPABILITIES: Mapping[str, str] = {
    "KVM_CAP_READONLY_MEM": "read-only memory slots (ROM)",
    "KVM_CAP_SYNC_REGS": "register access without an ioctl per exit",
    "KVM_CAP_SET_IDENTITY_MAP_ADDR": "placing Intel's real-mode identity map",
    "KVM_CAP_NR_MEMSLOTS": "knowing how many memory slots a partition may have",
    "KVM_CAP_MAX_VCPUS": "knowing how many vCPUs a partition may have",
    "KVM_CAP_NR_VCPUS": "the recommended number of vCPUs",
    "KVM_CAP_IRQCHIP": "in-kernel interrupt controllers",
    "KVM_CAP_PIT2": "the in-kernel PIT",
    "KVM_CAP_COALESCED_MMIO": "write-only MMIO without an exit per write",
    "KVM_CAP_COALESCED_PIO": "write-only port IO without an exit per write",
    "KVM_CAP_IOEVENTFD": "doorbell writes without an exit",
    "KVM_CAP_SET_GUEST_DEBUG": "guest debugging (single step, breakpoints)",
    "KVM_CAP_XSAVE": "full FPU/vector state",
    "KVM_CAP_XCRS": "XCR0 state",
    "KVM_CAP_VCPU_EVENTS": "pending exceptions and interrupts in snapshots",
    "KVM_CAP_X86_USER_SPACE_MSR": "MSR accesses handled in Python",
    "KVM_CAP_DIRTY_LOG_RING": "dirty-page tracking by ring",
    "KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2": "cheap dirty-page tracking",
    "KVM_CAP_HYPERV": "Hyper-V enlightenments for guests",
    "KVM_CAP_TSC_CONTROL": "setting the guest TSC frequency",
}

_BACKENDS = {
    "kvm_intel": ("Intel VT-x", True),
    "kvm_amd": ("AMD-V (SVM)", True),
    "kvm_pvm": ("PVM, a software KVM without VT-x/AMD-V", False),
}


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


@dataclass(frozen=True)
class CpuidEntry:
    """One CPUID leaf/subleaf as KVM stores it (``flags`` is KVM's ``KVM_CPUID_FLAG_*``)."""

    function: int
    index: int
    flags: int
    eax: int
    ebx: int
    ecx: int
    edx: int


class Hypervisor:
    """An open KVM system handle (one ``/dev/kvm`` file descriptor).

    Most code never makes one: partitions share a process-wide handle (:func:`default`).

    >>> with pyhv.Hypervisor() as hv:        # doctest: +SKIP
    ...     hv.capability("KVM_CAP_NR_MEMSLOTS")
    32764
    """

    def __init__(self, path: str = DEFAULT_DEVICE) -> None:
        self.path = path
        fd = ffi.new("int *")
        rc = lib.pyhv_system_open(path.encode(), fd)
        if rc < 0:
            raise _unavailable(-rc, path)
        self.fd: int = fd[0]
        self._finalizer = weakref.finalize(self, lib.pyhv_close, self.fd)
        try:
            version = lib.pyhv_system_api_version(self.fd)
            if version < 0:
                raise HypervisorUnavailable(-version, f"KVM_GET_API_VERSION on {path}",
                                            "not a KVM device")
            if version != KVM_API_VERSION:
                raise HypervisorUnavailable(
                    errno.EPROTO, f"KVM API version {version}",
                    f"pyhv speaks version {KVM_API_VERSION}")
            self.api_version: int = version
            self.vcpu_mmap_size: int = check_rc(lib.pyhv_system_vcpu_mmap_size(self.fd),
                                             "KVM_GET_VCPU_MMAP_SIZE")
        except BaseException:
            self.close()
            raise
        self._cpuid: tuple[CpuidEntry, ...] | None = None
        self._caps: dict[int, int] = {}
        self._phys_bits: int | None = None
        self._cpuid_templates: dict[bool, tuple[Any, int, tuple[int, ...]]] = {}

    # -- lifetime -------------------------------------------------------------------------
    def close(self) -> None:
        """Close the handle (idempotent).  Partitions made from it keep working."""
        self._finalizer()

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def __enter__(self) -> Hypervisor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd={self.fd}"
        return f"<pyhv.Hypervisor {self.path} {state}>"

    # -- queries --------------------------------------------------------------------------
    def capability(self, name: str | int) -> int:
        """The value of a ``KVM_CAP_*`` capability (0 when absent), by name or number."""
        number = getattr(lib, name) if isinstance(name, str) else name
        value = self._caps.get(number)
        if value is None:        # the system fd's answers never change: ask once
            value = self._caps[number] = max(lib.pyhv_check_extension(self.fd, number), 0)
        return value

    def require(self, name: str, needed_for: str) -> int:
        """Like :meth:`capability`, but raise :class:`MissingCapability` when absent."""
        value = self.capability(name)
        if not value:
            raise MissingCapability(name, needed_for)
        return value

    def supported_cpuid(self) -> tuple[CpuidEntry, ...]:
        """The CPUID leaves KVM can offer a guest (``KVM_GET_SUPPORTED_CPUID``), cached."""
        if self._cpuid is None:
            self._cpuid = _read_cpuid(
                lambda buf, cap, n: lib.pyhv_system_supported_cpuid(self.fd, buf, cap, n),
                "KVM_GET_SUPPORTED_CPUID")
        return self._cpuid

    def msr_index_list(self) -> tuple[int, ...]:
        """MSR indices KVM saves and restores for a guest (``KVM_GET_MSR_INDEX_LIST``)."""
        cap = 4096
        buf = ffi.new("uint32_t[]", cap)
        n = ffi.new("uint32_t *")
        check_rc(lib.pyhv_system_msr_index_list(self.fd, buf, cap, n), "KVM_GET_MSR_INDEX_LIST")
        return tuple(buf[i] for i in range(n[0]))

    def guest_phys_bits(self) -> int:
        """Guest-physical address width (CPUID 0x80000008 EAX[7:0]); 36 if KVM hides it."""
        if self._phys_bits is None:
            self._phys_bits = next((e.eax & 0xFF for e in self.supported_cpuid()
                                    if e.function == 0x80000008), 0) or 36
        return self._phys_bits

    def _vcpu_cpuid(self, vcpu_id: int, sanitized: bool = False) -> tuple[Any, int]:
        """The supported CPUID table (``sanitized``: as :func:`sanitized_cpuid` makes it) as
        a C array for vCPU ``vcpu_id``: its APIC ID in leaf 1 EBX[31:24] and the x2APIC ID
        in leaves 0xB/0x1F EDX.  The table is built once per kind and copied per vCPU."""
        template_of = self._cpuid_templates.get(sanitized)
        if template_of is None:
            table = self.supported_cpuid()
            if sanitized:
                table = tuple(sanitized_cpuid(table))
            template = ffi.new("struct pyhv_cpuid_entry[]", max(len(table), 1))
            for i, e in enumerate(table):
                template[i] = (e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx)
            id_leaves = tuple(i for i, e in enumerate(table) if e.function in (1, 0xB, 0x1F))
            template_of = self._cpuid_templates[sanitized] = (template, len(table), id_leaves)
        template, n, id_leaves = template_of
        buf = ffi.new("struct pyhv_cpuid_entry[]", max(n, 1))
        ffi.memmove(buf, template, ffi.sizeof(template))
        for i in id_leaves:
            if buf[i].function == 1:
                buf[i].ebx = (buf[i].ebx & 0x00FFFFFF) | (vcpu_id & 0xFF) << 24
            else:
                buf[i].edx = vcpu_id
        return buf, n

    def info(self) -> Capabilities:
        """Everything :func:`check` reports, for this handle."""
        backend = detect_backend()
        description, hardware = _BACKENDS.get(backend, ("an unrecognised KVM backend", True))
        names = list(REQUIRED_CAPABILITIES) + list(OPTIONAL_CAPABILITIES)
        values = {name: self.capability(name) for name in names}
        missing = tuple(n for n in REQUIRED_CAPABILITIES if not values[n])
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


def _read_cpuid(query, operation: str) -> tuple[CpuidEntry, ...]:
    cap = 512
    while True:
        buf = ffi.new("struct pyhv_cpuid_entry[]", cap)
        n = ffi.new("uint32_t *")
        rc = query(buf, cap, n)
        if rc == -errno.E2BIG and cap < 4096:
            cap *= 2
            continue
        check_rc(rc, operation)
        return tuple(
            CpuidEntry(e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx)
            for e in (buf[i] for i in range(n[0]))
        )


@dataclass(frozen=True)
class Capabilities:
    """What :func:`pyhv.check` found: the backend, the API version and KVM's capabilities."""

    backend: str                    # "kvm_intel", "kvm_amd", "kvm_pvm" or "unknown"
    backend_description: str
    hardware: bool                  # hardware-assisted (VT-x/AMD-V) or software KVM
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

    def has(self, name: str) -> bool:
        return bool(self.capabilities.get(name, 0))

    def speed_note(self) -> str:
        if self.backend == "kvm_pvm":
            return ("software KVM: guest code at CPL0 is emulated instruction by instruction "
                    "(thousands of times slower than native); guest code at CPL3 runs natively")
        if self.hardware:
            return "hardware-assisted: guest code runs at native speed"
        return "unknown backend: speed unknown"

    def report(self) -> str:
        """A human-readable report (what ``pyhv doctor`` prints)."""
        lines = [
            f"device:       {self.device}",
            f"backend:      {self.backend} ({self.backend_description})",
            f"speed:        {self.speed_note()}",
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


# What a hardened partition hides from its guest's CPUID
CPUID_VMX = (1, "ecx", 1 << 5)
CPUID_SVM = (0x80000001, "ecx", 1 << 2)
CPUID_HYPERVISOR_LEAVES = range(0x40000000, 0x40000100)


def sanitized_cpuid(table: Iterable[CpuidEntry]) -> list[CpuidEntry]:
    """``table`` without VMX/SVM and without the KVM paravirtual leaves (0x4000_00xx)."""
    out = []
    for e in table:
        if e.function in CPUID_HYPERVISOR_LEAVES:
            continue
        for function, register, bit in (CPUID_VMX, CPUID_SVM):
            if e.function == function:
                e = dataclasses.replace(e, **{register: getattr(e, register) & ~bit})
        out.append(e)
    return out


_default: Hypervisor | None = None
_default_lock = threading.Lock()


def default() -> Hypervisor:
    """The process-wide handle that partitions use unless given one; opened on first use."""
    global _default
    with _default_lock:
        if _default is None or _default.closed:
            _default = Hypervisor()
        return _default


def check(path: str | None = None) -> Capabilities:
    """Open KVM and report its backend, API version and capabilities.

    Raises :class:`pyhv.HypervisorUnavailable` (with what to do) when KVM cannot be used.

    >>> caps = pyhv.check()                  # doctest: +SKIP
    >>> caps.ok, caps.hardware               # doctest: +SKIP
    (True, False)
    """
    if path is None:
        return default().info()
    with Hypervisor(path) as hv:
        return hv.info()


__all__ = [
    "Capabilities",
    "CpuidEntry",
    "Hypervisor",
    "KvmError",
    "check",
    "default",
    "detect_backend",
]
