"""Every suite shipped under suites/ loads, validates and resolves offline; the CRVQ ablation
grids have the cells their comments promise."""
from __future__ import annotations

from pathlib import Path

import pytest

from harness.suite import load_suite, resolve_cells

ROOT = Path(__file__).resolve().parents[2]
SUITES = sorted(p for p in (ROOT / "suites").rglob("*.yaml")
                if not p.name.startswith("reference_") and "claims" not in p.relative_to(ROOT / "suites").parts)
CLAIMS = sorted((ROOT / "suites" / "claims").glob("*.yaml"))  # claims files (harness verify), not suites


@pytest.mark.parametrize("path", CLAIMS, ids=lambda p: p.name)
def test_shipped_claims_file_loads(path):
    from harness.claims import load_claims

    assert load_claims(path).claims


@pytest.mark.parametrize("path", SUITES, ids=lambda p: str(p.relative_to(ROOT / "suites")))
def test_shipped_suite_resolves(path):
    cells = resolve_cells(load_suite(path), path)
    assert cells and len({c.key for c in cells}) == len(cells)


def _cells(name: str):
    path = ROOT / "suites" / "ablations" / name
    return resolve_cells(load_suite(path), path)


def test_ratio_ablation_grid():
    crvq = [c for c in _cells("crvq_ratio.yaml") if c.method == "crvq"]
    grid = {(c.params["critical_ratio"], c.params["num_extended_codebooks"]) for c in crvq}
    assert grid == {(r, e) for r in (0.01, 0.02, 0.05, 0.1) for e in (1, 2, 3)} and len(crvq) == 12
    # the knobs are the only difference from one cell to another, and from the AQLM line's engine settings
    shared = {k: v for k, v in crvq[0].params.items() if k not in ("critical_ratio", "num_extended_codebooks")}
    assert all({k: c.params[k] for k in shared} == shared for c in crvq)
    aqlm = next(c for c in _cells("crvq_ratio.yaml") if c.method == "aqlm")
    for key in ("max_epochs", "steps_per_epoch", "kmeans_iters", "finetune_lr", "finetune_max_epochs"):
        assert aqlm.params[key] == shared[key]


def test_importance_ablation_rules_and_seeds():
    cells = _cells("crvq_importance.yaml")
    rules = {(c.params["importance"], c.params["reorder"]) for c in cells if c.method == "crvq"}
    assert rules == {("wa", "critical_first"), ("wa_max", "critical_first"), ("w", "critical_first"),
                     ("random", "critical_first"), ("wa", "sorted")}
    seeds = {c.method_label: sorted(x.seed for x in cells if x.method_label == c.method_label) for c in cells}
    assert seeds["aqlm-harness"] == seeds["crvq-wa"] == seeds["crvq-random"] == [0, 1, 2]
    assert {c.params["variant"] for c in cells if c.method in ("aqlm", "crvq")} == {"harness"}
    assert seeds["crvq-w"] == [0]
