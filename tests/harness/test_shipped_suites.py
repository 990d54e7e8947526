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


def test_paper_settings_suite_holds_the_comparisons_it_promises():
    """Published AQLM b1 and CRVQ b1 at seeds 0 and 1, published AQLM b2, the harness variants of
    the budget-1 pair and the published pair with end-to-end distillation (seed 0), all with
    the same engine and fine-tuning settings and the full calibration set."""
    path = ROOT / "suites" / "paper_settings_embedded.yaml"
    cells = resolve_cells(load_suite(path), path)
    got = sorted((c.method_label, c.budget, c.seed, c.finetune_e2e is not None) for c in cells)
    assert got == sorted([
        ("none", None, 0, False),
        ("aqlm", 1, 0, False), ("aqlm", 1, 1, False), ("crvq", 1, 0, False), ("crvq", 1, 1, False),
        ("aqlm", 2, 0, False), ("aqlm-harness", 1, 0, False), ("crvq-harness", 1, 0, False),
        ("aqlm-e2e", 1, 0, True), ("crvq-e2e", 1, 0, True),
    ])
    engine = ("max_epochs", "steps_per_epoch", "lr", "relative_mse_tolerance", "kmeans_iters", "beam_size",
              "finetune", "finetune_lr", "finetune_max_epochs", "finetune_patience", "finetune_dtype")
    quantized = [c for c in cells if c.method in ("aqlm", "crvq")]
    assert len({tuple(c.params[k] for k in engine) for c in quantized}) == 1
    assert {c.params["variant"] for c in quantized} == {"published", "harness"}
    assert all(c.calibration.num_sequences == 110 and c.calibration.seqlen == 512 for c in quantized)
    gemma_path = ROOT / "suites" / "paper_settings_gemma.yaml"  # the published pair on the second family
    gemma = [c for c in resolve_cells(load_suite(gemma_path), gemma_path) if c.method in ("aqlm", "crvq")]
    assert sorted(c.method_label for c in gemma) == ["aqlm", "crvq"]
    for cell in gemma:
        twin = next(c for c in quantized if (c.method_label, c.budget, c.seed) == (cell.method_label, 1, 0))
        assert cell.params == twin.params and cell.calibration.model_dump() == twin.calibration.model_dump()
