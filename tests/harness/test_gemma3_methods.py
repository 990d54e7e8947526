"""Gemma 3 through the whole pipeline, on a tiny random config (sliding + global layers).

The calibration statistics of every block, including the global-attention one, are those of
the full model (the per-block call arguments); every method quantizes it, computes finite
logits, saves and reloads to the same logits. (The real gemma3-270m: tests/harness/
test_block_replay.py and suites/families.yaml.)
"""
from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM, Gemma3TextConfig

from harness.checkpoint import load_quantized, save_quantized
from harness.registry import build_quantizer
from harness.models import get_adapter
from harness.pipeline import run_pipeline
from harness.quantize import quantize

from tests.harness.test_pipeline import RecordingConfig, RecordingQuantizer, _reference_H


def _tiny_gemma3() -> torch.nn.Module:
    config = Gemma3TextConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=1,
        head_dim=16, vocab_size=256, max_position_embeddings=256, sliding_window=8,
    )
    assert config.layer_types.count("full_attention") == 1
    torch.manual_seed(0)  # test-only: from_config draws the random weights from the global generator
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim > 1:
                p.normal_(0, 0.1)
    return model


@pytest.fixture(scope="module")
def calibration() -> torch.Tensor:
    return torch.randint(0, 256, (8, 32), generator=torch.Generator().manual_seed(1))


def test_every_block_sees_the_full_model_statistics(calibration) -> None:
    model = _tiny_gemma3()
    expected = _reference_H(copy.deepcopy(model), calibration)
    quantizer = RecordingQuantizer(RecordingConfig())
    run_pipeline(model, quantizer, get_adapter(model), calibration, progress=False, batch_size=3)
    assert set(quantizer.seen) == set(expected)
    for name, H in expected.items():  # model.layers.5 is the global layer
        torch.testing.assert_close(quantizer.seen[name].H, H, rtol=1e-5, atol=1e-7, msg=name)


METHODS = {
    "rtn": (4, {"group_size": 32}),
    "gptq": (4, {"group_size": 32}),
    # 4-bit codebooks and one optimisation step per layer keep these at a few seconds on 2 cores
    "aqlm": (2, {"nbits_per_codebook": 4, "max_epochs": 1, "steps_per_epoch": 1, "kmeans_iters": 1,
                 "finetune": True, "finetune_max_epochs": 1}),
    "crvq": (1, {"nbits": 4, "extended_nbits": 4, "max_epochs": 1, "steps_per_epoch": 1, "kmeans_iters": 1,
                 "importance_kmeans_iters": 1, "finetune": True, "finetune_max_epochs": 1}),
}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_method_quantizes_saves_and_reloads(method: str, calibration, tmp_path) -> None:
    budget, params = METHODS[method]
    model = _tiny_gemma3()
    quantizer = build_quantizer(method, budget=budget, params=params)
    logs = quantize(model, quantizer, calibration=calibration, progress=False)
    assert len({entry["name"] for entry in logs if entry["name"].endswith("_proj")}) == 6 * 7
    with torch.no_grad():
        logits = model(input_ids=calibration[:2]).logits
    assert torch.isfinite(logits).all()
    save_quantized(model, tmp_path / "model", exact=True)
    reloaded = load_quantized(tmp_path / "model")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=calibration[:2]).logits, logits, rtol=1e-5, atol=1e-5)
