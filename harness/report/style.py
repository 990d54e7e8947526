"""The report's shared look: figure rendering, markers and line styles, log-scale ticks, file-name
cleaning, and the number formats of the tables (one home for each, used by every report module).

Nothing here imports matplotlib at module level: plotting helpers import it when called.
"""
from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "ACC_SPEC", "BITS_SPEC", "BPB_SPEC", "MARKERS", "PLOT_FORMATS", "PPL_SPEC", "REFERENCE_LINESTYLES",
    "check_plot_formats", "fmt_bits", "fmt_cell", "fmt_percent", "fmt_ppl", "is_missing", "log_y", "marker",
    "minor_tick", "plain_tick", "reference_linestyle", "render", "safe_name",
]

#: Plot file formats (PNG rendered by Agg, SVG by the SVG backend).
PLOT_FORMATS = ("png", "svg")
#: Marker cycle of the series of a plot (methods, models, linear types).
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")
#: Line styles of the horizontal reference lines (unquantized models, baselines), in turn.
REFERENCE_LINESTYLES = ("--", ":", "-.")


# --------------------------------------------------------------------------- plots

def marker(i: int) -> str:
    """The ``i``-th marker of :data:`MARKERS` (cycling)."""
    return MARKERS[i % len(MARKERS)]


def reference_linestyle(j: int) -> str:
    """The ``j``-th reference line style (cycling)."""
    return REFERENCE_LINESTYLES[j % len(REFERENCE_LINESTYLES)]


def safe_name(name: str) -> str:
    """``name`` fit for a file name: runs of other than word characters, ``.`` and ``-`` become
    ``_`` (stripped at the ends); ``"model"`` if nothing is left."""
    return re.sub(r"[^\w.-]+", "_", name).strip("_") or "model"


def check_plot_formats(formats: Sequence[str]) -> None:
    """Raise ``ValueError`` for a format other than :data:`PLOT_FORMATS`."""
    unknown = set(formats) - set(PLOT_FORMATS)
    if unknown:
        raise ValueError(f"unknown plot format(s) {sorted(unknown)}: use png or svg")


def plain_tick(value: float, _pos: object = None) -> str:
    """A tick as a plain number: ``20``, ``1,000``; ``1e+08`` only when huge (a matplotlib
    ``FuncFormatter`` function)."""
    if value >= 1e7:
        return f"{value:.0e}"
    return f"{value:,.0f}" if value >= 1 else f"{value:g}"


def minor_tick(value: float, _pos: object = None) -> str:
    """Label the 2x, 3x and 5x minor ticks of a log axis (for spans under two decades)."""
    mantissa = value / 10 ** math.floor(math.log10(value))
    return plain_tick(value) if round(mantissa) in (2, 3, 5) and abs(mantissa - round(mantissa)) < 1e-6 else ""


def log_y(ax: Any, decades: float) -> None:
    """Log-scale y with plain-number ticks ("20", "400"), not "2x10^1"; minor ticks labelled
    when the data span fewer than two ``decades``."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(plain_tick))
    ax.yaxis.set_minor_formatter(FuncFormatter(minor_tick) if decades < 2 else NullFormatter())


def render(fig: Figure, fmt: str) -> bytes:
    """The figure as ``fmt`` (png or svg) bytes at 150 dpi; without a creation date, so
    re-rendering the same results gives the same file."""
    buf = io.BytesIO()
    metadata = {"Date": None} if fmt == "svg" else {}
    fig.savefig(buf, format=fmt, dpi=150, metadata=metadata)
    return buf.getvalue()


# --------------------------------------------------------------------------- numbers in tables

#: Format specs of the table columns: bits per weight, perplexity, bits per byte, accuracy in percent.
BITS_SPEC, PPL_SPEC, BPB_SPEC, ACC_SPEC = "{:.3f}", "{:.2f}", "{:.4f}", "{:.1f}"


def is_missing(value: Any) -> bool:
    """None, ``pd.NA`` or a float NaN."""
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def fmt_cell(value: Any, spec: str = "{}", *, missing: str = "-") -> str:
    """``spec.format(value)``; ``missing`` for None, NA and NaN; ``inf``/``-inf`` for infinities."""
    if is_missing(value):
        return missing
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return spec.format(value)


def fmt_bits(value: Any, *, missing: str = "-") -> str:
    """Bits per weight: three decimals (``1.088``)."""
    return fmt_cell(value, BITS_SPEC, missing=missing)


def fmt_ppl(value: Any, *, missing: str = "-") -> str:
    """A perplexity: two decimals (``13.67``)."""
    return fmt_cell(value, PPL_SPEC, missing=missing)


def fmt_percent(fraction: Any, *, missing: str = "-") -> str:
    """An accuracy given as a fraction, in percent with one decimal (``0.3625`` -> ``36.2``)."""
    return missing if is_missing(fraction) else fmt_cell(100 * fraction, ACC_SPEC, missing=missing)

