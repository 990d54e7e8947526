"""Result tables with repeats: one row per cell config (mean ± std over seeds, n), bootstrap
intervals from the per-window NLLs, zero-shot standard errors, throughput spread, per-seed tables."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from harness.analysis.stats import perplexity_interval
from harness.report import write_report
from harness.report.tables import records_frame, results_frame, to_latex, to_markdown
from harness.store import ResultStore

MODEL = "tiny"
WINDOWS = 12


def _window_nll(level: float, seed: int) -> list[float]:
    rng = np.random.default_rng(seed)
    return list(level + 0.3 * rng.standard_normal(WINDOWS))


def _record(method: str, budget: int | None, seed: int, *, level: float, acc: float, se: float = 0.02,
            tok: tuple[float, float, float] | None = None, calib_seed: int | None = None) -> dict:
    nll = _window_nll(level, 100 * seed + (budget or 0))
    cell = {
        "suite": "rep", "model": {"id": "x", "name": None, "revision": None, "seqlen": None},
        "method": method, "method_label": method, "budget": budget, "params": {"bits": budget} if budget else {},
        "calibration": None if method != "aqlm" else {"source": "embedded", "num_sequences": 4, "seqlen": 64,
                                                      "seed": seed if calib_seed is None else calib_seed, "dtype": "float32"},
        "evaluations": {"perplexity": {"datasets": ["embedded"], "seqlen": 64, "max_windows": None, "batch_size": 1}},
        "seed": seed, "device": "cpu", "dtype": "float32", "save_model": False,
        **({"base_seed": 0} if seed else {}),
    }
    metrics = {
        "bits": 16.0 if budget is None else budget + 0.25, "bits_paper": None, "model_bits": None,
        "size_bytes": 1_000_000 * (16 if budget is None else budget),
        "perplexity": {"embedded": {"ppl": float(np.exp(np.mean(nll))), "window_nll": nll, "windows": WINDOWS}},
        "zero_shot": {"tasks": {"t1": {"acc": acc, "acc_stderr": se}, "t2": {"acc": acc / 2, "acc_stderr": se}}},
    }
    if tok is not None:
        metrics["throughput"] = {"results": [{"batch_size": 1, "tokens_per_s": tok[1], "tokens_per_s_min": tok[0],
                                              "tokens_per_s_max": tok[2]}]}
    key = f"{method}{budget or ''}s{seed}"
    return {
        "key": key, "status": "ok", "label": f"{MODEL}/{method}" + (f"/b{budget}" if budget else "") + (f"/s{seed}" if seed else ""),
        "suite": "rep", "model": {"label": MODEL, "id": "x"}, "method": method, "method_label": method, "budget": budget,
        "params": cell["params"], "reference": method == "none", "cell": cell, "metrics": metrics,
        "timings": {"quantize_s": 10.0 + seed},
    }


def _md_rows(md: str) -> list[dict[str, str]]:
    """The results table of a Markdown document as one {column: cell} dict per row."""
    lines = [line for line in md.splitlines() if line.startswith("|")]
    split = lambda line: [c.strip() for c in line.strip().strip("|").split("|")]  # noqa: E731
    header = split(lines[0])
    return [dict(zip(header, split(line))) for line in lines[2:]]


ACCS = [0.40, 0.46, 0.43]
TOKS = [(9.0, 10.0, 11.0), (8.0, 12.0, 13.0), (10.5, 11.0, 11.5)]


@pytest.fixture()
def records() -> list[dict]:
    out = [_record("none", None, 0, level=2.5, acc=0.6, tok=(20.0, 21.0, 22.0))]
    out += [_record("aqlm", 1, s, level=4.0, acc=ACCS[s], tok=TOKS[s]) for s in (2, 0, 1)]  # out of order
    out.append(_record("rtn", 2, 0, level=6.0, acc=0.3))
    return out


def test_repeats_collapse_into_one_row_with_mean_std_and_n(records) -> None:
    frame = results_frame(records)
    assert list(frame["method"]) == ["none", "aqlm", "rtn"] and list(frame["n"]) == [1, 3, 1]
    aqlm = frame.iloc[1]
    assert aqlm["key"] == "aqlm1s0" and aqlm["seeds"] == "0 1 2" and aqlm["keys"] == "aqlm1s0 aqlm1s1 aqlm1s2"
    by_seed = sorted((r for r in records if r["method"] == "aqlm"), key=lambda r: r["cell"]["seed"])
    ppl = [r["metrics"]["perplexity"]["embedded"]["ppl"] for r in by_seed]
    assert aqlm["ppl:embedded"] == pytest.approx(np.mean(ppl))
    assert aqlm["ppl_std:embedded"] == pytest.approx(np.std(ppl, ddof=1))
    assert aqlm["acc:t1"] == pytest.approx(np.mean(ACCS)) and aqlm["acc_std:t1"] == pytest.approx(np.std(ACCS, ddof=1))
    avg = [(a + a / 2) / 2 for a in ACCS]
    assert aqlm["acc:avg"] == pytest.approx(np.mean(avg)) and aqlm["acc_std:avg"] == pytest.approx(np.std(avg, ddof=1))
    assert aqlm["quantize_s"] == pytest.approx(11.0)
    # the interval resamples windows and seeds of the [seeds, windows] matrix
    interval = perplexity_interval([r["metrics"]["perplexity"]["embedded"]["window_nll"] for r in by_seed])
    assert (aqlm["ppl_lo:embedded"], aqlm["ppl_hi:embedded"]) == pytest.approx((interval.low, interval.high))
    assert aqlm["ppl_lo:embedded"] < aqlm["ppl:embedded"] < aqlm["ppl_hi:embedded"]
    # throughput: mean of the medians, slowest and fastest repeat over all seeds
    assert aqlm["tok/s:b1"] == pytest.approx(11.0) and (aqlm["tok/s_min:b1"], aqlm["tok/s_max:b1"]) == (8.0, 13.0)
    ref = frame.iloc[0]
    assert math.isnan(ref["ppl_std:embedded"]) and ref["acc_se:t1"] == 0.02
    assert ref["acc_se:avg"] == pytest.approx(math.sqrt(2 * 0.02**2) / 2)
    single = perplexity_interval(records[0]["metrics"]["perplexity"]["embedded"]["window_nll"])
    assert (ref["ppl_lo:embedded"], ref["ppl_hi:embedded"]) == pytest.approx((single.low, single.high))


def test_per_record_frame_keeps_every_seed(records) -> None:
    frame = records_frame(records)
    assert list(frame["key"]) == ["nones0", "aqlm1s0", "aqlm1s1", "aqlm1s2", "rtn2s0"]
    assert list(frame["seed"]) == [0, 0, 1, 2, 0] and "n" not in frame
    assert frame.loc[2, "acc:t1"] == ACCS[1] and frame.loc[2, "tok/s_max:b1"] == 13.0


def test_only_seeds_may_differ_within_a_row(records) -> None:
    other_eval = _record("aqlm", 1, 1, level=4.0, acc=0.5)
    other_eval["key"] = "aqlm1s1x"
    other_eval["cell"]["evaluations"]["perplexity"]["max_windows"] = 5
    fixed_calibration = [_record("aqlm", 1, s, level=4.0, acc=0.5, calib_seed=0) for s in (0, 1)]
    frame = results_frame([*records, other_eval])
    assert list(frame.loc[frame["method"] == "aqlm", "n"]) == [3, 1]
    assert list(results_frame(fixed_calibration)["n"]) == [2]  # a fixed calibration seed: the method's seed varies
    no_cell = [{**r, "cell": None} for r in records]
    assert list(results_frame(no_cell)["n"]) == [1] * 5  # without the config nothing is merged


def test_markdown_and_latex_show_uncertainty(records) -> None:
    frame = results_frame(records)
    md = to_markdown(frame, title="rep")
    assert "Uncertainty: `mean ± std` over the `n` seeds" in md and "95% bootstrap confidence interval" in md
    assert "lm-eval's standard error" in md and "(slowest–fastest)" in md
    ref_row, row, _ = _md_rows(md)
    assert list(row) == ["model", "method", "budget", "n", "bits", "size_mb", "ppl:embedded", "acc:t1", "acc:t2",
                         "acc:avg", "tok/s:b1", "quantize_s"]  # uncertainty merged into the main columns
    aqlm = frame.iloc[1]
    ppl = f"{aqlm['ppl:embedded']:.2f} ± {aqlm['ppl_std:embedded']:.2f} [{aqlm['ppl_lo:embedded']:.2f}, {aqlm['ppl_hi:embedded']:.2f}]"
    assert row["ppl:embedded"] == ppl and row["acc:t1"] == f"{100 * aqlm['acc:t1']:.1f} ± {100 * aqlm['acc_std:t1']:.1f}"
    assert row["tok/s:b1"] == "11.0 (8.0–13.0)" and row["n"] == "3"
    ref = frame.iloc[0]  # one run: lm-eval's stderr for accuracy, only the interval for perplexity
    assert ref_row["acc:t1"] == "60.0 ± 2.0" and ref_row["n"] == "1"
    assert ref_row["ppl:embedded"] == f"{ref['ppl:embedded']:.2f} [{ref['ppl_lo:embedded']:.2f}, {ref['ppl_hi:embedded']:.2f}]"
    tex = to_latex(frame)
    assert r"$\pm$" in tex and "8.0--13.0" in tex and r"Decode tokens/s ($\uparrow$)" in tex and "batch 1" in tex
    assert "±" not in tex and "$n$" in tex


def test_report_writes_per_seed_tables_only_with_repeats(records, tmp_path) -> None:
    store = ResultStore(tmp_path / "a")
    for r in records:
        store.put(r)
    write_report(store, plots=(), html=False)
    by_seed = pd.read_csv(store.tables_dir / "results_by_seed.csv")
    assert len(by_seed) == 5 and list(by_seed["seed"]) == [0, 0, 1, 2, 0]
    assert "every seed" in (store.tables_dir / "results_by_seed.md").read_text()
    csv = pd.read_csv(store.tables_dir / "results.csv")
    assert list(csv["n"]) == [1, 3, 1] and {"ppl_lo:embedded", "ppl_hi:embedded", "acc_se:t1"} <= set(csv.columns)
    single = ResultStore(tmp_path / "b")
    for r in records:
        if r["cell"]["seed"] == 0:
            single.put(r)
    write_report(single, plots=(), html=False)
    assert not (single.tables_dir / "results_by_seed.csv").exists()
    md = (single.tables_dir / "results.md").read_text()
    assert "mean ± std" not in md and "n" not in _md_rows(md)[0]  # no repeats: no n column
