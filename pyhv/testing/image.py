"""A built guest: its ELF file (symbols and debug info kept, for gdb and for reports), the
mode it was built for, where the ucall records lie, and source lines for addresses.

>>> from pyhv.testing import build_guest
>>> image = build_guest(c="void guest_main(int cpu) { }", mode="user")
>>> image.mode, image.bits, hex(image.entry), image.symbol("guest_main") > image.entry
('user', 64, '0x100000', True)
"""

from __future__ import annotations

import bisect
import functools
import io
import os
import shutil
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import HypervisorError, ImageFormatError, InvalidArgument
from . import layout

MODES = ("user", "long", "protected")
LIBRARY_DIR = Path(__file__).resolve().parent / "guest"      # pyhv's guest library
# the symbols the host needs; an image without them was not built by build_guest
REQUIRED_SYMBOLS = ("_start", "pyhv_ucalls", "pyhv_guest_info", "pyhv_stacks")


@dataclass(frozen=True)
class SourceLine:
    """Where an address lies in the guest's source (from its DWARF line table)."""

    file: str
    line: int
    function: str | None = None

    @property
    def in_library(self) -> bool:
        """Whether it is pyhv's guest library's code rather than the test's."""
        return Path(self.file).is_relative_to(LIBRARY_DIR)

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}"
        return f"{where} ({self.function})" if self.function else where


@dataclass(frozen=True)
class GuestImage:
    """A guest ELF built by :func:`pyhv.testing.build_guest` (or loaded with
    :meth:`from_file`).  ``path`` stays valid while the build cache is kept; ``sources``
    are the files it was compiled from (the library's excluded)."""

    path: Path
    mode: str
    bits: int
    entry: int
    symbols: dict[str, tuple[int, int]] = field(repr=False)     # name -> (address, size)
    functions: tuple[tuple[int, int, str], ...] = field(default=(), repr=False)  # sorted
    sources: tuple[Path, ...] = field(default=(), repr=False)
    data: bytes = field(default=b"", repr=False, compare=False)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], mode: str | None = None,
                  sources: Iterable[Path] = ()) -> GuestImage:
        """Read a guest ELF built by ``build_guest`` (``mode``: as built; by default what the
        image records)."""
        from elftools.elf.elffile import ELFFile
        from elftools.elf.sections import SymbolTableSection

        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ImageFormatError(f"{path}: cannot read the guest image ({exc.strerror})") \
                from None
        try:
            elf = ELFFile(io.BytesIO(data))
            bits = elf.elfclass
            entry = elf.header["e_entry"]
            table = elf.get_section_by_name(".symtab")
            symbols, functions = {}, []
            if isinstance(table, SymbolTableSection):
                for sym in table.iter_symbols():
                    kind = sym["st_info"]["type"]
                    if sym.name and kind in ("STT_FUNC", "STT_OBJECT", "STT_NOTYPE"):
                        symbols[sym.name] = (sym["st_value"], sym["st_size"])
                    if sym.name and kind == "STT_FUNC":
                        functions.append((sym["st_value"], sym["st_size"], sym.name))
        except Exception as exc:      # pyelftools fails in many ways on a bad file
            raise ImageFormatError(f"{path}: not a guest ELF image: {type(exc).__name__}: "
                                   f"{exc}") from None
        missing = [name for name in REQUIRED_SYMBOLS if name not in symbols]
        if missing:
            raise ImageFormatError(f"{path}: not a pyhv.testing guest (no {', '.join(missing)}"
                                   "): build it with pyhv.testing.build_guest")
        recorded = next((m for m in MODES if f"pyhv_mode_{m}" in symbols), None)
        mode = mode or recorded
        if mode not in MODES:
            raise InvalidArgument(f"unknown guest mode {mode!r}; choose one of {MODES}")
        if (bits == 32) != (mode == "protected"):
            raise ImageFormatError(f"{path}: a {bits}-bit image cannot run in {mode} mode")
        return cls(path, mode, bits, entry, symbols, tuple(sorted(functions)),
                   tuple(sources), data)

    # -- symbols ----------------------------------------------------------------------------
    def symbol(self, name: str) -> int:
        """The address of ``name`` (a function or a global variable)."""
        try:
            return self.symbols[name][0]
        except KeyError:
            raise InvalidArgument(f"the guest has no symbol {name!r}") from None

    def has_symbol(self, name: str) -> bool:
        return name in self.symbols

    @property
    def pointer_size(self) -> int:
        return self.bits // 8

    def ucall_record(self, cpu: int) -> int:
        """GPA of vCPU ``cpu``'s ucall record."""
        if not 0 <= cpu < layout.MAX_CPUS:
            raise InvalidArgument(f"vCPU index {cpu} is not 0..{layout.MAX_CPUS - 1}")
        return self.symbol("pyhv_ucalls") + cpu * layout.UCALL_SIZE

    # -- source lines -----------------------------------------------------------------------
    def source_line(self, address: int) -> SourceLine | None:
        """The source line (and function) of the instruction at ``address``, or None where
        no function holds it or the image has no line table.  Code inlined from pyhv's
        guest library (``cpu_relax()``, ``inb()``...) is reported at the line that used it."""
        function = self.function_at(address)
        if function is None:
            return None
        rows = _line_rows(self.data or self.path.read_bytes())
        i = bisect.bisect_right(rows, (address, "\uffff", 1 << 62)) - 1
        if i < 0:
            return None
        _, file, line = rows[i]
        if Path(file).is_relative_to(LIBRARY_DIR):
            caller = _inlined_into(str(self.path), address)
            if caller is not None:
                return caller
        # gcc's clones (copy.constprop.0, f.part.1, f.cold) are the C function to a reader
        return SourceLine(file, line, function.partition(".")[0])

    def backtrace(self, rip: int, rbp: int, read: Callable[[int, int], bytes],
                  rsp: int | None = None, limit: int = 16) -> tuple[SourceLine, ...]:
        """The call chain at ``rip``, innermost first: its source line, then each caller's,
        found by walking the frame pointers from ``rbp`` (guests are built with them), and
        through ``rsp`` for a leaf function that keeps no frame (``memcpy``);
        ``read(address, size)`` reads guest memory.  The walk stays on the vCPU stacks and
        stops at anything odd (the guest's memory is its own to corrupt)."""
        frames = []
        where = self.source_line(rip)
        if where is None:
            return ()
        frames.append(where)
        width = self.pointer_size
        low = self.symbol("pyhv_stacks")
        high = low + layout.MAX_CPUS * layout.STACK_SIZE

        def word(address: int) -> int | None:
            if not low <= address <= high - width or address % width:
                return None
            try:
                return int.from_bytes(read(address, width), "little")
            except HypervisorError:
                return None

        if rsp is not None and not self._keeps_frame(rip, read):
            back = word(rsp)                 # a frameless leaf: its return address on top
            caller = self.source_line(back - 1) if back else None
            if caller is not None:
                frames.append(caller)
        frame = rbp
        for _ in range(limit):
            caller_frame, back = word(frame), word(frame + width)
            caller = self.source_line(back - 1) if back else None
            if caller_frame is None or caller is None:
                break
            frames.append(caller)
            if caller_frame <= frame:
                break
            frame = caller_frame
        return tuple(frames)

    def _keeps_frame(self, rip: int, read: Callable[[int, int], bytes]) -> bool:
        """Whether the function holding ``rip`` starts ``push %rbp; mov %rsp, %rbp``."""
        i = bisect.bisect_right(self.functions, (rip, 1 << 62, "")) - 1
        if i < 0:
            return True
        prologue = b"\x55\x48\x89\xe5" if self.bits == 64 else b"\x55\x89\xe5"
        try:
            return read(self.functions[i][0], len(prologue)) == prologue
        except HypervisorError:
            return True

    def function_at(self, address: int) -> str | None:
        """The name of the function that holds ``address``, or None."""
        i = bisect.bisect_right(self.functions, (address, 1 << 62, "")) - 1
        if i < 0:
            return None
        start, size, name = self.functions[i]
        return name if start <= address < start + max(size, 1) else None


def first_in_test(frames: Iterable[SourceLine]) -> SourceLine | None:
    """The innermost frame of a backtrace that is the test's code (not the guest library's),
    or the innermost frame when all are the library's."""
    frames = list(frames)
    return next((f for f in frames if not f.in_library), frames[0] if frames else None)


@functools.lru_cache(maxsize=64)
def _line_rows(data: bytes) -> list[tuple[int, str, int]]:
    """(address, file, line) rows of the image's DWARF line table, sorted."""
    from elftools.elf.elffile import ELFFile

    rows: list[tuple[int, str, int]] = []
    try:
        elf = ELFFile(io.BytesIO(data))
        if elf.has_dwarf_info():
            dwarf = elf.get_dwarf_info()
            for unit in dwarf.iter_CUs():
                program = dwarf.line_program_for_CU(unit)
                if program is None:
                    continue
                names = _file_names(program)
                for entry in program.get_entries():
                    state = entry.state
                    if state is None or state.end_sequence or not state.line:
                        continue
                    rows.append((state.address, names.get(state.file, "?"), state.line))
    except Exception:          # no usable debug info: reports go without lines
        rows = []
    rows.sort()
    return rows


@functools.lru_cache(maxsize=256)
def _inlined_into(path: str, address: int) -> SourceLine | None:
    """Where code inlined from the guest library at ``address`` was used: the first frame of
    binutils' ``addr2line -i`` chain outside the library (None without addr2line)."""
    tool = shutil.which("addr2line")
    if tool is None:
        return None
    try:
        out = subprocess.run([tool, "-f", "-i", "-e", path, f"{address:#x}"],
                             capture_output=True, text=True, timeout=30).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return None
    for function, where in zip(out[::2], out[1::2], strict=False):
        file, _, line = where.split(" (")[0].rpartition(":")
        if file and line.isdigit() and not Path(file).is_relative_to(LIBRARY_DIR):
            return SourceLine(file, int(line), function.partition(".")[0])
    return None


def _file_names(program: Any) -> dict[int, str]:
    """File numbers of a line program -> names (DWARF 5 counts from 0, older from 1)."""
    header = program.header
    version = header["version"]
    directories = [d.decode() if isinstance(d, bytes) else str(d)
                   for d in header["include_directory"]]
    names = {}
    for index, entry in enumerate(header["file_entry"]):
        name = entry.name.decode() if isinstance(entry.name, bytes) else str(entry.name)
        directory = entry.dir_index
        if not os.path.isabs(name) and 0 <= directory < len(directories) and (
                version >= 5 or directory > 0):
            base = directories[directory] if version >= 5 else directories[directory - 1]
            name = os.path.join(base, name)
        names[index if version >= 5 else index + 1] = name
    return names
