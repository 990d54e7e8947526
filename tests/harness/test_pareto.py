"""Pareto fronts (a fixture with a known answer) and the Pareto plots of a small store."""
from __future__ import annotations

import math

import numpy as np
import pytest

from harness.report import results_frame, write_report
from harness.report.pareto import pareto_figure, pareto_front, pareto_indices
from harness.store import ResultStore

INF, NAN = math.inf, math.nan

# (bits, ppl): the front is the lower-left staircase
POINTS = [
    (4.0, 10.0),   # 0 front
    (2.0, 30.0),   # 1 front
    (3.0, 12.0),   # 2 front
    (3.0, 15.0),   # 3 tied in x with a better point: dominated
    (2.5, 30.0),   # 4 tied in y with a smaller point: dominated
    (1.0, INF),    # 5 diverged: excluded
    (1.5, NAN),    # 6 missing: excluded
    (2.0, 30.0),   # 7 duplicate of 1: kept once (the first)
    (16.0, 9.0),   # 8 front (the reference)
    (5.0, 11.0),   # 9 dominated by 0
    (NAN, 1.0),    # 10 no size: excluded
]


def test_front_of_a_fixture_with_known_answer() -> None:
    assert pareto_front(POINTS) == [(2.0, 30.0), (3.0, 12.0), (4.0, 10.0), (16.0, 9.0)]
    xs, ys = zip(*POINTS)
    assert list(pareto_indices(xs, ys)) == [1, 2, 0, 8]


def test_front_maximising_accuracy() -> None:
    acc = [(1.0, 0.30), (2.0, 0.30), (2.0, 0.45), (3.0, 0.40), (4.0, 0.60), (4.0, 0.60), (5.0, NAN)]
    assert pareto_front(acc, minimize_y=False) == [(1.0, 0.30), (2.0, 0.45), (4.0, 0.60)]
    assert pareto_front([]) == [] and pareto_front([(1.0, INF)]) == []


def test_front_brute_force_agreement() -> None:
    rng = np.random.default_rng(0)
    pts = rng.integers(0, 6, size=(60, 2)).astype(float)  # many ties and duplicates
    front = set(pareto_front(pts))
    dominated = {tuple(p) for p in pts if any((q <= p).all() and (q < p).any() for q in pts)}
    assert front == {tuple(p) for p in pts} - dominated


def _record(key: str, model: str, method: str, budget: int | None, seed: int, bits: float, ppl: float,
            acc: float | None = None) -> dict:
    metrics = {"bits": bits, "size_bytes": int(bits * 1e7), "perplexity": {"embedded": {"ppl": ppl}}}
    if acc is not None:
        metrics["zero_shot"] = {"tasks": {"t": {"acc": acc, "acc_stderr": 0.01}}}
    cell = {"model": {"id": model}, "method": method, "method_label": method, "budget": budget, "params": {},
            "seed": seed, "evaluations": {}}
    return {"key": key, "status": "ok", "label": f"{model}/{method}", "suite": "p", "model": {"label": model},
            "method": method, "method_label": method, "budget": budget, "params": {}, "reference": method == "none",
            "cell": cell, "metrics": metrics}


@pytest.fixture()
def records() -> list[dict]:
    out = [_record("ra", "m-a", "none", None, 0, 16.0, 10.0, 0.6), _record("rb", "m-b", "none", None, 0, 16.0, 8.0, 0.7)]
    for i, seed in enumerate((0, 1, 2)):  # repeats of one config: an error bar
        out.append(_record(f"qa{seed}", "m-a", "aqlm", 1, seed, 1.1, 30.0 + 2 * i, 0.4 + 0.01 * i))
    out += [_record("ga", "m-a", "gptq", 2, 0, 2.3, 18.0, 0.5), _record("gb", "m-b", "gptq", 2, 0, 2.3, 14.0, 0.55),
            _record("rt", "m-b", "rtn", 2, 0, 2.25, INF, 0.25)]
    return out


def test_pareto_figure_frontier_error_bars_and_log_y(records) -> None:
    frame = results_frame(records)
    fig = pareto_figure(frame, "ppl:embedded", "bits")
    ax = fig.axes[0]
    assert ax.get_yscale() == "log" and ax.get_xscale() == "log"
    step = next(line for line in ax.get_lines() if line.get_linestyle() == "--")
    assert list(step.get_xdata()) == [1.1, 2.3, 16.0] and list(step.get_ydata()) == pytest.approx([32.0, 14.0, 8.0])
    assert len(ax.containers) == 5  # one errorbar container per plotted row (the diverged rtn row is left out)
    bars = [c for c in ax.containers if c.has_yerr]
    assert len(bars) == 1  # only the repeated row has an error bar
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[:3] == ["aqlm", "gptq", "unquantized"] and "m-b" in labels and "Pareto frontier" in labels
    acc = pareto_figure(frame, "acc:avg", "size")
    step = next(line for line in acc.axes[0].get_lines() if line.get_linestyle() == "--")
    assert acc.axes[0].get_yscale() == "linear"
    assert list(step.get_ydata()) == pytest.approx([41.0, 55.0, 70.0])  # maximised, percent


def test_report_writes_the_pareto_plots(records, tmp_path) -> None:
    store = ResultStore(tmp_path)
    for r in records:
        store.put(r)
    paths = write_report(store, tables=(), html=False)
    pareto = sorted(p.name for p in paths if p.name.startswith("pareto_"))
    assert pareto == sorted(f"pareto_{m}_vs_{x}.{f}" for m in ("ppl_embedded", "acc_avg") for x in ("bits", "size")
                            for f in ("png", "svg"))
    for p in paths:
        data = p.read_bytes()
        assert data.startswith(b"\x89PNG") if p.suffix == ".png" else b"<svg" in data
