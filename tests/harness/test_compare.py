"""Paired comparisons (harness.analysis.compare): CIs on synthetic per-window losses with a
known difference, seed pairing, window checks, zero-shot, and the report/suite option."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from harness.analysis.compare import compare_methods
from harness.errors import HarnessError, SuiteError
from harness.report import write_report
from harness.store import ResultStore
from tests.fixtures.compare_records import SHIFT, base_nll, layers, record, task

TRUE_REL = math.exp(SHIFT) - 1  # a constant per-window shift of SHIFT nats scales perplexity by e^SHIFT


def _shifted(nll: np.ndarray, shift: float = SHIFT, noise: float = 0.01, seed: int = 1) -> np.ndarray:
    return nll + shift + noise * np.random.default_rng(seed).standard_normal(nll.shape)


def test_known_difference_is_covered_and_significant() -> None:
    base = base_nll()
    against = _shifted(base)
    result = compare_methods([record("a", "aqlm", 1, base), record("c", "crvq", 1, against)], "aqlm", "crvq")
    (c,) = result.comparisons
    d = c.difference
    known = math.exp(base.mean() + SHIFT) - math.exp(base.mean())  # Δppl of the exact shift on these windows
    assert d.delta.low < known < d.delta.high
    assert d.relative.low < TRUE_REL < d.relative.high
    assert d.delta.value > 0 and c.significant and d.p_value < 0.01
    assert (d.windows, d.seeds, c.seqlen) == (200, 1, 128)
    assert "crvq raises embedded perplexity vs aqlm" in c.verdict() and "; significant" in c.verdict()


def test_ci_coverage_over_replications() -> None:
    """Over 40 independent evaluation sets the 95% CI of the relative difference covers e^SHIFT − 1
    in about 95% of them (the noise has mean zero, so that is the population value)."""
    covered = 0
    for rep in range(40):
        base = base_nll(120, seed=100 + rep)
        against = _shifted(base, noise=0.05, seed=200 + rep)
        (c,) = compare_methods([record("a", "aqlm", 1, base), record("c", "crvq", 1, against)], "aqlm", "crvq",
                               resamples=1000).comparisons
        covered += c.difference.relative.low < TRUE_REL < c.difference.relative.high
    assert covered >= 34, covered


def test_zero_difference_is_not_significant() -> None:
    base = base_nll()
    half = 0.02 * np.random.default_rng(3).standard_normal(100)
    noise = np.random.default_rng(4).permutation(np.concatenate([half, -half]))  # symmetric: mean exactly 0
    result = compare_methods([record("a", "aqlm", 1, base), record("c", "crvq", 1, base + noise)], "aqlm", "crvq")
    (c,) = result.comparisons
    assert c.difference.delta.value == pytest.approx(0.0, abs=1e-9)
    assert c.difference.delta.low < 0 < c.difference.delta.high
    assert not c.significant and c.difference.p_value > 0.05
    assert "not significant" in c.verdict()


def test_seeds_are_paired_by_seed() -> None:
    """Seed s of both methods shares its calibration sample: here its level (3 + 0.5 s). Paired by
    seed, every seed shows the same relative shift, so the CI is narrow around e^SHIFT − 1."""
    recs = []
    for s in (2, 0, 1):  # out of order
        base = base_nll(level=3 + 0.5 * s, seed=s)
        recs += [record(f"c{s}", "crvq", 1, _shifted(base, seed=10 + s), seed=s), record(f"a{s}", "aqlm", 1, base, seed=s)]
    recs.append(record("a3", "aqlm", 1, base_nll(seed=3), seed=3))  # no crvq counterpart
    result = compare_methods(recs, "aqlm", "crvq")
    (c,) = result.comparisons
    assert c.difference.seeds == 3 and c.base.seeds == (0, 1, 2) == c.against.seeds
    assert c.base.keys == ("a0", "a1", "a2") and c.against.keys == ("c0", "c1", "c2")
    assert c.difference.relative.low < TRUE_REL < c.difference.relative.high
    assert c.difference.relative.high - c.difference.relative.low < 0.01
    assert any("seeds [3] of aqlm" in n for n in result.notes)


def test_single_records_with_different_seeds_pair_with_a_note() -> None:
    base = base_nll()
    result = compare_methods([record("a", "aqlm", 1, base, seed=0), record("c", "crvq", 1, _shifted(base), seed=7)],
                             "aqlm", "crvq")
    assert len(result.comparisons) == 1
    assert any("seed 0" in n and "seed 7" in n for n in result.notes)


def test_reference_pairs_with_every_budget_and_seed() -> None:
    ref = base_nll()
    recs = [record("ref", "none", None, ref)]
    recs += [record(f"g{b}{s}", "gptq", b, _shifted(ref, 0.1 * b, seed=b + 10 * s), seed=s) for b in (2, 3) for s in (0, 1)]
    result = compare_methods(recs, "none", "gptq")
    assert [(c.budget, c.difference.seeds) for c in result.comparisons] == [(2, 2), (3, 2)]
    assert all(c.significant and c.difference.delta.value > 0 for c in result.comparisons)
    (only,) = compare_methods(recs, "none", "gptq", budget=3).comparisons
    assert only.budget == 3 and only.against.keys == ("g30", "g31")


def test_method_label_first_then_name() -> None:
    base = base_nll()
    recs = [record("a", "aqlm", 1, base, label="aqlm-1x16"), record("c", "crvq", 1, _shifted(base))]
    assert compare_methods(recs, "aqlm", "crvq").base == "aqlm-1x16"
    recs.append(record("a2", "aqlm", 1, base, label="aqlm-2x8"))
    with pytest.raises(HarnessError, match=r"several labels \(aqlm-1x16, aqlm-2x8\)"):
        compare_methods(recs, "aqlm", "crvq")
    assert compare_methods(recs, "aqlm-2x8", "crvq").base == "aqlm-2x8"


@pytest.mark.parametrize("change, fragment", [
    ({"windows": 150}, "seqlen 128 × 150 windows vs seqlen 128 × 200 windows"),
    ({"seqlen": 256}, "seqlen 256 × 200 windows"),
    ({"token_hash": "other"}, "token hash other vs tok0"),
])
def test_different_windows_are_an_error(change: dict, fragment: str) -> None:
    base = base_nll()
    against = _shifted(base)[: change.get("windows", 200)]
    kwargs = {k: v for k, v in change.items() if k != "windows"}
    recs = [record("a", "aqlm", 1, base), record("c", "crvq", 1, against, **kwargs)]
    with pytest.raises(HarnessError) as exc:
        compare_methods(recs, "aqlm", "crvq")
    message = str(exc.value)
    assert fragment in message and "tiny/aqlm/b1 (key a)" in message and "tiny/crvq/b1 (key c)" in message
    assert "evaluations.perplexity" in message


def test_missing_window_losses_and_other_input_errors() -> None:
    base = base_nll()
    old = record("c", "crvq", 1, base)
    del old["metrics"]["perplexity"]["embedded"]["window_nll"]
    with pytest.raises(HarnessError, match="no per-window losses"):
        compare_methods([record("a", "aqlm", 1, base), old], "aqlm", "crvq")
    recs = [record("a", "aqlm", 1, base), record("c", "crvq", 2, base)]
    with pytest.raises(HarnessError, match=r"share no model and budget \(aqlm: tiny/b1; crvq: tiny/b2\)"):
        compare_methods(recs, "aqlm", "crvq")
    with pytest.raises(HarnessError, match="Method labels with finished records: aqlm, crvq"):
        compare_methods(recs, "aqlm", "quip")
    with pytest.raises(HarnessError, match="budgets: 1"):
        compare_methods(recs, "aqlm", "crvq", budget=3)
    with pytest.raises(HarnessError, match="two finished records for tiny/b1 seed 0"):
        compare_methods(recs + [record("a2", "aqlm", 1, base), record("c1", "crvq", 1, base)], "aqlm", "crvq")
    with pytest.raises(HarnessError, match="two different methods"):
        compare_methods(recs, "aqlm", "aqlm")


def test_zero_shot_differences_are_unpaired_normal_intervals() -> None:
    base = base_nll()
    zs_a = {"lastword": task(0.40), "cloze": task(0.40), "other": task(0.3, fingerprint="x")}
    zs_c = {"lastword": task(0.50), "cloze": task(0.41), "other": task(0.3, fingerprint="y")}
    recs = [record("a", "aqlm", 1, base, zero_shot=zs_a), record("c", "crvq", 1, _shifted(base), zero_shot=zs_c)]
    result = compare_methods(recs, "aqlm", "crvq")
    by_task = {z.task: z for z in result.zero_shot}
    assert set(by_task) == {"lastword", "cloze"}
    half = 1.959964 * math.hypot(0.02, 0.02)
    z = by_task["lastword"]
    assert (z.delta.low, z.delta.high) == pytest.approx((0.10 - half, 0.10 + half), abs=1e-5)
    assert z.significant and z.p_value < 0.001
    assert not by_task["cloze"].significant and by_task["cloze"].p_value > 0.5
    assert any("zero-shot task other left out" in n for n in result.notes)
    assert result.zero_shot_frame()["paired"].eq(False).all()


def _store(tmp_path) -> ResultStore:
    store = ResultStore(tmp_path / "res")
    base = base_nll()
    for r in (record("a", "aqlm", 1, base, layers=layers(1.0)), record("c", "crvq", 1, _shifted(base), layers=layers(0.5)),
              record("r", "rtn", 4, base)):
        store.put(r)
    return store


def test_report_option_writes_compare_tables(tmp_path) -> None:
    store = _store(tmp_path)
    paths = write_report(store, plots=(), html=False, compare=[("aqlm", "crvq"), ("aqlm", "quip")])
    md = (store.tables_dir / "compare.md").read_text()
    assert store.tables_dir / "compare.md" in paths and store.tables_dir / "compare.csv" in paths
    assert "## aqlm vs crvq" in md and "| tiny" in md and "crvq raises embedded perplexity vs aqlm" in md
    assert "## aqlm vs quip" in md and "Not compared:" in md and "no finished record of method 'quip'" in md
    csv = pd.read_csv(store.tables_dir / "compare.csv")
    assert list(csv[["base", "against", "budget"]].itertuples(index=False, name=None)) == [("aqlm", "crvq", 1)]
    assert bool(csv.loc[0, "significant"]) and csv.loc[0, "ci_low"] < csv.loc[0, "delta_ppl"] < csv.loc[0, "ci_high"]
    write_report(store, plots=(), html=False)
    assert (store.tables_dir / "compare.md").read_text() == md  # no pairs: left as it was


def test_suite_report_compare_is_validated(tmp_path) -> None:
    from harness.suite import load_suite

    text = "name: t\nmodels: [smollm2-135m]\nmethods: [{name: rtn, budgets: [4]}, {name: gptq, label: g, budgets: [4]}]\n"
    ok = tmp_path / "ok.yaml"
    ok.write_text(text + "report: {compare: [{base: rtn, against: g}]}\n")
    assert [(p.base, p.against) for p in load_suite(ok).report.compare] == [("rtn", "g")]
    bad = tmp_path / "bad.yaml"
    bad.write_text(text + "report: {compare: [{base: rtn, against: crvq}]}\n")
    with pytest.raises(SuiteError, match=r"report.compare\[0\].against.*'crvq' is not a method of this suite"):
        load_suite(bad)
    typo = tmp_path / "typo.yaml"
    typo.write_text(text + "report: {compare: [{base: rtn, againts: g}]}\n")
    with pytest.raises(SuiteError, match="againts"):
        load_suite(typo)
