"""Per-layer diagnostics: the relative layer-output error, and a record's layer log as a
(block × linear type) table.

The error of a quantized linear is the one every calibrated method minimises (spec:
methods.md): ``tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)`` with ``ΔW = Ŵ - W`` and ``H`` the mean of
``x xᵀ`` over the calibration tokens that reach the layer. The pipeline records it for every
linear of a calibrated cell as ``output_error`` (after block fine-tuning, i.e. of the saved
layer); methods may also log their own ``rel_error`` (AQLM/CRVQ: right after the layer's
optimisation, before block fine-tuning).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = ["ERROR_FIELDS", "LINEAR_ORDER", "LayerEntry", "LayerTable", "layer_table", "relative_output_error"]

#: Linear types in display order (LLaMA names without `_proj`); other types follow in log order.
LINEAR_ORDER = ("q", "k", "v", "o", "gate", "up", "down")
#: The error fields of a layer entry, preferred first: the saved layer's error, then the
#: method's own (older records, or records of a method that logs only that).
ERROR_FIELDS = ("output_error", "rel_error")

_BLOCK_NAME = re.compile(r"^(?P<prefix>.*?)\.(?P<block>\d+)\.(?P<sub>.+)$")


@torch.no_grad()
def relative_output_error(W: torch.Tensor, W_hat: torch.Tensor, H: torch.Tensor) -> float:
    """tr((Ŵ-W) H (Ŵ-W)ᵀ) / tr(W H Wᵀ), computed in float64 on W's device.

    W, W_hat: [out, in] (any float dtype, any device); H: [in, in]. Both traces are sums of
    elementwise products (``((D @ H) * D).sum()``): one [out, in] x [in, in] product each, no
    [out, out] matrix. Returns 0.0 when both traces are 0 and inf when only the denominator is
    (a layer with no weight or no input energy).
    """
    W64 = W.detach().to(torch.float64)
    H64 = H.detach().to(device=W64.device, dtype=torch.float64)
    D = W_hat.detach().to(device=W64.device, dtype=torch.float64) - W64
    num = float(((D @ H64) * D).sum())
    den = float(((W64 @ H64) * W64).sum())
    if den == 0.0:
        return 0.0 if num == 0.0 else float("inf")
    return num / den


@dataclass
class LayerEntry:
    """One quantized linear of a record's layer log.

    block: decoder block index; kind: linear type (`q`, ..., `down`; the module name without
    `_proj` for other families); weights: out · in; error: the table's error field (NaN if absent).
    """

    name: str
    block: int
    kind: str
    weights: int
    bits: float
    seconds: float
    error: float
    log: dict[str, Any]


@dataclass
class LayerTable:
    """A record's quantized linears, with the blocks and linear types they span.

    error_field: `output_error` when every entry has it, else `rel_error` (older records), else
    None (calibration-free methods log no error).
    """

    entries: list[LayerEntry]
    error_field: str | None
    blocks: list[int] = field(init=False)
    kinds: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.blocks = sorted({e.block for e in self.entries})
        seen = list(dict.fromkeys(e.kind for e in self.entries))
        self.kinds = [k for k in LINEAR_ORDER if k in seen] + [k for k in seen if k not in LINEAR_ORDER]

    def grid(self, value) -> np.ndarray:
        """float64 [len(kinds), len(blocks)] of `value(entry)` (a callable returning a float or
        None), NaN where a (type, block) has no entry or no value."""
        out = np.full((len(self.kinds), len(self.blocks)), np.nan)
        row = {k: i for i, k in enumerate(self.kinds)}
        col = {b: j for j, b in enumerate(self.blocks)}
        for e in self.entries:
            v = value(e)
            if v is not None:
                out[row[e.kind], col[e.block]] = float(v)
        return out

    def block_summary(self) -> list[dict[str, Any]]:
        """Per block: layers, mean and max error (and the type of the max), bits per weight
        (weighted by the layers' weights) and seconds; then one row `all` over the model."""
        groups: dict[Any, list[LayerEntry]] = {b: [] for b in self.blocks}
        for e in self.entries:
            groups[e.block].append(e)
        groups["all"] = self.entries
        rows = []
        for block, entries in groups.items():
            errors = [(e.error, e.kind) for e in entries if math.isfinite(e.error)]
            worst = max(errors, default=(math.nan, ""))
            weights = sum(e.weights for e in entries)
            rows.append({
                "block": block,
                "layers": len(entries),
                "mean_error": float(np.mean([v for v, _ in errors])) if errors else math.nan,
                "max_error": worst[0],
                "max_kind": worst[1],
                "bits": sum(e.bits * e.weights for e in entries) / weights if weights else math.nan,
                "seconds": sum(e.seconds for e in entries),
            })
        return rows


def _kind(sub: str) -> str:
    leaf = sub.rsplit(".", 1)[-1]
    return leaf.removesuffix("_proj") or leaf


def layer_table(layers: list[dict[str, Any]]) -> LayerTable:
    """The quantized linears of a record's `layers` log (entries with `out` and `in` whose name
    holds a block index, e.g. `model.layers.3.self_attn.q_proj`; block-level entries such as
    fine-tuning logs are skipped)."""
    entries: list[LayerEntry] = []
    for log in layers:
        match = _BLOCK_NAME.match(str(log.get("name", "")))
        if "out" not in log or "in" not in log or match is None:
            continue
        entries.append(LayerEntry(
            name=log["name"], block=int(match["block"]), kind=_kind(match["sub"]),
            weights=int(log["out"]) * int(log["in"]), bits=float(log.get("bits", math.nan)),
            seconds=float(log.get("seconds", 0.0)), error=math.nan, log=log,
        ))
    error_field = next((f for f in ERROR_FIELDS if entries and all(f in e.log for e in entries)), None)
    if error_field is not None:
        for e in entries:
            value = e.log[error_field]
            e.error = math.nan if value is None else float(value)
    return LayerTable(entries, error_field)
