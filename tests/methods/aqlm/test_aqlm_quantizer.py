"""`AQLMQuantizer`: config, presets, registry, quantize_linear, the layer reference, export."""
from __future__ import annotations

import time

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from harness.quantizer import LayerStats
from harness.plugin import relative_output_error
from harness.registry import get_method
from methods.aqlm import AQLMConfig, AQLMLinear, AQLMQuantizer
from methods.aqlm.config import PAPER_2BIT_1X16
from tests.methods.aqlm.layer_reference import REFERENCE_REL_ERROR, REFERENCE_SECONDS
from tests.fixtures.quantizer_inputs import layer_ctx, layer_stats, seeded_linear


def test_registered_with_presets():
    assert get_method("aqlm") is AQLMQuantizer
    assert AQLMQuantizer.requires_calibration
    assert AQLMQuantizer.presets(1) == {"num_codebooks": 1, "nbits_per_codebook": 8, "in_group_size": 8}
    assert AQLMQuantizer.presets(2) == {"num_codebooks": 2, "nbits_per_codebook": 8, "in_group_size": 8}
    assert AQLMQuantizer.supported_budgets() == [1, 2]
    with pytest.raises(ValueError, match="no preset"):
        AQLMQuantizer.presets(3)
    paper = AQLMConfig(**{**AQLMQuantizer.presets(2), **PAPER_2BIT_1X16})  # budget 2 + params override
    assert (paper.num_codebooks, paper.nbits_per_codebook, paper.in_group_size) == (1, 16, 8)


@pytest.mark.parametrize(
    "params",
    [{"out_group_size": 2}, {"scale_nbits": 4}, {"num_codebooks": True}, {"nbits_per_codebook": 17},
     {"betas": (0.9, 1.0)}, {"typo": 1}, {"beam_size": 0}],
)
def test_config_rejects_bad_params(params):
    with pytest.raises(ValidationError):
        AQLMConfig(**params)


def test_quantize_linear_returns_a_packed_layer_and_logs():
    linear, stats, ctx = seeded_linear(), layer_stats(), layer_ctx()
    cfg = AQLMConfig(nbits_per_codebook=6, max_epochs=4, steps_per_epoch=10, relative_mse_tolerance=0.0)
    layer = AQLMQuantizer(cfg).quantize_linear(linear, stats, ctx)
    assert isinstance(layer, AQLMLinear) and layer.compute_path == "aqlm-lookup"
    (entry,) = ctx.log
    assert set(entry) == {"layer", "rel_error", "init_rel_error", "epochs", "seconds"}
    assert entry["epochs"] == 4 and entry["rel_error"] < entry["init_rel_error"]
    W = linear.weight.detach()
    assert entry["rel_error"] == pytest.approx(relative_output_error(W, layer.dequantize(), stats.H), rel=1e-6)
    x = torch.randn(3, 64)
    torch.testing.assert_close(layer(x), nn.functional.linear(x, layer.dequantize(), linear.bias), rtol=1e-4, atol=1e-5)
    assert layer.measured_bits() == pytest.approx((32 * 8 * 6 + 64 * 8 * 16 + 32 * 16) / (32 * 64))


def test_quantize_linear_is_deterministic():
    cfg = AQLMConfig(num_codebooks=2, nbits_per_codebook=4, max_epochs=3, steps_per_epoch=10)
    a = AQLMQuantizer(cfg).quantize_linear(seeded_linear(), layer_stats(), layer_ctx(seed=3))
    b = AQLMQuantizer(cfg).quantize_linear(seeded_linear(), layer_stats(), layer_ctx(seed=3))
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key


def test_quantize_linear_errors_name_the_layer():
    q = AQLMQuantizer(AQLMConfig(in_group_size=7))
    with pytest.raises(ValueError, match="blk.0.proj.*in_group_size"):
        q.quantize_linear(seeded_linear(), layer_stats(), layer_ctx())
    with pytest.raises(ValueError, match="no calibration"):
        AQLMQuantizer(AQLMConfig()).quantize_linear(seeded_linear(), None, layer_ctx())


def test_finetune_block_is_a_no_op_when_off():
    quantizer = AQLMQuantizer(AQLMConfig())  # finetune defaults to False
    assert not quantizer.finetunes_blocks()
    assert quantizer.finetune_block(nn.Identity(), None, None, layer_ctx()) is None


def test_layer_reference_beats_the_published_algorithm(aqlm_layer_reference):
    """Embedded model, layers.10.self_attn.q_proj, 1x8 g8, lr 1e-4, 100 steps/epoch, <= 50
    epochs, tolerance 0.01: the reference AQLM reached 0.0301 in 12.6 s on the 2-core machine."""
    W, H, n = aqlm_layer_reference
    linear = nn.Linear(W.shape[1], W.shape[0], bias=False)
    with torch.no_grad():
        linear.weight.copy_(W)
    cfg = AQLMConfig(num_codebooks=1, nbits_per_codebook=8, in_group_size=8, lr=1e-4, steps_per_epoch=100,
                     max_epochs=50, relative_mse_tolerance=0.01)
    ctx = layer_ctx("model.layers.10.self_attn.q_proj")
    start = time.perf_counter()
    layer = AQLMQuantizer(cfg).quantize_linear(linear, LayerStats(H, n), ctx)
    seconds = time.perf_counter() - start
    rel = relative_output_error(W, layer.dequantize(), H)
    print(f"aqlm layer reference: rel error {rel:.4f} (reference {REFERENCE_REL_ERROR}) in {seconds:.1f} s "
          f"(reference {REFERENCE_SECONDS} s), {ctx.log[0]['epochs']} epochs")
    assert rel <= REFERENCE_REL_ERROR
    assert ctx.log[0]["rel_error"] == pytest.approx(rel, rel=1e-6)


def test_transformers_loads_the_exported_checkpoint(tmp_path):
    """Needs `aqlm[cpu]`; a tiny random LLaMA with every block linear quantized (2x8 bits)."""
    pytest.importorskip("aqlm")
    numba = pytest.importorskip("numba")
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    from methods.aqlm.export import export_aqlm_checkpoint

    config = LlamaConfig(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=True)
    torch.manual_seed(0)  # test-only: the random model's init
    model = LlamaForCausalLM(config).eval()
    q = AQLMQuantizer(AQLMConfig(num_codebooks=2, max_epochs=2, steps_per_epoch=5))
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and name.startswith("model.layers"):
            H = torch.eye(module.in_features, dtype=torch.float64)
            model.set_submodule(name, q.quantize_linear(module, LayerStats(H, 1), layer_ctx(name)))
    qconfig = export_aqlm_checkpoint(model, tmp_path, dtype=torch.float32)
    assert qconfig["num_codebooks"] == 2 and "lm_head" in qconfig["linear_weights_not_to_quantize"]
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert type(loaded.model.layers[0].mlp.down_proj).__name__ == "QuantizedLinear"
    ids = torch.randint(0, 100, (1, 12), generator=torch.Generator().manual_seed(0))
    threads = numba.get_num_threads()
    numba.set_num_threads(1)  # aqlm 1.1.7's numba kernel races with more threads
    try:
        with torch.no_grad():
            torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=1e-4, atol=1e-4)
    finally:
        numba.set_num_threads(threads)
