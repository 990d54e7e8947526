"""Every third-party module that the code, tests and bench scripts import is declared in
pyproject.toml: a package that is only here by hand (or only through another package) must not
make the project work on this machine and fail on a fresh one."""
from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("harness", "methods", "tests", "bench")

#: Optional backends imported behind a guard (`try: import ... except ImportError`), with where the
#: README says how to get them. They are not declared: gptqmodel cannot be installed beside the
#: pinned torch.
OPTIONAL = {
    "gptqmodel": "README 'Method notes': its own venv with gptqmodel==7.6.0",
}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared_distributions(pyproject: Path) -> set[str]:
    """Normalised names of every distribution in `dependencies` and the optional extras."""
    project = tomllib.loads(pyproject.read_text())["project"]
    requirements = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        requirements += extra
    return {_normalise(re.split(r"[\s<>=!~;\[(]", r, maxsplit=1)[0]) for r in requirements}


def first_party(root: Path) -> set[str]:
    """Top-level names that resolve to the project itself: the scanned folders, packages and
    modules at the root. (Not every module file's name: `harness/executors/ray.py` does not make
    `import ray` first-party.)"""
    packages = {p.name for p in root.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    return set(SCANNED) | packages | {p.stem for p in root.glob("*.py")}


def _sibling(path: Path, module: str) -> bool:
    """A script's import of a module beside it: a file outside a package (bench/, tests/harness/)
    has its own folder first on sys.path; inside a package `import ray` is never `./ray.py`."""
    folder = path.parent
    if (folder / "__init__.py").is_file():
        return False
    return (folder / f"{module}.py").is_file() or (folder / module / "__init__.py").is_file()


def imported_modules(root: Path) -> dict[str, str]:
    """Top-level module -> the first file (relative to root) that imports it, over the scanned
    folders; a script's import of a module beside it is left out."""
    found: dict[str, str] = {}
    for folder in SCANNED:
        for path in sorted((root / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if not _sibling(path, top):
                        found.setdefault(top, str(path.relative_to(root)))
    return found


def undeclared_imports(root: Path, optional: dict[str, str] = OPTIONAL) -> list[str]:
    """One message per third-party module whose distribution pyproject.toml does not declare."""
    declared = declared_distributions(root / "pyproject.toml")
    local = first_party(root)
    distributions = packages_distributions()
    problems = []
    for module, where in sorted(imported_modules(root).items()):
        if module in sys.stdlib_module_names or module in local or module == "__future__" or module in optional:
            continue
        owners = distributions.get(module)
        if owners is None:
            if _normalise(module) not in declared:  # a declared distribution that is not installed here is fine
                problems.append(f"{module} (imported in {where}) is not installed and not declared in pyproject.toml")
        elif not any(_normalise(d) in declared for d in owners):
            problems.append(
                f"{module} (imported in {where}) comes from {'/'.join(owners)}, which pyproject.toml does not declare: "
                f"add it to `dependencies` (or to the `test` extra if only tests use it)"
            )
    return problems


def test_every_import_is_declared():
    problems = undeclared_imports(ROOT)
    assert not problems, "undeclared third-party imports:\n" + "\n".join(problems)


def test_an_undeclared_import_is_caught(tmp_path):
    """The check itself: a planted import of an installed but undeclared distribution is named with its file."""
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\ndependencies = ["pyyaml>=6"]\n')
    for folder in SCANNED:
        (tmp_path / folder).mkdir()
    (tmp_path / "harness" / "ok.py").write_text("import yaml\nimport json\nfrom harness import ok\n")
    (tmp_path / "tests" / "planted.py").write_text("import pytest\ntry:\n    import gptqmodel\nexcept ImportError:\n    pass\n")
    problems = undeclared_imports(tmp_path)
    assert len(problems) == 1, problems
    assert problems[0].startswith("pytest (imported in tests/planted.py)")
    assert "pyproject.toml does not declare" in problems[0]


def test_a_module_file_named_like_a_distribution_does_not_hide_it(tmp_path):
    """`harness/executors/ray.py` importing `ray` is a third-party import; a bench script importing
    the script beside it is not."""
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\ndependencies = []\n')
    for folder in SCANNED:
        (tmp_path / folder).mkdir()
    (tmp_path / "harness" / "__init__.py").write_text("")
    (tmp_path / "harness" / "pytest.py").write_text("import pytest\n")
    (tmp_path / "bench" / "helper.py").write_text("")
    (tmp_path / "bench" / "script.py").write_text("import helper\n")
    problems = undeclared_imports(tmp_path)
    assert len(problems) == 1 and problems[0].startswith("pytest (imported in harness/pytest.py)"), problems


@pytest.mark.parametrize("module", ["no_such_module_xyz"])
def test_a_missing_module_is_caught(tmp_path, module):
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\ndependencies = []\n')
    for folder in SCANNED:
        (tmp_path / folder).mkdir()
    (tmp_path / "bench" / "script.py").write_text(f"import {module}\n")
    assert undeclared_imports(tmp_path) == [f"{module} (imported in bench/script.py) is not installed and not declared in pyproject.toml"]
