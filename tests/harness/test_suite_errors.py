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
    "name_traversal": (VALID.replace("name: t", "name: ../../etc/evil"), ["`name`", "'../../etc/evil'", "path separator", "output_dir"]),
    "name_absolute": (VALID.replace("name: t", "name: /tmp/evil"), ["`name`", "'/tmp/evil'", "output_dir"]),
    "name_backslash": (VALID.replace("name: t", "name: 'a\\b'"), ["`name`", "path separator"]),
    "name_dotdot": (VALID.replace("name: t", "name: '..'"), ["`name`", "starts with '.'"]),
    "name_hidden": (VALID.replace("name: t", "name: .hidden"), ["`name`", "starts with '.'"]),
    "name_home": (VALID.replace("name: t", "name: ~evil"), ["`name`", "starts with '.' or '~'"]),
    "unknown_zero_shot_task": (VALID + "evaluations: {zero_shot: {tasks: [embedded_cloze4, embedded_lastwrd]}}\n",
                               ["zero_shot.tasks[1]", "unknown zero-shot task 'embedded_lastwrd'", "Did you mean embedded_lastword"]),
    "duplicate_model": ("name: t\nmodels: [smollm2-135m, {id: smollm2-135m, name: again}]\nmethods: [{name: none}]\n",
                        ["models[1]", "already listed as `models[0]`", "Remove one"]),
    "duplicate_budget": ("name: t\nmodels: [smollm2-135m]\nmethods: [{name: rtn, budgets: [4, 3, 4]}]\n",
                         ["methods[0].budgets", "listed twice in [4, 3, 4]", "each budget once"]),
    "duplicate_method_line": ("name: t\nmodels: [smollm2-135m]\nmethods: [{name: rtn, budgets: [4]}, {name: rtn, budgets: [3, 4]}]\n",
                              ["methods[1]", "`methods[0]` already defines", "budget 4", "distinct `label`"]),
    "unknown_evaluation": (VALID + "evaluations: {perplexty: {}}\n",
                           ["`evaluations.perplexty`", "unknown evaluation 'perplexty'", "'perplexity'", "harness.evaluations"]),
    "automatic_evaluation_named": (VALID + "evaluations: {agreement: {}}\n", ["`evaluations.agreement`", "every quantized cell"]),
    "evaluation_block_not_mapping": (VALID + "evaluations: {mean_logit: 3}\n", ["`evaluations`", "mean_logit", "mapping"]),
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


@pytest.mark.parametrize(("text", "expected"), [
    (VALID, "valid — 1 cells"),
    # two lines with the same method and params are fine when their labels tell them apart
    ("name: t\nmodels: [smollm2-135m]\nmethods: [{name: rtn, budgets: [4]}, {name: rtn, label: rtn-again, budgets: [4]}]\n",
     "valid — 2 cells"),
])
def test_valid_suite_validates(text, expected, tmp_path, monkeypatch, capsys):
    path = tmp_path / "ok.yaml"
    path.write_text(text)
    monkeypatch.setattr(sys, "argv", ["harness", "validate", str(path)])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code in (0, None)
    assert expected in capsys.readouterr().out


def test_console_script_exit_code(tmp_path):
    """The real process: exit status 2, message on stderr, no traceback."""
    path = tmp_path / "bad.yaml"
    path.write_text(CASES["unknown_method"][0])
    proc = subprocess.run([sys.executable, "-m", "harness", "validate", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "unknown method 'rtm'" in proc.stderr and "Traceback" not in proc.stderr


def test_run_refuses_an_escaping_name(tmp_path):
    """`harness run` (dry run too) refuses a name that would write outside results/, before any work."""
    path = tmp_path / "evil.yaml"
    path.write_text(VALID.replace("name: t", "name: ../../etc/evil"))
    proc = subprocess.run([sys.executable, "-m", "harness", "run", str(path), "--dry-run"], capture_output=True,
                          text=True, cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "`name`" in proc.stderr and "Traceback" not in proc.stderr
    assert "results/../../etc/evil" not in proc.stdout
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("argv", [["compare", "results/none"], ["run"], ["validate", "--no-such-option", "x.yaml"]])
def test_usage_errors_exit_2_without_traceback(argv):
    """A missing argument or an unknown option: typer's usage message, exit 2, no traceback."""
    proc = subprocess.run([sys.executable, "-m", "harness", *argv], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    assert "Usage:" in proc.stderr and ("Missing" in proc.stderr or "No such option" in proc.stderr), proc.stderr
