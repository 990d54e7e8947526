"""Every format's CPU decode path against its dequantized reference, one layer at a time.

float32: the table lookup (AQLM, CRVQ) and the cached dense weight (RTN, GPTQ) must match
`reference_forward` within 1e-3 max relative error (the acceptance bound; they reach ~1e-6).
bfloat16: RTN/GPTQ run torch's packed int4 kernel, AQLM/CRVQ the float32 tables; both are
compared with the bfloat16 reference.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from bench.formats import FORMATS, _generator

#: The decode path of one token on CPU in float32, by format prefix.
FP32_PATH = {"rtn": "cached-dense-matmul", "gptq": "cached-dense-matmul", "aqlm-1x16": "dequantize+matmul",
             "aqlm": "aqlm-lookup", "crvq": "gather+aqlm-lookup"}


def _layer(fmt: str):
    dense = nn.Linear(256, 96, bias=False)
    nn.init.normal_(dense.weight, std=0.02, generator=torch.Generator().manual_seed(0))
    return FORMATS[fmt](dense, _generator(fmt, 0, torch.device("cpu")))


def _rel(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.float() - ref.float()).abs().max() / ref.float().abs().max())


def _path(fmt: str, table: dict[str, str]) -> str:
    return next(path for prefix, path in table.items() if fmt.startswith(prefix))


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("tokens", [1, 3])
def test_float32_decode_path_matches_the_reference(fmt, tokens):
    layer = _layer(fmt)
    x = torch.randn(tokens, 256, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        y = layer(x)
        assert layer.last_path == _path(fmt, FP32_PATH)
        assert _rel(y, layer.reference_forward(x)) < 1e-3


def test_sixteen_bit_codes_through_the_lookup_path():
    """1x16 decodes by dequantizing on CPU (65,536-entry tables cost more than the weight), but
    its lookup path is exact too."""
    layer = _layer("aqlm-1x16")
    layer.lookup_max_entries = 10**9
    x = torch.randn(2, 256, generator=torch.Generator().manual_seed(2))
    assert _rel(layer(x), layer.reference_forward(x)) < 1e-3 and layer.last_path == "aqlm-lookup"


@pytest.mark.parametrize("fmt", [f for f in FORMATS if f.startswith(("rtn", "gptq", "aqlm-1x8", "aqlm-2x8", "crvq"))])
def test_bfloat16_decode_path(fmt):
    layer = _layer(fmt)
    x = torch.randn(2, 256, generator=torch.Generator().manual_seed(3)).bfloat16()
    with torch.inference_mode():
        y = layer(x)
    assert y.dtype == torch.bfloat16
    expected = "int4pack-mm" if fmt.startswith(("rtn", "gptq")) else _path(fmt, FP32_PATH)
    assert layer.last_path == expected
    assert _rel(y, layer.reference_forward(x)) < 2e-2


def test_int4pack_plan_is_rebuilt_after_load_state_dict():
    a, b = _layer("rtn-4b-g64"), _layer("rtn-2b-g64")
    b = type(a).from_codes(b.codes(), b.scales.float(), b.zeros(), bits=4, group_size=64)  # 2-bit codes, 4-bit layout
    x = torch.randn(1, 256, generator=torch.Generator().manual_seed(4)).bfloat16()
    before = a(x)
    a.load_state_dict(b.state_dict())
    after = a(x)
    assert a.last_path == "int4pack-mm" and not torch.equal(before, after)
    assert _rel(after, b.reference_forward(x)) < 2e-2
