"""Cases for `test_triton_kernels.py`, which runs this file with pytest in a child process under
Triton's interpreter (TRITON_INTERPRET=1 must be set before `triton` is first imported, so it
cannot be switched on inside the main test session). There the layers send CPU tensors to their
Triton kernels, which are checked against the dequantized references: the packed low-bit GEMV
of RTN/GPTQ and the code-gather GEMV of AQLM (1x16, 2x8, 1x8) and CRVQ (basic + extended
codebooks, permutation)."""
from __future__ import annotations

import os

import pytest
import torch

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("run by test_triton_kernels.py under TRITON_INTERPRET=1", allow_module_level=True)
pytest.importorskip("triton")

from methods.aqlm import kernels as vq  # noqa: E402
from methods.aqlm.layer import AQLMLinear  # noqa: E402
from methods.common import kernels as intk  # noqa: E402
from methods.common.intlayer import GroupIntLinear  # noqa: E402
from methods.crvq.layer import CRVQLinear  # noqa: E402


def _rel(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.float() - ref.float()).abs().max() / ref.float().abs().max())


def _int_layer(bits: int, group: int, act_order: bool, bias: bool, out: int = 40, inp: int = 160) -> GroupIntLinear:
    gen = torch.Generator().manual_seed(bits * 10 + act_order)
    groups = 1 if group == -1 else inp // group
    codes = torch.randint(0, 1 << bits, (out, inp), generator=gen)
    zeros = torch.randint(0, 1 << bits, (groups, out), generator=gen)
    scales = torch.rand(groups, out, generator=gen) * 0.1 + 0.01
    g_idx = (torch.argsort(torch.randperm(inp, generator=gen)) // (inp // groups)).int() if act_order else None
    return GroupIntLinear.from_codes(codes, scales, zeros, bits=bits, group_size=group, g_idx=g_idx,
                                     bias=torch.randn(out, generator=gen) if bias else None)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group,act_order", [(32, False), (-1, False), (32, True)])
def test_int_gemv_matches_the_dequantized_reference(bits, group, act_order):
    layer = _int_layer(bits, group, act_order, bias=bits % 2 == 0)
    x = torch.randn(3, 160, generator=torch.Generator().manual_seed(1))
    ref = layer.reference_forward(x)
    y = layer(x)  # the layer dispatches to the kernel under the interpreter
    assert layer.last_path == f"triton-int{bits}-gemv" and y.shape == ref.shape
    assert _rel(y, ref) < 1e-5
    plan = intk.int_plan(layer)
    for split in (2, 3):  # input slices accumulated atomically
        assert _rel(intk.int_gemv(x, plan, split=split, block_k=32), ref) < 1e-5
    half = intk.int_gemv(x.half(), plan)
    assert half.dtype == torch.float16 and _rel(half, layer.reference_forward(x.half().float())) < 2e-3


def _aqlm(nbits, groups=None, out=48, inp=256, bias=True) -> AQLMLinear:
    gen = torch.Generator().manual_seed(len(nbits))
    G = inp // 8
    groups = groups or [None] * len(nbits)
    books = [torch.randn(1 << b, 8, generator=gen) * 0.1 for b in nbits]
    codes = [torch.randint(0, 1 << b, (out, G if g is None else len(g)), generator=gen) for b, g in zip(nbits, groups)]
    return AQLMLinear.from_result(books, codes, [None if g is None else torch.tensor(g) for g in groups], list(nbits),
                                  torch.rand(out, generator=gen) + 0.5, in_features=inp,
                                  bias=torch.randn(out, generator=gen) if bias else None)


def _crvq(out=48, inp=256, n_crit=3) -> CRVQLinear:
    gen = torch.Generator().manual_seed(7)
    G = inp // 8
    books = [torch.randn(256, 8, generator=gen) * 0.1 for _ in range(4)]
    codes = [torch.randint(0, 256, (out, G), generator=gen)] + [torch.randint(0, 256, (out, n_crit), generator=gen)
                                                                 for _ in range(3)]
    return CRVQLinear.from_crvq(books, codes, [8] * 4, torch.rand(out, generator=gen) + 0.5,
                                torch.randperm(inp, generator=gen), n_crit, in_features=inp)


VQ_CASES = {
    "aqlm-1x8": lambda: _aqlm((8,)),
    "aqlm-2x8": lambda: _aqlm((8, 8), bias=False),
    "aqlm-1x16": lambda: _aqlm((16,)),
    "aqlm-6x4": lambda: _aqlm((4,) * 6),  # more codebooks than one launch takes
    "subset-groups": lambda: _aqlm((8, 6), groups=[None, [0, 5, 9]]),
    "crvq": _crvq,
}


@pytest.mark.parametrize("case", VQ_CASES)
def test_vq_gemv_matches_the_dequantized_reference(case):
    layer = VQ_CASES[case]()
    x = torch.randn(2, 256, generator=torch.Generator().manual_seed(3))
    ref = layer.reference_forward(x)
    y = layer(x)
    assert layer.last_path == layer.kernel_path and _rel(y, ref) < 1e-5
    plan = vq.vq_plan(layer)
    for split in (1, 2):  # group slices accumulated atomically
        assert _rel(vq.vq_gemv(x, plan, split=split), ref) < 1e-5
    half = vq.vq_gemv(x.half(), plan)
    assert half.dtype == torch.float16 and _rel(half, layer.reference_forward(x.half().float())) < 2e-3


def test_kernels_serve_decode_batches_only():
    layer = _aqlm((8,))
    layer(torch.randn(layer.kernel_max_tokens + 1, 256))
    assert layer.last_path == "dequantize+matmul"  # tables and kernels lose to one matmul on many tokens
    int_layer = _int_layer(4, 32, False, bias=False)
    int_layer(torch.randn(int_layer.kernel_max_tokens + 1, 160))
    assert int_layer.last_path == "cached-dense-matmul"


def test_crvq_kernel_names_its_path_and_reads_the_permutation():
    layer = _crvq()
    assert layer.kernel_path == "triton-crvq-gemv"
    x = torch.randn(1, 256, generator=torch.Generator().manual_seed(5))
    y = layer(x)
    layer.perm = torch.arange(256, dtype=torch.int32)  # another permutation: another function
    layer.reset_plans()
    assert _rel(layer(x), y) > 1e-2
