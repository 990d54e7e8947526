"""The import graph of `harness/` and `methods/` (built with `ast`, lazy function-level imports
included) has no cycle, and methods import from `harness` only its public surface.

Edges follow what Python executes at run time:

- importing `a.b.c` (`import a.b.c`, `from a.b.c import x`, `from a.b import c`) first runs
  `a/__init__.py` and `a/b/__init__.py`, so it is also an edge to every parent package `a`, `a.b`
  of the imported module -- except the importer's own ancestors: a module is only ever run after
  the packages it lives in have started (`harness.suite.schema` is imported through
  `harness.suite`), so `harness.suite.schema` importing `harness.suite.report_spec` adds no edge
  to `harness.suite` (that package is already in `sys.modules`, at worst partly initialised);
- imports under `if TYPE_CHECKING:` (or `if typing.TYPE_CHECKING:`) are never executed and are not
  edges: they cannot form a run-time cycle;
- function-level (lazy) imports run when the function is called, and are edges.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("harness", "methods")
#: The modules of `harness` a method may import (README, "Adding a method").
PUBLIC_SURFACE = {"harness.plugin"}


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every module of PACKAGES (a package is its `__init__`)."""
    mods = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = path
    return mods


def _is_type_checking(test: ast.expr) -> bool:
    """`TYPE_CHECKING` or `typing.TYPE_CHECKING` (the test of an `if` that never runs)."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def runtime_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """The import statements of `tree` that can run: all but those in an `if TYPE_CHECKING:` body
    (its `else:` runs and counts)."""
    out: list[ast.Import | ast.ImportFrom] = []
    todo = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append(node)
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))
    return out


def ancestors(module: str) -> set[str]:
    """The packages `module` lives in: `a.b.c` -> {`a`, `a.b`}."""
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def imported_modules(module: str, path: Path, known: set[str], *, parents: bool = True) -> set[str]:
    """Modules of `known` that `module` (at `path`) imports at run time anywhere in its body.
    `from pkg import x` is an edge to `pkg.x` when that is a module, else to `pkg`; relative
    imports are resolved. Each imported module also brings its parent packages (their `__init__`
    runs first), except the importer's own ancestors (module docstring); `parents=False`: the
    modules named in the import statements only."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    own = ancestors(module)
    out: set[str] = set()
    for node in runtime_imports(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in known else source for a in node.names]
        for target in targets:
            while target and target not in known:  # `import a.b.c` of a non-module c: its package
                target = target.rpartition(".")[0]
            if not target:
                continue
            out.add(target)
            if parents:
                out.update(p for p in ancestors(target) if p in known and p not in own)
    out.discard(module)
    return out


def import_graph(root: Path = ROOT, *, parents: bool = True) -> dict[str, set[str]]:
    """Module -> the modules it imports at run time (`parents`: with their parent packages)."""
    mods = module_files(root)
    return {m: imported_modules(m, p, set(mods), parents=parents) for m, p in mods.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle [a, b, ..., a] of `graph`, or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def test_find_cycle_reports_a_cycle_and_accepts_a_dag():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_edges_resolve_relative_lazy_and_from_imports(tmp_path):
    pkg = tmp_path / "harness"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .leaf import x\n")
    (pkg / "sub" / "leaf.py").write_text("def f():\n    from harness import other\n    import harness.sub.leaf\n")
    (pkg / "other.py").write_text("from harness.sub import thing\n")
    (tmp_path / "methods").mkdir()
    graph = import_graph(tmp_path)
    assert graph["harness.sub"] == {"harness.sub.leaf"}
    assert graph["harness.sub.leaf"] == {"harness.other"}
    assert graph["harness.other"] == {"harness.sub"}
    assert find_cycle(graph) == ["harness.other", "harness.sub", "harness.sub.leaf", "harness.other"]


def test_edges_include_parent_packages_but_not_the_importers_own(tmp_path):
    pkg = tmp_path / "harness"
    (pkg / "a" / "b").mkdir(parents=True)
    for init in (pkg, pkg / "a", pkg / "a" / "b"):
        (init / "__init__.py").write_text("")
    (pkg / "a" / "b" / "c.py").write_text("from harness.a.b.d import y\nfrom . import d\n")
    (pkg / "a" / "b" / "d.py").write_text("y = 1\n")
    (pkg / "x.py").write_text(
        "from typing import TYPE_CHECKING\nimport harness.a.b.c\nif TYPE_CHECKING:\n    import harness.y\n"
        "else:\n    import harness.z\n")
    (pkg / "y.py").write_text("import harness.x\n")
    (pkg / "z.py").write_text("")
    (pkg / "a" / "__init__.py").write_text("def f():\n    from harness import x\n")
    (tmp_path / "methods").mkdir()
    assert import_graph(tmp_path, parents=False)["harness.x"] == {"harness.a.b.c", "harness.z"}
    graph = import_graph(tmp_path)
    # `harness.a.b.c` -> its parents `harness.a`, `harness.a.b`, but not `harness` (x's own package)
    assert graph["harness.x"] == {"harness.a.b.c", "harness.a.b", "harness.a", "harness.z"}
    # siblings in the importer's own package: no edge to `harness.a.b` or `harness.a`
    assert graph["harness.a.b.c"] == {"harness.a.b.d"}
    assert find_cycle(graph) == ["harness.a", "harness.x", "harness.a"]
    (pkg / "a" / "__init__.py").write_text("")
    assert find_cycle(import_graph(tmp_path)) is None  # the TYPE_CHECKING edge y <- x is not counted


def test_harness_and_methods_have_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_methods_import_only_the_public_surface_of_harness():
    """The modules a method names (importing `harness.plugin` runs `harness/__init__`, which is fine;
    `from harness import X` is not)."""
    bad = {
        (m, t) for m, targets in import_graph(parents=False).items() if m.startswith("methods")
        for t in targets if t.startswith("harness") and t not in PUBLIC_SURFACE
    }
    assert not bad, "methods import harness internals (use harness.plugin): " + ", ".join(
        f"{m} -> {t}" for m, t in sorted(bad))


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__, "-q"])
