"""CRVQ math: critical region size, codebook layout, bits formulas, the quantization loop."""
from __future__ import annotations

import pytest
import torch

from harness.plugin import relative_output_error
from methods.aqlm.algorithm import CodebookSpec, aqlm_quantize
from methods.crvq.algorithm import (
    critical_group_count,
    crvq_formula_bits,
    crvq_quantize,
    crvq_specs,
    permutation_bits,
    permute_layer,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _layer(out: int = 48, inp: int = 128, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """W and a correlated H whose first 8 channels carry most of the input energy."""
    g = _gen(seed)
    W = torch.randn(out, inp, generator=g) * 0.05
    mix = torch.eye(inp, dtype=torch.float64) + 0.3 * torch.randn(inp, inp, generator=g, dtype=torch.float64)
    scale = torch.rand(inp, generator=g, dtype=torch.float64) + 0.2
    scale[torch.randperm(inp, generator=g)[:8]] *= 12.0  # planted critical channels
    X = scale[:, None] * (mix @ torch.randn(inp, 2048, generator=g, dtype=torch.float64))
    return W, X @ X.T / 2048


@pytest.mark.parametrize(
    "inp, ratio, g, expected",
    [(576, 0.02, 8, 1), (4096, 0.02, 8, 10), (11008, 0.02, 8, 27), (64, 0.02, 8, 0), (400, 0.02, 8, 1),
     (128, 0.1, 8, 1), (128, 0.0, 8, 0), (128, 1.0, 8, 16)],
)
def test_critical_group_count(inp, ratio, g, expected):
    assert critical_group_count(inp, ratio, g) == expected


def test_specs_put_the_extended_codebooks_on_the_critical_groups():
    assert crvq_specs(8, [8, 6], 3) == [CodebookSpec(8), CodebookSpec(8, (0, 1, 2)), CodebookSpec(6, (0, 1, 2))]
    assert crvq_specs(8, [8, 8, 8], 0) == [CodebookSpec(8)]


def test_formula_bits():
    out, inp = 4096, 11008
    n = critical_group_count(inp, 0.02, 8)
    paper = (out * inp / 8 * 8 + 3 * out * n * 8 + 4 * 256 * 8 * 16 + out * 16) / (out * inp)
    assert crvq_formula_bits(out, inp, 8, 8, [8, 8, 8], n, permutation=False) == pytest.approx(paper, rel=1e-12)
    assert permutation_bits(inp) == inp * 14
    assert crvq_formula_bits(out, inp, 8, 8, [8, 8, 8], n) == pytest.approx(paper + 14 / out, rel=1e-12)
    # no critical group: plain one-codebook VQ, no permutation
    assert crvq_formula_bits(32, 64, 8, 8, [8, 8, 8], 0) == pytest.approx((32 * 8 * 8 + 256 * 8 * 16 + 32 * 16) / (32 * 64))


def test_permute_layer_preserves_the_output_error():
    W, H = _layer()
    perm = torch.randperm(128, generator=_gen(2))
    Wp, Hp = permute_layer(W, H, perm)
    W_hat = W + 0.01 * torch.randn(W.shape, generator=_gen(3))
    Wp_hat, _ = permute_layer(W_hat, H, perm)
    assert relative_output_error(Wp, Wp_hat, Hp) == pytest.approx(relative_output_error(W, W_hat, H), rel=1e-9)


def _run(W, H, seed=0, **kw):
    params = dict(nbits=6, extended_nbits=[6, 6], critical_ratio=0.0625, importance="wa", in_group_size=8,
                  max_epochs=4, steps_per_epoch=20, relative_mse_tolerance=0.0, kmeans_iters=10,
                  importance_kmeans_iters=10)
    params.update(kw)
    return crvq_quantize(W, H, generator=_gen(seed), **params)


def test_crvq_beats_plain_vq_and_reports_its_error():
    W, H = _layer()
    result = _run(W, H)
    assert result.n_crit == 1 and not result.fallback
    assert sorted(result.perm.tolist()) == list(range(128))
    assert [grp is None for grp in result.aqlm.groups] == [True, False, False]
    assert result.aqlm.rel_error == pytest.approx(relative_output_error(W, result.weight(8), H), rel=1e-6)
    plain = aqlm_quantize(W, H, [CodebookSpec(6)], in_group_size=8, generator=_gen(0), max_epochs=4,
                          steps_per_epoch=20, relative_mse_tolerance=0.0, kmeans_iters=10)
    assert result.aqlm.rel_error < 0.8 * plain.rel_error


def test_wa_puts_the_planted_channels_in_the_critical_region():
    W, H = _layer()
    result = _run(W, H)
    energetic = set(torch.topk(H.diagonal(), 8).indices.tolist())
    assert len(energetic & set(result.perm[:8].tolist())) >= 6


@pytest.mark.parametrize("reorder", ["critical_first", "sorted"])
def test_reorder_modes(reorder):
    W, H = _layer()
    result = _run(W, H, reorder=reorder)
    ranked = torch.argsort(result.scores, descending=True, stable=True)
    assert torch.equal(result.perm[:8], ranked[:8])  # the critical channels, most important first
    rest = result.perm[8:]
    if reorder == "sorted":
        assert torch.equal(rest, ranked[8:])
    else:
        assert torch.all(rest[1:] > rest[:-1])  # original order
    with pytest.raises(ValueError, match="reorder"):
        _run(W, H, reorder="shuffled")


def test_narrow_layer_falls_back_to_plain_vq():
    W, H = _layer(inp=64)
    result = _run(W, H, critical_ratio=0.02)
    assert result.fallback and result.n_crit == 0 and result.scores is None
    assert torch.equal(result.perm, torch.arange(64))
    assert len(result.aqlm.codebooks) == 1


def test_same_seed_same_codes_and_permutation():
    W, H = _layer()
    a, b = _run(W, H, seed=5), _run(W, H, seed=5)
    assert torch.equal(a.perm, b.perm)
    for x, y in zip(a.aqlm.codes + a.aqlm.codebooks, b.aqlm.codes + b.aqlm.codebooks):
        assert torch.equal(x, y)
    c = _run(W, H, seed=5, importance="random")
    d = _run(W, H, seed=6, importance="random")
    assert not torch.equal(c.perm, d.perm)


def test_group_size_must_divide():
    W, H = _layer(inp=60)
    with pytest.raises(ValueError, match="in_group_size"):
        _run(W, H)
