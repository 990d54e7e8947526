"""Crash safety: the runner SIGKILLed at random points 20 times and resumed each time gives the
same records as an uninterrupted run; failed cells (NaN, out of memory, dying or slow workers)
are recorded with their kind and a traceback file."""
from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.executors.attempt import run_attempt
from harness.store import ResultStore
from harness.suite import load_suite, resolve_cells
from tests.fixtures import toy_plugin
from tests.fixtures.harness_cli import harness_env, write_tiny_suite

N_KILLS = 20


def _suite(tmp_path: Path, model_dir: Path, text_file: Path, methods: str, extra: str = "") -> Path:
    return write_tiny_suite(tmp_path / "faults.yaml", "faults", model_dir, text_file, methods, extra)


@pytest.fixture
def env(tmp_path):
    return harness_env(tmp_path)


def _start(suite: Path, results: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "harness", "run", str(suite), "-o", str(results)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )


def _workers_of(results: Path) -> list[int]:
    """PIDs of live worker processes writing into ``results``."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"harness.worker" in cmd and str(results).encode() in cmd:
            pids.append(int(proc.name))
    return pids


def _record_files(results: Path) -> list[Path]:
    return sorted((results / "records").glob("*.json")) if (results / "records").is_dir() else []


@pytest.mark.slow  # over a minute on an idle 2-core machine: `python -m pytest -m slow`
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc and PR_SET_PDEATHSIG")
def test_sigkill_runner_20_times_then_resume_equals_uninterrupted(tmp_path, tiny_llama_dir, eval_text_file, env):
    suite = _suite(tmp_path, tiny_llama_dir, eval_text_file, "  - name: rtn\n    budgets: [4, 3, 2]\n    params: {group_size: 16}")
    keys = sorted(c.key for c in resolve_cells(load_suite(suite), suite))
    reference, faulty = tmp_path / "reference", tmp_path / "faulty"
    ref = subprocess.run([sys.executable, "-m", "harness", "run", str(suite), "-o", str(reference)], env=env, capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr[-3000:]

    rng = random.Random(0)
    # A third of the kills come at a random moment of a run (runner start-up, a worker importing,
    # loading, quantizing, evaluating, writing); a third while a worker runs a cell (whatever the
    # machine's load does to start-up times); a third just after a cell's record appeared (the
    # driver reading it, the next worker starting, the report being written).
    third = N_KILLS // 3
    plan = ["anytime"] * third + ["mid_cell"] * third + ["after_record"] * (N_KILLS - 2 * third)
    rng.shuffle(plan)
    finished_before = mid_cell = 0
    for i, kind in enumerate(plan):
        proc = _start(suite, faulty, env)
        if kind == "anytime" or finished_before == len(keys):
            time.sleep(rng.uniform(0.0, 6.0))
        elif kind == "mid_cell":
            deadline = time.time() + 120
            while not _workers_of(faulty) and proc.poll() is None and time.time() < deadline:
                time.sleep(0.05)
            time.sleep(rng.uniform(0.0, 1.5))
        else:
            deadline = time.time() + 120
            while len(_record_files(faulty)) == finished_before and proc.poll() is None and time.time() < deadline:
                time.sleep(0.05)
            time.sleep(rng.uniform(0.0, 1.0))
        mid_cell += bool(_workers_of(faulty))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.time() + 10  # the worker gets SIGKILL from the kernel when its parent dies
        while _workers_of(faulty) and time.time() < deadline:
            time.sleep(0.05)
        assert _workers_of(faulty) == [], f"kill {i}: worker outlived the runner"
        for path in _record_files(faulty):  # whatever is visible is a complete, finished record
            record = json.loads(path.read_text())
            assert record["status"] == "ok" and record["metrics"]["perplexity"], f"kill {i}: {path.name}"
        finished_before = len(_record_files(faulty))
    assert finished_before > 0 and mid_cell >= 2, (finished_before, mid_cell)  # kills hit cells and let some finish

    final = _start(suite, faulty, env)
    _, err = final.communicate(timeout=300)
    assert final.returncode == 0, err[-3000:]
    files = list((faulty / "records").iterdir())
    assert sorted(p.stem for p in files) == keys and all(p.suffix == ".json" for p in files)  # one record per cell
    for key in keys:
        got = json.loads((faulty / "records" / f"{key}.json").read_text())
        want = json.loads((reference / "records" / f"{key}.json").read_text())
        assert got["status"] == want["status"] == "ok"
        assert got["metrics"] == want["metrics"]  # bits, size, perplexity and every window's loss
        env = got["environment"]  # what the numbers were measured on
        assert env["packages"]["torch"] and "git_commit" in env and env["devices"] and env["seeds"] == {"cell": 0, "calibration": None}
        assert all(len(ppl["token_hash"]) == 16 for ppl in got["metrics"]["perplexity"].values())
        assert got["layers"] == [dict(layer, seconds=got_layer["seconds"]) for layer, got_layer in zip(want["layers"], got["layers"])]
    assert _workers_of(faulty) == []


@pytest.fixture
def toy_methods(monkeypatch):
    """The toy plugin's failing methods, registered in this process for the test."""
    from harness import registry

    registry.get_method("none")  # discover the built-ins first
    for cls in (toy_plugin.NanQuantizer, toy_plugin.OomQuantizer):
        monkeypatch.setitem(registry.METHODS._items, cls.name, cls)


def test_nan_oom_and_nonfinite_loss_are_recorded_with_kind_and_traceback_file(
    tmp_path, tiny_llama_dir, eval_text_file, toy_methods, monkeypatch
):
    from harness import runner
    from harness.metrics.perplexity import PerplexityResult
    from harness.report import write_report

    suite = _suite(tmp_path, tiny_llama_dir, eval_text_file, "  - name: nan\n  - name: oom\n  - name: none")
    cells = {c.method: c for c in resolve_cells(load_suite(suite), suite)}
    store = ResultStore(tmp_path / "results")
    runner.run_cell(cells["nan"], store, progress=False)
    runner.run_cell(cells["oom"], store, progress=False)
    diverged = PerplexityResult(ppl=float("nan"), nll=float("nan"), seqlen=64, windows=1, tokens=63)
    monkeypatch.setattr("harness.metrics.perplexity.perplexity", lambda *args, **kwargs: diverged)
    runner.run_cell(cells["none"], store, progress=False)  # a model whose loss is NaN

    expected = {
        "tiny/nan": ("nonfinite", "non-finite weights"),
        "tiny/oom": ("oom", "out of memory"),
        "tiny/none": ("nonfinite", "mean loss is nan"),
    }
    records = {r.label: r.dump() for r in store.records()}
    assert sorted(records) == sorted(expected)
    for label, (kind, phrase) in expected.items():
        record, error = records[label], records[label]["error"]
        assert record["status"] == "failed" and error["kind"] == kind and phrase in error["message"], error
        traceback_text = (store.root / error["traceback_file"]).read_text()
        assert record["key"] in traceback_text and "Traceback" in traceback_text
        assert record["environment"]["packages"]["torch"] and "git_commit" in record["environment"]
    write_report(store, tables=["markdown"], plots=[])
    failures = (store.tables_dir / "failures.md").read_text()
    assert all(label in failures for label in expected)  # the report lists every failure


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs PR_SET_PDEATHSIG")
def test_dying_worker_is_retried_then_recorded(tmp_path, tiny_llama_dir, eval_text_file, env):
    count = tmp_path / "die_count.txt"
    suite = _suite(
        tmp_path, tiny_llama_dir, eval_text_file, f"  - name: die\n    params: {{count_file: {count}}}",
        extra="executor: {type: local, max_retries: 2}",
    )
    results = tmp_path / "results"
    proc = subprocess.run([sys.executable, "-m", "harness", "run", str(suite), "-o", str(results)], env=env, capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr[-3000:]
    (stored,) = ResultStore(results).records()
    record = stored.dump()
    assert len(count.read_text().splitlines()) == 3  # first attempt + max_retries
    error = record["error"]
    assert record["status"] == "failed" and error["kind"] == "worker_died" and error["attempts"] == 3
    assert "SIGKILL" in error["message"] and "3 attempts" in error["message"]
    assert (results / error["traceback_file"]).is_file()
    assert "retrying (1 of 2 retries)" in " ".join(proc.stderr.split())


def test_worker_past_timeout_is_killed_and_recorded(tmp_path, tiny_llama_dir, eval_text_file):
    suite = _suite(tmp_path, tiny_llama_dir, eval_text_file, "  - name: rtn\n    params: {bits: 4}")
    (cell,) = resolve_cells(load_suite(suite), suite)
    result = run_attempt(cell.model_dump(mode="json"), str(tmp_path / "results"), timeout_s=0.5)
    record = ResultStore(tmp_path / "results").get(cell.key).dump()
    assert result.recorded and record["status"] == "failed" and record["error"]["kind"] == "timeout"
    assert "0.5 s" in record["error"]["message"] and (tmp_path / "results" / record["error"]["traceback_file"]).is_file()
    assert _workers_of(tmp_path / "results") == []
