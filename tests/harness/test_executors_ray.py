"""`executor: ray` with a local Ray instance: the quickstart's RTN cells give the same records as
`local`; a Ray worker that dies is retried; a missing `ray` package is a clear error."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.fixtures.harness_cli import REPO, cli_exit, harness_env, read_records, run_harness

pytest.importorskip("ray")


def _ray_daemons() -> set[int]:
    """PIDs of running Ray daemons (raylet, GCS server) on this machine."""
    pids = set()
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if b"raylet" in cmd.split(b"\0")[0] or b"gcs_server" in cmd.split(b"\0")[0]:
            pids.add(int(proc.name))
    return pids


@pytest.fixture
def env(tmp_path):
    return harness_env(tmp_path, RAY_USAGE_STATS_ENABLED="0")


_run, _records = run_harness, read_records


def _wait_until_gone(pids_before: set[int], timeout_s: float = 20) -> set[int]:
    deadline = time.time() + timeout_s
    while (_ray_daemons() - pids_before) and time.time() < deadline:
        time.sleep(0.2)
    return _ray_daemons() - pids_before


@pytest.mark.slow  # six cells of the real 135M model: ~2 min on an idle 2-core machine
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_quickstart_rtn_cells_under_ray_match_local(tmp_path, env):
    # The quickstart suite, its RTN cells, evaluated on one window of 128 tokens instead of all
    # windows of 512 and without zero-shot (the model, methods, budgets and params are the quickstart's).
    suite = yaml.safe_load((REPO / "suites" / "quickstart.yaml").read_text())
    suite["methods"] = [m for m in suite["methods"] if m["name"] == "rtn"]
    suite["evaluations"]["perplexity"].update(seqlen=128, max_windows=1)
    suite["evaluations"].pop("zero_shot", None)  # its records carry wall-clock seconds per task
    suite.update(save_models=False, report={"tables": ["markdown"], "plots": []})
    local_suite, ray_suite = tmp_path / "quickstart_rtn_local.yaml", tmp_path / "quickstart_rtn_ray.yaml"
    local_suite.write_text(yaml.safe_dump(suite))
    # 2 CPUs per cell: the task gets as many torch threads as the local run, so the numbers are bitwise equal
    ray_suite.write_text(yaml.safe_dump({**suite, "executor": {"type": "ray", "num_cpus": 2}}))

    local = _run(local_suite, tmp_path / "local", env)
    assert local.returncode == 0, local.stderr[-3000:]
    daemons_before = _ray_daemons()
    ray = _run(ray_suite, tmp_path / "ray", env)
    assert ray.returncode == 0, ray.stderr[-3000:]
    assert "submitted to ray" in ray.stderr
    assert _wait_until_gone(daemons_before) == set(), "the local Ray instance was not shut down"

    want, got = _records(tmp_path / "local"), _records(tmp_path / "ray")
    assert sorted(got) == sorted(want) and len(got) == 3  # b4, b3, b2: the same cell keys
    for key, record in got.items():
        assert record["status"] == "ok" and record["executor"]["type"] == "ray"
        assert want[key]["executor"]["type"] == "local"
        assert record["metrics"] == want[key]["metrics"]  # bits, size, perplexity, per-window losses
        assert record["label"] == want[key]["label"] and record["params"] == want[key]["params"]
        assert record["environment"]["packages"]["ray"]  # the environment names the ray version

    again = _run(ray_suite, tmp_path / "ray", env)  # everything finished: nothing recomputed, no cluster
    assert again.returncode == 0 and again.stderr.count("already finished") == 3
    assert _records(tmp_path / "ray") == got


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs PR_SET_PDEATHSIG")
def test_ray_worker_death_is_retried_then_recorded(tmp_path, tiny_llama_dir, eval_text_file, env):
    once, always = tmp_path / "once.txt", tmp_path / "always.txt"
    suite = tmp_path / "dying.yaml"
    suite.write_text(
        f"""
name: dying
models: [{{id: {tiny_llama_dir}, name: tiny}}]
methods:
  - name: die        # kills the Ray worker running the task, on the first attempt only
    label: die-once
    params: {{count_file: {once}, die_times: 1, target: parent}}
  - name: die        # kills its own worker process at every attempt
    label: die-always
    params: {{count_file: {always}}}
evaluations:
  perplexity: {{datasets: [{eval_text_file}], seqlen: 64, max_windows: 2}}
report: {{tables: [markdown], plots: []}}
executor: {{type: ray, max_retries: 1, num_cpus: 1}}
"""
    )
    daemons_before = _ray_daemons()
    proc = _run(suite, tmp_path / "results", env)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert _wait_until_gone(daemons_before) == set()
    records = {r["label"]: r for r in _records(tmp_path / "results").values()}
    assert len(once.read_text().splitlines()) == 2 and len(always.read_text().splitlines()) == 2
    ok = records["tiny/die-once"]
    assert ok["status"] == "ok" and ok["executor"]["attempt"] == 2  # retried after the Ray worker crashed
    assert "Ray task lost" in " ".join(proc.stderr.split())
    failed = records["tiny/die-always"]
    assert failed["status"] == "failed" and failed["error"]["kind"] == "worker_died" and failed["error"]["attempts"] == 2
    assert "SIGKILL" in failed["error"]["message"]


def test_missing_ray_package_is_a_clear_error(tmp_path, monkeypatch, capsys):
    suite = tmp_path / "s.yaml"
    suite.write_text("name: t\nmodels: [smollm2-135m]\nmethods: [{name: rtn, budgets: [4]}]\nexecutor: ray\n")
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    for command in ("validate", "run"):
        output = ["-o", str(tmp_path / "r")] if command == "run" else []
        code, err = cli_exit(monkeypatch, capsys, command, str(suite), *output)
        assert code == 2 and "Traceback" not in err
        assert "executor: ray" in err and "pip install 'ptq-harness[scale]'" in err


@pytest.mark.parametrize(
    "executor, fragments",
    [
        ("{type: ray, partition: gpu}", ["executor.partition", "type: slurm"]),
        ("{type: local, num_gpus: 1}", ["executor.num_gpus", "type: ray", "type: local"]),
        ("{type: ray, num_gpus: -1}", ["executor.num_gpus", "greater than or equal to 0"]),
        ("{type: slurm, num_gpus: 0.5}", ["executor.num_gpus", "whole number"]),
        ("kubernetes", ["unknown executor 'kubernetes'", "local, ray or slurm"]),
    ],
)
def test_bad_executor_config_is_a_clear_error(tmp_path, monkeypatch, capsys, executor, fragments):
    suite = tmp_path / "s.yaml"
    suite.write_text(f"name: t\nmodels: [smollm2-135m]\nmethods: [{{name: rtn, budgets: [4]}}]\nexecutor: {executor}\n")
    code, err = cli_exit(monkeypatch, capsys, "validate", str(suite))
    assert code == 2 and "Traceback" not in err and str(suite) in err
    for fragment in fragments:
        assert fragment in err, err


def test_unreachable_cluster_address_fails_fast(tmp_path, monkeypatch, capsys):
    suite = tmp_path / "s.yaml"
    suite.write_text(
        "name: t\nmodels: [smollm2-135m]\nmethods: [{name: rtn, budgets: [4]}]\n"
        "executor: {type: ray, address: '127.0.0.1:1'}\n"
    )
    start = time.time()
    code, err = cli_exit(monkeypatch, capsys, "run", str(suite), "-o", str(tmp_path / "results"))
    assert code == 2 and "Traceback" not in err and "executor.address" in err and "127.0.0.1:1" in err
    assert time.time() - start < 30
