"""Result frames: the records of a results store as pandas frames, one row per finished cell
(or per configuration, repeats over seeds aggregated), and the failed cells and evaluations."""
from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd

from harness.columns import (ACC_AVG, ACC_PREFIX, ACC_SE, ACC_STD, BPB_PREFIX, BPB_STD, PPL_HI, PPL_LO, PPL_PREFIX,
                             PPL_STD, TOK_MAX, TOK_MIN, TOK_PREFIX)
from harness.record import CellRecord
from harness.report.repeats import aggregate_repeats, ppl_interval, zero_shot_se_average

__all__ = [
    "aggregate_results", "evaluation_errors_frame", "failures_frame", "params_strings", "records_frame",
    "results_frame", "to_float",
]

#: Frame columns before the per-dataset perplexity columns, and after them.
_HEAD = ["model", "method", "budget", "params", "bits", "bits_paper", "model_bits", "size_mb"]
_TAIL = ["quantize_s", "reference", "key"]
#: Short names for common parameters in the params column.
_ABBREV = {"group_size": "g", "groupsize": "g"}
_MESSAGE_CHARS = 300


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if value is None:
        return "none"
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def params_strings(records: Iterable[CellRecord | dict[str, Any]]) -> dict[str, str]:
    """A short ``"bits=2 g=64"`` per record key: only the params that differ between cells of
    the same method (so a method run once gets an empty string)."""
    by_method: dict[str, list[CellRecord]] = {}
    for r in map(CellRecord.load, records):
        by_method.setdefault(r.method_label, []).append(r)
    out: dict[str, str] = {}
    missing = object()
    for group in by_method.values():
        params = [r.params or {} for r in group]
        names = list(dict.fromkeys(k for p in params for k in p))  # config field order
        varying = [
            k for k in names
            if len({_format_value(p[k]) if k in p else missing for p in params}) > 1
        ]
        for r, p in zip(group, params):
            out[r.key] = " ".join(f"{_ABBREV.get(k, k)}={_format_value(p[k])}" for k in varying if k in p)
    return out


def to_float(value: Any) -> float:
    """A float, NaN for missing; ``inf`` stays ``inf``."""
    try:
        return float(value) if value is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def _throughput_columns(record: CellRecord) -> dict[str, float]:
    """``tok/s:b<batch>`` (median of the repeats), ``tok/s_min:b<batch>``, ``tok/s_max:b<batch>``."""
    out: dict[str, float] = {}
    for batch, (median, low, high) in record.tokens_per_s().items():
        out[TOK_PREFIX + f"b{batch}"], out[TOK_MIN + f"b{batch}"], out[TOK_MAX + f"b{batch}"] = median, low, high
    return out


def records_frame(records: Iterable[CellRecord | dict[str, Any]]) -> pd.DataFrame:
    """One row per ``ok`` record; columns ``model, method, budget, params, seed, bits,
    bits_paper, model_bits, size_mb`` (10^6 bytes); per dataset ``ppl:<dataset>`` with
    ``ppl_std:`` (NaN here), ``ppl_lo:`` and ``ppl_hi:`` (95% bootstrap interval over the
    evaluation windows), and ``bpb:<dataset>`` (bits per UTF-8 byte; NaN for records without
    it) with ``bpb_std:`` (NaN here); per zero-shot task ``acc:<task>`` (a fraction) with ``acc_std:`` (NaN
    here) and ``acc_se:`` (lm-eval's standard error), and ``acc:avg`` (the mean over the tasks
    that some row has; NaN for a row that misses one); per throughput batch size ``tok/s:b<n>``
    with ``tok/s_min:``/``tok/s_max:`` (see :mod:`harness.report.repeats`); ``quantize_s``
    (seconds), then ``reference`` and ``key``.

    Sorted by model, the reference first, then method, then bits descending, then seed.
    """
    ok = [r for r in map(CellRecord.load, records) if r.ok]
    params = params_strings(ok)
    datasets: list[str] = []
    tasks: list[str] = []
    batches: list[str] = []
    rows = []
    for r in ok:
        ppl = r.perplexities
        datasets.extend(d for d in ppl if d not in datasets)
        row = {
            "model": r.model_label,
            "method": r.method_label,
            "budget": r.budget,
            "params": params[r.key],
            "seed": r.seed,
            "bits": to_float(r.bits),
            "bits_paper": to_float(r.metric("bits_paper")),
            "model_bits": to_float(r.metric("model_bits")),
            "size_mb": to_float(r.metric("size_bytes")) / 1e6,
            "quantize_s": to_float((r.timings or {}).get("quantize_s")),
            "reference": r.is_reference,
            "key": r.key,
        }
        for d, v in ppl.items():
            row[PPL_PREFIX + d] = to_float(v.ppl)
            row[PPL_LO + d], row[PPL_HI + d] = ppl_interval([r.window_nll(d)])
            row[BPB_PREFIX + d] = to_float(v.bpb)
        for t, v in r.zero_shot_tasks.items():
            if t not in tasks:
                tasks.append(t)
            row[ACC_PREFIX + t] = to_float(v.acc)
            row[ACC_SE + t] = to_float(v.acc_stderr)
        throughput = _throughput_columns(r)
        batches.extend(c[len(TOK_PREFIX):] for c in throughput if c.startswith(TOK_PREFIX) and c[len(TOK_PREFIX):] not in batches)
        row.update(throughput)
        rows.append(row)
    columns = (
        _HEAD[:4] + ["seed"] + _HEAD[4:]
        + [p + d for d in datasets for p in (PPL_PREFIX, PPL_STD, PPL_LO, PPL_HI, BPB_PREFIX, BPB_STD)]
        + [p + t for t in [*tasks, "avg"] if tasks for p in (ACC_PREFIX, ACC_STD, ACC_SE)]
        + [p + b for b in batches for p in (TOK_PREFIX, TOK_MIN, TOK_MAX)]
        + _TAIL
    )
    frame = pd.DataFrame(rows, columns=columns)
    for d in datasets:  # records from before bpb (or without byte counts) add no bpb columns
        if frame[BPB_PREFIX + d].isna().all():
            frame = frame.drop(columns=[BPB_PREFIX + d, BPB_STD + d])
    if tasks:  # over the tasks some row has (a task that failed everywhere does not blank the average)
        measured = [t for t in tasks if frame[ACC_PREFIX + t].notna().any()]
        if measured:
            frame[ACC_AVG] = frame[[ACC_PREFIX + t for t in measured]].astype(float).mean(axis=1, skipna=False)
            se = frame[[ACC_SE + t for t in measured]].astype(float)
            frame[ACC_SE + "avg"] = [zero_shot_se_average(values) for values in se.to_numpy()]
        else:
            frame[ACC_AVG] = math.nan
    frame["budget"] = frame["budget"].astype("Int64")
    frame["seed"] = frame["seed"].astype("Int64")
    frame["reference"] = frame["reference"].astype(bool)
    if frame.empty:
        return frame
    frame["_order"] = ~frame["reference"]
    frame = frame.sort_values(
        ["model", "_order", "method", "bits", "params", "seed"],
        ascending=[True, True, True, False, True, True],
        na_position="last",
        kind="stable",
    )
    return frame.drop(columns="_order").reset_index(drop=True)


def results_frame(records: Iterable[CellRecord | dict[str, Any]]) -> pd.DataFrame:
    """One row per configuration: the ``ok`` records that differ only by seed are aggregated
    (:func:`harness.report.repeats.aggregate_repeats`). Columns as in :func:`records_frame`,
    with ``n`` (seeds) in place of ``seed``, and ``seeds`` and ``keys`` at the end; numbers
    are means over the seeds, ``ppl_std:``/``acc_std:`` their standard deviations, and the
    perplexity interval is bootstrapped over windows and seeds. ``key`` is the first seed's.

    Sorted by model, the reference first, then method, then bits descending.
    """
    records = [CellRecord.load(r) for r in records]
    return aggregate_results(records_frame(records), records)


def aggregate_results(by_record: pd.DataFrame, records: Sequence[CellRecord | dict[str, Any]]) -> pd.DataFrame:
    """:func:`results_frame` from an already built :func:`records_frame` of ``records``."""
    frame = aggregate_repeats(by_record, records)
    columns = list(frame.columns)
    columns.remove("n")
    columns.insert(columns.index("params") + 1, "n")
    frame = frame[columns].copy()
    if not frame.empty:
        frame["budget"] = frame["budget"].astype("Int64")
        frame["reference"] = frame["reference"].astype(bool)
    return frame.reset_index(drop=True)


def _message(error: Any) -> str:
    """An error message on one line, truncated to :data:`_MESSAGE_CHARS`."""
    message = " ".join(str(error or "").split())
    return message[: _MESSAGE_CHARS - 1] + "…" if len(message) > _MESSAGE_CHARS else message


def failures_frame(records: Iterable[CellRecord | dict[str, Any]]) -> pd.DataFrame:
    """One row per record whose status is not ``ok``: ``cell`` (label), ``params``, ``error``
    (type and first line of the message, truncated) and ``key``."""
    records = [CellRecord.load(r) for r in records]
    params = params_strings(records)
    rows = []
    for r in records:
        if r.ok:
            continue
        message = _message(r.error.message if r.error is not None else None)
        kind = (r.error.type if r.error is not None else None) or "unknown error"
        rows.append({
            "cell": str(r.label or r.key),
            "params": params[r.key],
            "error": f"{kind}: {message}" if message else kind,
            "key": r.key,
        })
    return pd.DataFrame(rows, columns=["cell", "params", "error", "key"])


def evaluation_errors_frame(records: Iterable[CellRecord | dict[str, Any]]) -> pd.DataFrame:
    """One row per evaluation that failed inside an ``ok`` record (e.g. a zero-shot task whose
    dataset is not reachable): ``cell``, ``evaluation`` (``zero_shot:<task>``), ``error``, ``key``."""
    rows = []
    for r in map(CellRecord.load, records):
        if not r.ok:
            continue
        for evaluation, error in r.evaluation_errors():
            rows.append({"cell": str(r.label or r.key), "evaluation": evaluation,
                         "error": f"{error.get('type') or 'error'}: {_message(error.get('message'))}", "key": r.key})
    return pd.DataFrame(rows, columns=["cell", "evaluation", "error", "key"])
