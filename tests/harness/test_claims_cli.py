"""`harness verify`, the claims tables in the report, and claims-file errors (exit 2, one
paragraph naming the file, the field and the fix, never a traceback)."""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.report import write_report
from harness.store import ResultStore
from tests.fixtures.compare_records import base_nll, record, task
from tests.harness.test_compare_cli import _harness

CLAIMS = textwrap.dedent(
    """\
    name: demo-claims
    sources:
      paper: {title: "A paper", version: "v2", url: "https://example.org/paper"}
    claims:
      - id: crvq-beats-aqlm
        source: paper
        table: Table 1
        statement: "CRVQ lowers perplexity by 10% relative to AQLM at 1 bit."
        check: {base: aqlm, against: crvq, model: meta-llama/Llama-2-7b-hf, budget: 1, metric: ppl:wikitext2,
                change: {percent: -10}, tolerance: 1}
      - id: crvq-matched
        source: paper
        statement: "At matched bits CRVQ is better than AQLM."
        check: {base: aqlm, against: crvq, model: llama2-7b, budget: 1, metric: ppl:wikitext2, at: matched_bits,
                change: {percent: [-.inf, 0]}}
      - id: aqlm-2x8
        source: paper
        statement: "AQLM 2x8: perplexity 6.69."
        check: {method: {method: aqlm, params: {num_codebooks: 2}}, model: llama2-7b, metric: ppl:wikitext2, value: 6.69}
    """
)


@pytest.fixture()
def results(tmp_path: Path) -> Path:
    store = ResultStore(tmp_path / "quick")
    a1, a2 = base_nll(level=5.0, seed=1), base_nll(level=3.3, seed=2)
    c1 = a1 - 0.1 + 0.01 * np.random.default_rng(0).standard_normal(a1.shape)
    zs = {"embedded_lastword": task(0.1)}
    store.put({**record("a1", "aqlm", 1, a1, bits=1.1, zero_shot=zs), "params": {"num_codebooks": 1}})
    store.put({**record("a2", "aqlm", 2, a2, bits=2.15, zero_shot=zs), "params": {"num_codebooks": 2}})
    store.put({**record("c1", "crvq", 1, c1, bits=1.35, zero_shot=zs), "params": {"critical_ratio": 0.02}})
    return store.root


@pytest.fixture()
def claims_file(tmp_path: Path) -> Path:
    path = tmp_path / "claims.yaml"
    path.write_text(CLAIMS)
    return path


def test_verify_prints_one_verdict_per_claim_and_model(results, claims_file, monkeypatch, capsys) -> None:
    code, out, err = _harness(monkeypatch, capsys, "verify", str(claims_file), str(results), "--resamples", "500")
    assert code == 0, err
    flat = " ".join(out.split())
    assert "crvq-beats-aqlm (paper, Table 1; claimed model meta-llama/Llama-2-7b-hf): CRVQ lowers perplexity" in flat
    assert "tiny/b1 [quick]: REPRODUCED — measured Δppl:wikitext2 (relative) −9." in flat
    assert "vs claimed −10% ± 1 point;" in flat and "95% CI [" in flat
    assert "embedded text stands in for wikitext2" in flat
    assert flat.count("checked on a stand-in (tiny), not the claimed model") == 3
    assert "tiny/b1 [quick]: CONTRADICTED" in flat and "matched bits: aqlm's frontier interpolated" in flat
    assert "tiny/b2 [quick]: WEAKER — measured ppl:wikitext2" in flat
    assert "3 verdict(s) for 3 claim(s)" in flat
    assert not (results / "tables" / "claims.md").exists()


def test_verify_write_and_report_tables(results, claims_file, monkeypatch, capsys) -> None:
    code, out, err = _harness(monkeypatch, capsys, "verify", str(claims_file), str(results), "--write",
                              "--resamples", "200")
    assert code == 0, err
    md = (results / "tables" / "claims.md").read_text()
    assert md.startswith("# Claims: demo-claims") and "| crvq-beats-aqlm" in md and "reproduced" in md
    assert "checked on a stand-in (tiny), not the claimed model" in md and "## The claims" in md
    csv = pd.read_csv(results / "tables" / "claims.csv")
    assert list(csv["claim"]) == ["crvq-beats-aqlm", "crvq-matched", "aqlm-2x8"]
    assert list(csv["verdict"]) == ["reproduced", "contradicted", "weaker"]
    row = csv.iloc[0]
    assert row["ci_low"] <= row["measured"] <= row["ci_high"] and bool(row["stand_in"]) and row["unit"] == "percent"
    assert csv.iloc[1]["matched_bits"].startswith("matched bits:")
    # report.claims: the same table through write_report, shown first in report.html
    (results / "tables" / "claims.md").unlink()
    paths = write_report(ResultStore(results), plots=(), claims=[claims_file], compare=[("aqlm", "crvq")])
    assert results / "tables" / "claims.md" in paths
    html = (results / "report.html").read_text()
    assert html.index('id="table-claims"') < html.index('id="table-compare"')  # the verdicts first
    assert "Claims: demo-claims" in html and "checked on a stand-in (tiny), not the claimed model" in html


def test_verify_write_keeps_directories_with_the_same_name_apart(results, claims_file, tmp_path, monkeypatch,
                                                                  capsys) -> None:
    """Two results directories both called `quick`: each gets its own verdicts, named by path."""
    other = ResultStore(tmp_path / "other" / "quick")
    for r in ResultStore(results).records():
        if r.method == "aqlm":
            other.put(r)
    code, out, err = _harness(monkeypatch, capsys, "verify", str(claims_file), str(results), str(other.root),
                              "--write", "--resamples", "200")
    assert code == 0, err
    assert f"[{results}]" in out and f"[{other.root}]" in out
    mine = pd.read_csv(results / "tables" / "claims.csv")
    theirs = pd.read_csv(other.root / "tables" / "claims.csv")
    assert set(mine["results"]) == {str(results)} and set(theirs["results"]) == {str(other.root)}
    assert "reproduced" in set(mine["verdict"]) and set(theirs["verdict"]) <= {"not covered", "weaker", "stronger"}


def test_report_claims_option(results, claims_file, monkeypatch, capsys) -> None:
    code, out, err = _harness(monkeypatch, capsys, "report", str(results), "--no-html", "--claims", str(claims_file))
    assert code == 0, err
    assert (results / "tables" / "claims.csv").is_file() and "claims.md" in out


def test_verify_without_matching_cells(results, tmp_path, monkeypatch, capsys) -> None:
    path = tmp_path / "c.yaml"
    text = CLAIMS.replace("model: meta-llama/Llama-2-7b-hf, budget: 1", "model: meta-llama/Llama-2-7b-hf, budget: 3")
    assert text != CLAIMS
    path.write_text(text)
    code, out, err = _harness(monkeypatch, capsys, "verify", str(path), str(results), "--resamples", "200")
    assert code == 0, err
    assert "tiny/b3 [quick]: NOT COVERED — no aqlm cell at budget 3 on tiny" in " ".join(out.split())


_HEAD = "name: x\nsources: {p: {title: P}}\nclaims:\n  - id: a\n    source: p\n    statement: s\n    check: "
_OK = "{base: aqlm, against: crvq, model: llama2-7b, metric: ppl:wikitext2, change: {percent: -10}"


@pytest.mark.parametrize("text, fragments", [
    (_HEAD + _OK.replace("crvq,", "crvk,") + "}\n",
     ["claims[0].check.against.method", "(claim a)", "unknown method 'crvk'", "registered methods", "crvq"]),
    (_HEAD + _OK.replace("ppl:wikitext2", "perplexity") + "}\n",
     ["claims[0].check.metric", "unknown metric 'perplexity'", "ppl:<dataset>", "acc:avg"]),
    (_HEAD + _OK.replace("ppl:wikitext2", "ppl:wikitext3") + "}\n", ["unknown dataset 'wikitext3'", "wikitext2"]),
    (_HEAD + _OK.replace("ppl:wikitext2", "acc:arc-easy") + "}\n", ["unknown zero-shot task 'arc-easy'", "arc_easy"]),
    (_HEAD + _OK.replace("llama2-7b", "llama-2-7b") + "}\n",
     ["claims[0].check.model", "unknown model pattern 'llama-2-7b'", "hub id", "llama2-7b"]),
    (_HEAD + _OK.replace("llama2-7b", "'*Llama-3-7b*'") + "}\n", ["unknown model pattern '*Llama-3-7b*'", "glob"]),
    (_HEAD + _OK + ", tolerence: 1}\n", ["claims[0].check.tolerence", "unknown key"]),
    (_HEAD + _OK.replace("against: crvq", "against: {method: crvq, params: {ratio: 0.02}}") + "}\n",
     ["claims[0].check.against.params", "'ratio' is not a parameter of crvq", "critical_ratio"]),
    (_HEAD + _OK + ", at: matched_bits, vary: [ratio]}\n",
     ["claims[0].check.vary", "'ratio' is not a parameter of crvq", "critical_ratio"]),
    (_HEAD + _OK + ", vary: [critical_ratio]}\n", ["`vary`", "use it with `at: matched_bits`"]),
    (_HEAD + _OK.replace("change: {percent: -10}", "change: {percent: -10, absolute: 1}") + "}\n",
     ["claims[0].check.change", "exactly one of `percent` or `absolute`"]),
    (_HEAD + _OK.replace("change: {percent: -10}", "value: 5") + "}\n", ["a `value` claim needs `method`"]),
    (_HEAD + "{method: aqlm, model: llama2-7b, metric: ppl:wikitext2, value: [7, 6]}\n",
     ["claims[0].check", "[7.0, 6.0] must be [low, high] with low <= high"]),
    (_HEAD + "{method: aqlm, model: llama2-7b, metric: ppl:wikitext2, value: .nan}\n", ["must be [low, high]"]),
    (_HEAD + _OK.replace("against: crvq", "against: aqlm") + "}\n", ["`base` and `against` select the same cells"]),
    (_HEAD + _OK.replace("percent: -10", "percent: -10%") + "}\n",
     ["claims[0].check.change.percent", "'-10%' is not a number", "[low, high]"]),
    (_HEAD + _OK.replace("ppl:wikitext2", "bits") + ", at: matched_bits}\n", ["matched_bits", "metric 'bits'"]),
    (_HEAD.replace("source: p", "source: q") + _OK + "}\n", ["claims[0].source 'q' is not a key of `sources`"]),
    (_HEAD + _OK + "}\n  - id: a\n    source: p\n    statement: s\n    check: " + _OK + "}\n", ["'a' is used twice"]),
    (_HEAD.replace("id: a", "id: A b") + _OK + "}\n", ["'A b' is not a claim id"]),
    ("name: x\nclaims: [\n", ["not valid YAML"]),
    ("- a\n", ["a claims file must be a YAML mapping"]),
])
def test_claims_file_errors_exit_2(results, tmp_path, monkeypatch, capsys, text, fragments) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    code, out, err = _harness(monkeypatch, capsys, "verify", str(path), str(results))
    assert code == 2 and "Traceback" not in err + out
    flat = " ".join(err.split())
    assert str(path) in flat, flat
    for fragment in fragments:
        assert fragment in flat, flat
    assert len(err.strip().splitlines()) == 1 or flat.startswith("error:"), "one paragraph"


def test_verify_input_errors_exit_2(results, claims_file, tmp_path, monkeypatch, capsys) -> None:
    for args, fragment in (
        ([str(tmp_path / "none.yaml"), str(results)], "claims file not found"),
        ([str(claims_file), str(tmp_path)], "not a results directory"),
        ([str(claims_file), str(results), "--resamples", "10"], "at least 100"),
    ):
        code, _, err = _harness(monkeypatch, capsys, "verify", *args)
        assert code == 2 and "Traceback" not in err and fragment in " ".join(err.split())


def test_suite_report_claims_are_validated(tmp_path, claims_file, monkeypatch, capsys) -> None:
    suite = "name: t\nmodels: [smollm2-135m]\nmethods: [{name: rtn, budgets: [4]}]\nreport: {claims: [%s]}\n"
    ok = tmp_path / "ok.yaml"
    ok.write_text(suite % claims_file.name)  # relative to the suite's folder
    code, out, err = _harness(monkeypatch, capsys, "validate", str(ok))
    assert code == 0, err
    missing = tmp_path / "missing.yaml"
    missing.write_text(suite % "no/such/claims.yaml")
    code, _, err = _harness(monkeypatch, capsys, "validate", str(missing))
    flat = " ".join(err.split())
    assert code == 2 and "report.claims[0]" in flat and "claims file 'no/such/claims.yaml' not found" in flat
    bad = tmp_path / "bad_claims.yaml"
    bad.write_text(CLAIMS.replace("against: crvq", "against: crvk", 1))
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(suite % bad.name)
    code, _, err = _harness(monkeypatch, capsys, "validate", str(wrong))
    assert code == 2 and "unknown method 'crvk'" in " ".join(err.split()) and "Traceback" not in err
