"""Evaluations: what is measured on a cell's quantized model, registered like methods.

Running a cell is load -> calibrate -> quantize -> bits, size, save -> for each requested
evaluation, `run` it (`harness.runner`). Built-ins: `perplexity`, `zero_shot`, `throughput`
(each configured by its block in the suite's `evaluations:`) and `agreement` (automatic: every
quantized cell). A third-party package adds one through the entry-point group
`harness.evaluations`; nothing in harness/ changes. An entry point may not take a built-in's
name, and a suite may not name an evaluation like a metric every cell records (`CELL_METRICS`:
`bits`, `size_bytes`, ...).

The contract (`harness.evaluations.base`, `harness.evaluations.config`):

- a subclass of `Evaluation` whose `name` is the name it is registered under, and whose
  `Config` derives from `EvaluationConfig` (strict: unknown keys are errors, frozen;
  `NoSettings` when there is nothing to set); lookup (`get_evaluation`) refuses one that does
  not, naming the plugin and the fix. A suite requests it with a block under its name,
  validated by `Config`, e.g. `evaluations: {mean_logit: {windows: 4}}` (`mean_logit: {}` for
  the defaults). The validated block, defaults included, is part of the
  cell and of its key, so changing it re-runs the cell; a cell without plugin blocks keeps
  the key it had before plugins existed;
- or, with `automatic = True`, it runs for every quantized cell without a block (and may not
  be named in a suite), as `agreement` does;
- `run(context) -> result`: `context` (`EvaluationContext`) holds the quantized model, its
  tokenizer and family adapter, the cell, the results store, device, dtype, the progress
  switch, the suite's base folder and the metrics measured so far. The result, JSON-
  serialisable (as the store writes it; otherwise the cell fails, naming the evaluation), is
  stored as the record's `metrics[<name>]`;
- an exception fails the cell (the record keeps the traceback; `NonFiniteError` gives the
  failure kind `nonfinite`); an evaluation whose failure should leave the cell ok returns
  the error inside its result, as `zero_shot` does.

Order: perplexity, zero_shot, agreement, throughput, then automatic plugin evaluations (by
name), then the suite's plugin evaluations in its order. A result may not replace a metric the
cell already has (e.g. `bits`).

The registry (`harness.evaluations.registry`) imports no evaluation, so the suite loader can
validate blocks without importing what the evaluations import.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import ValidationError

from harness.evaluations.base import Evaluation, EvaluationContext, NonFiniteError
from harness.evaluations.config import EvaluationConfig, NoSettings
from harness.evaluations.registry import (
    BUILTIN_EVALUATIONS,
    CELL_METRICS,
    ENTRY_POINT_GROUP,
    EVALUATIONS,
    evaluation_names,
    get_evaluation,
    resolve_evaluations,
)

if TYPE_CHECKING:
    from harness.suite import Cell

__all__ = [
    "BUILTIN_EVALUATIONS", "CELL_METRICS", "ENTRY_POINT_GROUP", "EVALUATIONS", "Evaluation", "EvaluationConfig",
    "EvaluationContext", "NoSettings", "NonFiniteError", "evaluation_names", "get_evaluation", "planned", "resolve_evaluations",
]


def planned(cell: Cell, *, quantized: bool) -> list[tuple[str, Evaluation]]:
    """(registry name, configured evaluation) for each evaluation `cell` requests, in the order
    they run; `quantized`: the cell's method modifies the weights (automatic evaluations, built-in
    or plugin, run only then). The registry name (the suite block's) is the result's key in the
    record's metrics."""
    spec = cell.evaluations
    out: list[tuple[str, Evaluation]] = []
    for name in BUILTIN_EVALUATIONS:
        cls = get_evaluation(name)
        block = getattr(spec, name, None)
        if block is not None:
            out.append((name, cls(block)))
        elif cls.automatic and quantized:
            out.append((name, cls(cls.Config())))
    if quantized:  # automatic plugins (each registered one is imported to ask)
        for name in evaluation_names():
            if name in BUILTIN_EVALUATIONS or name in spec.plugins:
                continue
            cls = get_evaluation(name)
            if cls.automatic:
                out.append((name, cls(cls.Config())))
    for name, block in spec.plugins.items():
        cls = get_evaluation(name)
        try:
            out.append((name, cls(cls.Config.model_validate(block))))
        except ValidationError as exc:
            raise ValueError(f"cell {cell.label}: invalid `evaluations.{name}` block: {exc}") from exc
    return out
