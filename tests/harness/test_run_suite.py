"""End to end: `harness run` on a tiny model, a third-party plugin, failures, resume after SIGKILL."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures import toy_plugin


def _suite(tmp_path: Path, model_dir: Path, text_file: Path, methods: str, name: str = "e2e") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"""
name: {name}
output_dir: {tmp_path / 'results'}
models: [{{id: {model_dir}, name: tiny}}]
calibration: {{source: {text_file}, num_sequences: 4, seqlen: 64}}
methods:
{methods}
evaluations:
  perplexity: {{datasets: [{text_file}], seqlen: 64, max_windows: 8}}
"""
    )
    return path


@pytest.fixture
def plugin_env(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    toy_plugin.install(site)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")])
    env["HARNESS_NO_PROGRESS"] = "1"
    return env


def _harness(args, env, **kw):
    return subprocess.run([sys.executable, "-m", "harness", *args], env=env, capture_output=True, text=True, **kw)


def _records(results: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((results / "records").glob("*.json"))]


def test_run_report_and_rerun(tmp_path, tiny_llama_dir, eval_text_file, plugin_env):
    methods = """  - name: none
  - name: rtn
    budgets: [4, 3, 2]
    params: {group_size: 16}
  - name: toy
    budgets: [1]
  - name: gptq
    params: {bits: 4, group_size: 16}
"""
    suite = _suite(tmp_path, tiny_llama_dir, eval_text_file, methods)
    proc = _harness(["run", str(suite)], plugin_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = tmp_path / "results"
    records = _records(results)
    assert len(records) == 6 and all(r["status"] == "ok" for r in records)
    by_label = {r["label"]: r for r in records}
    for r in records:
        m = r["metrics"]
        assert m["bits"] > 0 and m["model_bits"] > 0 and m["size_bytes"] > 0
        assert m["perplexity"][str(eval_text_file)]["windows"] == 8
    assert by_label["tiny/none"]["reference"] and by_label["tiny/none"]["metrics"]["bits"] == 16
    rtn_bits = [by_label[f"tiny/rtn/b{b}"]["metrics"]["bits"] for b in (4, 3, 2)]
    assert rtn_bits == pytest.approx([b + (16 + b) / 16 for b in (4, 3, 2)], abs=1e-6)
    gptq = by_label["tiny/gptq"]
    assert gptq["calibration"]["num_sequences"] == 4 and gptq["calibration"]["seqlen"] == 64
    assert len(gptq["calibration"]["token_hash"]) == 16 and gptq["environment"]["seeds"] == {"cell": 0, "calibration": 0}
    assert gptq["metrics"]["bits"] == pytest.approx(4 + 20 / 16, abs=1e-6)
    assert all(0 <= layer["rel_error"] < 0.1 for layer in gptq["layers"])
    assert not (results / "checkpoints" / gptq["key"]).exists()  # removed once the record exists
    toy = by_label["tiny/toy/b1"]
    assert toy["layers"] and toy["metrics"]["bits"] < 2
    assert list((results / "tables").glob("*.md")) and list((results / "tables").glob("*.tex"))
    assert list((results / "plots").glob("*.png")) and list((results / "plots").glob("*.svg"))

    mtimes = {p: p.stat().st_mtime_ns for p in (results / "records").glob("*.json")}
    start = time.perf_counter()
    again = _harness(["run", str(suite)], plugin_env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert time.perf_counter() - start < 30
    assert {p: p.stat().st_mtime_ns for p in (results / "records").glob("*.json")} == mtimes
    assert "already finished" in again.stderr


def test_failed_cell_is_recorded_and_suite_continues(tmp_path, tiny_llama_dir, eval_text_file, plugin_env):
    methods = """  - name: boom
  - name: rtn
    params: {bits: 4, group_size: 16}
"""
    suite = _suite(tmp_path, tiny_llama_dir, eval_text_file, methods)
    proc = _harness(["run", str(suite)], plugin_env)
    assert proc.returncode == 1
    records = {r["label"]: r for r in _records(tmp_path / "results")}
    assert records["tiny/boom"]["status"] == "failed"
    assert "boom in" in records["tiny/boom"]["error"]["message"]
    assert "Traceback" in records["tiny/boom"]["error"]["traceback"]
    assert records["tiny/rtn"]["status"] == "ok"
    failures = (tmp_path / "results" / "tables").glob("*")
    assert any("boom" in p.read_text() for p in failures if p.suffix == ".md")
    assert (tmp_path / "results" / "suites" / "e2e.yaml").read_text() == suite.read_text()  # kept for report.html
    page = (tmp_path / "results" / "report.html").read_text()
    assert "boom in" in page and "name: e2e" in page


def test_sigkill_mid_cell_then_resume(tmp_path, tiny_llama_dir, eval_text_file, plugin_env):
    methods = """  - name: rtn
    params: {bits: 4, group_size: 16}
  - name: toy
    params: {sleep_s: 0.5}
  - name: rtn
    label: rtn2
    params: {bits: 2, group_size: 16}
"""
    suite = _suite(tmp_path, tiny_llama_dir, eval_text_file, methods)
    results = tmp_path / "results"
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness", "run", str(suite)], env=plugin_env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    # wait until the slow toy cell is running (its log exists), then kill the runner
    while time.time() < deadline:
        logs = list((results / "logs").glob("*.log")) if (results / "logs").is_dir() else []
        if any("toy" in p.read_text(errors="ignore") or p.stat().st_size > 0 for p in logs) and len(_records(results)) >= 1:
            break
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = [r["label"] for r in _records(results)]
    assert "tiny/toy" not in done_before  # killed mid-cell: nothing partial recorded
    again = _harness(["run", str(suite)], plugin_env)
    assert again.returncode == 0, again.stderr[-3000:]
    records = _records(results)
    assert sorted(r["label"] for r in records) == ["tiny/rtn", "tiny/rtn2", "tiny/toy"]
    assert all(r["status"] == "ok" for r in records)
    assert not list((results / "records").glob("*.tmp*"))
