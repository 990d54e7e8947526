"""Malformed suites give a clear one-paragraph error and exit code 2, never a traceback."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from harness import cli

VALID = textwrap.dedent(
    """\
    name: t
    models: [smollm2-135m]
    methods:
      - name: rtn
        budgets: [4]
    """
)

# (suite text, fragments the message must contain)
CASES = {
    "missing_models": ("name: t\nmethods: [{name: rtn, budgets: [4]}]\n", ["`models`", "required field is missing"]),
    "missing_name": ("models: [smollm2-135m]\nmethods: [{name: rtn}]\n", ["`name`", "missing"]),
    "wrong_type_seed": (VALID + "seed: abc\n", ["`seed`", "integer"]),
    "unknown_top_key": (VALID + "evalutions: {}\n", ["`evalutions`", "unknown key"]),
    "unknown_method": ("name: t\nmodels: [smollm2-135m]\nmethods: [{name: rtm}]\n", ["methods[0]", "unknown method 'rtm'", "'rtn'"]),
    "unknown_model_path": ("name: t\nmodels: [./no/such/model.gguf]\nmethods: [{name: none}]\n", ["models[0]", "./no/such/model.gguf"]),
    "model_not_hub_id": ("name: t\nmodels: [not a model]\nmethods: [{name: none}]\n", ["models[0]", "hub id"]),
    "bad_budget": ("name: t\nmodels: [smollm2-135m]\nmethods: [{name: rtn, budgets: [1]}]\n", ["methods[0]", "budgets[0]", "Supported budgets"]),
    "empty_budgets": ("name: t\nmodels: [smollm2-135m]\nmethods: [{name: rtn, budgets: []}]\n", ["budgets", "empty"]),
    "unknown_param": ("name: t\nmodels: [smollm2-135m]\nmethods: [{name: rtn, params: {bitz: 4}}]\n", ["methods[0]", "params.bitz"]),
    "param_wrong_type": ("name: t\nmodels: [smollm2-135m]\nmethods: [{name: rtn, params: {bits: four}}]\n", ["params.bits", "integer"]),
    "param_out_of_range": ("name: t\nmodels: [smollm2-135m]\nmethods: [{name: rtn, params: {bits: 17}}]\n", ["params.bits"]),
    "unknown_dataset": (VALID + "evaluations: {perplexity: {datasets: [wikitext3]}}\n", ["datasets[0]", "unknown dataset 'wikitext3'"]),
    "unknown_calibration_source": (VALID + "calibration: {source: nowhere.txt}\n", ["calibration.source", "nowhere.txt"]),
    "calibration_count_zero": (VALID + "calibration: {num_sequences: 0}\n", ["calibration.num_sequences", "greater than 0"]),
    "redpajama_eval": (VALID + "evaluations: {perplexity: {datasets: [redpajama]}}\n", ["redpajama", "calibration source only"]),
    "bad_executor": (VALID + "executor: kubernetes\n", ["`executor`"]),
    "sweep_unknown_method": (VALID + "report: {sweeps: [{method: crvq, x: critical_ratio}]}\n",
                             ["report.sweeps[0].method", "'crvq' is not a method of this suite", "rtn"]),
    "sweep_unknown_param": (VALID + "report: {sweeps: [{method: rtn, x: bitz}]}\n",
                            ["report.sweeps[0].x", "'bitz' is not a parameter of rtn", "group_size"]),
    "sweep_lines_is_x": (VALID + "report: {sweeps: [{method: rtn, x: bits, lines: bits}]}\n",
                         ["report.sweeps[0].lines", "also the x parameter"]),
    "sweep_missing_x": (VALID + "report: {sweeps: [{method: rtn}]}\n", ["report.sweeps[0].x", "missing"]),
    "not_a_mapping": ("- just\n- a list\n", ["YAML mapping"]),
    "bad_yaml": ("name: t\nmodels: [smollm2-135m\nmethods: x\n", ["not valid YAML"]),
}


def _run_validate(monkeypatch, capsys, path) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["harness", "validate", str(path)])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    err = capsys.readouterr().err
    return exc.value.code, err


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_suite_is_a_clear_error(case, tmp_path, monkeypatch, capsys):
    text, fragments = CASES[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(text)
    code, err = _run_validate(monkeypatch, capsys, path)
    assert code == 2
    assert "Traceback" not in err
    assert str(path) in err, err
    flat = " ".join(err.split())
    for fragment in fragments:
        assert fragment in flat, f"{fragment!r} not in {flat!r}"
    assert len(err.strip().splitlines()) == 1, "the error must be one paragraph"


def test_missing_suite_file(tmp_path, monkeypatch, capsys):
    code, err = _run_validate(monkeypatch, capsys, tmp_path / "nope.yaml")
    assert code == 2 and "suite file not found" in err and "Traceback" not in err


def test_valid_suite_validates(tmp_path, monkeypatch, capsys):
    path = tmp_path / "ok.yaml"
    path.write_text(VALID)
    monkeypatch.setattr(sys, "argv", ["harness", "validate", str(path)])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code in (0, None)
    assert "valid" in capsys.readouterr().out


def test_console_script_exit_code(tmp_path):
    """The real process: exit status 2, message on stderr, no traceback."""
    path = tmp_path / "bad.yaml"
    path.write_text(CASES["unknown_method"][0])
    proc = subprocess.run([sys.executable, "-m", "harness", "validate", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "unknown method 'rtm'" in proc.stderr and "Traceback" not in proc.stderr
