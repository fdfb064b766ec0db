"""Building guests written in C: the system gcc, pyhv's guest library (shipped in the
package under ``guest/``), and a cache keyed by the content of everything that goes in.

>>> from pyhv.testing import build_guest
>>> source = "void guest_main(int cpu) { GUEST_SYNC(cpu); }"
>>> image = build_guest(c=source, mode="long")
>>> image.mode, image.path.name, build_guest(c=source, mode="long") == image
('long', 'guest.elf', True)

A second build of the same inputs costs a hash and a look in the cache.  The cache lives
in ``$PYHV_GUEST_CACHE``, else ``$XDG_CACHE_HOME/pyhv/guests`` (``~/.cache/pyhv/guests``);
deleting it is always safe.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import json
import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from types import FrameType

from ..errors import InvalidArgument
from .errors import ToolchainError
from .image import LIBRARY_DIR, MODES, GuestImage

__all__ = ["GUEST_DIR", "build_guest", "cache_root", "compiler", "locate_literal"]

GUEST_DIR = LIBRARY_DIR
INCLUDE_DIR = GUEST_DIR / "include"
LINKER_SCRIPT = GUEST_DIR / "guest.ld"
CACHE_FORMAT = "1"          # bump when what a cache entry holds changes

# frame pointers and no sibling calls: the host walks a guest's call chain for its reports
_COMMON = ["-std=gnu11", "-ffreestanding", "-fno-pic", "-fno-pie", "-fno-stack-protector",
           "-fno-asynchronous-unwind-tables", "-fno-omit-frame-pointer",
           "-mno-omit-leaf-frame-pointer", "-fno-optimize-sibling-calls", "-mno-red-zone",
           "-fcf-protection=none", "-fno-delete-null-pointer-checks", "-g", "-O2", "-Wall"]
# ring-0 code runs under KVM's instruction emulator on software KVMs (kvm_pvm), which lacks
# SSE: those modes are built for the general registers only
MODE_FLAGS = {
    "user": ["-m64", "-DPYHV_MODE_USER"],
    "long": ["-m64", "-mgeneral-regs-only", "-DPYHV_MODE_LONG"],
    "protected": ["-m32", "-march=i686", "-mgeneral-regs-only", "-DPYHV_MODE_PROTECTED"],
}
_LINK = ["-nostdlib", "-static", "-no-pie", "-Wl,--build-id=none",
         "-Wl,-z,max-page-size=0x1000", "-Wl,-z,noexecstack", "-Wl,--no-warn-rwx-segments"]


def _pyhv_flags(mode: str) -> str:
    """pyhv's own compiler and linker flags for ``mode`` (part of every cache key)."""
    return json.dumps([_COMMON, MODE_FLAGS[mode], _LINK])


def _library_sources(mode: str) -> list[Path]:
    src = GUEST_DIR / "src"
    names = ["ucall.c", "format.c", "string.c", "exceptions.c"]
    names += ["divide32.c", "start32.S"] if mode == "protected" else ["start64.S"]
    return [src / n for n in names]


@functools.lru_cache(maxsize=1)
def _library_digest() -> str:
    """A hash of the whole guest library (headers, sources, linker script) and of where it
    lies: an image's debug information names the library's files by their paths, so two
    installations (two checkouts, two venvs) must not share images."""
    h = hashlib.sha256(str(GUEST_DIR.resolve()).encode() + b"\0")
    for path in sorted(p for p in GUEST_DIR.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(GUEST_DIR)).encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()


@functools.lru_cache(maxsize=4)
def _compiler_identity(cc: str) -> str:
    try:
        proc = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=60)
    except OSError as exc:
        raise ToolchainError(f"cannot run the guest compiler {cc!r}: {exc.strerror}") from None
    if proc.returncode != 0:
        raise ToolchainError(f"`{cc} --version` failed: {proc.stderr.strip()}")
    return proc.stdout.splitlines()[0] if proc.stdout else cc


def compiler() -> str:
    """The C compiler guests are built with: ``$PYHV_GUEST_CC``, else ``gcc`` on the PATH."""
    name = os.environ.get("PYHV_GUEST_CC", "gcc")
    path = shutil.which(name)
    if path is None:
        raise ToolchainError(f"the guest compiler `{name}` is not installed: install gcc "
                             "(Debian/Ubuntu: apt-get install gcc binutils) or set "
                             "PYHV_GUEST_CC")
    return path


def cache_root() -> Path:
    """Where built guests are kept (see the module docstring)."""
    explicit = os.environ.get("PYHV_GUEST_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pyhv" / "guests"


def _run(argv: list[str], what: str, cwd: Path) -> None:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, cwd=cwd, timeout=300)
    except OSError as exc:
        raise ToolchainError(f"{what}: cannot run {argv[0]}: {exc.strerror}") from None
    if proc.returncode != 0:
        # the staging directory is gone by the time anyone reads this: name files alone
        text = proc.stderr.strip().replace(f"{cwd}/", "")
        if "undefined reference to `guest_main'" in text:
            text += "\n(every guest defines `void guest_main(int cpu)`: each vCPU enters it)"
        raise ToolchainError(f"{what} failed:\n{text}")


def _flags(cflags: str | Sequence[str]) -> list[str]:
    if isinstance(cflags, str):
        return shlex.split(cflags)
    flags = list(cflags)
    if not all(isinstance(f, str) for f in flags):
        raise InvalidArgument(f"cflags must be strings, not {cflags!r}")
    return flags


def locate_literal(frame: FrameType | None, text: str) -> tuple[str, int] | None:
    """Where ``text``, a string literal passed by the call running in ``frame``, starts in
    that frame's source file: (file, line of the text's first line); None when it cannot be
    told, or when the literal's lines do not map one to one onto the text's (escapes,
    concatenation)."""
    import ast
    import linecache

    if frame is None or not os.path.isfile(frame.f_code.co_filename):
        return None
    filename = frame.f_code.co_filename
    source = "".join(linecache.getlines(filename, frame.f_globals))
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return None
    lineno = frame.f_lineno
    for call in ast.walk(tree):
        if not (isinstance(call, ast.Call) and call.lineno <= lineno <= (call.end_lineno or 0)):
            continue
        for arg in [*call.args, *(k.value for k in call.keywords)]:
            if isinstance(arg, ast.Constant) and arg.value == text:
                segment = ast.get_source_segment(source, arg)
                if segment is None or segment.count("\n") != text.count("\n"):
                    return None
                return os.path.abspath(filename), arg.lineno
    return None


@contextlib.contextmanager
def _staging(root: Path, prefix: str) -> Iterator[Path]:
    """A fresh directory under ``root`` for a build, to be renamed into place when it is
    complete (atomic: readers never see half an entry); removed if it is still there."""
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=prefix, dir=root))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _publish(work: Path, entry: Path) -> None:
    """Move a finished build into place; a parallel build that got there first wins."""
    try:
        work.rename(entry)
    except OSError:
        if not entry.is_dir():
            raise ToolchainError(f"cannot store the built guest in {entry}") from None


def _digest_files(paths: Iterable[Path]) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def _dependencies(depfiles: Iterable[Path]) -> list[Path]:
    """The files gcc's -MD depfiles name (the headers a user's sources included)."""
    found: set[Path] = set()
    for depfile in depfiles:
        text = depfile.read_text().replace("\\\n", " ")
        for line in text.splitlines():
            _, _, deps = line.partition(": ")
            for name in shlex.split(deps.replace("\\ ", "\0")):
                path = Path(name.replace("\0", " "))
                if path.is_file():
                    found.add(path.resolve())
    return sorted(found)


def build_guest(c: str | None = None, *, files: Sequence[str | os.PathLike[str]] = (),
                mode: str = "user", cflags: str | Sequence[str] = (), name: str = "guest.c",
                source_file: str | None = None, first_line: int | None = None,
                cache_dir: str | os.PathLike[str] | None = None) -> GuestImage:
    """Build a guest from C source text ``c`` and/or source ``files`` (``.c`` and ``.S``)
    with pyhv's guest library (``#include <pyhv/guest.h>``), for ``mode``: "user" (ring 3,
    64-bit: native speed on software KVMs such as kvm_pvm), "long" (ring 0, 64-bit) or
    "protected" (ring 0, 32-bit).  ``cflags`` go to every user source (after pyhv's: ``-O0``
    wins over ``-O2``).  Returns the :class:`GuestImage` (an ELF with symbols and debug info).

    When ``c`` is a string literal in the calling code, its lines are numbered as in that
    file (a ``#line`` directive), so that compiler errors, failed guest assertions and gdb
    name the test file's own lines; ``source_file`` and ``first_line`` say it explicitly.
    The guest library's own header is always included first.

    Builds are cached by the content of everything that goes in (sources, included headers,
    flags, the library, the compiler's version).  Errors from the compiler raise
    :class:`pyhv.testing.ToolchainError` with its messages.
    """
    if mode not in MODES:
        raise InvalidArgument(f"unknown guest mode {mode!r}; choose one of {', '.join(MODES)}")
    if c is not None and not isinstance(c, str):
        raise InvalidArgument(f"c= takes the C source as a string, not {type(c).__name__}")
    if isinstance(files, (str, os.PathLike)):
        files = [files]
    if not all(isinstance(f, (str, os.PathLike)) for f in files):
        raise InvalidArgument(f"files= takes paths, not {files!r}")
    paths = [Path(f).resolve() for f in files]
    for path in paths:
        if not path.is_file():
            raise InvalidArgument(f"guest source {path} " + (
                "is not a file" if path.exists() else "does not exist"))
        if path.suffix not in (".c", ".S", ".s"):
            raise InvalidArgument(f"guest source {path}: only .c, .S and .s files are built")
    if c is None and not paths:
        raise InvalidArgument("give the guest's C source (c=...) or its files (files=...)")
    if not isinstance(name, str) or not name.endswith(".c") or "/" in name or \
            name.startswith("."):
        raise InvalidArgument(f"name {name!r} must be a plain file name ending in .c")
    user_flags = _flags(cflags)
    if c is not None and source_file is None:
        here = inspect.currentframe()
        found = locate_literal(here.f_back if here is not None else None, c)
        if found is not None:
            source_file, first_line = found
    text = None
    if c is not None:
        text = c
        if source_file is not None:
            line = 1 if first_line is None else first_line
            if isinstance(line, bool) or not isinstance(line, int) or line < 1:
                raise InvalidArgument(f"first_line must be an int >= 1, not {first_line!r}")
            text = f'#line {line} "{_c_string(source_file)}"\n{c}'
    cc = compiler()
    root = Path(cache_dir) if cache_dir is not None else cache_root()

    h = hashlib.sha256()
    for part in (CACHE_FORMAT, _compiler_identity(cc), mode, _library_digest(),
                 _pyhv_flags(mode), json.dumps(user_flags), name, text or ""):
        h.update(part.encode() + b"\0")
    for source, digest in _digest_files(paths).items():
        h.update(f"{source}\0{digest}\0".encode())
    key = h.hexdigest()[:32]
    entry = root / key
    cached = _load_cached(entry, mode)
    if cached is not None:
        return cached
    if entry.exists():          # stale (an included header changed) or damaged: replace it
        shutil.rmtree(entry, ignore_errors=True)
    include_from = Path(source_file).parent if source_file else None
    return _build(entry, root, cc, mode, text, name, paths, user_flags, include_from)


def _c_string(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _load_cached(entry: Path, mode: str) -> GuestImage | None:
    meta_path = entry / "meta.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return None
    try:
        for dep, digest in meta["dependencies"].items():
            if hashlib.sha256(Path(dep).read_bytes()).hexdigest() != digest:
                return None             # an included header changed: build again
        sources = tuple(Path(p) for p in meta["sources"])
        elf = entry / "guest.elf"
        stat = elf.stat()
    except (OSError, KeyError, TypeError, AttributeError):
        return None
    return _read_image(elf, mode, sources, (stat.st_ino, stat.st_size, stat.st_mtime_ns))


@functools.lru_cache(maxsize=128)
def _read_image(elf: Path, mode: str, sources: tuple[Path, ...],
                identity: tuple[int, int, int]) -> GuestImage:
    """The image in ``elf``, parsed once per process while the file stays the same."""
    return GuestImage.from_file(elf, mode, sources)


def _library_objects(root: Path, cc: str, mode: str) -> list[Path]:
    """The guest library compiled for ``mode`` (cached like the guests)."""
    key = hashlib.sha256(f"{CACHE_FORMAT}\0{_compiler_identity(cc)}\0{mode}\0"
                         f"{_library_digest()}\0{_pyhv_flags(mode)}".encode()).hexdigest()[:32]
    where = root / f"lib-{mode}-{key}"
    sources = _library_sources(mode)
    objects = [where / (s.name + ".o") for s in sources]
    if all(o.is_file() for o in objects):
        return objects
    with _staging(root, "lib-build-") as work:
        for source in sources:
            _run([cc, *_COMMON, *MODE_FLAGS[mode], f"-I{INCLUDE_DIR}", "-c", str(source),
                  "-o", str(work / (source.name + ".o"))],
                 f"building pyhv's guest library ({source.name}, {mode} mode)", work)
        _publish(work, where)
    return objects


def _build(entry: Path, root: Path, cc: str, mode: str, text: str | None, name: str,
           paths: list[Path], user_flags: list[str], include_from: Path | None) -> GuestImage:
    library = _library_objects(root, cc, mode)
    with _staging(root, "build-") as work:
        sources = list(paths)
        if text is not None:
            inline = work / name
            inline.write_text(text)
            sources.insert(0, inline)
        objects, depfiles = [], []
        for i, source in enumerate(sources):
            obj = work / f"{i}-{source.stem}.o"
            depfile = obj.with_suffix(".d")
            # an inline source includes from the directory of the file it is written in
            near = include_from if source.parent == work and include_from else source.parent
            # __FILE__ and the debug info name the cached copy, not the staging directory
            _run([cc, *_COMMON, *MODE_FLAGS[mode], f"-I{INCLUDE_DIR}", f"-I{near}",
                  f"-ffile-prefix-map={work}={entry}", "-include", "pyhv/guest.h", *user_flags,
                  "-MMD", "-MF", str(depfile), "-c", str(source), "-o", str(obj)],
                 f"compiling {source.name if source.parent == work else source}", work)
            objects.append(obj)
            depfiles.append(depfile)
        elf = work / "guest.elf"
        _run([cc, *MODE_FLAGS[mode], *_LINK, "-T", str(LINKER_SCRIPT), *map(str, library),
              *map(str, objects), "-o", str(elf)], "linking the guest", work)
        kept = [entry / name] if text is not None else []
        kept += paths
        deps = [d for d in _dependencies(depfiles)
                if d.parent != work and not d.is_relative_to(GUEST_DIR)]
        meta = {"mode": mode, "sources": [str(p) for p in kept],
                "dependencies": _digest_files(deps)}
        (work / "meta.json").write_text(json.dumps(meta, indent=1))
        for leftover in [*objects, *depfiles]:
            leftover.unlink()
        _publish(work, entry)
    image = _load_cached(entry, mode)
    if image is None:
        raise ToolchainError(f"the guest built in {entry} cannot be read back")
    return image
