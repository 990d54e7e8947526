"""Repeats and uncertainty in the result tables.

A suite with ``seeds: [0, 1, 2]`` writes one record per (cell, seed). Records whose cell
configs differ only in the seed (the cell's and the calibration sample's) form one *group*
(:attr:`harness.record.CellRecord.repeat_group`); the results table has one row per group.
Column families of the frames (names in :mod:`harness.columns`; CSV keeps them all; Markdown
and LaTeX merge them into the main column, see :mod:`harness.report.display`):

- ``ppl:<ds>`` perplexity (mean over seeds), ``ppl_std:<ds>`` its standard deviation over
  seeds (NaN for one seed), ``ppl_lo:<ds>``/``ppl_hi:<ds>`` the 95% percentile-bootstrap
  interval over evaluation windows (and seeds), from the records' per-window NLLs
  (:func:`harness.analysis.stats.perplexity_interval`);
- ``acc:<task>`` accuracy as a fraction (mean over seeds), ``acc_std:<task>`` its standard
  deviation over seeds, ``acc_se:<task>`` lm-eval's standard error of one run (root mean
  square over seeds); ``acc:avg`` likewise, its standard error ``sqrt(sum se_t^2) / tasks``;
- ``tok/s:b<batch>`` decode tokens/s per sequence (median of the timed repeats, mean over
  seeds), ``tok/s_min:b<batch>``/``tok/s_max:b<batch>`` the slowest and fastest repeat.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from harness.analysis.stats import perplexity_interval
from harness.columns import (ACC_PREFIX, ACC_SE, ACC_STD, BPB_PREFIX, BPB_STD, PPL_HI, PPL_LO, PPL_PREFIX, PPL_STD,
                             TOK_MAX, TOK_MIN, TOK_PREFIX)
from harness.record import CellRecord

__all__ = ["aggregate_repeats", "ppl_interval", "zero_shot_se_average"]


def ppl_interval(windows: Sequence[Sequence[float] | None]) -> tuple[float, float]:
    """95% bootstrap interval of the perplexity from one window-NLL list per seed; NaNs when a
    seed lacks them, their lengths differ or an NLL is not finite (a diverged model)."""
    if not windows or any(w is None for w in windows) or len({len(w) for w in windows}) != 1:
        return math.nan, math.nan
    try:
        interval = perplexity_interval([list(w) for w in windows])
    except ValueError:
        return math.nan, math.nan
    return interval.low, interval.high


def zero_shot_se_average(se: Iterable[float]) -> float:
    """Standard error of the mean accuracy over tasks (independent tasks): sqrt(sum se^2) / tasks."""
    values = np.asarray(list(se), dtype=np.float64)
    if values.size == 0 or not np.isfinite(values).all():
        return math.nan
    return float(np.sqrt((values**2).sum()) / values.size)


def _aggregate_group(rows: pd.DataFrame, records: dict[str, CellRecord]) -> dict[str, Any]:
    """One results row from the per-record rows of one group (sorted by seed)."""
    first = rows.iloc[0]
    out: dict[str, Any] = first.to_dict()
    n = len(rows)
    out["n"] = n
    seeds = [s for s in rows["seed"] if s is not None and not pd.isna(s)]
    out["seeds"] = " ".join(str(int(s)) for s in seeds)
    out["keys"] = " ".join(rows["key"])
    if n == 1:
        return out
    for column in rows.columns:
        if column.startswith((TOK_MIN,)):
            out[column] = rows[column].min()
        elif column.startswith((TOK_MAX,)):
            out[column] = rows[column].max()
        elif column.startswith(ACC_SE):
            values = rows[column].astype(float)
            out[column] = float(np.sqrt((values**2).mean())) if values.notna().all() else math.nan
        elif column.startswith((PPL_PREFIX, ACC_PREFIX, BPB_PREFIX)):
            values = rows[column].astype(float)
            out[column] = values.mean()
            std_prefix = {PPL_PREFIX: PPL_STD, ACC_PREFIX: ACC_STD, BPB_PREFIX: BPB_STD}[column.split(":", 1)[0] + ":"]
            std_column = std_prefix + column.split(":", 1)[1]
            finite = values[np.isfinite(values)]
            out[std_column] = float(finite.std(ddof=1)) if len(finite) == n else math.nan
        elif column in ("bits", "bits_paper", "model_bits", "size_mb", "quantize_s") or column.startswith(TOK_PREFIX):
            out[column] = rows[column].astype(float).mean()
    for column in [c for c in rows.columns if c.startswith(PPL_PREFIX)]:
        dataset = column[len(PPL_PREFIX):]
        out[PPL_LO + dataset], out[PPL_HI + dataset] = ppl_interval(
            [records[k].window_nll(dataset) for k in rows["key"]]
        )
    return out


def aggregate_repeats(frame: pd.DataFrame, records: Iterable[CellRecord]) -> pd.DataFrame:
    """Collapse a per-record frame (one row per record of ``records``, with ``seed`` and ``key``
    columns) into one row per :attr:`CellRecord.repeat_group`: ``n`` seeds, means, standard deviations over
    seeds, bootstrap intervals over windows and seeds, ``seeds`` and ``keys`` (space-separated;
    ``key`` is the first seed's). Groups keep the order of their first row; ``seed`` is dropped."""
    by_key = {r.key: r for r in map(CellRecord.load, records)}
    if frame.empty:
        return frame.drop(columns=["seed"]).assign(n=pd.Series(dtype="int64"), seeds="", keys="")
    groups = frame["key"].map(lambda k: by_key[k].repeat_group)
    rows = []
    for _, group in frame.groupby(groups, sort=False):
        group = group.sort_values("seed", kind="stable", na_position="last")
        rows.append(_aggregate_group(group, by_key))
    out = pd.DataFrame(rows, columns=[*frame.columns, "n", "seeds", "keys"]).drop(columns=["seed"])
    out["n"] = out["n"].astype(int)
    return out
