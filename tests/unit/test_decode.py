"""Exit decoding (pyhv._native.decode) from C exit summaries filled by hand, as
csrc/pyhv_core.h documents ``struct pyhv_exit``: every PYHV_EXIT_* reason, and records a
hostile kernel could leave (ndata beyond the 16 words there are)."""

from __future__ import annotations

import pytest

from pyhv import exits
from pyhv._native.binding import ffi, lib
from pyhv._native.decode import ExitContext, decode, failed_instruction

HOST_RIP = 0xABCDE                # what the context says when the record has no RIP


class FakeCompleter:
    def __init__(self) -> None:
        self.reads: list[tuple] = []
        self.msrs: list[tuple] = []

    def complete_read(self, seq, value, size, count, what):
        self.reads.append((seq, value, size, count, what))

    def complete_msr(self, seq, value, fault, what):
        self.msrs.append((seq, value, fault, what))

    def current_seq(self):
        return 0


def record(reason: int, rip: int | None = 0x1004, **fields):
    c = ffi.new("struct pyhv_exit *")
    c.reason = reason
    if rip is not None:
        c.rip, c.rip_valid = rip, 1
    data = fields.pop("data", ())
    for i, word in enumerate(data):
        c.data[i] = word
    c.ndata = fields.pop("ndata", len(data))
    for name, value in fields.items():
        setattr(c, name, value)
    return c


def run_decode(c, note: str = ""):
    completer = FakeCompleter()
    return decode(c, ExitContext(completer, lambda: HOST_RIP, note)), completer


# -- port IO ------------------------------------------------------------------------------
@pytest.mark.parametrize("size, value, data", [(1, 0x41, b"A"), (2, 0x1234, b"\x34\x12"),
                                               (4, 0xDEADBEEF, b"\xef\xbe\xad\xde")])
def test_a_single_out(size, value, data):
    ex, _ = run_decode(record(lib.PYHV_EXIT_IO, io_port=0x3F8, io_size=size, io_in=0,
                              io_count=1, io_value=value))
    assert ex == exits.IoOut(0x3F8, size, data, 1, rip=0x1004) and type(ex) is exits.IoOut


def test_a_string_out_carries_every_element():
    buffer = ffi.new("uint8_t[]", b"\x01\x00\x02\x00\x03\x00")
    ex, _ = run_decode(record(lib.PYHV_EXIT_IO, io_port=0xE9, io_size=2, io_in=0, io_count=3,
                              io_data=buffer, io_value=1))
    assert ex == exits.IoOut(0xE9, 2, b"\x01\x00\x02\x00\x03\x00", 3, rip=0x1004)
    assert ex.values == (1, 2, 3)


@pytest.mark.parametrize("size, count", [(1, 1), (4, 1), (1, 4096)])
def test_an_in_is_answered_through_the_context(size, count):
    c = record(lib.PYHV_EXIT_IO, io_port=0x60, io_size=size, io_in=1, io_count=count, seq=41)
    ex, completer = run_decode(c)
    assert ex == exits.IoIn(0x60, size, count, rip=0x1004)
    ex.complete(bytes(size * count))
    assert completer.reads == [(41, bytes(size * count), size, count, "IN from port 0x60")]


def test_io_without_a_rip_has_none():
    ex, _ = run_decode(record(lib.PYHV_EXIT_IO, rip=None, io_port=0x80, io_size=1, io_count=1,
                              io_value=0))
    assert ex.rip is None                               # not the context's: IO is common


# -- MMIO ---------------------------------------------------------------------------------
@pytest.mark.parametrize("length, value, data", [(1, 0x7F, b"\x7f"),
                                                 (4, 0xAABBCCDD, b"\xdd\xcc\xbb\xaa"),
                                                 (8, 2**64 - 1, b"\xff" * 8)])
def test_an_mmio_write(length, value, data):
    ex, _ = run_decode(record(lib.PYHV_EXIT_MMIO, mmio_gpa=0xFEE000B0, mmio_len=length,
                              mmio_write=1, mmio_value=value))
    assert ex == exits.MmioWrite(0xFEE000B0, length, data, rip=0x1004)


def test_an_mmio_read_is_answered_through_the_context():
    ex, completer = run_decode(record(lib.PYHV_EXIT_MMIO, mmio_gpa=0xD0000008, mmio_len=8,
                                      mmio_write=0, seq=3))
    assert ex == exits.MmioRead(0xD0000008, 8, rip=0x1004)
    ex.complete(0x1122)
    assert completer.reads == [(3, 0x1122, 8, 1, "MMIO read at 0xd0000008")]


# -- stops --------------------------------------------------------------------------------
def test_a_halt_takes_its_rip_from_the_record_or_the_context():
    assert run_decode(record(lib.PYHV_EXIT_HALT))[0] == exits.Halt(rip=0x1004)
    assert run_decode(record(lib.PYHV_EXIT_HALT, rip=None))[0] == exits.Halt(rip=HOST_RIP)


def test_shutdown_and_canceled():
    assert run_decode(record(lib.PYHV_EXIT_SHUTDOWN))[0] == exits.Shutdown(rip=0x1004)
    assert run_decode(record(lib.PYHV_EXIT_SHUTDOWN, rip=None))[0].rip is None
    canceled, _ = run_decode(record(lib.PYHV_EXIT_CANCELED))
    assert canceled == exits.Canceled() and canceled.rip is None


def test_fail_entry():
    ex, _ = run_decode(record(lib.PYHV_EXIT_FAIL_ENTRY, data=(0x80000021, 3)))
    assert ex == exits.FailEntry(0x80000021, 3, rip=0x1004)


@pytest.mark.parametrize("kind, name", [(lib.KVM_SYSTEM_EVENT_SHUTDOWN, "shutdown"),
                                        (lib.KVM_SYSTEM_EVENT_RESET, "reset"),
                                        (lib.KVM_SYSTEM_EVENT_CRASH, "crash")])
def test_system_events(kind, name):
    ex, _ = run_decode(record(lib.PYHV_EXIT_SYSTEM_EVENT, code=kind, data=(7,)))
    assert ex == exits.SystemEvent(kind, (7,), rip=0x1004) and ex.kind == name


def test_debug():
    ex, _ = run_decode(record(lib.PYHV_EXIT_DEBUG, code=1, data=(0x1000, 0xFFFF4FF0, 0x400)))
    assert ex == exits.Debug(1, 0x1000, 0xFFFF4FF0, 0x400, rip=0x1004)


def test_hypercall():
    ex, _ = run_decode(record(lib.PYHV_EXIT_HYPERCALL, data=(12, 1, 2, 3)))
    assert ex == exits.Hypercall(12, (1, 2, 3), rip=0x1004)
    assert run_decode(record(lib.PYHV_EXIT_HYPERCALL, data=(5,)))[0].args == ()


@pytest.mark.parametrize("value, code", [(0, 1), (0x31, 0x63), (0x80000001, 0x100000003)])
def test_debug_exit_code(value, code):
    # the code is (V << 1) | 1 over the whole value, not only its low 31 bits
    ex, _ = run_decode(record(lib.PYHV_EXIT_DEBUG_EXIT, data=(value, 0xF4)))
    assert ex == exits.DebugExit(code, value, 0xF4, rip=0x1004)


def test_unknown_names_the_kvm_reason():
    ex, _ = run_decode(record(lib.PYHV_EXIT_UNKNOWN, kvm_reason=7, data=(1, 2)))
    assert ex == exits.Unknown(7, "KVM_EXIT_IRQ_WINDOW_OPEN", (1, 2), rip=0x1004)


def test_bad_exit_is_an_invalid_exit_with_the_fields():
    ex, _ = run_decode(record(lib.PYHV_EXIT_BAD_EXIT, kvm_reason=2, data=(0x1FFFF, 4, 1)))
    assert ex == exits.InvalidExit(2, (0x1FFFF, 4, 1),
                                   "KVM_EXIT_IO with implausible fields (131071, 4, 1)",
                                   rip=0x1004)
    assert ex.fault


# -- internal errors ----------------------------------------------------------------------
def instruction_words(size: int, code: bytes, flags: int = 1) -> tuple[int, int, int]:
    raw = (bytes([size]) + code).ljust(16, b"\0")
    return (flags, int.from_bytes(raw[:8], "little"), int.from_bytes(raw[8:], "little"))


def test_an_emulation_failure_with_the_instruction_bytes():
    words = instruction_words(2, b"\x0f\x0b")
    ex, _ = run_decode(record(lib.PYHV_EXIT_INTERNAL_ERROR, code=lib.KVM_INTERNAL_ERROR_EMULATION,
                              data=words), note="kvm_pvm emulates ring-0 code")
    assert isinstance(ex, exits.InternalError) and ex.fault
    assert (ex.suberror, ex.data, ex.instruction, ex.rip) == (1, words, b"\x0f\x0b", 0x1004)
    assert ex.message == ("KVM internal error at rip=0x1004: emulation failure: KVM could not "
                          "emulate the instruction at RIP (bytes at rip: 0f 0b); kvm_pvm "
                          "emulates ring-0 code")


def test_an_emulation_failure_without_instruction_bytes_shows_the_data():
    ex, _ = run_decode(record(lib.PYHV_EXIT_INTERNAL_ERROR, rip=None,
                              code=lib.KVM_INTERNAL_ERROR_EMULATION, data=(0, 0x10)),
                       note="a note")
    assert ex.instruction == b"" and ex.rip == HOST_RIP
    assert ex.message == (f"KVM internal error at rip={HOST_RIP:#x}: emulation failure: KVM "
                          "could not emulate the instruction at RIP; data 0x0 0x10")


@pytest.mark.parametrize("suberror, text", [
    (lib.KVM_INTERNAL_ERROR_SIMUL_EX, "simultaneous exceptions"),
    (lib.KVM_INTERNAL_ERROR_DELIVERY_EV, "event delivery failed"),
    (lib.KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON, "for a reason KVM did not expect"),
    (99, "suberror 99"),
])
def test_other_internal_errors_are_explained(suberror, text):
    ex, _ = run_decode(record(lib.PYHV_EXIT_INTERNAL_ERROR, code=suberror,
                              data=instruction_words(2, b"\x0f\x0b")))
    assert text in ex.message and ex.instruction == b""     # bytes only for emulation
    assert ex.message.endswith("data 0x1 0xb0f02 0x0")


def test_an_internal_error_without_data():
    ex, _ = run_decode(record(lib.PYHV_EXIT_INTERNAL_ERROR, code=3))
    assert ex.data == () and ex.message.endswith("missing or broken IDT/GDT entry or an "
                                                 "unmapped stack")


def test_failed_instruction_layout():
    assert failed_instruction(instruction_words(3, b"\x90\x90\xf4")) == b"\x90\x90\xf4"
    assert failed_instruction(instruction_words(3, b"\x90\x90\xf4", flags=0)) == b""
    assert failed_instruction((1,)) == b""
    assert failed_instruction(()) == b""
    # a size past the 15 bytes there are is cut to them
    assert failed_instruction(instruction_words(200, bytes(range(1, 16)))) == bytes(range(1, 16))
    # only the words the kernel gave: one word holds 7 bytes
    assert failed_instruction(instruction_words(9, bytes(range(1, 10)))[:2]) == bytes(
        range(1, 8))


# -- hostile records ----------------------------------------------------------------------
@pytest.mark.parametrize("ndata", [17, 1000, 2**32 - 1])
def test_ndata_beyond_the_record_reads_only_its_16_words(ndata):
    words = tuple(range(100, 116))
    for reason, words_of in [
        (lib.PYHV_EXIT_UNKNOWN, lambda ex: ex.data),
        (lib.PYHV_EXIT_SYSTEM_EVENT, lambda ex: ex.data),
        (lib.PYHV_EXIT_INTERNAL_ERROR, lambda ex: ex.data),
        (lib.PYHV_EXIT_BAD_EXIT, lambda ex: ex.data),
        (lib.PYHV_EXIT_HYPERCALL, lambda ex: (ex.nr, *ex.args)),
    ]:
        ex, _ = run_decode(record(reason, data=words, ndata=ndata, code=2, kvm_reason=5))
        assert words_of(ex) == words, reason


def test_a_hostile_emulation_failure_is_still_decoded():
    words = instruction_words(0xFF, b"\xcc" * 15) + (0xFFFFFFFFFFFFFFFF,) * 13
    ex, _ = run_decode(record(lib.PYHV_EXIT_INTERNAL_ERROR, code=1, data=words, ndata=2**32 - 1))
    assert ex.instruction == b"\xcc" * 15 and len(ex.data) == 16


# -- every reason -------------------------------------------------------------------------
# what each PYHV_EXIT_* reason decodes to; the run loop handles NONE, TIMEOUT, INTERRUPTED and
# OUTPUT_FULL itself, so decode() treats them (and any other number) as an exit it does not
# know
DECODED = {
    "PYHV_EXIT_NONE": exits.Unknown, "PYHV_EXIT_IO": exits.IoOut, "PYHV_EXIT_MMIO":
    exits.MmioWrite, "PYHV_EXIT_HALT": exits.Halt, "PYHV_EXIT_SHUTDOWN": exits.Shutdown,
    "PYHV_EXIT_INTERNAL_ERROR": exits.InternalError, "PYHV_EXIT_FAIL_ENTRY": exits.FailEntry,
    "PYHV_EXIT_SYSTEM_EVENT": exits.SystemEvent, "PYHV_EXIT_DEBUG": exits.Debug,
    "PYHV_EXIT_HYPERCALL": exits.Hypercall, "PYHV_EXIT_CANCELED": exits.Canceled,
    "PYHV_EXIT_TIMEOUT": exits.Unknown, "PYHV_EXIT_INTERRUPTED": exits.Unknown,
    "PYHV_EXIT_UNKNOWN": exits.Unknown, "PYHV_EXIT_BAD_EXIT": exits.InvalidExit,
    "PYHV_EXIT_DEBUG_EXIT": exits.DebugExit, "PYHV_EXIT_OUTPUT_FULL": exits.Unknown,
    "PYHV_EXIT_MSR": exits.MsrRead,
}


def test_every_reason_decodes_to_its_exit():
    reasons = {name for name in dir(lib) if name.startswith("PYHV_EXIT_")}
    assert reasons == set(DECODED)
    for name, cls in DECODED.items():
        c = record(getattr(lib, name), io_port=1, io_size=1, io_count=1, mmio_write=1,
                   mmio_len=1, data=(1, 2, 3), kvm_reason=2)
        assert type(run_decode(c)[0]) is cls, name


def test_a_reason_beyond_the_enum_is_unknown():
    ex, _ = run_decode(record(200, kvm_reason=1000, data=(9,)))
    assert ex == exits.Unknown(1000, "KVM_EXIT_1000", (9,), rip=0x1004)


@pytest.mark.parametrize("write", [0, 1])
def test_msr_exits_decode_with_their_index_value_and_reason(write):
    c = record(lib.PYHV_EXIT_MSR, msr_index=0x40000001, msr_write=write,
               msr_reason=lib.KVM_MSR_EXIT_REASON_FILTER, msr_value=0x1122334455667788)
    ex, completer = run_decode(c)
    if write:
        assert ex == exits.MsrWrite(0x40000001, 0x1122334455667788, 4, rip=0x1004)
        ex.complete()
    else:
        assert ex == exits.MsrRead(0x40000001, 4, rip=0x1004)
        ex.complete(0x99)
    assert ex.why == "filter"
    assert completer.msrs == [(0, 0 if write else 0x99, False,
                               f"{'WRMSR' if write else 'RDMSR'} 0x40000001")]
