"""The package's layering, checked from the source (no KVM needed): each layer imports only
the layers below it, no module imports in a cycle (``TYPE_CHECKING`` imports included), only
``pyhv._native`` touches the compiled core, and no module reads or writes another object's
``_private`` attributes beyond the few listed here with their reasons."""

from __future__ import annotations

import ast
import collections
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "pyhv"

# bottom to top; a module belongs to the first entry its name starts with
LAYERS = [
    ("generated", ["pyhv._version"]),
    ("base", ["pyhv.errors", "pyhv.version", "pyhv.argtypes"]),
    ("types", ["pyhv.exits", "pyhv.x86"]),
    ("native", ["pyhv._native"]),
    ("core", ["pyhv.core"]),
    ("features", ["pyhv.snapshot", "pyhv.devices", "pyhv.loaders"]),
    ("facade", ["pyhv.partition"]),
    ("composites", ["pyhv.pool", "pyhv.gdb", "pyhv.hyperv"]),
    ("machines", ["pyhv.machines"]),
    ("distributed", ["pyhv.fleet"]),
    ("testing", ["pyhv.testing"]),
    ("tools", ["pyhv.tools"]),
    ("package", ["pyhv", "pyhv.__main__"]),
]
# the compiled module and who may import it
CORE_MODULE = "pyhv._core"
CORE_IMPORTERS = {"pyhv._native.binding"}
# cross-object `_private` accesses allowed in pyhv/, each with why (keep it short)
ALLOWED_PRIVATE: dict[tuple[str, str], str] = {}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The pyhv modules ``name`` imports (anywhere in the file, TYPE_CHECKING included)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in known else target)
    return {m for m in found if m == "pyhv" or m.startswith("pyhv.")}


def layer_of(name: str) -> int:
    best = None
    for index, (_label, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if name == prefix or name.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (index, len(prefix))
    assert best is not None, f"{name} is in no layer: add it to LAYERS"
    return best[0]


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods) | {CORE_MODULE}
    return {name: imports(name, path, known) for name, path in mods.items()}


def test_every_module_is_in_a_layer():
    for name in modules():
        layer_of(name)


def test_each_layer_imports_only_the_layers_below_it():
    bad = []
    for name, targets in graph().items():
        for target in targets - {CORE_MODULE}:
            mine, theirs = layer_of(name), layer_of(target)
            top = lambda m: ".".join(m.split(".")[:2])   # noqa: E731 - pyhv.<package>
            if theirs > mine or (theirs == mine and top(target) != top(name)):
                bad.append(f"{name} ({LAYERS[mine][0]}) imports {target} ({LAYERS[theirs][0]})")
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    g = graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(g.get(node, ())):
            if nxt not in g:
                continue
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(g):
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(cycles)


def test_only_the_native_layer_imports_the_compiled_core():
    users = {name for name, targets in graph().items() if CORE_MODULE in targets}
    assert users == CORE_IMPORTERS


def private_accesses() -> collections.Counter[tuple[str, str]]:
    """(module, expression) of every ``x._name`` where x is not self/cls."""
    found: collections.Counter[tuple[str, str]] = collections.Counter()
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                    and not node.attr.startswith("__")):
                if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                    continue
                found[(name, ast.unparse(node))] += 1
    return found


def test_no_module_touches_another_objects_private_state():
    unexpected = {k: n for k, n in private_accesses().items() if k not in ALLOWED_PRIVATE}
    assert not unexpected, "\n".join(f"{m}: {e} x{n}" for (m, e), n in unexpected.items())


@pytest.mark.parametrize("layer", [label for label, _ in LAYERS if label != "generated"])
def test_layers_are_not_empty(layer):
    assert any(LAYERS[layer_of(name)][0] == layer for name in modules())
