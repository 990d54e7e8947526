"""Bootstrap statistics over evaluation windows (and seeds).

Perplexity is ``exp(mean window NLL)`` over the same fixed evaluation windows for every cell
(every window predicts the same number of tokens), so a record's per-window mean NLLs
(``metrics.perplexity.<dataset>.window_nll``) are all a confidence interval needs: resample
windows with replacement, recompute the perplexity, take percentiles. Two methods evaluated
on the same windows are compared *paired*: both are resampled with the same window indices
(and, with several seeds, the same seed indices), which removes the variation that comes
from which texts happen to be in the evaluation set.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

#: Bootstrap resamples; 2,000 keeps the Monte-Carlo error of a 95% percentile bound < ~1% of the CI width.
DEFAULT_RESAMPLES = 2000
DEFAULT_LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """A point estimate and its percentile-bootstrap confidence interval."""

    value: float
    low: float
    high: float
    level: float = DEFAULT_LEVEL

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class PairedDifference:
    """``against − base`` for perplexity, with bootstrap CIs and a two-sided bootstrap p-value."""

    base: float  # perplexity of the base method (mean over seeds)
    against: float
    delta: Interval  # against − base
    relative: Interval  # (against − base) / base
    p_value: float
    windows: int
    seeds: int
    resamples: int

    @property
    def significant(self) -> bool:
        """True when the CI of the difference excludes zero."""
        return self.delta.low > 0 or self.delta.high < 0

    def to_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["significant"] = self.significant
        return out


def _as_matrix(window_nll: Sequence[float] | Sequence[Sequence[float]]) -> np.ndarray:
    """[seeds, windows] float64 from one list of window NLLs or one list per seed."""
    arr = np.asarray(window_nll, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] == 0 or arr.shape[0] == 0:
        raise ValueError(f"expected window NLLs as [windows] or [seeds, windows], got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("window NLLs must be finite to bootstrap a perplexity interval")
    return arr


def percentiles(samples: np.ndarray, level: float) -> tuple[float, float]:
    """The central ``level`` interval of bootstrap ``samples`` (percentile method)."""
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(samples, [tail, 100.0 - tail])
    return float(low), float(high)


def _resampled_ppl(nll: np.ndarray, window_idx: np.ndarray, seed_idx: np.ndarray | None) -> np.ndarray:
    """Perplexity (mean over the resampled seeds of exp(mean resampled-window NLL)) per resample.

    nll: [S, W]; window_idx: [B, W]; seed_idx: [B, S] or None (all seeds, unresampled)."""
    per_seed = np.exp(nll[:, window_idx].mean(axis=2))  # [S, B]
    if seed_idx is None:
        return per_seed.mean(axis=0)
    return np.take_along_axis(per_seed.T, seed_idx, axis=1).mean(axis=1)  # [B]


def draws(n_windows: int, n_seeds: int, resamples: int, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Bootstrap indices: windows [resamples, windows] and seeds [resamples, seeds] (None for one
    seed), from ``seed``; every statistic resampled with the same ``seed`` uses the same draws."""
    rng = np.random.default_rng(seed)
    window_idx = rng.integers(0, n_windows, size=(resamples, n_windows))
    seed_idx = rng.integers(0, n_seeds, size=(resamples, n_seeds)) if n_seeds > 1 else None
    return window_idx, seed_idx


def perplexity_from_nll(window_nll: Sequence[float] | Sequence[Sequence[float]]) -> float:
    """Perplexity of one record (or the mean over seeds): exp(mean window NLL), averaged over seeds."""
    return float(np.exp(_as_matrix(window_nll).mean(axis=1)).mean())


def perplexity_interval(
    window_nll: Sequence[float] | Sequence[Sequence[float]],
    *,
    level: float = DEFAULT_LEVEL,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> Interval:
    """Perplexity and its bootstrap CI over evaluation windows (and seeds, for [seeds, windows])."""
    nll = _as_matrix(window_nll)
    window_idx, seed_idx = draws(nll.shape[1], nll.shape[0], resamples, seed)
    low, high = percentiles(_resampled_ppl(nll, window_idx, seed_idx), level)
    return Interval(perplexity_from_nll(nll), low, high, level)


def paired_difference(
    base_nll: Sequence[float] | Sequence[Sequence[float]],
    against_nll: Sequence[float] | Sequence[Sequence[float]],
    *,
    level: float = DEFAULT_LEVEL,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> PairedDifference:
    """Paired bootstrap of ``ppl(against) − ppl(base)`` over the same windows (and seeds).

    Both inputs are [windows] or [seeds, windows] with the same windows in the same order;
    with several seeds, row s of both must come from the same seed (same calibration sample).
    """
    base, against = _as_matrix(base_nll), _as_matrix(against_nll)
    if base.shape != against.shape:
        raise ValueError(
            f"paired comparison needs the same windows and seeds on both sides, got {base.shape} vs {against.shape}"
        )
    window_idx, seed_idx = draws(base.shape[1], base.shape[0], resamples, seed)
    base_star = _resampled_ppl(base, window_idx, seed_idx)
    against_star = _resampled_ppl(against, window_idx, seed_idx)
    delta_star = against_star - base_star
    relative_star = delta_star / base_star
    base_ppl, against_ppl = perplexity_from_nll(base), perplexity_from_nll(against)
    # two-sided bootstrap p-value: how often the resampled difference lands on the other side of 0
    share_below = float(np.mean(delta_star <= 0.0))
    share_above = float(np.mean(delta_star >= 0.0))
    p_value = min(1.0, 2.0 * min(share_below, share_above))
    return PairedDifference(
        base=base_ppl,
        against=against_ppl,
        delta=Interval(against_ppl - base_ppl, *percentiles(delta_star, level), level),
        relative=Interval((against_ppl - base_ppl) / base_ppl, *percentiles(relative_star, level), level),
        p_value=p_value,
        windows=int(base.shape[1]),
        seeds=int(base.shape[0]),
        resamples=int(resamples),
    )


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """(mean, sample standard deviation, count) of the finite values; std is NaN for fewer than 2."""
    arr = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if arr.size == 0:
        return math.nan, math.nan, 0
    std = float(arr.std(ddof=1)) if arr.size > 1 else math.nan
    return float(arr.mean()), std, int(arr.size)
