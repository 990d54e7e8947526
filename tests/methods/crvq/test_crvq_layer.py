"""`CRVQLinear`: original-order dequantization, forward paths, the inference form, bits,
save/load, export."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from harness.quantizer import import_layer_class, layer_class_path
from methods.aqlm.layer import AQLMLinear
from methods.crvq.algorithm import crvq_formula_bits
from methods.crvq.layer import CRVQLinear


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _layer(out: int = 24, inp: int = 64, g: int = 8, n_crit: int = 2, ext=(4, 4, 3), bias: bool = True) -> CRVQLinear:
    """A CRVQLinear with random codebooks, codes, scales and permutation."""
    gen = _gen(1)
    nbits = [5, *ext]
    books = [torch.randn(1 << b, g, generator=gen) * 0.1 for b in nbits]
    codes = [torch.randint(0, 1 << nbits[0], (out, inp // g), generator=gen)]
    codes += [torch.randint(0, 1 << b, (out, n_crit), generator=gen) for b in ext]
    scales = torch.rand(out, generator=gen) + 0.5
    perm = torch.randperm(inp, generator=gen)
    b = torch.randn(out, generator=gen) if bias else None
    return CRVQLinear.from_crvq(books, codes, nbits, scales, perm, n_crit, in_features=inp, bias=b)


def _permuted_reference(layer: CRVQLinear) -> torch.Tensor:
    """Ŵp from the stored tensors, by the weight model of the module docstring."""
    g, G = layer.in_group_size, layer.num_groups
    B = layer.codebook(0).float()[layer.codes(0)]  # [out, G, g]
    for m in range(1, layer.num_codebooks):
        B[:, : layer.n_crit] += layer.codebook(m).float()[layer.codes(m)]
    return layer.scales.float()[:, None] * B.reshape(layer.out_features, G * g)


def test_dequantize_is_in_the_original_column_order():
    layer = _layer()
    Wp = _permuted_reference(layer)
    W = layer.dequantize()
    perm = layer.perm.long()
    torch.testing.assert_close(W[:, perm], Wp)
    torch.testing.assert_close(layer.dequantize_permuted(), Wp)


@pytest.mark.parametrize("tokens", [1, 2, 3, 40])
def test_forward_equals_the_dense_weight(tokens):
    layer = _layer()
    x = torch.randn(tokens, 64, generator=_gen(2))
    expected = x @ layer.dequantize().T + layer.bias
    got = layer(x)
    assert torch.linalg.norm(got - expected) <= 1e-4 * torch.linalg.norm(expected)
    x3 = x.reshape(1, tokens, 64)
    torch.testing.assert_close(layer(x3), got.reshape(1, tokens, -1), rtol=1e-5, atol=1e-6)


def test_forward_paths_agree_and_lookup_is_used_for_one_token():
    layer = _layer()
    x = torch.randn(1, 64, generator=_gen(3))
    lookup = layer(x)
    layer.lookup_max_entries = 0  # force the dense path
    torch.testing.assert_close(layer(x), lookup, rtol=1e-5, atol=1e-6)


def test_split_is_the_spec_inference_form():
    layer = _layer()
    perm, base, extended = layer.split()
    assert isinstance(base, AQLMLinear) and isinstance(extended, AQLMLinear)
    assert (base.in_features, base.num_codebooks) == (64, 1)
    assert (extended.in_features, extended.num_codebooks) == (layer.n_crit * 8, 3)
    x = torch.randn(5, 64, generator=_gen(4))
    xp = x[:, perm]
    y = base(xp) + extended(xp[:, : layer.n_crit * 8])
    torch.testing.assert_close(y, layer(x), rtol=1e-4, atol=1e-5)


def test_bits_measured_equals_formula_and_paper_excludes_the_permutation():
    layer = _layer(out=24, inp=64, g=8, n_crit=2, ext=(4, 4, 3))
    stored = (24 * 8 * 5 + 24 * 2 * (4 + 4 + 3)  # codes
              + (32 + 16 + 16 + 8) * 8 * 16      # codebooks
              + 24 * 16                          # scales
              + 64 * 6)                          # permutation: ceil(log2 64) = 6 bits per entry
    assert layer.stored_bits() == stored
    assert layer.measured_bits() == pytest.approx(layer.formula_bits(), rel=1e-12)
    assert layer.paper_bits() == pytest.approx((stored - 64 * 6) / (24 * 64), rel=1e-12)
    assert layer.formula_bits() == pytest.approx(crvq_formula_bits(24, 64, 8, 5, [4, 4, 3], 2), rel=1e-12)


def test_formula_on_the_reference_layer_shape():
    """576x576, 1x8 g8 basic + 3 extended 8-bit codebooks, ratio 0.02 -> n_crit = 1 group."""
    assert crvq_formula_bits(576, 576, 8, 8, [8, 8, 8], 1, permutation=False) == pytest.approx(1.464506, abs=1e-6)
    assert crvq_formula_bits(576, 576, 8, 8, [8, 8, 8], 1) == pytest.approx(1.464506 + 10 / 576, abs=1e-6)


def test_save_and_load_through_the_layer_config():
    layer = _layer()
    config = layer.layer_config()
    assert config["n_crit"] == 2 and config["extended_nbits"] == [4, 4, 3]
    empty = import_layer_class(layer_class_path(layer)).from_layer_config(config)
    assert isinstance(empty, CRVQLinear)
    empty.load_state_dict(layer.state_dict())
    x = torch.randn(3, 64, generator=_gen(5))
    torch.testing.assert_close(empty(x), layer(x))
    assert empty.measured_bits() == layer.measured_bits()


def test_dtype_casts_keep_the_stored_tensors():
    layer = _layer().to(torch.float64)
    assert layer.codebook(1).dtype == torch.float16 and layer.scales.dtype == torch.float16
    assert layer.perm.dtype == torch.int32
    x = torch.randn(2, 64, dtype=torch.float64, generator=_gen(6))
    assert layer(x).dtype == torch.float64


def test_aqlm_layout_export():
    layer = _layer(ext=(4, 4, 4))
    tensors = layer.to_aqlm_state_dicts()
    assert tensors["perm"]["perm"].tolist() == layer.perm.tolist()
    assert list(tensors["base"]["codes"].shape) == [24, 8, 1]
    assert list(tensors["extended"]["codes"].shape) == [24, 2, 3]
    assert list(tensors["extended"]["codebooks"].shape) == [3, 16, 1, 8]
    torch.testing.assert_close(tensors["extended"]["scales"], tensors["base"]["scales"])
    assert "bias" in tensors["base"] and "bias" not in tensors["extended"]
    with pytest.raises(ValueError, match="one bit width"):
        _layer(ext=(4, 3)).to_aqlm_state_dicts()


def test_bad_geometry_is_rejected():
    with pytest.raises(ValueError, match="n_crit"):
        CRVQLinear(64, 8, in_group_size=8, nbits=4, extended_nbits=[4], n_crit=0)
    with pytest.raises(ValueError, match="n_crit"):
        CRVQLinear(64, 8, in_group_size=8, nbits=4, extended_nbits=[4], n_crit=9)
    layer = _layer()
    with pytest.raises(ValueError, match="permutation"):
        CRVQLinear.from_crvq(
            [layer.codebook(m).float() for m in range(4)], [layer.codes(m) for m in range(4)], layer.nbits,
            layer.scales.float(), torch.zeros(64, dtype=torch.long), 2, in_features=64,
        )


def test_is_found_as_an_aqlm_layer_inside_a_module():
    block = nn.Sequential(_layer(), nn.ReLU())
    assert [type(m).__name__ for m in block.modules() if isinstance(m, AQLMLinear)] == ["CRVQLinear"]


def _aqlm_layer_output(tensors: dict, prefix: str, x: torch.Tensor) -> torch.Tensor:
    """y of one layer in the aqlm layout (codes [out, G, M], codebooks [M, K, 1, g], scales)."""
    codes = tensors[f"{prefix}.codes"].long()
    books = tensors[f"{prefix}.codebooks"].float()[:, :, 0, :]  # [M, K, g]
    K = books.shape[1]
    codes = codes % K  # two's complement -> unsigned code
    W = sum(books[m][codes[:, :, m]] for m in range(books.shape[0]))  # [out, G, g]
    W = tensors[f"{prefix}.scales"].float().reshape(-1, 1) * W.reshape(W.shape[0], -1)
    y = x @ W.T
    if f"{prefix}.bias" in tensors:
        y = y + tensors[f"{prefix}.bias"].float()
    return y


def test_export_checkpoint_is_the_inference_form(tmp_path):
    from safetensors.torch import load_file

    from methods.crvq.export import export_crvq_checkpoint

    model = nn.Sequential(_layer(ext=(4, 4, 4)), nn.ReLU())
    qconfig = export_crvq_checkpoint(model, tmp_path, dtype=torch.float32)
    assert qconfig["quant_method"] == "crvq" and qconfig["layers"]["0"]["n_crit"] == 2
    tensors = load_file(str(tmp_path / "model.safetensors"))
    assert {"0.perm", "0.base.codes", "0.base.codebooks", "0.base.scales", "0.base.bias", "0.extended.codes",
            "0.extended.codebooks", "0.extended.scales"} == set(tensors)
    x = torch.randn(4, 64, generator=_gen(7))
    xp = x[:, tensors["0.perm"].long()]
    y = _aqlm_layer_output(tensors, "0.base", xp) + _aqlm_layer_output(tensors, "0.extended", xp[:, :16])
    torch.testing.assert_close(y, model[0](x), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="no CRVQLinear"):
        export_crvq_checkpoint(nn.Sequential(nn.Linear(4, 4)), tmp_path / "none")
