"""CRVQ channel importance: the rules rank a planted critical channel first; permutations."""
from __future__ import annotations

import pytest
import torch

from methods.crvq.importance import channel_order, critical_first, importance_scores, vq_residual


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _layer(out: int = 64, inp: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = _gen(seed)
    W = torch.randn(out, inp, generator=g) * 0.05
    X = torch.randn(inp, 2048, generator=g, dtype=torch.float64) * (torch.rand(inp, 1, generator=g, dtype=torch.float64) + 0.5)
    return W, X @ X.T / 2048


def test_wa_ranks_a_channel_with_large_input_energy_first():
    W, H = _layer()
    H[37, :] *= 30.0
    H[:, 37] *= 30.0  # channel 37 carries 900x the input energy: its residual costs most
    for rule in ("wa", "wa_max"):
        perm, scores = channel_order(W, H, rule, nbits=4, in_group_size=8, generator=_gen())
        assert int(perm[0]) == 37, rule
        assert scores.shape == (64,) and scores.dtype == torch.float64
        assert torch.all(scores[perm[:-1]] >= scores[perm[1:]])  # descending


def test_wa_ranks_a_channel_the_codebook_cannot_fit_first():
    """Same H everywhere; channel 5 holds widely spread weights that a 16-entry codebook
    cannot represent: its residual (hence its `wa` score) is the largest."""
    W, _ = _layer()
    H = torch.eye(64, dtype=torch.float64)
    W[:, 5] = torch.randn(64, generator=_gen(9)) * 2.0
    perm, _ = channel_order(W, H, "wa", nbits=4, in_group_size=8, generator=_gen())
    assert int(perm[0]) == 5


def test_wa_score_is_mean_residual_square_times_h_diagonal():
    W, H = _layer(out=32, inp=16)
    R = vq_residual(W, 3, 4, generator=_gen(1), iters=10)
    expected = R.double().pow(2).mean(0) * H.diagonal()
    got = importance_scores(W, H, "wa", nbits=3, in_group_size=4, generator=_gen(1), iters=10)
    torch.testing.assert_close(got, expected)
    got_max = importance_scores(W, H, "wa_max", nbits=3, in_group_size=4, generator=_gen(1), iters=10)
    torch.testing.assert_close(got_max, R.double().pow(2).amax(0) * H.diagonal())


def test_w_rule_uses_weight_magnitudes_only():
    W, H = _layer()
    W[:, 11] *= 10.0
    H[3, 3] *= 1e6  # ignored by `w`
    perm, scores = channel_order(W, H, "w", nbits=4, in_group_size=8, generator=_gen())
    assert int(perm[0]) == 11
    torch.testing.assert_close(scores, W.double().abs().mean(0))


def test_random_rule_is_a_seeded_permutation():
    W, H = _layer()
    a, sa = channel_order(W, H, "random", nbits=4, in_group_size=8, generator=_gen(3))
    b, _ = channel_order(W, H, "random", nbits=4, in_group_size=8, generator=_gen(3))
    c, _ = channel_order(W, H, "random", nbits=4, in_group_size=8, generator=_gen(4))
    assert sa is None
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert sorted(a.tolist()) == list(range(64))


def test_ties_keep_the_original_order():
    W = torch.ones(4, 16)
    perm, _ = channel_order(W, torch.eye(16, dtype=torch.float64), "w", nbits=2, in_group_size=4, generator=_gen())
    assert perm.tolist() == list(range(16))


def test_unknown_rule_is_rejected():
    W, H = _layer()
    with pytest.raises(ValueError, match="importance rule"):
        importance_scores(W, H, "hessian", nbits=4, in_group_size=8, generator=_gen())


def test_critical_first_keeps_the_other_channels_in_place():
    order = torch.tensor([5, 2, 7, 0, 1, 3, 4, 6])
    assert critical_first(order, 3).tolist() == [5, 2, 7, 0, 1, 3, 4, 6]
    assert critical_first(torch.tensor([6, 1, 0, 2, 3, 4, 5, 7]), 2).tolist() == [6, 1, 0, 2, 3, 4, 5, 7]
    assert critical_first(torch.tensor([3, 0, 1, 2]), 0).tolist() == [0, 1, 2, 3]
