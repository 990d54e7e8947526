"""`AQLMLinear`: lookup forward, bits, save/load, the aqlm export layout (and the aqlm package)."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from harness.quantizer import import_layer_class, layer_class_path
from methods.aqlm.layer import AQLMLinear, aqlm_formula_bits, aqlm_quantization_config


def _random_layer(out=24, inp=32, g=8, nbits=(8,), groups=None, bias=True, seed=0) -> AQLMLinear:
    gen = torch.Generator().manual_seed(seed)
    G = inp // g
    groups = groups or [None] * len(nbits)
    codebooks = [torch.randn(1 << b, g, generator=gen) * 0.1 for b in nbits]
    codes = [
        torch.randint(0, 1 << b, (out, G if grp is None else len(grp)), generator=gen)
        for b, grp in zip(nbits, groups)
    ]
    grp_t = [None if grp is None else torch.tensor(grp) for grp in groups]
    scales = torch.rand(out, generator=gen) + 0.5
    b = torch.randn(out, generator=gen) if bias else None
    return AQLMLinear.from_result(codebooks, codes, grp_t, list(nbits), scales, in_features=inp, bias=b)


CASES = {
    "1x8": {"nbits": (8,)},
    "2x8": {"nbits": (8, 8), "bias": False},
    "1x16": {"nbits": (16,)},
    "crvq": {"nbits": (8, 6, 6), "groups": [None, [0, 2], [0, 2]]},
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("tokens", [1, 3, 40])
@pytest.mark.parametrize("path", ["lookup", "dequantize", "auto"])
def test_lookup_forward_matches_dequantize(case, tokens, path):
    layer = _random_layer(**CASES[case])
    if path != "auto":
        layer.lookup_max_entries = 10**9 if path == "lookup" else 0
    x = torch.randn(2, tokens, 32, generator=torch.Generator().manual_seed(1))
    ref = torch.nn.functional.linear(x, layer.dequantize(), layer.bias)
    y = layer(x)
    assert y.shape == (2, tokens, 24) and y.dtype == x.dtype
    assert (y - ref).norm() / ref.norm() < 1e-4


def test_dequantize_follows_the_weight_model():
    layer = _random_layer(nbits=(4, 3), groups=[None, [1]])
    W = layer.dequantize()
    o, j = 5, 1
    expected = layer.codebook(0)[layer.codes(0)[o, j]].float() + layer.codebook(1)[layer.codes(1)[o, 0]].float()
    torch.testing.assert_close(W[o, j * 8 : (j + 1) * 8], layer.scales[o].float() * expected)


@pytest.mark.parametrize("case", CASES)
def test_measured_bits_equal_formula(case):
    layer = _random_layer(**CASES[case])
    assert layer.measured_bits() == pytest.approx(layer.formula_bits(), rel=1e-12)
    widths = {t.name: t.bits for t in layer.stored_tensors()}
    assert widths["codes_0"] == CASES[case]["nbits"][0] and widths["codebook_0"] == 16 and widths["scales"] == 16


def test_formula_bits_on_llama2_7b_shapes():
    """Spec reference: AQLM 1x8 g8 on LLaMA-2-7B's linear shapes is 1.0045 bits per weight."""
    shapes = [(4096, 4096)] * 4 + [(11008, 4096)] * 2 + [(4096, 11008)]
    bits = sum(aqlm_formula_bits(o, i, 8, [8]) * o * i for o, i in shapes) / sum(o * i for o, i in shapes)
    assert bits == pytest.approx(1.0045, abs=5e-5)


def test_code_storage_dtypes():
    assert _random_layer(nbits=(8,)).codes_0.dtype == torch.uint8
    wide = _random_layer(nbits=(16,))
    assert wide.codes_0.dtype == torch.int16
    assert int(wide.codes(0).max()) >= 1 << 15  # high codes survive the signed storage


@pytest.mark.parametrize("case", CASES)
def test_save_load_round_trip(case, tmp_path):
    layer = _random_layer(**CASES[case])
    save_file(layer.state_dict(), str(tmp_path / "l.safetensors"))
    cls = import_layer_class(layer_class_path(layer))
    empty = cls.from_layer_config(layer.layer_config())
    empty.load_state_dict(load_file(str(tmp_path / "l.safetensors")))
    x = torch.randn(5, 32)
    torch.testing.assert_close(empty(x), layer(x))
    torch.testing.assert_close(empty.dequantize(), layer.dequantize())


def test_dtype_cast_keeps_float16_storage():
    layer = _random_layer().to(torch.float64)
    assert layer.scales.dtype == torch.float16 and layer.codebook_0.dtype == torch.float16
    x = torch.randn(3, 32, dtype=torch.float64)
    assert layer(x).dtype == torch.float64


def test_invalid_layers_are_rejected():
    with pytest.raises(ValueError, match="must divide"):
        AQLMLinear(30, 4, in_group_size=8, nbits=[8])
    with pytest.raises(ValueError, match="groups"):
        AQLMLinear(32, 4, in_group_size=8, nbits=[8, 8], groups=[None, [4]])
    with pytest.raises(ValueError, match="nbits"):
        AQLMLinear(32, 4, in_group_size=8, nbits=[17])


# ------------------------------------------------------------------------------ export
def _reference_aqlm_weight(state: dict[str, torch.Tensor], nbits: int) -> torch.Tensor:
    """The aqlm package's weight model, written out: scales * Σ_m codebooks[m, codes % 2**b]."""
    codes = state["codes"].long() % (1 << nbits)  # [out, G, M]
    books = state["codebooks"].float()[:, :, 0, :]  # [M, K, g]
    vectors = sum(books[m][codes[..., m]] for m in range(codes.shape[-1]))  # [out, G, g]
    return state["scales"].float().reshape(-1, 1) * vectors.reshape(codes.shape[0], -1)


@pytest.mark.parametrize("case", ["1x8", "2x8", "1x16"])
def test_aqlm_state_dict_layout(case):
    layer = _random_layer(**CASES[case])
    state = layer.to_aqlm_state_dict()
    M, b = len(CASES[case]["nbits"]), CASES[case]["nbits"][0]
    assert state["codes"].shape == (24, 4, M)
    assert state["codes"].dtype == (torch.int8 if b == 8 else torch.int16)
    assert state["codebooks"].shape == (M, 1 << b, 1, 8) and state["codebooks"].dtype == torch.float16
    assert state["scales"].shape == (24, 1, 1, 1)
    torch.testing.assert_close(_reference_aqlm_weight(state, b), layer.dequantize())


def test_aqlm_export_refuses_subset_codebooks():
    with pytest.raises(ValueError, match="cover all input groups"):
        _random_layer(**CASES["crvq"]).to_aqlm_state_dict()


def test_quantization_config_for_transformers():
    layers = {"a": _random_layer(nbits=(8, 8)), "b": _random_layer(nbits=(8, 8))}
    cfg = aqlm_quantization_config(layers, not_quantized=["lm_head"])
    assert cfg == {
        "quant_method": "aqlm", "in_group_size": 8, "out_group_size": 1, "num_codebooks": 2,
        "nbits_per_codebook": 8, "linear_weights_not_to_quantize": ["lm_head", "lm_head.weight"],
    }
    transformers = pytest.importorskip("transformers")
    parsed = transformers.AqlmConfig.from_dict(cfg)
    assert (parsed.num_codebooks, parsed.nbits_per_codebook, parsed.in_group_size) == (2, 8, 8)
    with pytest.raises(ValueError, match="differ"):
        aqlm_quantization_config({"a": layers["a"], "c": _random_layer(nbits=(8,))})


@pytest.mark.parametrize("case", ["1x8", "2x8"])
def test_aqlm_package_loads_the_export(case):
    """Needs `aqlm[cpu]` (numba); skipped where it is not installed.

    aqlm 1.1.7's CPU kernel (numba) accumulates into one output vector from a parallel loop over
    input groups, a data race: with more than one numba thread a few percent of calls return
    wrong outputs. The comparison therefore runs it on one numba thread.
    """
    aqlm = pytest.importorskip("aqlm")
    numba = pytest.importorskip("numba")
    layer = _random_layer(**CASES[case])
    M = len(CASES[case]["nbits"])
    ref = aqlm.QuantizedLinear(32, 24, in_group_size=8, out_group_size=1, num_codebooks=M,
                               nbits_per_codebook=8, bias=layer.bias is not None)
    state = {k: v.float() if v.is_floating_point() else v for k, v in layer.to_aqlm_state_dict().items()}
    ref.load_state_dict(state)
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        for tokens in (1, 9):  # aqlm's gemv and gemm rules (both the numba LUT kernel on CPU)
            x = torch.randn(tokens, 32, generator=torch.Generator().manual_seed(tokens))
            torch.testing.assert_close(ref(x), layer(x), rtol=1e-4, atol=1e-5)
    finally:
        numba.set_num_threads(threads)
