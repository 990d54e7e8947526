"""Evaluations: what is measured on a cell's quantized model, registered like methods.

Running a cell is load -> calibrate -> quantize -> bits, size, save -> for each requested
evaluation, `run` it (`harness.runner`). Built-ins: `perplexity`, `zero_shot`, `throughput`
(each configured by its block in the suite's `evaluations:`) and `agreement` (automatic: every
quantized cell). A third-party package adds one through the entry-point group
`harness.evaluations`; nothing in harness/ changes.

The contract (`harness.evaluations.base`):

- a subclass of `Evaluation` with a registry `name` and a `Config`: a pydantic model with
  `extra="forbid"` (`NoSettings` when there is nothing to set). A suite requests it with a
  block under its name, validated by `Config`, e.g. `evaluations: {mean_logit: {windows: 4}}`
  (`mean_logit: {}` for the defaults). The validated block, defaults included, is part of the
  cell and of its key, so changing it re-runs the cell; a cell without plugin blocks keeps
  the key it had before plugins existed;
- `run(context) -> result`: `context` (`EvaluationContext`) holds the quantized model, its
  tokenizer and family adapter, the cell, the results store, device, dtype, the progress
  switch, the suite's base folder and the metrics measured so far. The result, JSON-
  serialisable, is stored as the record's `metrics[<name>]`;
- an exception fails the cell (the record keeps the traceback; `NonFiniteError` gives the
  failure kind `nonfinite`); an evaluation whose failure should leave the cell ok returns
  the error inside its result, as `zero_shot` does.

Order: perplexity, zero_shot, agreement, throughput, then plugin evaluations in the order of
the suite. A result may not replace a metric the cell already has (e.g. `bits`).

The registry (`harness.evaluations.registry`) imports no evaluation, so the suite loader can
validate blocks without importing what the evaluations import.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import ValidationError

from harness.evaluations.base import Evaluation, EvaluationContext, NonFiniteError, NoSettings
from harness.evaluations.registry import (
    BUILTIN_EVALUATIONS,
    ENTRY_POINT_GROUP,
    EVALUATIONS,
    evaluation_names,
    get_evaluation,
    resolve_evaluations,
)

if TYPE_CHECKING:
    from harness.suite import Cell

__all__ = [
    "BUILTIN_EVALUATIONS", "ENTRY_POINT_GROUP", "EVALUATIONS", "Evaluation", "EvaluationContext", "NoSettings",
    "NonFiniteError", "evaluation_names", "get_evaluation", "planned", "resolve_evaluations",
]


def planned(cell: Cell, *, quantized: bool) -> list[tuple[str, Evaluation]]:
    """(registry name, configured evaluation) for each evaluation `cell` requests, in the order
    they run; `quantized`: the cell's method modifies the weights (automatic evaluations run only
    then). The registry name (the suite block's) is the result's key in the record's metrics."""
    spec = cell.evaluations
    out: list[tuple[str, Evaluation]] = []
    for name in BUILTIN_EVALUATIONS:
        cls = get_evaluation(name)
        block = getattr(spec, name, None)
        if block is not None:
            out.append((name, cls(block)))
        elif cls.automatic and quantized:
            out.append((name, cls(cls.Config())))
    for name, block in spec.plugins.items():
        cls = get_evaluation(name)
        try:
            out.append((name, cls(cls.Config.model_validate(block))))
        except ValidationError as exc:
            raise ValueError(f"cell {cell.label}: invalid `evaluations.{name}` block: {exc}") from exc
    return out
