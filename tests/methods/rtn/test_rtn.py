"""RTN: the grid math, the packed layer (GPTQ layout), bits, save/load, config and presets."""
from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file, save_file
from torch import nn

from harness.quantizer import QuantContext, layer_class_path
from harness.registry import get_method
from methods.common import GroupIntLinear, unpack_rows
from methods.none import NoneConfig, NoQuantizer
from methods.rtn import RTNConfig, RTNLinear, RTNQuantizer
from methods.rtn.algorithm import dequantize_codes, minmax_grid, quantize_codes


def ctx(name: str = "blk.0.proj") -> QuantContext:
    return QuantContext(layer_name=name, block_index=0, generator=torch.Generator().manual_seed(0))


def rtn(linear: nn.Linear, **params) -> RTNLinear:
    return RTNQuantizer(RTNConfig(**params)).quantize_linear(linear, None, ctx())


def linear_with(weight: torch.Tensor, bias: bool = False) -> nn.Linear:
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias)
    with torch.no_grad():
        lin.weight.copy_(weight)
    return lin


def on_grid(out: int, inp: int, bits: int, gs: int, seed: int = 0):
    """W exactly on a per-group grid whose codes hit 0 and 2**bits-1 in every group."""
    g = torch.Generator().manual_seed(seed)
    maxq = 2**bits - 1
    groups = inp // gs
    codes = torch.randint(0, maxq + 1, (out, groups, gs), generator=g)
    codes[..., 0], codes[..., -1] = 0, maxq
    zeros = torch.randint(0, maxq + 1, (out, groups, 1), generator=g)
    scales = 2.0 ** -torch.randint(2, 9, (out, groups, 1), generator=g).float()
    W = ((codes - zeros) * scales).reshape(out, inp)
    return W, codes.reshape(out, inp), scales[..., 0].t(), zeros[..., 0].t()


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("gs", [32, -1])
def test_grid_weights_are_reconstructed_exactly(bits: int, gs: int) -> None:
    W, codes, scales, zeros = on_grid(16, 64, bits, 64 if gs == -1 else gs)
    s, z = minmax_grid(W, bits, gs)
    assert torch.equal(s, scales) and torch.equal(z.long(), zeros)
    assert torch.equal(quantize_codes(W, s, z, bits, gs).long(), codes)
    layer = rtn(linear_with(W), bits=bits, group_size=gs)
    assert torch.equal(layer.dequantize(), W)
    assert torch.equal(layer.codes().long(), codes)


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("symmetric", [False, True])
def test_error_bounded_by_half_a_step(bits: int, symmetric: bool) -> None:
    W = torch.randn(24, 128, generator=torch.Generator().manual_seed(bits))
    s, z = minmax_grid(W, bits, 32, symmetric)
    assert s.dtype == torch.float32 and (s > 0).all()
    assert torch.equal(s, s.half().float())  # float16-representable: stored exactly
    codes = quantize_codes(W, s, z, bits, 32)
    assert codes.min() >= 0 and codes.max() <= 2**bits - 1
    err = (dequantize_codes(codes, s, z, 32) - W).abs().reshape(24, 4, 32)
    half_step = s.t().unsqueeze(-1) / 2
    assert (err <= half_step * (1 + 1e-6)).all()
    if symmetric:
        assert (z == 2 ** (bits - 1)).all()
    layer = rtn(linear_with(W), bits=bits, group_size=32, symmetric=symmetric)
    assert torch.equal(layer.dequantize(), dequantize_codes(codes, s, z, 32))
    assert torch.equal(layer.zeros(), z)


def test_symmetric_vs_asymmetric() -> None:
    # All-positive weights: the asymmetric grid uses all levels on [0, max], the symmetric
    # one wastes the negative half, so its error is larger; zero stays exact in both.
    W = torch.rand(8, 64, generator=torch.Generator().manual_seed(1))
    W[:, 0] = 0.0
    asym = rtn(linear_with(W), bits=3, group_size=-1)
    sym = rtn(linear_with(W), bits=3, group_size=-1, symmetric=True)
    assert (asym.zeros() == 0).all() and (sym.zeros() == 4).all()
    err_a = (asym.dequantize() - W).pow(2).sum()
    err_s = (sym.dequantize() - W).pow(2).sum()
    assert err_a < err_s
    assert (asym.dequantize()[:, 0] == 0).all() and (sym.dequantize()[:, 0] == 0).all()


def test_degenerate_groups() -> None:
    W = torch.zeros(4, 64)
    W[1] = 0.3  # constant positive row
    W[2] = -2.0  # constant negative row
    W[3] = 1e-12  # underflows float16
    for symmetric in (False, True):
        layer = rtn(linear_with(W), bits=4, group_size=32, symmetric=symmetric)
        scales = layer.scales.float()
        assert torch.isfinite(scales).all() and (scales > 0).all()
        D = layer.dequantize()
        assert torch.equal(D[0], W[0])
        assert ((D - W).abs() <= scales.t().repeat_interleave(32, dim=1) / 2 * (1 + 1e-6)).all()


def test_group_size_minus_one_is_one_group_per_row() -> None:
    W = torch.randn(10, 96, generator=torch.Generator().manual_seed(2))
    a = rtn(linear_with(W), bits=4, group_size=-1)
    b = rtn(linear_with(W), bits=4, group_size=96)
    assert a.scales.shape == (1, 10) and torch.equal(a.dequantize(), b.dequantize())
    assert a.formula_bits() == pytest.approx(4 + 20 / 96)


def test_invalid_group_size_names_layer_and_sizes() -> None:
    lin = nn.Linear(96, 8)
    with pytest.raises(ValueError, match=r"'blk\.0\.proj'.*in_features=96.*group_size=64"):
        rtn(lin, bits=4, group_size=64)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_measured_bits_equal_closed_form(bits: int) -> None:
    layer = rtn(nn.Linear(576, 576), bits=bits, group_size=64)
    closed_form = bits + (16 + bits) / 64
    assert layer.measured_bits() == pytest.approx(closed_form, abs=1e-6)
    assert layer.formula_bits() == pytest.approx(closed_form, abs=1e-6)
    assert layer.qweight.shape == (576 * bits // 32, 576)
    assert layer.qzeros.shape == (9, 576 * bits // 32) and layer.scales.shape == (9, 576)
    assert [t.name for t in layer.stored_tensors()] == ["qweight", "qzeros", "scales"]
    assert "g_idx" not in layer.state_dict()


@pytest.mark.parametrize(("bits", "out", "inp", "gs", "bias"), [(4, 48, 64, 32, True), (3, 50, 96, 32, False), (2, 7, 40, -1, True)])
def test_state_dict_round_trip(tmp_path, bits: int, out: int, inp: int, gs: int, bias: bool) -> None:
    torch.manual_seed(0)
    layer = rtn(nn.Linear(inp, out, bias=bias), bits=bits, group_size=gs)
    save_file(layer.state_dict(), tmp_path / "layer.safetensors")
    cls = type(layer)
    assert layer_class_path(layer) == "methods.rtn.layer:RTNLinear"
    fresh = cls.from_layer_config(layer.layer_config())
    fresh.load_state_dict(load_file(tmp_path / "layer.safetensors"))
    for key, value in layer.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value) and fresh.state_dict()[key].dtype == value.dtype
    x = torch.randn(3, 5, inp)
    assert torch.equal(fresh(x), layer(x))
    assert fresh.measured_bits() == layer.measured_bits()


def test_forward_matches_dense_and_keeps_dtype() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(64, 32).to(torch.bfloat16)
    layer = rtn(lin, bits=4, group_size=32)
    assert layer.bias.dtype == torch.bfloat16 and lin.weight.dtype == torch.bfloat16
    x = torch.randn(2, 64)
    ref = nn.functional.linear(x, layer.dequantize(), layer.bias.float())
    assert torch.allclose(layer(x), ref, atol=1e-5)
    assert layer(x.bfloat16()).dtype == torch.bfloat16


def test_dtype_cast_keeps_float16_scales_and_drops_cache() -> None:
    torch.manual_seed(0)
    layer = rtn(nn.Linear(64, 32), bits=4, group_size=32)
    x = torch.randn(2, 64)
    y = layer(x)
    scales = layer.scales.clone()
    layer.to(torch.bfloat16)
    assert layer.scales.dtype == torch.float16 and torch.equal(layer.scales, scales)
    assert layer.bias.dtype == torch.bfloat16 and layer._cache is None
    layer.float()
    assert torch.allclose(layer(x), y, atol=1e-2)


def test_load_state_dict_invalidates_cache() -> None:
    torch.manual_seed(0)
    a = rtn(nn.Linear(64, 32, bias=False), bits=4, group_size=32)
    b = rtn(nn.Linear(64, 32, bias=False), bits=4, group_size=32)
    x = torch.randn(2, 64)
    a(x)
    a.load_state_dict(b.state_dict())
    assert torch.equal(a(x), b(x))


def test_input_linear_is_untouched() -> None:
    lin = nn.Linear(64, 16)
    before = lin.weight.detach().clone()
    rtn(lin, bits=2, group_size=32)
    assert torch.equal(lin.weight, before)


def test_gptq_v1_export() -> None:
    W = torch.randn(32, 64, generator=torch.Generator().manual_seed(3))
    layer = rtn(linear_with(W, bias=True), bits=4, group_size=32, symmetric=True)
    sd = layer.to_gptq_state_dict(v1=True)
    # AutoGPTQ's reference dequantization of a v1 checkpoint: scales[g] * (q - (z_stored + 1)[g]).
    q = unpack_rows(sd["qweight"], 4, 64, dim=0)  # [in, out]
    z = unpack_rows(sd["qzeros"], 4, 32, dim=1) + 1
    g = sd["g_idx"].long()
    W_gptq = (sd["scales"].float()[g] * (q - z[g]).float()).t()
    assert torch.equal(W_gptq, layer.dequantize())
    assert torch.equal(sd["g_idx"], torch.arange(64, dtype=torch.int32) // 32)
    assert sd["bias"].dtype == torch.float16
    positive = rtn(linear_with(W.abs()), bits=4, group_size=32)  # zero point 0
    with pytest.raises(ValueError, match="v1=False"):
        positive.to_gptq_state_dict(v1=True)
    assert torch.equal(positive.to_gptq_state_dict(v1=False)["qzeros"], positive.qzeros)


def test_config_validation() -> None:
    assert RTNConfig() == RTNConfig(bits=4, group_size=128, symmetric=False)
    for bad in ({"bits": 0}, {"bits": 9}, {"bits": True}, {"group_size": 0}, {"group_size": -2},
                {"group_size": 2.5}, {"bitz": 4}):
        with pytest.raises(ValidationError):
            RTNConfig(**bad)
    with pytest.raises(ValidationError):
        RTNConfig().bits = 3  # frozen


def test_presets_and_registry() -> None:
    assert get_method("rtn") is RTNQuantizer and get_method("none") is NoQuantizer
    assert RTNQuantizer.supported_budgets() == [2, 3, 4, 8]
    assert RTNQuantizer.presets(2) == {"bits": 2, "group_size": 64}
    assert RTNQuantizer.presets(4) == {"bits": 4, "group_size": 64}  # 64 divides SmolLM2's 576
    assert RTNQuantizer.presets(8) == {"bits": 8, "group_size": -1}
    for budget in (2, 3, 4, 8):
        RTNConfig(**RTNQuantizer.presets(budget))
    with pytest.raises(ValueError, match="1-bit"):
        RTNQuantizer.presets(1)
    assert RTNQuantizer.requires_calibration is False


def test_none_is_the_reference() -> None:
    assert NoQuantizer.modifies_weights is False and NoQuantizer.supported_budgets() == []
    q = NoQuantizer(NoneConfig())
    with pytest.raises(RuntimeError, match="never quantizes"):
        q.quantize_linear(nn.Linear(4, 4), None, ctx())
    with pytest.raises(ValidationError):
        NoneConfig(bits=4)


def test_group_int_linear_with_g_idx_and_partial_last_group(tmp_path) -> None:
    # Act-order layout (as GPTQ will produce): a permuted g_idx, G = ceil(in / group_size).
    g = torch.Generator().manual_seed(4)
    out, inp, gs, bits = 32, 96, 64, 3
    codes = torch.randint(0, 8, (out, inp), generator=g)
    scales = (torch.rand(2, out, generator=g) + 0.01).half().float()
    zeros = torch.randint(0, 8, (2, out), generator=g)
    g_idx = (torch.arange(inp) // gs)[torch.randperm(inp, generator=g)]
    layer = GroupIntLinear.from_codes(codes, scales, zeros, bits=bits, group_size=gs, g_idx=g_idx)
    expected = (codes - zeros[g_idx].t()).float() * scales[g_idx].t()
    assert torch.equal(layer.dequantize(), expected)
    assert [t.name for t in layer.stored_tensors()] == ["qweight", "qzeros", "scales", "g_idx"]
    assert layer.formula_bits() == pytest.approx(bits + (16 + bits) * 2 / inp + 32 / out)
    assert layer.measured_bits() == pytest.approx(layer.formula_bits(), abs=1e-9)  # no padding
    fresh = GroupIntLinear.from_layer_config(layer.layer_config())
    fresh.load_state_dict(layer.state_dict())
    assert torch.equal(fresh.dequantize(), expected)
    with pytest.raises(ValueError, match=r"shape \[G, out\]"):
        GroupIntLinear.from_codes(codes, scales[:1], zeros[:1], bits=bits, group_size=gs)
