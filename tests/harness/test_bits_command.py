"""`harness bits`: bits tables from a model's config alone (meta device, no weights)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from harness.errors import HarnessError, ModelLoadError
from harness.metrics.bits_table import bits_table
from harness.models.shapes import SHAPE_PRESETS, meta_model, resolve_config


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "harness", "bits", *args], env=env, capture_output=True, text=True,
                          timeout=300)


def test_crvq_default_on_llama2_7b_is_the_paper_s_1_0665():
    table = bits_table("llama2-7b", "crvq")
    assert table.bits_paper == pytest.approx(1.0665, abs=1e-4)
    assert table.bits > table.bits_paper  # the permutation: in · ceil(log2 in) bits per layer
    shapes = {(s.out, s.inp): s for s in table.shapes}
    assert {k: v.count for k, v in shapes.items()} == {(4096, 4096): 128, (11008, 4096): 64, (4096, 11008): 32}
    assert shapes[(4096, 4096)].names == ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"]
    assert table.quantized_weights == 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008)
    assert table.total_weights == 6_738_415_616  # LLaMA-2-7B's parameter count
    assert bits_table("llama2-7b", "crvq", budget=1).bits_paper == table.bits_paper


def test_aqlm_1x8_on_llama2_7b_is_1_0045():
    table = bits_table("llama2-7b", "aqlm", budget=1)
    assert table.bits_paper == pytest.approx(1.0045, abs=1e-4)
    assert table.bits == table.bits_paper
    non_quantized = table.total_weights - table.quantized_weights
    assert table.model_bits == pytest.approx(
        (table.bits * table.quantized_weights + 16 * non_quantized) / table.total_weights, rel=1e-12)


def test_params_override_the_preset_and_other_methods():
    wider = bits_table("llama2-7b", "crvq", budget=1, params={"critical_ratio": 0.1})
    assert wider.bits_paper > bits_table("llama2-7b", "crvq").bits_paper
    rtn = bits_table("opt-125m", "rtn", budget=4)
    assert rtn.bits == pytest.approx(4 + 20 / 64)
    assert rtn.total_weights == 125_239_296  # OPT-125m, tied embeddings counted once
    gptq = bits_table("opt-125m", "gptq", params={"bits": 4, "group_size": 128, "act_order": True})
    assert gptq.bits > 4 + 20 / 128  # the stored g_idx
    none = bits_table("llama2-7b", "none")
    assert none.bits == 16 and none.model_bits == 16


def test_a_config_file_or_directory(tmp_path):
    config = SHAPE_PRESETS["opt-350m"]()
    config.save_pretrained(tmp_path)
    by_dir = bits_table(str(tmp_path), "crvq")
    by_file = bits_table(str(tmp_path / "config.json"), "crvq")
    preset = bits_table("opt-350m", "crvq")
    assert by_dir.bits_paper == by_file.bits_paper == preset.bits_paper
    assert by_dir.total_weights == preset.total_weights


def test_every_preset_builds_on_the_meta_device():
    for name in SHAPE_PRESETS:
        config, source = resolve_config(name)
        model = meta_model(config)
        assert next(model.parameters()).device.type == "meta", name


def test_errors():
    with pytest.raises(ModelLoadError, match="not a shape preset.*llama2-7b"):
        bits_table("llama2-8b", "crvq")
    with pytest.raises(HarnessError, match="no preset"):
        bits_table("llama2-7b", "crvq", budget=3)
    with pytest.raises(HarnessError, match="does not divide"):
        bits_table("opt-125m", "crvq", params={"in_group_size": 7})


def test_cli_prints_the_table_and_totals():
    proc = _cli("--model", "llama2-7b", "--method", "crvq")
    assert proc.returncode == 0, proc.stderr
    assert "bits_paper 1.0665" in proc.stdout and "4096" in proc.stdout and "11008" in proc.stdout
    proc = _cli("--model", "llama2-7b", "--method", "aqlm", "--budget", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["bits_paper"] == pytest.approx(1.0045, abs=1e-4)
    assert {s["in"] for s in data["shapes"]} == {4096, 11008}


def test_cli_unknown_preset_exits_2_with_a_clear_message():
    proc = _cli("--model", "llama-2-7b", "--method", "crvq")
    assert proc.returncode == 2
    assert "not a shape preset" in proc.stderr and "llama2-7b" in proc.stderr and "Traceback" not in proc.stderr
    proc = _cli("--model", "llama2-7b", "--method", "crvq", "--params", "{bad json")
    assert proc.returncode == 2 and "--params" in proc.stderr


@pytest.mark.parametrize(
    "method, params",
    [("rtn", {"bits": 3, "group_size": 32}), ("rtn", {"bits": 4, "group_size": -1}),
     ("gptq", {"bits": 4, "group_size": 48, "act_order": True}), ("gptq", {"bits": 2, "group_size": 64})],
)
def test_closed_forms_match_the_quantized_layers(method, params):
    import torch
    from torch import nn

    from harness.registry import build_quantizer
    from harness.quantizer import LayerStats, QuantContext

    quantizer = build_quantizer(method, params=params)
    gen = torch.Generator().manual_seed(0)
    linear = nn.Linear(128, 24)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(24, 128, generator=gen))
    X = torch.randn(128, 512, generator=gen, dtype=torch.float64)
    ctx = QuantContext(layer_name="l", block_index=0, generator=gen, progress=False)
    layer = quantizer.quantize_linear(linear, LayerStats(X @ X.T / 512, 512), ctx)
    assert quantizer.bits_for_shape(24, 128) == pytest.approx((layer.formula_bits(), layer.paper_bits()), rel=1e-12)
