"""GPTQ as a method: config, presets, quantize_linear, bits, the GPTQ checkpoint round trip,
backends, and the acceptance test on real layers of the embedded model."""
from __future__ import annotations

import importlib.util
import json
import os

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file
from torch import nn

from harness.plugin import relative_output_error
from harness.quantizer import LayerStats, QuantContext
from harness.registry import get_method
from methods.common import unpack_rows
from methods.gptq import GPTQConfig, GPTQLinear, GPTQQuantizer, export_gptq_checkpoint, load_gptq_checkpoint
from methods.gptq.algorithm import gptq_quantize
from methods.rtn.algorithm import dequantize_codes, minmax_grid, quantize_codes
from tests.fixtures.hessians import capture_hessians


def ctx(name: str = "blk.0.proj") -> QuantContext:
    return QuantContext(layer_name=name, block_index=0, generator=torch.Generator().manual_seed(0))


def hessian(inp: int, seed: int = 1, tokens: int = 2048) -> torch.Tensor:
    """A correlated second moment with uneven channel scales: float64 [inp, inp]."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.eye(inp, dtype=torch.float64) + 0.5 * torch.randn(inp, inp, generator=g, dtype=torch.float64)
    scale = torch.rand(inp, generator=g, dtype=torch.float64) * 2 + 0.1
    X = scale[:, None] * (mix @ torch.randn(inp, tokens, generator=g, dtype=torch.float64))
    return X @ X.T / tokens


def linear(out: int, inp: int, bias: bool = False, seed: int = 0) -> nn.Linear:
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(inp, out, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(out, inp, generator=g) * 0.05)
        if bias:
            lin.bias.copy_(torch.randn(out, generator=g))
    return lin


def gptq(lin: nn.Linear, H: torch.Tensor | None = None, log: QuantContext | None = None, **params) -> GPTQLinear:
    H = hessian(lin.in_features) if H is None else H
    return GPTQQuantizer(GPTQConfig(**params)).quantize_linear(lin, LayerStats(H, 2048), log or ctx())


# ------------------------------------------------------------------------------ config
def test_config_defaults_and_validation() -> None:
    cfg = GPTQConfig()
    assert (cfg.bits, cfg.group_size, cfg.symmetric, cfg.act_order, cfg.static_groups) == (4, 128, False, False, False)
    assert (cfg.damp, cfg.block_size, cfg.backend) == (0.01, 128, "native")
    for bad in ({"bits": 5}, {"bits": 1}, {"bits": True}, {"group_size": 0}, {"group_size": -2},
                {"damp": 0.0}, {"damp": -0.1}, {"block_size": 0}, {"backend": "autogptq"}, {"bitz": 4}):
        with pytest.raises(ValidationError):
            GPTQConfig(**bad)
    with pytest.raises(ValidationError):
        cfg.bits = 3  # frozen
    assert all(f.description for f in GPTQConfig.model_fields.values())


def test_registry_and_presets() -> None:
    assert get_method("gptq") is GPTQQuantizer and GPTQQuantizer.requires_calibration
    assert GPTQQuantizer.supported_budgets() == [2, 3, 4, 8]
    for budget in (2, 3, 4):
        cfg = GPTQConfig(**GPTQQuantizer.presets(budget))
        assert (cfg.bits, cfg.group_size) == (budget, 64) and 576 % cfg.group_size == 0
    assert GPTQConfig(**GPTQQuantizer.presets(8)).group_size == -1
    with pytest.raises(ValueError, match="no preset"):
        GPTQQuantizer.presets(1)


# ----------------------------------------------------------------------- quantize_linear
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("act_order", [False, True])
def test_quantize_linear_stores_what_gptq_chose(bits: int, act_order: bool) -> None:
    lin = linear(48, 96, bias=True)
    before = lin.weight.detach().clone()
    H = hessian(96)
    c = ctx()
    layer = gptq(lin, H, c, bits=bits, group_size=32, act_order=act_order)
    ref = gptq_quantize(lin.weight, H, bits=bits, group_size=32, act_order=act_order)
    assert isinstance(layer, GPTQLinear) and torch.equal(lin.weight, before)
    assert torch.equal(layer.dequantize(), ref.dequantized)
    x = torch.randn(3, 5, 96)
    assert torch.allclose(layer(x), nn.functional.linear(x, ref.dequantized, lin.bias), atol=1e-6)
    (entry,) = c.log
    assert entry["rel_error"] == pytest.approx(relative_output_error(lin.weight, ref.dequantized, H))
    assert entry["num_dead"] == 0 and entry["damp"] == 0.01 and entry["backend"] == "native"


def test_gptq_beats_rtn_on_a_synthetic_layer_and_needs_stats() -> None:
    lin, H = linear(64, 128), hessian(128)
    layer = gptq(lin, H, bits=3, group_size=32)
    s, z = minmax_grid(lin.weight.detach(), 3, 32)
    rtn = dequantize_codes(quantize_codes(lin.weight.detach(), s, z, 3, 32), s, z, 32)
    assert relative_output_error(lin.weight, layer.dequantize(), H) < 0.8 * relative_output_error(lin.weight, rtn, H)
    with pytest.raises(ValueError, match="calibration"):
        GPTQQuantizer(GPTQConfig()).quantize_linear(lin, None, ctx())


def test_dead_inputs_are_logged() -> None:
    H = hessian(64)
    H[:, 5] = 0
    H[5, :] = 0
    c = ctx()
    layer = gptq(linear(32, 64), H, c, bits=4, group_size=32)
    assert c.log[0]["num_dead"] == 1 and bool((layer.dequantize()[:, 5] == 0).all())


# -------------------------------------------------------------------------------- bits
def test_partial_last_group() -> None:
    """group 128 on a 576-wide layer (SmolLM2's hidden size): 5 groups, the last 64 wide."""
    layer = gptq(linear(64, 576), hessian(576, tokens=640), bits=4, group_size=128)
    assert layer.num_groups == 5 and tuple(layer.scales.shape) == (5, 64)
    assert layer.formula_bits() == pytest.approx(4 + 20 * 5 / 576)
    assert layer.measured_bits() == pytest.approx(layer.formula_bits(), abs=1e-6)


def test_act_order_stores_and_counts_g_idx() -> None:
    lin, H = linear(64, 128), hessian(128)
    plain = gptq(lin, H, bits=4, group_size=32)
    ordered = gptq(lin, H, bits=4, group_size=32, act_order=True)
    static = gptq(lin, H, bits=4, group_size=32, act_order=True, static_groups=True)
    assert plain.g_idx is None and static.g_idx is None and ordered.g_idx is not None
    assert not torch.equal(ordered.g_idx.long(), torch.arange(128) // 32)
    for layer in (plain, ordered, static):
        assert layer.measured_bits() == pytest.approx(layer.formula_bits(), abs=1e-6)
    assert ordered.measured_bits() - plain.measured_bits() == pytest.approx(32 / 64, abs=1e-6)
    assert ordered.formula_bits() == pytest.approx(4 + 20 * 4 / 128 + 32 / 64, abs=1e-6)


# -------------------------------------------------------------------------- checkpoint
def two_layer_model(**params) -> nn.Module:
    model = nn.Sequential(linear(48, 96, bias=True, seed=0), nn.LayerNorm(48), linear(32, 48, seed=1))
    for i, H in ((0, hessian(96)), (2, hessian(48, seed=2))):
        model[i] = gptq(model[i], H, **params)
    return model


@pytest.mark.parametrize(
    "params",
    [dict(bits=4, group_size=32), dict(bits=3, group_size=40, act_order=True),
     dict(bits=2, group_size=-1, symmetric=True), dict(bits=8, group_size=16, act_order=True, static_groups=True)],
)
def test_export_reload_round_trip_is_exact(tmp_path, params) -> None:
    model = two_layer_model(**params)
    qconfig = export_gptq_checkpoint(model, tmp_path)
    assert qconfig["quant_method"] == "gptq" and qconfig["bits"] == params["bits"]
    assert qconfig["desc_act"] == (params.get("act_order", False) and not params.get("static_groups", False))
    assert json.loads((tmp_path / "quantize_config.json").read_text()) == qconfig
    fresh = nn.Sequential(nn.Linear(96, 48), nn.LayerNorm(48), nn.Linear(48, 32, bias=False))
    load_gptq_checkpoint(fresh, tmp_path)
    x = torch.randn(4, 7, 96)
    assert torch.equal(fresh(x), model(x))
    for i in (0, 2):
        a, b = model[i], fresh[i]
        assert isinstance(b, GPTQLinear) and torch.equal(a.dequantize(), b.dequantize())
        assert a.has_g_idx == b.has_g_idx and a.measured_bits() == b.measured_bits()
    assert torch.equal(fresh[1].weight, model[1].weight)


def test_checkpoint_tensors_follow_the_gptq_layout(tmp_path) -> None:
    model = two_layer_model(bits=4, group_size=32, act_order=True)
    export_gptq_checkpoint(model, tmp_path, checkpoint_format="gptq")
    t = load_file(tmp_path / "model.safetensors")
    layer = model[0]
    assert t["0.qweight"].dtype == torch.int32 and tuple(t["0.qweight"].shape) == (96 * 4 // 32, 48)
    assert t["0.qzeros"].dtype == torch.int32 and tuple(t["0.qzeros"].shape) == (3, 48 * 4 // 32)
    assert t["0.scales"].dtype == torch.float16 and tuple(t["0.scales"].shape) == (3, 48)
    assert t["0.g_idx"].dtype == torch.int32 and torch.equal(t["0.g_idx"], layer.g_idx)
    assert torch.equal(t["2.g_idx"], model[2].g_idx)
    # v1 ("gptq") stores zero - 1
    assert torch.equal(unpack_rows(t["0.qzeros"], 4, 48, dim=1) + 1, layer.zeros())


def test_zero_point_zero_needs_gptq_v2(tmp_path) -> None:
    lin = linear(32, 64)
    with torch.no_grad():
        lin.weight.abs_()  # no negative weight: every asymmetric zero point is 0
    model = nn.Sequential(gptq(lin, bits=4, group_size=32))
    with pytest.raises(ValueError, match="v1"):
        export_gptq_checkpoint(model, tmp_path / "v1", checkpoint_format="gptq")
    assert export_gptq_checkpoint(model, tmp_path / "auto")["checkpoint_format"] == "gptq_v2"
    fresh = load_gptq_checkpoint(nn.Sequential(nn.Linear(64, 32, bias=False)), tmp_path / "auto")
    assert torch.equal(fresh[0].dequantize(), model[0].dequantize())


def test_tied_weights_are_written_once(tmp_path) -> None:
    emb = nn.Embedding(10, 16)
    head = nn.Linear(16, 10, bias=False)
    head.weight = emb.weight
    model = nn.ModuleDict({"emb": emb, "proj": gptq(linear(16, 16), bits=4, group_size=8), "head": head})
    export_gptq_checkpoint(model, tmp_path)
    assert set(load_file(tmp_path / "model.safetensors")) >= {"emb.weight", "proj.qweight"}
    assert "head.weight" not in load_file(tmp_path / "model.safetensors")
    fresh = nn.ModuleDict({"emb": nn.Embedding(10, 16), "proj": nn.Linear(16, 16, bias=False),
                           "head": nn.Linear(16, 10, bias=False)})
    load_gptq_checkpoint(fresh, tmp_path)
    assert torch.equal(fresh["head"].weight, emb.weight) and torch.equal(fresh["emb"].weight, emb.weight)


# ----------------------------------------------------------------------------- backends
def test_auto_gptq_backend_raises_import_error_with_the_reason() -> None:
    with pytest.raises(ImportError, match="torch.cuda.synchronize"):
        GPTQQuantizer(GPTQConfig(backend="auto-gptq"))


@pytest.mark.skipif(importlib.util.find_spec("gptqmodel") is not None, reason="gptqmodel is installed")
def test_gptqmodel_backend_without_the_package_raises_import_error() -> None:
    with pytest.raises(ImportError, match="pip install 'gptqmodel==7.6.0'"):
        GPTQQuantizer(GPTQConfig(backend="gptqmodel"))


@pytest.mark.skipif(importlib.util.find_spec("gptqmodel") is None, reason="needs gptqmodel")
def test_gptqmodel_backend_matches_native_quality() -> None:
    lin, H = linear(64, 128), hessian(128)
    environ = dict(os.environ)
    for act_order in (False, True):
        c = ctx()
        layer = gptq(lin, H, c, bits=4, group_size=32, act_order=act_order, backend="gptqmodel")
        native = gptq(lin, H, bits=4, group_size=32, act_order=act_order)
        assert c.log[0]["backend"] == "gptqmodel" and layer.has_g_idx == native.has_g_idx
        ratio = c.log[0]["rel_error"] / relative_output_error(lin.weight, native.dequantize(), H)
        assert 0.8 < ratio < 1.25
    assert dict(os.environ) == environ  # gptqmodel's import-time HF_HOME etc. are undone


# --------------------------------------------------------------------------- acceptance
def test_gptq_beats_rtn_by_30_percent_on_real_layers(embedded) -> None:
    """3 bits, group 64: GPTQ's relative output error is at least 30% below RTN's on real layers
    of SmolLM2-135M, with H from 8 x 512 calibration tokens of the embedded corpus."""
    from harness.data import calibration_batch

    model = embedded.model
    names = ["model.layers.3.self_attn.q_proj", "model.layers.3.self_attn.o_proj", "model.layers.3.mlp.down_proj"]
    ids = calibration_batch("embedded", embedded.tokenizer, 8, 512, torch.Generator().manual_seed(0))
    stats = capture_hessians(model, ids.split(4), names)  # each forward stops after block 3's down_proj
    quantizer = GPTQQuantizer(GPTQConfig(bits=3, group_size=64))
    for name in names:
        H, count = stats[name]
        assert count == 8 * 512
        lin = model.get_submodule(name)
        W = lin.weight.detach()
        c = ctx(name)
        layer = quantizer.quantize_linear(lin, LayerStats(H, count), c)
        s, z = minmax_grid(W, 3, 64)
        rtn_error = relative_output_error(W, dequantize_codes(quantize_codes(W, s, z, 3, 64), s, z, 64), H)
        assert c.log[0]["rel_error"] == pytest.approx(relative_output_error(W, layer.dequantize(), H))
        assert c.log[0]["rel_error"] <= 0.7 * rtn_error, (name, c.log[0]["rel_error"], rtn_error)


def test_embedded_model_checkpoint_reloads_with_identical_logits(embedded, tmp_path) -> None:
    """A LLaMA model (tied embeddings, HF config) with GPTQ layers: export, reload into a fresh
    copy of the dense model, identical logits; config.json carries the quantization_config."""
    import copy

    model = copy.deepcopy(embedded.model)
    quantizer = GPTQQuantizer(GPTQConfig(bits=4, group_size=128, act_order=True))
    for name in ("model.layers.0.self_attn.q_proj", "model.layers.29.mlp.down_proj"):
        lin = model.get_submodule(name)
        d = torch.rand(lin.in_features, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        H = torch.diag(d + 0.5) + 0.1  # positive definite, uneven diagonal (a real act-order permutation)
        model.set_submodule(name, quantizer.quantize_linear(lin, LayerStats(H, 1), ctx(name)))
    export_gptq_checkpoint(model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "llama" and config["quantization_config"]["desc_act"] is True
    fresh = load_gptq_checkpoint(copy.deepcopy(embedded.model), tmp_path)
    assert isinstance(fresh.get_submodule("model.layers.29.mlp.down_proj"), GPTQLinear)
    ids = torch.randint(0, 1000, (1, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(fresh(ids).logits, model(ids).logits)
