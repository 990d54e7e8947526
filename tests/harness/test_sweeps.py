"""Parameter sweeps in the report: perplexity vs one method parameter, series by another."""
from __future__ import annotations

import math
import sys

import pytest
from matplotlib.image import imread

from harness import cli
from harness.errors import HarnessError
from harness.report.sweeps import Sweep, as_sweeps, sweep_frame, sweep_markdown, write_sweeps
from harness.store import ResultStore


def _record(key: str, method: str, ppl: float, *, bits: float, params: dict | None = None, seed: int = 0,
            budget: int | None = 1, label: str | None = None) -> dict:
    return {"key": key, "status": "ok", "label": f"tiny/{label or method}", "model": {"label": "tiny"},
            "method": method, "method_label": label or method, "budget": budget, "params": params or {},
            "reference": method == "none", "cell": {"method": method, "seed": seed},
            "timings": {"total_s": 1.0},
            "metrics": {"bits": bits + 0.01, "bits_paper": bits, "model_bits": bits + 1, "size_bytes": 1000,
                        "perplexity": {"wiki": {"ppl": ppl}}}}


def _crvq(key: str, ratio: float, codebooks: int, ppl: float, **kw) -> dict:
    params = {"nbits": 8, "critical_ratio": ratio, "num_extended_codebooks": codebooks, "importance": "wa",
              "betas": [0.0, 0.95], **kw.pop("params", {})}
    return _record(key, "crvq", ppl, bits=1.0 + ratio * codebooks, params=params, **kw)


def _records() -> list[dict]:
    return [
        _record("ref", "none", 10.0, bits=16.0, budget=None),
        _record("aq", "aqlm", 100.0, bits=1.0, params={"num_codebooks": 1}),
        _crvq("c1", 0.1, 1, 80.0), _crvq("c2", 0.1, 2, 70.0), _crvq("c3", 0.05, 1, 90.0),
        _crvq("c4", 0.05, 2, 84.0, seed=0), _crvq("c5", 0.05, 2, 86.0, seed=1),  # two seeds of one point
        _crvq("c6", 0.05, 2, 95.0, params={"importance": "random"}),  # another importance: its own series
        {"key": "bad", "status": "failed", "label": "tiny/crvq", "method": "crvq", "params": {"critical_ratio": 0.2},
         "error": {"type": "RuntimeError", "message": "diverged"}},
    ]


def test_points_series_seeds_and_baselines():
    points, baselines = sweep_frame(_records(), Sweep("crvq", "critical_ratio", "num_extended_codebooks"))
    rows = {(r["series"], r["lines"], r["x"]): r for r in points.to_dict("records")}
    assert set(rows) == {("importance=wa", 1, 0.05), ("importance=wa", 1, 0.1), ("importance=wa", 2, 0.05),
                         ("importance=wa", 2, 0.1), ("importance=random", 2, 0.05)}
    two_seeds = rows[("importance=wa", 2, 0.05)]
    assert two_seeds["n"] == 2 and two_seeds["ppl:wiki"] == pytest.approx(85.0)
    assert two_seeds["ppl_std:wiki"] == pytest.approx(2**0.5)  # 84 and 86
    assert math.isnan(rows[("importance=wa", 1, 0.1)]["ppl_std:wiki"])
    assert two_seeds["bits_paper"] == pytest.approx(1.1)
    assert rows[("importance=wa", 1, 0.1)]["n"] == 1 and rows[("importance=wa", 1, 0.1)]["ppl:wiki"] == 80.0
    # numeric x in numeric order within a series
    wa_1 = [r["x"] for r in points.to_dict("records") if r["series"] == "importance=wa" and r["lines"] == 1]
    assert wa_1 == [0.05, 0.1]
    assert sorted(baselines["label"]) == ["aqlm b1", "none"]
    assert baselines.set_index("label").loc["aqlm b1", "ppl:wiki"] == 100.0


def test_markdown_grid():
    sweep = Sweep("crvq", "critical_ratio", "num_extended_codebooks")
    md = sweep_markdown(*sweep_frame(_records(), sweep), sweep)
    assert "## tiny: wiki" in md
    header = next(line for line in md.splitlines() if line.startswith("|") and "critical_ratio" in line)
    assert "num_extended_codebooks=1, importance=wa" in header and "num_extended_codebooks=2, importance=random" in header
    row = next(line for line in md.splitlines() if line.startswith("|") and line.split("|")[1].strip() == "0.05")
    assert "90.00 (1.050)" in row and "85.00 ± 1.41 (n=2) (1.100)" in row and "95.00 (1.100)" in row
    assert "Baselines: aqlm b1 100.00 (1.000 bits); none 10.00 (16.000 bits)." in md


def test_categorical_sweep_without_lines():
    points, _ = sweep_frame(_records(), Sweep("crvq", "importance"))
    assert sorted(set(points["x"])) == ["random", "wa"]
    # the other parameters that vary (ratio, codebooks) name the series
    assert set(points["series"]) == {"critical_ratio=0.1 num_extended_codebooks=1",
                                     "critical_ratio=0.1 num_extended_codebooks=2",
                                     "critical_ratio=0.05 num_extended_codebooks=1",
                                     "critical_ratio=0.05 num_extended_codebooks=2"}


def test_write_sweeps_tables_and_plots(tmp_path):
    store = ResultStore(tmp_path / "results")
    for r in _records():
        store.put(r)
    paths = write_sweeps(store, ["crvq:critical_ratio:num_extended_codebooks", "crvq:importance"], plots=["png"])
    names = sorted(p.name for p in paths)
    assert names == ["sweep_crvq_critical_ratio_by_num_extended_codebooks.csv",
                     "sweep_crvq_critical_ratio_by_num_extended_codebooks.md",
                     "sweep_crvq_critical_ratio_by_num_extended_codebooks_tiny_wiki.png",
                     "sweep_crvq_importance.csv", "sweep_crvq_importance.md", "sweep_crvq_importance_tiny_wiki.png"]
    for p in paths:
        if p.suffix == ".png":
            image = imread(p)
            assert image.shape[0] > 200 and image.shape[1] > 400 and image.std() > 0
    csv = (store.tables_dir / "sweep_crvq_critical_ratio_by_num_extended_codebooks.csv").read_text().splitlines()
    assert csv[0] == "model,x,lines,series,n,bits,bits_paper,ppl:wiki,ppl_std:wiki" and len(csv) == 6


def test_sweep_of_a_missing_parameter_says_so(tmp_path):
    store = ResultStore(tmp_path / "results")
    for r in _records():
        store.put(r)
    paths = write_sweeps(store, [Sweep("crvq", "no_such_param")])
    assert [p.suffix for p in paths] == [".md", ".csv"]
    assert "No finished crvq cells with a parameter `no_such_param`." in paths[0].read_text()


@pytest.mark.parametrize("text", ["crvq", "crvq::", ":x", "a:b:c:d"])
def test_bad_sweep_strings(text):
    with pytest.raises(HarnessError, match="METHOD:PARAM"):
        as_sweeps([text])


def _report(monkeypatch, *args: str) -> None:
    monkeypatch.setattr(sys, "argv", ["harness", "report", *args])
    try:
        cli.main()
    except SystemExit as exc:
        assert exc.code in (0, None)


def test_report_uses_the_saved_suites_sweeps(tmp_path, monkeypatch):
    store = ResultStore(tmp_path / "results")
    for r in _records():
        store.put(r)
    store.save_suite("abl", "name: abl\nreport:\n  sweeps: [{method: crvq, x: critical_ratio, lines: num_extended_codebooks}]\n")
    _report(monkeypatch, str(store.root), "--no-html")
    assert (store.tables_dir / "sweep_crvq_critical_ratio_by_num_extended_codebooks.md").is_file()
    assert not (store.tables_dir / "sweep_crvq_importance.md").exists()
    # --sweep replaces the suite's sweeps
    _report(monkeypatch, str(store.root), "--no-html", "--sweep", "crvq:importance")
    assert (store.tables_dir / "sweep_crvq_importance.md").is_file()


def test_report_bad_sweep_option_is_a_clear_error(tmp_path, monkeypatch, capsys):
    store = ResultStore(tmp_path / "results")
    store.put(_records()[0])
    monkeypatch.setattr(sys, "argv", ["harness", "report", str(store.root), "--sweep", "crvq"])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "METHOD:PARAM" in err and "Traceback" not in err


def test_report_html_shows_the_sweep(tmp_path):
    from harness.report import write_report

    store = ResultStore(tmp_path / "results")
    for r in _records():
        store.put(r)
    write_report(store, tables=["markdown"], plots=["png"], sweeps=["crvq:critical_ratio:num_extended_codebooks"])
    page = (store.root / "report.html").read_text()
    assert "Parameter sweeps" in page and "Sweep: crvq perplexity vs" in page
    assert page.count("data:image/png;base64,") >= 2  # the sweep plot besides the default ones


def test_equal_params_with_other_settings_warn(caplog):
    records = _records()
    other = _crvq("c7", 0.1, 1, 60.0)
    other["cell"]["calibration"] = {"num_sequences": 999}  # not a seed repeat of c1
    with caplog.at_level("WARNING", logger="harness.report.sweeps"):
        sweep_frame(records + [other], Sweep("crvq", "critical_ratio", "num_extended_codebooks"))
    assert "equal params but other settings" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="harness.report.sweeps"):
        sweep_frame(records, Sweep("crvq", "critical_ratio", "num_extended_codebooks"))  # seeds only
    assert "other settings" not in caplog.text


def test_grid_rows_in_numeric_order_when_series_differ():
    records = [_crvq("a1", 0.01, 1, 90.0), _crvq("a2", 0.04, 1, 80.0),
               _crvq("b1", 0.01, 2, 85.0), _crvq("b2", 0.02, 2, 82.0), _crvq("b3", 0.04, 2, 75.0)]
    sweep = Sweep("crvq", "critical_ratio", "num_extended_codebooks")
    md = sweep_markdown(*sweep_frame(records, sweep), sweep)
    cells = [line.split("|")[1].strip() for line in md.splitlines() if line.startswith("|")]
    xs = [c for c in cells if c[:1].isdigit()]
    assert xs == ["0.01", "0.02", "0.04"]


def test_missing_or_diverged_seed_is_not_averaged_away():
    ok = _crvq("s0", 0.1, 1, 80.0, seed=0)
    missing = _crvq("s1", 0.1, 1, 90.0, seed=1)
    missing["metrics"]["perplexity"] = {}
    diverged = _crvq("t0", 0.05, 1, 80.0, seed=0), _crvq("t1", 0.05, 1, math.inf, seed=1)
    sweep = Sweep("crvq", "critical_ratio")
    points, _ = sweep_frame([ok, missing, *diverged], sweep)
    by_x = {r["x"]: r for r in points.to_dict("records")}
    assert by_x[0.1]["n"] == 2 and math.isnan(by_x[0.1]["ppl:wiki"])
    assert by_x[0.05]["n"] == 2 and by_x[0.05]["ppl:wiki"] == math.inf
    md = sweep_markdown(points, _, sweep)
    assert "| inf (n=2) (1.050) |" in md and "nan" not in md


def test_baselines_in_the_points_bit_accounting():
    _, baselines = sweep_frame(_records(), Sweep("crvq", "critical_ratio"))
    assert baselines.set_index("label").loc["aqlm b1", "bits"] == pytest.approx(1.0)  # bits_paper, not bits


def test_cli_sweep_names_are_checked(tmp_path, monkeypatch, capsys):
    store = ResultStore(tmp_path / "results")
    store.put(_records()[0])
    for arg, fragment in (("crvq:critical_ration", "'critical_ration' is not a parameter of crvq"),
                          ("crvq:importance:importance", "must differ from the x parameter"),
                          ("crvx:bits", "unknown method 'crvx'")):
        monkeypatch.setattr(sys, "argv", ["harness", "report", str(store.root), "--no-html", "--sweep", arg])
        with pytest.raises(SystemExit) as exc:
            cli.main()
        assert exc.value.code == 2 and fragment in capsys.readouterr().err
