"""The paper suite `suites/sub2bit.yaml`: its offline dry run (bits per cell from the model
configs) and a complete run of the whole suite on a tiny stand-in through `--stand-in`."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.metrics.bits_table import bits_table
from harness.suite import load_suite, resolve_cells

ROOT = Path(__file__).resolve().parents[2]
SUB2BIT = ROOT / "suites" / "sub2bit.yaml"
PRESETS = {"meta-llama/Llama-2-7b-hf": "llama2-7b", "meta-llama/Llama-2-13b-hf": "llama2-13b"}


def _harness(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HARNESS_NO_PROGRESS": "1", "COLUMNS": "250"}
    return subprocess.run([sys.executable, "-m", "harness", *args], env=env, capture_output=True, text=True,
                          cwd=cwd, timeout=900)


def _rows(stdout: str) -> dict[str, list[str]]:
    """Plan table rows by cell label: the cells of each row."""
    rows = {}
    for line in stdout.splitlines():
        parts = [p.strip() for p in line.strip().strip("│").split("│")]
        if len(parts) > 8 and "/" in parts[0]:
            rows[parts[0]] = parts
    return rows


def test_dry_run_offline_prints_the_closed_form_bits_of_every_cell():
    proc = _harness("run", str(SUB2BIT), "--dry-run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _rows(proc.stdout)
    cells = resolve_cells(load_suite(SUB2BIT), SUB2BIT)
    assert len(cells) == 12 and set(rows) == {c.label for c in cells}
    for cell in cells:
        expected = bits_table(PRESETS[cell.model.id], cell.method, params=cell.params)
        label, _key, bits, paper, model_bits, gpu, host, time = rows[cell.label][:8]
        assert (bits, paper, model_bits) == (f"{expected.bits:.4f}", f"{expected.bits_paper:.4f}",
                                             f"{expected.model_bits:.4f}"), label
        assert float(gpu) > 0 and float(host) > 0 and time.split()[-1] in ("s", "min", "h", "d"), label
    assert rows["llama2-7b/crvq/b1"][3] == "1.0665" and rows["llama2-7b/aqlm/b1"][3] == "1.0045"
    assert "preset 'llama2-7b' (for hub id 'meta-llama/Llama-2-7b-hf'" in proc.stdout
    assert "estimates for cuda" in proc.stdout


def test_embedded_stand_in_plan():
    proc = _harness("run", str(SUB2BIT), "--stand-in", "embedded", "--dry-run", "--device-profile", "cpu")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _rows(proc.stdout)
    assert sorted(rows) == sorted(f"smollm2-135m/{m}" for m in ("none", "rtn/b2", "gptq/b2", "aqlm/b1", "aqlm/b2", "crvq/b1"))
    assert "results/sub2bit-embedded" in proc.stdout.replace("\n", "")
    assert "calibration.source: redpajama -> embedded" in proc.stderr


@pytest.mark.slow  # over a minute on an idle 2-core machine: `python -m pytest -m slow`
def test_the_whole_suite_runs_on_a_tiny_stand_in(tmp_path, tiny_llama_dir, eval_text_file):
    """Acceptance: every cell of sub2bit (all methods, both fine-tuning stages, every evaluation)
    completes on a 2-block random LLaMA through the same `--stand-in` machinery."""
    overlay = tmp_path / "tiny.yaml"
    overlay.write_text(f"""
name: tiny
description: a 2-block random LLaMA, minimal settings
models: [{{id: {tiny_llama_dir}, name: tiny}}]
device: cpu
dtype: float32
calibration: {{source: {eval_text_file}, num_sequences: 8, seqlen: 32, dtype: float32}}
evaluations:
  perplexity: {{datasets: [{eval_text_file}], seqlen: 32, max_windows: 4}}
  zero_shot: {{tasks: [embedded_lastword], limit: 2, batch_size: 2}}
  throughput: {{batch_sizes: [1], new_tokens: 4, warmup: 0, repeats: 1}}
method_params:
  aqlm: {{nbits_per_codebook: 4, max_epochs: 1, steps_per_epoch: 2, kmeans_iters: 2, finetune_max_epochs: 1,
         finetune_batch_size: 8, finetune_max_sequences: 8}}
  crvq: {{nbits: 4, extended_nbits: 4, critical_ratio: 0.125, max_epochs: 1, steps_per_epoch: 2, kmeans_iters: 2,
         importance_kmeans_iters: 2, finetune_max_epochs: 1, finetune_batch_size: 8, finetune_max_sequences: 8}}
finetune_e2e: {{max_sequences: 8, epochs: 1, batch_size: 2, lr: 1.0e-3, val_fraction: 0.25}}
""")
    results = tmp_path / "results"
    proc = _harness("run", str(SUB2BIT), "--stand-in", str(overlay), "-o", str(results))
    assert proc.returncode == 0, proc.stderr[-4000:]
    records = {r["label"]: r for r in (json.loads(p.read_text()) for p in (results / "records").glob("*.json"))}
    assert sorted(records) == sorted(f"tiny/{m}" for m in ("none", "rtn/b2", "gptq/b2", "aqlm/b1", "aqlm/b2", "crvq/b1"))
    for label, r in records.items():
        assert r["status"] == "ok", (label, r.get("error"))
        assert r["stand_in"]["name"] == "tiny" and r["suite"] == "sub2bit-tiny"
        assert any(s.startswith("models:") for s in r["stand_in"]["substitutions"])
        assert r["metrics"]["perplexity"][str(eval_text_file)]["windows"] == 4
        assert "zero_shot" in r["metrics"] and "throughput" in r["metrics"], label
    tuned = [records[k] for k in ("tiny/aqlm/b1", "tiny/aqlm/b2", "tiny/crvq/b1")]
    assert all(r["finetune_e2e"]["train_sequences"] == 6 and r["finetune_e2e"]["val_sequences"] == 2 for r in tuned)
    assert len({json.dumps(r["cell"]["finetune_e2e"], sort_keys=True) for r in tuned}) == 1  # identical stage
    assert "finetune_e2e" not in records["tiny/gptq/b2"]

    proc = _harness("report", str(results), "--layout", "paper")
    assert proc.returncode == 0, proc.stderr[-3000:]
    paper = (results / "tables" / "paper.md").read_text()
    assert "| CRVQ |" in paper and "embedded_lastword" in paper and (results / "tables" / "paper.tex").is_file()
