"""build_guest without KVM: the real gcc, the guest library, the cache, the errors."""

from __future__ import annotations

import os
import re
import stat

import pytest

import pyhv
from pyhv.testing import GuestImage, ToolchainError, assemble, build_guest
from pyhv.testing.build import cache_root

MINIMAL = "void guest_main(int cpu) { GUEST_SYNC(cpu); }"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A cache of this test's own, so builds really happen."""
    where = tmp_path / "cache"
    monkeypatch.setenv("PYHV_GUEST_CACHE", str(where))
    return where


@pytest.fixture
def counted_gcc(tmp_path, monkeypatch):
    """gcc behind a wrapper that logs each call: how many times a build ran the compiler."""
    log = tmp_path / "gcc.log"
    wrapper = tmp_path / "gcc-wrapper"
    wrapper.write_text(f'#!/bin/sh\necho "$@" >> {log}\nexec gcc "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PYHV_GUEST_CC", str(wrapper))
    log.write_text("")
    return lambda: len(log.read_text().splitlines())


@pytest.mark.parametrize("mode, bits", [("user", 64), ("long", 64), ("protected", 32)])
def test_each_mode_builds_an_elf_with_the_library_and_debug_info(cache, mode, bits):
    image = build_guest(c="void guest_main(int cpu) { GUEST_SYNC(cpu); }", mode=mode)
    assert (image.mode, image.bits, image.entry) == (mode, bits, 0x100000)
    assert image.path.is_file() and image.path.is_relative_to(cache)
    for name in ("_start", "guest_main", "pyhv_sync", "pyhv_ucalls", "pyhv_exception_entry",
                 "guest_printf", "vsnprintf", "memcpy"):
        assert image.has_symbol(name), name
    assert image.pointer_size == bits // 8
    assert image.ucall_record(1) - image.ucall_record(0) == 1024
    # the image says its own mode when read back
    assert GuestImage.from_file(image.path).mode == mode
    # an address inside guest_main maps to this file's line (the literal's line numbers)
    where = image.source_line(image.symbol("guest_main") + 1)
    assert where is not None and where.function == "guest_main"
    assert os.path.samefile(where.file, __file__)


def test_a_second_build_comes_from_the_cache_without_the_compiler(cache, counted_gcc):
    first = build_guest(c=MINIMAL, mode="user")
    compiles = counted_gcc()
    assert compiles >= 2                        # the library, then the guest (and the link)
    again = build_guest(c=MINIMAL, mode="user")
    assert again == first and counted_gcc() == compiles
    # other flags, other source, other mode: built again (the library only once per mode)
    build_guest(c=MINIMAL, mode="user", cflags="-O1")
    after_flags = counted_gcc()
    assert after_flags > compiles
    build_guest(c=MINIMAL + "\n", mode="user")
    assert counted_gcc() > after_flags
    # the inline source is kept next to the image, for gdb
    assert first.sources[0].read_text().endswith(MINIMAL)


def test_a_changed_header_rebuilds_a_guest_from_files(cache, tmp_path, counted_gcc):
    header = tmp_path / "answer.h"
    header.write_text("#define ANSWER 41\n")
    source = tmp_path / "guest_main.c"
    source.write_text('#include "answer.h"\nvoid guest_main(int cpu) { GUEST_SYNC(ANSWER); }\n')
    first = build_guest(files=[source], mode="long")
    n = counted_gcc()
    assert build_guest(files=[source], mode="long") == first and counted_gcc() == n
    header.write_text("#define ANSWER 42\n")
    second = build_guest(files=[source], mode="long")
    assert counted_gcc() > n and second.data != first.data
    assert second.sources == (source,)


def test_inline_c_includes_from_the_test_files_directory(cache, tmp_path):
    (tmp_path / "helper.h").write_text("static inline int helper(void) { return 7; }\n")
    image = build_guest(c='#include "helper.h"\nvoid guest_main(int cpu) { helper(); }',
                        source_file=str(tmp_path / "test_x.py"), first_line=10)
    where = image.source_line(image.symbol("guest_main"))
    assert where is not None and where.file == str(tmp_path / "test_x.py")
    assert where.line in (11, 12)


def test_compiler_errors_name_files_without_the_staging_directory(cache):
    source = "void guest_main(int cpu) { oops }"      # not a literal in the call: not located
    with pytest.raises(ToolchainError) as info:
        build_guest(c=source, name="mine.c")
    assert "\nmine.c:1:" in str(info.value) and "build-" not in str(info.value)


def test_compiler_errors_name_the_test_files_lines(cache):
    with pytest.raises(ToolchainError, match=r"test_guest_build\.py:\d+:.*error") as info:
        build_guest(c="""
void guest_main(int cpu)
{
    this_is_not_c;
}
""")
    line = int(re.search(r"test_guest_build\.py:(\d+):\d+: error", str(info.value))[1])
    with open(__file__) as f:
        assert "this_is_not_c;" in f.readlines()[line - 1]


def test_link_errors_are_toolchain_errors(cache):
    with pytest.raises(ToolchainError, match="undefined reference to `no_such_function'"):
        build_guest(c="void no_such_function(void);\n"
                      "void guest_main(int cpu) { no_such_function(); }")
    with pytest.raises(ToolchainError, match="every guest defines `void guest_main"):
        build_guest(c="int not_main;")


def test_64_bit_division_links_in_32_bit_guests(cache):
    image = build_guest(c="volatile uint64_t a = 1000, b = 7;\n"
                          "void guest_main(int cpu) { GUEST_SYNC(a / b + a % b); }",
                        mode="protected")
    assert image.has_symbol("__udivdi3")


@pytest.mark.parametrize("kwargs, message", [
    ({"c": MINIMAL, "mode": "real"}, "unknown guest mode 'real'"),
    ({}, "give the guest's C source"),
    ({"c": b"void guest_main(int c) {}"}, "takes the C source as a string"),
    ({"files": ["/nonexistent/guest.c"]}, "does not exist"),
    ({"c": MINIMAL, "cflags": ["-O1", 3]}, "cflags must be strings"),
    ({"c": MINIMAL, "name": "../guest.c"}, "plain file name"),
    ({"c": MINIMAL, "source_file": "x.py", "first_line": 0}, "first_line must be an int >= 1"),
    ({"c": MINIMAL, "source_file": "x.py", "first_line": "3"}, "first_line must be an int"),
    ({"files": ["/"]}, "is not a file"),
    ({"files": [3]}, "files= takes paths"),
    ({"c": MINIMAL, "name": 5}, "plain file name"),
])
def test_bad_arguments_are_refused_before_anything_is_built(cache, kwargs, message):
    with pytest.raises(pyhv.InvalidArgument, match=message):
        build_guest(**kwargs)
    assert not cache.exists()


def test_files_of_another_kind_are_refused(cache, tmp_path):
    other = tmp_path / "guest.cpp"
    other.write_text("")
    with pytest.raises(pyhv.InvalidArgument, match="only .c, .S and .s"):
        build_guest(files=[other])


def test_a_missing_compiler_says_what_to_install(cache, monkeypatch):
    monkeypatch.setenv("PYHV_GUEST_CC", "no-such-gcc")
    with pytest.raises(ToolchainError, match="no-such-gcc.*apt-get install gcc"):
        build_guest(c=MINIMAL)


def test_the_cache_location_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("PYHV_GUEST_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_root() == tmp_path / "pyhv" / "guests"
    monkeypatch.setenv("PYHV_GUEST_CACHE", str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"


def test_a_damaged_cache_entry_is_built_again(cache):
    image = build_guest(c=MINIMAL)
    (image.path.parent / "meta.json").write_text("{not json")
    again = build_guest(c=MINIMAL)
    assert again.path.is_file() and again.symbols == image.symbols


def test_images_that_are_not_pyhv_guests_are_refused(tmp_path):
    junk = tmp_path / "junk.elf"
    junk.write_bytes(b"\x7fELF" + b"\0" * 60)
    with pytest.raises(pyhv.ImageFormatError, match="not a guest ELF image"):
        GuestImage.from_file(junk)
    with pytest.raises(pyhv.ImageFormatError, match="cannot read"):
        GuestImage.from_file(tmp_path / "missing.elf")
    assert assemble("hlt")                   # binutils are here: an ELF without our symbols
    plain = tmp_path / "plain.elf"
    os.system(f"printf 'void _start(void){{}}' | gcc -x c -nostdlib -static -o {plain} - "
              "2>/dev/null")
    if plain.exists():
        with pytest.raises(pyhv.ImageFormatError, match="not a pyhv.testing guest"):
            GuestImage.from_file(plain)
