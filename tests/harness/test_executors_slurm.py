"""`executor: slurm` through submitit's local executor (`local: true`): same records as `local`,
a killed job is retried, a machine without `sbatch` is a clear error."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.fixtures.harness_cli import cli_exit, harness_env, read_records, run_harness, write_tiny_suite

pytest.importorskip("submitit")



@pytest.fixture
def env(tmp_path):
    return harness_env(tmp_path)


def _suite(path: Path, model_dir: Path, text_file: Path, methods: str, executor: str) -> Path:
    return write_tiny_suite(path, "slurm-test", model_dir, text_file, methods, f"executor: {executor}")


_run, _records = run_harness, read_records


@pytest.mark.slow  # over a minute on an idle 2-core machine: `python -m pytest -m slow`
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs PR_SET_PDEATHSIG")
def test_slurm_path_through_submitit_local_matches_local_and_retries_killed_jobs(tmp_path, tiny_llama_dir, eval_text_file, env):
    rtn = "  - name: rtn\n    budgets: [4, 2]\n    params: {group_size: 16}\n"
    count = tmp_path / "die.txt"
    die = f"  - name: die\n    params: {{count_file: {count}, die_times: 1, target: parent}}\n"  # kills its job once
    local = _run(_suite(tmp_path / "local.yaml", tiny_llama_dir, eval_text_file, rtn, "local"), tmp_path / "local", env)
    assert local.returncode == 0, local.stderr[-3000:]
    slurm_folder = tmp_path / "jobs"
    executor = f"{{type: slurm, local: true, max_parallel: 1, max_retries: 1, time_min: 10, slurm_folder: {slurm_folder}}}"
    slurm_suite = _suite(tmp_path / "slurm.yaml", tiny_llama_dir, eval_text_file, rtn + die, executor)
    proc = _run(slurm_suite, tmp_path / "slurm", env)
    assert proc.returncode == 0, proc.stderr[-3000:]

    want, got = _records(tmp_path / "local"), _records(tmp_path / "slurm")
    assert set(want) < set(got) and len(got) == 3
    for key in want:  # the same cell keys and numbers as the local executor
        assert got[key]["status"] == "ok" and got[key]["executor"]["type"] == "slurm"
        assert got[key]["metrics"] == want[key]["metrics"]
    (retried,) = [r for r in got.values() if r["method"] == "die"]
    assert retried["status"] == "ok" and retried["executor"]["attempt"] == 2  # the killed job was resubmitted
    assert len(count.read_text().splitlines()) == 2
    assert "Slurm job" in " ".join(proc.stderr.split()) and "retrying" in proc.stderr
    assert list(slurm_folder.glob("*_submitted.pkl"))  # the jobs went through submitit's folder

    again = _run(slurm_suite, tmp_path / "slurm", env)  # finished cells are never resubmitted
    assert again.returncode == 0 and again.stderr.count("already finished") == 3
    assert len(list(slurm_folder.glob("*_submitted.pkl"))) == 4  # 2 rtn + 2 attempts of die, none new


def test_slurm_without_sbatch_or_submitit_is_a_clear_error(tmp_path, monkeypatch, capsys):
    suite = tmp_path / "s.yaml"
    suite.write_text(
        "name: t\nmodels: [smollm2-135m]\nmethods: [{name: rtn, budgets: [4]}]\n"
        "executor: {type: slurm, partition: gpu, time_min: 60}\n"
    )
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    code, err = cli_exit(monkeypatch, capsys, "run", str(suite), "-o", str(tmp_path / "results"))
    assert code == 2 and "Traceback" not in err and "sbatch" in err and "local: true" in err
    monkeypatch.setitem(sys.modules, "submitit", None)
    code, err = cli_exit(monkeypatch, capsys, "validate", str(suite))
    assert code == 2 and "executor: slurm" in err and "pip install 'ptq-harness[scale]'" in err
