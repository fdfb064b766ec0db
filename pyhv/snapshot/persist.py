"""Taking and restoring snapshots: each part of a partition saves and restores its own state
(memory images from :class:`pyhv.GuestMemory`, whole-state blobs from each :class:`pyhv.VCpu`,
chip state from the VM, devices' JSON-able state); this module only puts them together, in
the order that keeps them consistent.
"""

from __future__ import annotations

import errno
from collections.abc import Mapping
from typing import Any, Protocol

from ..core.machine import Machine
from ..errors import InvalidArgument, KvmError, StateError
from ..version import __version__
from .format import Snapshot, VcpuImage


class Persistent(Protocol):
    """A part with JSON-able state (pyhv's devices)."""

    def get_state(self) -> dict[str, Any]: ...

    def set_state(self, state: dict[str, Any]) -> None: ...


def take(machine: Machine, devices: Mapping[str, Persistent]) -> Snapshot:
    """A :class:`Snapshot` of a quiet machine; from now on its memory counts changed pages,
    so that restoring this snapshot copies only those.  A vCPU waiting for the answer to an
    exit (an IN, MMIO read or MSR access not yet completed) makes it refuse: the snapshot
    would otherwise hold an answer nobody gave."""
    for vcpu in machine.vcpus:
        waiting = vcpu.awaiting_answer
        if waiting is not None:
            # saving would have to answer it (all ones) behind the caller's back
            raise StateError(f"vCPU {vcpu.id} waits for the answer to {waiting!r}: complete() "
                             "it before taking a snapshot")
    msrs = machine.state_msrs()
    optional = machine.state_parts()
    vcpus = []
    for vcpu in machine.vcpus:
        try:
            state = vcpu.save_state(msrs, optional)
        except KvmError as exc:
            if exc.errno != errno.EBUSY:
                raise
            raise StateError(f"vCPU {vcpu.id} is inside an instruction that needs another "
                             "exit (e.g. the second half of a 16-byte MMIO access): run it to "
                             "that exit, answer it, and take the snapshot after") from None
        vcpus.append(VcpuImage(vcpu.id, vcpu.mode, vcpu.uses_stubs, vcpu.get_cpuid(), state))
    slots = machine.memory.capture()
    states = {name: dev.get_state() for name, dev in devices.items()}
    snap = Snapshot(slots, vcpus, machine.setup_base, machine.setup.written, states,
                    __version__, machine.save_chips(), machine.hardened)
    machine.memory.track(snap.slots)
    return snap


def check_fits(machine: Machine, snap: Snapshot) -> None:
    """Raise :class:`pyhv.InvalidArgument` unless ``snap`` fits the machine (nothing is
    changed)."""
    if snap.setup_base != machine.setup_base:
        raise InvalidArgument("the snapshot's setup_base differs from this partition's: "
                              f"{snap.setup_base:#x} vs {machine.setup_base:#x}")
    if snap.hardened != machine.hardened:
        raise InvalidArgument(f"the snapshot was taken with hardened={snap.hardened}, this "
                              f"partition has hardened={machine.hardened}")
    machine.memory.check_fits(snap.slots)
    if set(snap.chips) != machine.chip_names():
        raise InvalidArgument("the snapshot's interrupt controllers differ from this partition's")
    mine, theirs = [v.id for v in machine.vcpus], [v.id for v in snap.vcpus]
    if mine != theirs:
        raise InvalidArgument(f"the snapshot's vCPUs differ from this partition's: {theirs} vs "
                              f"{mine}")


def restore(machine: Machine, devices: Mapping[str, Persistent], snap: Snapshot) -> int:
    """Bring a quiet machine back to ``snap`` (checked by :func:`check_fits`); returns the
    number of pages copied."""
    vcpus = machine.vcpus

    def finish_pending() -> bool:
        # A vCPU stopped inside an instruction (string IO, a split MMIO access) must finish it
        # before its state can be loaded; that runs after the memory copy, so the instruction
        # at its RIP is already the snapshot's (a random `rep insb` would otherwise go on for
        # up to 2^32 rounds).  Memory copies again if it wrote any.
        ran = False
        for vcpu in vcpus:
            ran |= vcpu.discard_pending()
        return ran

    copied = machine.memory.restore(snap.slots, finish_pending)
    for vcpu, image in zip(vcpus, snap.vcpus, strict=True):
        vcpu.load_state(image.state)
        vcpu.mode = image.mode
        vcpu.use_stubs(image.stubs)
    machine.vm.load_chips(snap.chips)
    for name, state in snap.devices.items():
        device = devices.get(name)
        if device is not None:
            device.set_state(state)
    machine.setup.written = snap.setup_written
    return copied
