"""The snapshot file format (pyhv.snapshot.format) with snapshots built by hand: save/load
round trips, sparse memory, and every refusal, each a SnapshotFormatError."""

from __future__ import annotations

import hashlib
import json
import os
import struct

import pytest

from pyhv import CpuidEntry, Snapshot, SnapshotFormatError
from pyhv._native.binding import ffi, lib
from pyhv._native.vcpu import check_state_blob
from pyhv.core.memory import PAGE_SIZE, PageImage, SlotImage
from pyhv.snapshot import FORMAT_MAJOR, FORMAT_MINOR, MAGIC, STATE_SIZE, VcpuImage

CPUID = (CpuidEntry(0, 0, 0, 0xD, 0x756E6547, 0x6C65746E, 0x49656E69),
         CpuidEntry(1, 0, 0, 0x806F8, 0x03020800, 0x80000001, 0x178BFBFF))


def state_blob(rip: int = 0x1000, nmsrs: int = 2, version: int = lib.PYHV_STATE_VERSION) -> bytes:
    st = ffi.new("struct pyhv_vcpu_state *")
    st.version = version
    st.present = lib.PYHV_HAS_XCRS | lib.PYHV_HAS_EVENTS
    struct.pack_into("<Q", ffi.buffer(st.regs), 16 * 8, rip)        # kvm_regs.rip
    st.nmsrs = nmsrs
    for i in range(min(nmsrs, lib.PYHV_STATE_MAX_MSRS)):
        st.msr_index[i], st.msr_value[i] = 0x174 + i, 0x1000 * i
    return ffi.buffer(st)[:]


def slot(gpa: int, pages: int, writes: dict[int, bytes], *, readonly=False, dirty_log=False,
         populated: tuple[tuple[int, int], ...] = ()) -> SlotImage:
    """A slot image of ``pages`` pages: ``writes`` (page -> bytes at its start) are populated,
    and so are the ``populated`` runs (which may hold zeros)."""
    image = PageImage(pages * PAGE_SIZE)
    for page, data in writes.items():
        image.data.write(page * PAGE_SIZE, data)
        image.populated.set_range(page, 1)
    for first, count in populated:
        image.populated.set_range(first, count)
    return SlotImage(gpa, pages * PAGE_SIZE, readonly, dirty_log, image)


def make_snapshot() -> Snapshot:
    ram = slot(0, 256, {0: b"\xf4", 1: b"page one", 2: b"\x00" * 100 + b"x", 200: b"far"},
               populated=((3, 5), (100, 1)))                       # zero pages: dropped
    rom = slot(0xFFFF0000, 16, {15: b"\xea\x5b\xe0\x00\xf0"}, readonly=True)
    logged = slot(0x1_0000_0000, 8, {}, dirty_log=True)            # nothing populated
    return Snapshot(
        slots=[ram, rom, logged],
        vcpus=[VcpuImage(0, "long", False, CPUID, state_blob(0x1000)),
               VcpuImage(3, "user", True, CPUID[:1], state_blob(0x2000, nmsrs=0)),
               VcpuImage(5, None, False, (), state_blob(0x3000))],
        setup_base=0x80000, setup_written="long",
        devices={"rtc": {"index": 11, "cmos": "00" * 128}, "com1": {"rx": [1, 2]}},
        pyhv_version="1.2.3", chips={"pit": bytes(range(112))}, hardened=True)


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "snap"
    make_snapshot().save(path)
    return path


def pages_of(image: SlotImage) -> dict[int, bytes]:
    return {p: image.image.data.read(p * PAGE_SIZE, PAGE_SIZE) for p in image.image.populated}


# -- round trip -----------------------------------------------------------------------------
def test_a_saved_snapshot_loads_back_equal(saved):
    original = make_snapshot()
    loaded = Snapshot.load(saved)
    assert loaded.layout() == original.layout() == (
        (0, 256 * PAGE_SIZE, False), (0xFFFF0000, 16 * PAGE_SIZE, True),
        (0x1_0000_0000, 8 * PAGE_SIZE, False))
    assert [s.dirty_log for s in loaded.slots] == [False, False, True]
    assert (loaded.setup_base, loaded.setup_written, loaded.devices, loaded.pyhv_version,
            loaded.chips, loaded.hardened) == (0x80000, "long", original.devices, "1.2.3",
                                               {"pit": bytes(range(112))}, True)
    for a, b in zip(loaded.vcpus, original.vcpus, strict=True):
        assert (a.id, a.mode, a.stubs, a.cpuid, a.state) == (b.id, b.mode, b.stubs, b.cpuid,
                                                             b.state)
    for a, b in zip(loaded.slots, original.slots, strict=True):
        original_pages = pages_of(b)
        assert pages_of(a) == {p: d for p, d in original_pages.items() if any(d)}


def test_memory_is_stored_sparsely_without_zero_pages(saved):
    loaded = Snapshot.load(saved)
    assert [s.image.runs() for s in loaded.slots] == [[(0, 3), (200, 1)], [(15, 1)], []]
    assert loaded.memory_bytes == 5 * PAGE_SIZE
    header_len, = struct.unpack_from("<I", saved.read_bytes(), 12)
    runs = 2 + 1 + 0
    assert saved.stat().st_size == (16 + header_len + 3 * 8 + runs * 16 + 5 * PAGE_SIZE
                                    + 3 * STATE_SIZE + 32)


def test_the_file_layout(saved):
    raw = saved.read_bytes()
    magic, major, minor, length = struct.unpack_from("<8sHHI", raw)
    assert (magic, major, minor) == (MAGIC, FORMAT_MAJOR, FORMAT_MINOR) == (b"PYHVSNAP", 1, 2)
    header = json.loads(raw[16:16 + length])
    assert header["fast_ports"] == {} and header["state_size"] == STATE_SIZE
    assert header["vcpus"][0]["cpuid"][1] == [1, 0, 0, 0x806F8, 0x03020800, 0x80000001,
                                              0x178BFBFF]
    assert raw[-32:] == hashlib.sha256(raw[:-32]).digest()


def test_saving_does_not_leave_a_partial_file(tmp_path):
    snap = make_snapshot()
    snap.devices = {"bad": {"value": object()}}                  # not JSON-able
    with pytest.raises(TypeError):
        snap.save(tmp_path / "snap")
    with pytest.raises(FileNotFoundError):
        make_snapshot().save(tmp_path / "missing-dir" / "snap")
    assert os.listdir(tmp_path) == []


def test_a_newer_minor_version_still_loads(saved):
    raw = bytearray(saved.read_bytes())
    struct.pack_into("<H", raw, 10, FORMAT_MINOR + 7)
    saved.write_bytes(refresh_checksum(bytes(raw)))
    assert Snapshot.load(saved).hardened


def test_a_missing_file_is_not_a_format_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        Snapshot.load(tmp_path / "nothing")


# -- damaged files --------------------------------------------------------------------------
def refresh_checksum(raw: bytes) -> bytes:
    body = raw[:-32]
    return body + hashlib.sha256(body).digest()


def rewrite_header(raw: bytes, change) -> bytes:
    """``raw`` with its header changed by ``change(header)`` (edit the dict, or return new
    header text or bytes); the length and checksum are made to match."""
    length, = struct.unpack_from("<I", raw, 12)
    header = json.loads(raw[16:16 + length])
    new = change(header)
    blob = json.dumps(header).encode() if new is None else (
        new if isinstance(new, bytes) else new.encode())
    return refresh_checksum(raw[:12] + struct.pack("<I", len(blob)) + blob + raw[16 + length:])


def load_bytes(tmp_path, raw: bytes) -> Snapshot:
    path = tmp_path / "damaged"
    path.write_bytes(raw)
    return Snapshot.load(path)


def offsets(raw: bytes) -> dict[str, int]:
    """Where the parts of a make_snapshot() file start."""
    length, = struct.unpack_from("<I", raw, 12)
    runs_at = 16 + length
    data_at = runs_at + 8 + 2 * 16
    states_at = len(raw) - 32 - 3 * STATE_SIZE
    return {"header": 16, "runs": runs_at, "data": data_at, "states": states_at,
            "checksum": len(raw) - 32}


@pytest.mark.parametrize("raw, match", [
    (b"", "too short to be a pyhv snapshot"),
    (MAGIC + bytes(39), "too short"),
    (b"NOTASNAP" + bytes(100), "not a pyhv snapshot \\(bad magic\\)"),
])
def test_files_that_are_no_snapshot(tmp_path, raw, match):
    with pytest.raises(SnapshotFormatError, match=match):
        load_bytes(tmp_path, raw)


def test_a_newer_major_format_is_refused(saved, tmp_path):
    raw = bytearray(saved.read_bytes())
    struct.pack_into("<H", raw, 8, FORMAT_MAJOR + 1)
    with pytest.raises(SnapshotFormatError, match=r"format 2.2 is newer than this pyhv reads "
                                                  r"\(1.x\): upgrade pyhv"):
        load_bytes(tmp_path, refresh_checksum(bytes(raw)))


@pytest.mark.parametrize("where, extra", [("header", 0), ("header", 40), ("runs", 4),
                                          ("data", 0), ("data", 5000), ("states", 100),
                                          ("checksum", 0), ("checksum", 31)])
def test_a_truncated_file_is_refused(saved, tmp_path, where, extra):
    raw = saved.read_bytes()
    cut = offsets(raw)[where] + extra
    with pytest.raises(SnapshotFormatError, match="truncated|checksum mismatch|too short|"
                                                  "header length beyond"):
        load_bytes(tmp_path, raw[:cut])


@pytest.mark.parametrize("where", ["header", "runs", "data", "states", "checksum"])
def test_a_flipped_bit_anywhere_is_refused(saved, tmp_path, where):
    raw = bytearray(saved.read_bytes())
    at = offsets(bytes(raw))[where] + 1
    raw[at] ^= 0x10
    with pytest.raises(SnapshotFormatError, match="checksum mismatch|malformed|implausible|"
                                                  "outside|damaged"):
        load_bytes(tmp_path, bytes(raw))


def test_a_flipped_bit_in_page_data_is_caught_by_the_checksum(saved, tmp_path):
    raw = bytearray(saved.read_bytes())
    raw[offsets(bytes(raw))["data"] + 3] ^= 1
    with pytest.raises(SnapshotFormatError, match="checksum mismatch: the file is damaged"):
        load_bytes(tmp_path, bytes(raw))


def test_data_after_the_checksum_is_refused(saved, tmp_path):
    with pytest.raises(SnapshotFormatError, match="data after the checksum"):
        load_bytes(tmp_path, saved.read_bytes() + b"x")


def test_a_header_length_past_the_end_is_refused(saved, tmp_path):
    raw = bytearray(saved.read_bytes())
    struct.pack_into("<I", raw, 12, len(raw) + 1)
    with pytest.raises(SnapshotFormatError, match="header length beyond the end of the file"):
        load_bytes(tmp_path, bytes(raw))


def setting(*path_value):
    *path, value = path_value

    def change(header):
        target = header
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return change


def deleting(*path):
    def change(header):
        target = header
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]
    return change


def replacing(old: str, new: str):
    return lambda header: json.dumps(header).replace(old, new, 1)


HOSTILE_HEADERS = {
    # not a header at all
    "not JSON": (lambda h: "{", "malformed header"),
    "not UTF-8": (lambda h: b"\xff\xfe{}", "malformed header"),
    "a list": (lambda h: "[]", "the header is not a JSON object"),
    "a number": (lambda h: "1e999", "the header is not a JSON object"),
    "deep nesting": (lambda h: "[" * 100000 + "]" * 100000, "malformed header|not a JSON"),
    "deep device": (replacing('"index": 11', '"index": ' + "[" * 50000 + "]" * 50000),
                    "malformed header"),
    "missing key": (deleting("slots"), "malformed header \\(KeyError"),
    "missing slot key": (deleting("slots", 0, "dirty_log"), "malformed header"),
    # the vCPU-state layout
    "state size": (setting("state_size", STATE_SIZE + 8), "vCPU state layout differs"),
    "state version": (setting("state_version", 2), "vCPU state layout differs"),
    "state size 1e999": (replacing(f'"state_size": {STATE_SIZE}', '"state_size": 1e999'),
                         "layout differs"),
    # wrong types and implausible numbers
    "slots a map": (setting("slots", {}), "slots and vCPUs are not lists"),
    "vcpus a number": (setting("vcpus", 5), "slots and vCPUs are not lists"),
    "5000 slots": (setting("slots", [{}] * 5000), "implausible numbers of slots or vCPUs"),
    "1025 vcpus": (setting("vcpus", [{}] * 1025), "implausible numbers"),
    "setup_base 1e999": (replacing('"setup_base": 524288', '"setup_base": 1e999'),
                         "implausible setup_base inf"),
    "setup_base NaN": (replacing('"setup_base": 524288', '"setup_base": NaN'),
                       "implausible setup_base nan"),
    "setup_base huge": (setting("setup_base", 10**4000), "implausible setup_base"),
    "setup_base digits": (replacing('"setup_base": 524288', '"setup_base": 1' + "0" * 5000),
                          "malformed header"),
    "setup_base float": (setting("setup_base", 524288.0), "implausible setup_base"),
    "setup_base bool": (setting("setup_base", True), "implausible setup_base"),
    "setup_base 4G": (setting("setup_base", 1 << 32), "implausible setup_base"),
    "setup_base odd": (setting("setup_base", 0x80800), "not page-aligned"),
    "setup_written": (setting("setup_written", "sideways"), "unknown setup_written"),
    "setup_written list": (setting("setup_written", []), "unknown setup_written"),
    "devices list": (setting("devices", []), "device states are not a map"),
    "device state number": (setting("devices", {"rtc": 5}), "device states are not a map"),
    "version number": (setting("pyhv_version", 5), "pyhv_version is not a string"),
    "hardened string": (setting("hardened", "yes"), "hardened is not true or false"),
    # fast ports (older files): ignored, but must be well formed
    "fast ports list": (setting("fast_ports", []), "damaged fast-port list"),
    "short fast port": (setting("fast_ports", {"1": [1]}), "damaged fast-port list"),
    "fast port name": (setting("fast_ports", {"com1": [1, 2]}), "damaged fast-port list"),
    "fast port 65536": (setting("fast_ports", {"65536": [1, 2]}), "damaged fast-port list"),
    "fast port value": (setting("fast_ports", {"1": [1, -2]}), "implausible fast-port entry"),
    # interrupt-controller state
    "chips list": (setting("chips", []), "damaged interrupt-controller state"),
    "unknown chip": (setting("chips", {"apic": "00"}), "damaged interrupt-controller state"),
    "short chip": (setting("chips", {"pit": "00" * 111}), "damaged interrupt-controller"),
    "chip not hex": (setting("chips", {"pit": "zz" * 112}), "malformed header"),
    "chip number": (setting("chips", {"pit": 5}), "damaged interrupt-controller state"),
    # slots
    "slot a list": (setting("slots", 0, []), "malformed header|a slot is not a JSON object"),
    "slot string gpa": (setting("slots", 0, "gpa", "0"), "implausible slot address '0'"),
    "slot negative gpa": (setting("slots", 0, "gpa", -4096), "implausible slot address"),
    "slot gpa 1e999": (replacing('"gpa": 0', '"gpa": 1e999'), "implausible slot address"),
    "slot odd gpa": (setting("slots", 0, "gpa", 0x800), "implausible slot"),
    "slot beyond 4 PiB": (setting("slots", 2, "gpa", (1 << 52) - 0x1000),
                          "implausible slot"),
    "slot size 0": (setting("slots", 0, "size", 0), "implausible slot"),
    "slot odd size": (setting("slots", 0, "size", 0x1800), "implausible slot"),
    "slot 2^50": (setting("slots", 0, "size", 1 << 50), "implausible slot size"),
    "slot readonly 1": (setting("slots", 1, "readonly", 1), "readonly is not true or false"),
    "slot dirty_log null": (setting("slots", 0, "dirty_log", None), "dirty_log is not true"),
    # vCPUs
    "vcpu a string": (setting("vcpus", 0, "vcpu"), "malformed header|a vCPU is not a JSON"),
    "vcpu id 1024": (setting("vcpus", 1, "id", 1024), "implausible vCPU id 1024"),
    "vcpu id -1": (setting("vcpus", 0, "id", -1), "implausible vCPU id -1"),
    "vcpu id string": (setting("vcpus", 0, "id", "0"), "implausible vCPU id"),
    "twin vcpus": (setting("vcpus", 2, "id", 3), "two vCPUs with one id"),
    "unknown mode": (setting("vcpus", 0, "mode", "warp"), "unknown vCPU mode 'warp'"),
    "mode list": (setting("vcpus", 0, "mode", ["long"]), "unknown vCPU mode"),
    "stubs 1": (setting("vcpus", 0, "stubs", 1), "stubs is not true or false"),
    "cpuid a map": (setting("vcpus", 0, "cpuid", {}), "damaged CPUID table"),
    "cpuid 5000 entries": (setting("vcpus", 0, "cpuid", [[0] * 7] * 5000),
                           "damaged CPUID table"),
    "short cpuid entry": (setting("vcpus", 0, "cpuid", 0, [1, 2]), "damaged CPUID table"),
    "cpuid entry a map": (setting("vcpus", 0, "cpuid", 0, {}), "damaged CPUID table"),
    "cpuid value 2^32": (setting("vcpus", 0, "cpuid", 0, 3, 1 << 32), "implausible CPUID"),
    "cpuid value -1": (setting("vcpus", 0, "cpuid", 0, 3, -1), "implausible CPUID value"),
    "cpuid value float": (setting("vcpus", 0, "cpuid", 0, 3, 1.0), "implausible CPUID value"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_HEADERS))
def test_hostile_headers_are_format_errors(saved, tmp_path, name):
    change, match = HOSTILE_HEADERS[name]
    raw = rewrite_header(saved.read_bytes(), change)
    with pytest.raises(SnapshotFormatError, match=match):
        load_bytes(tmp_path, raw)


def test_the_untouched_header_loads(saved, tmp_path):
    # the rewriting itself keeps a good file good (so the cases above fail for their edit)
    assert load_bytes(tmp_path, rewrite_header(saved.read_bytes(), lambda h: None)).hardened


def rewrite_runs(raw: bytes, count: int, runs: list[tuple[int, int]]) -> bytes:
    """``raw`` with its first slot's run table replaced (page data left as it was)."""
    at = offsets(raw)["runs"]
    table = struct.pack("<Q", count) + b"".join(struct.pack("<QQ", f, n) for f, n in runs)
    return refresh_checksum(raw[:at] + table + raw[at + 8 + 2 * 16:])


@pytest.mark.parametrize("count, runs, match", [
    (2**60, [(0, 3), (200, 1)], "implausible page-run count"),
    (257, [(0, 3), (200, 1)], "implausible page-run count"),            # more than pages
    (2, [(0, 3), (255, 2)], r"page run 255\+2 outside its slot"),
    (2, [(0, 3), (2**63, 1)], "outside its slot"),
    (2, [(0, 0), (200, 1)], r"page run 0\+0 outside its slot"),
])
def test_damaged_page_runs_are_refused(saved, tmp_path, count, runs, match):
    with pytest.raises(SnapshotFormatError, match=match):
        load_bytes(tmp_path, rewrite_runs(saved.read_bytes(), count, runs))


@pytest.mark.parametrize("damage", ["version 0", "version 2", "too many MSRs"])
def test_damaged_vcpu_state_is_refused(saved, tmp_path, damage):
    raw = bytearray(saved.read_bytes())
    at = offsets(bytes(raw))["states"] + STATE_SIZE            # the second vCPU's state
    state = ffi.from_buffer("struct pyhv_vcpu_state *", raw, require_writable=True)
    st = ffi.cast("struct pyhv_vcpu_state *", ffi.cast("uint8_t *", state) + at)
    if damage == "too many MSRs":
        st.nmsrs = lib.PYHV_STATE_MAX_MSRS + 1
    else:
        st.version = int(damage[-1])
    with pytest.raises(SnapshotFormatError, match="damaged vCPU state"):
        load_bytes(tmp_path, refresh_checksum(bytes(raw)))


def test_check_state_blob():
    assert check_state_blob(state_blob())
    assert check_state_blob(state_blob(nmsrs=lib.PYHV_STATE_MAX_MSRS))
    assert not check_state_blob(state_blob(nmsrs=lib.PYHV_STATE_MAX_MSRS + 1))
    assert not check_state_blob(state_blob(version=lib.PYHV_STATE_VERSION + 1))
    assert not check_state_blob(state_blob()[:-1])
    assert not check_state_blob(state_blob() + b"\0")
    assert STATE_SIZE == ffi.sizeof("struct pyhv_vcpu_state")


def test_every_refusal_is_also_a_value_error(tmp_path):
    with pytest.raises(ValueError):
        load_bytes(tmp_path, b"NOTASNAP" + bytes(100))


def test_overlapping_slots_are_refused(saved, tmp_path):
    raw = rewrite_header(saved.read_bytes(), setting("slots", 1, "gpa", 0))   # ROM over RAM
    with pytest.raises(SnapshotFormatError):
        load_bytes(tmp_path, raw)
