"""`harness compare` and `harness report --compare` on a synthetic results store."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from harness import cli
from harness.store import ResultStore
from tests.fixtures.compare_records import SHIFT, base_nll, layers, record

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture()
def results(tmp_path: Path) -> Path:
    store = ResultStore(tmp_path / "quick")
    for budget in (1, 2):
        base = base_nll(level=3.0 + budget, seed=budget)
        shifted = base - SHIFT + 0.01 * np.random.default_rng(budget).standard_normal(base.shape)  # crvq better
        store.put(record(f"a{budget}", "aqlm", budget, base, layers=layers(1.0, metric="rel_error")))
        store.put(record(f"c{budget}", "crvq", budget, shifted, layers=layers(0.5, metric="rel_error")))
    store.put(record("ref", "none", None, base_nll(level=2.5)))
    return store.root


def _harness(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["harness", *args])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    captured = capsys.readouterr()
    return exc.value.code or 0, captured.out, captured.err


def test_compare_prints_table_and_verdicts(results, monkeypatch, capsys) -> None:
    code, out, err = _harness(monkeypatch, capsys, "compare", str(results), "--base", "aqlm", "--against", "crvq")
    assert code == 0, err
    for column in ("model", "budget", "aqlm ppl", "crvq ppl", "Δppl", "95% CI", "Δ %", "significant", "seeds", "windows"):
        assert column in out
    verdicts = [line for line in out.splitlines() if "crvq lowers embedded perplexity vs aqlm" in line]
    assert len(verdicts) == 2 and all("; significant (p < 0.001)" in v for v in verdicts)
    assert verdicts[0].startswith("tiny/b1:") and verdicts[1].startswith("tiny/b2:")
    assert "(−4.9%)" in verdicts[0]  # e^-0.05 − 1 = −4.88%


def test_compare_budget_level_and_layers(results, monkeypatch, capsys) -> None:
    code, out, err = _harness(monkeypatch, capsys, "compare", str(results), "--base", "aqlm", "--against", "crvq",
                              "--budget", "2", "--level", "0.9", "--resamples", "500", "--layers")
    assert code == 0, err
    assert "tiny/b2:" in out and "tiny/b1:" not in out and "90% CI" in out
    for fmt in ("png", "svg"):
        path = results / "plots" / f"compare_aqlm_vs_crvq_tiny_b2_layers.{fmt}"
        assert path.is_file() and f"wrote {path}" in out.replace("\n", "")
    assert (results / "plots" / "compare_aqlm_vs_crvq_tiny_b2_layers.png").read_bytes().startswith(PNG_MAGIC)
    assert "per-layer rel_error" in out


def test_compare_against_reference(results, monkeypatch, capsys) -> None:
    code, out, err = _harness(monkeypatch, capsys, "compare", str(results), "--base", "none", "--against", "aqlm")
    assert code == 0, err
    assert "aqlm raises embedded perplexity vs none" in out and out.count("aqlm raises") == 2


@pytest.mark.parametrize("args, fragments", [
    (["--base", "aqlm", "--against", "quip"], ["no finished record of method 'quip'", "aqlm, crvq, none"]),
    (["--base", "aqlm", "--against", "crvq", "--budget", "3"], ["budget 3", "budgets: 1, 2"]),
    (["--base", "aqlm", "--against", "crvq", "--model", "llama"], ["model 'llama'", "its models: tiny"]),
    (["--base", "aqlm", "--against", "crvq", "--level", "95"], ["--level 95.0", "between 0 and 1"]),
    (["--base", "none", "--against", "aqlm", "--layers"], ["no per-layer error"]),
])
def test_compare_errors_exit_2(results, monkeypatch, capsys, args, fragments) -> None:
    code, _, err = _harness(monkeypatch, capsys, "compare", str(results), *args)
    assert code == 2 and "Traceback" not in err
    flat = " ".join(err.split())
    for fragment in fragments:
        assert fragment in flat, flat
    assert len(err.strip().splitlines()) == 1, "the error must be one paragraph"


def test_compare_missing_dir(tmp_path, monkeypatch, capsys) -> None:
    code, _, err = _harness(monkeypatch, capsys, "compare", str(tmp_path / "nope"), "--base", "a", "--against", "b")
    assert code == 2 and "not a results directory" in err


def test_report_compare_option(results, monkeypatch, capsys) -> None:
    code, out, err = _harness(monkeypatch, capsys, "report", str(results), "--no-html", "--compare", "aqlm:crvq",
                              "--compare", "none:crvq")
    assert code == 0, err
    md = (results / "tables" / "compare.md").read_text()
    assert "## aqlm vs crvq" in md and "## none vs crvq" in md and md.count("significant (p") == 4
    assert "compare.csv" in out
    code, _, err = _harness(monkeypatch, capsys, "report", str(results), "--compare", "aqlm")
    assert code == 2 and "BASE:AGAINST" in err
