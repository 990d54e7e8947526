"""`harness report --layout paper`: the papers' table shape, zero-shot columns, published numbers and deltas."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.report.paper import paper_frame, paper_latex, paper_markdown, write_paper_tables
from harness.report.reference import load_reference
from harness.store import ResultStore

TASKS = {"winogrande": (0.60, None), "piqa": (0.70, 0.72), "hellaswag": (0.40, 0.50),
         "arc_easy": (0.55, 0.50), "arc_challenge": (0.25, 0.30), "boolq": (0.65, None)}


def _record(key: str, method: str, *, bits: float, ppl: dict[str, float], model: str = "llama2-7b",
            params: dict | None = None, zero_shot: float | None = None, label: str | None = None) -> dict:
    metrics: dict = {"bits": bits + 0.01, "bits_paper": bits, "model_bits": bits + 1,
                     "perplexity": {d: {"ppl": v, "seqlen": 4096, "windows": 3} for d, v in ppl.items()}}
    if zero_shot is not None:  # every accuracy shifted by `zero_shot`
        metrics["zero_shot"] = {
            t: {"acc": a + zero_shot, "acc_stderr": 0.01, **({"acc_norm": n + zero_shot} if n is not None else {})}
            for t, (a, n) in TASKS.items()
        }
        metrics["zero_shot"]["average"] = 0.5
    return {"key": key, "status": "ok", "label": f"{model}/{method}", "suite": "paper-demo",
            "model": {"label": model, "id": f"meta-llama/{'Llama-2-7b-hf' if model == 'llama2-7b' else model}"},
            "method": method, "method_label": label or method, "budget": None, "params": params or {},
            "reference": method == "none", "metrics": metrics}


def _records() -> list[dict]:
    return [
        _record("a1", "aqlm", bits=1.0045, ppl={"wikitext2": 9.5, "c4": 12.0},
                params={"num_codebooks": 1, "nbits_per_codebook": 8}, zero_shot=-0.1),
        _record("ref", "none", bits=16.0, ppl={"wikitext2": 5.12, "c4": 6.63}, zero_shot=0.0),
        _record("c1", "crvq", bits=1.0665, ppl={"wikitext2": 8.0, "c4": 10.5}, zero_shot=-0.05),
        _record("a2", "aqlm", bits=2.0, ppl={"wikitext2": 6.9, "c4": 8.8},
                params={"num_codebooks": 2, "nbits_per_codebook": 8}),  # no zero-shot results
        _record("g2", "gptq", bits=2.3, ppl={"c4": 60.0}, model="opt-125m"),
        {"key": "bad", "status": "failed", "label": "llama2-7b/rtn", "method": "rtn", "model": {"label": "llama2-7b"}},
    ]


@pytest.fixture()
def reference(tmp_path: Path):
    path = tmp_path / "ref.yaml"
    path.write_text("""
name: test numbers
sources: {paper: {title: "Some paper, Table 1", url: "https://example.org/paper"}}
entries:
  - {model: meta-llama/Llama-2-7b-hf, method: aqlm, label: AQLM 2x8 pub, source: paper,
     match: {num_codebooks: 2}, bits: 2.02, metrics: {wikitext2: 6.5, c4: 8.5}}
  - {model: meta-llama/Llama-2-7b-hf, method: crvq, label: CRVQ pub, source: paper,
     metrics: {wikitext2: 7.5, winogrande: 0.5, piqa: 0.6, hellaswag: 0.3, arc_easy: 0.5, arc_challenge: 0.2, boolq: 0.6}}
  - {model: meta-llama/Llama-2-13b-hf, method: aqlm, label: AQLM 13b pub, source: paper, metrics: {wikitext2: 5.6}}
""")
    return load_reference(path)


def test_rows_columns_and_averages():
    frame = paper_frame(_records())
    assert list(frame.columns) == ["model", "method", "kind", "bits", "stored_bits", "ppl:wikitext2", "ppl:c4",
                                   "zs:winogrande", "zs:piqa", "zs:hellaswag", "zs:arc_easy", "zs:arc_challenge",
                                   "zs:boolq", "zs:avg"]
    # per model: the unquantized reference first, then bits descending; failed cells are not rows
    assert list(zip(frame["model"], frame["method"])) == [
        ("llama2-7b", "Unquantized"), ("llama2-7b", "AQLM"), ("llama2-7b", "CRVQ"), ("llama2-7b", "AQLM"),
        ("opt-125m", "GPTQ")]
    assert list(frame["bits"])[:4] == [16.0, 2.0, 1.0665, 1.0045]
    ref = frame.iloc[0]
    assert ref["zs:piqa"] == pytest.approx(70.0) and ref["zs:avg"] == pytest.approx(100 * sum(a for a, _ in TASKS.values()) / 6)
    crvq = frame.iloc[2]
    assert crvq["zs:avg"] == pytest.approx(ref["zs:avg"] - 5.0)
    assert math.isnan(frame.iloc[1]["zs:avg"]) and math.isnan(frame.iloc[1]["zs:piqa"])  # no zero-shot: empty cells
    assert math.isnan(frame.iloc[4]["ppl:wikitext2"]) and frame.iloc[4]["ppl:c4"] == 60.0


def test_acc_norm_falls_back_to_acc_where_a_task_has_none():
    frame = paper_frame(_records(), metric="acc_norm")
    ref = frame.iloc[0]
    assert ref["zs:hellaswag"] == pytest.approx(50.0) and ref["zs:winogrande"] == pytest.approx(60.0)
    with pytest.raises(ValueError, match="acc_norm"):
        paper_frame(_records(), metric="f1")


def test_published_rows_and_deltas(reference):
    frame = paper_frame(_records(), reference)
    rows = list(zip(frame["model"], frame["method"], frame["kind"]))
    i = rows.index(("llama2-7b", "AQLM", "result"))  # the 2-bit AQLM (the first AQLM row)
    assert rows[i + 1] == ("llama2-7b", "AQLM 2x8 pub [paper]", "published")
    assert rows[i + 2] == ("llama2-7b", "Δ vs AQLM 2x8 pub", "delta")
    delta = frame.iloc[i + 2]
    assert delta["ppl:wikitext2"] == pytest.approx(6.9 - 6.5) and delta["ppl:c4"] == pytest.approx(8.8 - 8.5)
    assert delta["bits"] == pytest.approx(2.0 - 2.02)
    # the 1-bit AQLM has num_codebooks 1: not matched; the CRVQ entry has no `match`: any CRVQ row
    j = rows.index(("llama2-7b", "CRVQ", "result"))
    assert frame.iloc[j + 2]["zs:piqa"] == pytest.approx((0.70 - 0.05 - 0.6) * 100)
    assert frame.iloc[j + 1]["zs:avg"] == pytest.approx(100 * (0.5 + 0.6 + 0.3 + 0.5 + 0.2 + 0.6) / 6)
    assert sum(1 for r in rows if r[2] == "published") == 3
    assert rows[-1] == ("Llama-2-13b-hf", "AQLM 13b pub [paper]", "published")  # a model without results


def test_markdown_and_latex(reference):
    frame = paper_frame(_records(), reference)
    md = paper_markdown(frame, title="Demo", reference=reference)
    lines = [line for line in md.splitlines() if line.startswith("|")]
    header = lines[0]
    assert header.split("|")[1:-1] == [" Model ", " Method ", " Bits ", " Stored bits ", " Wiki2 ", " C4 ",
                                        " WinoGrande ", " PIQA ", " HellaSwag ", " ARC-e ", " ARC-c ", " BoolQ ", " Avg "]
    assert all(line.count("|") == header.count("|") for line in lines)
    assert "| llama2-7b | CRVQ | 1.067 | 1.077 | 8.00 | 10.50 | 55.00 |" in md
    assert "*AQLM 2x8 pub [paper]*" in md and "| +0.40 | +0.30 |" in md
    assert "[paper] Some paper, Table 1 — https://example.org/paper" in md
    tex = paper_latex(frame, reference=reference)
    body = tex[tex.index(r"\midrule"):tex.index(r"\bottomrule")]
    rows = [line for line in body.splitlines() if line.endswith(r"\\") and r"\multicolumn" not in line]
    assert rows and all(line.count("&") == 11 for line in rows)  # 12 columns (the model is a row group)
    assert r"\multicolumn{7}{c}{Zero-shot accuracy" in tex and r"\cmidrule(lr){4-5} \cmidrule(lr){6-12}" in tex
    assert r"\quad $\Delta$ vs AQLM 2x8 pub" in tex and r"\textbf{llama2-7b}" in tex


def test_write_and_cli(tmp_path, reference):
    store = ResultStore(tmp_path / "res")
    for r in _records():
        store.put(r)
    paths = write_paper_tables(store, reference=reference)
    assert sorted(p.name for p in paths) == ["paper.md", "paper.tex"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    ref_file = tmp_path / "ref.yaml"
    proc = subprocess.run([sys.executable, "-m", "harness", "report", str(store.root), "--layout", "paper",
                           "--reference", str(ref_file)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "paper.md" in proc.stdout and "paper.tex" in proc.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nsources: {a: {title: t}}\nentries:\n  - {model: m, method: aqlm, label: l, source: b, metrics: {c4: 1}}\n")
    proc = subprocess.run([sys.executable, "-m", "harness", "report", str(store.root), "--layout", "paper",
                           "--reference", str(bad)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "bad.yaml" in proc.stderr and "not one of the `sources` keys" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_seeds_of_one_configuration_are_one_row_with_mean_and_std():
    def seeded(seed: int, ppl: float, shift: float) -> dict:
        record = _record(f"c1s{seed}", "crvq", bits=1.0665, ppl={"wikitext2": ppl}, zero_shot=shift)
        record["cell"] = {"method": "crvq", "params": {}, "seed": seed, "calibration": {"seed": seed}}
        return record

    records = [_record("ref", "none", bits=16.0, ppl={"wikitext2": 5.12}, zero_shot=0.0),
               seeded(2, 9.0, -0.02), seeded(0, 8.0, -0.06), seeded(1, 8.5, -0.04)]
    frame = paper_frame(records)
    assert list(frame["method"]) == ["Unquantized", "CRVQ"]
    crvq = frame.iloc[1]
    assert crvq["n"] == 3 and frame.iloc[0]["n"] == 1
    assert crvq["ppl:wikitext2"] == pytest.approx(8.5) and crvq["std:ppl:wikitext2"] == pytest.approx(0.5)
    assert crvq["zs:piqa"] == pytest.approx(66.0) and crvq["std:zs:piqa"] == pytest.approx(2.0)
    assert crvq["zs:avg"] == pytest.approx(frame.iloc[0]["zs:avg"] - 4.0)
    md = paper_markdown(frame, title="Seeds")
    assert "| 8.50 ± 0.50 |" in md and "| 66.00 ± 2.00 |" in md and " n |" in md.splitlines()[4]
    assert "| 5.12 |" in md  # one seed: no spread
    tex = paper_latex(frame)
    assert r"8.50 $\pm$ 0.50" in tex and "std:" not in tex
    # without repeats the frame has no n or std columns
    assert "n" not in paper_frame(records[:2]).columns


def test_method_names_and_order_come_from_the_config():
    def at(key: str, method: str, label: str | None = None) -> dict:  # every row at the same bits
        return _record(key, method, bits=2.0, ppl={"c4": 9.0}, label=label)

    records = [at("q", "quip"), at("c", "crvq"), at("a", "aqlm"), at("h", "aqlm", "aqlm-harness"), at("b", "awq"),
               at("g", "gptq"), _record("ref", "none", bits=16.0, ppl={"c4": 5.0})]
    # the default: the papers' names and order, the other methods after, alphabetically by their label
    frame = paper_frame(records)
    assert list(frame["method"]) == ["Unquantized", "GPTQ", "AQLM", "aqlm-harness", "CRVQ", "awq", "quip"]
    frame = paper_frame(records, methods={"crvq": "CRVQ (ours)", "quip": "QuIP#", "aqlm": "AQLM"})
    assert list(frame["method"]) == ["none", "CRVQ (ours)", "QuIP#", "AQLM", "aqlm-harness", "awq", "gptq"]


def test_cli_takes_the_paper_methods_from_the_suite_copy(tmp_path):
    from harness.report.paper import PAPER_METHODS, paper_methods
    from harness.suite import ReportSpec

    assert paper_methods([ReportSpec()]) == PAPER_METHODS
    assert list(paper_methods([ReportSpec(), ReportSpec.model_validate({"paper": {"methods": {"crvq": "C"}}})])) == ["crvq"]
    store = ResultStore(tmp_path / "res")
    for key, method in (("a", "aqlm"), ("c", "crvq")):
        store.put(_record(key, method, bits=2.0, ppl={"c4": 9.0}))
    (store.root / "suites").mkdir(exist_ok=True)
    (store.root / "suites" / "demo.yaml").write_text("report:\n  paper:\n    methods: {crvq: CRVQ (ours), aqlm: AQLM}\n")
    proc = subprocess.run([sys.executable, "-m", "harness", "report", str(store.root), "--layout", "paper", "--no-html"],
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    md = (store.root / "tables" / "paper.md").read_text()
    assert md.index("| CRVQ (ours) |") < md.index("| AQLM |")
