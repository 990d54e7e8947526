"""The sequential calibration pipeline: exact H, sequential inputs, resume after a kill."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from harness import LayerStats, MethodConfig, QuantContext, QuantizedLinear, Quantizer
from harness.models.adapters import get_adapter, iter_block_linears
from harness.pipeline import run_pipeline

from tests.fixtures.dense_linear import DenseLinear


class RecordingConfig(MethodConfig):
    factor: float = 1.0
    fail_at: str | None = None


class RecordingQuantizer(Quantizer):
    """Records the H it is given; scales weights by `factor`; can fail at a named layer."""

    name = "recording"
    Config = RecordingConfig
    requires_calibration = True

    def __init__(self, config):
        super().__init__(config)
        self.seen: dict[str, LayerStats] = {}
        self.draws: dict[str, float] = {}

    def quantize_linear(self, linear: nn.Linear, stats: LayerStats, ctx: QuantContext) -> QuantizedLinear:
        if ctx.layer_name == self.config.fail_at:
            raise RuntimeError("killed")
        self.seen[ctx.layer_name] = stats
        self.draws[ctx.layer_name] = float(torch.rand(1, generator=ctx.generator))
        layer = DenseLinear(linear.in_features, linear.out_features, linear.bias)
        layer.weight.copy_(linear.weight.detach() * self.config.factor)
        return layer


def _load_tiny(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def _reference_H(model, calibration) -> dict[str, torch.Tensor]:
    """H of every block linear by hooking a plain forward of the whole model."""
    adapter = get_adapter(model)
    sums, counts, handles = {}, {}, []
    for name, _, module in iter_block_linears(model, adapter):
        def hook(m, args, out, name=name):
            x = args[0].reshape(-1, args[0].shape[-1]).double()
            sums[name] = sums.get(name, 0) + x.T @ x
            counts[name] = counts.get(name, 0) + x.shape[0]
        handles.append(module.register_forward_hook(hook))
    with torch.no_grad():
        model(input_ids=calibration, use_cache=False)
    for h in handles:
        h.remove()
    return {k: sums[k] / counts[k] for k in sums}


@pytest.fixture
def calibration():
    return torch.randint(0, 1000, (6, 32), generator=torch.Generator().manual_seed(1))


def test_identity_method_sees_the_full_precision_H(tiny_llama_dir, calibration):
    model = _load_tiny(tiny_llama_dir)
    expected = _reference_H(copy.deepcopy(model), calibration)
    quantizer = RecordingQuantizer(RecordingConfig())
    logs = run_pipeline(model, quantizer, get_adapter(model), calibration, progress=False, batch_size=4)
    assert set(quantizer.seen) == set(expected) and len(logs) == len(expected)
    for name, H in expected.items():
        got = quantizer.seen[name]
        assert got.num_samples == calibration.numel()
        assert got.H.dtype == torch.float64
        torch.testing.assert_close(got.H, H, rtol=1e-5, atol=1e-7)


def test_block_inputs_come_from_the_quantized_blocks(tiny_llama_dir, calibration):
    model = _load_tiny(tiny_llama_dir)
    # what block 1 should see: block 0 with weights scaled by 0.5, block 1 untouched
    expected_model = copy.deepcopy(model)
    with torch.no_grad():
        for name, index, module in iter_block_linears(expected_model, get_adapter(expected_model)):
            if index == 0:
                module.weight.mul_(0.5)
    expected = _reference_H(expected_model, calibration)
    quantizer = RecordingQuantizer(RecordingConfig(factor=0.5))
    run_pipeline(model, quantizer, get_adapter(model), calibration, progress=False, batch_size=6)
    name = "model.layers.1.self_attn.q_proj"
    torch.testing.assert_close(quantizer.seen[name].H, expected[name], rtol=1e-5, atol=1e-7)
    with torch.no_grad():  # and the whole model now computes with every block scaled
        torch.testing.assert_close(
            model(input_ids=calibration).logits,
            _scaled_all(copy.deepcopy(expected_model))(input_ids=calibration).logits, rtol=1e-4, atol=1e-4,
        )


def _scaled_all(model):
    with torch.no_grad():
        for name, index, module in iter_block_linears(model, get_adapter(model)):
            if index == 1:
                module.weight.mul_(0.5)
    return model


def test_resume_skips_finished_blocks_and_equals_uninterrupted(tiny_llama_dir, calibration, tmp_path):
    reference_model = _load_tiny(tiny_llama_dir)
    uninterrupted = RecordingQuantizer(RecordingConfig(factor=0.9))
    run_pipeline(reference_model, uninterrupted, get_adapter(reference_model), calibration, progress=False)

    model = _load_tiny(tiny_llama_dir)
    killed = RecordingQuantizer(RecordingConfig(factor=0.9, fail_at="model.layers.1.mlp.up_proj"))
    with pytest.raises(RuntimeError, match="killed"):
        run_pipeline(model, killed, get_adapter(model), calibration, progress=False, checkpoint_dir=tmp_path)
    assert (tmp_path / "block_0000.json").is_file() and not (tmp_path / "block_0001.json").exists()

    model = _load_tiny(tiny_llama_dir)  # a fresh process would reload the model
    resumed = RecordingQuantizer(RecordingConfig(factor=0.9))
    logs = run_pipeline(model, resumed, get_adapter(model), calibration, progress=False, checkpoint_dir=tmp_path)
    assert all(name.startswith("model.layers.1.") for name in resumed.seen)  # block 0 not recomputed
    assert len(logs) == 14 and logs[0]["name"] == "model.layers.0.self_attn.q_proj"
    for name, stats in resumed.seen.items():
        torch.testing.assert_close(stats.H, uninterrupted.seen[name].H)
        assert resumed.draws[name] == uninterrupted.draws[name]
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=calibration).logits, reference_model(input_ids=calibration).logits)


def test_bfloat16_calibration_passes_give_close_H(tiny_llama_dir, calibration):
    model = _load_tiny(tiny_llama_dir)
    expected = _reference_H(copy.deepcopy(model), calibration)
    quantizer = RecordingQuantizer(RecordingConfig())
    run_pipeline(model, quantizer, get_adapter(model), calibration, progress=False, compute_dtype=torch.bfloat16)
    for name, H in expected.items():
        got = quantizer.seen[name].H
        assert got.dtype == torch.float64
        assert float((got - H).norm() / H.norm()) < 2e-2, name
