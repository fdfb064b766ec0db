"""pyhv.testing.layout against the guest library's header: the numbers the host and the
guests share (no KVM: the header is read, and compiled for both widths)."""

from __future__ import annotations

import re
import subprocess

import pytest

from pyhv.testing import layout
from pyhv.testing.build import INCLUDE_DIR, MODE_FLAGS, compiler

HEADER = INCLUDE_DIR / "pyhv" / "guest.h"


def defines() -> dict[str, int]:
    found: dict[str, int] = {}
    for name, value in re.findall(r"^#define (PYHV_\w+)\s+([\w()< ]+?)\s*(?:/\*.*)?$",
                                  HEADER.read_text(), re.M):
        # numbers, and shifts of the numbers defined before
        found[name] = eval(value, {"__builtins__": {}}, dict(found))
    return found


def test_the_header_and_the_host_agree_on_the_channel():
    d = defines()
    assert d["PYHV_MAX_CPUS"] == layout.MAX_CPUS
    assert d["PYHV_STACK_SHIFT"] == layout.STACK_SHIFT
    assert d["PYHV_STACK_SIZE"] == layout.STACK_SIZE
    assert d["PYHV_UCALL_PORT"] == layout.UCALL_PORT
    assert d["PYHV_UCALL_MMIO"] == layout.UCALL_MMIO
    assert d["PYHV_UCALL_TEXT"] == layout.UCALL_TEXT
    assert d["PYHV_GUEST_MAGIC"] == layout.GUEST_MAGIC
    assert d["PYHV_GUEST_VERSION"] == layout.GUEST_VERSION
    assert d["PYHV_SLOT_DEPTH"] == layout.EX_SLOT_DEPTH


def test_commands_and_value_kinds_match_the_enums():
    text = HEADER.read_text()
    for command in layout.Command:
        assert re.search(rf"PYHV_UCALL_{command.name} = {command.value},", text), command
    for kind in layout.ValueKind:
        assert re.search(rf"PYHV_{kind.name} = {kind.value}\b", text), kind


@pytest.mark.parametrize("mode", ["user", "protected"])
def test_record_layout_is_the_same_for_32_and_64_bit_guests(tmp_path, mode):
    # the compiler checks what the host assumes about the structs' layout
    check = tmp_path / "layout.c"
    check.write_text(f"""
#include <pyhv/guest.h>
_Static_assert(sizeof(struct pyhv_ucall) == {layout.UCALL_SIZE}, "ucall size");
_Static_assert(__builtin_offsetof(struct pyhv_ucall, reply) == {layout.UCALL_REPLY}, "reply");
_Static_assert(__builtin_offsetof(struct pyhv_ucall, text) == {layout.UCALL_TEXT_OFFSET},
               "text");
_Static_assert(sizeof(struct pyhv_guest_info) == {layout.GUEST_INFO.size}, "info");
_Static_assert(sizeof(struct pyhv_ex_slot) == {layout.EX_SLOT_SIZE}, "slot size");
_Static_assert(sizeof(guest_handler_t) * 8 == {32 if mode == "protected" else 64}, "ptr");
""")
    proc = subprocess.run([compiler(), *MODE_FLAGS[mode], "-ffreestanding", f"-I{INCLUDE_DIR}",
                           "-fsyntax-only", str(check)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
