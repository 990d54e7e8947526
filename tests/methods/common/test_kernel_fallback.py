"""A Triton kernel whose first launch fails (no C compiler for the launcher, a compile error on a
new card) switches itself off with a warning and the packed layers take their torch paths; a
kernel that has launched once raises later errors. The launch is simulated on CPU."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from methods.aqlm import kernels as vq  # noqa: E402
from methods.aqlm import layer as aqlm_layer  # noqa: E402
from methods.aqlm.layer import AQLMLinear  # noqa: E402
from methods.common import intlayer, triton_support  # noqa: E402
from methods.common import kernels as intk  # noqa: E402
from methods.common.intlayer import GroupIntLinear  # noqa: E402


@pytest.fixture
def fresh(monkeypatch):
    """Kernels 'usable' on CPU tensors, and no launch history."""
    monkeypatch.setattr(triton_support, "_launched", set())
    monkeypatch.setattr(triton_support, "_failed", {})
    monkeypatch.setattr(intlayer, "kernels_usable", lambda x: True)
    monkeypatch.setattr(aqlm_layer, "kernels_usable", lambda x: True)


def _int_layer() -> GroupIntLinear:
    gen = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 16, (24, 64), generator=gen)
    zeros = torch.randint(0, 16, (2, 24), generator=gen)
    scales = torch.rand(2, 24, generator=gen) * 0.1 + 0.01
    return GroupIntLinear.from_codes(codes, scales, zeros, bits=4, group_size=32)


def _vq_layer() -> AQLMLinear:
    gen = torch.Generator().manual_seed(1)
    books = [torch.randn(256, 8, generator=gen) * 0.1]
    codes = [torch.randint(0, 256, (24, 8), generator=gen)]
    return AQLMLinear.from_result(books, codes, [None], [8], torch.rand(24, generator=gen) + 0.5, in_features=64)


def _broken(calls: list[int]):
    def launch(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("Failed to find C compiler")

    return launch


@pytest.mark.parametrize("kind", ["int", "vq"])
def test_a_failed_first_launch_falls_back_with_a_warning(fresh, monkeypatch, kind):
    calls: list[int] = []
    if kind == "int":
        layer, fallback = _int_layer(), "cached-dense-matmul"
        monkeypatch.setattr(intk, "int_gemv", _broken(calls))
    else:
        layer, fallback = _vq_layer(), "aqlm-lookup"
        monkeypatch.setattr(vq, "vq_gemv", _broken(calls))
    x = torch.randn(2, 64)
    with pytest.warns(RuntimeWarning, match="failed at its first launch.*C compiler"):
        y = layer(x)
    assert layer.last_path == fallback
    torch.testing.assert_close(y, layer.reference_forward(x), rtol=1e-5, atol=1e-6)
    layer(x)  # switched off: not launched again, no second warning
    assert len(calls) == 1 and len(triton_support.failed_kernels()) == 1


def test_errors_after_a_successful_launch_propagate(fresh, monkeypatch):
    layer = _int_layer()
    state = {"n": 0}

    def flaky(x, plan, **kwargs):
        state["n"] += 1
        if state["n"] > 1:
            raise RuntimeError("illegal memory access")
        return layer.reference_forward(x)

    monkeypatch.setattr(intk, "int_gemv", flaky)
    x = torch.randn(1, 64)
    layer(x)
    assert layer.last_path == "triton-int4-gemv"
    with pytest.raises(RuntimeError, match="illegal memory access"):
        layer(x)
