"""AQLM math on small layers with fixed, correlated H: k-means, gradients, code search, the loop."""
from __future__ import annotations

import pytest
import torch

from methods.aqlm.algorithm import (
    CodebookSpec,
    aqlm_quantize,
    code_step,
    error_gradients,
    kmeans,
    output_error,
    reconstruct,
    residual_kmeans_init,
)
from harness.plugin import relative_output_error
from methods.aqlm.layer import AQLMLinear


def _weight(out: int = 48, inp: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(out, inp, generator=g) * 0.05


def _hessian(inp: int = 64, seed: int = 1, tokens: int = 1024) -> torch.Tensor:
    """H = X Xᵀ / n (float64) for correlated inputs with uneven channel scales."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.eye(inp, dtype=torch.float64) + 0.5 * torch.randn(inp, inp, generator=g, dtype=torch.float64)
    scale = torch.rand(inp, generator=g, dtype=torch.float64) * 2 + 0.1
    X = scale[:, None] * (mix @ torch.randn(inp, tokens, generator=g, dtype=torch.float64))
    return X @ X.T / tokens


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _state(W, specs, g=4, seed=0):
    scales = W.norm(dim=1)
    books, codes, groups = residual_kmeans_init(W / scales[:, None], specs, g, generator=_gen(seed), iters=10)
    return books, codes, groups, scales


# ----------------------------------------------------------------------------- k-means
def test_kmeans_fewer_points_than_entries_is_exact():
    X = torch.randn(5, 8, generator=_gen())
    C, assign = kmeans(X, 16, generator=_gen())
    assert C.shape == (16, 8) and assign.shape == (5,)
    assert int(assign.min()) >= 0 and int(assign.max()) < 16
    torch.testing.assert_close(C[assign], X)


@pytest.mark.parametrize("init", ["kmeans++", "random"])
def test_kmeans_assigns_nearest_and_centroids_are_means(init):
    X = torch.randn(500, 4, generator=_gen(3))
    C, assign = kmeans(X, 8, generator=_gen(), iters=100, init=init)
    assert int(assign.min()) >= 0 and int(assign.max()) < 8
    torch.testing.assert_close(assign, torch.cdist(X, C).argmin(1))
    for k in assign.unique().tolist():
        torch.testing.assert_close(C[k], X[assign == k].mean(0), rtol=1e-5, atol=1e-6)


def test_weighted_kmeans_uses_the_weighted_metric():
    X = torch.randn(400, 3, generator=_gen(4))
    w = torch.rand(400, 3, generator=_gen(5)) * torch.tensor([1.0, 10.0, 0.1])
    C, assign = kmeans(X, 6, generator=_gen(), iters=100, weights=w)
    dist = (w[:, None, :] * (X[:, None, :] - C[None]).pow(2)).sum(-1)
    torch.testing.assert_close(dist.gather(1, assign[:, None]).squeeze(1), dist.min(1).values)
    for k in assign.unique().tolist():
        members = assign == k
        mean = (w[members] * X[members]).sum(0) / w[members].sum(0)
        torch.testing.assert_close(C[k], mean, rtol=1e-4, atol=1e-5)


def test_kmeans_with_duplicate_points():
    X = torch.randn(3, 2, generator=_gen()).repeat(20, 1)  # 60 points, 3 distinct
    C, assign = kmeans(X, 8, generator=_gen(), init="kmeans++")
    torch.testing.assert_close(C[assign], X)


def test_residual_init_fits_each_codebook_on_the_residual():
    W = _weight()
    specs = [CodebookSpec(4), CodebookSpec(3)]
    books, codes, groups, scales = _state(W, specs)
    Wn = (W / scales[:, None]).view(48, 16, 4)
    one = reconstruct(books[:1], codes[:1], groups[:1], 48, 16)
    two = reconstruct(books, codes, groups, 48, 16)
    assert (two - Wn).pow(2).sum() < (one - Wn).pow(2).sum()
    assert [c.shape for c in codes] == [(48, 16), (48, 16)]
    assert [b.shape for b in books] == [(16, 4), (8, 4)]


# ------------------------------------------------------------------------ gradients
def test_hand_gradients_match_autograd():
    W, H = _weight(), _hessian().float()
    specs = [CodebookSpec(4), CodebookSpec(3, (1, 5, 6))]
    books, codes, groups, scales = _state(W, specs)
    grads, grad_s, P, _ = error_gradients(W, H, books, codes, groups, scales)
    leaves = [b.clone().requires_grad_(True) for b in books]
    s = scales.clone().requires_grad_(True)
    D = s[:, None] * reconstruct(leaves, codes, groups, 48, 16).view(48, 64) - W
    ((D @ H) * D).sum().backward()
    for grad, leaf in zip(grads, leaves):
        torch.testing.assert_close(grad, leaf.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(grad_s, s.grad, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------ code step
@pytest.mark.parametrize("beam", [1, 3])
def test_code_step_incremental_error_equals_recomputed(beam):
    W, H = _weight(), _hessian()
    specs = [CodebookSpec(4), CodebookSpec(3), CodebookSpec(2, (0, 3, 7))]
    books, codes, groups, scales = _state(W, specs)
    before = output_error(scales[:, None] * reconstruct(books, codes, groups, 48, 16).view(48, 64) - W, H)
    E = code_step(W, H.float(), books, codes, groups, scales, generator=_gen(), beam=beam)
    after = output_error(scales[:, None] * reconstruct(books, codes, groups, 48, 16).view(48, 64) - W, H)
    assert after < before
    assert E == pytest.approx(after, rel=1e-4)
    for c, spec in zip(codes, specs):
        assert int(c.min()) >= 0 and int(c.max()) < 1 << spec.nbits


@pytest.mark.parametrize("beam", [1, 2])
@pytest.mark.parametrize("lazy", [2, 5, 64])
def test_lazy_update_of_P_gives_the_eager_codes(beam, lazy):
    """The pending group changes applied to P in blocks (`lazy_groups`) give the codes and E of
    the update after every group (`lazy_groups=1`), with extended codebooks on some groups too."""
    W, H = _weight(), _hessian()
    specs = [CodebookSpec(4), CodebookSpec(3, (0, 3, 7, 8))]
    books, codes, groups, scales = _state(W, specs)
    eager, lazy_codes = [c.clone() for c in codes], [c.clone() for c in codes]
    E1 = code_step(W, H.float(), books, eager, groups, scales, generator=_gen(), beam=beam, lazy_groups=1)
    E2 = code_step(W, H.float(), books, lazy_codes, groups, scales, generator=_gen(), beam=beam, lazy_groups=lazy)
    assert all(torch.equal(a, b) for a, b in zip(eager, lazy_codes))
    assert E2 == pytest.approx(E1, rel=1e-5)


def test_greedy_code_is_optimal_for_a_single_codebook():
    """With one codebook, one pass is exact coordinate descent: a second pass changes nothing
    except through groups revisited after their neighbours moved, so E can only go down."""
    W, H = _weight(), _hessian()
    books, codes, groups, scales = _state(W, [CodebookSpec(4)])
    E1 = code_step(W, H.float(), books, codes, groups, scales, generator=_gen())
    E2 = code_step(W, H.float(), books, codes, groups, scales, generator=_gen(1))
    assert E2 <= E1 * (1 + 1e-6)


# ------------------------------------------------------------------------ the loop
def _run(W, H, specs, seed=0, **kw):
    kw = {"max_epochs": 6, "steps_per_epoch": 20, "lr": 1e-3, "relative_mse_tolerance": 0.0, **kw}
    return aqlm_quantize(W, H, specs, in_group_size=4, generator=_gen(seed), kmeans_iters=10, **kw)


def test_error_decreases_over_epochs_and_result_is_consistent():
    W, H = _weight(), _hessian()
    res = _run(W, H, [CodebookSpec(5)])
    assert res.epochs == 6 and len(res.history) == 7
    assert all(b <= a * (1 + 1e-6) for a, b in zip(res.history, res.history[1:]))
    assert res.history[-1] < 0.7 * res.history[0]
    assert res.rel_error == pytest.approx(relative_output_error(W, res.weight(4), H), rel=1e-9)
    assert res.rel_error == pytest.approx(min(res.history), rel=1e-2)  # float16 rounding only
    torch.testing.assert_close(res.scales, res.scales.half().float())
    assert int(res.codes[0].min()) >= 0 and int(res.codes[0].max()) < 32


def test_same_seed_gives_identical_codes():
    W, H = _weight(), _hessian()
    specs = [CodebookSpec(4), CodebookSpec(4)]
    a, b = _run(W, H, specs, seed=7, max_epochs=3), _run(W, H, specs, seed=7, max_epochs=3)
    for ca, cb in zip(a.codes, b.codes):
        assert torch.equal(ca, cb)
    for ba, bb in zip(a.codebooks, b.codebooks):
        assert torch.equal(ba, bb)
    c = _run(W, H, specs, seed=8, max_epochs=3)
    assert not all(torch.equal(x, y) for x, y in zip(a.codes, c.codes))


def test_early_stopping_on_relative_improvement():
    W, H = _weight(), _hessian()
    res = _run(W, H, [CodebookSpec(4)], max_epochs=50, relative_mse_tolerance=0.05)
    assert res.epochs < 50
    last, before = res.history[-1], min(res.history[:-1])
    assert (before - last) / before < 0.05


def test_codebooks_restricted_to_a_subset_of_groups():
    """CRVQ-style: a base codebook over all groups plus two extended codebooks over 3 groups."""
    W, H = _weight(), _hessian()
    critical = (2, 9, 13)
    base = _run(W, H, [CodebookSpec(4)])
    crvq = _run(W, H, [CodebookSpec(4), CodebookSpec(4, critical), CodebookSpec(4, critical)])
    assert [tuple(c.shape) for c in crvq.codes] == [(48, 16), (48, 3), (48, 3)]
    assert crvq.groups[0] is None and crvq.groups[1].tolist() == list(critical)
    assert crvq.rel_error < base.rel_error
    layer = AQLMLinear.from_result(crvq.codebooks, crvq.codes, crvq.groups, crvq.nbits, crvq.scales, in_features=64)
    torch.testing.assert_close(layer.dequantize(), crvq.weight(4))
    x = torch.randn(3, 64, generator=_gen(2))
    torch.testing.assert_close(layer(x), x @ crvq.weight(4).T, rtol=1e-4, atol=1e-5)
    expected = (48 * 16 * 4 + 2 * 48 * 3 * 4 + 3 * 16 * 4 * 16 + 48 * 16) / (48 * 64)
    assert layer.measured_bits() == pytest.approx(expected) and layer.formula_bits() == pytest.approx(expected)


def test_extended_codebook_init_fits_few_critical_vectors_exactly():
    """144 critical vectors, 256 entries: the residual k-means reconstructs them exactly."""
    W = _weight()
    critical = (2, 9, 13)
    books, codes, groups, scales = _state(W, [CodebookSpec(4), CodebookSpec(8, critical)])
    Wn = (W / scales[:, None]).view(48, 16, 4)
    B = reconstruct(books, codes, groups, 48, 16)
    torch.testing.assert_close(B[:, list(critical)], Wn[:, list(critical)])
    assert not torch.allclose(B, Wn)


def test_invalid_specs_are_rejected():
    W, H = _weight(), _hessian()
    with pytest.raises(ValueError, match="must divide"):
        aqlm_quantize(W, H, [CodebookSpec(4)], in_group_size=5, generator=_gen())
    with pytest.raises(ValueError, match="first codebook"):
        aqlm_quantize(W, H, [CodebookSpec(4, (0, 1))], in_group_size=4, generator=_gen())
