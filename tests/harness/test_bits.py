"""Bit accounting: measured bits, formula bits, model bits (tied weights, biases), disk size."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from harness.metrics.bits import count_bits, dir_size_bytes
from harness.quantizer import QuantContext
from methods.rtn import RTNConfig, RTNQuantizer


def quantize_linears(model: nn.Module, names: list[str], **params) -> None:
    """Replace the named nn.Linear modules of `model` by RTN layers, in place."""
    quantizer = RTNQuantizer(RTNConfig(**params))
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        ctx = QuantContext(layer_name=name, block_index=0, generator=torch.Generator())
        setattr(parent, child, quantizer.quantize_linear(getattr(parent, child), None, ctx))


def rtn_stored_bits(out: int, inp: int, bits: int, gs: int) -> int:
    """Closed form for shapes without packing padding: codes + (fp16 scale + zero) per group."""
    return out * inp * bits + (inp // gs) * out * (16 + bits)


def test_sequential_with_biases_and_an_unquantized_layer() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 64), nn.LayerNorm(64))
    quantize_linears(model, ["0"], bits=4, group_size=32)
    result = count_bits(model)
    q_bits = rtn_stored_bits(32, 64, 4, 32)
    assert result["bits"] == pytest.approx(q_bits / (32 * 64), abs=1e-9)
    assert result["bits_formula"] == pytest.approx(4 + 20 / 32, abs=1e-9)
    assert result["quantized_weights"] == 32 * 64
    assert result["layers"] == [
        {"name": "0", "bits": result["bits"], "bits_formula": result["bits_formula"],
         "bits_paper": result["bits_formula"], "out": 32, "in": 64}
    ]
    others = 32 + (32 * 64 + 64) + 2 * 64  # bias of the RTN layer, the plain Linear, LayerNorm
    assert result["total_weights"] == 32 * 64 + others
    assert result["model_bits"] == pytest.approx((q_bits + 16 * others) / (32 * 64 + others), abs=1e-9)
    # Counting the unquantized layer too: it weighs 16 bits per weight in `bits`.
    mixed = count_bits(model, linear_names=["0", "2"])
    assert mixed["bits"] == pytest.approx((q_bits + 16 * 32 * 64) / (2 * 32 * 64), abs=1e-9)


def tiny_llama(device: str = "cpu"):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(
        vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.LlamaForCausalLM(cfg)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    block_linears = [
        f"model.layers.{i}.{proj}"
        for i in range(2)
        for proj in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                     "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
    ]
    return model, block_linears


# (out, in) of one block's linears: q, k, v (2 kv heads of 16), o, gate, up, down.
BLOCK_SHAPES = [(64, 64), (32, 64), (32, 64), (64, 64), (128, 64), (128, 64), (64, 128)]
EMBED = 96 * 64  # tied with lm_head: counted once
NORMS = 2 * (64 + 64) + 64  # two RMSNorms per block + the final norm


def test_reference_model_is_16_bits() -> None:
    model, block_linears = tiny_llama()
    result = count_bits(model, linear_names=block_linears)
    assert result["bits"] == 16 and result["bits_formula"] == 16 and result["model_bits"] == 16
    linear_weights = 2 * sum(o * i for o, i in BLOCK_SHAPES)
    assert result["quantized_weights"] == linear_weights
    assert result["total_weights"] == linear_weights + EMBED + NORMS  # inv_freq not counted
    assert result["total_weights"] == sum(p.numel() for p in model.parameters())
    assert count_bits(model.float(), storage_bits=32, linear_names=block_linears)["model_bits"] == 32


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_tiny_llama_with_rtn_layers(bits: int) -> None:
    model, block_linears = tiny_llama()
    quantize_linears(model, block_linears, bits=bits, group_size=32)
    result = count_bits(model)  # default: every QuantizedLinear
    assert [layer["name"] for layer in result["layers"]] == sorted(block_linears)
    q_weights = 2 * sum(o * i for o, i in BLOCK_SHAPES)
    q_bits = 2 * sum(rtn_stored_bits(o, i, bits, 32) for o, i in BLOCK_SHAPES)
    closed_form = bits + (16 + bits) / 32  # every layer has in % 32 == 0: same per-layer value
    assert result["bits"] == pytest.approx(closed_form, abs=1e-6)
    assert result["bits"] == pytest.approx(q_bits / q_weights, abs=1e-12)
    assert result["bits_formula"] == pytest.approx(closed_form, abs=1e-6)
    assert result["bits_paper"] == pytest.approx(closed_form, abs=1e-6)
    assert result["quantized_weights"] == q_weights
    assert result["total_weights"] == q_weights + EMBED + NORMS
    expected = (q_bits + 16 * (EMBED + NORMS)) / (q_weights + EMBED + NORMS)
    assert result["model_bits"] == pytest.approx(expected, abs=1e-9)
    # The quantized model still runs.
    logits = model(torch.randint(0, 96, (1, 8))).logits
    assert logits.shape == (1, 8, 96) and torch.isfinite(logits).all()


def test_meta_device_model_counts_like_a_real_one() -> None:
    # (Built on meta: `.to("meta")` would re-create parameters and untie the embedding.)
    model, block_linears = tiny_llama()
    real = count_bits(model, linear_names=block_linears)
    meta = count_bits(tiny_llama("meta")[0], linear_names=block_linears)
    assert meta["model_bits"] == real["model_bits"] and meta["total_weights"] == real["total_weights"]


def test_unknown_linear_name() -> None:
    with pytest.raises(ValueError, match="lacks"):
        count_bits(nn.Sequential(nn.Linear(4, 4)), linear_names=["nope"])


def test_dir_size_bytes(tmp_path) -> None:
    (tmp_path / "a.bin").write_bytes(b"x" * 100)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.bin").write_bytes(b"y" * 23)
    assert dir_size_bytes(tmp_path) == 123
    assert dir_size_bytes(tmp_path / "a.bin") == 100
    with pytest.raises(FileNotFoundError):
        dir_size_bytes(tmp_path / "missing")
