"""CPU models and feature names, spelled as QEMU's ``-cpu`` spells them, and the CPUID table
each gives a guest.

``MODEL[,+feat][,-feat][,feat=on|off][,vendor=...][,family=N][,model=N][,stepping=N]
[,level=N][,xlevel=N][,model-id=...][,phys-bits=N][,host-phys-bits=on|off][,kvm=off]
[,enforce][,check][,migratable=..][,hv-...]``:

>>> from pyhv.x86 import cpu_models
>>> model = cpu_models.parse("qemu64,+x2apic,-svm,vendor=GenuineIntel,hv-time")
>>> model.name, model.vendor, sorted(model.plus), sorted(model.minus), model.hyperv
('qemu64', 'GenuineIntel', ['x2apic'], ['svm'], ('hv-time',))
>>> cpu_models.parse("qemu64,+no-such-flag")
Traceback (most recent call last):
pyhv.errors.InvalidArgument: -cpu qemu64,+no-such-flag: unknown CPU feature 'no-such-flag'

Entries starting with ``hv-`` or ``hv_`` are Hyper-V enlightenments: they are kept unparsed
in :attr:`CpuModel.hyperv` for whoever implements them.  :meth:`CpuModel.cpuid` builds the
table from what KVM supports (``KVM_GET_SUPPORTED_CPUID``): ``host`` and ``max`` start from all
of it; the named models (``qemu64``, ``kvm64``, ``Opteron_G1``, ...) set their own vendor,
signature, levels and model string and offer only their features, each filtered by what KVM
supports.  Features asked for that KVM lacks are dropped and listed (QEMU warns the same way),
or refused with ``enforce``:

>>> from pyhv.x86.cpuid import CpuidEntry
>>> kvm = [CpuidEntry(0, 0, 0, 0xD, 0, 0, 0), CpuidEntry(1, 0, 0, 0, 0, 1 << 21, 1 << 0),
...        CpuidEntry(0x80000000, 0, 0, 0x80000008, 0, 0, 0)]
>>> table, missing = cpu_models.parse("qemu64,+x2apic").cpuid(kvm)
>>> leaf1 = next(e for e in table if e.function == 1)
>>> hex(leaf1.eax), bool(leaf1.ecx & 1 << 21), bool(leaf1.edx & 1)
('0x60fb1', True, True)
>>> missing[:3]
['pni', 'cx16', 'hypervisor']
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..errors import InvalidArgument
from .cpuid import CpuidEntry

__all__ = ["FEATURES", "MODELS", "CpuModel", "Feature", "parse"]


@dataclass(frozen=True)
class Feature:
    """Where a feature flag lives: CPUID ``function``/``index``, a register and a bit."""

    function: int
    index: int
    register: str
    bit: int


def _leaf(function: int, index: int, register: str, names: dict[int, str]) -> dict[str, Feature]:
    return {name: Feature(function, index, register, bit) for bit, name in names.items()}


# QEMU's names for the feature bits (target/i386's feature words), by leaf
FEATURES: dict[str, Feature] = {
    **_leaf(1, 0, "edx", {
        0: "fpu", 1: "vme", 2: "de", 3: "pse", 4: "tsc", 5: "msr", 6: "pae", 7: "mce", 8: "cx8",
        9: "apic", 11: "sep", 12: "mtrr", 13: "pge", 14: "mca", 15: "cmov", 16: "pat",
        17: "pse36", 18: "pn", 19: "clflush", 21: "ds", 22: "acpi", 23: "mmx", 24: "fxsr",
        25: "sse", 26: "sse2", 27: "ss", 28: "ht", 29: "tm", 30: "ia64", 31: "pbe"}),
    **_leaf(1, 0, "ecx", {
        0: "pni", 1: "pclmulqdq", 2: "dtes64", 3: "monitor", 4: "ds-cpl", 5: "vmx", 6: "smx",
        7: "est", 8: "tm2", 9: "ssse3", 10: "cid", 12: "fma", 13: "cx16", 14: "xtpr",
        15: "pdcm", 17: "pcid", 18: "dca", 19: "sse4.1", 20: "sse4.2", 21: "x2apic",
        22: "movbe", 23: "popcnt", 24: "tsc-deadline", 25: "aes", 26: "xsave", 27: "osxsave",
        28: "avx", 29: "f16c", 30: "rdrand", 31: "hypervisor"}),
    **_leaf(6, 0, "eax", {2: "arat"}),
    **_leaf(7, 0, "ebx", {
        0: "fsgsbase", 1: "tsc-adjust", 2: "sgx", 3: "bmi1", 4: "hle", 5: "avx2", 7: "smep",
        8: "bmi2", 9: "erms", 10: "invpcid", 11: "rtm", 14: "mpx", 16: "avx512f",
        17: "avx512dq", 18: "rdseed", 19: "adx", 20: "smap", 21: "avx512ifma",
        22: "pcommit", 23: "clflushopt", 24: "clwb", 25: "intel-pt", 26: "avx512pf",
        27: "avx512er", 28: "avx512cd", 29: "sha-ni", 30: "avx512bw", 31: "avx512vl"}),
    **_leaf(7, 0, "ecx", {
        0: "prefetchwt1", 1: "avx512vbmi", 2: "umip", 3: "pku", 4: "ospke", 5: "waitpkg",
        6: "avx512vbmi2", 8: "gfni", 9: "vaes", 10: "vpclmulqdq", 11: "avx512vnni",
        12: "avx512bitalg", 14: "avx512-vpopcntdq", 16: "la57", 22: "rdpid",
        24: "bus-lock-detect", 25: "cldemote", 27: "movdiri", 28: "movdir64b", 29: "enqcmd",
        30: "sgxlc", 31: "pks"}),
    **_leaf(7, 0, "edx", {
        2: "avx512-4vnniw", 3: "avx512-4fmaps", 4: "fsrm", 8: "avx512-vp2intersect",
        10: "md-clear", 14: "serialize", 16: "tsx-ldtrk", 18: "pconfig", 19: "arch-lbr",
        22: "amx-bf16", 23: "avx512-fp16", 24: "amx-tile", 25: "amx-int8", 26: "spec-ctrl",
        27: "stibp", 28: "flush-l1d", 29: "arch-capabilities", 30: "core-capability",
        31: "ssbd"}),
    **_leaf(7, 1, "eax", {4: "avx-vnni", 5: "avx512-bf16", 10: "fzrm", 11: "fsrs", 12: "fsrc",
                          26: "lam"}),
    **_leaf(0xD, 1, "eax", {0: "xsaveopt", 1: "xsavec", 2: "xgetbv1", 3: "xsaves"}),
    **_leaf(0x80000001, 0, "edx", {
        11: "syscall", 20: "nx", 22: "mmxext", 25: "fxsr-opt", 26: "pdpe1gb", 27: "rdtscp",
        29: "lm", 30: "3dnowext", 31: "3dnow"}),
    **_leaf(0x80000001, 0, "ecx", {
        0: "lahf-lm", 1: "cmp-legacy", 2: "svm", 3: "extapic", 4: "cr8legacy", 5: "abm",
        6: "sse4a", 7: "misalignsse", 8: "3dnowprefetch", 9: "osvw", 10: "ibs", 11: "xop",
        12: "skinit", 13: "wdt", 15: "lwp", 16: "fma4", 17: "tce", 19: "nodeid-msr", 21: "tbm",
        22: "topoext", 23: "perfctr-core", 24: "perfctr-nb"}),
    **_leaf(0x80000007, 0, "edx", {8: "invtsc"}),
    **_leaf(0x80000008, 0, "ebx", {
        0: "clzero", 2: "xsaveerptr", 9: "wbnoinvd", 12: "ibpb", 14: "ibrs", 15: "amd-stibp",
        24: "amd-ssbd", 25: "virt-ssbd", 26: "amd-no-ssb"}),
    **_leaf(0x4000_0001, 0, "eax", {
        0: "kvmclock", 1: "kvm-nopiodelay", 2: "kvm-mmu", 3: "kvmclock2", 4: "kvm-asyncpf",
        5: "kvm-steal-time", 6: "kvm-pv-eoi", 7: "kvm-pv-unhalt", 9: "kvm-pv-tlb-flush",
        10: "kvm-asyncpf-vmexit", 11: "kvm-pv-ipi", 12: "kvm-poll-control",
        13: "kvm-pv-sched-yield", 14: "kvm-asyncpf-int", 15: "kvm-msi-ext-dest-id",
        24: "kvmclock-stable-bit"}),
}
# QEMU names two bits "kvmclock" (the old and the new paravirtual clock MSRs): the name sets
# both; "kvmclock2" is pyhv's name for the second alone
TWINS = {"kvmclock": ("kvmclock2",)}
# QEMU's other spellings (underscores also stand for dashes)
ALIASES = {"sse3": "pni", "sse4-1": "sse4.1", "sse4-2": "sse4.2", "xd": "nx", "ffxsr": "fxsr-opt",
           "i64": "lm", "kvmclock-stable": "kvmclock-stable-bit", "hypervisor": "hypervisor",
           "pclmuldq": "pclmulqdq", "tsc-deadline-timer": "tsc-deadline", "sha": "sha-ni"}
# leaves whose bits a named model gives only when it names them
MODEL_WORDS = {(f.function, f.index, f.register) for f in FEATURES.values()}
KVM_LEAF = 0x40000001

_PPRO = ("fpu", "de", "pse", "tsc", "msr", "mce", "cx8", "pge", "cmov", "pat", "fxsr", "mmx",
         "sse", "sse2", "pae", "sep", "apic")
_P6_PLUS = _PPRO + ("mtrr", "clflush", "mca", "pse36")
_OPTERON = _P6_PLUS + ("vme",)
# what QEMU's models get under KVM (its kvm_default_props): the paravirtual clock and friends
# and x2apic on, and never ACPI thermal control, MONITOR or SVM
_KVM_ON = ("kvmclock", "kvm-nopiodelay", "kvm-asyncpf", "kvm-steal-time", "kvm-pv-eoi",
           "kvmclock-stable-bit", "x2apic", "hypervisor")
_KVM_OFF = ("acpi", "monitor", "svm")


@dataclass(frozen=True)
class _Definition:
    vendor: str
    family: int
    model: int
    stepping: int
    level: int
    xlevel: int
    model_id: str
    features: tuple[str, ...]


QEMU_MODEL_ID = "QEMU Virtual CPU version 2.5+"
# the named models pyhv knows: QEMU's definitions of their vendor, signature, levels, model
# string and features (first versions; host and max are not here: they take all KVM offers)
MODELS: dict[str, _Definition] = {
    "qemu64": _Definition("AuthenticAMD", 15, 107, 1, 0xD, 0x8000000A, QEMU_MODEL_ID,
                          _P6_PLUS + ("pni", "cx16", "lm", "syscall", "nx", "lahf-lm", "svm")),
    "qemu32": _Definition("GenuineIntel", 6, 6, 3, 4, 0x80000004, QEMU_MODEL_ID,
                          _PPRO + ("pni",)),
    "kvm64": _Definition("GenuineIntel", 15, 6, 1, 0xD, 0x80000008, "Common KVM processor",
                         _P6_PLUS + ("pni", "cx16", "lm", "syscall", "nx")),
    "kvm32": _Definition("GenuineIntel", 15, 6, 1, 5, 0x80000008,
                         "Common 32-bit KVM processor", _P6_PLUS + ("pni",)),
    "Opteron_G1": _Definition("AuthenticAMD", 15, 6, 1, 5, 0x80000008,
                              "AMD Opteron 240 (Gen 1 Class Opteron)",
                              _OPTERON + ("pni", "lm", "nx", "syscall")),
    "IvyBridge": _Definition("GenuineIntel", 6, 58, 9, 0xD, 0x80000008,
                             "Intel Xeon E3-12xx v2 (Ivy Bridge)",
                             _OPTERON + ("avx", "xsave", "aes", "tsc-deadline", "popcnt",
                                         "x2apic", "sse4.2", "sse4.1", "cx16", "ssse3",
                                         "pclmulqdq", "pni", "f16c", "rdrand", "fsgsbase",
                                         "smep", "erms", "rdtscp", "nx", "syscall", "lm",
                                         "lahf-lm", "xsaveopt", "arat")),
    "Skylake-Server": _Definition(
        "GenuineIntel", 6, 85, 4, 0xD, 0x80000008, "Intel Xeon Processor (Skylake)",
        _OPTERON + ("avx", "xsave", "aes", "popcnt", "x2apic", "sse4.2", "sse4.1", "cx16",
                    "ssse3", "pclmulqdq", "pni", "tsc-deadline", "fma", "movbe", "pcid", "f16c",
                    "rdrand", "pdpe1gb", "rdtscp", "nx", "syscall", "lm", "abm", "lahf-lm",
                    "3dnowprefetch", "fsgsbase", "bmi1", "hle", "avx2", "smep", "bmi2", "erms",
                    "invpcid", "rtm", "mpx", "rdseed", "adx", "smap", "clwb", "avx512f",
                    "avx512dq", "avx512bw", "avx512cd", "avx512vl", "clflushopt", "pku",
                    "xsaveopt", "xsavec", "xgetbv1", "arat")),
}
PASSTHROUGH = ("host", "max")
# options QEMU takes that change nothing pyhv offers (its CPUID already has the host's
# physical address width and cache leaves; pyhv never migrates)
NEUTRAL_OPTIONS = {"migratable", "host-cache-info", "l3-cache", "check", "pmu", "x-force-features"}


def feature_name(name: str) -> str:
    """QEMU's canonical name for ``name`` (underscores and aliases resolved), or
    InvalidArgument."""
    canonical = name.replace("_", "-")
    canonical = ALIASES.get(canonical, canonical)
    if canonical.startswith("vmx-"):
        raise InvalidArgument(f"{name}: pyhv does not shape nested VMX capabilities (vmx-* "
                              "features)")
    if canonical not in FEATURES:
        raise InvalidArgument(f"unknown CPU feature {name!r}")
    return canonical


def _number(key: str, text: str, spec: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise InvalidArgument(f"-cpu {spec}: {key}={text!r} is not a number") from None


def _switch(key: str, text: str, spec: str) -> bool:
    if text in ("on", "yes", "true", "1", ""):
        return True
    if text in ("off", "no", "false", "0"):
        return False
    raise InvalidArgument(f"-cpu {spec}: {key}={text!r} is neither on nor off")


def signature(family: int, model: int, stepping: int) -> int:
    """CPUID leaf 1 EAX for a family/model/stepping (extended fields as x86 encodes them)."""
    eax = (stepping & 0xF) | (model & 0xF) << 4 | (model >> 4 & 0xF) << 16
    if family > 0xF:
        return eax | 0xF << 8 | (family - 0xF & 0xFF) << 20
    return eax | family << 8


@dataclass(frozen=True)
class CpuModel:
    """A parsed ``-cpu`` value (see the module docstring); :meth:`cpuid` builds its table."""

    name: str = "host"
    vendor: str | None = None
    family: int | None = None
    model: int | None = None
    stepping: int | None = None
    level: int | None = None
    xlevel: int | None = None
    model_id: str | None = None
    phys_bits: int | None = None
    plus: frozenset[str] = frozenset()          # +feat and feat=on
    minus: frozenset[str] = frozenset()         # -feat and feat=off (they win, as in QEMU)
    kvm: bool = True                            # kvm=off hides the KVM leaves
    enforce: bool = False
    hyperv: tuple[str, ...] = ()                # hv-* entries, unparsed
    spec: str = field(default="host", compare=False)

    @property
    def passthrough(self) -> bool:
        return self.name in PASSTHROUGH

    def cpuid(self, supported: Iterable[CpuidEntry], *,
              irqchip: bool = True) -> tuple[list[CpuidEntry], list[str]]:
        """The CPUID table for this model out of ``supported`` (what KVM offers), and the
        features asked for that KVM cannot give (dropped; with ``enforce``, refused).  Without
        ``irqchip`` there is no x2APIC to offer.  Per-vCPU APIC IDs are still to be put in
        (:func:`pyhv.x86.cpuid.for_vcpu`)."""
        kvm = {(e.function, e.index): e for e in supported}
        definition = None if self.passthrough else MODELS[self.name]
        wanted: set[str] = set()
        if definition is not None:
            wanted = (set(definition.features) | set(_KVM_ON)) - set(_KVM_OFF)
        minus = _with_twins(self.minus)
        wanted = (_with_twins(wanted) | _with_twins(self.plus)) - minus
        if not irqchip:
            wanted.discard("x2apic")

        def has(name: str) -> bool:
            f = FEATURES[name]
            e = kvm.get((f.function, f.index))
            if name == "x2apic" and not irqchip:
                return False
            return e is not None and bool(getattr(e, f.register) >> f.bit & 1)

        missing = sorted((n for n in wanted if not has(n)),
                         key=lambda n: (FEATURES[n].function, FEATURES[n].index,
                                        FEATURES[n].register, FEATURES[n].bit))
        if missing and self.enforce:
            raise InvalidArgument(f"-cpu {self.spec}: KVM cannot give the guest "
                                  f"{', '.join(missing)} (enforce)")
        # each feature word: a named model's own bits, or (host, max) all KVM's, with the
        # asked-for changes
        words: dict[tuple[int, int, str], int] = {}
        for name, f in FEATURES.items():
            key = (f.function, f.index, f.register)
            if key not in words:
                e = kvm.get((f.function, f.index))
                words[key] = getattr(e, f.register) if e is not None and definition is None \
                    else 0
            on = has(name) and (name in wanted if definition is not None
                                else name not in minus)
            bit = 1 << f.bit
            words[key] = words[key] | bit if on else words[key] & ~bit
        table = [self._edit(e, words, definition) for e in kvm.values()]
        level = self.level if self.level is not None else (
            definition.level if definition else None)
        xlevel = self.xlevel if self.xlevel is not None else (
            definition.xlevel if definition else None)
        out = []
        for e in table:
            if level is not None and e.function < 0x40000000 and e.function > level:
                continue
            if xlevel is not None and e.function >= 0x80000000 and e.function > xlevel:
                continue
            if not self.kvm and 0x40000000 <= e.function < 0x40000100:
                continue
            out.append(e)
        return self._levels(out, level, xlevel, definition), missing

    def _edit(self, e: CpuidEntry, words: dict[tuple[int, int, str], int],
              definition: _Definition | None) -> CpuidEntry:
        changes = {register: words[(e.function, e.index, register)]
                   for register in ("eax", "ebx", "ecx", "edx")
                   if (e.function, e.index, register) in words}
        family = self.family if self.family is not None else (
            definition.family if definition else None)
        if family is not None and e.function in (1, 0x80000001):
            model = self.model if self.model is not None else (
                definition.model if definition else 0)
            stepping = self.stepping if self.stepping is not None else (
                definition.stepping if definition else 0)
            changes["eax"] = signature(family, model, stepping)
        if self.phys_bits is not None and e.function == 0x80000008:
            changes["eax"] = e.eax & ~0xFF | self.phys_bits
        return dataclasses.replace(e, **changes) if changes else e

    def _levels(self, table: list[CpuidEntry], level: int | None, xlevel: int | None,
                definition: _Definition | None) -> list[CpuidEntry]:
        """Leaves 0 and 0x80000000 (levels, vendor) and the model string leaves."""
        vendor = self.vendor or (definition.vendor if definition else None)
        model_id = self.model_id if self.model_id is not None else (
            definition.model_id if definition else None)
        regs = _vendor_registers(vendor) if vendor else None
        names = _model_id_leaves(model_id) if model_id is not None else {}
        out = []
        for e in table:
            if e.function == 0:
                e = dataclasses.replace(e, eax=e.eax if level is None else level,
                                        **(regs or {}))
            elif e.function == 0x80000000:
                e = dataclasses.replace(e, eax=e.eax if xlevel is None else xlevel,
                                        **(regs or {}))
            elif e.function in names:
                e = dataclasses.replace(e, **names[e.function])
            out.append(e)
        present = {e.function for e in out}
        for function, regs4 in names.items():     # KVM may not list them: add them
            if function not in present and (xlevel is None or function <= xlevel):
                out.append(CpuidEntry(function, 0, 0, **regs4))
        return out


def _with_twins(names: Iterable[str]) -> set[str]:
    return set(names).union(*(TWINS.get(n, ()) for n in names))


def _vendor_registers(vendor: str) -> dict[str, int]:
    raw = vendor.encode()
    return {"ebx": int.from_bytes(raw[0:4], "little"), "edx": int.from_bytes(raw[4:8], "little"),
            "ecx": int.from_bytes(raw[8:12], "little")}


def _model_id_leaves(model_id: str) -> dict[int, dict[str, int]]:
    raw = model_id.encode()[:47].ljust(48, b"\0")
    return {0x80000002 + i: {r: int.from_bytes(raw[16 * i + 4 * j:16 * i + 4 * j + 4], "little")
                             for j, r in enumerate(("eax", "ebx", "ecx", "edx"))}
            for i in range(3)}


def parse(spec: str) -> CpuModel:
    """A ``-cpu`` value as QEMU writes it (see the module docstring)."""
    if not isinstance(spec, str) or not spec:
        raise InvalidArgument(f"-cpu {spec!r}: give a CPU model (host, max, qemu64, ...)")
    name, *items = spec.split(",")
    if name not in PASSTHROUGH and name not in MODELS:
        raise InvalidArgument(f"-cpu {spec}: unknown CPU model {name!r} (known: "
                              f"{', '.join(list(PASSTHROUGH) + list(MODELS))})")
    plus: set[str] = set()
    minus: set[str] = set()
    switched: dict[str, bool] = {}
    values: dict[str, object] = {}
    hyperv: list[str] = []
    for item in items:
        if not item:
            continue
        try:
            if item.startswith(("hv-", "hv_")):
                hyperv.append(item)
            elif item[0] in "+-":
                (plus if item[0] == "+" else minus).add(feature_name(item[1:]))
            else:
                _option(item, spec, switched, values)
        except InvalidArgument as exc:
            if str(exc).startswith("-cpu"):
                raise
            raise InvalidArgument(f"-cpu {spec}: {exc}") from None
    for feat, on in switched.items():        # feat=on|off, in order; then +feat, -feat win
        (plus if on else minus).add(feat)
        (minus if on else plus).discard(feat)
    plus -= minus
    return CpuModel(name=name, plus=frozenset(plus), minus=frozenset(minus),
                    hyperv=tuple(hyperv), spec=spec, **values)  # type: ignore[arg-type]


def _option(item: str, spec: str, switched: dict[str, bool], values: dict[str, object]) -> None:
    """One ``key=value`` (or bare ``key``) entry of ``-cpu``."""
    key, _, text = item.partition("=")
    key = key.replace("_", "-")
    if key == "vendor":
        if len(text.encode()) != 12:
            raise InvalidArgument(f"-cpu {spec}: vendor={text!r} must be 12 characters "
                                  "(GenuineIntel, AuthenticAMD, ...)")
        values["vendor"] = text
    elif key in ("family", "model", "stepping", "level", "xlevel"):
        value = _number(key, text, spec)
        limits = {"family": 0xFF + 0xF, "model": 0xFF, "stepping": 0xF,
                  "level": 0xFFFFFFFF, "xlevel": 0xFFFFFFFF}
        if not 0 <= value <= limits[key]:
            raise InvalidArgument(f"-cpu {spec}: {key}={value} is out of range")
        values[key] = value
    elif key == "model-id":
        values["model_id"] = text
    elif key == "phys-bits":
        value = _number(key, text, spec)
        if not 32 <= value <= 52:
            raise InvalidArgument(f"-cpu {spec}: phys-bits={value} is not 32..52")
        values["phys_bits"] = value
    elif key == "host-phys-bits":
        _switch(key, text, spec)             # the host's width is pyhv's default either way
    elif key == "kvm":
        values["kvm"] = _switch(key, text, spec)
    elif key == "enforce":
        values["enforce"] = _switch(key, text, spec)
    elif key in NEUTRAL_OPTIONS:
        pass
    elif _ != "":
        switched[feature_name(key)] = _switch(key, text, spec)
    else:
        raise InvalidArgument(f"-cpu {spec}: {item!r} is neither +feature, -feature nor "
                              "key=value")
