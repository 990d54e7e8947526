"""Zero-shot columns in the result tables, failed evaluations, and the accuracy-vs-bits plot."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from harness.report import results_frame, write_report
from harness.report.plots import acc_vs_bits_figure
from harness.report.tables import evaluation_errors_frame, to_latex
from harness.store import ResultStore

MODEL = "tiny"
ACC = {None: (0.36, 0.51), 4: (0.25, 0.475), 3: (0.17, 0.325), 2: (0.0, 0.2)}


def _task(acc: float | None, acc_norm: float | None = None, error: str | None = None) -> dict:
    return {"task": "t", "acc": acc, "acc_stderr": 0.03 if acc is not None else None, "acc_norm": acc_norm,
            "error": {"type": "ZeroShotTaskError", "message": error} if error else None}


def _record(key: str, budget: int | None, *, piqa_error: bool = False) -> dict:
    method = "none" if budget is None else "rtn"
    lastword, cloze = ACC[budget]
    tasks = {"embedded_lastword": _task(lastword), "embedded_cloze4": _task(cloze, cloze - 0.01)}
    if piqa_error:
        tasks["piqa"] = _task(None, error="zero-shot task 'piqa' needs the dataset baber/piqa | offline")
    return {
        "key": key, "status": "ok", "label": f"{MODEL}/{method}" + (f"/b{budget}" if budget else ""), "suite": "zs",
        "model": {"label": MODEL, "id": "x"}, "method": method, "method_label": method, "budget": budget,
        "params": {"bits": budget} if budget else {}, "reference": budget is None,
        "metrics": {"bits": 16.0 if budget is None else budget + 0.5, "bits_paper": None, "model_bits": None,
                    "size_bytes": 1000, "perplexity": {"embedded": {"ppl": 10.0 + (8 - (budget or 8))}},
                    "zero_shot": {"tasks": tasks, "average": {"acc": None}}},
        "timings": {"quantize_s": 1.0},
    }


@pytest.fixture()
def records() -> list[dict]:
    return [_record("ref", None), _record("r4", 4, piqa_error=True), _record("r3", 3), _record("r2", 2)]


def test_frame_has_accuracy_columns_and_a_complete_rows_average(records) -> None:
    frame = results_frame(records)
    assert [c for c in frame.columns if c.startswith("acc:")] == [
        "acc:embedded_lastword", "acc:embedded_cloze4", "acc:piqa", "acc:avg"]
    assert list(frame["key"]) == ["ref", "r4", "r3", "r2"]
    assert frame.loc[0, "acc:embedded_cloze4"] == 0.51 and frame["acc:piqa"].isna().all()
    # piqa failed everywhere: the average is over the two measured tasks
    assert list(frame["acc:avg"]) == pytest.approx([(a + b) / 2 for a, b in ACC.values()])
    gap = results_frame([*records[:3], {**records[3], "metrics": {**records[3]["metrics"], "zero_shot": {
        "tasks": {"embedded_lastword": _task(0.0)}}}}])
    assert math.isnan(gap.loc[3, "acc:avg"]) and not gap["acc:avg"][:3].isna().any()  # r2 misses cloze4


def test_markdown_latex_and_failed_evaluations(records, tmp_path) -> None:
    store = ResultStore(tmp_path)
    for r in records:
        store.put(r)
    write_report(store, plots=())
    md = (store.tables_dir / "results.md").read_text()
    assert "acc:embedded_cloze4" in md and "Zero-shot accuracy in percent" in md
    ref_row = next(line for line in md.splitlines() if line.startswith(f"| {MODEL} ") and "| none" in line)
    assert "36.0" in ref_row and "51.0" in ref_row
    for text in (md, (store.tables_dir / "failures.md").read_text()):
        assert "## Failed evaluations" in text and "zero_shot:piqa" in text and "baber/piqa \\| offline" in text
    tex = (store.tables_dir / "results.tex").read_text()
    assert r"\multicolumn{1}{c}{Perplexity ($\downarrow$)} & \multicolumn{4}{c}{Zero-shot accuracy, \% ($\uparrow$)}" in tex
    assert r"embedded\_lastword" in tex and "Avg" in tex
    csv = pd.read_csv(store.tables_dir / "results.csv")
    assert csv.loc[0, "acc:embedded_lastword"] == 0.36  # fractions at full precision in the CSV


def test_no_zero_shot_keeps_the_old_columns() -> None:
    record = _record("a", 4)
    del record["metrics"]["zero_shot"]
    frame = results_frame([record])
    assert not any(c.startswith("acc:") for c in frame.columns)
    assert "Zero-shot" not in to_latex(frame) and evaluation_errors_frame([record]).empty


def test_accuracy_plot_per_model(records, tmp_path) -> None:
    frame = results_frame(records)
    fig = acc_vs_bits_figure(frame, MODEL)
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles == ["embedded_lastword", "embedded_cloze4", "average"]  # piqa: no value to plot
    cloze = fig.axes[1]
    line = cloze.get_lines()[0]
    assert list(line.get_xdata()) == [2.5, 3.5, 4.5] and list(line.get_ydata()) == pytest.approx([20.0, 32.5, 47.5])
    assert cloze.get_lines()[1].get_ydata()[0] == pytest.approx(51.0)  # the reference line
    store = ResultStore(tmp_path)
    for r in records:
        store.put(r)
    names = sorted(p.name for p in write_report(store, tables=()) if p.parent == store.plots_dir
                   and not p.name.startswith("pareto_"))  # the Pareto plots: tests/harness/test_pareto.py
    assert names == sorted([f"{MODEL}_embedded_ppl_vs_bits.png", f"{MODEL}_embedded_ppl_vs_bits.svg",
                            f"{MODEL}_zeroshot_acc_vs_bits.png", f"{MODEL}_zeroshot_acc_vs_bits.svg"])
