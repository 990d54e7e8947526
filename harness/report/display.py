"""Display strings of result frames: numbers formatted per column, uncertainty merged into its
main column (``mean ± std``, ``[lo, hi]``, ``(min–max)``), and Markdown tables of them."""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import pandas as pd

from harness.columns import (ACC_PREFIX, ACC_SE, ACC_STD, AUX_PREFIXES, BPB_PREFIX, BPB_STD, PPL_HI, PPL_LO,
                             PPL_PREFIX, PPL_STD, TOK_MAX, TOK_MIN, TOK_PREFIX)
from harness.report.style import ACC_SPEC, BITS_SPEC, BPB_SPEC, PPL_SPEC, fmt_cell, is_missing

__all__ = ["display", "markdown_table", "uncertainty_legend"]

#: Columns that only the CSV carries (bookkeeping).
HIDDEN = {"reference", "key", "keys", "seeds"}
#: Left-aligned text columns.
TEXT = {"model", "method", "params"}


def _fmt(column: str) -> Callable[[Any], str]:
    """The display formatter of a frame column (missing values become ``-``)."""
    if column in ("bits", "bits_paper", "model_bits"):
        spec = BITS_SPEC
    elif column.startswith(PPL_PREFIX):
        spec = PPL_SPEC
    elif column.startswith(BPB_PREFIX):
        spec = BPB_SPEC
    elif column.startswith(ACC_PREFIX):  # percent
        spec = ACC_SPEC
    elif column == "size_mb":  # 10^6 bytes
        spec = "{:.2f}"
    elif column == "quantize_s" or column.startswith(TOK_PREFIX):
        spec = "{:.1f}"
    else:
        spec = "{}"

    def fmt(value: Any) -> str:
        if column.startswith(ACC_PREFIX) and not is_missing(value):
            value = 100 * value
        return fmt_cell(value, spec)

    return fmt


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _with_uncertainty(frame: pd.DataFrame, column: str) -> list[str]:
    """Display strings of a ``ppl:``/``acc:``/``tok/s:`` column with its uncertainty merged in:
    ``mean ± std`` over seeds (n > 1) or, for a single zero-shot run, ``acc ± stderr``;
    ``[lo, hi]`` the perplexity's bootstrap interval; ``(min–max)`` the throughput repeats."""
    fmt = _fmt(column)
    prefix, name = column.split(":", 1)
    prefix += ":"
    aux = {p: frame[p + name] if p + name in frame else None for p, main in AUX_PREFIXES.items() if main == prefix}
    n = frame["n"] if "n" in frame else pd.Series(1, index=frame.index)
    out = []
    for i, value in enumerate(frame[column]):
        text = fmt(value)
        at = {p: (None if series is None else series.iloc[i]) for p, series in aux.items()}
        if text == "-" or not _finite(value):
            out.append(text)
            continue
        std = at.get({PPL_PREFIX: PPL_STD, BPB_PREFIX: BPB_STD}.get(prefix, ACC_STD))
        if n.iloc[i] > 1 and _finite(std):
            text += f" ± {fmt(std)}"
        elif n.iloc[i] == 1 and prefix == ACC_PREFIX and _finite(at.get(ACC_SE)):
            text += f" ± {fmt(at[ACC_SE])}"
        if prefix == PPL_PREFIX and _finite(at.get(PPL_LO)) and _finite(at.get(PPL_HI)):
            text += f" [{fmt(at[PPL_LO])}, {fmt(at[PPL_HI])}]"
        if prefix == TOK_PREFIX and _finite(at.get(TOK_MIN)) and _finite(at.get(TOK_MAX)):
            text += f" ({fmt(at[TOK_MIN])}–{fmt(at[TOK_MAX])})"
        out.append(text)
    return out


def display(frame: pd.DataFrame, drop_empty: Iterable[str], hidden: Iterable[str] = HIDDEN) -> pd.DataFrame:
    """String cells; ``hidden`` columns dropped, and ``drop_empty`` columns when all empty.
    Uncertainty columns are merged into their main column (:func:`_with_uncertainty`); ``n``
    is shown only when some row has repeats."""
    aux = [c for c in frame.columns if c.startswith(tuple(AUX_PREFIXES))]
    shown = frame.drop(columns=[c for c in frame.columns if c in set(hidden) or c in aux])
    for c in drop_empty:
        if c in shown and (shown[c].isna() | (shown[c].astype(str) == "")).all():
            shown = shown.drop(columns=c)
    if "n" in shown and not (shown["n"] > 1).any():
        shown = shown.drop(columns="n")
    if "seed" in shown and shown["seed"].isna().all():
        shown = shown.drop(columns="seed")
    merged = (PPL_PREFIX, ACC_PREFIX, TOK_PREFIX, BPB_PREFIX)
    return pd.DataFrame(
        {c: _with_uncertainty(frame, c) if c.startswith(merged) else [_fmt(c)(v) for v in shown[c]] for c in shown.columns},
        columns=shown.columns,
    )


def uncertainty_legend(results: pd.DataFrame) -> str:
    """One sentence explaining the ``±``, ``[lo, hi]`` and ``(min–max)`` shown ('' if none)."""
    n = results["n"] if "n" in results else pd.Series(1, index=results.index)
    repeats = bool((n > 1).any())

    def has(prefix: str) -> bool:
        return any(results[c].notna().any() for c in results.columns if c.startswith(prefix))

    parts = []
    if repeats:
        parts.append("`mean ± std` over the `n` seeds of a row")
    if has(ACC_SE) and (n == 1).any():
        parts.append("zero-shot accuracy of a single run: `acc ± stderr` (lm-eval's standard error)")
    if has(PPL_LO):
        parts.append("perplexity `[lo, hi]`: 95% bootstrap confidence interval over the evaluation windows"
                     + (" and seeds" if repeats else ""))
    if has(TOK_PREFIX):
        parts.append("decode tokens/s per sequence (`tok/s:b<batch>`): median of the timed repeats "
                     "`(slowest–fastest)`" + (", mean over seeds" if repeats else ""))
    return ("Uncertainty: " + "; ".join(parts) + ".") if parts else ""


def markdown_table(frame: pd.DataFrame) -> str:
    align = ["left" if c in TEXT or c in ("cell", "error", "key", "evaluation") else "right" for c in frame.columns]
    return frame.to_markdown(index=False, disable_numparse=True, colalign=align)
