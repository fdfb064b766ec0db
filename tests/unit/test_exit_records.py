"""Hostile and ordinary kvm_run records fed through the C core's own decode and fast paths, on
a vCPU with no kernel behind it (``pyhv_vcpu_create_detached``): no /dev/kvm needed.

Every record must decode to the exit it describes, or to PYHV_EXIT_BAD_EXIT when it describes
memory outside the run area; the ASan build (.ci/sanitize) proves nothing outside is touched.
"""

from __future__ import annotations

import errno
import struct

import pytest

from pyhv._native.binding import ffi, lib
from pyhv._native.vcpu import PENDING_IN, PENDING_MMIO_READ

from ..records import AREA, DATA, IN, OUT, PAGE, io_record, record


class Detached:
    """A detached vCPU and its exit struct, destroyed after the test."""

    def __init__(self, size: int = AREA) -> None:
        out = ffi.new("struct pyhv_vcpu **")
        assert lib.pyhv_vcpu_create_detached(size, out) == 0
        self.handle = out[0]
        self.size = size
        self.ex = ffi.new("struct pyhv_exit *")

    def feed(self, rec: bytes) -> int:
        """Inject ``rec`` and run: the run's return value (a summary or -errno)."""
        assert lib.pyhv_vcpu_inject_record(self.handle, bytes(rec), len(rec)) == 0
        return lib.pyhv_vcpu_run(self.handle, self.ex, 0)

    def reason(self, rec: bytes) -> int:
        rc = self.feed(rec)
        assert rc >= 0, rc
        return rc & 0xFF

    def words(self) -> list[int]:
        return [self.ex.data[i] for i in range(self.ex.ndata)]

    def area(self) -> ffi.CData:
        """The run area's bytes, for checking what the C core wrote there.  The C core never
        hands the run area to Python; a test finds it through an IO exit's data pointer,
        which points DATA bytes into it."""
        assert self.reason(io_record(OUT, 0x99, 1, 1)) == lib.PYHV_EXIT_IO
        return ffi.cast("uint8_t *", self.ex.io_data) - DATA

    def stats(self):
        stats = ffi.new("struct pyhv_stats *")
        assert lib.pyhv_vcpu_get_stats(self.handle, stats) == 0
        return stats

    def close(self) -> None:
        lib.pyhv_vcpu_destroy(self.handle)


@pytest.fixture
def cpu():
    vcpu = Detached()
    yield vcpu
    vcpu.close()


# -- hostile records: BAD_EXIT, nothing outside the run area touched ------------------------
@pytest.mark.parametrize("size, count, offset", [
    (4, 1025, DATA),                   # 4100 bytes: more than the one page KVM ever uses
    (1, PAGE + 1, DATA),
    (1, 1, AREA),                      # data_offset at the end of the run area
    (4, 1, AREA - 3),                  # starts inside, ends past it
    (1, 1, 1 << 63),                   # far outside
    (2, 1, 8),                         # inside the kvm_run header
    (1, 1, lib.PYHV_RUN_SIZE - 1),
    (3, 1, DATA),                      # no 3-byte port IO exists
    (8, 1, DATA),
    (1, 0, DATA),                      # nothing to transfer
    (4, 0xFFFFFFFF, DATA),             # size * count overflows 32 bits
])
@pytest.mark.parametrize("direction", [IN, OUT])
def test_io_records_outside_the_run_area_are_bad_exits(cpu, direction, size, count, offset):
    assert cpu.reason(io_record(direction, 0x3F8, size, count, offset)) == lib.PYHV_EXIT_BAD_EXIT
    assert cpu.words() == [size, count, offset]
    assert lib.pyhv_vcpu_complete_in_value(cpu.handle, cpu.ex.seq, 0) == -errno.ESTALE


def test_an_io_direction_that_is_neither_in_nor_out_is_a_bad_exit(cpu):
    assert cpu.reason(io_record(7, 0x3F8, 1, 1)) == lib.PYHV_EXIT_BAD_EXIT


def test_the_largest_io_records_that_fit_decode(cpu):
    assert cpu.reason(io_record(OUT, 0x3F8, 4, 1024, DATA)) == lib.PYHV_EXIT_IO   # one page
    assert cpu.ex.io_count == 1024 and cpu.ex.io_size == 4
    edge = AREA - 4                                     # the last 4 bytes of the run area
    assert cpu.reason(io_record(IN, 0x60, 4, 1, edge)) == lib.PYHV_EXIT_IO
    assert bytes(ffi.buffer(cpu.ex.io_data, 4)) == b"\xff" * 4    # unanswered: all ones


@pytest.mark.parametrize("length", [0, 9, 16, 0xFFFFFFFF])
@pytest.mark.parametrize("write", [0, 1])
def test_mmio_records_of_impossible_length_are_bad_exits(cpu, length, write):
    rec = record(lib.KVM_EXIT_MMIO, mmio_phys_addr=0xFED00000, mmio_len=length,
                 mmio_is_write=write)
    assert cpu.reason(rec) == lib.PYHV_EXIT_BAD_EXIT
    assert cpu.words() == [0xFED00000, length]


@pytest.mark.parametrize("reason, prefix", [(lib.KVM_EXIT_INTERNAL_ERROR, "internal"),
                                            (lib.KVM_EXIT_SYSTEM_EVENT, "system_event")])
def test_more_data_words_than_the_union_holds_is_a_bad_exit(cpu, reason, prefix):
    for ndata in (17, 1000, 0xFFFFFFFF):
        rec = record(reason, **{prefix + "_ndata": ndata})
        assert cpu.reason(rec) == lib.PYHV_EXIT_BAD_EXIT
        assert cpu.words()[1] == ndata
    rec = record(reason, **{prefix + "_ndata": 16})
    words = struct.pack("<16Q", *range(100, 116))
    offset = getattr(lib, f"PYHV_RUN_OFF_{prefix.upper()}_DATA")
    rec[offset:offset + len(words)] = words
    expected = lib.PYHV_EXIT_INTERNAL_ERROR if prefix == "internal" else lib.PYHV_EXIT_SYSTEM_EVENT
    assert cpu.reason(rec) == expected
    assert cpu.words() == list(range(100, 116))


def test_an_msr_reason_beyond_a_byte_is_a_bad_exit(cpu):
    rec = record(lib.KVM_EXIT_X86_RDMSR, msr_reason=1 << 20, msr_index=0x10)
    assert cpu.reason(rec) == lib.PYHV_EXIT_BAD_EXIT


def test_an_unknown_exit_reason_is_counted_and_reported(cpu):
    assert cpu.reason(record(0xDEADBEEF)) == lib.PYHV_EXIT_UNKNOWN
    assert cpu.ex.kvm_reason == 0xDEADBEEF
    assert cpu.stats().by_kvm_reason[63] == 1


def test_a_record_larger_than_the_run_area_is_refused(cpu):
    rec = bytes(AREA + 1)
    assert lib.pyhv_vcpu_inject_record(cpu.handle, rec, len(rec)) == -errno.EMSGSIZE
    assert lib.pyhv_vcpu_run(cpu.handle, cpu.ex, 0) == -errno.ENODATA
    assert lib.pyhv_vcpu_inject_record(cpu.handle, ffi.NULL, 8) == -errno.EINVAL


def test_a_record_is_reported_once(cpu):
    rec = record(lib.KVM_EXIT_HLT)
    assert lib.pyhv_vcpu_inject_record(cpu.handle, bytes(rec), len(rec)) == 0
    assert lib.pyhv_vcpu_inject_record(cpu.handle, bytes(rec), len(rec)) == -errno.EBUSY
    assert lib.pyhv_vcpu_run(cpu.handle, cpu.ex, 0) & 0xFF == lib.PYHV_EXIT_HALT
    assert lib.pyhv_vcpu_run(cpu.handle, cpu.ex, 0) == -errno.ENODATA


def test_a_record_keeps_the_run_areas_own_fields(cpu):
    area = cpu.area()
    rec = record(lib.KVM_EXIT_HLT)
    rec[0:8] = b"\xff" * 8                              # request_interrupt_window, immediate_exit
    assert cpu.reason(rec) == lib.PYHV_EXIT_HALT       # immediate_exit stayed 0: no cancel
    assert bytes(ffi.buffer(area, 8)) == bytes(8)


# -- ordinary records through the decode and the C fast paths ------------------------------
def test_rep_outsb_to_a_buffered_port_is_buffered_whole_and_in_order(cpu):
    assert lib.pyhv_vcpu_set_fast_port(cpu.handle, 0x3F8, lib.PYHV_PORT_BUFFERED, 0) == 0
    text = bytes(range(0x41, 0x51))                     # 16 bytes
    # completed in C: the run goes on, and finds no record left
    assert cpu.feed(io_record(OUT, 0x3F8, 1, 16, data=text)) == -errno.ENODATA
    out = ffi.new("uint8_t[]", 64)
    assert lib.pyhv_vcpu_take_output(cpu.handle, 0x3F8, out, 64) == 16
    assert bytes(out[0:16]) == text
    stats = cpu.stats()
    assert (stats.exits_in_c, stats.io_out, stats.exits_to_python) == (1, 1, 0)


def test_a_buffered_port_past_half_full_ends_the_run(cpu):
    assert lib.pyhv_vcpu_set_fast_port(cpu.handle, 0x3F8, lib.PYHV_PORT_BUFFERED, 0) == 0
    rc = cpu.feed(io_record(OUT, 0x3F8, 4, 1024, data=b"x" * PAGE))
    assert cpu.feed(io_record(OUT, 0x3F8, 4, 1024, data=b"y" * PAGE)) & 0xFF == \
        lib.PYHV_EXIT_OUTPUT_FULL
    assert rc == -errno.ENODATA and cpu.ex.output_pending == 1
    out = ffi.new("uint8_t[]", lib.PYHV_OUTPUT_BUFFER)
    assert lib.pyhv_vcpu_take_output(cpu.handle, 0x3F8, out, len(out)) == 2 * PAGE
    assert bytes(out[0:2 * PAGE]) == b"x" * PAGE + b"y" * PAGE


def test_a_debug_exit_port_record_ends_the_run_with_its_value(cpu):
    assert lib.pyhv_vcpu_set_fast_port(cpu.handle, 0xF4, lib.PYHV_PORT_DEBUG_EXIT, 0) == 0
    assert cpu.reason(io_record(OUT, 0xF4, 4, 1, data=struct.pack("<I", 0xFFFFFFFF))) == \
        lib.PYHV_EXIT_DEBUG_EXIT
    assert cpu.words() == [0xFFFFFFFF, 0xF4]


@pytest.mark.parametrize("size", [1, 2, 4])
def test_a_constant_port_answers_string_input_in_every_element(cpu, size):
    assert lib.pyhv_vcpu_set_fast_port(cpu.handle, 0x3FD, lib.PYHV_PORT_CONSTANT,
                                       0x12345660) == 0
    assert cpu.feed(io_record(IN, 0x3FD, size, 4)) == -errno.ENODATA   # answered in C
    data = bytes(ffi.buffer(cpu.ex.io_data, 4 * size))
    assert data == (0x12345660).to_bytes(4, "little")[:size] * 4
    assert cpu.stats().exits_in_c == 1


def test_an_in_record_waits_for_its_answer_and_stale_answers_are_refused(cpu):
    assert cpu.reason(io_record(IN, 0x60, 4, 3)) == lib.PYHV_EXIT_IO
    seq = cpu.ex.seq
    assert cpu.ex.io_in == 1 and cpu.ex.io_count == 3
    assert lib.pyhv_vcpu_complete_in_value(cpu.handle, seq - 1, 5) == -errno.ESTALE
    assert lib.pyhv_vcpu_complete_in_value(cpu.handle, seq, 5) == -errno.EMSGSIZE  # 12 bytes
    assert lib.pyhv_vcpu_complete_in(cpu.handle, seq, b"ab", 2) == -errno.EMSGSIZE
    answer = b"abcdefghijkl"
    assert lib.pyhv_vcpu_complete_in(cpu.handle, seq, answer, 12) == 0
    assert bytes(ffi.buffer(cpu.ex.io_data, 12)) == answer
    assert lib.pyhv_vcpu_complete_msr(cpu.handle, seq, 0, 0) == -errno.ESTALE   # not an MSR
    assert lib.pyhv_vcpu_run(cpu.handle, cpu.ex, 0) == -errno.ENODATA              # a new run
    assert lib.pyhv_vcpu_complete_in(cpu.handle, seq, answer, 12) == -errno.ESTALE


@pytest.mark.parametrize("size", [1, 4])
def test_a_stale_answer_never_lands_in_the_next_in(cpu, size):
    # the answer to an IN the guest has moved past must not become the answer to the IN it
    # makes next (same size: only the sequence number tells them apart)
    assert cpu.reason(io_record(IN, 0x60, size, 1)) == lib.PYHV_EXIT_IO
    stale = cpu.ex.seq
    assert cpu.reason(io_record(IN, 0x61, size, 1)) == lib.PYHV_EXIT_IO
    assert cpu.ex.io_port == 0x61 and cpu.ex.seq != stale
    answer = bytes([0x77] * size)
    assert lib.pyhv_vcpu_complete_in_value(cpu.handle, stale, 0x77) == -errno.ESTALE
    assert lib.pyhv_vcpu_complete_in(cpu.handle, stale, answer, size) == -errno.ESTALE
    assert bytes(ffi.buffer(cpu.ex.io_data, size)) == b"\xff" * size     # still unanswered
    assert lib.pyhv_vcpu_pending(cpu.handle) == PENDING_IN
    assert lib.pyhv_vcpu_complete_in_value(cpu.handle, cpu.ex.seq, 0x42) == 0
    assert bytes(ffi.buffer(cpu.ex.io_data, size)) == (0x42).to_bytes(size, "little")


def test_a_stale_answer_never_lands_in_the_next_mmio_read(cpu):
    rec = record(lib.KVM_EXIT_MMIO, mmio_phys_addr=0xFED00000, mmio_len=4, mmio_is_write=0)
    assert cpu.reason(rec) == lib.PYHV_EXIT_MMIO
    stale = cpu.ex.seq
    assert cpu.reason(rec) == lib.PYHV_EXIT_MMIO
    assert lib.pyhv_vcpu_complete_in_value(cpu.handle, stale, 0x77) == -errno.ESTALE
    assert lib.pyhv_vcpu_complete_in(cpu.handle, stale, b"\x77" * 4, 4) == -errno.ESTALE
    assert lib.pyhv_vcpu_pending(cpu.handle) == PENDING_MMIO_READ      # the read still waits


def test_an_mmio_read_record_reads_all_ones_until_answered(cpu):
    rec = record(lib.KVM_EXIT_MMIO, mmio_phys_addr=0xFED00000, mmio_len=4, mmio_is_write=0)
    assert cpu.reason(rec) == lib.PYHV_EXIT_MMIO
    assert (cpu.ex.mmio_gpa, cpu.ex.mmio_len, cpu.ex.mmio_write) == (0xFED00000, 4, 0)
    assert lib.pyhv_vcpu_complete_in_value(cpu.handle, cpu.ex.seq, 0x11223344) == 0


def test_an_mmio_write_record_carries_its_value(cpu):
    rec = record(lib.KVM_EXIT_MMIO, mmio_phys_addr=0x1000, mmio_len=8, mmio_is_write=1)
    rec[lib.PYHV_RUN_OFF_MMIO_DATA:lib.PYHV_RUN_OFF_MMIO_DATA + 8] = struct.pack("<Q", 1 << 63)
    assert cpu.reason(rec) == lib.PYHV_EXIT_MMIO
    assert cpu.ex.mmio_write == 1 and cpu.ex.mmio_value == 1 << 63


@pytest.mark.parametrize("write", [0, 1])
def test_an_msr_record_presets_its_error_and_takes_the_answer(cpu, write):
    area = cpu.area()
    reason = lib.KVM_EXIT_X86_WRMSR if write else lib.KVM_EXIT_X86_RDMSR
    rec = record(reason, msr_error=0, msr_reason=lib.KVM_MSR_EXIT_REASON_FILTER,
                 msr_index=0x40000000, msr_data=0xAABBCCDD11223344)
    assert cpu.reason(rec) == lib.PYHV_EXIT_MSR
    ex = cpu.ex
    assert (ex.msr_index, ex.msr_write, ex.msr_reason) == (0x40000000, write,
                                                          lib.KVM_MSR_EXIT_REASON_FILTER)
    assert ex.msr_value == (0xAABBCCDD11223344 if write else 0)
    error = area + lib.PYHV_RUN_OFF_MSR_ERROR
    data = ffi.cast("uint64_t *", area + lib.PYHV_RUN_OFF_MSR_DATA)
    assert error[0] == 1                               # unanswered: #GP
    assert lib.pyhv_vcpu_complete_in_value(cpu.handle, ex.seq, 1) == -errno.ESTALE
    assert lib.pyhv_vcpu_complete_msr(cpu.handle, ex.seq, 0x55, 0) == 0
    assert error[0] == 0
    assert data[0] == (0xAABBCCDD11223344 if write else 0x55)   # a WRMSR keeps its value
    assert lib.pyhv_vcpu_pending(cpu.handle) == 0       # answered
    assert lib.pyhv_vcpu_complete_msr(cpu.handle, ex.seq, 0, 1) == -errno.ESTALE   # twice
    assert error[0] == 0                               # the first answer stands
    assert cpu.stats().msr_write == write and cpu.stats().msr_read == 1 - write


def test_an_msr_record_with_an_error_preset_still_decodes(cpu):
    rec = record(lib.KVM_EXIT_X86_RDMSR, msr_error=0xFF, msr_reason=lib.KVM_MSR_EXIT_REASON_UNKNOWN,
                 msr_index=0xC0011234)
    assert cpu.reason(rec) == lib.PYHV_EXIT_MSR
    assert (cpu.ex.msr_index, cpu.ex.msr_reason) == (0xC0011234, lib.KVM_MSR_EXIT_REASON_UNKNOWN)


def test_debug_and_hypercall_records(cpu):
    rec = record(lib.KVM_EXIT_DEBUG, debug_exception=1, debug_pc=0xFFFFFFFF81000000)
    assert cpu.reason(rec) == lib.PYHV_EXIT_DEBUG
    assert cpu.ex.code == 1 and cpu.ex.data[0] == 0xFFFFFFFF81000000
    assert cpu.reason(record(lib.KVM_EXIT_HYPERCALL, hypercall_nr=12)) == lib.PYHV_EXIT_HYPERCALL
    assert cpu.ex.data[0] == 12 and cpu.ex.ndata == 7


def test_a_truncated_record_replaces_only_what_it_covers(cpu):
    rec = record(lib.KVM_EXIT_SHUTDOWN, size=lib.PYHV_RUN_OFF_EXIT_REASON + 4)
    assert cpu.reason(rec) == lib.PYHV_EXIT_SHUTDOWN
    assert cpu.reason(b"") == lib.PYHV_EXIT_SHUTDOWN          # the last exit, again


# -- a detached vCPU is safe for every other call ------------------------------------------
def test_every_vcpu_call_is_safe_on_a_detached_vcpu(cpu):
    h, bad = cpu.handle, -errno.EBADF
    assert lib.pyhv_vcpu_fd(h) == -1
    lib.pyhv_vcpu_set_irqchip(h, 1)
    assert lib.pyhv_vcpu_get_regs(h, ffi.new("struct pyhv_regs *")) == bad
    assert lib.pyhv_vcpu_set_regs(h, ffi.new("struct pyhv_regs *")) == bad
    assert lib.pyhv_vcpu_get_sregs(h, ffi.new("struct pyhv_sregs *")) == bad
    assert lib.pyhv_vcpu_set_sregs(h, ffi.new("struct pyhv_sregs *")) == bad
    assert lib.pyhv_vcpu_get_fpu(h, ffi.new("struct pyhv_fpu *")) == bad
    assert lib.pyhv_vcpu_set_fpu(h, ffi.new("struct pyhv_fpu *")) == bad
    index, value, done = ffi.new("uint32_t[]", [0x10] * 300), ffi.new("uint64_t[300]"), \
        ffi.new("uint32_t *")
    assert lib.pyhv_vcpu_get_msrs(h, index, value, 300, done) == bad and done[0] == 0
    assert lib.pyhv_vcpu_set_msrs(h, index, value, 300, done) == bad
    entries, n = ffi.new("struct pyhv_cpuid_entry[4]"), ffi.new("uint32_t *")
    assert lib.pyhv_vcpu_set_cpuid(h, entries, 4) == bad
    assert lib.pyhv_vcpu_get_cpuid(h, entries, 4, n) == bad
    assert lib.pyhv_vcpu_set_guest_debug(h, lib.KVM_GUESTDBG_ENABLE, ffi.NULL) == bad
    assert lib.pyhv_vcpu_translate(h, 0x1000, ffi.new("uint64_t *"),
                                   ffi.new("uint32_t *")) == bad
    assert lib.pyhv_vcpu_drain_coalesced(h, ffi.new("struct pyhv_coalesced_write[4]"), 4) == \
        -errno.ENODEV
    state = ffi.new("struct pyhv_vcpu_state *")
    assert lib.pyhv_vcpu_save_state(h, index, 3, 0, state) == bad
    state.version = lib.PYHV_STATE_VERSION
    assert lib.pyhv_vcpu_load_state(h, state) == bad
    ok = ffi.new("uint32_t[300]")
    assert lib.pyhv_vcpu_restorable_msrs(h, index, 300, ok) == bad
    assert lib.pyhv_vcpu_discard_pending(h) == 0                  # nothing pending
    assert cpu.reason(io_record(IN, 0x60, 1, 1)) == lib.PYHV_EXIT_IO
    assert lib.pyhv_vcpu_complete_in_value(h, cpu.ex.seq, 7) == 0
    assert lib.pyhv_vcpu_complete_msr(h, cpu.ex.seq, 7, 0) == -errno.ESTALE
    assert lib.pyhv_vcpu_discard_pending(h) == bad                # needs the kernel
    lib.pyhv_vcpu_reset_stats(h)
    assert cpu.stats().runs == 0
    lib.pyhv_vcpu_cancel(h)
    assert lib.pyhv_vcpu_run(h, cpu.ex, 0) & 0xFF == lib.PYHV_EXIT_CANCELED
    lib.pyhv_vcpu_cancel(h)
    lib.pyhv_vcpu_clear_cancel(h)
    assert lib.pyhv_vcpu_run(h, cpu.ex, 0) == -errno.ENODATA


@pytest.mark.parametrize("size", [0, lib.PYHV_RUN_SIZE - 1, (1 << 20) + 1])
def test_a_detached_run_area_must_hold_a_kvm_run(size):
    out = ffi.new("struct pyhv_vcpu **")
    assert lib.pyhv_vcpu_create_detached(size, out) == -errno.EINVAL


def test_a_small_run_area_bounds_io_data_by_its_own_size():
    small = Detached(lib.PYHV_RUN_SIZE + 8)
    try:
        at = lib.PYHV_RUN_SIZE
        assert small.reason(io_record(OUT, 0x80, 4, 2, at)[:small.size]) == lib.PYHV_EXIT_IO
        assert small.reason(io_record(OUT, 0x80, 4, 3, at)[:small.size]) == \
            lib.PYHV_EXIT_BAD_EXIT
    finally:
        small.close()
