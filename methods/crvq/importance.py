"""Channel importance of CRVQ: which input channels get the extended codebooks.

Notation: W [out, in] float32, H [in, in] (input second moment), g = vector length,
b0 = bits of the basic codebook. Rules (a larger score = more critical):
  wa      score_i = mean_o R_oi² · H_ii, R = W - VQ(W), VQ = one-codebook k-means with 2**b0
          centroids on the unscaled vectors of W (length g along the input dim): the output
          error the channel would keep under plain VQ
  wa_max  score_i = max_o R_oi² · H_ii (the paper's max-over-rows variant)
  w       score_i = mean_o |W_oi| (weights only)
  random  a random permutation from the generator (ablation); no scores
"""
from __future__ import annotations

import torch

from methods.aqlm.kmeans import kmeans

__all__ = [
    "HIST_LOG10_EDGES", "IMPORTANCE_RULES", "REORDER_MODES", "channel_order", "critical_first", "importance_scores",
    "score_histogram", "vq_residual",
]

IMPORTANCE_RULES = ("wa", "wa_max", "w", "random")
REORDER_MODES = ("critical_first", "sorted")
#: Bin edges of `score_histogram`: log10 of score / mean score, -4 to 3 in steps of 0.5.
HIST_LOG10_EDGES = tuple(k / 2 for k in range(-8, 7))


def vq_residual(
    W: torch.Tensor, nbits: int, in_group_size: int, *, generator: torch.Generator, iters: int = 10
) -> torch.Tensor:
    """R = W - VQ(W) [out, in] float32: W's vectors of length g (along the input dim) replaced by
    their nearest of 2**nbits k-means centroids fitted on them (plain Euclidean k-means)."""
    out, n_in = W.shape
    vectors = W.float().reshape(-1, in_group_size)
    C, assign = kmeans(vectors, 1 << nbits, generator=generator, iters=iters)
    return (vectors - C[assign]).reshape(out, n_in)


def importance_scores(
    W: torch.Tensor, H: torch.Tensor, rule: str, *, nbits: int, in_group_size: int,
    generator: torch.Generator, iters: int = 10,
) -> torch.Tensor:
    """Score of every input channel for `rule` in {wa, wa_max, w}: float64 [in].

    W [out, in]; H [in, in] (only its diagonal is read); nbits, in_group_size: the basic
    codebook's VQ used by `wa`/`wa_max` (k-means with `iters` Lloyd iterations).
    """
    if rule == "w":
        return W.double().abs().mean(0)
    if rule not in ("wa", "wa_max"):
        raise ValueError(f"importance rule must be one of {IMPORTANCE_RULES} (scores: wa, wa_max, w), got {rule!r}")
    R2 = vq_residual(W, nbits, in_group_size, generator=generator, iters=iters).double().pow(2)
    per_row = R2.mean(0) if rule == "wa" else R2.amax(0)
    return per_row * H.diagonal().double().to(per_row.device)


def channel_order(
    W: torch.Tensor, H: torch.Tensor, rule: str, *, nbits: int, in_group_size: int,
    generator: torch.Generator, iters: int = 10,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(perm int64 [in], scores float64 [in] or None): input channels by descending score (ties
    keep their original order); `random` draws the permutation from `generator` (no scores).
    Column j of the permuted weight is column perm[j] of W."""
    if rule == "random":
        return torch.randperm(W.shape[1], generator=generator).to(W.device), None
    scores = importance_scores(W, H, rule, nbits=nbits, in_group_size=in_group_size, generator=generator, iters=iters)
    return torch.argsort(scores, descending=True, stable=True), scores


def critical_first(order: torch.Tensor, n_critical: int) -> torch.Tensor:
    """The permutation that puts the first `n_critical` channels of `order` (most important
    first) in front, in that order, and keeps every other channel in its original order."""
    head = order[:n_critical]
    rest = torch.ones(order.numel(), dtype=torch.bool, device=order.device)
    rest[head] = False
    return torch.cat([head, rest.nonzero().squeeze(1)])


def score_histogram(scores: torch.Tensor, edges: tuple[float, ...] = HIST_LOG10_EDGES) -> list[int]:
    """Channels per bin of log10(score / mean score) (scores: float [in], >= 0): counts [len(edges) + 1];
    bin 0 holds the channels below 10**edges[0] (zero scores included), bin i those in
    [10**edges[i-1], 10**edges[i]), the last those at or above 10**edges[-1]. Normalising by the
    mean makes layers of any width and scale comparable: a channel of average importance is at 0."""
    s = scores.detach().double().cpu()
    relative = torch.log10(s / s.mean().clamp_min(1e-300))  # -inf for a zero score: bin 0
    bins = torch.bucketize(relative, torch.tensor(edges, dtype=torch.float64), right=True)
    return torch.bincount(bins, minlength=len(edges) + 1).tolist()
