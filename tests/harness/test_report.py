"""The report: tables (Markdown, LaTeX, CSV), failures and plots from a small store."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from harness.report import failures_frame, results_frame, write_report
from harness.report.plots import ppl_vs_bits_figure, write_plots
from harness.report.tables import latex_escape, to_latex
from harness.store import ResultStore

MODEL = "tiny_llama"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
REF_PPL, RTN_PPL = 12.3456789, {4: 13.0123456, 3: 17.5, 2: 412.987654}
RTN_BITS = {4: 4.25, 3: 3.25, 2: 2.25}


def _record(key: str, method: str, budget: int | None, *, bits: float, ppl: dict[str, float],
            params: dict | None = None, status: str = "ok", model: str = MODEL) -> dict:
    label = f"{model}/{method}" + (f"/b{budget}" if budget is not None else "")
    return {
        "key": key, "status": status, "label": label, "suite": "demo",
        "model": {"label": model, "id": "x"}, "method": method, "method_label": method,
        "budget": budget, "params": params or {}, "reference": method == "none",
        "metrics": {
            "bits": bits, "bits_formula": "b + 32/g", "bits_paper": bits, "model_bits": bits + 0.5,
            "size_bytes": int(bits * 1e6 / 8),
            "perplexity": {d: {"ppl": v, "seqlen": 128, "windows": 4, "tokens": 512} for d, v in ppl.items()},
        } if status == "ok" else {},
        "timings": {"load_s": 1.0, "quantize_s": 2.5 if method != "none" else 0.0, "eval_s": 3.0, "total_s": 6.5},
        "error": None if status == "ok" else {
            "type": "RuntimeError", "message": "CUDA out of memory | tried 9 GiB\nsecond line", "traceback": "tb"},
        "finished_at": "2025-01-01T00:00:00",
    }


def _fixture_records() -> list[dict]:
    records = [_record("ref0", "none", None, bits=32.0, ppl={"embedded": REF_PPL, "wikitext2": 20.0})]
    for b in (2, 4, 3):  # deliberately out of order
        records.append(_record(f"rtn{b}", "rtn", b, bits=RTN_BITS[b], ppl={"embedded": RTN_PPL[b], "wikitext2": 30.0 + b},
                               params={"bits": b, "group_size": 128, "sym": False}))
    records.append(_record("gptq1", "gptq", 1, bits=1.0, ppl={}, status="failed", params={"bits": 1}))
    return records


@pytest.fixture()
def store(tmp_path: Path) -> ResultStore:
    store = ResultStore(tmp_path)
    for r in _fixture_records():
        store.put(r)
    return store


def test_results_frame_rows_order_and_params() -> None:
    frame = results_frame(_fixture_records())
    assert list(frame["key"]) == ["ref0", "rtn4", "rtn3", "rtn2"]  # reference first, bits descending
    assert list(frame["params"]) == ["", "bits=4", "bits=3", "bits=2"]  # only what differs
    assert [c for c in frame.columns if c.startswith("ppl:")] == ["ppl:embedded", "ppl:wikitext2"]
    assert frame.loc[0, "ppl:embedded"] == REF_PPL and bool(frame.loc[0, "reference"])
    assert frame.loc[1, "size_mb"] == pytest.approx(4.25 / 8) and frame.loc[1, "quantize_s"] == 2.5
    assert pd.isna(frame.loc[0, "budget"]) and frame.loc[1, "budget"] == 4


def test_params_show_only_differing_keys() -> None:
    records = [
        _record("a", "rtn", 2, bits=2.5, ppl={"e": 1.0}, params={"bits": 2, "group_size": 64, "sym": True}),
        _record("b", "rtn", 2, bits=2.25, ppl={"e": 1.0}, params={"bits": 2, "group_size": 128, "sym": True}),
    ]
    assert list(results_frame(records)["params"]) == ["g=64", "g=128"]


def test_markdown_table_and_failures(store: ResultStore) -> None:
    write_report(store, plots=())
    md = (store.tables_dir / "results.md").read_text()
    assert md.startswith("# demo results")
    assert "| model" in md and "ppl:embedded" in md
    rows = [line for line in md.splitlines() if line.startswith(f"| {MODEL} ")]
    assert len(rows) == 4
    assert ["12.35" in rows[0], "13.01" in rows[1], "17.50" in rows[2], "412.99" in rows[3]] == [True] * 4
    assert "4.250" in rows[1] and "bits=4" in rows[1] and "2.5" in rows[1]
    assert "## Failed cells" in md and md.index("## Failed cells") > md.index(rows[3])
    failures = (store.tables_dir / "failures.md").read_text()
    for text in (md, failures):
        assert f"{MODEL}/gptq/b1" in text and "gptq1" in text
        assert "RuntimeError: CUDA out of memory \\| tried 9 GiB second line" in text


def test_latex_table(store: ResultStore) -> None:
    write_report(store, tables=("latex",), plots=())
    tex = (store.tables_dir / "results.tex").read_text()
    for token in (r"\toprule", r"\midrule", r"\bottomrule", r"\begin{tabular}", r"\textbf{tiny\_llama}",
                  r"Perplexity ($\downarrow$)", "embedded & wikitext2"):
        assert token in tex, token
    assert "tiny_llama" not in tex.replace(r"tiny\_llama", "")
    body = tex[tex.index(r"\textbf{tiny\_llama}"):]
    assert body.index("12.35") < body.index("13.01") < body.index("17.50") < body.index("412.99")
    assert "gptq" not in tex  # failed cells are not results
    assert not (store.tables_dir / "results.md").exists()


def test_latex_groups_models_and_escapes() -> None:
    records = [_record("a", "rtn_v2", 4, bits=4.0, ppl={"wiki_2": 9.0}, model="m_b"),
               _record("b", "rtn_v2", 4, bits=4.0, ppl={"wiki_2": 8.0}, model="m_a")]
    tex = to_latex(results_frame(records))
    assert tex.index(r"\textbf{m\_a}") < tex.index(r"\textbf{m\_b}")
    assert r"rtn\_v2" in tex and r"wiki\_2" in tex and tex.count(r"\midrule") == 2
    assert latex_escape("50% & $x_1$ {a}") == r"50\% \& \$x\_1\$ \{a\}"


def test_csv_full_precision(store: ResultStore) -> None:
    paths = write_report(store, tables=("csv",), plots=(), html=False)
    assert paths == [store.tables_dir / "results.csv"]
    csv = pd.read_csv(paths[0])
    assert list(csv["key"]) == ["ref0", "rtn4", "rtn3", "rtn2"]
    assert csv.loc[0, "ppl:embedded"] == REF_PPL and csv.loc[3, "ppl:embedded"] == RTN_PPL[2]


def test_plots_exist_and_are_valid(store: ResultStore) -> None:
    paths = write_report(store, tables=())
    paths = [p for p in paths if p.parent == store.plots_dir]
    names = sorted(p.name for p in paths)
    per_model = [f"{MODEL}_{d}_ppl_vs_bits.{f}" for d in ("embedded", "wikitext2") for f in ("png", "svg")]
    pareto = [f"pareto_ppl_{d}_vs_{x}.{f}" for d in ("embedded", "wikitext2") for x in ("bits", "size") for f in ("png", "svg")]
    assert names == sorted(per_model + pareto)
    for p in paths:
        assert p.parent == store.plots_dir
        data = p.read_bytes()
        assert data.startswith(PNG_MAGIC) if p.suffix == ".png" else b"<svg" in data


def test_plot_axes_reference_and_log_scale() -> None:
    frame = results_frame(_fixture_records())
    fig = ppl_vs_bits_figure(frame, MODEL, "embedded")
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"  # 12 .. 413 spans more than 10x
    assert ax.get_title() == f"{MODEL} — embedded perplexity vs bits/weight"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["rtn", "none (unquantized): 12.35"]
    line = ax.get_lines()[0]
    assert list(line.get_xdata()) == [2.25, 3.25, 4.25]  # sorted by bits
    assert ppl_vs_bits_figure(frame, MODEL, "wikitext2").axes[0].get_yscale() == "linear"


def test_plot_single_point_without_reference(tmp_path: Path) -> None:
    frame = results_frame([_record("a", "rtn", 4, bits=4.25, ppl={"embedded": 14.0})])
    paths = write_plots(frame, tmp_path)
    assert [p.suffix for p in paths] == [".png", ".svg"]
    assert paths[0].read_bytes().startswith(PNG_MAGIC)


def test_plot_reference_only_and_diverged_points(tmp_path: Path) -> None:
    records = [_record("r", "none", None, bits=32.0, ppl={"e": 10.0}),
               _record("a", "rtn", 1, bits=1.1, ppl={"e": float("inf")})]
    assert len(write_plots(results_frame(records), tmp_path, ("png",))) == 1
    assert write_plots(results_frame(records[1:]), tmp_path / "none") == []


def test_empty_store(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    paths = write_report(store)
    assert "No finished cells." in (store.tables_dir / "results.md").read_text()
    assert "No failed cells." in (store.tables_dir / "failures.md").read_text()
    assert not store.plots_dir.exists() and all(p.exists() for p in paths)
    assert failures_frame([]).empty


def test_unknown_format_is_refused(store: ResultStore) -> None:
    with pytest.raises(ValueError, match="html"):
        write_report(store, tables=("html",))


def test_version_0_records_are_read_through_the_record_migration(tmp_path: Path) -> None:
    """Records written before the typed record (bare perplexities, zero-shot without `tasks`, no
    seed) load from the store and fill the same columns as current ones."""
    old = {"key": "old0", "status": "ok", "label": f"{MODEL}/rtn/b4", "model": {"label": MODEL}, "method": "rtn",
           "budget": 4, "params": {"bits": 4}, "metrics": {
               "bits": 4.25, "perplexity": {"embedded": 13.5},
               "zero_shot": {"piqa": {"acc": 0.625, "acc_stderr": 0.01}, "average": 0.625}}}
    (tmp_path / "records").mkdir()
    (tmp_path / "records" / "old0.json").write_text(json.dumps(old))
    records = ResultStore(tmp_path).records()
    frame = results_frame(records)
    row = frame.iloc[0]
    assert row["ppl:embedded"] == 13.5 and row["acc:piqa"] == 0.625 and row["acc:avg"] == 0.625
    assert row["seeds"] == "0" and not row["reference"] and row["method"] == "rtn"
    assert results_frame([old]).equals(frame)  # a raw dict reads the same as the stored record
