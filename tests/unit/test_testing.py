"""pyhv.testing: the assembler helper users call in their own tests."""

from __future__ import annotations

import pytest

from pyhv.testing import ToolchainError, assemble


def test_assemble_each_width_and_origin():
    assert assemble("hlt", bits=16) == b"\xf4"
    assert assemble("mov $1, %eax", bits=32) == b"\xb8\x01\x00\x00\x00"
    assert assemble("mov $1, %ax", bits=32) == b"\x66\xb8\x01\x00"
    assert assemble("mov $1, %ax", bits=16) == b"\xb8\x01\x00"
    # a RIP-relative reference depends on where the code runs
    code = assemble("lea data(%rip), %rax\ndata: .byte 1", origin=0x2000)
    assert code[:3] == b"\x48\x8d\x05" and code[-1] == 1


def test_assemble_with_preprocessor():
    assert assemble("#define VALUE 7\nmov $VALUE, %al", cpp=True) == b"\xb0\x07"


def test_assembler_errors_are_clear():
    with pytest.raises(ToolchainError, match="assembling failed"):
        assemble("not_an_instruction %eax")
    with pytest.raises(ValueError):
        assemble("hlt", bits=8)
