"""Pareto fronts of (size, quality) points: the non-dominated points (no other point is at most as
large and at least as good, one of them strictly). Pure numpy: drawn by `harness.report.pareto`, the
matched-bits base of `harness.claims.cover`."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["pareto_front", "pareto_indices"]


def pareto_indices(x: Sequence[float], y: Sequence[float], *, minimize_y: bool = True) -> np.ndarray:
    """Indices of the non-dominated points, sorted by x (then y). x is minimised; y minimised
    (``minimize_y``) or maximised. Points with a non-finite coordinate are left out; of equal
    points the first is kept; a point tied in x (or y) with a better one is dominated."""
    xs = np.asarray(x, dtype=np.float64)
    ys = np.asarray(y, dtype=np.float64)
    if xs.shape != ys.shape or xs.ndim != 1:
        raise ValueError(f"x and y must be 1-D of the same length, got shapes {xs.shape} and {ys.shape}")
    idx = np.flatnonzero(np.isfinite(xs) & np.isfinite(ys))
    if idx.size == 0:
        return idx
    cost = ys[idx] if minimize_y else -ys[idx]
    order = np.lexsort((cost, xs[idx]))  # by x, then by cost; stable, so the first of equal points leads
    sorted_cost = cost[order]
    best_before = np.minimum.accumulate(np.concatenate(([np.inf], sorted_cost[:-1])))
    return idx[order[sorted_cost < best_before]]


def pareto_front(points: Sequence[tuple[float, float]], minimize_y: bool = True) -> list[tuple[float, float]]:
    """The non-dominated ``(x, y)`` points sorted by x (x minimised; y minimised, or maximised
    with ``minimize_y=False``); see :func:`pareto_indices`."""
    arr = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return [(float(arr[i, 0]), float(arr[i, 1])) for i in pareto_indices(arr[:, 0], arr[:, 1], minimize_y=minimize_y)]
