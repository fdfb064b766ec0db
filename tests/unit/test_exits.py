"""Typed exits as plain values (pyhv.exits): answers, the fast constructor, names, how each
kind bears on a run, match patterns, hex reprs, and completions through fakes of the vCPU
side (the Completer and ExceptionFrames protocols, which the kernel-facing vCPU implements)."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from pyhv import HandlerError, StaleExitError, exits
from pyhv.exits import encode_answer, fast_constructor, kvm_exit_name

EXIT_CLASSES = sorted((c for _, c in inspect.getmembers(exits, inspect.isclass)
                       if issubclass(c, exits.Exit) and c.__module__ == exits.__name__
                       and not c.__name__.startswith("_")), key=lambda c: c.__name__)


# -- encode_answer ----------------------------------------------------------------------------
@pytest.mark.parametrize("value, size, count, data", [
    (0x12, 1, 1, b"\x12"),
    (0xFF, 1, 1, b"\xff"),
    (0x1234, 2, 1, b"\x34\x12"),
    (0xDEADBEEF, 4, 1, b"\xef\xbe\xad\xde"),
    (2**64 - 1, 8, 1, b"\xff" * 8),
    (0, 4, 1, bytes(4)),
    (b"\x01\x02", 2, 1, b"\x01\x02"),
    (bytearray(b"\x01\x02\x03"), 1, 3, b"\x01\x02\x03"),
    (memoryview(b"\x01\x02\x03\x04"), 2, 2, b"\x01\x02\x03\x04"),
    ([1, 2, 3], 2, 3, b"\x01\x00\x02\x00\x03\x00"),
    ((0xAA, 0xBB), 1, 2, b"\xaa\xbb"),
])
def test_encode_answer_accepts(value, size, count, data):
    assert encode_answer(value, size, count, "IN") == data


@pytest.mark.parametrize("value, size, count, match", [
    (256, 1, 1, r"answer 0x100 does not fit in 1 byte\(s\)"),
    (0x10000, 2, 1, "does not fit in 2 byte"),
    (2**64, 8, 1, "does not fit in 8 byte"),
    (-1, 4, 1, "does not fit"),
    (7, 1, 2, "a string read of 2 elements needs bytes or a sequence of 2 ints, not one int"),
    (b"\x01", 2, 1, "answer has 1 bytes, the guest reads 2"),
    (b"\x01\x02\x03", 1, 2, "answer has 3 bytes, the guest reads 2"),
    ([1, 2], 1, 3, "2 values for 3 elements"),
    ([1, 256], 1, 2, "answer 0x100 does not fit"),
    ([1, True], 1, 2, "not bool"),
    ("a", 1, 1, "answer must be an int or bytes, not str"),
    (None, 1, 1, "not NoneType"),
    (1.0, 4, 1, "not float"),
    (True, 1, 1, "not bool"),
])
def test_encode_answer_refuses(value, size, count, match):
    with pytest.raises(HandlerError, match=match) as info:
        encode_answer(value, size, count, "IN from port 0x60")
    assert str(info.value).startswith("IN from port 0x60: ")


# -- construction -----------------------------------------------------------------------------
SENTINEL_VCPU = object()
SAMPLE = {"rip": 0x1004, "port": 0x3F8, "size": 2, "data": b"\x01\x02", "count": 1,
          "gpa": 0xD0000000, "index": 0xC0000080, "value": 0x500, "reason": 2, "suberror": 1,
          "message": "why", "instruction": b"\x0f\x0b", "hardware_reason": 0x21, "cpu": 3,
          "type": 2, "exception": 1, "pc": 0x1000, "dr6": 0xFFFF0FF0, "dr7": 0x400, "nr": 60,
          "args": (1, 2, 3), "code": 0x63, "source": "i8042 command 0xfe", "vector": 14,
          "error_code": 2, "cr2": 0xDEAD0000, "user": True, "kvm_reason": 7,
          "name": "KVM_EXIT_IRQ_WINDOW_OPEN", "_vcpu": SENTINEL_VCPU, "_seq": 9,
          "_frame": 0x5FF8, "_width": 32, "address": 0x3000, "access": "write"}
TUPLE_DATA = {"InternalError", "SystemEvent", "InvalidExit", "Unknown"}   # data: words


def sample_values(cls) -> dict[str, object]:
    values = {f.name: SAMPLE[f.name] for f in dataclasses.fields(cls)}
    if cls.__name__ in TUPLE_DATA:
        values["data"] = (5, 6)
    return values


def test_every_exit_class_is_covered_here():
    assert [c.__name__ for c in EXIT_CLASSES] == [
        "Canceled", "Debug", "DebugExit", "Exit", "FailEntry", "GuestException", "Halt",
        "Hypercall", "InternalError", "InvalidExit", "IoIn", "IoOut", "MmioRead", "MmioWrite",
        "MsrRead", "MsrWrite", "Reset", "Shutdown", "Syscall", "SystemEvent", "Unknown"]


@pytest.mark.parametrize("cls", EXIT_CLASSES, ids=lambda c: c.__name__)
def test_fast_constructor_makes_what_the_class_makes(cls):
    values = sample_values(cls)
    fields = dataclasses.fields(cls)
    normal = cls(*(values[f.name] for f in fields if not f.kw_only),
                 **{f.name: values[f.name] for f in fields if f.kw_only})
    fast = fast_constructor(cls)(*(values[f.name] for f in fields))
    assert type(fast) is cls
    assert fast == normal and hash(fast) == hash(normal) and repr(fast) == repr(normal)
    for f in fields:                                    # compare=False fields included
        assert getattr(fast, f.name) is values[f.name], f.name


@pytest.mark.parametrize("cls", EXIT_CLASSES, ids=lambda c: c.__name__)
def test_exits_are_frozen(cls):
    ex = cls(**{k: v for k, v in sample_values(cls).items()})
    with pytest.raises(dataclasses.FrozenInstanceError):
        ex.rip = 0


def test_answer_holders_compare_without_their_vcpu():
    a = exits.IoIn(0x60, 1, _vcpu=object(), _seq=1)
    b = exits.IoIn(0x60, 1, _vcpu=object(), _seq=2)
    assert a == b and hash(a) == hash(b) and a != exits.IoIn(0x61, 1)


@pytest.mark.parametrize("reason, name", [
    (0, "KVM_EXIT_UNKNOWN"), (1, "KVM_EXIT_EXCEPTION"), (2, "KVM_EXIT_IO"),
    (3, "KVM_EXIT_HYPERCALL"), (4, "KVM_EXIT_DEBUG"), (5, "KVM_EXIT_HLT"),
    (6, "KVM_EXIT_MMIO"), (7, "KVM_EXIT_IRQ_WINDOW_OPEN"), (8, "KVM_EXIT_SHUTDOWN"),
    (9, "KVM_EXIT_FAIL_ENTRY"), (10, "KVM_EXIT_INTR"), (17, "KVM_EXIT_INTERNAL_ERROR"),
    (24, "KVM_EXIT_SYSTEM_EVENT"), (29, "KVM_EXIT_X86_RDMSR"), (30, "KVM_EXIT_X86_WRMSR"),
    (33, "KVM_EXIT_X86_BUS_LOCK"), (37, "KVM_EXIT_NOTIFY"), (39, "KVM_EXIT_MEMORY_FAULT"),
    (40, "KVM_EXIT_40"), (500, "KVM_EXIT_500"), (-1, "KVM_EXIT_-1"),
])
def test_kvm_exit_name(reason, name):
    assert kvm_exit_name(reason) == name


# how each kind bears on a run: (fault, clean_end, machine_end)
BEARING = {
    "Exit": (False, False, False),
    "IoOut": (False, False, False), "IoIn": (False, False, False),
    "MmioRead": (False, False, False), "MmioWrite": (False, False, False),
    "MsrRead": (False, False, False), "MsrWrite": (False, False, False),
    "Halt": (False, True, False),
    "Shutdown": (True, False, True),
    "InternalError": (True, False, False),
    "FailEntry": (True, False, False),
    "SystemEvent": (False, False, True),
    "Debug": (False, True, False),
    "Hypercall": (False, False, False),
    "Canceled": (False, True, False),
    "DebugExit": (False, True, True),
    "Reset": (False, True, True),
    "GuestException": (False, False, False),
    "Syscall": (False, False, False),
    "InvalidExit": (True, False, False),
    "Unknown": (False, False, False),
}


@pytest.mark.parametrize("cls", EXIT_CLASSES, ids=lambda c: c.__name__)
def test_how_each_kind_bears_on_a_run(cls):
    ex = cls(**sample_values(cls))
    for holder in (cls, ex):
        assert (holder.fault, holder.clean_end, holder.machine_end) == BEARING[cls.__name__]


def test_the_bearing_table_names_every_class():
    assert set(BEARING) == {c.__name__ for c in EXIT_CLASSES}


def describe(ex: exits.Exit) -> str:
    match ex:
        case exits.IoOut(0x3F8, 1, data):
            return f"serial {data!r}"
        case exits.IoOut(port=p, data=d) if len(d) > 1:
            return f"string out {p:#x} x{len(d)}"
        case exits.IoIn(port=0x60, size=s):
            return f"keyboard read {s}"
        case exits.MmioWrite(gpa=gpa, value=v):
            return f"mmio {gpa:#x}={v:#x}"
        case exits.GuestException(14, error_code=e, cr2=a):
            return f"#PF {e} at {a:#x}"
        case exits.Syscall(nr=60, args=(code, *_)):
            return f"exit({code})"
        case exits.Halt() | exits.Shutdown():
            return "stopped"
        case exits.Exit(rip=None):
            return "somewhere"
        case _:
            return "other"


@pytest.mark.parametrize("ex, text", [
    (exits.IoOut(0x3F8, 1, b"A"), "serial b'A'"),
    (exits.IoOut(0x3F8, 2, b"AB"), "string out 0x3f8 x2"),
    (exits.IoIn(0x60, 1), "keyboard read 1"),
    (exits.MmioWrite(0xFEE000B0, 4, b"\x00\x00\x00\x00"), "mmio 0xfee000b0=0x0"),
    (exits.GuestException(14, 5, cr2=0x80000), "#PF 5 at 0x80000"),
    (exits.Syscall(60, (3, 0, 0, 0, 0, 0)), "exit(3)"),
    (exits.Halt(rip=0x1001), "stopped"),
    (exits.Shutdown(), "stopped"),
    (exits.Canceled(), "somewhere"),
    (exits.Hypercall(1, (), rip=0x10), "other"),
])
def test_exits_work_with_match(ex, text):
    assert describe(ex) == text


def test_match_args_are_the_positional_fields():
    assert exits.IoOut.__match_args__ == ("port", "size", "data", "count")
    assert exits.GuestException.__match_args__ == ("vector", "error_code", "cr2", "user")
    assert exits.Halt.__match_args__ == ()


@pytest.mark.parametrize("ex, text", [
    (exits.IoOut(0x3F8, 1, b"A", rip=0x1004), "IoOut(port=0x3f8, size=1, data=b'A', count=1, "
                                               "rip=0x1004)"),
    (exits.IoIn(0x60, 1, _vcpu=SENTINEL_VCPU, _seq=3), "IoIn(port=0x60, size=1, count=1)"),
    (exits.MmioRead(0xD0000000, 4), "MmioRead(gpa=0xd0000000, size=4)"),
    (exits.MmioWrite(0xD0000000, 1, b"\x07", rip=0x20), "MmioWrite(gpa=0xd0000000, size=1, "
                                                         "data=b'\\x07', rip=0x20)"),
    (exits.MsrWrite(0xC0000080, 0x500), "MsrWrite(index=0xc0000080, value=0x500, reason=4)"),
    (exits.Halt(), "Halt()"),
    (exits.Halt(rip=0x1001), "Halt(rip=0x1001)"),
    (exits.FailEntry(0x21, 0), "FailEntry(hardware_reason=0x21, cpu=0)"),
    (exits.Debug(1, 0x1000, 0xFFFF0FF0, 0x400), "Debug(exception=1, pc=0x1000, "
                                                  "dr6=0xffff0ff0, dr7=0x400)"),
    (exits.GuestException(14, 2, cr2=0xDEAD0000, user=True, rip=0x100000),
     "GuestException(vector=14, error_code=0x2, cr2=0xdead0000, user=True, rip=0x100000)"),
    (exits.GuestException(6, None), "GuestException(vector=6, error_code=None, cr2=None, "
                                     "user=False)"),
    (exits.DebugExit(0x63, 0x31, 0xF4), "DebugExit(code=99, value=0x31, port=0xf4)"),
    (exits.Unknown(7, "KVM_EXIT_IRQ_WINDOW_OPEN", (1,)),
     "Unknown(reason=7, name='KVM_EXIT_IRQ_WINDOW_OPEN', data=(1,))"),
])
def test_reprs_are_in_hex_and_leave_the_vcpu_out(ex, text):
    assert repr(ex) == text


def test_derived_values():
    out = exits.IoOut(0xE9, 2, b"\x01\x00\x02\x00", 2)
    assert (out.value, out.values) == (1, (1, 2))
    assert exits.MmioWrite(0, 4, b"\x78\x56\x34\x12").value == 0x12345678
    assert [exits.MsrRead(0x10, r).why for r in (1, 2, 4, 8)] == [
        "invalid", "unknown", "filter", "reason 8"]
    assert exits.MsrWrite(0x10, 0, 2).why == "unknown"
    assert [exits.SystemEvent(t).kind for t in (1, 2, 3, 4, 5, 6, 99)] == [
        "shutdown", "reset", "crash", "wakeup", "suspend", "sev_term", "event 99"]
    assert exits.GuestException(14, 0).name == "#PF page fault"
    assert exits.GuestException(13, 0).name == "#GP general protection"
    assert exits.GuestException(31, None).name == "vector 31"


# -- completions ------------------------------------------------------------------------------
class FakeCompleter:
    """The vCPU side of an exit that takes an answer: records what it is asked."""

    def __init__(self, seq: int = 0) -> None:
        self.seq = seq
        self.calls: list[tuple] = []

    def complete_read(self, seq, value, size, count, what):
        self.calls.append(("read", seq, value, size, count, what))

    def complete_msr(self, seq, value, fault, what):
        self.calls.append(("msr", seq, value, fault, what))

    def current_seq(self):
        return self.seq


def test_io_in_completion_goes_to_its_vcpu_with_its_run_number():
    vcpu = FakeCompleter()
    exits.IoIn(0x60, 1, _vcpu=vcpu, _seq=5).complete(0x41)
    exits.IoIn(0x61, 2, 3, _vcpu=vcpu, _seq=6).complete([1, 2, 3])
    assert vcpu.calls == [("read", 5, 0x41, 1, 1, "IN from port 0x60"),
                          ("read", 6, [1, 2, 3], 2, 3, "IN from port 0x61")]


def test_mmio_read_completion():
    vcpu = FakeCompleter()
    exits.MmioRead(0xD0000000, 8, _vcpu=vcpu, _seq=2).complete(b"12345678")
    assert vcpu.calls == [("read", 2, b"12345678", 8, 1, "MMIO read at 0xd0000000")]


def test_msr_completions():
    vcpu = FakeCompleter()
    read = exits.MsrRead(0x10, _vcpu=vcpu, _seq=4)
    read.complete(2**64 - 1)
    read.fail()
    write = exits.MsrWrite(0x1B, 0xFEE00900, _vcpu=vcpu, _seq=5)
    write.complete()
    write.fail()
    assert vcpu.calls == [("msr", 4, 2**64 - 1, False, "RDMSR 0x10"),
                          ("msr", 4, 0, True, "RDMSR 0x10"),
                          ("msr", 5, 0, False, "WRMSR 0x1b"),
                          ("msr", 5, 0, True, "WRMSR 0x1b")]


@pytest.mark.parametrize("answer", [-1, 2**64, True, 1.0, "1", None])
def test_an_msr_read_answer_must_be_64_bits(answer):
    vcpu = FakeCompleter()
    with pytest.raises(HandlerError, match="RDMSR 0x10: answer .* is not a 64-bit unsigned int"):
        exits.MsrRead(0x10, _vcpu=vcpu).complete(answer)
    assert vcpu.calls == []


@pytest.mark.parametrize("complete", [
    lambda: exits.IoIn(0x60, 1).complete(1),
    lambda: exits.MmioRead(0x1000, 1).complete(1),
    lambda: exits.MsrRead(0x10).complete(1),
    lambda: exits.MsrRead(0x10).fail(),
    lambda: exits.MsrWrite(0x10, 1).complete(),
    lambda: exits.MsrWrite(0x10, 1).fail(),
    lambda: exits.Syscall(1, ()).complete(0),
    lambda: exits.GuestException(6, None).resume_at(0x1000),
], ids=["in", "mmio", "rdmsr", "rdmsr-fail", "wrmsr", "wrmsr-fail", "syscall", "exception"])
def test_an_exit_made_by_hand_has_no_vcpu_to_answer(complete):
    with pytest.raises(StaleExitError, match="does not belong to a vCPU|has run since"):
        complete()


class FakeFrames:
    """The vCPU side of guest exceptions and system calls: guest memory and RAX."""

    def __init__(self, seq: int) -> None:
        self.seq = seq
        self.memory: dict[int, bytes] = {}
        self.results: list[int] = []

    def current_seq(self):
        return self.seq

    def write_guest(self, gpa, data):
        self.memory[gpa] = data

    def set_result(self, value):
        self.results.append(value)


@pytest.mark.parametrize("width, rip, written", [
    (64, 0xFFFF_8000_0000_1000, b"\x00\x10\x00\x00\x00\x80\xff\xff"),
    (32, 0x1002, b"\x02\x10\x00\x00"),
    (16, 0x7C02, b"\x02\x7c"),
])
def test_resume_at_rewrites_the_return_address_in_the_frame(width, rip, written):
    vcpu = FakeFrames(seq=3)
    ex = exits.GuestException(6, None, _vcpu=vcpu, _frame=0x5FF0, _width=width, _seq=3)
    ex.resume_at(rip)
    assert vcpu.memory == {0x5FF0: written}


@pytest.mark.parametrize("width, rip", [(16, 0x10000), (32, 2**32), (64, 2**64), (64, -1),
                                        (64, True), (64, 1.0), (64, "0x1000")])
def test_resume_at_refuses_what_does_not_fit_the_code(width, rip):
    vcpu = FakeFrames(seq=1)
    ex = exits.GuestException(6, None, _vcpu=vcpu, _frame=0x5FF0, _width=width, _seq=1)
    with pytest.raises(HandlerError, match=f"does not fit {width}-bit code"):
        ex.resume_at(rip)
    assert vcpu.memory == {}


def test_resume_at_after_the_vcpu_ran_again_is_refused():
    vcpu = FakeFrames(seq=1)
    ex = exits.GuestException(6, None, _vcpu=vcpu, _frame=0x5FF0, _seq=1)
    vcpu.seq = 2                                  # its frame may hold another exception now
    with pytest.raises(StaleExitError, match="has run since this exception"):
        ex.resume_at(0x1000)
    assert vcpu.memory == {}


def test_syscall_complete_sets_the_result_unless_stale():
    vcpu = FakeFrames(seq=7)
    call = exits.Syscall(1, (1, 0x2000, 14, 0, 0, 0), _vcpu=vcpu, _seq=7)
    call.complete(14)
    call.complete(-9)                              # -errno: the vCPU side wraps it
    assert vcpu.results == [14, -9]
    vcpu.seq = 8
    with pytest.raises(StaleExitError, match="has run since this syscall"):
        call.complete(0)
    assert vcpu.results == [14, -9]
