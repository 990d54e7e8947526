"""The import graph of `harness/` and `methods/` (built with `ast`, lazy function-level imports
included) has no cycle, and methods import from `harness` only its public surface."""
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


def imported_modules(module: str, path: Path, known: set[str]) -> set[str]:
    """Modules of `known` that `module` (at `path`) imports anywhere in its body. `from pkg import
    x` is an edge to `pkg.x` when that is a module, else to `pkg`; relative imports are resolved."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in known else source for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import a.b.c` of a non-module c: its package
                target = target.rpartition(".")[0]
            if target and target != module:
                out.add(target)
    return out


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    mods = module_files(root)
    return {m: imported_modules(m, p, set(mods)) for m, p in mods.items()}


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


def test_harness_and_methods_have_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_methods_import_only_the_public_surface_of_harness():
    bad = {
        (m, t) for m, targets in import_graph().items() if m.startswith("methods")
        for t in targets if t.startswith("harness") and t not in PUBLIC_SURFACE
    }
    assert not bad, "methods import harness internals (use harness.plugin): " + ", ".join(
        f"{m} -> {t}" for m, t in sorted(bad))


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__, "-q"])
