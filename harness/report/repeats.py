"""Repeats and uncertainty in the result tables.

A suite with ``seeds: [0, 1, 2]`` writes one record per (cell, seed). Records whose cell
configs differ only in the seed (the cell's and the calibration sample's) form one *group*;
the results table has one row per group. Column families of the frames (CSV keeps them all;
Markdown and LaTeX merge them into the main column, see :mod:`harness.report.tables`):

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
from harness.record import CellRecord

PPL_PREFIX = "ppl:"
PPL_STD, PPL_LO, PPL_HI = "ppl_std:", "ppl_lo:", "ppl_hi:"
#: Bits per byte of a perplexity evaluation (tokenizer-independent: compares model families).
BPB_PREFIX, BPB_STD = "bpb:", "bpb_std:"
ACC_PREFIX = "acc:"
ACC_STD, ACC_SE = "acc_std:", "acc_se:"
TOK_PREFIX, TOK_MIN, TOK_MAX = "tok/s:", "tok/s_min:", "tok/s_max:"
#: Auxiliary column prefix -> the main column prefix it qualifies.
AUX_PREFIXES = {PPL_STD: PPL_PREFIX, PPL_LO: PPL_PREFIX, PPL_HI: PPL_PREFIX, ACC_STD: ACC_PREFIX,
                ACC_SE: ACC_PREFIX, TOK_MIN: TOK_PREFIX, TOK_MAX: TOK_PREFIX, BPB_STD: BPB_PREFIX}


def record_seed(record: dict[str, Any]) -> int | None:
    """The cell seed of a record (None for records that do not say)."""
    cell = record.get("cell") or {}
    seed = cell.get("seed") if isinstance(cell, dict) else None
    if seed is None:
        seed = ((record.get("environment") or {}).get("seeds") or {}).get("cell")
    return int(seed) if seed is not None else None


def repeat_group(record: dict[str, Any]) -> str:
    """Records with equal groups are repeats of one configuration with other seeds
    (:attr:`harness.record.CellRecord.repeat_group`)."""
    return CellRecord.load(record).repeat_group


def window_nll(record: dict[str, Any], dataset: str) -> list[float] | None:
    """The per-window mean NLLs of a record's perplexity on ``dataset`` (None if not stored)."""
    ppl = ((record.get("metrics") or {}).get("perplexity") or {}).get(dataset)
    values = ppl.get("window_nll") if isinstance(ppl, dict) else None
    return list(values) if values else None


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


def throughput_columns(record: dict[str, Any]) -> dict[str, float]:
    """``tok/s:b<batch>`` (median of the repeats), ``tok/s_min:b<batch>``, ``tok/s_max:b<batch>``."""
    results = ((record.get("metrics") or {}).get("throughput") or {}).get("results") or []
    out: dict[str, float] = {}
    for row in results:
        if not isinstance(row, dict) or row.get("tokens_per_s") is None:
            continue
        b = f"b{row.get('batch_size', 1)}"
        median = float(row["tokens_per_s"])
        out[TOK_PREFIX + b] = median
        out[TOK_MIN + b] = float(row.get("tokens_per_s_min", median))
        out[TOK_MAX + b] = float(row.get("tokens_per_s_max", median))
    return out


def _aggregate_group(rows: pd.DataFrame, records: dict[str, dict[str, Any]]) -> dict[str, Any]:
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
            [window_nll(records[k], dataset) for k in rows["key"]]
        )
    return out


def aggregate_repeats(frame: pd.DataFrame, records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Collapse a per-record frame (one row per record of ``records``, with ``seed`` and ``key``
    columns) into one row per :func:`repeat_group`: ``n`` seeds, means, standard deviations over
    seeds, bootstrap intervals over windows and seeds, ``seeds`` and ``keys`` (space-separated;
    ``key`` is the first seed's). Groups keep the order of their first row; ``seed`` is dropped."""
    by_key = {r["key"]: r for r in records}
    if frame.empty:
        return frame.drop(columns=["seed"]).assign(n=pd.Series(dtype="int64"), seeds="", keys="")
    groups = frame["key"].map(lambda k: repeat_group(by_key[k]))
    rows = []
    for _, group in frame.groupby(groups, sort=False):
        group = group.sort_values("seed", kind="stable", na_position="last")
        rows.append(_aggregate_group(group, by_key))
    out = pd.DataFrame(rows, columns=[*frame.columns, "n", "seeds", "keys"]).drop(columns=["seed"])
    out["n"] = out["n"].astype(int)
    return out
