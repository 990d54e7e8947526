"""Weighted k-means (Lloyd), the initialisation of AQLM's codebooks (and CRVQ's plain VQ).

Points X [N, d] with optional per-coordinate weights w [N, d] >= 0: the distance of a point
to a centroid is Σ_d w_d (x_d - c_d)², so a centroid coordinate is its cluster's weighted
mean. Seeding is random (K distinct points) or k-means++; all draws come from the generator
passed in (a CPU generator), whatever the device of X.
"""
from __future__ import annotations

import torch

__all__ = ["kmeans"]


def _nearest(WX: torch.Tensor, Wt: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """Nearest centroid of every point under per-coordinate weights: int64 [N].

    WX = weights ⊙ X and Wt = weights, both [N, d]; the distance Σ_d w_d (x_d - c_d)² is,
    up to a per-point constant, [WX, Wt] · [-2c, c²], one matmul for all centroids C [K, d].
    """
    A = torch.cat([WX, Wt], 1)
    B = torch.cat([-2.0 * C, C.pow(2)], 1).T
    chunk = max(256, (1 << 20) // C.shape[0])  # score blocks that stay in cache
    return torch.cat([(A[a : a + chunk] @ B).argmin(1) for a in range(0, A.shape[0], chunk)])


def kmeans(
    X: torch.Tensor, K: int, *, generator: torch.Generator, iters: int = 50, init: str = "random",
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means on points X [N, d]: (centroids [K, d] float32, assignment int64 [N]).

    weights: optional non-negative [N, d] per-coordinate weights; the distance of a point to a
    centroid is Σ_d w_d (x_d - c_d)² and a centroid coordinate is its cluster's weighted mean.
    init: "random" (K distinct points) or "kmeans++" (K sequential D²-weighted draws; no better
    than random for AQLM's inits in our measurements, and slow for large K).
    With N <= K every point becomes its own centroid (exact) and the remaining K - N entries
    are points drawn with replacement. Empty clusters (and zero-weight coordinates) keep their
    previous centroid values.
    """
    N, d = X.shape
    if N == 0:
        raise ValueError("kmeans: no points to cluster")
    X = X.float()
    dev = X.device
    if N <= K:
        extra = torch.randint(0, N, (K - N,), generator=generator)
        order = torch.cat([torch.randperm(N, generator=generator), extra]).to(dev)
        C = X[order].clone()
        assign = torch.empty(N, dtype=torch.long, device=dev)
        assign[order[:N]] = torch.arange(N, device=dev)
        return C, assign
    Wt = torch.ones_like(X) if weights is None else weights.float().clamp_min(0).reshape(N, d)
    WX = Wt * X
    if init == "random":
        C = X[torch.randperm(N, generator=generator)[:K].to(dev)].clone()
    elif init == "kmeans++":
        C = torch.empty(K, d, device=dev)
        C[0] = X[torch.randint(0, N, (1,), generator=generator).to(dev)]
        wx2 = (WX * X).sum(1)

        def dist(c: torch.Tensor) -> torch.Tensor:
            return (wx2 - 2.0 * (WX @ c) + Wt @ c.pow(2)).clamp_min_(0)

        best = dist(C[0])
        for k in range(1, K):
            if best.sum() <= 0:  # fewer distinct points than K: duplicate random points
                C[k:] = X[torch.randint(0, N, (K - k,), generator=generator).to(dev)]
                break
            C[k] = X[torch.multinomial(best.cpu(), 1, generator=generator).to(dev)]
            torch.minimum(best, dist(C[k]), out=best)
    else:
        raise ValueError(f"kmeans: init must be 'random' or 'kmeans++', got {init!r}")
    assign = _nearest(WX, Wt, C)
    for _ in range(iters):
        num = torch.zeros_like(C).index_add_(0, assign, WX)
        den = torch.zeros_like(C).index_add_(0, assign, Wt)
        C = torch.where(den > 0, num / den.clamp_min(1e-30), C)
        new_assign = _nearest(WX, Wt, C)
        if torch.equal(new_assign, assign):
            break
        assign = new_assign
    return C, assign
