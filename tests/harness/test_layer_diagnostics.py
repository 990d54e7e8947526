"""Per-layer diagnostics: the shared error formula, `output_error` in the pipeline's layer logs
(after block fine-tuning, carried by checkpoints), shared H, and the layer table of a record."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from harness import MethodConfig, Quantizer
from harness.analysis.layers import layer_table, relative_output_error
from harness.models.adapters import get_adapter
from harness.calibration import HessianAccumulator
from harness.pipeline import run_pipeline

from tests.fixtures.dense_linear import DenseLinear


class ScaleConfig(MethodConfig):
    factor: float = 0.8


class FinetuningQuantizer(Quantizer):
    """Scales every weight by `factor`, then 'fine-tunes' each block by scaling it again by 0.5."""

    name = "scale-ft"
    Config = ScaleConfig
    requires_calibration = True

    def quantize_linear(self, linear, stats, ctx):
        layer = DenseLinear(linear.in_features, linear.out_features, linear.bias)
        layer.weight.copy_(linear.weight.detach() * self.config.factor)
        return layer

    def finetunes_blocks(self) -> bool:
        return True

    def finetune_block(self, block, inputs, targets, ctx) -> None:
        assert targets is not None
        for module in block.modules():
            if isinstance(module, DenseLinear):
                module.weight.mul_(0.5)
        ctx.log.append({"finetune_epochs": 1})


def _load_tiny(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


@pytest.fixture
def calibration():
    return torch.randint(0, 1000, (6, 32), generator=torch.Generator().manual_seed(1))


def test_one_error_formula_shared_by_the_methods():
    from harness.plugin import relative_output_error as public_error

    gen = torch.Generator().manual_seed(0)
    W = torch.randn(6, 8, generator=gen, dtype=torch.float64)
    D = 0.1 * torch.randn(6, 8, generator=gen, dtype=torch.float64)
    X = torch.randn(50, 8, generator=gen, dtype=torch.float64)
    H = X.T @ X / 50
    expected = float(torch.trace(D @ H @ D.T) / torch.trace(W @ H @ W.T))
    assert relative_output_error(W, W + D, H) == pytest.approx(expected, rel=1e-12)
    assert public_error is relative_output_error  # the one definition methods import
    assert relative_output_error(torch.zeros(2, 8), torch.zeros(2, 8), H) == 0.0
    assert relative_output_error(torch.zeros(2, 8), torch.ones(2, 8), H) == math.inf


def test_linears_fed_the_same_input_share_one_H():
    gen = torch.Generator().manual_seed(0)
    q, k, o = nn.Linear(8, 4), nn.Linear(8, 4), nn.Linear(4, 8)
    acc = HessianAccumulator({"q": q, "k": k, "o": o})
    xs = [torch.randn(3, 5, 8, generator=gen) for _ in range(2)]
    with torch.no_grad():
        for x in xs:
            o(q(x) + k(x))
            acc.next_batch()
    acc.remove()
    acc.finish()
    assert acc.H("q") is acc.H("k") and acc.H("o") is not acc.H("q")
    flat = torch.cat([x.reshape(-1, 8) for x in xs]).double()
    torch.testing.assert_close(acc.H("k"), flat.T @ flat / flat.shape[0])
    stats = acc.stats("k")
    assert stats.num_samples == 30 and stats.H is not acc.H("k")  # the method gets its own copy
    stats.H.zero_()
    assert acc.H("q").abs().sum() > 0


def test_output_error_is_the_final_layers_error_and_checkpoints_keep_it(tiny_llama_dir, calibration, tmp_path):
    model = _load_tiny(tiny_llama_dir)
    quantizer = FinetuningQuantizer(ScaleConfig(factor=0.5))
    logs = run_pipeline(model, quantizer, get_adapter(model), calibration, progress=False, checkpoint_dir=tmp_path)
    linears = [e for e in logs if "out" in e]
    assert len(linears) == 14 and sum("finetune_epochs" in e for e in logs) == 2
    # Ŵ = 0.5 · 0.5 · W (exact in float32) after fine-tuning: ΔW = -0.75 W, the error is 0.5625 whatever H is
    for entry in linears:
        assert entry["output_error"] == pytest.approx(0.5625, rel=1e-12), entry["name"]
    saved = json.loads((tmp_path / "block_0001.json").read_text())["logs"]
    assert [e["output_error"] for e in saved if "out" in e] == [e["output_error"] for e in linears[7:]]

    # a resumed run (block 1 killed) reports block 0's errors from its checkpoint
    (tmp_path / "block_0001.json").unlink()
    model = _load_tiny(tiny_llama_dir)
    resumed = run_pipeline(model, FinetuningQuantizer(ScaleConfig(factor=0.5)), get_adapter(model), calibration,
                           progress=False, checkpoint_dir=tmp_path)
    assert [e.get("output_error") for e in resumed] == [e.get("output_error") for e in logs]


def test_layer_table_parses_blocks_types_and_prefers_output_error():
    layers = [
        {"name": f"model.layers.{b}.{sub}", "out": 4, "in": 8, "bits": bits, "seconds": 1.0,
         "rel_error": 0.5, "output_error": err}
        for b, (bits, err) in enumerate([(2.0, 0.1), (4.0, 0.3)])
        for sub in ("mlp.down_proj", "self_attn.q_proj")
    ] + [{"name": "model.layers.0", "finetune_epochs": 2}]
    table = layer_table(layers)
    assert table.error_field == "output_error" and table.kinds == ["q", "down"] and table.blocks == [0, 1]
    assert table.grid(lambda e: e.error).tolist() == [[0.1, 0.3], [0.1, 0.3]]
    summary = table.block_summary()
    assert [row["block"] for row in summary] == [0, 1, "all"]
    assert summary[-1]["bits"] == pytest.approx(3.0) and summary[-1]["max_error"] == pytest.approx(0.3)
    for entry in layers:
        entry.pop("output_error", None)
    assert layer_table(layers).error_field == "rel_error"
