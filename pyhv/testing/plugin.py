"""pyhv's pytest plugin (loaded through the ``pytest11`` entry point once pyhv is installed):
guests written in C inside tests.

The ``guest`` fixture builds, runs and cleans up::

    def test_sum(guest):
        guest.c('''
            void guest_main(int cpu)
            {
                GUEST_ASSERT_EQ(2 + 2, 4);
                GUEST_SYNC(42);
            }
        ''')
        assert guest.run(timeout=10).syncs == (42,)

A failed guest assertion is reported at the guest source line (the C in the test file keeps
its line numbers), with the expression, both values and what the guest printed.  Tests
that use the fixture, or carry ``@pytest.mark.pyhv_guest``, are skipped with the reason
where /dev/kvm or gcc is missing (``--pyhv-require`` makes that a failure).
``--pyhv-keep[=DIR]`` keeps each test's images (ELF with symbols, and sources) under DIR
(default ``.pyhv-guests``), for gdb or ``pyhv run``.
"""

from __future__ import annotations

import inspect
import linecache
import os
import re
import shutil
import sys
from collections.abc import Generator, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from ..errors import StateError
from .build import build_guest, cache_root, locate_literal
from .errors import GuestAssertionError
from .image import GuestImage
from .results import GuestResult, Sync, SyncAnswer
from .runner import GuestVM
from .usable import guest_usable

DEFAULT_KEEP = ".pyhv-guests"
_USABLE = pytest.StashKey[tuple[bool, str]]()
_KEPT = pytest.StashKey[list[Path]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("pyhv", "pyhv guests written in C")
    group.addoption("--pyhv-keep", nargs="?", const=DEFAULT_KEEP, default=None, metavar="DIR",
                    help="keep each test's guest images (ELF with symbols, sources) under "
                         f"DIR (default {DEFAULT_KEEP}), for gdb or `pyhv run`")
    group.addoption("--pyhv-require", action="store_true", default=False,
                    help="fail, instead of skipping, tests with guests where /dev/kvm or gcc "
                         "is missing")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "pyhv_guest: the test runs pyhv guests written in C; "
                                       "skipped (with the reason) where /dev/kvm or gcc is "
                                       "missing")
    config.stash[_KEPT] = []


def _require(config: pytest.Config) -> None:
    if _USABLE not in config.stash:
        config.stash[_USABLE] = guest_usable()
    usable, why = config.stash[_USABLE]
    if usable:
        return
    if config.getoption("pyhv_require"):
        pytest.fail(f"pyhv guests cannot run here: {why}", pytrace=False)
    pytest.skip(f"pyhv guests cannot run here: {why}")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("pyhv_guest") is not None:
        _require(item.config)


class GuestFixture:
    """The ``guest`` fixture: build a guest (:meth:`c`, :meth:`files`), then :meth:`run` it
    or step through its syncs (:meth:`syncs`); :meth:`boot` gives the :class:`GuestVM`
    first, for handlers or devices on its partition.  Everything is closed after the test;
    guest prints are echoed to the test's stdout (pytest shows them with a failure)."""

    def __init__(self, request: pytest.FixtureRequest) -> None:
        self._request = request
        self.image: GuestImage | None = None
        self.images: list[GuestImage] = []
        self.vms: list[GuestVM] = []

    # -- building ---------------------------------------------------------------------------
    def c(self, source: str, *, mode: str = "user", cflags: str | Sequence[str] = (),
          name: str = "guest.c") -> GuestImage:
        """Build ``source`` (see :func:`pyhv.testing.build_guest`); its lines keep the test
        file's numbers when it is a string literal there."""
        here = inspect.currentframe()
        where = locate_literal(here.f_back if here is not None else None, source)
        file, line = where if where is not None else (None, None)
        return self._keep(build_guest(c=source, mode=mode, cflags=cflags, name=name,
                                      source_file=file, first_line=line))

    def files(self, *paths: str | os.PathLike[str], mode: str = "user",
              cflags: str | Sequence[str] = ()) -> GuestImage:
        """Build guest source files; relative paths are from the test file's directory."""
        base = Path(str(self._request.node.path)).parent
        return self._keep(build_guest(files=[base / p for p in paths], mode=mode,
                                      cflags=cflags))

    def _keep(self, image: GuestImage) -> GuestImage:
        self.image = image
        self.images.append(image)
        return image

    # -- running ----------------------------------------------------------------------------
    def boot(self, cpus: int = 1, *, memory: int | str = "64M",
             image: GuestImage | None = None) -> GuestVM:
        """A :class:`GuestVM` of the latest image built (or ``image``), not yet running."""
        image = image or self.image
        if image is None:
            raise StateError("build a guest first: guest.c(SOURCE) or guest.files(...)")
        vm = GuestVM(image, cpus, memory=memory, echo=_Stdout())
        self.vms.append(vm)
        return vm

    def run(self, timeout: float | None = 30.0, *, cpus: int = 1, memory: int | str = "64M",
            answer: SyncAnswer = None) -> GuestResult:
        """Boot the latest image and run it to ``GUEST_DONE`` on every vCPU."""
        return self.boot(cpus, memory=memory).run(timeout, answer=answer)

    def syncs(self, timeout: float | None = 30.0, *, cpus: int = 1,
              memory: int | str = "64M") -> Iterator[Sync]:
        """Boot the latest image and yield its syncs as they come (see
        :meth:`GuestVM.syncs`); afterwards :attr:`result` holds the result."""
        return self.boot(cpus, memory=memory).syncs(timeout)

    @property
    def vm(self) -> GuestVM | None:
        """The latest VM booted."""
        return self.vms[-1] if self.vms else None

    @property
    def result(self) -> GuestResult | None:
        """The result of the latest VM's run."""
        return self.vms[-1].result if self.vms else None

    def close(self) -> None:
        for vm in self.vms:
            vm.close()
        keep = self._request.config.getoption("pyhv_keep")
        if keep and self.images:
            self._request.config.stash[_KEPT].append(_keep_images(
                Path(keep), self._request.node.nodeid, self.images))


class _Stdout:
    """Writes to whatever sys.stdout is at the time (pytest swaps it to capture)."""

    def write(self, text: str) -> None:
        sys.stdout.write(text)


@pytest.fixture
def guest(request: pytest.FixtureRequest) -> Generator[GuestFixture, None, None]:
    """Build guests written in C and run them on the real /dev/kvm (see
    :class:`GuestFixture`); skipped where /dev/kvm or gcc is missing."""
    _require(request.config)
    fixture = GuestFixture(request)
    try:
        yield fixture
    finally:
        fixture.close()


def _keep_images(root: Path, nodeid: str, images: list[GuestImage]) -> Path:
    where = root / re.sub(r"[^A-Za-z0-9_.-]+", "_", nodeid).strip("_")
    shutil.rmtree(where, ignore_errors=True)
    where.mkdir(parents=True)
    for i, image in enumerate(images):
        target = where if len(images) == 1 else where / str(i)
        target.mkdir(exist_ok=True)
        shutil.copy2(image.path, target / "guest.elf")
        for source in image.sources:
            if source.is_file():
                shutil.copy2(source, target / source.name)
    return where


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    kept = config.stash.get(_KEPT, [])
    if kept:
        terminalreporter.write_sep("-", "pyhv guest images kept")
        for where in kept:
            terminalreporter.write_line(f"{where}  (gdb {where}/guest.elf, pyhv run "
                                        f"{where}/guest.elf)")


def pytest_report_header(config: pytest.Config) -> str | None:
    keep = config.getoption("pyhv_keep")
    if not keep:
        return None
    return f"pyhv guests: cache {cache_root()}, keeping images in {keep}"


# -- reports --------------------------------------------------------------------------------
@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Generator[
        None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if call.excinfo is not None and report.failed and \
            isinstance(call.excinfo.value, GuestAssertionError):
        report.longrepr = guest_report(call.excinfo.value, _raised_from(item, call.excinfo))


def _raised_from(item: pytest.Item, excinfo: pytest.ExceptionInfo[BaseException]) -> str | None:
    """The test file's line the failure came through, as "path:line in name" + its code."""
    path = getattr(item, "path", None)
    for entry in reversed(excinfo.traceback):
        if path is not None and Path(str(entry.path)) == Path(str(path)):
            code = linecache.getline(str(entry.path), entry.lineno + 1).strip()
            return f"{_relative(str(entry.path))}:{entry.lineno + 1} in {entry.name}\n" \
                   f"    {code}"
    return None


def _relative(path: str) -> str:
    """``path`` from the current directory when it lies below it (as pytest shows paths)."""
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def guest_report(err: GuestAssertionError, raised_from: str | None = None) -> str:
    """The text pytest shows for a guest failure: where in the guest source, the source
    around that line, both values, the guest's output, and the Python call it came from."""
    first = f"{_relative(err.file)}:{err.line}: {err.headline()}" if err.file else \
        err.headline()
    lines = [first, *err.detail()]
    if len(err.backtrace) > 1:
        lines.append("    guest backtrace (innermost first):")
        for frame in err.backtrace:
            where = f"{_relative(frame.file)}:{frame.line}"
            lines.append(f"      {where} ({frame.function})" if frame.function else
                         f"      {where}")
    context = _source_context(err.file, err.line)
    if context:
        lines += ["", *context]
    if err.output:
        lines += ["", f"guest output (vCPU {err.cpu}):"]
        lines += ["    " + text for text in err.output.rstrip("\n").splitlines()]
    if raised_from:
        lines += ["", f"raised from {raised_from}"]
    return "\n".join(lines)


def _source_context(file: str | None, line: int, around: int = 2) -> list[str]:
    if not file or line <= 0 or not os.path.isfile(file):
        return []
    first = max(1, line - around)
    shown = []
    for n in range(first, line + around + 1):
        text = linecache.getline(file, n)
        if not text:
            break
        shown.append(f"{'>' if n == line else ' '} {n:5} | {text.rstrip()}")
    return shown
