"""Apply each mutation of tests/mutations/catalog.py to a scratch copy of the tree, run the tests
it names, and print which were caught.

    .venv/bin/python -m tests.mutations.run                  # every mutation
    .venv/bin/python -m tests.mutations.run cancel-does-nothing io-size-1-2-4
    .venv/bin/python -m tests.mutations.run --list           # the catalog

The working tree is never changed: the scratch copy holds the tracked and untracked (not
ignored) files as they are now, plus the built C core; a change in ``csrc/`` is compiled there
(``setup.py build_ext --inplace``).  The named tests first run on the unchanged copy (they
must pass), then once per mutation with ``-x``.  A mutation is *caught* when its tests fail
(a crash of the test process counts), *escaped* when they pass, *hung* when the run
outlives ``--wall`` (a ``bounded`` mutation is caught only by failing within it), *n/a* when
it does not apply to this host's backend.  Exit status 0 when every applicable mutation was
caught.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .catalog import MUTATIONS, Mutation

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Outcome:
    mutation: Mutation
    verdict: str                   # caught, escaped, hung, n/a, error
    seconds: float = 0.0
    detail: str = ""


def host_backend() -> str | None:
    """The KVM backend here, or None without a usable /dev/kvm."""
    try:
        import pyhv
        return pyhv.check().backend
    except Exception:              # no KVM: only the unit tests can run
        return None


def scratch_copy(into: Path) -> Path:
    """The tree as it is now (tracked and untracked files, not ignored ones), the built C
    core and the generated version file, under ``into``."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], cwd=ROOT, capture_output=True, check=True)
    for name in filter(None, listed.stdout.decode().split("\0")):
        source = ROOT / name
        if source.is_file():
            target = into / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    for built in [*ROOT.glob("pyhv/_core*.so"), ROOT / "pyhv" / "_version.py"]:
        if built.exists():
            shutil.copy2(built, into / "pyhv" / built.name)
    cache = ROOT / "tests" / ".cache"
    if cache.is_dir():             # the Debian kernel, when fetched: shared, not copied
        (into / "tests" / ".cache").symlink_to(cache)
    return into


def check_imports_from(copy: Path) -> None:
    """The copy's pyhv, not the working tree's, is what Python imports there."""
    found = subprocess.run([sys.executable, "-c", "import pyhv, pyhv._core; "
                            "print(pyhv.__file__); print(pyhv._core.__file__)"],
                           cwd=copy, env=environment(copy), capture_output=True, text=True)
    paths = found.stdout.split()
    if found.returncode or len(paths) != 2 or not all(p.startswith(str(copy)) for p in paths):
        raise SystemExit(f"mutations: the scratch copy does not import its own pyhv:\n"
                         f"{found.stdout}{found.stderr}")


def environment(copy: Path) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(copy), SETUPTOOLS_SCM_PRETEND_VERSION="0.0.0+mutant")
    env.pop("PYTEST_ADDOPTS", None)
    return env


def build_c_core(copy: Path) -> str:
    """Compile the copy's C core in place; '' or the compiler's complaint."""
    built = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace",
                            "--force"], cwd=copy, env=environment(copy), capture_output=True,
                           text=True)
    return "" if built.returncode == 0 else (built.stdout + built.stderr)[-2000:]


def run_tests(copy: Path, tests: tuple[str, ...], timeout: int, wall: float,
              stop_early: bool) -> tuple[int | None, float, str]:
    """pytest on ``tests`` in the copy: (exit status or None when it outlived ``wall``,
    seconds, the output's tail)."""
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--timeout",
            str(timeout), *(["-x"] if stop_early else []), *tests]
    began = time.monotonic()
    proc = subprocess.Popen(argv, cwd=copy, env=environment(copy), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=wall)
        status: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)            # the run and anything it started
        out, _ = proc.communicate()
        status = None
    return status, time.monotonic() - began, out[-3000:]


def summary_line(output: str) -> str:
    """pytest's last line ("3 failed, 2 passed in 4.1s"), or the output's last line."""
    lines = output.strip().splitlines() or [""]
    said = [line for line in lines if re.search(r"\d+ (passed|failed|error)", line)]
    return (said or lines)[-1].strip("= ")


def apply(copy: Path, mutation: Mutation) -> str:
    """Change the copy's file; the original text, to put back."""
    path = copy / mutation.path
    original = path.read_text()
    found = original.count(mutation.old)
    if found != mutation.times:
        raise ValueError(f"{mutation.path} has {found} copies of the text, not {mutation.times}")
    path.write_text(original.replace(mutation.old, mutation.new))
    return original


def try_mutation(copy: Path, mutation: Mutation, pristine_core: dict[Path, bytes],
                 timeout: int, wall: float) -> Outcome:
    try:
        original = apply(copy, mutation)
    except ValueError as exc:
        return Outcome(mutation, "error", detail=f"stale entry: {exc}")
    try:
        if mutation.in_c:
            complaint = build_c_core(copy)
            if complaint:
                said = [line for line in complaint.splitlines() if "error:" in line]
                return Outcome(mutation, "error", detail="does not compile: " +
                               (said or complaint.strip().splitlines())[0].strip())
        status, seconds, output = run_tests(copy, mutation.tests, mutation.timeout or timeout,
                                            wall, stop_early=True)
    finally:
        (copy / mutation.path).write_text(original)
        for path, data in pristine_core.items():      # the unchanged C core back
            path.write_bytes(data)
    said = summary_line(output)
    if status is None:
        return Outcome(mutation, "hung", seconds, f"still running after {wall:.0f} s")
    if status == 0:
        return Outcome(mutation, "escaped", seconds, said)
    if status == 1:
        timeouts = output.count("Failed: Timeout")
        detail = said + (f" ({timeouts} by timeout)" if timeouts else "")
        return Outcome(mutation, "caught", seconds, detail)
    if status < 0 or status >= 128:        # the test process died: a crash is caught too
        return Outcome(mutation, "caught", seconds, f"the tests crashed (status {status})")
    return Outcome(mutation, "error", seconds, f"pytest status {status}: {said}")


def table(outcomes: list[Outcome]) -> str:
    width = max(len(o.mutation.id) for o in outcomes)
    lines = [f"{'mutation':{width}}  {'verdict':8} {'s':>6}  guards / detail"]
    for o in outcomes:
        lines.append(f"{o.mutation.id:{width}}  {o.verdict:8} {o.seconds:6.1f}  "
                     f"{o.mutation.guards}")
        if o.detail:
            lines.append(f"{'':{width}}  {'':8} {'':6}    {o.detail}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.mutations.run",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("ids", nargs="*", help="mutations to try (default: all)")
    parser.add_argument("--list", action="store_true", help="print the catalog and stop")
    parser.add_argument("--timeout", type=int, default=60,
                        help="per-test timeout in seconds (default 60)")
    parser.add_argument("--wall", type=float, default=900,
                        help="seconds one mutation's test run may take before it counts as "
                        "hung (default 900)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch copy")
    args = parser.parse_args(argv)
    if args.list:
        for m in MUTATIONS:
            where = f" [{', '.join(m.hosts)} only]" if m.hosts else ""
            print(f"{m.id}: {m.guards}{where}\n    {m.path} -> {' '.join(m.tests)}")
        return 0
    known = {m.id: m for m in MUTATIONS}
    unknown = [i for i in args.ids if i not in known]
    if unknown:
        parser.error(f"unknown mutation(s): {', '.join(unknown)} (see --list)")
    chosen = [known[i] for i in args.ids] if args.ids else list(MUTATIONS)

    backend = host_backend()
    applicable = [m for m in chosen if not m.hosts or backend in m.hosts]
    if backend is None:            # without KVM only the unit tests can say anything
        applicable = [m for m in applicable if all(t.startswith("tests/unit") for t in m.tests)]
    skipped = [Outcome(m, "n/a", detail=f"not observable on {backend or 'a host without KVM'}")
               for m in chosen if m not in applicable]
    print(f"mutations: {len(applicable)} to try on {backend or 'no KVM'} "
          f"({len(skipped)} n/a here)", flush=True)

    work = Path(tempfile.mkdtemp(prefix="pyhv-mutants-"))
    try:
        copy = scratch_copy(work / "tree")
        check_imports_from(copy)
        pristine_core = {p: p.read_bytes() for p in copy.glob("pyhv/_core*.so")}
        every_test = tuple(dict.fromkeys(t for m in applicable for t in m.tests))
        status, seconds, output = run_tests(copy, every_test, args.timeout, args.wall,
                                            stop_early=False)
        print(f"unchanged tree: {summary_line(output)} ({seconds:.0f} s)", flush=True)
        if status != 0:
            print(output, file=sys.stderr)
            print("mutations: the named tests must pass on the unchanged tree first",
                  file=sys.stderr)
            return 2
        outcomes = []
        for mutation in applicable:
            outcome = try_mutation(copy, mutation, pristine_core, args.timeout, args.wall)
            print(f"  {mutation.id}: {outcome.verdict} ({outcome.seconds:.0f} s)", flush=True)
            outcomes.append(outcome)
    finally:
        if args.keep:
            print(f"scratch copy kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    outcomes += skipped
    print()
    print(table(outcomes))
    caught = sum(o.verdict == "caught" for o in outcomes)
    tried = len(outcomes) - len(skipped)
    print(f"\nscore: {caught} of {tried} caught on {backend or 'no KVM'}"
          f" ({len(skipped)} n/a here)")
    return 0 if caught == tried else 1


if __name__ == "__main__":
    sys.exit(main())
