"""The dry-run plan: closed-form bits, memory and time estimates from model configs alone."""
from __future__ import annotations

from pathlib import Path

import pytest

from harness.metrics.bits_table import bits_table
from harness.plan import PROFILES, format_seconds, model_facts, plan_cells
from harness.suite import load_suite, resolve_cells

GiB = 2**30


def _cells(tmp_path: Path, body: str):
    path = tmp_path / "s.yaml"
    path.write_text(body)
    return resolve_cells(load_suite(path), path)


LLAMA = """
name: p
device: cuda
dtype: float16
models: [{id: meta-llama/Llama-2-7b-hf, name: llama2-7b}]
calibration: {source: redpajama, num_sequences: NSEQ, seqlen: 4096}
methods:
  - name: none
  - {name: aqlm, budgets: [1]}
  - {name: crvq, budgets: [1], params: {finetune: true}, finetune_e2e: {max_sequences: 64}}
evaluations:
  perplexity: {datasets: [wikitext2, c4], seqlen: 4096}
"""


def test_hub_ids_resolve_offline_to_their_preset_and_bits_are_closed_forms(tmp_path):
    plans = {p.cell.label: p for p in plan_cells(_cells(tmp_path, LLAMA.replace("NSEQ", "128")))}
    crvq, aqlm, ref = plans["llama2-7b/crvq/b1"], plans["llama2-7b/aqlm/b1"], plans["llama2-7b/none"]
    assert crvq.error is None and "preset 'llama2-7b'" in crvq.source
    assert crvq.bits_paper == pytest.approx(1.0665, abs=1e-4) and aqlm.bits_paper == pytest.approx(1.0045, abs=1e-4)
    assert crvq.bits == bits_table("llama2-7b", "crvq", budget=1).bits
    assert ref.bits == 16 and "calibration passes" not in ref.phases and "perplexity" in ref.phases


def test_memory_and_time_follow_the_settings(tmp_path):
    small = {p.cell.label: p for p in plan_cells(_cells(tmp_path, LLAMA.replace("NSEQ", "128")))}
    big = {p.cell.label: p for p in plan_cells(_cells(tmp_path, LLAMA.replace("NSEQ", "1024")))}
    facts = model_facts("meta-llama/Llama-2-7b-hf")
    weights = facts.total_weights * 2
    # host: the model as loaded, the calibration activations (+ the fine-tuning targets: CRVQ only)
    acts = 1024 * 4096 * facts.hidden * 2
    assert big["llama2-7b/aqlm/b1"].host_gib * GiB == pytest.approx(weights + acts)
    assert big["llama2-7b/crvq/b1"].host_gib * GiB == pytest.approx(weights + 2 * acts)
    assert big["llama2-7b/crvq/b1"].device_gib > weights / GiB
    aqlm_small, aqlm_big = small["llama2-7b/aqlm/b1"].phases, big["llama2-7b/aqlm/b1"].phases
    assert aqlm_big["calibration passes"] == pytest.approx(8 * aqlm_small["calibration passes"])
    assert aqlm_big["method optimisation"] == aqlm_small["method optimisation"] > 0  # per layer, not per token
    crvq = big["llama2-7b/crvq/b1"]
    assert "block fine-tuning" in crvq.phases and "end-to-end fine-tuning" in crvq.phases
    assert crvq.seconds == pytest.approx(sum(crvq.phases.values()))


def test_cpu_profile_has_one_memory_and_a_local_model_dir(tmp_path, tiny_llama_dir):
    cells = _cells(tmp_path, f"""
name: p
models: [{{id: {tiny_llama_dir}, name: tiny}}]
calibration: {{source: embedded, num_sequences: 4, seqlen: 64}}
methods: [{{name: gptq, budgets: [4]}}]
""")
    (plan,) = plan_cells(cells, profile="cpu")
    assert plan.profile == "cpu" and plan.device_gib is None and plan.host_gib > 0
    assert plan.bits == pytest.approx(4 + 20 / 64) and "config" in plan.source
    assert PROFILES["cpu"].basis.startswith("measured")


def test_format_seconds():
    assert [format_seconds(s) for s in (12, 600, 7200, 3 * 86400)] == ["12 s", "10 min", "2.0 h", "3.0 d"]
